"""Plain-PyTorch post-processing of one MAGNeT decoding step: the ground truth for the fused kernel.

Pieces, in the order the decoding loop applies them (semantics: docs/DESIGN.md, "Decoding algorithm"):

1. ``cfg_logits``      uncond + (cond - uncond) * coef                      (float32)
2. ``step_probs``      softmax(logits / max(temperature, 0.01))               (float32)
3. ``sample``          top-p / top-k / plain sampling as argmax(p / E) with caller-drawn
                       exponential noise E, or greedy argmax of the CFG logits; returns the tokens and
                       the probability each sampled token is scored with.
4. ``span_scores`` + ``select_spans``      'nonoverlap' chunk scoring and top-k chunk selection.
   ``token_scores`` + ``select_stride1``   'stride1' least-probable overlapping spans, vectorised over
                       the batch with no host synchronisation (the per-row binary search it replaces is
                       the test reference in tests/sample_refs.py).

RNG parity: on CPU ``torch.multinomial(p, 1)`` (no replacement) is exactly ``argmax(p / E)`` with
``E = torch.empty_like(p).exponential_(1)`` drawn over the full [rows, card] input. Drawing E with
``draw_noise`` just before ``sample`` therefore reproduces audiocraft's tokens and RNG consumption.
For top-p, noise column j pairs with the j-th *sorted* probability (``pairing="sorted"``, audiocraft's);
``pairing="vocab"`` pairs it with vocabulary id j instead (same distribution; what a sort-free kernel does).
"""
from __future__ import annotations

import torch

# one home shared with the Triton sampler; re-exported here as naive.DONT_REMASK / naive.TEMPERATURE_FLOOR
from magnet_fast.kernels.constants import DONT_REMASK, TEMPERATURE_FLOOR


