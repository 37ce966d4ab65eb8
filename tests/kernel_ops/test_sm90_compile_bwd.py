"""The sm_90 check covers the backward kernels (tests/kernel_ops/test_sm90_compile.py compiles every config, the
backward's included) and can fail on them: a backward tile that spills is reported and exits 1."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_sm90_check_fails_on_a_spilling_backward_config():
    """fp32 dK/dV at D = 80 with 8 warps spills (ptxas caps it at 128 registers: STACK 16 B on Triton 3.9),
    which is why bwd_block_config uses 4 warps for fp32; the same tile with 4 warps passes."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "sm90.py"), "--only-extra",
                           "--extra-backward", "dkdv,fp32,80,band,16,32,8,2",
                           "--extra-backward", "dkdv,fp32,80,band,16,32,4,2"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith("| banded_attn_bwd_dkdv fp32 D80")]
    assert len(rows) == 2 and "spills: STACK" in rows[0] and rows[1].endswith("| yes |"), rows
    assert "1 of 2 configs" in proc.stdout
