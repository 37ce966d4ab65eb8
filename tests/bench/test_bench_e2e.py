"""The CPU benchmark ratio (issue: the engine at least 1.2x faster than audiocraft in the same run).

Runs bench/e2e.py at a reduced CPU geometry (dim 512, 4 layers, steps 4,2,2,2, batch 2) with the audiocraft
oracle's interpreter: audiocraft 1.3.0 and magnet_fast in one process, round-robin, parity gates first.
Asserted: the 'exact' engine gives audiocraft's tokens, 'windowed' (the fast CPU backend, logits within
1e-5) passes its gate and is >= 1.2x faster than audiocraft (median of 3 runs; measured 1.54-1.62x at
batch 2 on the 2-core development VM). The exact path is not timed here (bench/results/e2e-cpu-*: 1.1-1.26x;
it keeps audiocraft's GEMM shapes, ~70 % of the time).
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.live
@pytest.mark.slow
def test_cpu_engine_at_least_1_2x_faster_than_audiocraft(run_oracle, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(run_oracle.python), str(ROOT / "bench" / "e2e.py"), "--config-dir", str(run_oracle.config),
                           "--layers", "4", "--batches", "2", "--repeats", "3", "--providers", "audiocraft",
                           "windowed",
                           "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    print((tmp_path / "results.md").read_text())
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["meta"]["gates"] == {"exact": "PASS", "windowed": "PASS"}
    (row,) = data["rows"]
    assert row["windowed_speedup"] >= 1.2, row
