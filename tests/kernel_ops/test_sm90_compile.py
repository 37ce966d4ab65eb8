"""Every Triton kernel configuration the runtime can launch compiles for Hopper (sm_90) on this CPU machine,
without spills and within the shared-memory limit (bench/sm90.py; cuobjdump from Triton's wheel)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _compile_check(python: str, tmp_path: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([python, str(ROOT / "bench" / "sm90.py"), "--out", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return proc.stdout


def test_every_launch_config_compiles_for_sm90(tmp_path):
    pytest.importorskip("triton")
    out = _compile_check(sys.executable, tmp_path)
    # the check covers both kernels, every head dim and the released card
    for needle in ("banded_attn bf16 D16 band", "banded_attn fp32 D128 full", "qk_scale:fp64",
                   "sample_step bf16 card2048 span3", "sample_step fp32 card97 span1 prod",
                   "banded_attn_lse bf16 D80 band", "banded_attn_bwd_delta fp16 D16", "sm_scale:fp64",
                   "banded_attn_bwd_dkdv bf16 D64 band", "banded_attn_bwd_dq fp32 D128 full"):
        assert needle in out
    done = out.strip().splitlines()[-1].split()
    assert done[0] == done[2] and int(done[0]) >= 60, out.strip().splitlines()[-1]   # "N of N configs ..."


def test_sm90_check_fails_on_a_spilling_config(tmp_path):
    """The check can fail: the fp32 D=128 64x64 tile spills (STACK 2592 B on Triton 3.9)."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "sm90.py"), "--only-extra",
                           "--extra-attention", "fp32,128,full,64,64,4,2"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "spills: STACK" in proc.stdout and "0 of 1 configs" in proc.stdout


@pytest.mark.skipif(not os.environ.get("MAGNET_FAST_TRITON36_PYTHON"),
                    reason="set MAGNET_FAST_TRITON36_PYTHON to a python with the GPU image's Triton 3.6 "
                           "(.ci/run builds one)")
def test_every_launch_config_compiles_with_the_gpu_images_triton(tmp_path):
    python = os.environ["MAGNET_FAST_TRITON36_PYTHON"]
    version = subprocess.run([python, "-c", "import triton; print(triton.__version__)"], capture_output=True,
                             text=True, check=True).stdout.strip()
    assert version.startswith("3.6"), version
    _compile_check(python, tmp_path)
