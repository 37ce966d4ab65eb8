"""The kernel benchmarks run as pytest-benchmark tests: bench/run.py's tiny CPU run (gpu_check.sh's dry run),
Triton under the interpreter, few rounds. Every provider's parity gate passes and is timed, results.json has
the rows bench/report.py reads, and pytest-benchmark's JSON (the raw result) is kept beside it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROW_KEYS = {"op", "shape", "provider", "dtype", "gate", "max_abs_err", "ms", "ms_p20", "ms_p80",
            "speedup_vs_ref"}


@pytest.mark.slow
def test_tiny_kernel_benchmarks_gate_then_time(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TRITON_INTERPRET"] = "1"
    cmd = [sys.executable, str(ROOT / "bench" / "run.py"), "--device", "cpu", "--dtype", "fp32", "--tiny",
           "--out", str(tmp_path), "--threads", "1", "--min-rounds", "1", "--max-time", "0.05"]   # few rounds
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert rows and all(ROW_KEYS <= r.keys() for r in rows)
    passed = {(r["op"], r["provider"]) for r in rows if r["gate"] == "pass" and r["ms"] and r["ms"] > 0}
    want = {("banded_attn", p) for p in ("naive", "sdpa", "windowed", "triton")} | \
           {("sample_step", p) for p in ("torch_ops", "fused")}
    assert want <= passed, (want - passed, rows)
    assert all(r["ms_p20"] <= r["ms_p80"] and r["speedup_vs_ref"] > 0 for r in rows if r["ms"])
    raw = json.loads((tmp_path / "benchmark.json").read_text())["benchmarks"]
    assert {(b["extra_info"]["op"], b["extra_info"]["provider"]) for b in raw} >= want
    assert all(b["stats"]["data"] and b["extra_info"]["gate"] == "pass" for b in raw)
    assert "| tiny-T97-W5 | triton | float32 |" in (tmp_path / "results.md").read_text()
