"""Test setup: Triton interpreter without CUDA, `gpu` skipping, poisoned kernel outputs, tolerances."""
import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    # read when @triton.jit decorates, so it must precede any import of kernels/*/triton.py
    os.environ.setdefault("TRITON_INTERPRET", "1")

# (backend, dtype) -> atol/rtol for kernel outputs vs an fp64 reference on the same inputs.
# interp fp32: ~1e-6 measured; fp16: output rounding (half ulp 9.8e-4 at |o| < 2); bf16: half ulp 7.8e-3
# at |o| < 4, plus P rounded to bf16 before the PV dot on GPU; cuda fp32 uses input_precision="ieee".
TOLERANCES = {
    ("interp", torch.float32): {"atol": 2e-6, "rtol": 2e-6},
    ("interp", torch.float16): {"atol": 2e-3, "rtol": 2e-3},
    ("interp", torch.bfloat16): {"atol": 1.6e-2, "rtol": 1e-2},
    ("cuda", torch.float32): {"atol": 1e-5, "rtol": 1e-5},
    ("cuda", torch.float16): {"atol": 2e-3, "rtol": 2e-3},
    ("cuda", torch.bfloat16): {"atol": 2e-2, "rtol": 1e-2},
}


def pytest_collection_modifyitems(config, items):
    if CUDA:
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    no_interp = pytest.mark.skip(reason="no CUDA and TRITON_INTERPRET != 1: Triton kernels cannot launch")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
        elif "interp" in item.keywords and os.environ.get("TRITON_INTERPRET") != "1":
            item.add_marker(no_interp)


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    """Kernel launchers NaN-fill fresh outputs, so an element the kernel never writes fails parity."""
    monkeypatch.setenv("MAGNET_FAST_POISON", "1")


@pytest.fixture
def tolerance():
    def lookup(backend: str, dtype: torch.dtype) -> dict:
        return TOLERANCES[(backend, dtype)]
    return lookup


def assert_close_verbose(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, name=""):
    """allclose with a report: NaN/inf counts, max-abs error, relative RMS error, first bad indices."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert a.shape == e.shape, f"{name}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    bad_a, bad_e = (~a.isfinite()).sum().item(), (~e.isfinite()).sum().item()
    assert bad_a == bad_e == 0, f"{name}: non-finite values: actual {bad_a}, expected {bad_e}"
    err = (a - e).abs()
    over = err > atol + rtol * e.abs()
    if over.any():
        rel_rms = (err.pow(2).mean().sqrt() / e.pow(2).mean().sqrt().clamp_min(1e-30)).item()
        idx = over.nonzero()[:5].tolist()
        raise AssertionError(f"{name}: {int(over.sum())}/{over.numel()} elements off; max-abs "
                             f"{err.max().item():.3e}, rel-RMS {rel_rms:.3e}, atol {atol}, rtol {rtol}; "
                             f"first at {idx}")


@pytest.fixture
def assert_close():
    return assert_close_verbose
