"""A training-free stand-in for the MAGNeT paper's Hybrid-MAGNeT (issue #14), not the paper's model.

The paper's Hybrid-MAGNeT is one model trained with both objectives (autoregressive on a causal prefix,
masked on the rest); it was never released. Here two stock models share the work: a MusicGen LM writes the
first P = round(hybrid_seconds * frame_rate) frames of every codebook autoregressively, and the stock MAGNeT
checkpoint decodes the rest with those frames as its fixed prompt. Both parts draw from one random stream,
the AR part first, so a seed makes the whole call reproducible (docs/rescoring-hybrid-longform.md)."""
from __future__ import annotations

import math

import torch

from magnet_fast.engines.pairing import check_compatible, check_musicgen
from magnet_fast.errors import ParameterError
from magnet_fast.params import AR_NAMES

# what hybrid_params may set: MusicGen's sampling parameters (the length is hybrid_seconds)
HYBRID_PARAMS = tuple(n for n in AR_NAMES if n != "duration")


def duration_for(frames: int, frame_rate: int) -> float:
    """A duration d (seconds) with int(d * frame_rate) == frames, MusicGen's frame count: frames / frame_rate,
    moved up by ulps where that falls short (29 / 50 * 50 == 28.999999999999996)."""
    d = frames / frame_rate
    while int(d * frame_rate) < frames:
        d = math.nextafter(d, math.inf)
    return d


class HybridPlan:
    """One call's hybrid request, validated before any work: the MusicGenFast, the prefix length and the
    AR sampling parameters (hybrid_params; the MusicGen model's defaults where absent)."""

    def __init__(self, magnet, hybrid, seconds, hybrid_params, frames: int):
        self.engine = check_musicgen(hybrid, "hybrid")
        check_compatible(magnet, hybrid, "the hybrid model")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
                or not 0 < seconds < magnet.duration:
            raise ParameterError(f"hybrid_seconds must be a number of seconds in (0, {magnet.duration:g}) (the MAGNeT "
                                 f"model's duration), got {seconds!r}")
        self.frames = int(round(seconds * magnet.frame_rate))
        if not 0 < self.frames < frames:
            raise ParameterError(f"hybrid_seconds {seconds:g} is {self.frames} frames at {magnet.frame_rate} Hz; "
                                 f"the prefix must be 1..{frames - 1} frames (MAGNeT generates {frames})")
        hybrid_params = {} if hybrid_params is None else hybrid_params
        if not isinstance(hybrid_params, dict):
            raise ParameterError(f"hybrid_params must be a dict of MusicGen sampling parameters, got "
                                 f"{type(hybrid_params).__name__}")
        unknown = sorted(set(hybrid_params) - set(HYBRID_PARAMS))
        if unknown:
            raise ParameterError(f"hybrid_params: unknown or not settable {unknown}; allowed: {list(HYBRID_PARAMS)} "
                                 "(the prefix length is hybrid_seconds)")
        self.kwargs = dict(hybrid_params, duration=duration_for(self.frames, magnet.frame_rate))
        hybrid.params(**self.kwargs)                   # validated now (ParameterError), not after MAGNeT's T5

    def prefix(self, descriptions, generator, max_batch: int | None, progress: bool = False) -> torch.Tensor:
        """The AR prefix [B, n_q, P] for these texts, drawn from ``generator``: one stream for the batch
        (torch.Generator or None = torch's global RNG), or a list of per-row streams (each row then decoded
        alone from its own stream, as MusicGen's batch-invariant mode does)."""
        if isinstance(generator, list):
            rows = [self.engine.generate_tokens([d], generator=g, progress=progress, **self.kwargs)
                    for d, g in zip(descriptions, generator, strict=True)]
            out = torch.cat(rows)
        else:
            out = self.engine.generate_tokens(descriptions, generator=generator, max_batch=max_batch,
                                              progress=progress, **self.kwargs)
        if out.shape[-1] != self.frames:          # int(duration * rate) arithmetic: guarded, never expected
            raise RuntimeError(f"the hybrid prefix has {out.shape[-1]} frames, expected {self.frames}")
        return out
