"""finetune is resumable: a run killed with SIGKILL and rerun gives the losses of an uninterrupted run, bit for
bit (real subprocesses, a real kill); the checkpoint folder is never seen half-written."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .conftest import CLIP_TEXTS, clips, write_tiny_model, write_token_data

STEPS = 30


def _cmd(data, model, out):
    return [sys.executable, "-m", "magnet_fast.cli", "finetune", str(data), "--model", str(model), "--out", str(out),
            "--steps", str(STEPS), "--save-every", "5", "--batch-size", "3", "--grad-accum", "2", "--lr", "3e-3",
            "--warmup", "5", "--quiet"]


def _env():
    root = Path(__file__).resolve().parents[2]
    return {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}


def _losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())]


def test_kill_9_and_resume_gives_the_same_losses(tmp_path):
    model = write_tiny_model(tmp_path / "model", dim=32, heads=2, layers=1, card=64, seconds=0.2)
    data = write_token_data(tmp_path / "data", clips(), CLIP_TEXTS, lengths=[10, 7, 10, 4])
    full = tmp_path / "full"
    subprocess.run(_cmd(data, model, full), env=_env(), check=True, timeout=600)
    want = _losses(full)
    assert [s for s, _ in want] == list(range(1, STEPS + 1))

    run = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(data, model, run), env=_env())
    deadline = time.monotonic() + 600
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        log = run / "log.jsonl"
        n = len(log.read_text().splitlines()) if log.is_file() else 0
        if n >= 12:                             # past the checkpoint at step 10, mid-way to the next one
            os.kill(proc.pid, signal.SIGKILL)
            killed_at = n
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert killed_at is not None and proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert _losses(run)[-1][0] < STEPS
    latest = json.loads((run / "latest.json").read_text())
    assert latest["step"] % 5 == 0 and (run / latest["checkpoint"] / "state.json").is_file()
    subprocess.run(_cmd(data, model, run), env=_env(), check=True, timeout=600)
    assert _losses(run) == want                  # every step, the recomputed ones included, bitwise
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # finishing again is a no-op that keeps the log
    subprocess.run(_cmd(data, model, run), env=_env(), check=True, timeout=600)
    assert _losses(run) == want
