"""Plain-PyTorch banded (restricted-context) attention: the ground truth for the Triton kernel.

Layout: q, k, v are [B, H, T, D] (strided views are fine). Query t attends key s iff |t - s| <= window;
``window=None`` (or window >= T - 1) is full bidirectional attention. Scores, softmax and the value
product are computed in float32 (what audiocraft's attention does on every backend) and the result is
cast back to q's dtype.

The arithmetic mirrors audiocraft 1.3.0's MAGNeT attention op for op (scale applied to q, an additive
0/-inf band, dense softmax over all keys), which is what makes CPU fp32 parity bitwise.
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


def banded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None,
                     scale: float | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q*scale @ k^T + band) @ v in float32; q, k, v [B, H, T, D] -> [B, H, T, D] in q.dtype.

    ``bias`` lets a caller pass a precomputed ``band_bias`` (it must equal the band for ``window``).
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    dtype = q.dtype
    att = (q.float() * scale) @ k.float().transpose(-2, -1)
    if bias is None:
        bias = band_bias(q.shape[-2], k.shape[-2], window, device=q.device)
    if bias is not None:
        att = att + bias
    return (att.softmax(dim=-1) @ v.float()).to(dtype)
