"""Backward microbenchmark of banded attention (pytest-benchmark): the Triton backward against autograd
through masked SDPA and through FlexAttention, on training shapes.

    pytest bench/test_kernels_bwd.py --benchmark-only [--kernel-dtype bf16] [--kernel-shapes T1500] \
        --benchmark-json out.json
    TRITON_INTERPRET=1 pytest bench/test_kernels_bwd.py --benchmark-only --kernel-device cpu   (tiny, CPU)

Providers, all differentiated by autograd so each round costs the same kind of call:
``naive`` (dense fp32 reference, the parity reference), ``sdpa`` (F.scaled_dot_product_attention with a
boolean band mask), ``flex`` (torch.compile'd flex_attention with a band BlockMask), ``triton`` (the
``magnet_fast::banded_attn_lse`` op: the Triton forward saving the log-sum-exp, the Triton backward; on
CPU, under the interpreter, the same launchers called directly since the op runs the reference there).
Modes: ``bwd`` times ``torch.autograd.grad`` on a retained forward graph (the backward alone),
``fwd+bwd`` times a forward and its backward (a training step's attention cost).

Each case first runs its provider once (the warm-up: compiles) and gates its dq, dk, dv against the
reference's on the same inputs; only a provider that passed is timed. CUDA rounds end with
torch.cuda.synchronize(). On CPU only the tiny shape runs (naive, sdpa, and Triton when
TRITON_INTERPRET=1): a check that the harness works, not a speed claim. Options (--kernel-device,
--kernel-dtype, --kernel-shapes) are bench/conftest.py's.
"""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from common import sync

# name -> (B, H, T, D, window); training batches (no CFG doubling), MAGNeT small (16 heads) / medium (24)
SHAPES = {
    "small-B8-T500-W5": (8, 16, 500, 64, 5),
    "small-B8-T1500-W5": (8, 16, 1500, 64, 5),
    "medium-B8-T1500-W5": (8, 24, 1500, 64, 5),
    "small-B8-T500-full": (8, 16, 500, 64, None),
    "tiny-T97-W5": (1, 2, 97, 64, 5),                 # the CPU check (Triton under the interpreter)
}
CPU_SHAPES = ("tiny-T97-W5",)
PROVIDERS = ("naive", "sdpa", "flex", "triton")
MODES = ("bwd", "fwd+bwd")
GRAD_ATOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _options(config) -> dict:
    device = config.getoption("kernel_device") or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = config.getoption("kernel_dtype") or ("bf16" if device == "cuda" else "fp32")
    return {"device": device, "dtype": DTYPES[dtype], "shapes": config.getoption("kernel_shapes")}


def pytest_generate_tests(metafunc):
    if {"bwd_shape", "bwd_provider", "bwd_mode"} <= set(metafunc.fixturenames):
        o = _options(metafunc.config)
        names = [n for n in SHAPES if (o["device"] == "cuda" or n in CPU_SHAPES)
                 and (not o["shapes"] or o["shapes"] in n)]
        cases = [(n, m, p) for n in names for m in MODES for p in PROVIDERS]
        metafunc.parametrize(("bwd_shape", "bwd_mode", "bwd_provider"), cases,
                             ids=[f"{n}-{m}-{p}" for n, m, p in cases])


def _unavailable(provider: str, device: str) -> str | None:
    if provider == "triton" and device != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton kernels need CUDA or TRITON_INTERPRET=1"
    if provider == "flex" and device != "cuda":
        return "FlexAttention's backward is benchmarked on CUDA only (CPU: inductor compile of minutes)"
    return None


_FLEX = None


