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

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from magnet_fast.attention import BACKENDS, AttentionCache, attention
from magnet_fast.config import WEIGHTS_NAME, MagnetConfig
from magnet_fast.errors import CheckpointError, ParameterError
from magnet_fast.kernels.constants import mask_id


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

    def forward(self, x: torch.Tensor, window: int | None, backend: str, masks: AttentionCache) -> torch.Tensor:
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
                masks: AttentionCache, key_lengths: tuple[int, ...] | None = None) -> torch.Tensor:
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
        self.attention_backend = "exact"
        self._windows = frozenset(self.window(s) for s in range(cfg.n_q))    # the stages' bands, fixed
        self.caches = AttentionCache()        # positions, band masks, block masks: built by setup_caches

    def set_attention(self, backend: str) -> None:
        """The attention backend every forward uses (see attention.py): 'exact', 'sdpa', 'windowed', 'triton'."""
        if backend not in BACKENDS:
            raise ParameterError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "triton":
            if not hasattr(torch.library, "triton_op"):
                raise ParameterError("the triton attention backend needs torch >= 2.6 "
                                     f"(torch.library.triton_op); this is {torch.__version__}")
            from magnet_fast.kernels.banded_attn import SUPPORTED_D
            if self.emb[0].weight.device.type == "cuda" and self.cfg.head_dim not in SUPPORTED_D:
                raise ParameterError(f"the triton attention kernel supports head dims {SUPPORTED_D}, this "
                                     f"model has {self.cfg.head_dim}; use 'sdpa' or 'windowed'")
        self.attention_backend = backend

    @property
    def gathers_head(self) -> bool:
        """Whether the output head may run on selected positions only (every backend but 'exact', whose
        full-row head GEMM keeps audiocraft's shapes for bitwise parity)."""
        return self.attention_backend != "exact"

    def setup_caches(self, t: int) -> AttentionCache:
        """Build what every forward of length ``t`` reuses (positions, the stages' band masks) once;
        later calls with the same length are free. Called by ``hidden``; callers may call it ahead."""
        device = self.emb[0].weight.device
        self.caches.setup(t, self.cfg.dim, self.cfg.max_period, device, windows=self._windows,
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

    def hidden(self, seq: torch.Tensor, kv: list, stage: int, backend: str | None = None,
               cross_lengths: tuple[int, ...] | None = None, null_from: int | None = None,
               prefix: torch.Tensor | None = None) -> torch.Tensor:
        """seq [B, n_q, T] token ids (mask id = card) -> final hidden states [B, T, dim] (out_norm'd).

        cross_lengths: per row, how many condition positions to attend (batch-invariant mode); None
        attends over every padded position like audiocraft.
        null_from: rows from this index on are null (all-zero) conditions; their cross-attention is
        skipped (its output is exactly 0). None computes every row, with audiocraft's matmul shapes.
        prefix: ``stage_prefix(seq, stage)``, to skip re-embedding the codebooks before the stage.
        backend: None uses the model's (``set_attention``).
        """
        backend = backend or self.attention_backend
        self.setup_caches(seq.shape[-1])
        x = self.embed(seq, prefix=prefix, start=0 if prefix is None else stage)
        x = x + self.cfg.positional_scale * self.positions(seq.shape[-1], x.dtype, x.device)
        kv = [(k.to(self.compute_dtype), v.to(self.compute_dtype)) for k, v in kv]
        window = self.window(stage)
        for layer, layer_kv in zip(self.layers, kv, strict=True):
            x = layer(x, layer_kv, window, backend, self.caches, cross_lengths, null_from)
        return self.out_norm(x)

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


def _keeps_fp32(key: str) -> bool:
    """Embeddings, LayerNorms, the text projection and the output heads stay float32 under bf16/fp16
    weights (the module docstring's mixed-precision rule)."""
    return key.startswith(("emb.", "heads.", "text_proj.")) or any(
        part.startswith(("norm", "out_norm")) for part in key.split("."))


# safetensors header dtype -> torch dtype name (messages); the float ones config.json's weights_dtype names
_ST_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64", "I8": "int8",
              "U8": "uint8", "I16": "int16", "I32": "int32", "I64": "int64", "BOOL": "bool",
              "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
_WEIGHT_DTYPES = ("float16", "bfloat16", "float32")


def _expected_shapes(cfg: MagnetConfig) -> dict[str, tuple[int, ...]]:
    """Every key (and shape) of ``MagnetLM(cfg).state_dict()``, computed without building the model."""
    d, c, h = cfg.dim, cfg.card, cfg.hidden_scale * cfg.dim
    out = {"text_proj.weight": (d, cfg.t5_dim), "text_proj.bias": (d,), "out_norm.weight": (d,),
           "out_norm.bias": (d,)}
    for k in range(cfg.n_q):
        out[f"emb.{k}.weight"], out[f"heads.{k}.weight"] = (c + 1, d), (c, d)
    for i in range(cfg.num_layers):
        p = f"layers.{i}"
        out.update({f"{p}.self_attn.in_proj.weight": (3 * d, d), f"{p}.self_attn.out_proj.weight": (d, d),
                    f"{p}.linear1.weight": (h, d), f"{p}.linear2.weight": (d, h)})
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out[f"{p}.cross_attn.{name}.weight"] = (d, d)
        for norm in ("norm1", "norm_cross", "norm2"):
            out[f"{p}.{norm}.weight"], out[f"{p}.{norm}.bias"] = (d,), (d,)
    return out


def check_header(path, cfg: MagnetConfig, header: dict[str, tuple[tuple[int, ...], str]]) -> None:
    """The safetensors header (key -> (shape, dtype)) against config.json, before anything is built or read:
    layer and codebook counts, every key and shape, and each tensor's stored dtype against weights_dtype."""
    fix = "re-run `magnet-fast convert`"
    layers, embs = set(), set()
    for key in header:
        parts = key.split(".")
        if parts[0] == "layers" and len(parts) > 1 and parts[1].isdigit():
            layers.add(int(parts[1]))
        elif parts[0] == "emb" and len(parts) == 3 and parts[1].isdigit():
            embs.add(int(parts[1]))
    for name, claimed, found, what in (("num_layers", cfg.num_layers, layers, "layers"),
                                       ("n_q", cfg.n_q, embs, "codebook embeddings")):
        if len(found) != claimed or (found and (min(found) != 0 or max(found) != claimed - 1)):
            prefix = "layers" if name == "num_layers" else "emb"
            absent = [f"{prefix}.{i}" for i in itertools.islice((i for i in range(claimed) if i not in found), 3)]
            extra = [f"{prefix}.{i}" for i in sorted(found) if i >= claimed][:3]
            raise CheckpointError(f"{path}: config.json says {name} = {claimed} but the weights hold {len(found)} "
                                  f"{what} (missing keys {absent}, unknown keys {extra}); the config and weights "
                                  f"do not belong together: {fix}")
    expected = _expected_shapes(cfg)
    missing, unknown = sorted(set(expected) - set(header)), sorted(set(header) - set(expected))
    if missing or unknown:
        raise CheckpointError(f"{path}: missing keys {missing[:5]}, unknown keys {unknown[:5]} for the "
                              f"geometry in config.json; {fix}")
    allowed = _WEIGHT_DTYPES if cfg.weights_dtype == "mixed" else (cfg.weights_dtype,)
    for k, shape in expected.items():
        got_shape, st_dtype = header[k]
        if got_shape != shape:
            raise CheckpointError(f"{path}: {k} has shape {list(got_shape)}, config.json implies "
                                  f"{list(shape)}; {fix}")
        dtype = _ST_DTYPES.get(st_dtype, st_dtype)
        if dtype not in _WEIGHT_DTYPES:
            raise CheckpointError(f"{path}: {k} has dtype torch.{dtype}; expected floating point")
        if dtype not in allowed:       # convert stores every key in one dtype ('mixed' only if the source was)
            raise CheckpointError(f"{path}: {k} is stored as {dtype} but config.json says weights_dtype "
                                  f"{cfg.weights_dtype!r}; the file was altered or relabelled: {fix}")


def load_lm(folder, cfg: MagnetConfig, device: torch.device, dtype: torch.dtype, model_cls=None) -> MagnetLM:
    """Check the safetensors header against the config (counts, keys, shapes, stored dtypes: nothing built or
    read yet), then build the LM on the meta device and assign the weights, cast by the mixed-precision rule
    (CheckpointError says to re-convert). model_cls: MagnetLM (default) or a subclass with the same weights
    (MusicGen's ``ar.MusicGenLM``)."""
    from pathlib import Path

    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file
    path = Path(folder) / WEIGHTS_NAME
    try:
        with safe_open(str(path), framework="pt") as f:        # reads only the header
            header = {}
            for k in f.keys():
                sl = f.get_slice(k)
                header[k] = (tuple(sl.get_shape()), sl.get_dtype())
        check_header(path, cfg, header)
        state = load_file(str(path))
    except PermissionError:
        raise CheckpointError(f"{path} is not readable (permission denied); fix its permissions") from None
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found; re-run `magnet-fast convert`") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); it may be truncated: "
                              "re-run `magnet-fast convert`") from None
    with torch.device("meta"):
        lm = (model_cls or MagnetLM)(cfg)
    if {k: tuple(v.shape) for k, v in lm.state_dict().items()} != _expected_shapes(cfg):   # belt and braces
        raise CheckpointError(f"{path}: internal error: the model's keys differ from the expected geometry")
    lm.load_state_dict({k: v.to(device=device, dtype=torch.float32 if _keeps_fp32(k) else dtype)
                        for k, v in state.items()}, assign=True)
    lm.caches = AttentionCache()          # built on the meta device above: start empty on the real one
    return lm.eval().requires_grad_(False)
