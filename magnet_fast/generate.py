"""MAGNeT's iterative decoding loop (MAGNET_SPEC §5): stages in codebook order, each a few
mask-predict steps with span masking, CFG and temperature annealing.

The per-step tensor math (forward, CFG, softmax, sampling, span scores, next mask) lives in
``kernels/sample/naive.py`` and runs without host synchronisation; only the schedule (host-side,
precomputed) and the progress callback touch Python per step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch

from magnet_fast.config import SPAN_ARRANGEMENTS, SPAN_SCORINGS, GenerationDefaults
from magnet_fast.errors import NumericsError, ParameterError
from magnet_fast.kernels.sample import naive as S
from magnet_fast.model import MagnetLM
from magnet_fast.schedule import stage_steps


@dataclass(frozen=True)
class Params(GenerationDefaults):
    """Resolved, validated generation parameters of one call."""


def resolve_params(defaults: GenerationDefaults, n_q: int, **overrides) -> Params:
    """Defaults overridden by the non-None ``overrides``; every value checked (ParameterError)."""
    names = {f.name for f in fields(GenerationDefaults)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ParameterError(f"unknown generation parameter(s) {unknown}; known: {sorted(names)}")
    p = Params(**{f.name: getattr(defaults, f.name) for f in fields(GenerationDefaults)})
    p = replace(p, **{k: v for k, v in overrides.items() if v is not None})

    def number(name, lo=None, hi=None, lo_open=False, integer=False):
        v = getattr(p, name)
        ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok_type or not math.isfinite(v):
            raise ParameterError(f"{name} must be a finite {'integer' if integer else 'number'}, got {v!r}")
        if lo is not None and (v <= lo if lo_open else v < lo):
            raise ParameterError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {v!r}")
        if hi is not None and v > hi:
            raise ParameterError(f"{name} must be <= {hi}, got {v!r}")

    number("temperature", 0.0)
    number("top_p", 0.0, 1.0)
    number("top_k", 0, integer=True)
    number("max_cfg_coef")
    number("min_cfg_coef")
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


def output_frames(frames: int, span_len: int, arrangement: str) -> int:
    """Frames returned: 'nonoverlap' trims to a multiple of span_len (500 -> 498), 'stride1' keeps all."""
    return frames - frames % span_len if span_len > 1 and arrangement == "nonoverlap" else frames


def _fill_noise(buf: torch.Tensor, generator) -> torch.Tensor:
    """Refill the [B, T, card] buffer with Exp(1) noise in place: the same draws torch.multinomial makes
    (one stream for the batch), or row i from generator[i]."""
    if isinstance(generator, list):
        for row, g in zip(buf, generator, strict=True):
            row.exponential_(1, generator=g)
        return buf
    return buf.exponential_(1, generator=generator)


def decode_step(lm: MagnetLM, seq: torch.Tensor, row: torch.Tensor, scores: torch.Tensor, kv: list,
                noise: torch.Tensor | None, prompt: torch.Tensor | None, *, stage: int, num_masked: int,
                cfg_coef: float, temperature: float, params: Params, backend: str = "exact",
                cross_lengths: tuple[int, ...] | None = None, sampler: str = "torch",
                fused_scalars: dict | None = None):
    """One decoding step, pure tensor code (no host sync, no data-dependent Python; compiles with
    ``torch.compile(fullgraph=True)``): pick the spans to re-mask from ``scores``, run the CFG forward,
    sample, write the sampled tokens where the row was masked, score them for the next step.

    seq [B, n_q, T] / row [B, T] token ids; scores [B, units]; noise [B, T, card] Exp(1) or None (greedy).
    sampler: "torch" (kernels/sample/naive.py; audiocraft's noise pairing, the parity path) or "fused"
    (the ``magnet_fast::sample_step`` op: one Triton launch on CUDA, noise paired with vocabulary ids,
    which is the same distribution but other draws for top-p). For "fused", cfg_coef/temperature may be
    0-d device tensors and ``fused_scalars`` may hold top_p/top_k/greedy as device tensors (no copies).
    Returns (seq, row, scores, nonfinite flag).
    """
    span, mask_id = lm.cfg.span_len, lm.mask_id
    chunked = span > 1 and params.span_arrangement == "nonoverlap"
    if span > 1 and params.span_arrangement == "stride1":
        masked = S.select_stride1(scores, num_masked, span)
    else:
        masked_units = S.select_spans(scores, num_masked)
        masked = masked_units.repeat_interleave(span if chunked else 1, dim=-1)
    row = row.masked_fill(masked, mask_id)
    if prompt is not None:
        row[:, : prompt.shape[-1]] = prompt[:, stage]
    seq[:, stage] = row
    # the null half's cross-attention is exactly zero; "exact" still computes it (audiocraft's matmul
    # shapes, for bitwise parity), every other backend skips it
    null_from = None if backend == "exact" else seq.shape[0]
    logits = lm(torch.cat([seq, seq]), kv, stage, backend, cross_lengths, null_from)   # [2B, T, card]
    cond, uncond = logits.split(seq.shape[0])
    if sampler == "fused":
        from magnet_fast.kernels.sample import sample_step_op
        unit_mask = masked_units if chunked else row == mask_id
        if noise is None:                                  # greedy: the op still takes a noise operand
            noise = torch.ones(cond.shape, device=cond.device)
        scalars = {"top_p": params.top_p, "top_k": params.top_k, "greedy": not params.use_sampling,
                   **(fused_scalars or {})}
        row, scored, scores = sample_step_op(
            cond, uncond, row, noise, unit_mask, coef=cfg_coef, temperature=temperature,
            span_len=span if chunked else 1, scoring=params.span_scoring if chunked else "prod", **scalars)
        seq[:, stage] = row
        return seq, row, scores, ~torch.isfinite(scored).all()
    guided = S.cfg_logits(cond, uncond, cfg_coef)
    probs = S.step_probs(guided, temperature)
    tokens, scored = S.sample(probs, guided, noise, top_p=params.top_p, top_k=params.top_k,
                              use_sampling=params.use_sampling)
    was_masked = row == mask_id
    row = torch.where(was_masked, tokens, row)
    seq[:, stage] = row
    if chunked:
        scores = S.span_scores(scored, span, params.span_scoring, masked_units)
    else:
        scores = S.token_scores(scored, was_masked)
    return seq, row, scores, ~torch.isfinite(probs).all()


@torch.inference_mode()
def decode(lm: MagnetLM, kv: list, batch: int, frames: int, params: Params, *,
           prompt: torch.Tensor | None = None,
           generator: torch.Generator | list[torch.Generator] | None = None,
           backend: str = "exact", cross_lengths: tuple[int, ...] | None = None, sampler: str = "torch",
           callback=None) -> torch.Tensor:
    """Run all stages. kv: cross-attention K/V for 2*batch rows (cond then null). -> [B, n_q, T'] int64.

    generator: one stream for the whole batch (audiocraft's draw order), or one per row (each row's noise
    then depends only on its own stream: batch-invariant sampling).
    Non-finite probabilities are flagged on the device (no per-step sync) and raise NumericsError at the
    end of the generation instead of returning tokens sampled from garbage.
    """
    cfg, mask_id, span = lm.cfg, lm.mask_id, lm.cfg.span_len
    device = lm.emb[0].weight.device
    n_prompt = 0 if prompt is None else prompt.shape[-1]
    chunked = span > 1 and params.span_arrangement == "nonoverlap"
    t = output_frames(frames, span, params.span_arrangement)
    seq = torch.full((batch, cfg.n_q, t), mask_id, dtype=torch.long, device=device)
    if n_prompt:
        seq[..., :n_prompt] = prompt
    total, done = sum(params.decoding_steps), 0
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    noise = torch.empty(batch, t, cfg.card, device=device)         # refilled per step (sampling)
    if not params.use_sampling and sampler == "fused":
        noise.fill_(1.0)                                            # the fused op reads it even when greedy
    fused = {}
    if sampler == "fused":                                          # scalars as device tensors: no copies
        fused = {"top_p": params.top_p, "top_k": params.top_k, "greedy": not params.use_sampling}
        fused = {k: torch.tensor(v, device=device) for k, v in fused.items()}
    for stage, n_steps in enumerate(params.decoding_steps):
        row = torch.full((batch, t), mask_id, dtype=torch.long, device=device)
        unit = span if chunked else 1                 # scores live on spans or on tokens
        n_fixed = n_prompt // unit
        scores = torch.zeros(batch, t // unit, device=device)
        scores[:, :n_fixed] = S.DONT_REMASK
        plan = stage_steps(stage, n_steps, t // unit - n_fixed, temperature=params.temperature,
                           anneal_temp=params.anneal_temp, max_cfg_coef=params.max_cfg_coef,
                           min_cfg_coef=params.min_cfg_coef)
        coefs = temps = None
        if sampler == "fused":                                      # one host->device copy per stage
            coefs = torch.tensor([s.cfg_coef for s in plan], device=device)
            temps = torch.tensor([max(s.temperature, S.TEMPERATURE_FLOOR) for s in plan], device=device)
        for i, step in enumerate(plan):
            # one Exp(1) draw of [B, T, card] per step, as torch.multinomial would make after the forward
            if params.use_sampling:
                _fill_noise(noise, generator)
            seq, row, scores, bad = decode_step(
                lm, seq, row, scores, kv, noise if params.use_sampling or fused else None, prompt, stage=stage,
                num_masked=step.num_masked, cfg_coef=step.cfg_coef if coefs is None else coefs[i],
                temperature=step.temperature if temps is None else temps[i], params=params, backend=backend,
                cross_lengths=cross_lengths, sampler=sampler, fused_scalars=fused)
            nonfinite |= bad
            done += 1
            if callback is not None:
                callback(done, total)
    if nonfinite:
        raise NumericsError("non-finite probabilities reached sampling (overflow in the LM or CFG?); "
                            "try float32 (dtype='float32') or a smaller cfg coefficient")
    return seq
