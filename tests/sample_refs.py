"""Test-only references for the span selection of kernels/sample (not shipped in the package).

``select_stride1_loop`` is audiocraft's per-row, host-side binary search for 'stride1' masking, the
reference that ``naive.select_stride1`` (vectorised, no host sync) must equal. ``next_mask_nonoverlap`` /
``next_mask_stride1`` compose naive.py's selection into a token mask the way the decoding loop does.
"""
from __future__ import annotations

import torch

from magnet_fast.kernels.sample import naive


def select_stride1_loop(scores: torch.Tensor, num_masked: int, span_len: int) -> torch.Tensor:
    """The per-row host-side binary search of audiocraft's stride1 masking (test reference)."""
    B, T = scores.shape
    out = torch.zeros(B, T, dtype=torch.bool, device=scores.device)

    def union(starts: torch.Tensor) -> torch.Tensor:
        m = torch.zeros(T, dtype=torch.bool, device=scores.device)
        for j in range(span_len):
            m[(starts + j).clamp(max=T - 1)] = True
        return m

    for b in range(B):
        order = torch.argsort(scores[b].unfold(-1, span_len, 1).sum(-1), descending=True)
        target = max(num_masked, span_len)
        lo, hi = target // span_len, target - span_len + 1
        mid = round(0.5 * (lo + hi))
        mask = union(order[:mid])
        while lo < mid < hi:
            mask = union(order[:mid])
            if int(mask.sum()) > target:
                hi = mid
            else:
                lo = mid
            mid = round(0.5 * (lo + hi))
        out[b] = mask
    return out


def next_mask_nonoverlap(scores: torch.Tensor, num_masked: int, span_len: int) -> torch.Tensor:
    """Token mask [B, G * span_len] of the ``num_masked`` highest-scoring chunks (torch.topk ties)."""
    return naive.spans_to_tokens(naive.select_spans(scores, num_masked), span_len)


def next_mask_stride1(scores: torch.Tensor, num_masked: int, span_len: int) -> torch.Tensor:
    """Token mask [B, T] of stride1's least-probable overlapping spans (naive.select_stride1, sync-free)."""
    return naive.select_stride1(scores, num_masked, span_len)
