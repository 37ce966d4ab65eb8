"""Constants shared by the torch sampler (``sample/naive.py``, the decoding loop) and the fused Triton
sampler (``sample/triton.py``, which receives them as ``tl.constexpr`` arguments). This module is their
one home: change a value here and both paths follow (semantics: docs/DESIGN.md, "Decoding algorithm").
"""
from __future__ import annotations

TEMPERATURE_FLOOR = 0.01
"""Sampling temperatures are clamped from below: softmax(logits / max(temperature, TEMPERATURE_FLOOR))."""

DONT_REMASK = -1e4
"""Span/token score that keeps a span fixed: never among the highest scores, so never masked again."""


def mask_id(card: int) -> int:
    """The mask token id of a codebook of ``card`` entries: one past the last code, i.e. ``card``."""
    return card


SUPPORTED_D = (16, 32, 48, 64, 80, 96, 128)
"""Head dims the banded-attention Triton kernel is built and tested for."""

__all__ = ["DONT_REMASK", "SUPPORTED_D", "TEMPERATURE_FLOOR", "mask_id"]
