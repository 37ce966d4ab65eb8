"""Pairing a second engine with MAGNeT (the rescorer and the hybrid prefix model): the checks that it is a
loaded MusicGenFast sharing MAGNeT's codec token space and device, and one call's rescoring settings
(``Rescoring``: weights per step and temperature, validated before any work; docs/DESIGN.md, Rescoring)."""
from __future__ import annotations

import math
import numbers

import torch

from magnet_fast.decoding.rescoring import RescoreRequest
from magnet_fast.errors import ConfigError, ParameterError


def check_musicgen(engine, what: str):
    """``engine`` must be a loaded MusicGenFast (ParameterError otherwise)."""
    from magnet_fast.engines.musicgen import MusicGenFast
    if not isinstance(engine, MusicGenFast):
        raise ParameterError(f"{what} must be a MusicGenFast (magnet_fast.MusicGenFast.from_pretrained(...)), got "
                             f"{type(engine).__name__}")
    return engine


def check_token_space(a, b, what: str) -> None:
    """Configs: the MusicGen's (``b``) must share the MAGNeT's (``a``) codec token space (codebooks, codebook
    size, frame rate): ConfigError naming the mismatch. Checkable before loading (the CLI does)."""
    mine, theirs = (a.n_q, a.card, a.frame_rate), (b.n_q, b.card, b.frame_rate)
    if mine != theirs:
        raise ConfigError(f"{what} has {b.n_q} codebooks x {b.card} codes at {b.frame_rate} Hz but this MAGNeT "
                          f"model has {a.n_q} x {a.card} at {a.frame_rate} Hz: both must use the same codec "
                          "token space (e.g. MAGNeT and MusicGen models on the 32 kHz EnCodec)")


def check_compatible(magnet, other, what: str) -> None:
    """The MusicGen engine must share MAGNeT's codec token space (codebooks, codebook size, frame rate) and
    device: ConfigError / ParameterError naming the mismatch."""
    check_token_space(magnet.config, other.config, what)
    if other.device != magnet.device:
        raise ParameterError(f"{what} is on {other.device} but this model is on {magnet.device}; load both on "
                             "the same device")


def resolve_weights(weight, decoding_steps) -> tuple[tuple[float, ...], ...]:
    """``rescore_weight``: one float in [0, 1], or one per step of each stage (sum(decoding_steps) values in
    stage order) -> per stage, per step weights (ParameterError otherwise)."""
    total = sum(decoding_steps)
    if isinstance(weight, (list, tuple)):
        values = list(weight)
        if len(values) != total:
            raise ParameterError(f"rescore_weight has {len(values)} values; a per-step list needs one per decoding "
                                 f"step: {total} = sum of decoding_steps {list(decoding_steps)}")
    elif isinstance(weight, torch.Tensor) and weight.dim() == 1:
        return resolve_weights(weight.tolist(), decoding_steps)
    else:
        values = [weight] * total
    out = []
    for v in values:
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise ParameterError(f"rescore_weight must be a number in [0, 1] (or a list of them), got {v!r}")
        v = float(v)
        if not (math.isfinite(v) and 0.0 <= v <= 1.0):
            raise ParameterError(f"rescore_weight must be in [0, 1], got {v!r}")
        out.append(v)
    stages, start = [], 0
    for n in decoding_steps:
        stages.append(tuple(out[start:start + n]))
        start += n
    return tuple(stages)


def check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature <= 0:
        raise ParameterError(f"rescore_temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


class Rescoring:
    """One call's rescoring settings: the MusicGenFast, per-step weights and temperature (validated)."""

    def __init__(self, magnet, rescorer, weight, temperature, decoding_steps):
        self.engine = check_musicgen(rescorer, "rescorer")
        check_compatible(magnet, rescorer, "the rescorer")
        self.weights = resolve_weights(weight, decoding_steps)
        self.temperature = check_temperature(temperature)

    @property
    def active(self) -> bool:
        """False when every weight that can matter is 0 (the last step of a stage never does): nothing to run,
        the generation without a rescorer."""
        return any(w for stage in self.weights for w in stage[:-1])

    def prepare(self, descriptions, batch_invariant: bool) -> RescoreRequest:
        """The B texts through the rescorer's own T5 and projection, conditional rows only, and its cross
        K/V: computed once per generation."""
        from magnet_fast.nn.conditioning import encode_condition, encode_condition_apart
        engine, lm = self.engine, self.engine.lm
        if batch_invariant:
            cond, lengths = encode_condition(engine.text, lm, descriptions, batch_invariant=True)
            cond, lengths = cond[: len(descriptions)], lengths[: len(descriptions)]
        else:                           # the B texts as their own padded batch, as compute_predictions
            cond, lengths = encode_condition_apart(engine.text, lm, descriptions)[0], None
        with torch.inference_mode():
            kv = lm.cross_kv(cond)
        return RescoreRequest(lm, self.weights, self.temperature, kv, lengths)
