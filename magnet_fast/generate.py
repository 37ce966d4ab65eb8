"""MAGNeT's iterative decoding loop (MAGNET_SPEC §5): stages in codebook order, each a few
mask-predict steps with span masking, CFG and temperature annealing.

The per-step tensor math (forward, CFG, softmax, sampling, span scores, next mask) lives in
``kernels/sample/naive.py`` and runs without host synchronisation; only the schedule (host-side,
precomputed) and the progress callback touch Python per step.
"""
from __future__ import annotations

import math
from collections import OrderedDict
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


def _write_row(seq: torch.Tensor, stage: int, row: torch.Tensor) -> None:
    """The stage's tokens into both halves of the CFG batch seq [2B, n_q, T], in place."""
    seq[: row.shape[0], stage] = row
    seq[row.shape[0]:, stage] = row


def decode_step(lm: MagnetLM, seq: torch.Tensor, row: torch.Tensor, scores: torch.Tensor, kv: list,
                noise: torch.Tensor | None, prompt: torch.Tensor | None, *, stage: int, num_masked: int,
                cfg_coef: float, temperature: float, params: Params, backend: str = "exact",
                cross_lengths: tuple[int, ...] | None = None, sampler: str = "torch",
                fused_scalars: dict | None = None, prefix: torch.Tensor | None = None):
    """One decoding step, pure tensor code (no host sync, no data-dependent Python, no host->device
    copy; compiles with ``torch.compile(fullgraph=True)`` and is what a CUDA graph records): pick the
    spans to re-mask from ``scores``, run the CFG forward, sample, write the sampled tokens where the row
    was masked, score them for the next step.

    seq [2B, n_q, T]: the CFG batch, rows B.. mirror rows ..B (the model's input; the stage's codebook is
    updated in place in both halves). row [B, T] the stage's tokens; scores [B, units];
    noise [B, T, card] Exp(1) or None (greedy); prefix: ``lm.stage_prefix(seq, stage)`` or None.
    sampler: "torch" (kernels/sample/naive.py; audiocraft's noise pairing, the parity path) or "fused"
    (the ``magnet_fast::sample_step`` op: one Triton launch on CUDA, noise paired with vocabulary ids,
    which is the same distribution but other draws for top-p). For "fused", cfg_coef/temperature may be
    0-d device tensors and ``fused_scalars`` may hold top_p/top_k/greedy as device tensors (no copies).
    Returns (row, scores, nonfinite flag): new tensors; ``seq`` is the only input written.
    """
    span, mask_id = lm.cfg.span_len, lm.mask_id
    batch = row.shape[0]
    chunked = span > 1 and params.span_arrangement == "nonoverlap"
    if span > 1 and params.span_arrangement == "stride1":
        masked = S.select_stride1(scores, num_masked, span)
    else:
        top = S.top_spans(scores, num_masked)                   # the indices also serve the gather below
        masked_units = S.spans_mask(scores, top)
        masked = S.spans_to_tokens(masked_units, span) if chunked else masked_units
    row = row.masked_fill(masked, mask_id)
    if prompt is not None:
        row[:, : prompt.shape[-1]] = prompt[:, stage]
    _write_row(seq, stage, row)
    # the null half's cross-attention is exactly zero; "exact" still computes it (audiocraft's matmul
    # shapes, for bitwise parity), every other backend skips it
    null_from = None if backend == "exact" else batch
    # Only the masked spans' tokens are kept, and each row has exactly num_masked of them, so outside
    # "exact" (whose head GEMM keeps audiocraft's shape) the head and the sampler run on those
    # num_masked * span_len positions alone (a static count: graph-safe). Their noise rows are the ones
    # the full computation would use, so the tokens are the same draws.
    gather = chunked and sampler == "torch" and backend != "exact"
    positions = None
    if gather:
        positions = (top.unsqueeze(-1) * span + torch.arange(span, device=top.device)).reshape(batch, -1)
    logits = lm(seq, kv, stage, backend, cross_lengths, null_from, prefix,
                None if positions is None else positions.repeat(2, 1))     # [2B, T or M, card]
    cond, uncond = logits.split(batch)
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
        _write_row(seq, stage, row)
        return row, scores, ~torch.isfinite(scored).all()
    guided = S.cfg_logits(cond, uncond, cfg_coef)
    probs = S.step_probs(guided, temperature)
    if gather and noise is not None:
        noise = noise.gather(1, positions.unsqueeze(-1).expand(-1, -1, noise.shape[-1]))
    tokens, scored = S.sample(probs, guided, noise, top_p=params.top_p, top_k=params.top_k,
                              use_sampling=params.use_sampling)
    if gather:         # back to [B, T]; positions outside the masked spans are never read below
        tokens = row.scatter(1, positions, tokens)
        scored = torch.ones(row.shape, dtype=scored.dtype, device=scored.device).scatter(1, positions, scored)
    was_masked = row == mask_id
    row = torch.where(was_masked, tokens, row)
    _write_row(seq, stage, row)
    if chunked:
        scores = S.span_scores(scored, span, params.span_scoring, masked_units)
    else:
        scores = S.token_scores(scored, was_masked)
    return row, scores, ~torch.isfinite(probs).all()


