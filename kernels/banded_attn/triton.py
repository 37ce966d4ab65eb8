"""Triton forward kernel for banded (|t - s| <= window) non-causal attention.

Layout: q, k, v are [B, H, T, D] with unit stride on D (any strides on B, H, T, e.g. views of a packed
qkv projection); the output is a fresh contiguous [B, H, T, D] in q's dtype. Semantics are those of
``naive.banded_attention``; the derivation (block range, pivot, exp2) is in README.md.

Three layers: ``banded_attn_fwd_kernel`` (the jit kernel), ``banded_attn_fwd`` (host launcher: checks,
allocation, grid) and ``banded_attention_op`` (the ``magnet_fast::banded_attn`` custom op: Triton on
CUDA, ``naive.banded_attention`` elsewhere, traceable by ``torch.compile(fullgraph=True)``).
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from magnet_fast.kernels._alloc import empty
from magnet_fast.kernels.banded_attn import naive
from magnet_fast.kernels.banded_attn.triton_bwd import banded_attn_bwd
from magnet_fast.kernels.constants import SUPPORTED_D

LOG2E = 1.4426950408889634
LN2 = tl.constexpr(0.6931471805599453)           # a constexpr global: readable inside @jit functions


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit(do_not_specialize=["T", "W"])
def banded_attn_fwd_kernel(
    q, k, v, o, lse,
    s_qb, s_qh, s_qt,
    s_kb, s_kh, s_kt,
    s_vb, s_vh, s_vt,
    H, T, W, qk_scale,
    D: tl.constexpr,
    BD: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BANDED: tl.constexpr,
    UPCAST: tl.constexpr,
    IEEE: tl.constexpr,
    STORE_LSE: tl.constexpr = False,
):
    i_m = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    o_m = i_m * BM + tl.arange(0, BM)                                   # [BM] query rows
    o_d = tl.arange(0, BD)
    m_m, m_d = o_m < T, o_d < D
    o_mt = o_m.to(tl.int64)

    p_q = q + i_b * s_qb + i_h * s_qh + o_mt[:, None] * s_qt + o_d[None, :]
    b_q = tl.load(p_q, mask=m_m[:, None] & m_d[None, :], other=0.0)      # [BM, BD]
    if UPCAST:
        b_q = b_q.to(tl.float32)
    k_base = k + i_b * s_kb + i_h * s_kh
    v_base = v + i_b * s_vb + i_h * s_vh

    b_m = tl.full([BM], float("-inf"), dtype=tl.float32)
    b_l = tl.zeros([BM], dtype=tl.float32)
    b_acc = tl.zeros([BM, BD], dtype=tl.float32)

    if BANDED:
        lo = tl.maximum(i_m * BM - W, 0) // BN * BN                      # first key block touching the band
        hi = tl.minimum(i_m * BM + BM + W, T)
    else:
        lo = 0
        hi = T
    for i_n in range(lo, hi, BN):
        o_n = i_n + tl.arange(0, BN)                                     # [BN] key columns
        m_n = o_n < T
        o_nt = o_n.to(tl.int64)
        b_k = tl.load(k_base + o_nt[:, None] * s_kt + o_d[None, :], mask=m_n[:, None] & m_d[None, :],
                      other=0.0)                                         # [BN, BD]
        b_v = tl.load(v_base + o_nt[:, None] * s_vt + o_d[None, :], mask=m_n[:, None] & m_d[None, :],
                      other=0.0)                                         # [BN, BD]
        if UPCAST:
            b_k = b_k.to(tl.float32)
            b_v = b_v.to(tl.float32)
        if IEEE:
            b_s = tl.dot(b_q, tl.trans(b_k), input_precision="ieee")
        else:
            b_s = tl.dot(b_q, tl.trans(b_k))
        # .to: torch.compile passes Python floats as fp64 scalars; the row statistics must stay fp32
        b_s = (b_s * qk_scale).to(tl.float32)                            # [BM, BN], log2 units
        keep = m_n[None, :]
        if BANDED:
            delta = o_m[:, None] - o_n[None, :]
            keep = keep & (delta <= W) & (delta >= -W)
        b_s = tl.where(keep, b_s, float("-inf"))
        b_mn = tl.maximum(b_m, tl.max(b_s, 1))
        # finite pivot: a row whose keys so far are all masked keeps m = -inf; exp2(-inf - 0) = 0
        b_piv = tl.where(b_mn == float("-inf"), 0.0, b_mn)
        b_p = tl.exp2(b_s - b_piv[:, None])
        b_alpha = tl.exp2(b_m - b_piv)
        b_l = b_l * b_alpha + tl.sum(b_p, 1)
        if IEEE:
            b_pv = tl.dot(b_p.to(b_v.dtype), b_v, input_precision="ieee")
        else:
            b_pv = tl.dot(b_p.to(b_v.dtype), b_v)
        b_acc = b_acc * b_alpha[:, None] + b_pv
        b_m = b_mn
    b_o = b_acc / b_l[:, None]                                           # padded rows: 0/0, never stored
    o_base = o + i_bh * T * D
    tl.store(o_base + o_mt[:, None] * D + o_d[None, :], b_o.to(o.dtype.element_ty),
             mask=m_m[:, None] & m_d[None, :])
    if STORE_LSE:
        # natural-log log-sum-exp of the row's scaled scores, for the backward (triton_bwd.py):
        # sum_s exp(scale*q.k_s) = 2^m * l in log2 units. Every real row sees itself, so l > 0 there
        # (padded rows have l = 0: log2 of 1 instead, never stored).
        tl.store(lse + i_bh * T + o_mt, (b_m + tl.log2(tl.where(m_m, b_l, 1.0))) * LN2, mask=m_m)


def block_config(T: int, D: int, banded: bool, window: int, interpret: bool | None = None,
                 fp32: bool = False, store_lse: bool = False) -> dict:
    """Hand-picked tiles (FLA style), checked for sm_90 registers/spills by bench/sm90.py.
    Interpreter: 16x16. ``interpret`` overrides the TRITON_INTERPRET check (the sm_90 compile check
    asks for the GPU configs on a CPU machine)."""
    if interpret is None:
        interpret = interpreting()
    if interpret:
        return {"BM": 16, "BN": 16, "num_warps": 4, "num_stages": 1}
    # sm_90 resource usage per choice is in bench/results/sm90-*/: none of these spills (STACK 0).
    if fp32:                                    # IEEE fp32 dots: twice the registers of 16-bit tiles
        if D <= 64:
            return {"BM": 32, "BN": 16, "num_warps": 4, "num_stages": 2}
        if store_lse:
            # the training forward: 64x32 spills on sm_90 once the lse store is in (STACK 16-776 B on Triton
            # 3.9, ptxas' choice); 16 query rows do not. Same key tiles, but the dots' shapes differ, so
            # its output may differ from the inference tile's in the last bits (fp32, D > 64 only).
            return {"BM": 16, "BN": 32, "num_warps": 8, "num_stages": 2}
        return {"BM": 64, "BN": 32, "num_warps": 8, "num_stages": 2}
    if D > 64:
        return {"BM": 64, "BN": 32, "num_warps": 8, "num_stages": 2}
    if banded and window <= 32:
        return {"BM": 64, "BN": 32, "num_warps": 4, "num_stages": 2}
    return {"BM": 128, "BN": 64, "num_warps": 8, "num_stages": 2}


def banded_attn_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None,
                    scale: float | None = None, *, ieee: bool | None = None, BM: int | None = None,
                    BN: int | None = None, launcher=None, return_lse: bool = False):
    """Launch the kernel. ``ieee`` (default: True for fp32) forces exact fp32 dots on GPU (no TF32).

    ``BM``/``BN`` override the tile sizes (tests use this); ``launcher`` is ``wrap_triton`` inside the
    custom op. ``return_lse``: also return the rows' natural-log log-sum-exp of the scaled scores, fp32
    ``[B, H, T]`` (what the backward recomputes P from; the output is the same either way).
    """
    assert q.dim() == 4 and q.shape == k.shape == v.shape, (q.shape, k.shape, v.shape)
    assert q.dtype == k.dtype == v.dtype and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
    assert q.device == k.device == v.device
    B, H, T, D = q.shape
    assert D in SUPPORTED_D, f"head dim {D} not in {SUPPORTED_D}"
    assert T >= 1 and (window is None or window >= 0), (T, window)
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        q, k, v = (x.contiguous() if x.stride(-1) != 1 else x for x in (q, k, v))
    banded = window is not None and window < T - 1
    fp32 = q.dtype == torch.float32
    cfg = block_config(T, D, banded, window if banded else T, fp32=fp32, store_lse=return_lse)
    BM, BN = BM or cfg["BM"], BN or cfg["BN"]
    assert BM >= 16 and BN >= 16, "tl.dot needs tiles >= 16 on NVIDIA"
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    ieee = fp32 if ieee is None else ieee
    o = empty((B, H, T, D), q.dtype, q.device)
    # without return_lse the kernel never touches its lse argument: q stands in (an input, so no output
    # is passed twice to a launch that torch.compile functionalises)
    lse = empty((B, H, T), torch.float32, q.device) if return_lse else q
    grid = (triton.cdiv(T, BM), B * H)
    kernel = banded_attn_fwd_kernel if launcher is None else launcher(banded_attn_fwd_kernel)
    kernel[grid](
        q, k, v, o, lse,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        H, T, window if banded else T, scale * LOG2E,
        D=D,
        BD=triton.next_power_of_2(D),
        BM=BM,
        BN=BN,
        BANDED=banded,
        # the interpreter mishandles bf16 arithmetic (README.md, "Interpreter"): upcast after the loads
        UPCAST=fp32 or (interpreting() and q.dtype == torch.bfloat16),
        IEEE=ieee,
        STORE_LSE=return_lse,
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    return (o, lse) if return_lse else o


@torch.library.custom_op("magnet_fast::banded_attn_ref", mutates_args=())
def _banded_attn_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None,
                     scale: float) -> torch.Tensor:
    """naive.banded_attention as an opaque op, so compiled CPU graphs run the bitwise reference."""
    return naive.banded_attention(q, k, v, window, scale)


@_banded_attn_ref.register_fake
def _(q, k, v, window, scale):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


@triton_op("magnet_fast::banded_attn", mutates_args=())
def _banded_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None,
                 scale: float) -> torch.Tensor:
    if q.device.type != "cuda":
        return _banded_attn_ref(q, k, v, window, scale)
    return banded_attn_fwd(q, k, v, window, scale, launcher=wrap_triton)


@_banded_attn.register_kernel("cpu")
def _(q, k, v, window, scale):
    return naive.banded_attention(q, k, v, window, scale)


# ------------------------------------------------------------------ forward with the log-sum-exp, backward
@torch.library.custom_op("magnet_fast::banded_attn_lse_ref", mutates_args=())
def _banded_attn_lse_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None,
                         scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    return naive.banded_attention_lse(q, k, v, window, scale)


@_banded_attn_lse_ref.register_fake
def _(q, k, v, window, scale):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            q.new_empty(q.shape[:-1], dtype=naive.compute_dtype(q.dtype)))


@triton_op("magnet_fast::banded_attn_lse", mutates_args=())
def _banded_attn_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None,
                     scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse): ``banded_attn``'s output (the same values) and the rows' natural-log log-sum-exp [B, H, T]
    fp32, which the backward recomputes the probabilities from. The op the runtime trains through."""
    if q.device.type != "cuda":
        return _banded_attn_lse_ref(q, k, v, window, scale)
    return banded_attn_fwd(q, k, v, window, scale, launcher=wrap_triton, return_lse=True)


