"""Span scorers: sampled-token probabilities -> the scores the next step re-masks by (higher = re-mask).

A scorer is any callable ``(sampled_probs [B, T], masked [B, units]) -> scores [B, units]`` that gives the
units not sampled in this step (``masked`` False) the fixed score ``DONT_REMASK``. The built-in ones are
audiocraft's: 'max' (1 - the span's largest probability), 'prod' (the span's summed -log p) and, for
stride1 and one-frame spans, token scores (-log p). Rescoring with a second model (rescoring.py) does not
need a scorer of its own: it mixes that model's probabilities into ``sampled_probs`` before the scorer,
so every scorer here applies unchanged. Another scoring rule is a new class here and one line in
``make_scorer`` (docs/DESIGN.md, Decoding algorithm).
"""
from __future__ import annotations

import torch

from magnet_fast.kernels.sample import naive as S


class SpanScorer:
    """'max' or 'prod' over non-overlapping spans of ``span_len`` frames."""

    def __init__(self, scoring: str, span_len: int):
        if scoring not in ("max", "prod"):
            raise ValueError(f"span scoring must be 'max' or 'prod', got {scoring!r}")
        self.scoring, self.span_len = scoring, span_len

    def __call__(self, sampled_probs: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        return S.span_scores(sampled_probs, self.span_len, self.scoring, masked)


class TokenScorer:
    """-log p per token (stride1, and one-frame spans)."""

    def __call__(self, sampled_probs: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        return S.token_scores(sampled_probs, masked)


def make_scorer(scoring: str, arrangement):
    """The scorer for a span arrangement (spans.py) and the call's span_scoring."""
    if arrangement.chunked:
        return SpanScorer(scoring, arrangement.span_len)
    return TokenScorer()