def cfg_logits(cond: torch.Tensor, uncond: torch.Tensor, coef: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance in float32: uncond + (cond - uncond) * coef."""
    cond, uncond = cond.float(), uncond.float()
    return uncond + (cond - uncond) * coef


def step_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / max(temperature, TEMPERATURE_FLOOR)) over the last axis, float32."""
    return torch.softmax(logits.float() / max(temperature, TEMPERATURE_FLOOR), dim=-1)


def draw_noise(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Exp(1) noise of probs' shape, drawn exactly as torch.multinomial(probs, 1) draws it."""
    return torch.empty_like(probs).exponential_(1, generator=generator)


def _race(p: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Index of argmax(p / E) along the last axis (first index wins ties)."""
    return (p / noise).argmax(dim=-1, keepdim=True)


def sample(probs: torch.Tensor, logits: torch.Tensor, noise: torch.Tensor | None, *, top_p: float = 0.0,
           top_k: int = 0, use_sampling: bool = True, pairing: str = "sorted"
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row. probs/logits/noise [..., card] float32 -> (tokens, scored probs) [...].

    The scored probability is the temperature probability of the sampled token; for top-k it is the
    truncated, renormalised one (audiocraft edits probs in place before gathering), for top-p and
    plain sampling the un-truncated one. Greedy (use_sampling=False) takes argmax of ``logits``.
    Selection order: top_p > 0 wins, else top_k > 0, else plain sampling.
    """
    scored = probs
    if not use_sampling:
        tokens = logits.argmax(dim=-1, keepdim=True)
    elif top_p > 0.0:
        p_sort, idx = torch.sort(probs, dim=-1, descending=True)
        before = torch.cumsum(p_sort, dim=-1) - p_sort           # mass strictly before each token
        p_sort = p_sort * (~(before > top_p)).float()
        p_sort = p_sort / p_sort.sum(dim=-1, keepdim=True)
        if pairing == "sorted":
            tokens = torch.gather(idx, -1, _race(p_sort, noise))
        elif pairing == "vocab":
            kept = torch.zeros_like(probs).scatter(-1, idx, p_sort)
            tokens = _race(kept, noise)
        else:
            raise ValueError(f"pairing must be 'sorted' or 'vocab', got {pairing!r}")
    elif top_k > 0:
        kth = torch.topk(probs, top_k, dim=-1).values[..., -1:]
        scored = probs * (probs >= kth).float()                  # ties at the k-th value are all kept
        scored = scored / scored.sum(dim=-1, keepdim=True)
        tokens = _race(scored, noise)
    else:
        tokens = _race(probs, noise)
    return tokens[..., 0], torch.gather(scored, -1, tokens)[..., 0]


def top_p_boundary_tied(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Bool [...]: rows whose top-p boundary falls inside a group of exactly equal probabilities.

    ``sample`` keeps the tied tokens that come first in torch.sort's (unspecified) order; the fused Triton
    sampler keeps every token tied with the smallest kept probability. The two keep sets, and so the
    sampled tokens, may differ on exactly these rows (common with bf16 logits, which are quantised);
    elsewhere they are the same set.
    """
    p_sort, _ = torch.sort(probs.float(), dim=-1, descending=True)
    kept = ~((torch.cumsum(p_sort, dim=-1) - p_sort) > top_p)
    last = kept.sum(dim=-1, keepdim=True) - 1                    # index of the smallest kept probability
    boundary = torch.gather(p_sort, -1, last)
    nxt = torch.gather(p_sort, -1, (last + 1).clamp_max(p_sort.shape[-1] - 1))
    return ((nxt == boundary) & (last + 1 < p_sort.shape[-1]))[..., 0]


def span_scores(sampled_probs: torch.Tensor, span_len: int, scoring: str,
                masked_chunks: torch.Tensor) -> torch.Tensor:
    """'nonoverlap' chunk scores [B, n_chunks] from sampled probs [B, n_chunks * span_len].

    'max': 1 - max prob of the chunk; 'prod': sum of -log prob. Chunks not masked in this step
    (masked_chunks False) score DONT_REMASK so they are never chosen again.
    """
    chunks = sampled_probs.reshape(*sampled_probs.shape[:-1], -1, span_len)
    if scoring == "max":
        scores = 1 - torch.max(chunks, dim=-1)[0]
    elif scoring == "prod":
        scores = torch.sum(-torch.log(chunks), dim=-1)
    else:
        raise ValueError(f"span scoring must be 'max' or 'prod', got {scoring!r}")
    return scores.masked_fill(~masked_chunks, DONT_REMASK)


def top_spans(scores: torch.Tensor, num_masked: int) -> torch.Tensor:
    """Indices [B, num_masked] of the highest-scoring chunks of each row (torch.topk ties)."""
    return scores.topk(num_masked, dim=-1).indices


def spans_mask(scores: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """Boolean [B, n_chunks] (scores' shape), True at the chunk indices ``top``."""
    return torch.zeros_like(scores, dtype=torch.bool).scatter(-1, top, True)


def select_spans(scores: torch.Tensor, num_masked: int) -> torch.Tensor:
    """Boolean [B, n_chunks]: the ``num_masked`` highest-scoring chunks of each row (torch.topk ties)."""
    return spans_mask(scores, top_spans(scores, num_masked))


def spans_to_tokens(chunks: torch.Tensor, span_len: int) -> torch.Tensor:
    """[B, n_chunks] chunk mask -> [B, n_chunks * span_len] token mask (expand + reshape: unlike
    repeat_interleave, nothing about the output size is computed at run time)."""
    return chunks.unsqueeze(-1).expand(*chunks.shape, span_len).reshape(*chunks.shape[:-1], -1)


def token_scores(sampled_probs: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """'stride1' per-token scores: -log p for tokens masked in this step, DONT_REMASK elsewhere."""
    return (-torch.log(sampled_probs)).masked_fill(~masked, DONT_REMASK)


def _round_half_even(twice: torch.Tensor) -> torch.Tensor:
    """round(twice / 2) with banker's rounding (Python's round), integer tensors."""
    half = twice // 2
    return half + ((twice % 2 == 1) & (half % 2 == 1)).long()


def select_stride1(scores: torch.Tensor, num_masked: int, span_len: int) -> torch.Tensor:
    """Least-probable overlapping spans, all rows at once, no host sync. scores [B, T] -> mask [B, T].

    Windows s..s+span_len-1 are ranked by their summed score (torch.argsort, descending); the union of
    the first u windows is masked, u found by audiocraft's binary search (target max(num_masked,
    span_len), lo = target // span_len, hi = target - span_len + 1, banker's-rounded midpoints, the last
    built union returned). A token's "cover rank" is the best rank of a window containing it, so the
    union of the first u windows is {cover rank < u} and its size is a count, not a rebuild.
    """
    B, T = scores.shape
    window_scores = scores.unfold(-1, span_len, 1).sum(dim=-1)                   # [B, W]
    W = window_scores.shape[-1]
    order = torch.argsort(window_scores, dim=-1, descending=True)
    ranks = torch.arange(W, device=scores.device).expand(B, W)
    rank = torch.empty_like(order).scatter_(-1, order, ranks)                    # rank of window w
    padded = torch.nn.functional.pad(rank, (span_len - 1, span_len - 1), value=W + T)
    cover = padded.unfold(-1, span_len, 1).min(dim=-1).values                   # [B, T]
    target = max(num_masked, span_len)
    lo0, hi0 = target // span_len, target - span_len + 1
    lo = torch.full((B,), lo0, dtype=torch.long, device=scores.device)
    hi = torch.full_like(lo, hi0)
    mid = _round_half_even(lo + hi)
    built = mid.clone()
    active = (mid > lo) & (mid < hi)
    for _ in range(max(hi0 - lo0, 1).bit_length() + 1):
        built = torch.where(active, mid, built)
        too_many = (cover < mid[:, None]).sum(dim=-1) > target
        hi = torch.where(active & too_many, mid, hi)
        lo = torch.where(active & ~too_many, mid, lo)
        mid = torch.where(active, _round_half_even(lo + hi), mid)
        active = active & (mid > lo) & (mid < hi)
    return cover < built[:, None]

