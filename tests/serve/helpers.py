"""Helpers of the serving tests: the demo models, the CLI as the reference for a lone request, and a
real ``magnet-fast serve`` process on 127.0.0.1."""
from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def make_app(engines, **settings):
    """``create_app`` with its log silenced (the serve extra must be importable: ``need_serve_extra`` first)."""
    from magnet_fast.serve import create_app
    return create_app(engines, log=lambda message: None, **settings)


@contextlib.contextmanager
def running(app):
    """The app's start-up and shutdown (what its lifespan does under a server)."""
    app.state.serve.start()
    try:
        yield app
    finally:
        app.state.serve.stop()


def call(app, *requests):
    """Send (method, path, kwargs) requests to an ASGI app concurrently (httpx); responses in order."""
    import asyncio

    import httpx

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve.test", timeout=600) as c:
            return await asyncio.gather(*(c.request(m, p, **kw) for m, p, kw in requests))
    return asyncio.run(go())


def need_serve_extra():
    """Skip the calling test module, with the reason, where the serve extra is not installed."""
    for module in ("fastapi", "uvicorn", "prometheus_client", "httpx"):
        pytest.importorskip(module, reason=f"{module} is not installed: pip install -e \".[serve]\"")

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "magnet_fast" / "demo" / "magnet-tiny-demo"
MG_DEMO = ROOT / "magnet_fast" / "demo" / "musicgen-tiny-demo"
STEPS = [2, 1, 1, 1]                 # few decoding steps: the demo decodes in about a second


def body_flags(body: dict) -> list[str]:
    """The ``magnet-fast generate`` flags of a request body (the keys the tests use)."""
    flags = ["--seed", str(body["seed"])]
    if body.get("model", "magnet") == "musicgen":
        flags += ["--model", str(MG_DEMO)]
    else:
        flags += ["--model", str(DEMO)]
    if body["text"] is None:
        flags.append("--unconditional")
    else:
        flags.insert(0, body["text"])
    if "decoding_steps" in body:
        flags += ["--steps", ",".join(map(str, body["decoding_steps"]))]
    for key, flag in (("duration", "--duration"), ("temperature", "--temperature"), ("cfg_coef", "--cfg")):
        if key in body:
            flags += [flag, str(body[key])]
    if body.get("use_sampling") is False:
        flags.append("--greedy")
    return flags


def run_cli(*args: str) -> tuple[int, str]:
    """``magnet_fast.cli.main`` in this process -> (exit code, stderr)."""
    from magnet_fast.cli import main
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


def cli_wav(body: dict, folder: Path) -> bytes:
    """The WAV ``magnet-fast generate --seed N ...`` writes for this request alone."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"cli_{len(list(folder.iterdir()))}.wav"
    code, err = run_cli("generate", *body_flags(body), "--quiet", "--out", str(out))
    assert code == 0, err
    return out.read_bytes()


# Eight mixed requests: two parameter groups of MAGNeT (batched within each), a null text, MusicGen.
MIXED = [
    {"text": "lo-fi beat with piano", "seed": 11, "decoding_steps": STEPS, "duration": 1.0},
    {"text": "a much longer description: driving drums, warm bass and bright synth arpeggios", "seed": 12,
     "decoding_steps": STEPS, "duration": 1.0},
    {"text": None, "seed": 13, "decoding_steps": STEPS, "duration": 1.0},
    {"text": "calm strings", "seed": 14, "decoding_steps": STEPS, "duration": 1.0},
    {"text": "calm strings", "seed": 15, "decoding_steps": STEPS, "duration": 1.0},
    {"text": "jazz trio", "seed": 16, "decoding_steps": STEPS, "duration": 1.0, "temperature": 2.0},
    {"text": "jazz trio", "seed": 17, "decoding_steps": STEPS, "duration": 1.0, "temperature": 2.0},
    {"model": "musicgen", "text": "folk guitar", "seed": 18, "duration": 0.5},
]


# ----------------------------------------------------------------------------------------- a real server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", str(__import__("torch").get_num_threads()))
    return env


class Server:
    """``magnet-fast serve`` in a subprocess on 127.0.0.1 (stopped with SIGTERM)."""

    def __init__(self, *args: str, log: Path, timeout: float = 180):
        import httpx
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "magnet_fast.cli", "serve", "--host", "127.0.0.1",
                                      "--port", str(self.port), *args], env=server_env(), cwd=str(ROOT),
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"server did not come up: {self.log()}")
            time.sleep(0.3)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def metric(text: str, name: str, **labels) -> float:
    """A sample's value in Prometheus text (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0
