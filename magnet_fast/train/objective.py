"""MAGNeT's training objective (audiocraft 1.3.0 ``MagnetSolver.run_step``), as pure functions.

Every random draw happens in the order audiocraft makes it, from the same generators, so that after
``random.seed(s); torch.manual_seed(s)`` the loss is audiocraft's (docs/finetuning.md, "The objective"):

1. condition dropout: one ``torch.rand(1)`` from the dropout's own generator per batch (seeded 1234);
2. T5 word dropout: one Python ``random.random()`` per space-separated word of every entry (an empty or
   null entry is one word, ``""``);
3. the stage: ``random.randint(0, K - 1)`` (Python);
4. per row a time t ~ U(0, 1) (``uniform_`` on a [B] float32 tensor), masking rate cos(t * pi / 2);
5. span starts: ``torch.rand(B, T).argsort(-1) < u`` with u from the mean-mask-rate look-up table,
   each start extended to ``span_len`` frames.
"""
from __future__ import annotations

import math
import random as _random

import torch
import torch.nn.functional as F

IGNORE = -1


def maskrate_to_spans_table(frames: int, span_len: int) -> list[int]:
    """Look-up table m in 0..100 -> u, the number of span starts whose expected masking rate is m/100.

    The expected unmasked fraction with u random starts of spans of length L over T frames is
    choose(T - L, u) / choose(T, u) = prod_{j<u} (T - L - j) / (T - j) (the MAGNeT paper, appendix C);
    u is the first count whose expected rate reaches m/100 (a left binary search, in float64).
    """
    import bisect
    rates = [0.0]
    keep = (frames - span_len) / float(frames)
    for u in range(1, frames):
        rates.append(1.0 - keep)
        keep *= (frames - span_len - u) / (frames - u)
    return [bisect.bisect_left(rates, m / 100.0) for m in range(101)]


def sample_stage(n_q: int, py_random=None) -> int:
    """The codebook trained this step, uniform over 0..n_q-1 (Python's RNG, as audiocraft)."""
    return (py_random or _random).randint(0, n_q - 1)


def sample_mask_rates(batch: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-row masking rates cos(t * pi / 2), t ~ U(0, 1), float32 [B] (the cosine schedule)."""
    t = torch.zeros((batch,), device=device, dtype=torch.float32).uniform_(0, 1, generator=generator)
    return torch.cos(t * math.pi * 0.5)


def span_mask(rates: torch.Tensor, frames: int, table: torch.Tensor, span_len: int,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Boolean [B, T]: per row u = table[round(100 * rate)] (at least 1) span starts, each extended to
    ``span_len`` frames to the right (clipped at the end). span_len <= 1: single tokens, T * rate of them."""
    b = rates.shape[0]
    if span_len <= 1:
        count = (frames * rates).round().clamp(min=1)
        order = torch.rand((b, frames), device=rates.device, generator=generator).argsort(dim=-1)
        return order < count.unsqueeze(1)
    starts_n = table[torch.round(100 * rates).long()].clamp(min=1)
    order = torch.rand((b, frames), device=rates.device, generator=generator).argsort(dim=-1)
    starts = order < starts_n.unsqueeze(1)
    mask = starts.clone()
    for shift in range(1, span_len):
        mask[:, shift:] |= starts[:, :-shift]
    return mask


def masked_inputs(tokens: torch.Tensor, stage: int, stage_mask: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Model input: codebooks < stage kept, codebook ``stage`` masked where stage_mask, codebooks > stage
    all mask id."""
    masked = torch.zeros(tokens.shape, dtype=torch.bool, device=tokens.device)
    masked[:, stage] = stage_mask
    masked[:, stage + 1:] = True
    return torch.where(masked, torch.full_like(tokens, mask_id), tokens)


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy of logits [B, T, card] against targets [B, T] over loss_mask [B, T] positions
    (NaN when no position is selected, as upstream)."""
    t = torch.where(loss_mask, targets, torch.full_like(targets, IGNORE))
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), t.reshape(-1), ignore_index=IGNORE)


def word_dropout(entries: list[str], p: float, py_random=None) -> list[str]:
    """T5 word dropout: each space-separated word survives when ``random.random() >= p``; one draw per
    word, entries in order (an empty entry is the single word "" and costs one draw)."""
    rng = py_random or _random
    return [" ".join(w for w in e.split(" ") if rng.random() >= p) for e in entries]
