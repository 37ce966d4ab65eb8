"""Generation parameters: one frozen ``SamplingParams``, validated once, in one place.

``resolve_params`` is the only way a call's parameters come to exist: the model's defaults (config.json)
overridden by the caller's non-None values, every value checked (``ParameterError`` with the fix). The
API, the CLI and config.json validation all go through it (docs/DESIGN.md, Decoding algorithm).
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, fields, replace

from magnet_fast.errors import ParameterError

SPAN_ARRANGEMENTS = ("nonoverlap", "stride1")
SPAN_SCORINGS = ("max", "prod")
# The most frames any model may generate (config.json bound, docs/DESIGN.md "Bounds checked before work"):
# 120 s at 100 Hz; the released models have 500 (10 s) and 1500 (30 s) frames at 50 Hz.
MAX_SEGMENT_S = 120.0
MAX_FRAMES = 12_000


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


NAMES = tuple(f.name for f in fields(SamplingParams))


def _number(name: str, v, lo=None, hi=None, lo_open: bool = False, integer: bool = False) -> None:
    ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok_type or not math.isfinite(v):
        raise ParameterError(f"{name} must be a finite {'integer' if integer else 'number'}, got {v!r}")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise ParameterError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {v!r}")
    if hi is not None and v > hi:
        raise ParameterError(f"{name} must be <= {hi}, got {v!r}")


def _step(s, i: int) -> int:
    """One decoding_steps entry as an int: ints and integer-like types (numpy ints) pass; bools, floats
    (even integral ones like 1e20) and anything else are refused."""
    if isinstance(s, bool) or type(s).__name__ == "bool_" or isinstance(s, float):
        raise ParameterError(f"decoding_steps must be whole numbers (integers), got {s!r} "
                             f"({type(s).__name__}) for codebook {i}")
    try:
        return operator.index(s)
    except TypeError:
        raise ParameterError(f"decoding_steps must be whole numbers (integers), got {s!r} "
                             f"({type(s).__name__}) for codebook {i}") from None


def validate(p: SamplingParams, n_q: int, card: int | None = None, *, frames: int | None = None,
             span_len: int = 1) -> SamplingParams:
    """Check every value of ``p``; returns it with decoding_steps as a tuple of ints. ParameterError otherwise.

    frames, span_len: the model's geometry (``MagnetConfig.frames`` / ``span_len``). Given, no stage may
    take more steps than it has units to unmask (frames // span_len spans for 'nonoverlap', frames tokens
    for 'stride1'); not given, steps are bounded by MAX_FRAMES (no model has more units than that)."""
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
    steps = tuple(_step(s, i) for i, s in enumerate(steps))
    if len(steps) != n_q or any(s < 1 for s in steps):
        raise ParameterError(f"decoding_steps must be {n_q} positive integers (one per codebook), "
                             f"got {list(steps)}")
    if p.span_arrangement not in SPAN_ARRANGEMENTS:
        raise ParameterError(f"span_arrangement must be one of {SPAN_ARRANGEMENTS}, got {p.span_arrangement!r}")
    if frames is None:            # no geometry given: the bound no model can exceed
        units, what = MAX_FRAMES, f"the {MAX_FRAMES}-frame limit of any model"
    else:
        unit = span_len if span_len > 1 and p.span_arrangement == "nonoverlap" else 1
        units = max(1, frames // unit)
        what = (f"{units} spans of {unit} frames" if unit > 1 else f"{units} frames") + \
            f" ({p.span_arrangement}, {frames} frames)"
    worst = max(steps, default=0)
    if worst > units:
        raise ParameterError(f"decoding_steps {list(steps)}: a stage cannot take more steps than it has units "
                             f"to unmask ({what}); got {worst}")
    if p.span_scoring not in SPAN_SCORINGS:
        raise ParameterError(f"span_scoring must be one of {SPAN_SCORINGS}, got {p.span_scoring!r}")
    for flag in ("use_sampling", "anneal_temp"):
        if not isinstance(getattr(p, flag), bool):
            raise ParameterError(f"{flag} must be True or False, got {getattr(p, flag)!r}")
    return replace(p, decoding_steps=steps)


def resolve_params(defaults: SamplingParams, n_q: int, card: int | None = None, *, frames: int | None = None,
                   span_len: int = 1, **overrides) -> SamplingParams:
    """``defaults`` overridden by the non-None ``overrides``, validated (``card`` bounds top_k; ``frames``
    and ``span_len``, the model's geometry, bound decoding_steps: see ``validate``)."""
    unknown = sorted(set(overrides) - set(NAMES))
    if unknown:
        raise ParameterError(f"unknown generation parameter(s) {unknown}; known: {sorted(NAMES)}")
    p = replace(defaults, **{k: v for k, v in overrides.items() if v is not None})
    return validate(p, n_q, card, frames=frames, span_len=span_len)


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


# ------------------------------------------------------------------------------------------------ MusicGen
MUSICGEN_DEFAULT_DURATION = 15.0     # seconds: what audiocraft's MusicGen sets in its constructor
LONGFORM_MAX_S = 3600.0              # the longest long-form generation (seconds; sliding windows)


@dataclass(frozen=True)
class ARParams:
    """Autoregressive (MusicGen) sampling parameters: audiocraft's ``MusicGen.set_generation_params``
    defaults. ``duration`` (seconds, prompt included) is the default length of a generation.
    Also the type of a MusicGen ``MagnetConfig.generation``."""
    use_sampling: bool = True
    top_k: int = 250
    top_p: float = 0.0
    temperature: float = 1.0
    cfg_coef: float = 3.0
    two_step_cfg: bool = False
    duration: float = MUSICGEN_DEFAULT_DURATION

    @property
    def greedy(self) -> bool:
        """audiocraft samples only when use_sampling and temperature > 0; otherwise argmax."""
        return not self.use_sampling or self.temperature == 0


AR_NAMES = tuple(f.name for f in fields(ARParams))


def validate_ar(p: ARParams, card: int | None = None, *, max_duration: float | None = None) -> ARParams:
    """Check every value of ``p`` (ParameterError with the fix). ``max_duration``: the longest one window
    may be; None leaves duration bounded by MAX_SEGMENT_S only."""
    _number("temperature", p.temperature, 0.0)
    _number("top_p", p.top_p, 0.0, 1.0)
    _number("top_k", p.top_k, 0, integer=True)
    if card is not None and p.top_k > card:
        raise ParameterError(f"top_k must be <= the codebook size {card}, got {p.top_k}")
    _number("cfg_coef", p.cfg_coef)
    _number("duration", p.duration, 0.0, lo_open=True)
    bound = MAX_SEGMENT_S if max_duration is None else max_duration
    if p.duration > bound:
        raise ParameterError(f"duration {p.duration} s is over this model's maximum of {bound:g} s")
    for flag in ("use_sampling", "two_step_cfg"):
        if not isinstance(getattr(p, flag), bool):
            raise ParameterError(f"{flag} must be True or False, got {getattr(p, flag)!r}")
    return replace(p, top_k=int(p.top_k))


def resolve_ar_params(defaults: ARParams, card: int | None = None, *, max_duration: float | None = None,
                      **overrides) -> ARParams:
    """``defaults`` overridden by the non-None ``overrides``, validated (see ``validate_ar``)."""
    unknown = sorted(set(overrides) - set(AR_NAMES))
    if unknown:
        raise ParameterError(f"unknown MusicGen generation parameter(s) {unknown}; known: {sorted(AR_NAMES)}")
    p = replace(defaults, **{k: v for k, v in overrides.items() if v is not None})
    return validate_ar(p, card, max_duration=max_duration)
