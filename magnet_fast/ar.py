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
import torch.nn.functional as F

from magnet_fast.errors import NumericsError, ParameterError
from magnet_fast.kernels.sample import naive as S
from magnet_fast.model import MagnetLM, sin_embedding
from magnet_fast.params import ARParams


class KVCache:
    """Per-layer self-attention keys and values, [N, heads, length, head_dim] each, allocated once."""

    def __init__(self, num_layers: int, rows: int, heads: int, length: int, head_dim: int, dtype, device):
        shape = (rows, heads, length, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.length = length

    def tensors(self) -> list[torch.Tensor]:
        return [*self.k, *self.v]


class MusicGenLM(MagnetLM):
    """MagnetLM's weights (the same release format and key names), run causally with a KV cache and all
    codebook heads at once (MusicGen's ``LMModel``)."""

    def position_table(self, length: int) -> torch.Tensor:
        """Positions 0..length-1 [1, length, dim] float32, for the static step to gather from."""
        return sin_embedding(length, self.cfg.dim, self.cfg.max_period, torch.float32, self.emb[0].weight.device)

    def step_logits(self, tokens: torch.Tensor, kv: list, cache: KVCache, pos, rows: slice = slice(None),
                    null_from: int | None = None, static: bool = False,
                    table: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        """tokens [N, K, S] at pattern positions pos..pos+S-1 -> logits [N, K, S, card] (all codebooks).

        kv: per-layer cross-attention (k, v) of these N rows; cache rows ``rows`` hold their past.
        pos: int (eager; S > 1 only from position 0: the prompt's prefill, causal) or a one-element
        long tensor (static; S == 1; ``table`` = ``position_table``). null_from: rows from here on have an
        all-zero condition (their cross-attention output is exactly 0 and is skipped); None computes every
        row (audiocraft's shapes). last_only: the heads run on the last position only ([N, K, 1, card]; a
        prompt's prefill then needs no [N, K, S, card] logits; other GEMM shapes, so not in the parity mode).
        """
        x = self.embed(tokens)
        n = tokens.shape[-1]
        allowed = None
        if static:
            pe = table.index_select(1, pos).to(x.dtype)
            # keys at or before pos: one [1, 1, 1, L] mask per step, shared by every layer
            allowed = (torch.arange(cache.length, device=x.device) <= pos).view(1, 1, 1, -1)
        else:                                 # audiocraft's arithmetic for positions pos..pos+n-1, per call
            pe = _sin_at(pos, n, self.cfg.dim, self.cfg.max_period, x.dtype, x.device)
        x = x + self.cfg.positional_scale * pe
        cd = self.compute_dtype
        for i, layer in enumerate(self.layers):
            h = layer.norm1(x).to(cd)
            x = x + _self_attention(layer.self_attn, h, cache.k[i][rows], cache.v[i][rows], pos,
                                    allowed).to(x.dtype)
            k, v = kv[i]
            if null_from is None:
                x = x + _cross_attention(layer.cross_attn, layer.norm_cross(x).to(cd), k, v).to(x.dtype)
            elif null_from > 0:
                m = null_from
                x[:m] += _cross_attention(layer.cross_attn, layer.norm_cross(x[:m]).to(cd), k[:m],
                                          v[:m]).to(x.dtype)
            x = x + layer.linear2(F.gelu(layer.linear1(layer.norm2(x).to(cd)))).to(x.dtype)
        x = self.out_norm(x if not last_only else x[:, -1:])
        return torch.stack([head(x.to(head.weight.dtype)) for head in self.heads], dim=1)


def _sin_at(start: int, n: int, dim: int, max_period: float, dtype, device) -> torch.Tensor:
    """Sinusoidal positions start..start+n-1, [1, n, dim], op for op as audiocraft builds them per call."""
    half = dim // 2
    pos = (torch.arange(n, device=device).view(1, -1, 1) + start).to(dtype)
    j = torch.arange(half, device=device, dtype=dtype).view(1, 1, -1)
    period = torch.full([], max_period, device=device, dtype=dtype)
    phase = pos / (period ** (j / (half - 1)))
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


def _split(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def _self_attention(attn, x: torch.Tensor, ck: torch.Tensor, cv: torch.Tensor, pos, allowed):
    """allowed: the static step's key mask (one position, fixed shapes), or None for the eager step."""
    b, t, _ = x.shape
    qkv = attn.in_proj(x).view(b, t, 3, attn.heads, -1)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))          # [B, H, t, Dh]
    if allowed is not None:          # write at pos, read the whole cache under the mask
        ck.index_copy_(2, pos, k)
        cv.index_copy_(2, pos, v)
        out = F.scaled_dot_product_attention(q, ck, cv, attn_mask=allowed)
    else:
        ck[:, :, pos:pos + t] = k
        cv[:, :, pos:pos + t] = v
        if t > 1 and pos != 0:
            raise ValueError("several positions at once only from position 0 (the prefill)")
        # audiocraft: causal (lower-triangular) for a multi-position call, no mask for one position
        out = F.scaled_dot_product_attention(q, ck[:, :, :pos + t], cv[:, :, :pos + t], is_causal=t > 1)
    return attn.out_proj(out.transpose(1, 2).reshape(b, t, -1))


def _cross_attention(attn, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    b, t, _ = x.shape
    out = F.scaled_dot_product_attention(_split(attn.q_proj(x), attn.heads), k, v)
    return attn.out_proj(out.transpose(1, 2).reshape(b, t, -1))


# ------------------------------------------------------------------------------------------ the pattern
def pattern_length(frames: int, delays) -> int:
    """Positions of the delay pattern sequence: the initial special position + frames + max delay."""
    return frames + max(delays) + 1


def first_step(n_prompt: int, delays) -> int:
    """The first pattern position holding a frame >= n_prompt: where sampling starts (the positions
    before it are all known and go through the model in one prefill)."""
    return n_prompt + 1 + min(delays)


def build_pattern(codes: torch.Tensor, frames: int, delays, special: int, n_known: int):
    """codes [B, K, >= n_known] (the first n_known frames known) -> (seq [B, K, L] with the known frames
    and special tokens placed, writable [K, L] bool: where a sampled token is kept)."""
    b, k = codes.shape[:2]
    length = pattern_length(frames, delays)
    seq = torch.full((b, k, length), special, dtype=torch.long, device=codes.device)
    writable = torch.zeros(k, length, dtype=torch.bool, device=codes.device)
    for q, d in enumerate(delays):
        if n_known:
            seq[:, q, 1 + d: 1 + d + n_known] = codes[:, q, :n_known]
        writable[q, 1 + d + n_known: 1 + d + frames] = True
    return seq, writable


def revert_pattern(seq: torch.Tensor, frames: int, delays) -> torch.Tensor:
    """Pattern sequence [B, K, L] -> codes [B, K, frames]: frame t of codebook k sits at 1 + t + delays[k]."""
    return torch.stack([seq[:, q, 1 + d: 1 + d + frames] for q, d in enumerate(delays)], dim=1)


# ------------------------------------------------------------------------------------------ the decoder
class ARKey(NamedTuple):
    """What a cached ARDecoder (buffers, recorded graph) is valid for."""
    model: int
    device: str
    dtype: torch.dtype
    batch: int
    frames: int
    text_len: int
    params: ARParams
    n_prompt: int
    static: bool
    graphs: str | None
    weights: int

    def eager(self) -> ARKey:
        return self._replace(graphs=None)


class ARDecoder:
    """One batch shape of MusicGen decoding: KV cache, pattern buffer, noise and (static) step state
    allocated once and reused by every position and call.

    static=False: eager steps with Python positions (the parity path; audiocraft's SDPA shapes).
    static=True: the fixed-shape step (device-tensor position); graphs="cuda" records it once and replays
    it for every position; graphs="compile" runs it through ``torch.compile(fullgraph=True)`` with the
    'eager' backend (the CPU stand-in tests use: a host sync or data-dependent Python fails there).
    Noise is drawn eagerly before each step from the caller's generator(s), [B, K, card] per step as
    ``torch.multinomial`` would draw it, so the RNG advances exactly as in audiocraft.
    """

    def __init__(self, lm: MusicGenLM, batch: int, frames: int, params: ARParams, *, n_prompt: int = 0,
                 static: bool = False, graphs: str | None = None, two_step_coef: float | None = None):
        if graphs not in (None, "cuda", "compile"):
            raise ParameterError(f"graphs must be None, 'cuda' or 'compile', got {graphs!r}")
        if graphs is not None and not static:
            raise ParameterError("graphs need the static step (static=True)")
        cfg, device = lm.cfg, lm.emb[0].weight.device
        self.lm, self.batch, self.frames, self.params, self.n_prompt = lm, batch, frames, params, n_prompt
        self.static, self.graphs = static, graphs
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
        self.flag = torch.zeros((), dtype=torch.bool, device=device)
        self.kv = None
        self._compiled = None
        self._graph = None

    @staticmethod
    def make_key(lm, batch, frames, text_len, params, n_prompt, static, graphs) -> ARKey:
        return ARKey(id(lm), str(lm.emb[0].weight.device), lm.compute_dtype, batch, frames, text_len, params,
                     n_prompt, static, graphs, hash(tuple(t.data_ptr() for t in lm.parameters())))

    @property
    def recorded(self) -> dict:
        return {"step": self._graph} if self._graph is not None else {}

    def buffers(self) -> list[torch.Tensor]:
        """Every long-lived tensor a recorded step reads or writes."""
        kv = [t for pairs in (self.kv, getattr(self, "kv_cond", None), getattr(self, "kv_null", None))
              for pair in pairs or [] for t in pair]
        extra = [self.table] if self.table is not None else []
        return [self.seq, self.writable, self.noise, self.pos, self.flag, *self.cache.tensors(), *kv, *extra]

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
        logits = self._forward(inp, self.pos - 1, self._null_skip)
        tokens, bad = self._sample(self._guided(logits))
        old = self.seq.index_select(2, self.pos).squeeze(-1)
        keep = self.writable.index_select(1, self.pos).squeeze(-1)           # [K]
        self.seq.index_copy_(2, self.pos, torch.where(keep, tokens, old).unsqueeze(-1))
        self.flag.logical_or_(bad)
        self.pos.add_(1)

    def _static_step(self) -> None:
        if self.graphs is None:
            self._static_body()
        elif self.graphs == "compile":
            if self._compiled is None:       # the graph-safety check (tests): Dynamo must trace it whole
                self._compiled = torch.compile(self._static_body, fullgraph=True, dynamic=False, backend="eager")
            self._compiled()
        elif self._graph is not None:
            self._graph.replay()
        else:                                     # warm up eagerly (that is this position's step), record
            self._static_body()
            saved = [t.clone() for t in (self.seq, self.pos, self.flag, *self.cache.tensors())]
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._static_body()
            # recording ran nothing, but restore anyway: the graph must start from this state
            for buf, old in zip((self.seq, self.pos, self.flag, *self.cache.tensors()), saved, strict=True):
                buf.copy_(old)
            self._graph = graph

    # ------------------------------------------------------------------ a whole generation
    def _load(self, kv, prompt, kv_split) -> None:
        b = self.batch
        self.kv = self._static_copy(self.kv, kv)
        if kv_split is not None:                   # two-step CFG: the two halves encoded apart
            self.kv_cond = self._static_copy(getattr(self, "kv_cond", None), kv_split[0])
            self.kv_null = self._static_copy(getattr(self, "kv_null", None), kv_split[1])
        else:
            self.kv_cond = [(k[:b], v[:b]) for k, v in self.kv]
            self.kv_null = [(k[b:], v[b:]) for k, v in self.kv]
        codes = prompt if prompt is not None else torch.zeros(b, self.lm.cfg.n_q, 0, dtype=torch.long,
                                                              device=self.seq.device)
        seq, writable = build_pattern(codes, self.frames, self.delays, self.lm.cfg.card, self.n_prompt)
        self.seq.copy_(seq)
        self.writable.copy_(writable)
        self.flag.zero_()

    def _static_copy(self, held, kv):
        """Eager: the caller's tensors. Recorded: copies at fixed addresses (made once, then refilled)."""
        if self.graphs is None:
            return kv
        if held is None:
            return [(k.clone(), v.clone()) for k, v in kv]
        for (sk, sv), (k, v) in zip(held, kv, strict=True):
            sk.copy_(k)
            sv.copy_(v)
        return held

    def run(self, kv: list, prompt: torch.Tensor | None = None, generator=None, callback=None,
            null_skip: bool = False, kv_split=None) -> torch.Tensor:
        """Decode every position for this call's condition K/V ([2B] rows: cond then null), prompt
        [B, K, P] and generator(s) -> codes [B, K, frames] (prompt included)."""
        from magnet_fast.generate import _fill_noise
        self._load(kv, prompt, kv_split)
        self._null_skip = null_skip
        total = self.length - self.start
        for i, offset in enumerate(range(self.start, self.length)):
            if not self.params.greedy:          # after the forward in audiocraft; no other draw in between
                _fill_noise(self.noise, generator)
            if i == 0:                           # the prefill: every known position at once, eagerly
                logits = self._forward(self.seq[..., :offset], 0, null_skip) if not self.static or offset > 1 \
                    else None
                if logits is None:               # static with one position: the step itself
                    self.pos.fill_(offset)
                    self._static_body() if self.graphs is None else self._static_step()
                else:
                    self._write(offset, logits)
                    self.pos.fill_(offset + 1)
            elif self.static:
                self._static_step()
            else:
                self._write(offset, self._forward(self.seq[..., offset - 1:offset], offset - 1, null_skip))
            if callback is not None:
                callback(i + 1, total)
        if self.flag:
            raise NumericsError("non-finite probabilities reached sampling (overflow in the LM or CFG?); "
                                "try float32 (dtype='float32') or a smaller cfg coefficient")
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
    decoder = None if cache is None else cache.get(key)
    if decoder is None:
        decoder = ARDecoder(lm, batch, frames, params, n_prompt=n_prompt, static=static, graphs=graphs,
                            two_step_coef=two_step_coef)
        if cache is not None:
            cache[key] = decoder
    if cache is not None:
        cache.move_to_end(key)
    return decoder.run(kv, prompt, generator, callback, null_skip, kv_split)
