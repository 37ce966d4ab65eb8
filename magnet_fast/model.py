"""The MAGNeT language model as released (MAGNET_SPEC §2), lean for inference.

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

import torch
import torch.nn.functional as F
from torch import nn

from magnet_fast.attention import BandCache, attention
from magnet_fast.config import MagnetConfig


def sin_embedding(t: int, dim: int, max_period: float, dtype: torch.dtype, device) -> torch.Tensor:
    """[1, t, dim] positions 0..t-1: cos(phase) then sin(phase), phase = pos / P^(j / (dim/2 - 1))."""
    half = dim // 2
    pos = torch.arange(t, device=device).view(1, -1, 1).to(dtype)
    j = torch.arange(half, device=device, dtype=dtype).view(1, 1, -1)
    period = torch.full([], max_period, device=device, dtype=dtype)
    phase = pos / (period ** (j / (half - 1)))
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj = nn.Linear(dim, 3 * dim, bias=False)       # rows: q; k; v
        self.out_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, window: int | None, backend: str, masks: BandCache) -> torch.Tensor:
        b, t, _ = x.shape
        qkv = self.in_proj(x).view(b, t, 3, self.heads, -1)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))   # [B, H, T, Dh] views
        out = attention(q, k, v, window, backend=backend, masks=masks)
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
                masks: BandCache, key_lengths: tuple[int, ...] | None = None) -> torch.Tensor:
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

    def forward(self, x, kv, window, backend, masks, key_lengths=None, null_from=None):
        cd = self.linear1.weight.dtype                    # compute dtype; x (the residual) may be wider
        x = x + self.self_attn(self.norm1(x).to(cd), window, backend, masks).to(x.dtype)
        if null_from is None:
            x = x + self.cross_attn(self.norm_cross(x).to(cd), kv, backend, masks, key_lengths).to(x.dtype)
        else:          # rows >= null_from have an all-zero condition: their cross-attention output is 0
            n = null_from
            lengths = key_lengths[:n] if key_lengths is not None else None
            x[:n] += self.cross_attn(self.norm_cross(x[:n]).to(cd), (kv[0][:n], kv[1][:n]), backend, masks,
                                     lengths).to(x.dtype)
        return x + self.linear2(F.gelu(self.linear1(self.norm2(x).to(cd)))).to(x.dtype)


class MagnetLM(nn.Module):
    def __init__(self, cfg: MagnetConfig):
        super().__init__()
        self.cfg = cfg
        self.text_proj = nn.Linear(cfg.t5_dim, cfg.dim)          # T5 width -> LM width, with bias
        self.emb = nn.ModuleList(nn.Embedding(cfg.card + 1, cfg.dim) for _ in range(cfg.n_q))
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))
        self.out_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.heads = nn.ModuleList(nn.Linear(cfg.dim, cfg.card, bias=False) for _ in range(cfg.n_q))
        self.masks = BandCache()
        self._pos: dict = {}

    @property
    def compute_dtype(self) -> torch.dtype:
        """dtype of the transformer's linear layers (float32 / bfloat16 / float16)."""
        return self.layers[0].linear1.weight.dtype

    @property
    def mask_id(self) -> int:
        return self.cfg.card

    def window(self, stage: int) -> int | None:
        """Self-attention band of a stage: None (full) for the first codebook, else subcodes_context."""
        ctx = self.cfg.subcodes_context
        return None if stage == 0 or ctx < 0 else ctx

    def project_text(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """T5 hidden states [B, L, t5_dim] -> condition [B, L, dim], zero where mask is 0."""
        return self.text_proj(hidden.to(self.text_proj.weight)) * mask.unsqueeze(-1).to(self.text_proj.weight)

    def cross_kv(self, cond: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer cross-attention keys/values of the condition, computed once per generation."""
        cond = cond.to(self.compute_dtype)
        return [layer.cross_attn.kv(cond) for layer in self.layers]

    def positions(self, t: int, dtype: torch.dtype, device) -> torch.Tensor:
        key = (t, dtype, str(device))
        if key not in self._pos:
            self._pos[key] = sin_embedding(t, self.cfg.dim, self.cfg.max_period, dtype, device)
        return self._pos[key]

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

    def hidden(self, seq: torch.Tensor, kv: list, stage: int, backend: str = "exact",
               cross_lengths: tuple[int, ...] | None = None, null_from: int | None = None,
               prefix: torch.Tensor | None = None) -> torch.Tensor:
        """seq [B, n_q, T] token ids (mask id = card) -> final hidden states [B, T, dim] (out_norm'd).

        cross_lengths: per row, how many condition positions to attend (batch-invariant mode); None
        attends over every padded position like audiocraft.
        null_from: rows from this index on are null (all-zero) conditions; their cross-attention is
        skipped (its output is exactly 0). None computes every row, with audiocraft's matmul shapes.
        prefix: ``stage_prefix(seq, stage)``, to skip re-embedding the codebooks before the stage.
        """
        x = self.embed(seq, prefix=prefix, start=0 if prefix is None else stage)
        x = x + self.cfg.positional_scale * self.positions(seq.shape[-1], x.dtype, x.device)
        kv = [(k.to(self.compute_dtype), v.to(self.compute_dtype)) for k, v in kv]
        window = self.window(stage)
        for layer, layer_kv in zip(self.layers, kv, strict=True):
            x = layer(x, layer_kv, window, backend, self.masks, cross_lengths, null_from)
        return self.out_norm(x)

    def forward(self, seq: torch.Tensor, kv: list, stage: int, backend: str = "exact",
                cross_lengths: tuple[int, ...] | None = None, null_from: int | None = None,
                prefix: torch.Tensor | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the stage's codebook only: [B, T, card], or [B, M, card] at ``positions`` [B, M]
        (the head then runs on those rows only: same math, other GEMM shapes, so not bitwise)."""
        head = self.heads[stage]
        x = self.hidden(seq, kv, stage, backend, cross_lengths, null_from, prefix)
        if positions is not None:
            x = x.gather(1, positions.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return head(x.to(head.weight.dtype))
