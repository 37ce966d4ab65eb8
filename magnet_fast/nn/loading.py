"""Loading a converted LM: the safetensors header checked against config.json before anything is built or
read, then the weights assigned on a meta-built model, cast by the mixed-precision rule (docs/DESIGN.md,
Bounds checked before work; Model)."""
from __future__ import annotations

import itertools
from pathlib import Path

import torch

from magnet_fast.config import WEIGHTS_NAME, MagnetConfig
from magnet_fast.errors import CheckpointError
from magnet_fast.nn.attention import AttentionCache
from magnet_fast.nn.model import MagnetLM


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


def read_header(path) -> dict[str, tuple[tuple[int, ...], str]]:
    """A safetensors file's header only (key -> (shape, dtype name)); reads no tensor data."""
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}


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
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    path = Path(folder) / WEIGHTS_NAME
    try:
        check_header(path, cfg, read_header(path))              # reads only the header
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


# ------------------------------------------------------------------------------------- int8 (CPU, opt-in)
QUANTIZE = (None, "int8")


class Int8Linear(torch.nn.Module):
    """A bias-free ``nn.Linear`` with int8 weights (per output channel) and activations quantized per call:
    torch's own dynamic quantization (``torch.ao.quantization.quantize_dynamic``, fbgemm/onednn kernels).
    ``weight`` is an empty float32 tensor standing for the layer's compute dtype and device (what the model
    reads from a linear); the int8 weights live in the wrapped module."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        import warnings
        with warnings.catch_warnings():          # torch.ao.quantization's deprecation notice (torchao is its
            warnings.simplefilter("ignore")      # successor; docs/gpu-plan.md, CPU int8): once per linear
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
            holder = torch.nn.Sequential(linear)
            self.q = quantize_dynamic(holder, {torch.nn.Linear: per_channel_dynamic_qconfig},
                                      dtype=torch.qint8)[0]
        self.register_buffer("weight", torch.empty(0, dtype=torch.float32), persistent=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q(x)


def quantize_int8(lm: MagnetLM) -> MagnetLM:
    """The layers' linears (self-attention in/out, cross-attention q/k/v/out, feed-forward) and the heads
    to int8 (``Int8Linear``), in place; embeddings, norms and the text projection stay float32. CPU float32
    only (the caller checks). Tokens are not audiocraft's bit for bit: statistically indistinguishable from
    float32 (tests/engines/test_int8.py)."""
    def swap(parent: torch.nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.Linear) and child.bias is None:
                setattr(parent, name, Int8Linear(child))
            else:
                swap(child)
    for layer in lm.layers:
        swap(layer)
    swap(lm.heads)
    return lm
