"""Generation parameters: one frozen ``SamplingParams``, validated once, in one place.

``resolve_params`` is the only way a call's parameters come to exist: the model's defaults (config.json)
overridden by the caller's non-None values, every value checked (``ParameterError`` with the fix). The
API, the CLI and config.json validation all go through it (docs/DESIGN.md, Decoding algorithm).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from magnet_fast.errors import ParameterError

SPAN_ARRANGEMENTS = ("nonoverlap", "stride1")
SPAN_SCORINGS = ("max", "prod")


@dataclass(frozen=True)
class SamplingParams:
    """Decoding parameters; audiocraft's MAGNeT.set_generation_params values unless the model says otherwise.

    Also the type of ``MagnetConfig.generation`` (a model's defaults are parameters too)."""
    use_sampling: bool = True
    temperature: float = 3.0
    top_k: int = 0
    top_p: float = 0.9
    max_cfg_coef: float = 10.0
    min_cfg_coef: float = 1.0
    decoding_steps: tuple[int, ...] = (20, 10, 10, 10)
    span_arrangement: str = "nonoverlap"
    span_scoring: str = "max"
    anneal_temp: bool = True


GenerationParams = SamplingParams          # the older name, kept for callers that use it
NAMES = tuple(f.name for f in fields(SamplingParams))


def _number(name: str, v, lo=None, hi=None, lo_open: bool = False, integer: bool = False) -> None:
    ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok_type or not math.isfinite(v):
        raise ParameterError(f"{name} must be a finite {'integer' if integer else 'number'}, got {v!r}")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise ParameterError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {v!r}")
    if hi is not None and v > hi:
        raise ParameterError(f"{name} must be <= {hi}, got {v!r}")


def validate(p: SamplingParams, n_q: int, card: int | None = None) -> SamplingParams:
    """Check every value of ``p``; returns it with decoding_steps as a tuple. ParameterError otherwise."""
    _number("temperature", p.temperature, 0.0)
    _number("top_p", p.top_p, 0.0, 1.0)                 # 0 switches top-p off
    _number("top_k", p.top_k, 0, integer=True)          # 0 switches top-k off
    if card is not None and p.top_k > card:
        raise ParameterError(f"top_k must be <= the codebook size {card}, got {p.top_k}")
    _number("max_cfg_coef", p.max_cfg_coef)
    _number("min_cfg_coef", p.min_cfg_coef)
    steps = p.decoding_steps
    if isinstance(steps, (str, bytes)) or not hasattr(steps, "__len__"):
        raise ParameterError(f"decoding_steps must be a list of {n_q} positive integers, got {steps!r}")
    steps = tuple(steps)
    if len(steps) != n_q or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in steps):
        raise ParameterError(f"decoding_steps must be {n_q} positive integers (one per codebook), "
                             f"got {list(steps)}")
    if p.span_arrangement not in SPAN_ARRANGEMENTS:
        raise ParameterError(f"span_arrangement must be one of {SPAN_ARRANGEMENTS}, got {p.span_arrangement!r}")
    if p.span_scoring not in SPAN_SCORINGS:
        raise ParameterError(f"span_scoring must be one of {SPAN_SCORINGS}, got {p.span_scoring!r}")
    for flag in ("use_sampling", "anneal_temp"):
        if not isinstance(getattr(p, flag), bool):
            raise ParameterError(f"{flag} must be True or False, got {getattr(p, flag)!r}")
    return replace(p, decoding_steps=steps)


def resolve_params(defaults: SamplingParams, n_q: int, card: int | None = None, **overrides) -> SamplingParams:
    """``defaults`` overridden by the non-None ``overrides``, validated (``card`` bounds top_k)."""
    unknown = sorted(set(overrides) - set(NAMES))
    if unknown:
        raise ParameterError(f"unknown generation parameter(s) {unknown}; known: {sorted(NAMES)}")
    p = replace(defaults, **{k: v for k, v in overrides.items() if v is not None})
    return validate(p, n_q, card)


def check_seed(seed, n_rows: int | None = None) -> list[int] | None:
    """A seed (int) or one seed per row (list) -> list of ints; None stays None. ParameterError otherwise."""
    if seed is None:
        return None
    seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed]
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**63 - len(seeds) - 1
                        for s in seeds):
        raise ParameterError(f"seed must be an integer in [0, 2**63) (or a list of them), got {seed!r}")
    if isinstance(seed, (list, tuple)) and n_rows is not None and len(seeds) != n_rows:
        raise ParameterError(f"{len(seeds)} seeds for {n_rows} descriptions")
    return seeds


def output_frames(frames: int, span_len: int, arrangement: str) -> int:
    """Frames returned: 'nonoverlap' trims to a multiple of span_len (500 -> 498), 'stride1' keeps all."""
    return frames - frames % span_len if span_len > 1 and arrangement == "nonoverlap" else frames
