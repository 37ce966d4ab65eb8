"""MAGNeT's iterative decoding loop: stages in codebook order, each a few mask-predict steps with span
masking, CFG and temperature annealing (docs/DESIGN.md, Decoding algorithm and GPU runtime).

A step is five named parts: select the spans to re-mask (spans.py) -> forward (the model, which owns
its attention backend) -> guidance + sampling (sampling.py) -> span scores (scoring.py), with an optional
rescoring part before the scores (rescoring.py: a MusicGen LM's probabilities mixed in). It is pure
tensor code: no host sync, no data-dependent Python, no host->device copy, so it compiles with
``torch.compile(fullgraph=True)`` and is what a CUDA graph records. Only the schedule (precomputed on
the host) and the progress callback touch Python per step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from magnet_fast.decoding.rescoring import Rescorer
from magnet_fast.decoding.runner import RunnerKey, StaticRunner, cached, fill_noise, runner_key, static_copy
from magnet_fast.decoding.sampling import make_sampler
from magnet_fast.decoding.schedule import Step, stage_steps
from magnet_fast.decoding.scoring import make_scorer
from magnet_fast.decoding.spans import make_arrangement
from magnet_fast.errors import ParameterError
from magnet_fast.kernels.sample import naive as S
from magnet_fast.nn.model import MagnetLM
from magnet_fast.params import SamplingParams, output_frames


@dataclass
class DecodeState:
    """What one step reads and writes. seq [2B, n_q, T]: the CFG batch (rows B.. mirror rows ..B, the
    model's input); row [B, T]: the stage's tokens; scores [B, units]; kv: per-layer condition K/V;
    noise [B, T, card] Exp(1); prefix: the embedding sum of the codebooks before the stage
    (``lm.stage_prefix``) or None; cross_lengths: batch-invariant key lengths or None.
    Kept frames (a prompt, an edit's frames outside its range, a loop's wrapped padding; editing.py):
    prompt [B, n_q, T] kept tokens and source [B, T], where frame f's token is taken from
    ``cat([row, prompt[:, stage]])[source[f]]`` (f itself: decoded; T + f: kept; another frame: a copy),
    free [B, T] = (source == f); all three None without kept frames. A prefix prompt of P frames is its
    tokens in prompt[..., :P] and source[f] = T + f for f < P."""
    seq: torch.Tensor
    row: torch.Tensor
    scores: torch.Tensor
    kv: list | None
    noise: torch.Tensor
    prompt: torch.Tensor | None         # the kept tokens [B, n_q, T] (a prompt: its first P frames) or None
    prefix: torch.Tensor | None = None
    cross_lengths: tuple[int, ...] | None = None
    source: torch.Tensor | None = None
    free: torch.Tensor | None = None


def _restore(row: torch.Tensor, state: DecodeState, stage: int) -> torch.Tensor:
    """Kept frames take their kept (or copied) tokens; the identity without kept frames."""
    if state.source is None:
        if state.prompt is None:
            return row
        # a bare prefix prompt [B, n_q, P] (a DecodeState built by hand, without source): its P frames kept
        return torch.cat([state.prompt[:, stage], row[:, state.prompt.shape[-1]:]], dim=1)
    return torch.cat([row, state.prompt[:, stage]], dim=1).gather(1, state.source)


def _write_row(seq: torch.Tensor, stage: int, row: torch.Tensor) -> None:
    """The stage's tokens into both halves of the CFG batch, in place."""
    seq[: row.shape[0], stage] = row
    seq[row.shape[0]:, stage] = row


def decode_step(lm: MagnetLM, state: DecodeState, step: Step, arrangement, sampler, scorer, rescore=None):
    """One step -> (row, scores, non-finite flag), new tensors; ``state.seq`` is the only input written.

    rescore: None, or ``rescore(seq, step, row, probs, was_masked) -> (probs, non-finite flag)`` (a
    ``rescoring.Rescorer``): mixes a second model's probabilities into the scored ones at the newly
    sampled positions, after the write-back and before the scorer."""
    # 1. select the spans to re-mask; kept frames (a prompt) always keep their tokens
    units, masked, top = arrangement.select(state.scores, step.num_masked)
    row = _restore(state.row.masked_fill(masked, lm.mask_id), state, step.stage)
    _write_row(state.seq, step.stage, row)
    # 2. forward; outside "exact" the head (and the sampler) may run on the re-masked spans only
    positions = arrangement.positions(top) if sampler.gathers and lm.gathers_head and top is not None else None
    cond, uncond = lm.guided_logits(state.seq, state.kv, step.stage, cross_lengths=state.cross_lengths,
                                    prefix=state.prefix, positions=positions)
    # 3-4. guidance, temperature, top-p/top-k and the draw
    was_masked = row == lm.mask_id if state.free is None else (row == lm.mask_id) & state.free
    tokens, sampled_probs, nonfinite = sampler(cond, uncond, row, state.noise, step, positions)
    row = _restore(torch.where(was_masked, tokens, row), state, step.stage)   # copies follow their frame
    _write_row(state.seq, step.stage, row)
    # 4b. rescoring (optional): another LM's probability of the candidate, mixed in at the new samples
    if rescore is not None:
        sampled_probs, bad = rescore(state.seq, step, row, sampled_probs, was_masked)
        nonfinite = nonfinite | bad
    # 5. the scores the next step re-masks by
    return row, scorer(sampled_probs, arrangement.scored_mask(units, was_masked)), nonfinite


class MagnetSpec(NamedTuple):
    """MAGNeT's part of a decoder's ``RunnerKey``: what its recorded steps depend on besides the shape."""
    params: SamplingParams
    backend: str
    cross_lengths: tuple[int, ...] | None
    sampler: str
    rescore: tuple | None = None            # ``RescoreRequest.spec``: the rescorer, its weights and settings
    schedule: tuple[int, float] | None = None   # kept frames' (region units, start timestep); see Decoder


class Decoder(StaticRunner):
    """Decoding one batch shape: every buffer allocated once and reused by every step and call.

    graphs: None runs each step eagerly; "cuda" records each (stage, step) on its first run and replays it
    on every later call with the same key (``Decoder.make_key``), all graphs in one memory pool; "fx" is the
    same protocol with ``make_fx`` traces (runner.py). Noise is drawn eagerly before each step from the
    caller's generator(s), so the RNG advances exactly as in eager decoding.
    """

    def __init__(self, lm: MagnetLM, batch: int, frames: int, params: SamplingParams, *, n_prompt: int = 0,
                 cross_lengths: tuple[int, ...] | None = None, sampler: str = "torch",
                 graphs: str | None = None, rescore=None, schedule: tuple[int, float] | None = None):
        """rescore: a ``RescoreRequest`` or None. schedule: None, or (region units, start timestep) for kept
        frames given per call (``run``'s ``kept``; editing.py): every stage's cosine schedule runs from
        ``start`` over the region's unit count. n_prompt > 0 is the prefix case: (units - n_prompt // unit,
        0.0), the prompt's frames kept."""
        super().__init__(lm, graphs)
        cfg, device = lm.cfg, lm.device
        self.params, self.batch, self.n_prompt = params, batch, n_prompt
        self.arrangement = make_arrangement(cfg.span_len, params.span_arrangement)
        self.scorer = make_scorer(params.span_scoring, self.arrangement)
        unit = self.arrangement.unit                        # scores live on spans or on tokens
        t = output_frames(frames, cfg.span_len, params.span_arrangement)
        n_units, start = schedule if schedule is not None else (t // unit - n_prompt // unit, 0.0)
        self.keeps = bool(n_prompt) or schedule is not None
        self.plans = [stage_steps(stage, n, n_units, start=start, temperature=params.temperature,
                                  anneal_temp=params.anneal_temp, max_cfg_coef=params.max_cfg_coef,
                                  min_cfg_coef=params.min_cfg_coef)
                      for stage, n in enumerate(params.decoding_steps)]
        self.sampler = make_sampler(sampler, params, lm.mask_id, self.plans, device)
        self.state = DecodeState(
            seq=torch.full((2 * batch, cfg.n_q, t), lm.mask_id, dtype=torch.long, device=device),
            row=torch.full((batch, t), lm.mask_id, dtype=torch.long, device=device),
            scores=torch.zeros(batch, t // unit, device=device),
            kv=None,
            noise=torch.ones(batch, t, cfg.card, device=device),       # refilled per step when sampling
            prompt=torch.zeros(batch, cfg.n_q, t, dtype=torch.long, device=device) if self.keeps else None,
            cross_lengths=cross_lengths,
            source=torch.zeros(batch, t, dtype=torch.long, device=device) if self.keeps else None,
            free=torch.zeros(batch, t, dtype=torch.bool, device=device) if self.keeps else None)
        self.kept_units = torch.zeros(batch, t // unit, dtype=torch.bool, device=device) if self.keeps else None
        self.prefix = torch.zeros(2 * batch, t, cfg.dim, dtype=lm.emb[0].weight.dtype, device=device)
        # rescoring (rescoring.py): a RescoreRequest; None decodes without one
        self.rescorer = None if rescore is None else Rescorer(rescore, batch, t, graphs is not None)

    @staticmethod
    def make_key(lm: MagnetLM, batch: int, frames: int, text_len: int, params: SamplingParams, n_prompt: int,
                 cross_lengths, sampler: str, graphs: str | None, rescore: tuple | None = None,
                 schedule: tuple[int, float] | None = None) -> RunnerKey:
        """Everything a recorded step depends on besides buffer contents (see ``RunnerKey``, ``MagnetSpec``);
        rescore: ``RescoreRequest.spec`` or None."""
        return runner_key("magnet", lm, batch, frames, text_len, n_prompt, graphs,
                          MagnetSpec(params, lm.attention_backend, cross_lengths, sampler, rescore, schedule))

    def buffers(self) -> list[torch.Tensor]:
        s = self.state
        out = [s.seq, s.row, s.scores, s.noise, self.flag, self.prefix, *[t for kv in s.kv or [] for t in kv]]
        if self.keeps:
            out += [s.prompt, s.source, s.free, self.kept_units]
        if self.rescorer is not None:
            out += self.rescorer.tensors()
        return out + (self.sampler.device_tensors() if hasattr(self.sampler, "device_tensors") else [])

    def written(self) -> list[torch.Tensor]:
        s = self.state
        return [s.seq, s.row, s.scores, self.flag]

    def _load(self, kv: list, prompt: torch.Tensor | None, rescore_kv: list | None = None,
              kept: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        s = self.state
        if self.rescorer is not None:
            if rescore_kv is None:
                raise ParameterError("this Decoder rescores: pass the rescorer's condition K/V (rescore_kv)")
            self.rescorer.load(rescore_kv)
        s.kv = static_copy(s.kv, kv, self.graphs)
        s.seq.fill_(self.lm.mask_id)
        if self.keeps:                          # the prompt is the prefix case of the kept frames
            t = s.row.shape[-1]
            frames = torch.arange(t, device=s.row.device).expand(self.batch, t)
            if kept is None and not self.n_prompt:
                raise ParameterError("this Decoder keeps frames: pass kept=(known tokens, source)")
            if kept is None:
                s.prompt.zero_()
                s.prompt[..., : self.n_prompt] = prompt
                s.source.copy_(torch.where(frames < self.n_prompt, frames + t, frames))
            else:
                s.prompt.copy_(kept[0])
                s.source.copy_(kept[1])
            torch.eq(s.source, frames, out=s.free)
            unit = self.arrangement.unit
            self.kept_units.copy_((~s.free).reshape(self.batch, -1, unit).all(-1))
            start = torch.cat([s.seq[: self.batch], s.prompt], dim=-1).gather(
                -1, s.source.unsqueeze(1).expand(-1, s.prompt.shape[1], -1))
            s.seq.copy_(start.repeat(2, 1, 1))
        self.flag.zero_()

    def run(self, kv: list, prompt: torch.Tensor | None = None, generator=None, callback=None,
            on_step=None, rescore_kv: list | None = None,
            kept: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Decode all stages for this call's condition K/V, prompt and generator(s) -> [B, n_q, T'].

        on_step(stage, index, state): called after each step (eager runs only: an observation hook).
        rescore_kv: the rescorer's per-layer cross K/V of the B conditional rows (when rescoring).
        kept: (known [B, n_q, T'], source [B, T']) for a Decoder built with ``schedule`` (DecodeState)."""
        self._load(kv, prompt, rescore_kv, kept)
        s, mask_id = self.state, self.lm.mask_id
        total, done = sum(self.params.decoding_steps), 0
        for stage, plan in enumerate(self.plans):
            s.row.fill_(mask_id)
            s.scores.zero_()
            if self.keeps:                                  # kept (prompt) spans are never re-masked
                s.scores.masked_fill_(self.kept_units, S.DONT_REMASK)
            s.prefix = self.lm.stage_prefix(s.seq, stage, out=self.prefix)
            for step in plan:
                # one Exp(1) draw of [B, T, card] per step, as torch.multinomial would make after the forward
                if self.params.use_sampling:
                    fill_noise(s.noise, generator)
                self.run_step((step.stage, step.index), self._step_fn(step))
                done += 1
                if on_step is not None:
                    on_step(stage, step.index, s)
                if callback is not None:
                    callback(done, total)
        self.check_finite()
        return s.seq[: self.batch].clone()

    def _step_fn(self, step: Step):
        """The step as a function of no arguments (what ``run_step`` runs, records or traces)."""
        return lambda: self._body(step)

    def _body(self, step: Step) -> None:
        row, scores, bad = decode_step(self.lm, self.state, step, self.arrangement, self.sampler, self.scorer,
                                       self.rescorer)
        self.state.row.copy_(row)
        self.state.scores.copy_(scores)
        self.flag.logical_or_(bad)


@torch.inference_mode()
def decode(lm: MagnetLM, kv: list, batch: int, frames: int, params: SamplingParams, *,
           prompt: torch.Tensor | None = None,
           generator: torch.Generator | list[torch.Generator] | None = None,
           cross_lengths: tuple[int, ...] | None = None, sampler: str = "torch", callback=None,
           graphs: str | None = None, cache: dict | None = None, on_step=None,
           rescore=None, kept: tuple | None = None, schedule: tuple[int, float] | None = None) -> torch.Tensor:
    """Run all stages with the model's attention backend. kv: cross-attention K/V for 2*batch rows (cond
    then null). -> [B, n_q, T'] int64.

    generator: one stream for the whole batch (audiocraft's draw order), or one per row (each row's noise
    then depends only on its own stream: batch-invariant sampling). Non-finite probabilities are flagged
    on the device (no per-step sync) and raise NumericsError at the end instead of returning tokens
    sampled from garbage. graphs / cache: see ``Decoder``; ``cache`` (a dict owned by the caller, e.g. the
    API's DecoderCache) keeps Decoders, with their buffers and recordings, for later calls of the same key.
    rescore: None, or a ``rescoring.RescoreRequest`` (``Rescoring.prepare``) to rescore every step.
    kept / schedule: kept frames (``Decoder``, ``DecodeState``; editing.py).
    """
    n_prompt = 0 if prompt is None else prompt.shape[-1]
    key = Decoder.make_key(lm, batch, frames, kv[0][0].shape[-2], params, n_prompt, cross_lengths, sampler,
                           graphs, None if rescore is None else rescore.spec, schedule)
    decoder = cached(cache, key, lambda: Decoder(lm, batch, frames, params, n_prompt=n_prompt,
                                                 cross_lengths=cross_lengths, sampler=sampler, graphs=graphs,
                                                 rescore=rescore, schedule=schedule))
    return decoder.run(kv, prompt, generator, callback, on_step, None if rescore is None else rescore.kv, kept)
