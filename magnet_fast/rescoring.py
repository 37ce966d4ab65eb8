"""Rescoring MAGNeT's samples with a MusicGen LM (the MAGNeT paper's rescoring, issue #14).

At every step of stage k, once MAGNeT has sampled the masked positions, the candidate [B, K, T] (stages
< k final, stage k the current row with the new samples, stages > k the special token ``card``) goes
through the rescorer teacher-forced: one causal forward over its delay pattern (position 0 all special,
frame t of codebook q at 1 + t + delays[q], the full length T + max delay + 1 so that every (q, t) has a
prediction), conditional rows only, on the same texts encoded by the rescorer's own T5. The output at
pattern position t + delays[k] predicts frame t of codebook k. The probability the span scores are
computed from becomes, at the newly sampled positions,

    p = w * softmax(rescorer logits / rescore_temperature)[sampled token] + (1 - w) * p_magnet

with p_magnet the probability MAGNeT's scoring uses anyway. A step whose weight is 0 runs nothing and
leaves p_magnet untouched (bitwise the generation without a rescorer); so does the last step of each stage,
whose scores nothing reads (sum(decoding_steps) - n_q rescorer forwards per generation).

Everything per step is tensor code with static shapes (graph-safe); the rescorer's cross-attention K/V
are computed once per generation, and under graphs copied into static buffers like MAGNeT's own.
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch
import torch.nn.functional as F

from magnet_fast.errors import ConfigError, ParameterError
from magnet_fast.model import MagnetLM, sin_embedding


# ------------------------------------------------------------------------------------------ teacher forcing
def pattern_sequence(codes: torch.Tensor, delays, special: int) -> torch.Tensor:
    """codes [B, K, T] -> the delay-pattern input [B, K, T + max(delays) + 1]: position 0 all ``special``,
    frame t of codebook q at 1 + t + delays[q], every other position ``special`` (static slices only)."""
    b, k, t = codes.shape
    seq = torch.full((b, k, t + max(delays) + 1), special, dtype=codes.dtype, device=codes.device)
    for q, d in enumerate(delays):
        seq[:, q, 1 + d: 1 + d + t] = codes[:, q]
    return seq


def _causal_self_attention(attn, x: torch.Tensor) -> torch.Tensor:
    """The packed q/k/v projection, SDPA with is_causal over every position at once (audiocraft's
    non-streaming call: the same views, flags and shapes)."""
    b, t, _ = x.shape
    qkv = attn.in_proj(x).view(b, t, 3, attn.heads, -1)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))          # [B, H, t, Dh] views
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return attn.out_proj(out.transpose(1, 2).reshape(b, t, -1))


def _cross_attention(attn, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     key_lengths: tuple[int, ...] | None) -> torch.Tensor:
    b, t, _ = x.shape
    q = attn.q_proj(x).view(b, t, attn.heads, -1).transpose(1, 2)
    if key_lengths is None:            # audiocraft: every row attends over the batch's padded text
        out = F.scaled_dot_product_attention(q, k, v)
    else:                              # batch-invariant rows: each over exactly its own text
        out = torch.cat([F.scaled_dot_product_attention(q[i:i + 1], k[i:i + 1, :, :n], v[i:i + 1, :, :n])
                         for i, n in enumerate(key_lengths)])
    return attn.out_proj(out.transpose(1, 2).reshape(b, t, -1))


def teacher_forced_hidden(lm: MagnetLM, pattern: torch.Tensor, kv: list, *,
                          positions: torch.Tensor | None = None,
                          key_lengths: tuple[int, ...] | None = None) -> torch.Tensor:
    """The rescorer LM over a whole pattern sequence [B, K, S], causally -> hidden [B, S, dim] (out_norm'd).

    kv: the rescorer's per-layer cross-attention K/V of these B (conditional) rows (``lm.cross_kv``).
    positions: the sinusoid table [1, S, dim] (``sin_embedding``), made here when None. key_lengths: per row,
    how many condition positions to attend (batch-invariant mode); None attends over the padding as
    audiocraft does. Mixed precision as MusicGen's decoding: linear layers in the compute dtype, the
    residual stream float32."""
    x = lm.embed(pattern)
    s = pattern.shape[-1]
    if positions is None:
        positions = sin_embedding(s, lm.cfg.dim, lm.cfg.max_period, x.dtype, x.device)
    x = x + lm.cfg.positional_scale * positions.to(x.dtype)
    cd = lm.compute_dtype
    for layer, (k, v) in zip(lm.layers, kv, strict=True):
        x = x + _causal_self_attention(layer.self_attn, layer.norm1(x).to(cd)).to(x.dtype)
        x = x + _cross_attention(layer.cross_attn, layer.norm_cross(x).to(cd), k, v, key_lengths).to(x.dtype)
        x = x + layer.linear2(F.gelu(layer.linear1(layer.norm2(x).to(cd)))).to(x.dtype)
    return lm.out_norm(x)


def teacher_forced_logits(lm: MagnetLM, codes: torch.Tensor, kv: list, delays, *,
                          codebooks=None, key_lengths: tuple[int, ...] | None = None,
                          positions: torch.Tensor | None = None) -> torch.Tensor:
    """Teacher-forced predictions of codes [B, K, T] -> logits [B, len(codebooks), T, card] float32:
    out[:, i, t] predicts codes[:, codebooks[i], t] (every frame of every codebook, no NaN: the full
    pattern length). audiocraft's ``compute_predictions(codes, conditions, keep_only_valid_steps=False)``
    without CFG. codebooks: which heads to evaluate (all by default); special ids (``card``) in ``codes``
    are embedded like any id (undecided stages)."""
    codebooks = range(codes.shape[1]) if codebooks is None else codebooks
    t = codes.shape[-1]
    x = teacher_forced_hidden(lm, pattern_sequence(codes, delays, lm.cfg.card), kv, positions=positions,
                              key_lengths=key_lengths)
    out = []
    for q in codebooks:
        head = lm.heads[q]
        out.append(head(x.to(head.weight.dtype))[:, delays[q]: delays[q] + t])   # the step before the code
    return torch.stack(out, dim=1).float()


# ------------------------------------------------------------------------------------------ settings
def check_musicgen(engine, what: str):
    """``engine`` must be a loaded MusicGenFast (ParameterError otherwise)."""
    from magnet_fast.musicgen import MusicGenFast
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


class RescoreKey(NamedTuple):
    """What a Decoder's rescoring depends on besides buffer contents (part of ``DecoderKey``)."""
    model: int                     # id of the rescorer LM
    weights_ptr: int               # hash of its parameters' addresses
    weights: tuple[tuple[float, ...], ...]
    temperature: float
    text_len: int                  # padded length of the rescorer's condition
    key_lengths: tuple[int, ...] | None


class Rescoring:
    """One call's rescoring request: the MusicGenFast, per-step weights and temperature (validated)."""

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

    def condition(self, descriptions, batch_invariant: bool):
        """The B texts through the rescorer's own T5 and projection, conditional rows only -> (per-layer
        cross K/V [B rows], key lengths or None). Computed once per generation."""
        from magnet_fast.conditioning import encode_condition, encode_condition_apart
        engine, lm = self.engine, self.engine.lm
        if batch_invariant:
            cond, lengths = encode_condition(engine.text, lm, descriptions, batch_invariant=True)
            cond, lengths = cond[: len(descriptions)], lengths[: len(descriptions)]
        else:                           # the B texts as their own padded batch, as compute_predictions
            cond, lengths = encode_condition_apart(engine.text, lm, descriptions)[0], None
        with torch.inference_mode():
            return lm.cross_kv(cond), lengths

    def key(self, kv, key_lengths) -> RescoreKey:
        lm = self.engine.lm
        return RescoreKey(id(lm), hash(tuple(t.data_ptr() for t in lm.parameters())), self.weights,
                          self.temperature, kv[0][0].shape[-2], key_lengths)


class Rescorer:
    """The per-Decoder rescoring step: ``(seq, step, row, probs, was_masked) -> (probs, non-finite flag)``.

    seq: MAGNeT's CFG batch [2B, K, T] after the step's write-back (its first B rows hold stages < k final
    and stage k's row); probs [B, T]: the probabilities MAGNeT scores by. Holds its static tensors (the
    sinusoid table, the condition K/V copies under graphs)."""

    def __init__(self, lm: MagnetLM, batch: int, frames: int, key: RescoreKey, graphs: bool):
        self.lm, self.batch, self.frames, self.graphs = lm, batch, frames, graphs
        self.weights, self.temperature, self.key_lengths = key.weights, key.temperature, key.key_lengths
        self.delays = tuple(lm.cfg.delays)
        self.special = lm.cfg.card
        device = lm.emb[0].weight.device
        self.positions = sin_embedding(frames + max(self.delays) + 1, lm.cfg.dim, lm.cfg.max_period,
                                       torch.float32, device)
        self.kv = None

    def weight(self, step) -> float:
        """The step's weight; 0 at the last step of a stage, whose scores nothing reads (the next stage
        starts from fresh scores), so its rescoring is skipped."""
        stage = self.weights[step.stage]
        return 0.0 if step.index == len(stage) - 1 else stage[step.index]

    def load(self, kv: list) -> None:
        """This call's condition K/V: the caller's tensors eagerly, copies at fixed addresses under graphs."""
        if not self.graphs:
            self.kv = kv
        elif self.kv is None:
            self.kv = [(k.clone(), v.clone()) for k, v in kv]
        else:
            for (sk, sv), (k, v) in zip(self.kv, kv, strict=True):
                sk.copy_(k)
                sv.copy_(v)

    def tensors(self) -> list[torch.Tensor]:
        """Every long-lived tensor a recorded step reads from the rescorer."""
        return [self.positions, *[t for kv in self.kv or [] for t in kv]]

    def probs(self, seq: torch.Tensor, stage: int, row: torch.Tensor) -> torch.Tensor:
        """p_rescorer [B, T]: the rescorer's probability of row's token at every frame of codebook ``stage``."""
        candidate = seq[: self.batch].clone()
        candidate[:, stage + 1:] = self.special                   # later stages: not decided yet
        logits = teacher_forced_logits(self.lm, candidate, self.kv, self.delays, codebooks=(stage,),
                                       key_lengths=self.key_lengths, positions=self.positions)[:, 0]
        probs = torch.softmax(logits / self.temperature, dim=-1)
        return probs.gather(-1, row.unsqueeze(-1))[..., 0]

    def __call__(self, seq, step, row, probs, was_masked):
        w = self.weight(step)
        if w == 0.0:                   # nothing to mix: p_magnet exactly, no forward
            return probs, torch.zeros((), dtype=torch.bool, device=probs.device)
        mixed = w * self.probs(seq, step.stage, row) + (1.0 - w) * probs
        mixed = torch.where(was_masked, mixed, probs)
        return mixed, ~torch.isfinite(mixed).all()