@_banded_attn_lse.register_kernel("cpu")
def _(q, k, v, window, scale):
    return naive.banded_attention_lse(q, k, v, window, scale)


@torch.library.custom_op("magnet_fast::banded_attn_bwd_ref", mutates_args=())
def _banded_attn_bwd_ref(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                         lse: torch.Tensor, glse: torch.Tensor | None, window: int | None,
                         scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return naive.banded_attention_bwd(do, q, k, v, o, lse, window, scale, glse=glse)


@_banded_attn_bwd_ref.register_fake
def _(do, q, k, v, o, lse, glse, window, scale):
    return tuple(torch.empty_like(x, memory_format=torch.contiguous_format) for x in (q, k, v))


@triton_op("magnet_fast::banded_attn_bwd", mutates_args=())
def _banded_attn_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                     lse: torch.Tensor, glse: torch.Tensor | None, window: int | None,
                     scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of banded attention from the forward's o and lse (Triton on CUDA: triton_bwd.py;
    naive.banded_attention_bwd elsewhere). ``glse``: the gradient flowing into lse, or None."""
    if q.device.type != "cuda":
        return _banded_attn_bwd_ref(do, q, k, v, o, lse, glse, window, scale)
    return banded_attn_bwd(do, q, k, v, o, lse, window, scale, glse=glse, launcher=wrap_triton)


@_banded_attn_bwd.register_kernel("cpu")
def _(do, q, k, v, o, lse, glse, window, scale):
    return naive.banded_attention_bwd(do, q, k, v, o, lse, window, scale, glse=glse)


def _setup_lse(ctx, inputs, output):
    q, k, v, window, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse)
    ctx.window, ctx.scale = window, scale
    ctx.set_materialize_grads(False)            # an unused lse gets None, not a zero tensor to subtract


def _backward_lse(ctx, do, glse):
    q, k, v, o, lse = ctx.saved_tensors
    if do is None:
        do = torch.zeros_like(o)
    dq, dk, dv = torch.ops.magnet_fast.banded_attn_bwd(do, q, k, v, o, lse, glse, ctx.window, ctx.scale)
    return dq, dk, dv, None, None


def _setup(ctx, inputs, output):
    q, k, v, window, scale = inputs
    ctx.save_for_backward(q, k, v, output)
    ctx.window, ctx.scale = window, scale


def _backward(ctx, do):
    # banded_attn saved no lse (its forward is the inference one): recompute it with the forward kernel.
    # banded_attention_op avoids this by running banded_attn_lse whenever a gradient is wanted.
    q, k, v, o = ctx.saved_tensors
    _, lse = torch.ops.magnet_fast.banded_attn_lse(q, k, v, ctx.window, ctx.scale)
    dq, dk, dv = torch.ops.magnet_fast.banded_attn_bwd(do, q, k, v, o, lse, None, ctx.window, ctx.scale)
    return dq, dk, dv, None, None


torch.library.register_autograd("magnet_fast::banded_attn_lse", _backward_lse, setup_context=_setup_lse)
torch.library.register_autograd("magnet_fast::banded_attn", _backward, setup_context=_setup)


def banded_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None,
                        scale: float | None = None) -> torch.Tensor:
    """Banded attention through the ``magnet_fast::banded_attn`` op (Triton on CUDA, naive on CPU).

    Differentiable: when a gradient is wanted it runs ``magnet_fast::banded_attn_lse`` (same output, and
    the log-sum-exp saved for the backward: the Triton backward on CUDA, naive.banded_attention_bwd on
    CPU); otherwise the inference op, which stores nothing extra.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return torch.ops.magnet_fast.banded_attn_lse(q, k, v, window, scale)[0]
    return torch.ops.magnet_fast.banded_attn(q, k, v, window, scale)
