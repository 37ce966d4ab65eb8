"""The MAGNeT language model as released, lean for inference (docs/DESIGN.md, Model).

- Summed codebook embeddings (codebook order), sinusoidal positions (cos first, half-1 exponent).
- Pre-norm layers: banded/full self-attention, cross-attention over the projected T5 condition (no
  mask: padded and null condition rows are zero vectors and still take softmax weight, as upstream),
  GELU feed-forward. No biases except the LayerNorms and the text projection.
- Only the current stage's output head is computed; cross-attention K/V are computed once per
  generation (``cross_kv``) and reused for every step.
Matmul groupings follow audiocraft's (packed self-attention in_proj, separate cross q/k/v) so CPU fp32
results are bitwise equal to it.

Mixed precision (bf16/fp16 weights): embeddings, positions, LayerNorms, the residual stream, the text
projection and the output heads stay in float32 (under audiocraft's CUDA autocast the embeddings and the
residual are fp32 too); the transformer's linear layers and attention run in the low-precision dtype.
Float32 logits matter: CFG multiplies their rounding error by up to max_cfg_coef. In float32 every cast
below is a no-op.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from magnet_fast.config import MagnetConfig
from magnet_fast.errors import ParameterError
from magnet_fast.kernels.constants import mask_id
from magnet_fast.nn.attention import BACKENDS, AttentionCache, attention
from magnet_fast.nn.positions import sin_embedding


# ------------------------------------------------------------------------------ self-attention masks
# What a forward's self-attention attends: the one ``MagnetLM.forward`` takes one of these and every layer
# calls ``mask.attend(layer_index, q, k, v)`` with its q, k, v [B, H, T, Dh] (views of the packed in_proj).
class Band(NamedTuple):
    """MAGNeT: full (window None) or restricted-context (|q - k| <= window) bidirectional attention through
    ``attention.attention`` with the model's backend and caches."""
    window: int | None
    backend: str
    masks: AttentionCache

    def attend(self, layer: int, q, k, v):
        return attention(q, k, v, self.window, backend=self.backend, masks=self.masks)


