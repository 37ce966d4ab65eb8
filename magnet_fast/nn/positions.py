"""Sinusoidal positions, the one function every forward takes its positions from (docs/DESIGN.md, Model)."""
from __future__ import annotations

import torch


def sin_embedding(t: int, dim: int, max_period: float, dtype: torch.dtype, device, start: int = 0) -> torch.Tensor:
    """[1, t, dim] positions start..start+t-1: cos(phase) then sin(phase), phase = pos / P^(j / (dim/2 - 1)).
    The one positions function: MAGNeT's table, the rescorer's and MusicGen's static tables (start 0) and
    MusicGen's eager steps (start = the step's position, audiocraft's per-call arithmetic)."""
    half = dim // 2
    pos = (torch.arange(t, device=device).view(1, -1, 1) + start).to(dtype)
    j = torch.arange(half, device=device, dtype=dtype).view(1, 1, -1)
    period = torch.full([], max_period, device=device, dtype=dtype)
    phase = pos / (period ** (j / (half - 1)))
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)
