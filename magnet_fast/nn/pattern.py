"""MusicGen's delay codebook pattern, by index arithmetic (docs/DESIGN.md, MusicGen): the one module that
lays codes out in the pattern and reads them back, for autoregressive decoding (``ar.py``) and teacher
forcing (the rescorer, ``rescoring.py``).

For ``frames`` T and delays d, the pattern sequence has L = T + max(d) + 1 positions: position 0 holds the
special token for every codebook, and position s holds frame s - 1 - d_k of codebook k (the special token
where that frame falls outside [0, T)).
"""
from __future__ import annotations

import torch


def pattern_length(frames: int, delays) -> int:
    """Positions of the delay pattern sequence: the initial special position + frames + max delay."""
    return frames + max(delays) + 1


def first_step(n_prompt: int, delays) -> int:
    """The first pattern position holding a frame >= n_prompt: where sampling starts (the positions
    before it are all known and go through the model in one prefill)."""
    return n_prompt + 1 + min(delays)


def build_pattern(codes: torch.Tensor, frames: int, delays, special: int, n_known: int):
    """codes [B, K, >= n_known] (the first n_known frames known) -> (seq [B, K, L] with the known frames
    and special tokens placed, writable [K, L] bool: where a sampled token is kept)."""
    b, k = codes.shape[:2]
    length = pattern_length(frames, delays)
    seq = torch.full((b, k, length), special, dtype=codes.dtype, device=codes.device)
    writable = torch.zeros(k, length, dtype=torch.bool, device=codes.device)
    for q, d in enumerate(delays):
        if n_known:
            seq[:, q, 1 + d: 1 + d + n_known] = codes[:, q, :n_known]
        writable[q, 1 + d + n_known: 1 + d + frames] = True
    return seq, writable


def pattern_sequence(codes: torch.Tensor, delays, special: int) -> torch.Tensor:
    """Teacher forcing: codes [B, K, T], every frame known -> the pattern input [B, K, T + max(delays) + 1]."""
    return build_pattern(codes, codes.shape[-1], delays, special, codes.shape[-1])[0]


def revert_pattern(seq: torch.Tensor, frames: int, delays) -> torch.Tensor:
    """Pattern sequence [B, K, L] -> codes [B, K, frames]: frame t of codebook k sits at 1 + t + delays[k]."""
    return torch.stack([seq[:, q, 1 + d: 1 + d + frames] for q, d in enumerate(delays)], dim=1)