class Causal(NamedTuple):
    """Causal attention over the whole sequence at once (teacher forcing: the rescorer; training MusicGen):
    SDPA with ``is_causal``, audiocraft's non-streaming call."""

    def attend(self, layer: int, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class KVCache:
    """Per-layer self-attention keys and values, [N, heads, length, head_dim] each, allocated once (the
    static cache of autoregressive decoding, gpt-fast's ``setup_caches``)."""

    def __init__(self, num_layers: int, rows: int, heads: int, length: int, head_dim: int, dtype, device):
        shape = (rows, heads, length, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.length = length

    def tensors(self) -> list[torch.Tensor]:
        return [*self.k, *self.v]


class Cached(NamedTuple):
    """Causal attention over a ``KVCache`` (rows ``rows`` of it): the new keys/values are written at ``pos``.

    pos an int (eager): written in place at pos..pos+T-1, attention over the first pos+T entries; several
    positions only from 0 (a prefill, causal), one position unmasked (audiocraft's streaming shapes and
    flags). pos a one-element device tensor (static): one position, ``index_copy_`` at pos and the whole
    cache read under ``allowed`` (key <= pos): fixed shapes, no host sync, what a CUDA graph replays."""
    cache: KVCache
    pos: object
    rows: slice = slice(None)
    allowed: torch.Tensor | None = None

    def attend(self, layer: int, q, k, v):
        ck, cv, pos = self.cache.k[layer][self.rows], self.cache.v[layer][self.rows], self.pos
        t = q.shape[-2]
        if self.allowed is not None:
            ck.index_copy_(2, pos, k)
            cv.index_copy_(2, pos, v)
            return F.scaled_dot_product_attention(q, ck, cv, attn_mask=self.allowed)
        if t > 1 and pos != 0:
            raise ValueError("several positions at once only from position 0 (the prefill)")
        ck[:, :, pos:pos + t] = k
        cv[:, :, pos:pos + t] = v
        return F.scaled_dot_product_attention(q, ck[:, :, :pos + t], cv[:, :, :pos + t], is_causal=t > 1)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj = nn.Linear(dim, 3 * dim, bias=False)       # rows: q; k; v
        self.out_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, mask, layer: int = 0) -> torch.Tensor:
        b, t, _ = x.shape
        qkv = self.in_proj(x).view(b, t, 3, self.heads, -1)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))   # [B, H, T, Dh] views
        out = mask.attend(layer, q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, -1))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.out_proj = nn.Linear(dim, dim, bias=False)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

    def kv(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the condition [B, L, dim] -> two [B, H, L, Dh]; constant per generation."""
        return self._split(self.k_proj(cond)), self._split(self.v_proj(cond))

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], backend: str,
                masks: AttentionCache | None, key_lengths: tuple[int, ...] | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        out = attention(self._split(self.q_proj(x)), kv[0], kv[1], None, backend=backend, masks=masks,
                        key_lengths=key_lengths)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, -1))


class Layer(nn.Module):
    def __init__(self, cfg: MagnetConfig):
        super().__init__()
        d = cfg.dim
        self.norm1 = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.self_attn = SelfAttention(d, cfg.num_heads)
        self.norm_cross = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.cross_attn = CrossAttention(d, cfg.num_heads)
        self.norm2 = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.linear1 = nn.Linear(d, cfg.hidden_scale * d, bias=False)
        self.linear2 = nn.Linear(cfg.hidden_scale * d, d, bias=False)

    def forward(self, x, kv, mask, cross_backend: str, masks=None, key_lengths=None, null_from=None, index=0):
        """One pre-norm layer. mask: the self-attention's (``Band``, ``Causal``, ``Cached``); cross_backend:
        the cross-attention's backend (``attention.attention``). null_from: rows from here on have an all-zero
        condition, whose cross-attention output is exactly 0 and is skipped (None: every row, audiocraft's
        shapes). Differentiable (no in-place write) when null_from is None."""
        cd = self.linear1.weight.dtype                    # compute dtype; x (the residual) may be wider
        x = x + self.self_attn(self.norm1(x).to(cd), mask, index).to(x.dtype)
        if null_from is None:
            x = x + self.cross_attn(self.norm_cross(x).to(cd), kv, cross_backend, masks, key_lengths).to(x.dtype)
        elif null_from > 0:
            n = null_from
            lengths = key_lengths[:n] if key_lengths is not None else None
            x[:n] += self.cross_attn(self.norm_cross(x[:n]).to(cd), (kv[0][:n], kv[1][:n]), cross_backend, masks,
                                     lengths).to(x.dtype)
        return x + self.linear2(F.gelu(self.linear1(self.norm2(x).to(cd)))).to(x.dtype)


class MagnetLM(nn.Module):
    """The transformer both families share (MAGNeT's and MusicGen's ``LMModel``: the same layers and release
    format): summed codebook embeddings + sinusoidal positions, pre-norm layers, out_norm, one head per
    codebook. ``forward_hidden`` is the one forward; what differs between MAGNeT's decoding step, MusicGen's
    prefill and static step and the rescorer's teacher-forced pass is only the self-attention mask
    (``Band``, ``Cached``, ``Causal``), the positions and which heads run."""

    #: cross-attention backend: None follows the self-attention backend (MAGNeT: audiocraft runs it through
    #: the same xformers op); MusicGen's LM sets 'sdpa' (audiocraft's torch backend).
    CROSS_BACKEND: str | None = None

    def __init__(self, cfg: MagnetConfig):
        super().__init__()
        self.cfg = cfg
        self.text_proj = nn.Linear(cfg.t5_dim, cfg.dim)          # T5 width -> LM width, with bias
        self.emb = nn.ModuleList(nn.Embedding(cfg.card + 1, cfg.dim) for _ in range(cfg.n_q))
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))
        self.out_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.heads = nn.ModuleList(nn.Linear(cfg.dim, cfg.card, bias=False) for _ in range(cfg.n_q))
        self.attention_backend = "exact"
        self._windows = frozenset(self.window(s) for s in range(cfg.n_q))    # the stages' bands, fixed
        self.caches = AttentionCache()        # positions, band masks, block masks: built by setup_caches

    @property
    def device(self) -> torch.device:
        return self.emb[0].weight.device

    def weights_token(self) -> int:
        """A hash of every parameter's address: part of each cached decoder's key, so no buffer or
        recording outlives replaced weights."""
        return hash(tuple(t.data_ptr() for t in self.parameters()))

    def set_attention(self, backend: str) -> None:
        """The attention backend every forward uses (see attention.py): 'exact', 'sdpa', 'windowed', 'triton'."""
        if backend not in BACKENDS:
            raise ParameterError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "triton":
            if not hasattr(torch.library, "triton_op"):
                raise ParameterError("the triton attention backend needs torch >= 2.6 "
                                     f"(torch.library.triton_op); this is {torch.__version__}")
            from magnet_fast.kernels.banded_attn import SUPPORTED_D
            if self.device.type == "cuda" and self.cfg.head_dim not in SUPPORTED_D:
                raise ParameterError(f"the triton attention kernel supports head dims {SUPPORTED_D}, this "
                                     f"model has {self.cfg.head_dim}; use 'sdpa' or 'windowed'")
        self.attention_backend = backend

    @property
    def cross_backend(self) -> str:
        return self.CROSS_BACKEND or self.attention_backend

    @property
    def gathers_head(self) -> bool:
        """Whether the output head may run on selected positions only (every backend but 'exact', whose
        full-row head GEMM keeps audiocraft's shapes for bitwise parity)."""
        return self.attention_backend != "exact"

    def setup_caches(self, t: int) -> AttentionCache:
        """Build what every forward of length ``t`` reuses (positions, the stages' band masks) once;
        later calls with the same length are free. Called by ``hidden``; callers may call it ahead."""
        self.caches.setup(t, self.cfg.dim, self.cfg.max_period, self.device, windows=self._windows,
                          backend=self.attention_backend)
        return self.caches

    @property
    def compute_dtype(self) -> torch.dtype:
        """dtype of the transformer's linear layers (float32 / bfloat16 / float16)."""
        return self.layers[0].linear1.weight.dtype

    @property
    def mask_id(self) -> int:
        return mask_id(self.cfg.card)

    def window(self, stage: int) -> int | None:
        """Self-attention band of a stage: None (full) for the first codebook, else subcodes_context."""
        ctx = self.cfg.subcodes_context
        return None if stage == 0 or ctx < 0 else ctx

    def band(self, stage: int, backend: str | None = None) -> Band:
        """MAGNeT's self-attention mask at ``stage`` with the model's (or the given) backend."""
        return Band(self.window(stage), backend or self.attention_backend, self.caches)

    def project_text(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """T5 hidden states [B, L, t5_dim] -> condition [B, L, dim], zero where mask is 0."""
        return self.text_proj(hidden.to(self.text_proj.weight)) * mask.unsqueeze(-1).to(self.text_proj.weight)

    def cross_kv(self, cond: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer cross-attention keys/values of the condition, computed once per generation."""
        cond = cond.to(self.compute_dtype)
        return [layer.cross_attn.kv(cond) for layer in self.layers]

    def positions(self, t: int, dtype: torch.dtype, device) -> torch.Tensor:
        """Sinusoidal positions [1, t, dim] (cached by ``setup_caches``)."""
        return self.caches.positions(t, dtype, device, self.cfg.dim, self.cfg.max_period)

    def position_table(self, length: int) -> torch.Tensor:
        """Positions 0..length-1 [1, length, dim] float32, uncached (a decoder's static table)."""
        return sin_embedding(length, self.cfg.dim, self.cfg.max_period, torch.float32, self.device)

    def embed(self, seq: torch.Tensor, upto: int | None = None, prefix: torch.Tensor | None = None,
              start: int = 0) -> torch.Tensor:
        """Summed codebook embeddings [B, T, dim] of codebooks start..upto-1, added in codebook order.

        prefix: the sum of codebooks 0..start-1 (``stage_prefix``); the sum continues from it, in the same
        order, so the result is bitwise the full sum.
        """
        x = prefix
        for k in range(start, self.cfg.n_q if upto is None else upto):
            e = self.emb[k](seq[:, k])
            x = e if x is None else x + e
        return x

    def stage_prefix(self, seq: torch.Tensor, stage: int, out: torch.Tensor | None = None) -> torch.Tensor | None:
        """Embedding sum of the codebooks before ``stage`` (constant while the stage decodes), written
        into ``out`` when given (a static buffer). None for stage 0."""
        if stage == 0:
            return None
        x = self.embed(seq, upto=stage)
        return x if out is None else out.copy_(x)

    def forward_hidden(self, seq: torch.Tensor, kv: list, mask, pe: torch.Tensor, *,
                       key_lengths: tuple[int, ...] | None = None, null_from: int | None = None,
                       prefix: torch.Tensor | None = None, prefix_upto: int = 0,
                       last_only: bool = False) -> torch.Tensor:
        """The one forward: tokens seq [B, n_q, T] -> out_norm'd hidden states [B, T, dim] ([B, 1, dim] with
        ``last_only``).

        mask: the self-attention (``Band``, ``Cached``, ``Causal``). pe: positions [1, T, dim] (any float
        dtype; cast to the residual's). kv: per-layer cross-attention (k, v) of these rows. key_lengths: per
        row, how many condition positions to attend (batch-invariant mode); None attends over every padded
        position like audiocraft. null_from: see ``Layer.forward``. prefix: the embedding sum of codebooks
        0..prefix_upto-1 (``stage_prefix``), to skip re-embedding them. Differentiable with null_from None.
        """
        x = self.embed(seq, prefix=prefix, start=prefix_upto if prefix is not None else 0)
        x = x + self.cfg.positional_scale * pe.to(x.dtype)
        cd, cross = self.compute_dtype, self.cross_backend
        for i, (layer, (k, v)) in enumerate(zip(self.layers, kv, strict=True)):
            if k.dtype != cd:
                k, v = k.to(cd), v.to(cd)
            x = layer(x, (k, v), mask, cross, self.caches, key_lengths, null_from, i)
        return self.out_norm(x if not last_only else x[:, -1:])

    def hidden(self, seq: torch.Tensor, kv: list, stage: int, backend: str | None = None,
               cross_lengths: tuple[int, ...] | None = None, null_from: int | None = None,
               prefix: torch.Tensor | None = None) -> torch.Tensor:
        """MAGNeT at ``stage``: seq [B, n_q, T] token ids (mask id = card) -> hidden states [B, T, dim]
        (``forward_hidden`` with the stage's band and the cached positions).

        cross_lengths: per row, how many condition positions to attend (batch-invariant mode); None
        attends over every padded position like audiocraft.
        null_from: rows from this index on are null (all-zero) conditions; their cross-attention is
        skipped (its output is exactly 0). None computes every row, with audiocraft's matmul shapes.
        prefix: ``stage_prefix(seq, stage)``, to skip re-embedding the codebooks before the stage.
        backend: None uses the model's (``set_attention``).
        """
        t = seq.shape[-1]
        self.setup_caches(t)
        pe = self.positions(t, torch.float32, self.device)
        return self.forward_hidden(seq, kv, self.band(stage, backend), pe, key_lengths=cross_lengths,
                                   null_from=null_from, prefix=prefix, prefix_upto=stage)

    def forward(self, seq: torch.Tensor, kv: list, stage: int, backend: str | None = None,
                cross_lengths: tuple[int, ...] | None = None, null_from: int | None = None,
                prefix: torch.Tensor | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the stage's codebook only: [B, T, card], or [B, M, card] at ``positions`` [B, M]
        (the head then runs on those rows only: same math, other GEMM shapes, so not bitwise)."""
        head = self.heads[stage]
        x = self.hidden(seq, kv, stage, backend, cross_lengths, null_from, prefix)
        if positions is not None:
            x = x.gather(1, positions.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return head(x.to(head.weight.dtype))

    def all_heads(self, x: torch.Tensor, codebooks=None) -> torch.Tensor:
        """Hidden states [B, S, dim] -> logits [B, len(codebooks), S, card] (every codebook by default)."""
        heads = self.heads if codebooks is None else [self.heads[q] for q in codebooks]
        return torch.stack([head(x.to(head.weight.dtype)) for head in heads], dim=1)

    def guided_logits(self, seq: torch.Tensor, kv: list, stage: int, *,
                      cross_lengths: tuple[int, ...] | None = None, prefix: torch.Tensor | None = None,
                      positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The CFG batch seq [2B, n_q, T] (conditioned rows, then null rows) -> (cond, uncond) logits, each
        [B, T, card] or [B, M, card] at ``positions`` [B, M]. Outside 'exact' the null rows'
        cross-attention, exactly zero, is skipped; 'exact' computes it with audiocraft's matmul shapes."""
        batch = seq.shape[0] // 2
        null_from = None if self.attention_backend == "exact" else batch
        logits = self(seq, kv, stage, None, cross_lengths, null_from, prefix,
                      None if positions is None else positions.repeat(2, 1))
        return logits[:batch], logits[batch:]
