"""The one attention function of the runtime: full or banded (|q - k| <= window), never causal.

Backends (same semantics, chosen per call):
- ``"exact"``: float32 matmul + additive 0/-inf band + dense softmax, op for op what audiocraft computes
  (kernels/banded_attn/naive.py). Bitwise parity on CPU fp32; O(T^2) memory. The CPU default.
- ``"sdpa"``: torch's scaled_dot_product_attention with a *boolean* band mask (True = attend). The mask
  is always passed explicitly: audiocraft's torch backend instead set ``is_causal`` for masked stages,
  silently turning the band into causal attention (MAGNET_SPEC §4); that bug is not reproduced.
- ``"windowed"``: banded stages gather each query's 2*window+1 keys (O(T*window) work and memory,
  plain torch, any device); full stages use SDPA. Same math, different rounding: not bitwise.
- ``"triton"``: banded stages run the ``magnet_fast::banded_attn`` custom op (the Triton kernel on CUDA,
  the dense reference elsewhere); full stages use SDPA. Not yet validated on a GPU: opt-in.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from magnet_fast.kernels.banded_attn.naive import band_bias, banded_attention

BACKENDS = ("exact", "sdpa", "windowed", "triton")


class BandCache:
    """Masks per (T, window, device) so a generation builds each once, not once per layer and step."""

    def __init__(self) -> None:
        self._cache: dict = {}

    def get(self, kind: str, t: int, window: int | None, device: torch.device):
        key = (kind, t, window, str(device))
        if key not in self._cache:
            if kind == "bias":
                self._cache[key] = band_bias(t, t, window, device=device)
            else:
                bias = band_bias(t, t, window, device=device)
                self._cache[key] = None if bias is None else bias == 0
        return self._cache[key]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None, *,
              backend: str = "exact", masks: BandCache | None = None,
              key_lengths: tuple[int, ...] | None = None) -> torch.Tensor:
    """q [B, H, Tq, D], k/v [B, H, Tk, D] (strided views fine) -> [B, H, Tq, D] in q's dtype.

    window: None for full attention, else keys with |q - k| <= window (self-attention only, Tq == Tk).
    key_lengths: cross-attention only: row i attends to its first key_lengths[i] keys (its unpadded text).
    Rows are then computed one by one over exactly their own keys, so no result depends on how long
    another row's text is (a masked softmax over the padded length would still round differently).
    """
    if window is not None and q.shape[-2] != k.shape[-2]:
        raise ValueError("a band needs as many keys as queries")
    if key_lengths is not None:
        if window is not None or len(key_lengths) != q.shape[0]:
            raise ValueError("key_lengths needs cross-attention (no band) and one length per row")
        return torch.cat([attention(q[i:i + 1], k[i:i + 1, :, :n], v[i:i + 1, :, :n], None, backend=backend)
                          for i, n in enumerate(key_lengths)])
    masks = masks or BandCache()
    if backend == "exact":
        bias = masks.get("bias", q.shape[-2], window, q.device) if window is not None else None
        return banded_attention(q, k, v, window if bias is not None else None, bias=bias)
    banded = window is not None and window < q.shape[-2] - 1
    if backend == "windowed" and banded:
        return windowed_attention(q, k, v, window)
    if backend == "triton" and banded:
        from magnet_fast.kernels.banded_attn import banded_attention_op
        return banded_attention_op(q, k, v, window)
    if backend in ("sdpa", "windowed", "triton"):
        allowed = masks.get("bool", q.shape[-2], window, q.device) if window is not None else None
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, is_causal=False)
    raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")


def windowed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """Band attention by gathering each query's keys t-window..t+window: [B, H, T, D] -> same.

    Keys beyond the sequence ends are zero-padded and masked out; scores and softmax in float32.
    """
    t, width = q.shape[-2], 2 * window + 1
    scale = q.shape[-1] ** -0.5
    pad = (0, 0, window, window)
    k_win = F.pad(k, pad).unfold(-2, width, 1)                           # [B, H, T, D, width]
    v_win = F.pad(v, pad).unfold(-2, width, 1)
    scores = torch.einsum("bhtd,bhtdw->bhtw", q.float() * scale, k_win.float())
    pos = torch.arange(t, device=q.device).view(-1, 1) + torch.arange(width, device=q.device) - window
    scores = scores.masked_fill(((pos < 0) | (pos >= t)), float("-inf"))
    out = torch.einsum("bhtw,bhtdw->bhtd", scores.softmax(dim=-1), v_win.float())
    return out.to(q.dtype)