GRAPH_MODES = (None, "cuda", "fx")


class Decoder:
    """The state of decoding one batch shape: every buffer allocated once and reused by every step.

    Buffers: the CFG batch ``seq`` [2B, n_q, T] (no per-step concatenation), the stage's ``row`` and
    ``scores``, the Exp(1) ``noise`` refilled in place before each step, the stage's embedding prefix,
    the non-finite flag, and (with graphs) static copies of the cross-attention K/V and the prompt.

    graphs: None runs each step eagerly. "cuda" records each (stage, step) as a CUDA graph the first
    time it runs (after running it eagerly, which also warms caches, cuBLAS and Triton) and replays it
    on every later generation with the same key (``Decoder.make_key``); all graphs share one memory pool.
    "fx" is the same protocol on any device with ``make_fx`` traces standing in for the graphs (the
    recorded aten ops replayed on the same buffers): it lets CPU tests check that nothing a graph would
    freeze depends on the call. Noise is drawn eagerly before each replay, from the caller's
    generator(s), so the RNG advances on every replay exactly as in eager decoding.
    """

    def __init__(self, lm: MagnetLM, batch: int, frames: int, params: Params, *,
                 n_prompt: int = 0, backend: str = "exact", cross_lengths: tuple[int, ...] | None = None,
                 sampler: str = "torch", graphs: str | None = None):
        if graphs not in GRAPH_MODES:
            raise ParameterError(f"graphs must be one of {GRAPH_MODES}, got {graphs!r}")
        cfg, self.lm, self.params = lm.cfg, lm, params
        device = lm.emb[0].weight.device
        if graphs == "cuda" and device.type != "cuda":
            raise ParameterError(f"CUDA graphs need a CUDA device; the model is on {device}")
        self.batch, self.backend, self.sampler, self.graphs = batch, backend, sampler, graphs
        self.cross_lengths, self.n_prompt = cross_lengths, n_prompt
        span = cfg.span_len
        self.chunked = span > 1 and params.span_arrangement == "nonoverlap"
        self.unit = span if self.chunked else 1               # scores live on spans or on tokens
        t = output_frames(frames, span, params.span_arrangement)
        mask_id = lm.mask_id
        self.seq = torch.full((2 * batch, cfg.n_q, t), mask_id, dtype=torch.long, device=device)
        self.row = torch.full((batch, t), mask_id, dtype=torch.long, device=device)
        self.scores = torch.zeros(batch, t // self.unit, device=device)
        self.noise = torch.ones(batch, t, cfg.card, device=device)   # refilled per step when sampling
        self.flag = torch.zeros((), dtype=torch.bool, device=device)
        emb = lm.emb[0].weight
        self.prefix = torch.zeros(2 * batch, t, cfg.dim, dtype=emb.dtype, device=device)
        self.prompt = (torch.zeros(batch, cfg.n_q, n_prompt, dtype=torch.long, device=device)
                       if n_prompt else None)
        self.kv = None
        n_fixed = n_prompt // self.unit
        self.plans = [stage_steps(stage, n, t // self.unit - n_fixed, temperature=params.temperature,
                                  anneal_temp=params.anneal_temp, max_cfg_coef=params.max_cfg_coef,
                                  min_cfg_coef=params.min_cfg_coef)
                      for stage, n in enumerate(params.decoding_steps)]
        self.fused = {}
        self.coefs = self.temps = None
        if sampler == "fused":          # per-step scalars as device tensors, copied once here
            self.fused = {k: torch.tensor(v, device=device) for k, v in
                          {"top_p": params.top_p, "top_k": params.top_k, "greedy": not params.use_sampling}.items()}
            self.coefs = [torch.tensor([s.cfg_coef for s in plan], device=device) for plan in self.plans]
            self.temps = [torch.tensor([max(s.temperature, S.TEMPERATURE_FLOOR) for s in plan], device=device)
                          for plan in self.plans]
        self._graphs: dict = {}
        self._pool = torch.cuda.graph_pool_handle() if graphs == "cuda" else None

    @staticmethod
    def make_key(lm, batch, frames, text_len, params, n_prompt, backend, cross_lengths, sampler, graphs):
        """Everything a recorded step depends on besides buffer contents (the weights' addresses too: a
        recording that outlived replaced parameters would read freed memory)."""
        w = lm.emb[0].weight
        weights = hash(tuple(t.data_ptr() for t in lm.parameters()))
        return (id(lm), str(w.device), lm.compute_dtype, batch, frames, text_len, params, n_prompt, backend,
                cross_lengths, sampler, graphs, weights)

    def run(self, kv: list, prompt: torch.Tensor | None = None, generator=None, callback=None) -> torch.Tensor:
        """Decode all stages for this call's condition K/V, prompt tokens and generator(s) -> [B, n_q, T']."""
        params, lm, mask_id = self.params, self.lm, self.lm.mask_id
        if self.graphs is None:
            self.kv = kv
        elif self.kv is None:                   # static copies: the recorded steps read these addresses
            self.kv = [(k.clone(), v.clone()) for k, v in kv]
        else:
            for (sk, sv), (k, v) in zip(self.kv, kv, strict=True):
                sk.copy_(k)
                sv.copy_(v)
        self.seq.fill_(mask_id)
        if self.n_prompt:
            self.prompt.copy_(prompt)
            self.seq[..., : self.n_prompt] = prompt.repeat(2, 1, 1)
        self.flag.zero_()
        total, done = sum(params.decoding_steps), 0
        n_fixed = self.n_prompt // self.unit
        for stage, plan in enumerate(self.plans):
            self.row.fill_(mask_id)
            self.scores.zero_()
            self.scores[:, :n_fixed] = S.DONT_REMASK
            prefix = lm.stage_prefix(self.seq, stage, out=self.prefix)
            for i in range(len(plan)):
                # one Exp(1) draw of [B, T, card] per step, as torch.multinomial would make after the forward
                if params.use_sampling:
                    _fill_noise(self.noise, generator)
                self._step(stage, i, prefix)
                done += 1
                if callback is not None:
                    callback(done, total)
        if self.flag:
            raise NumericsError("non-finite probabilities reached sampling (overflow in the LM or CFG?); "
                                "try float32 (dtype='float32') or a smaller cfg coefficient")
        return self.seq[: self.batch].clone()

    def _body(self, stage: int, i: int, prefix) -> None:
        step = self.plans[stage][i]
        use_noise = self.params.use_sampling or self.sampler == "fused"
        row, scores, bad = decode_step(
            self.lm, self.seq, self.row, self.scores, self.kv, self.noise if use_noise else None, self.prompt,
            stage=stage, num_masked=step.num_masked,
            cfg_coef=step.cfg_coef if self.coefs is None else self.coefs[stage][i],
            temperature=step.temperature if self.temps is None else self.temps[stage][i],
            params=self.params, backend=self.backend, cross_lengths=self.cross_lengths, sampler=self.sampler,
            fused_scalars=self.fused, prefix=prefix)
        self.row.copy_(row)
        self.scores.copy_(scores)
        self.flag.logical_or_(bad)

    def _step(self, stage: int, i: int, prefix) -> None:
        replay = self._graphs.get((stage, i))
        if replay is not None:
            replay()
            return
        self._body(stage, i, prefix)            # eager: the real step (and the warm-up of a recording)
        if self.graphs == "cuda":
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):      # records only: nothing runs here
                self._body(stage, i, prefix)
            self._graphs[(stage, i)] = graph.replay
        elif self.graphs == "fx":
            from torch.fx.experimental.proxy_tensor import make_fx
            written = (self.seq, self.row, self.scores, self.flag)        # what _body writes
            state = [t.clone() for t in written]
            traced = make_fx(lambda: self._body(stage, i, prefix))()   # tracing runs the ops: undo them
            for buf, saved in zip(written, state, strict=True):
                buf.copy_(saved)
            self._graphs[(stage, i)] = traced