def _forward(provider: str, window, T: int, device: str):
    """provider -> f(q, k, v) -> out, differentiable."""
    if provider == "naive":
        from magnet_fast.kernels.banded_attn import naive
        return lambda q, k, v: naive.banded_attention(q, k, v, window)
    if provider == "sdpa":
        allowed = None
        if window is not None:
            idx = torch.arange(T, device=device)
            allowed = (idx[:, None] - idx[None, :]).abs() <= window
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    if provider == "flex":
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        global _FLEX
        torch._dynamo.config.recompile_limit = 256
        _FLEX = _FLEX or torch.compile(flex_attention, dynamic=False)
        block_mask = None
        if window is not None:
            block_mask = create_block_mask(lambda b, h, i, j: (i - j).abs() <= window, None, None, T, T,
                                           device=device)
        return lambda q, k, v: _FLEX(q, k, v, block_mask=block_mask)
    if provider == "triton":
        from magnet_fast.kernels.banded_attn import banded_attention_op
        if device == "cuda":
            return lambda q, k, v: banded_attention_op(q, k, v, window)
        return lambda q, k, v: _InterpretedTriton.apply(q, k, v, window)     # the op would run naive on CPU
    raise ValueError(provider)


class _InterpretedTriton(torch.autograd.Function):
    """The Triton launchers themselves (under TRITON_INTERPRET=1 on CPU, where the op runs the reference)."""

    @staticmethod
    def forward(ctx, q, k, v, window):
        from magnet_fast.kernels.banded_attn import triton as bt
        o, lse = bt.banded_attn_fwd(q, k, v, window, return_lse=True)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.window = window
        return o

    @staticmethod
    def backward(ctx, do):
        from magnet_fast.kernels.banded_attn import triton_bwd as tb
        return (*tb.banded_attn_bwd(do, *ctx.saved_tensors, ctx.window), None)


_inputs: dict = {}


def _case_inputs(shape: str, dtype, device):
    """Seeded q, k, v (leaves), dO and the reference gradients, built once per shape."""
    key = (shape, dtype, device)
    if key not in _inputs:
        _inputs.clear()
        if device == "cuda":
            torch.cuda.empty_cache()
        B, H, T, D, window = SHAPES[shape]
        g = torch.Generator(device="cpu").manual_seed(0)
        q, k, v, do = (torch.randn(B, H, T, D, generator=g).to(device=device, dtype=dtype) for _ in range(4))
        leaves = [x.requires_grad_() for x in (q, k, v)]
        ref = torch.autograd.grad(_forward("naive", window, T, device)(*leaves), leaves, do)
        _inputs[key] = (leaves, do, ref)
    return _inputs[key]


def test_banded_attn_backward(benchmark, request, bwd_shape, bwd_mode, bwd_provider):
    o = _options(request.config)
    device, dtype = o["device"], o["dtype"]
    B, H, T, D, window = SHAPES[bwd_shape]
    why = _unavailable(bwd_provider, device)
    if why:
        pytest.skip(f"{bwd_provider}: {why}")
    leaves, do, ref = _case_inputs(bwd_shape, dtype, device)
    fwd = _forward(bwd_provider, window, T, device)

    got = torch.autograd.grad(fwd(*leaves), leaves, do)         # warm-up (compiles) and the parity gate
    err = max((g.float() - r.float()).abs().max().item() for g, r in zip(got, ref, strict=True))
    finite = all(g.isfinite().all().item() for g in got)
    benchmark.extra_info.update({"shape": bwd_shape, "dims": {"B": B, "H": H, "T": T, "D": D, "window": window},
                                 "provider": bwd_provider, "mode": bwd_mode, "device": device,
                                 "dtype": str(dtype).removeprefix("torch."), "max_abs_err_vs_naive": err,
                                 "flops_bwd_dense": 5 * 2 * B * H * T * T * D})
    assert finite and err <= GRAD_ATOL[dtype] * max(1.0, math.sqrt(T / 500)), \
        f"parity gate: {bwd_provider} grads vs naive: max abs err {err:.3e}"

    if bwd_mode == "bwd":
        out = fwd(*leaves)

        def call():
            grads = torch.autograd.grad(out, leaves, do, retain_graph=True)
            sync(device)
            return grads
    else:
        def call():
            grads = torch.autograd.grad(fwd(*leaves), leaves, do)
            sync(device)
            return grads
    benchmark.group = f"banded_attn backward {bwd_shape} {bwd_mode} {benchmark.extra_info['dtype']}"
    sync(device)
    benchmark(call)
