"""``magnet-fast serve --ray``: the same app as a Ray Serve deployment (two replicas with fractional CPUs),
byte-identical to the CLI; SIGTERM shuts Serve and Ray down with exit 0. Skips where Ray Serve is missing."""
from __future__ import annotations

import threading

import pytest

from tests.serve.helpers import DEMO, MIXED, Server, need_serve_extra

need_serve_extra()
pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install -e \".[ray,serve]\"")
import httpx  # noqa: E402


@pytest.mark.slow
def test_ray_serve_replicas_answer_like_the_cli(tmp_path, cli_refs):
    srv = Server("--ray", "--replicas", "2", "--replica-cpus", "0.5", "--model", f"magnet={DEMO}",
                 log=tmp_path / "ray.log", timeout=420)
    try:
        bodies, out = MIXED[:2], [None, None]

        def client(i):
            out[i] = httpx.post(srv.url + "/v1/generate", json=bodies[i], timeout=600)
        threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for r, ref in zip(out, cli_refs[:2], strict=True):
            assert r.status_code == 200, r.text
            assert r.content == ref
        assert httpx.get(srv.url + "/v1/models", timeout=60).json()["models"][0]["name"] == "magnet"
    finally:
        code = srv.stop(timeout=180)
    assert code == 0, srv.log()
