"""The backward microbenchmark (bench/test_kernels_bwd.py) runs on CPU: its tiny shape, Triton under the
interpreter, one round each; every provider that runs here passes its gradient parity gate and is timed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_backward_benchmark_gates_then_times(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST_")}   # a session of its own
    env.update(TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    out = tmp_path / "bwd.json"
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "bench" / "test_kernels_bwd.py"), "-q", "-p",
           "no:cacheprovider", "--benchmark-only", "--kernel-device", "cpu", "--benchmark-min-rounds", "1",
           "--benchmark-max-time", "0.01", "--benchmark-json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    rows = [b["extra_info"] for b in json.loads(out.read_text())["benchmarks"]]
    assert {(r["provider"], r["mode"]) for r in rows} == {(p, m) for p in ("naive", "sdpa", "triton")
                                                         for m in ("bwd", "fwd+bwd")}
    assert all(r["max_abs_err_vs_naive"] < 1e-4 for r in rows)
