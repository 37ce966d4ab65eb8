"""Autoregressive decoding (MusicGen) on the same transformer: causal self-attention over a static,
preallocated KV cache, the delay codebook pattern by index arithmetic (docs/DESIGN.md, MusicGen).

The sequence the LM reads is the *pattern* sequence: position s holds, for codebook k, the token of frame
s - 1 - delays[k] (the special token id = card where that frame is outside [0, frames)); position 0 is all
special tokens. Each step feeds one position and samples all K codebooks of the next one; only entries
whose frame is generated (not a prompt frame, not out of range) are written. Two ways to run a step:

- eager (``pos`` a Python int): keys/values go into the cache at ``pos`` and attention reads the cache's
  first ``pos + 1`` entries; SDPA with audiocraft's shapes and flags, so CPU fp32 is bitwise audiocraft's
  (attention 'exact', the parity mode; also the CPU default: nothing to gain from masking there).
- static (``pos`` a device tensor): every shape is fixed (the whole cache is read under a boolean mask,
  positions and tokens are gathered by index), no host sync: one step function that ``torch.compile
  (fullgraph=True)`` accepts and one CUDA graph replays for every position (the gpt-fast design).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from magnet_fast.decoding.runner import RunnerKey, StaticRunner, cached, fill_noise, runner_key, static_copy
from magnet_fast.errors import ParameterError
from magnet_fast.kernels.sample import naive as S
from magnet_fast.nn.model import Cached, KVCache, MagnetLM
from magnet_fast.nn.pattern import build_pattern, first_step, pattern_length, revert_pattern
from magnet_fast.nn.positions import sin_embedding
from magnet_fast.params import ARParams


class MusicGenLM(MagnetLM):
    """MagnetLM's weights (the same release format and key names), run causally with a KV cache and all
    codebook heads at once (MusicGen's ``LMModel``); cross-attention through SDPA as audiocraft's torch
    backend runs it."""

    CROSS_BACKEND = "sdpa"

    def step_logits(self, tokens: torch.Tensor, kv: list, cache: KVCache, pos, rows: slice = slice(None),
                    null_from: int | None = None, static: bool = False,
                    table: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        """tokens [N, K, S] at pattern positions pos..pos+S-1 -> logits [N, K, S, card] (all codebooks): the
        model's one forward (``forward_hidden``) with a ``Cached`` mask.

        kv: per-layer cross-attention (k, v) of these N rows; cache rows ``rows`` hold their past.
        pos: int (eager; S > 1 only from position 0: the prompt's prefill, causal) or a one-element
        long tensor (static; S == 1; ``table`` = ``position_table``). null_from: rows from here on have an
        all-zero condition (their cross-attention output is exactly 0 and is skipped); None computes every
        row (audiocraft's shapes). last_only: the heads run on the last position only ([N, K, 1, card]; a
        prompt's prefill then needs no [N, K, S, card] logits; other GEMM shapes, so not in the parity mode).
        """
        if static:
            pe = table.index_select(1, pos)
            # keys at or before pos: one [1, 1, 1, L] mask per step, shared by every layer
            mask = Cached(cache, pos, rows, (torch.arange(cache.length, device=tokens.device) <= pos).view(1, 1, 1, -1))
        else:                                 # audiocraft's arithmetic for positions pos..pos+n-1, per call
            pe = sin_embedding(tokens.shape[-1], self.cfg.dim, self.cfg.max_period, torch.float32, tokens.device,
                               start=pos)
            mask = Cached(cache, pos, rows)
        x = self.forward_hidden(tokens, kv, mask, pe, null_from=null_from, last_only=last_only)
        return self.all_heads(x)


# ------------------------------------------------------------------------------------------ the decoder
class ARSpec(NamedTuple):
    """MusicGen's part of a decoder's ``RunnerKey``."""
    params: ARParams
    static: bool


class ARDecoder(StaticRunner):
    """One batch shape of MusicGen decoding: KV cache, pattern buffer, noise and (static) step state
    allocated once and reused by every position and call.

    static=False: eager steps with Python positions (the parity path; audiocraft's SDPA shapes).
    static=True: the fixed-shape step (device-tensor position); graphs="cuda" records it once and replays
    it for every position; graphs="compile" runs it through ``torch.compile(fullgraph=True)`` with the
    'eager' backend and "fx" traces it once (the CPU stand-ins tests use; runner.py).
    Noise is drawn eagerly before each step from the caller's generator(s), [B, K, card] per step as
    ``torch.multinomial`` would draw it, so the RNG advances exactly as in audiocraft.
    """

    def __init__(self, lm: MusicGenLM, batch: int, frames: int, params: ARParams, *, n_prompt: int = 0,
                 static: bool = False, graphs: str | None = None, two_step_coef: float | None = None):
        super().__init__(lm, graphs)
        if graphs is not None and not static:
            raise ParameterError("graphs need the static step (static=True)")
        cfg, device = lm.cfg, lm.device
        self.batch, self.frames, self.params, self.n_prompt, self.static = batch, frames, params, n_prompt, static
        self.delays = tuple(cfg.delays)
        self.length = pattern_length(frames, self.delays)
        self.start = first_step(n_prompt, self.delays)
        # audiocraft's two-step CFG uses the LM's own coefficient, not the call's (reproduced, documented)
        self.coef = params.cfg_coef if not params.two_step_cfg or two_step_coef is None else two_step_coef
        self.table = lm.position_table(self.length) if static else None
        self.cache = KVCache(cfg.num_layers, 2 * batch, cfg.num_heads, self.length, cfg.head_dim,
                             lm.compute_dtype, device)
        self.seq = torch.full((batch, cfg.n_q, self.length), cfg.card, dtype=torch.long, device=device)
        self.writable = torch.zeros(cfg.n_q, self.length, dtype=torch.bool, device=device)
        self.noise = torch.ones(batch, cfg.n_q, cfg.card, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.kv = self.kv_cond = self.kv_null = None        # this call's condition K/V (static copies under graphs)
        self.null_skip = False

    @staticmethod
    def make_key(lm, batch, frames, text_len, params, n_prompt, static, graphs) -> RunnerKey:
        return runner_key("musicgen", lm, batch, frames, text_len, n_prompt, graphs, ARSpec(params, static))

    def buffers(self) -> list[torch.Tensor]:
        """Every long-lived tensor a recorded step reads or writes."""
        kv = [t for pairs in (self.kv, self.kv_cond, self.kv_null) for pair in pairs or [] for t in pair]
        extra = [self.table] if self.table is not None else []
        return [self.seq, self.writable, self.noise, self.pos, self.flag, *self.cache.tensors(), *kv, *extra]

    def written(self) -> list[torch.Tensor]:
        return [self.seq, self.pos, self.flag, *self.cache.tensors()]

    # ------------------------------------------------------------------ one step
    def _guided(self, logits: torch.Tensor) -> torch.Tensor:
        """[2B, K, 1, card] (cond rows then null rows) -> guided [B, K, card] float32."""
        cond, uncond = logits[: self.batch, :, -1], logits[self.batch:, :, -1]
        return S.cfg_logits(cond, uncond, self.coef)

    def _forward(self, tokens: torch.Tensor, pos, null_skip: bool) -> torch.Tensor:
        """tokens [B, K, S] -> CFG logits [2B, K, S, card]: one batched forward, or two (two-step CFG).
        pos: a Python int runs the eager path (also the static decoder's prefill), a tensor the static one."""
        b = self.batch
        static = not isinstance(pos, int)
        last = null_skip and tokens.shape[-1] > 1       # outside the parity mode a prefill computes one position's heads
        if self.params.two_step_cfg:
            cond = self.lm.step_logits(tokens, self.kv_cond, self.cache, pos, slice(0, b), None, static,
                                       self.table, last)
            uncond = self.lm.step_logits(tokens, self.kv_null, self.cache, pos, slice(b, 2 * b),
                                         0 if null_skip else None, static, self.table, last)
            return torch.cat([cond, uncond])
        return self.lm.step_logits(tokens.repeat(2, 1, 1), self.kv, self.cache, pos, slice(None),
                                   b if null_skip else None, static, self.table, last)

    def _sample(self, guided: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, K, card] -> tokens [B, K] and a non-finite flag."""
        p = self.params
        probs = S.step_probs(guided, p.temperature if not p.greedy else 1.0)
        tokens, _ = S.sample(probs, guided, None if p.greedy else self.noise, top_p=p.top_p, top_k=p.top_k,
                             use_sampling=not p.greedy)
        bad = ~torch.isfinite(guided).all() if p.greedy else ~torch.isfinite(probs).all()
        return tokens.squeeze(-1), bad

    def _static_body(self) -> None:
        """Feed position pos - 1, sample position pos, advance pos: fixed shapes, no host sync."""
        inp = self.seq.index_select(2, self.pos - 1)
        logits = self._forward(inp, self.pos - 1, self.null_skip)
        tokens, bad = self._sample(self._guided(logits))
        old = self.seq.index_select(2, self.pos).squeeze(-1)
        keep = self.writable.index_select(1, self.pos).squeeze(-1)           # [K]
        self.seq.index_copy_(2, self.pos, torch.where(keep, tokens, old).unsqueeze(-1))
        self.flag.logical_or_(bad)
        self.pos.add_(1)

    # ------------------------------------------------------------------ a whole generation
    def _load(self, kv, prompt, kv_split) -> None:
        b = self.batch
        self.kv = static_copy(self.kv, kv, self.graphs)
        if kv_split is not None:                   # two-step CFG: the two halves encoded apart
            self.kv_cond = static_copy(self.kv_cond, kv_split[0], self.graphs)
            self.kv_null = static_copy(self.kv_null, kv_split[1], self.graphs)
        else:
            self.kv_cond = [(k[:b], v[:b]) for k, v in self.kv]
            self.kv_null = [(k[b:], v[b:]) for k, v in self.kv]
        codes = prompt if prompt is not None else torch.zeros(b, self.lm.cfg.n_q, 0, dtype=torch.long,
                                                              device=self.seq.device)
        seq, writable = build_pattern(codes, self.frames, self.delays, self.lm.cfg.card, self.n_prompt)
        self.seq.copy_(seq)
        self.writable.copy_(writable)
        self.flag.zero_()

    def run(self, kv: list, prompt: torch.Tensor | None = None, generator=None, callback=None,
            null_skip: bool = False, kv_split=None) -> torch.Tensor:
        """Decode every position for this call's condition K/V ([2B] rows: cond then null), prompt
        [B, K, P] and generator(s) -> codes [B, K, frames] (prompt included)."""
        self._load(kv, prompt, kv_split)
        self.null_skip = null_skip
        total = self.length - self.start
        for i, offset in enumerate(range(self.start, self.length)):
            if not self.params.greedy:          # after the forward in audiocraft; no other draw in between
                fill_noise(self.noise, generator)
            if i == 0 and (not self.static or offset > 1):    # the prefill: every known position at once
                self._write(offset, self._forward(self.seq[..., :offset], 0, null_skip))
                self.pos.fill_(offset + 1)
            elif self.static:
                if i == 0:                       # static with one known position: the step itself
                    self.pos.fill_(offset)
                self.run_step("step", self._static_body)
            else:
                self._write(offset, self._forward(self.seq[..., offset - 1:offset], offset - 1, null_skip))
            if callback is not None:
                callback(i + 1, total)
        self.check_finite()
        return revert_pattern(self.seq, self.frames, self.delays).clone()

    def _write(self, offset: int, logits: torch.Tensor) -> None:
        tokens, bad = self._sample(self._guided(logits))
        col = self.seq[:, :, offset]
        self.seq[:, :, offset] = torch.where(self.writable[:, offset], tokens, col)
        self.flag.logical_or_(bad)


@torch.inference_mode()
def decode_ar(lm: MusicGenLM, kv: list, batch: int, frames: int, params: ARParams, *,
              prompt: torch.Tensor | None = None, generator=None, callback=None, static: bool = False,
              null_skip: bool = False, graphs: str | None = None, cache: dict | None = None,
              kv_split=None, two_step_coef: float | None = None) -> torch.Tensor:
    """MusicGen decoding of ``frames`` frames for ``batch`` rows -> [B, K, frames] int64 (prompt kept).

    kv: cross-attention K/V of the 2B CFG rows (cond then null). kv_split: for two-step CFG, the
    (cond, null) K/V encoded apart as audiocraft does. cache: a DecoderCache keeping ARDecoders (and a
    recorded graph) for later calls of the same key."""
    n_prompt = 0 if prompt is None else prompt.shape[-1]
    key = ARDecoder.make_key(lm, batch, frames, kv[0][0].shape[-2], params, n_prompt, static, graphs)
    decoder = cached(cache, key, lambda: ARDecoder(lm, batch, frames, params, n_prompt=n_prompt, static=static,
                                                   graphs=graphs, two_step_coef=two_step_coef))
    return decoder.run(kv, prompt, generator, callback, null_skip, kv_split)