@torch.inference_mode()
def decode(lm: MagnetLM, kv: list, batch: int, frames: int, params: Params, *,
           prompt: torch.Tensor | None = None,
           generator: torch.Generator | list[torch.Generator] | None = None,
           backend: str = "exact", cross_lengths: tuple[int, ...] | None = None, sampler: str = "torch",
           callback=None, graphs: str | None = None, cache: dict | None = None) -> torch.Tensor:
    """Run all stages. kv: cross-attention K/V for 2*batch rows (cond then null). -> [B, n_q, T'] int64.

    generator: one stream for the whole batch (audiocraft's draw order), or one per row (each row's noise
    then depends only on its own stream: batch-invariant sampling).
    Non-finite probabilities are flagged on the device (no per-step sync) and raise NumericsError at the
    end of the generation instead of returning tokens sampled from garbage.
    graphs / cache: see ``Decoder``; ``cache`` (a dict owned by the caller) keeps Decoders, and with them
    their buffers and recorded graphs, for later calls of the same key.
    """
    n_prompt = 0 if prompt is None else prompt.shape[-1]
    text_len = kv[0][0].shape[-2]
    key = Decoder.make_key(lm, batch, frames, text_len, params, n_prompt, backend, cross_lengths, sampler, graphs)
    decoder = None if cache is None else cache.get(key)
    if decoder is None:
        decoder = Decoder(lm, batch, frames, params, n_prompt=n_prompt, backend=backend,
                          cross_lengths=cross_lengths, sampler=sampler, graphs=graphs)
        if cache is not None:
            cache[key] = decoder
    if isinstance(cache, OrderedDict):
        cache.move_to_end(key)                               # most recently used last
    return decoder.run(kv, prompt, generator, callback)
