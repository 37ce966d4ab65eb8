"""Output allocation shared by the kernel launchers."""
from __future__ import annotations

import os

import torch


def empty(shape, dtype, device) -> torch.Tensor:
    """torch.empty, poisoned (NaN, or a huge negative int) when MAGNET_FAST_POISON=1, so that an output
    element a kernel never writes fails the parity tests instead of passing by luck."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if os.environ.get("MAGNET_FAST_POISON", "0") == "1":
        out.fill_(float("nan") if dtype.is_floating_point else -(2**31) + 1)
    return out
