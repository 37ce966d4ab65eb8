"""Triton backward of banded (|t - s| <= window) non-causal attention: dQ, dK, dV from the saved log-sum-exp.

FlashAttention-2 style recomputation (derivation: docs/kernels-backward.md). The forward
(``triton.banded_attn_fwd(..., return_lse=True)``) saves o and the rows' natural-log log-sum-exp ``lse``;
the backward never stores a [T, T] matrix. Three kernels, launched in order by ``banded_attn_bwd``:

1. ``banded_attn_bwd_delta_kernel``: D_t = sum_d dO[t, d] * o[t, d] (minus the lse gradient, if any).
2. ``banded_attn_bwd_dkdv_kernel``: one program per key block (and batch-head); it holds K, V and the
   dK, dV accumulators and walks the query blocks whose band reaches the key block.
3. ``banded_attn_bwd_dq_kernel``: one program per query block; it holds Q, dO and the dQ accumulator
   and walks the key blocks of its band (the forward's loop).

Split rather than fused: a fused kernel (dK/dV per key block, dQ added with atomics) would recompute
Q K^T and dO V^T once instead of twice, but its fp32 atomic adds make dQ depend on the programs' order.
Separate kernels write every gradient element exactly once: deterministic (a resumed training run gives
the same losses), no fp32 dQ scratch buffer, no zero-fill. With the band the extra recomputation is small.

Layout: q, k, v, do are [B, H, T, D] with unit stride on D and any strides on B, H, T (views of a packed
qkv, an expanded gradient); o is [B, H, T, D] (any strides, unit on D), lse [B, H, T] fp32. dq, dk, dv
are fresh contiguous [B, H, T, D] in the inputs' dtype.
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from magnet_fast.kernels._alloc import empty
from magnet_fast.kernels.constants import SUPPORTED_D

LOG2E_C = tl.constexpr(1.4426950408889634)        # constexpr globals: readable inside @jit functions


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit(do_not_specialize=["T"])
def banded_attn_bwd_delta_kernel(
    o, do, glse, delta,
    s_ob, s_oh, s_ot,
    s_gb, s_gh, s_gt,
    H, T,
    D: tl.constexpr,
    BD: tl.constexpr,
    BT: tl.constexpr,
    HAS_GLSE: tl.constexpr,
):
    """delta[b, h, t] = sum_d do * o  (- glse[b, h, t]), fp32, for t in one block of BT rows."""
    i_t = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = i_t * BT + tl.arange(0, BT)
    o_d = tl.arange(0, BD)
    m_t = o_t < T
    o_tt = o_t.to(tl.int64)
    mask = m_t[:, None] & (o_d < D)[None, :]
    b_o = tl.load(o + i_b * s_ob + i_h * s_oh + o_tt[:, None] * s_ot + o_d[None, :], mask=mask, other=0.0)
    b_do = tl.load(do + i_b * s_gb + i_h * s_gh + o_tt[:, None] * s_gt + o_d[None, :], mask=mask, other=0.0)
    b_delta = tl.sum(b_o.to(tl.float32) * b_do.to(tl.float32), 1)
    if HAS_GLSE:
        b_delta -= tl.load(glse + i_bh * T + o_tt, mask=m_t, other=0.0).to(tl.float32)
    tl.store(delta + i_bh * T + o_tt, b_delta, mask=m_t)


@triton.jit(do_not_specialize=["T", "W"])
def banded_attn_bwd_dkdv_kernel(
    q, k, v, do, lse, delta, dk, dv,
    s_qb, s_qh, s_qt,
    s_kb, s_kh, s_kt,
    s_vb, s_vh, s_vt,
    s_gb, s_gh, s_gt,
    H, T, W, sm_scale,
    D: tl.constexpr,
    BD: tl.constexpr,
    BM: tl.constexpr,          # query rows per inner step
    BN: tl.constexpr,          # key rows this program owns
    BANDED: tl.constexpr,
    UPCAST: tl.constexpr,
    IEEE: tl.constexpr,
):
    """dV = P^T dO and dK = scale * dS^T Q for keys [i_n*BN, i_n*BN + BN), over the queries of the band.

    Works in the transposed orientation (rows = keys): P^T = exp2(K Q^T * scale*log2e - lse*log2e),
    dP^T = V dO^T, dS^T = P^T * (dP^T - delta), so no [BM, BN] tile is ever transposed.
    """
    i_n = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    qk_scale = sm_scale * LOG2E_C
    o_n = i_n * BN + tl.arange(0, BN)                                    # [BN] key rows
    o_d = tl.arange(0, BD)
    m_n, m_d = o_n < T, o_d < D
    o_nt = o_n.to(tl.int64)
    m_nd = m_n[:, None] & m_d[None, :]
    b_k = tl.load(k + i_b * s_kb + i_h * s_kh + o_nt[:, None] * s_kt + o_d[None, :], mask=m_nd, other=0.0)
    b_v = tl.load(v + i_b * s_vb + i_h * s_vh + o_nt[:, None] * s_vt + o_d[None, :], mask=m_nd, other=0.0)
    if UPCAST:
        b_k = b_k.to(tl.float32)
        b_v = b_v.to(tl.float32)
    q_base = q + i_b * s_qb + i_h * s_qh
    do_base = do + i_b * s_gb + i_h * s_gh
    lse_base = lse + i_bh * T
    delta_base = delta + i_bh * T

    b_dk = tl.zeros([BN, BD], dtype=tl.float32)
    b_dv = tl.zeros([BN, BD], dtype=tl.float32)
    if BANDED:
        # queries whose band reaches keys [n0, n0 + BN): [n0 - W, n0 + BN - 1 + W], clipped to [0, T)
        lo = tl.maximum(i_n * BN - W, 0) // BM * BM
        hi = tl.minimum(i_n * BN + BN + W, T)
    else:
        lo = 0
        hi = T
    for i_m in range(lo, hi, BM):
        o_m = i_m + tl.arange(0, BM)                                     # [BM] query rows
        m_m = o_m < T
        o_mt = o_m.to(tl.int64)
        m_md = m_m[:, None] & m_d[None, :]
        b_q = tl.load(q_base + o_mt[:, None] * s_qt + o_d[None, :], mask=m_md, other=0.0)      # [BM, BD]
        b_do = tl.load(do_base + o_mt[:, None] * s_gt + o_d[None, :], mask=m_md, other=0.0)    # [BM, BD]
        b_lse = tl.load(lse_base + o_mt, mask=m_m, other=0.0) * LOG2E_C                        # [BM]
        b_delta = tl.load(delta_base + o_mt, mask=m_m, other=0.0)                              # [BM]
        if UPCAST:
            b_q = b_q.to(tl.float32)
            b_do = b_do.to(tl.float32)
        if IEEE:
            b_st = tl.dot(b_k, tl.trans(b_q), input_precision="ieee")
        else:
            b_st = tl.dot(b_k, tl.trans(b_q))                            # [BN, BM] = S^T / scale
        keep = m_n[:, None] & m_m[None, :]
        if BANDED:
            delta_ts = o_m[None, :] - o_n[:, None]
            keep = keep & (delta_ts <= W) & (delta_ts >= -W)
        b_pt = tl.where(keep, tl.exp2((b_st * qk_scale).to(tl.float32) - b_lse[None, :]), 0.0)     # P^T
        if IEEE:
            b_dv += tl.dot(b_pt, b_do, input_precision="ieee")
            b_dpt = tl.dot(b_v, tl.trans(b_do), input_precision="ieee")
        else:
            b_dv += tl.dot(b_pt.to(b_do.dtype), b_do)
            b_dpt = tl.dot(b_v, tl.trans(b_do))                          # [BN, BM] = dP^T
        b_dst = b_pt * (b_dpt - b_delta[None, :])                        # dS^T (zero outside the band)
        if IEEE:
            b_dk += tl.dot(b_dst, b_q, input_precision="ieee")
        else:
            b_dk += tl.dot(b_dst.to(b_q.dtype), b_q)
    b_dk = (b_dk * sm_scale).to(tl.float32)     # .to: torch.compile passes Python floats as fp64
    out = i_bh * T * D + o_nt[:, None] * D + o_d[None, :]
    tl.store(dk + out, b_dk.to(dk.dtype.element_ty), mask=m_nd)
    tl.store(dv + out, b_dv.to(dv.dtype.element_ty), mask=m_nd)


@triton.jit(do_not_specialize=["T", "W"])
def banded_attn_bwd_dq_kernel(
    q, k, v, do, lse, delta, dq,
    s_qb, s_qh, s_qt,
    s_kb, s_kh, s_kt,
    s_vb, s_vh, s_vt,
    s_gb, s_gh, s_gt,
    H, T, W, sm_scale,
    D: tl.constexpr,
    BD: tl.constexpr,
    BM: tl.constexpr,          # query rows this program owns
    BN: tl.constexpr,          # key rows per inner step
    BANDED: tl.constexpr,
    UPCAST: tl.constexpr,
    IEEE: tl.constexpr,
):
    """dQ = scale * dS K for queries [i_m*BM, i_m*BM + BM), over the keys of the band (the forward's loop)."""
    i_m = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    qk_scale = sm_scale * LOG2E_C
    o_m = i_m * BM + tl.arange(0, BM)
    o_d = tl.arange(0, BD)
    m_m, m_d = o_m < T, o_d < D
    o_mt = o_m.to(tl.int64)
    m_md = m_m[:, None] & m_d[None, :]
    b_q = tl.load(q + i_b * s_qb + i_h * s_qh + o_mt[:, None] * s_qt + o_d[None, :], mask=m_md, other=0.0)
    b_do = tl.load(do + i_b * s_gb + i_h * s_gh + o_mt[:, None] * s_gt + o_d[None, :], mask=m_md, other=0.0)
    b_lse = tl.load(lse + i_bh * T + o_mt, mask=m_m, other=0.0) * LOG2E_C
    b_delta = tl.load(delta + i_bh * T + o_mt, mask=m_m, other=0.0)
    if UPCAST:
        b_q = b_q.to(tl.float32)
        b_do = b_do.to(tl.float32)
    k_base = k + i_b * s_kb + i_h * s_kh
    v_base = v + i_b * s_vb + i_h * s_vh

    b_dq = tl.zeros([BM, BD], dtype=tl.float32)
    if BANDED:
        lo = tl.maximum(i_m * BM - W, 0) // BN * BN
        hi = tl.minimum(i_m * BM + BM + W, T)
    else:
        lo = 0
        hi = T
    for i_n in range(lo, hi, BN):
        o_n = i_n + tl.arange(0, BN)
        m_n = o_n < T
        o_nt = o_n.to(tl.int64)
        m_nd = m_n[:, None] & m_d[None, :]
        b_k = tl.load(k_base + o_nt[:, None] * s_kt + o_d[None, :], mask=m_nd, other=0.0)       # [BN, BD]
        b_v = tl.load(v_base + o_nt[:, None] * s_vt + o_d[None, :], mask=m_nd, other=0.0)       # [BN, BD]
        if UPCAST:
            b_k = b_k.to(tl.float32)
            b_v = b_v.to(tl.float32)
        if IEEE:
            b_s = tl.dot(b_q, tl.trans(b_k), input_precision="ieee")
            b_dp = tl.dot(b_do, tl.trans(b_v), input_precision="ieee")
        else:
            b_s = tl.dot(b_q, tl.trans(b_k))                             # [BM, BN] = S / scale
            b_dp = tl.dot(b_do, tl.trans(b_v))                           # [BM, BN] = dP
        keep = m_m[:, None] & m_n[None, :]
        if BANDED:
            delta_ts = o_m[:, None] - o_n[None, :]
            keep = keep & (delta_ts <= W) & (delta_ts >= -W)
        b_p = tl.where(keep, tl.exp2((b_s * qk_scale).to(tl.float32) - b_lse[:, None]), 0.0)
        b_ds = b_p * (b_dp - b_delta[:, None])
        if IEEE:
            b_dq += tl.dot(b_ds, b_k, input_precision="ieee")
        else:
            b_dq += tl.dot(b_ds.to(b_k.dtype), b_k)
    b_dq = (b_dq * sm_scale).to(tl.float32)
    tl.store(dq + i_bh * T * D + o_mt[:, None] * D + o_d[None, :], b_dq.to(dq.dtype.element_ty), mask=m_md)


def bwd_block_config(D: int, banded: bool, window: int, interpret: bool | None = None,
                     fp32: bool = False) -> dict:
    """Tiles of the two backward kernels: {"dkdv": {BM, BN, num_warps, num_stages}, "dq": {...}, "delta":
    {BT, num_warps}}. dkdv owns BN keys and steps over BM queries; dq owns BM queries and steps over BN
    keys. Every choice compiles for sm_90 without spills (bench/sm90.py, bench/results/sm90-*/)."""
    if interpret is None:
        interpret = interpreting()
    delta = {"BT": 16 if interpret else 32, "num_warps": 4}      # 64 rows spilled at fp16 D=48 (Triton 3.6)
    if interpret:
        tile = {"BM": 16, "BN": 16, "num_warps": 4, "num_stages": 1}
        return {"dkdv": dict(tile), "dq": dict(tile), "delta": delta}
    small_band = banded and window <= 32
    if fp32:
        # IEEE fp32 dots hold twice the registers of 16-bit tiles, and ptxas is erratic with them (measured,
        # bench/results/sm90-*-bwd/): 8 warps spill at D = 80/96 with Triton 3.9; with the GPU image's 3.6,
        # two stages spill 8-80 B at D = 32/48 (dK/dV) and 64-128 (dQ), while one stage spills dK/dV at
        # D = 80/96 with 3.9. These choices spill with neither.
        return {"dkdv": {"BM": 16, "BN": 32, "num_warps": 4, "num_stages": 1 if D <= 64 else 2},
                "dq": {"BM": 32 if D <= 64 else 16, "BN": 16, "num_warps": 4, "num_stages": 1}, "delta": delta}
    if D > 64:
        return {"dkdv": {"BM": 16, "BN": 64, "num_warps": 8, "num_stages": 2},
                "dq": {"BM": 64, "BN": 16, "num_warps": 8, "num_stages": 2}, "delta": delta}
    if small_band:
        return {"dkdv": {"BM": 16, "BN": 64, "num_warps": 4, "num_stages": 2},
                "dq": {"BM": 64, "BN": 16, "num_warps": 4, "num_stages": 2}, "delta": delta}
    return {"dkdv": {"BM": 32, "BN": 64, "num_warps": 4, "num_stages": 2},
            "dq": {"BM": 64, "BN": 32, "num_warps": 4, "num_stages": 2}, "delta": delta}


def _unit_d(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def banded_attn_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                    lse: torch.Tensor, window: int | None, scale: float | None = None, *,
                    glse: torch.Tensor | None = None, ieee: bool | None = None, tiles: dict | None = None,
                    launcher=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the three backward kernels -> (dq, dk, dv), fresh contiguous [B, H, T, D] in q's dtype.

    ``o``/``lse``: the forward's output and natural-log log-sum-exp (``banded_attn_fwd(...,
    return_lse=True)``); ``glse``: the gradient flowing into lse (None: zero). ``ieee`` (default: True for
    fp32) forces exact fp32 dots on GPU. ``tiles`` overrides entries of ``bwd_block_config`` (tests:
    ``{"dkdv": {"BM": 16, "BN": 32}, "dq": {...}}``); ``launcher`` is ``wrap_triton`` inside the custom op.
    """
    assert q.dim() == 4 and q.shape == k.shape == v.shape == do.shape == o.shape, \
        (q.shape, k.shape, v.shape, do.shape, o.shape)
    assert q.dtype == k.dtype == v.dtype and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
    assert q.device == k.device == v.device == do.device == o.device == lse.device
    B, H, T, D = q.shape
    assert D in SUPPORTED_D, f"head dim {D} not in {SUPPORTED_D}"
    assert T >= 1 and (window is None or window >= 0), (T, window)
    assert lse.shape == (B, H, T), (lse.shape, (B, H, T))
    q, k, v, do, o = (_unit_d(x) for x in (q, k, v, do, o))
    do = do.to(q.dtype)
    lse = lse.float().contiguous()
    if glse is not None:
        glse = glse.float().contiguous()
    banded = window is not None and window < T - 1
    fp32 = q.dtype == torch.float32
    cfg = bwd_block_config(D, banded, window if banded else T, fp32=fp32)
    for name, over in (tiles or {}).items():
        cfg[name] = {**cfg[name], **over}
    for name in ("dkdv", "dq"):
        assert cfg[name]["BM"] >= 16 and cfg[name]["BN"] >= 16, "tl.dot needs tiles >= 16 on NVIDIA"
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    ieee = fp32 if ieee is None else ieee
    upcast = fp32 or (interpreting() and q.dtype == torch.bfloat16)     # the interpreter's bf16 (README.md)
    BD = triton.next_power_of_2(D)
    W = window if banded else T
    wrap = (lambda f: f) if launcher is None else launcher

    delta = empty((B, H, T), torch.float32, q.device)
    c = cfg["delta"]
    wrap(banded_attn_bwd_delta_kernel)[(triton.cdiv(T, c["BT"]), B * H)](
        o, do, glse if glse is not None else lse, delta,
        o.stride(0), o.stride(1), o.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        H, T, D=D, BD=BD, BT=c["BT"], HAS_GLSE=glse is not None, num_warps=c["num_warps"])

    dq = empty((B, H, T, D), q.dtype, q.device)
    dk = empty((B, H, T, D), q.dtype, q.device)
    dv = empty((B, H, T, D), q.dtype, q.device)
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2))
    c = cfg["dkdv"]
    wrap(banded_attn_bwd_dkdv_kernel)[(triton.cdiv(T, c["BN"]), B * H)](
        q, k, v, do, lse, delta, dk, dv, *strides, H, T, W, scale,
        D=D, BD=BD, BM=c["BM"], BN=c["BN"], BANDED=banded, UPCAST=upcast, IEEE=ieee,
        num_warps=c["num_warps"], num_stages=c["num_stages"])
    c = cfg["dq"]
    wrap(banded_attn_bwd_dq_kernel)[(triton.cdiv(T, c["BM"]), B * H)](
        q, k, v, do, lse, delta, dq, *strides, H, T, W, scale,
        D=D, BD=BD, BM=c["BM"], BN=c["BN"], BANDED=banded, UPCAST=upcast, IEEE=ieee,
        num_warps=c["num_warps"], num_stages=c["num_stages"])
    return dq, dk, dv
