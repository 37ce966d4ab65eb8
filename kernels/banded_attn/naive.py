"""Plain-PyTorch banded (restricted-context) attention: the ground truth for the Triton kernel.

Layout: q, k, v are [B, H, T, D] (strided views are fine). Query t attends key s iff |t - s| <= window;
``window=None`` (or window >= T - 1) is full bidirectional attention. Scores, softmax and the value
product are computed in float32 (what audiocraft's attention does on every backend) and the result is
cast back to q's dtype.

The arithmetic mirrors audiocraft 1.3.0's MAGNeT attention op for op (scale applied to q, an additive
0/-inf band, dense softmax over all keys), which is what makes CPU fp32 parity bitwise.

``banded_attention_lse`` / ``banded_attention_bwd`` are the reference of the backward (the ops' backward
off CUDA, and what the Triton backward follows step for step; docs/kernels-backward.md).
"""
from __future__ import annotations

import math

import torch


def band_bias(t_q: int, t_k: int, window: int | None, device=None, dtype=torch.float32) -> torch.Tensor | None:
    """Additive [t_q, t_k] bias: 0 where |q - k| <= window, -inf elsewhere (None when unrestricted)."""
    if window is None or window >= max(t_q, t_k) - 1:
        return None
    delta = torch.arange(t_q, device=device).view(-1, 1) - torch.arange(t_k, device=device).view(1, -1)
    zero = torch.zeros([], device=device, dtype=dtype)
    return torch.where(delta.abs() <= window, zero, torch.full([], float("-inf"), device=device, dtype=dtype))


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for fp32/fp16/bf16 inputs (the runtime's contract), float64 for float64 (gradcheck)."""
    return torch.promote_types(dtype, torch.float32)


def banded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None,
                     scale: float | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q*scale @ k^T + band) @ v in float32; q, k, v [B, H, T, D] -> [B, H, T, D] in q.dtype.

    ``bias`` lets a caller pass a precomputed ``band_bias`` (it must equal the band for ``window``).
    float64 inputs are computed in float64 (every other dtype in float32, bitwise as before).
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    dtype, ct = q.dtype, compute_dtype(q.dtype)
    att = (q.to(ct) * scale) @ k.to(ct).transpose(-2, -1)
    if bias is None:
        bias = band_bias(q.shape[-2], k.shape[-2], window, device=q.device, dtype=ct)
    if bias is not None:
        att = att + bias
    return (att.softmax(dim=-1) @ v.to(ct)).to(dtype)


def _scores(q, k, window, scale):
    ct = compute_dtype(q.dtype)
    att = (q.to(ct) * scale) @ k.to(ct).transpose(-2, -1)
    bias = band_bias(q.shape[-2], k.shape[-2], window, device=q.device, dtype=ct)
    return att if bias is None else att + bias


def banded_attention_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None,
                         scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(banded_attention(...), lse)``: the output exactly as ``banded_attention`` computes it, and the
    rows' log-sum-exp (natural log) of the scaled, banded scores, float32 (float64 for float64 inputs)
    ``[B, H, T]``: what the backward recomputes the probabilities from, P = exp(scale*q.k - lse)."""
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    att = _scores(q, k, window, scale)
    out = (att.softmax(dim=-1) @ v.to(att.dtype)).to(q.dtype)
    return out, att.logsumexp(dim=-1)


def banded_attention_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         o: torch.Tensor, lse: torch.Tensor, window: int | None, scale: float | None = None,
                         glse: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain-PyTorch backward of banded attention (dense, O(T^2) memory): the reference the Triton backward
    (triton_bwd.py) follows step for step, and the op's backward off CUDA.

    With S = scale*q k^T + band, P = exp(S - lse), o = P v (docs/kernels-backward.md):
    dV = P^T dO, dP = dO V^T, D = rowsum(dO * o) - glse, dS = P * (dP - D), dQ = scale * dS K,
    dK = scale * dS^T Q. ``glse`` is the gradient flowing into lse (None: zero). Math in float32
    (float64 for float64 inputs); the gradients come back in the inputs' dtypes.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    att = _scores(q, k, window, scale)
    ct = att.dtype
    p = torch.exp(att - lse.to(ct).unsqueeze(-1))                     # masked entries: exp(-inf) = 0
    do_, o_ = do.to(ct), o.to(ct)
    delta = (do_ * o_).sum(-1)
    if glse is not None:
        delta = delta - glse.to(ct)
    dv = p.transpose(-2, -1) @ do_
    dp = do_ @ v.to(ct).transpose(-2, -1)
    ds = p * (dp - delta.unsqueeze(-1))
    dq = (ds @ k.to(ct)) * scale
    dk = (ds.transpose(-2, -1) @ q.to(ct)) * scale
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
