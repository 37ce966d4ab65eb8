"""Span arrangements: which positions a decoding step re-masks (docs/DESIGN.md, Decoding algorithm).

An arrangement turns the previous step's scores into this step's mask. ``NonOverlap`` re-masks the
``num_masked`` highest-scoring spans of ``span_len`` frames (scores live on spans); ``Stride1`` re-masks
around the least probable tokens with overlapping spans (scores live on tokens); ``Tokens`` is the
span_len == 1 case (one-frame spans, token scores). All are plain tensor ops without host sync.
"""
from __future__ import annotations

import torch

from magnet_fast.kernels.sample import naive as S


class NonOverlap:
    """Spans of ``span_len`` frames at multiples of span_len; scores [B, T // span_len]."""
    chunked = True

    def __init__(self, span_len: int):
        self.span_len = self.unit = span_len

    def select(self, scores: torch.Tensor, num_masked: int):
        """-> (unit mask [B, units], token mask [B, T], indices of the chosen units [B, num_masked])."""
        top = S.top_spans(scores, num_masked)
        units = S.spans_mask(scores, top)
        return units, S.spans_to_tokens(units, self.span_len), top

    def positions(self, top: torch.Tensor | None) -> torch.Tensor | None:
        """Token positions [B, num_masked * span_len] of the chosen spans (a static count: graph-safe)."""
        span = self.span_len
        return (top.unsqueeze(-1) * span + torch.arange(span, device=top.device)).reshape(top.shape[0], -1)

    def scored_mask(self, units: torch.Tensor, was_masked: torch.Tensor) -> torch.Tensor:
        """Which units the scorer scores (the others keep the fixed score)."""
        return units


class Tokens(NonOverlap):
    """span_len == 1: the num_masked highest-scoring tokens; token scores over what is still masked."""
    chunked = False

    def __init__(self):
        super().__init__(1)

    def positions(self, top):
        return None

    def scored_mask(self, units, was_masked):
        return was_masked


class Stride1:
    """Overlapping spans of span_len frames around the least probable tokens; scores [B, T]."""
    chunked = False
    unit = 1

    def __init__(self, span_len: int):
        self.span_len = span_len

    def select(self, scores: torch.Tensor, num_masked: int):
        masked = S.select_stride1(scores, num_masked, self.span_len)
        return masked, masked, None

    def positions(self, top):
        return None

    def scored_mask(self, units, was_masked):
        return was_masked


def make_arrangement(span_len: int, arrangement: str):
    """The arrangement object for a model's span_len and the call's span_arrangement."""
    if span_len > 1 and arrangement == "nonoverlap":
        return NonOverlap(span_len)
    if span_len > 1 and arrangement == "stride1":
        return Stride1(span_len)
    return Tokens()
