"""pytest options of the kernel benchmarks (bench/test_kernels.py), and bench/ on sys.path for its modules.

    pytest bench/ --benchmark-only [--kernel-device cuda] [--kernel-dtype bf16] [--kernel-shapes T500]
    pytest bench/ --benchmark-only --kernel-device cpu --kernel-tiny      (TRITON_INTERPRET=1 for Triton)
"""
from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))


def pytest_addoption(parser):
    from registry import REGISTRY
    group = parser.getgroup("kernel benchmarks (bench/test_kernels.py)")
    group.addoption("--kernel-device", choices=["cuda", "cpu"], default=None,
                    help="default: cuda if available, else cpu (the reduced CPU set)")
    group.addoption("--kernel-dtype", choices=["fp32", "fp16", "bf16"], default=None,
                    help="default: fp16 on CUDA, fp32 on CPU")
    group.addoption("--kernel-op", action="append", choices=list(REGISTRY), default=None,
                    help="only this op (repeatable); default: all")
    group.addoption("--kernel-shapes", default="", help="only shapes whose name contains this")
    group.addoption("--kernel-cpu-all", action="store_true", help="all shapes on CPU, not the reduced set")
    group.addoption("--kernel-tiny", action="store_true",
                    help="tiny odd shapes, Triton under the interpreter on CPU (gpu_check.sh dry run)")
