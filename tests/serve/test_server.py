"""A real ``magnet-fast serve`` process on 127.0.0.1: concurrent byte-identity with the CLI, endpoints,
metrics, a client that goes away before its batch starts, and the SIGTERM drain (exit 0)."""
from __future__ import annotations

import io
import signal
import socket
import threading
import time
import wave

import pytest

from tests.serve.helpers import DEMO, MIXED, Server, metric, need_serve_extra

need_serve_extra()
import httpx  # noqa: E402


def test_real_server_mixed_concurrent_requests_match_the_cli(server, cli_refs):
    before = httpx.get(server.url + "/metrics").text
    out: list = [None] * len(MIXED)
    barrier = threading.Barrier(len(MIXED))

    def client(i):
        barrier.wait()
        out[i] = httpx.post(server.url + "/v1/generate", json=MIXED[i], timeout=600)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(MIXED))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r, ref, body in zip(out, cli_refs, MIXED, strict=True):
        assert r.status_code == 200, r.text
        assert r.content == ref, f"differs from the CLI: {body}"
    assert max(int(r.headers["x-batch-size"]) for r in out) > 1, "nothing was batched"
    after = httpx.get(server.url + "/metrics").text
    for model, n in (("magnet", 7), ("musicgen", 1)):
        assert metric(after, "magnet_fast_requests_total", model=model, status="200") \
            - metric(before, "magnet_fast_requests_total", model=model, status="200") == n
    assert metric(after, "magnet_fast_audio_seconds_total", model="magnet") \
        - metric(before, "magnet_fast_audio_seconds_total", model="magnet") == pytest.approx(7.0)


def test_real_server_endpoints_and_errors(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        assert c.get("/healthz").json()["status"] == "ok"
        assert {m["name"] for m in c.get("/v1/models").json()["models"]} == {"magnet", "musicgen"}
        assert 'id="generate"' in c.get("/").text
        assert c.get("/static/app.js").status_code == 200
        assert c.get("/docs").status_code == 200 and "/v1/generate" in c.get("/openapi.json").json()["paths"]
        assert "magnet_fast_queue_depth" in c.get("/metrics").text
        bad = c.post("/v1/generate", json={"text": "a", "temperature": -1})
        assert bad.status_code == 422 and bad.json()["error"] == "temperature must be >= 0.0, got -1"
        big = c.post("/v1/generate", content=b" " * 70_000, headers={"content-type": "application/json"})
        assert big.status_code == 413
        tokens = c.post("/v1/generate", json={"model": "musicgen", "text": "a", "seed": 1, "duration": 0.2,
                                              "format": "tokens"})
        assert tokens.status_code == 200 and tokens.json()["shape"] == [4, 10]


def _wait(predicate, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_real_server_drops_a_request_whose_client_went_away(server):
    """While a long batch runs, a client sends a request and hangs up: the request is dropped before its
    batch starts (counted as cancelled, never run)."""
    url = server.url
    before = httpx.get(url + "/metrics").text
    batches = metric(before, "magnet_fast_batches_total", model="magnet")
    slow = {"text": "a", "seed": 1, "duration": 0.5}                    # the model's 50 steps: seconds
    done = {}
    t = threading.Thread(target=lambda: done.setdefault("r", httpx.post(url + "/v1/generate", json=slow,
                                                                         timeout=600)))
    t.start()
    _wait(lambda: httpx.get(url + "/healthz").json()["models"]["magnet"]["busy"], "the slow batch to start")
    body = b'{"text": "gone", "seed": 2, "decoding_steps": [2, 1, 1, 1], "duration": 0.5}'
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        _wait(lambda: httpx.get(url + "/healthz").json()["models"]["magnet"]["queue"] == 1, "it to queue")
    t.join()
    assert done["r"].status_code == 200
    _wait(lambda: httpx.get(url + "/healthz").json()["models"]["magnet"]["queue"] == 0, "the queue to empty")
    after = httpx.get(url + "/metrics").text
    assert metric(after, "magnet_fast_dropped_total", model="magnet", reason="cancelled") \
        - metric(before, "magnet_fast_dropped_total", model="magnet", reason="cancelled") == 1
    time.sleep(0.5)
    after = httpx.get(url + "/metrics").text
    assert metric(after, "magnet_fast_batches_total", model="magnet") == batches + 1      # only the slow one ran


def test_sigterm_finishes_in_flight_work_and_exits_0(tmp_path):
    srv = Server("--model", f"magnet={DEMO}", log=tmp_path / "server.log")
    try:
        slow = {"text": "a", "seed": 3, "duration": 1.0}                # 50 steps: in flight for seconds
        done = {}
        t = threading.Thread(target=lambda: done.setdefault(
            "r", httpx.post(srv.url + "/v1/generate", json=slow, timeout=600)))
        t.start()
        _wait(lambda: httpx.get(srv.url + "/healthz").json()["models"]["magnet"]["busy"], "the batch to start")
        srv.proc.send_signal(signal.SIGTERM)
        t.join(600)
        r = done["r"]
        assert r.status_code == 200, r.text
        with wave.open(io.BytesIO(r.content)) as w:
            assert w.getnframes() == 32000
        assert srv.proc.wait(120) == 0, srv.log()
        with pytest.raises(httpx.ConnectError):
            httpx.get(srv.url + "/healthz", timeout=5)
        assert "Traceback" not in srv.log()
    finally:
        srv.stop()
