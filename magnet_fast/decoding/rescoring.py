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

from typing import NamedTuple

import torch

from magnet_fast.decoding.runner import static_copy
from magnet_fast.nn.model import Causal, MagnetLM
from magnet_fast.nn.pattern import pattern_length, pattern_sequence
from magnet_fast.nn.positions import sin_embedding


# ------------------------------------------------------------------------------------------ teacher forcing
def teacher_forced_logits(lm: MagnetLM, codes: torch.Tensor, kv: list, delays, *,
                          codebooks=None, key_lengths: tuple[int, ...] | None = None,
                          positions: torch.Tensor | None = None) -> torch.Tensor:
    """Teacher-forced predictions of codes [B, K, T] -> logits [B, len(codebooks), T, card] float32:
    out[:, i, t] predicts codes[:, codebooks[i], t] (every frame of every codebook, no NaN: the full
    pattern length). audiocraft's ``compute_predictions(codes, conditions, keep_only_valid_steps=False)``
    without CFG: the model's one forward with a causal mask over the delay pattern (``pattern.py``).

    kv: the rescorer's per-layer cross-attention K/V of these B (conditional) rows (``lm.cross_kv``).
    codebooks: which heads to evaluate (all by default); special ids (``card``) in ``codes`` are embedded
    like any id (undecided stages). positions: the sinusoid table [1, S, dim] (made here when None).
    key_lengths: per row, how many condition positions to attend (batch-invariant mode); None attends over
    the padding as audiocraft does."""
    codebooks = range(codes.shape[1]) if codebooks is None else codebooks
    t = codes.shape[-1]
    seq = pattern_sequence(codes, delays, lm.cfg.card)
    if positions is None:
        positions = sin_embedding(seq.shape[-1], lm.cfg.dim, lm.cfg.max_period, torch.float32, lm.device)
    x = lm.forward_hidden(seq, kv, Causal(), positions, key_lengths=key_lengths)
    out = [lm.all_heads(x, (q,))[:, 0, delays[q]: delays[q] + t] for q in codebooks]  # the step before the code
    return torch.stack(out, dim=1).float()


class RescoreRequest(NamedTuple):
    """One generation's rescoring, prepared once (``Rescoring.prepare``): the rescorer LM, per-step weights,
    temperature, its condition K/V of the B rows and their key lengths (batch-invariant mode) or None."""
    lm: MagnetLM
    weights: tuple[tuple[float, ...], ...]
    temperature: float
    kv: list
    key_lengths: tuple[int, ...] | None

    @property
    def spec(self) -> tuple:
        """The hashable part of a decoder's key (``generate.MagnetSpec.rescore``): the rescorer's identity
        and weights' addresses, and everything its recorded step depends on."""
        return (id(self.lm), self.lm.weights_token(), self.weights, self.temperature, self.kv[0][0].shape[-2],
                self.key_lengths)


class Rescorer:
    """The per-Decoder rescoring step: ``(seq, step, row, probs, was_masked) -> (probs, non-finite flag)``.

    seq: MAGNeT's CFG batch [2B, K, T] after the step's write-back (its first B rows hold stages < k final
    and stage k's row); probs [B, T]: the probabilities MAGNeT scores by. Holds its static tensors (the
    sinusoid table, the condition K/V copies under graphs)."""

    def __init__(self, request: RescoreRequest, batch: int, frames: int, graphs: bool):
        lm = request.lm
        self.lm, self.batch, self.frames, self.graphs = lm, batch, frames, graphs
        self.weights, self.temperature, self.key_lengths = request.weights, request.temperature, request.key_lengths
        self.delays = tuple(lm.cfg.delays)
        self.special = lm.cfg.card
        self.positions = lm.position_table(pattern_length(frames, self.delays))
        self.kv = None

    def weight(self, step) -> float:
        """The step's weight; 0 at the last step of a stage, whose scores nothing reads (the next stage
        starts from fresh scores), so its rescoring is skipped."""
        stage = self.weights[step.stage]
        return 0.0 if step.index == len(stage) - 1 else stage[step.index]

    def load(self, kv: list) -> None:
        """This call's condition K/V: the caller's tensors eagerly, copies at fixed addresses under graphs."""
        self.kv = static_copy(self.kv, kv, "static" if self.graphs else None)

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
