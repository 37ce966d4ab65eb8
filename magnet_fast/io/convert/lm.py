"""Convert an audiocraft MAGNeT export (state_dict.bin [+ compression_state_dict.bin]) to
config.json + model.safetensors (see docs/DESIGN.md, Conversion).

Strict by construction: every source key is mapped through an explicit template, every template key
must be present, every shape is checked against the geometry read from ``xp.cfg``. Pickles are read with
``torch.load(weights_only=True)`` only. The output folder appears in one rename or not at all.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from safetensors.torch import save_file

from magnet_fast.config import WEIGHTS_NAME, MagnetConfig
from magnet_fast.errors import CheckpointError, ConfigError
from magnet_fast.io.convert.codec import convert_codec
from magnet_fast.io.convert.xpcfg import XpConfig, load_xp_yaml
from magnet_fast.io.convert.zipcheck import check_zip_sizes
from magnet_fast.io.files import atomic_dir, load_pickle_safely, record_digests, sha256_file
from magnet_fast.params import MUSICGEN_DEFAULT_DURATION, ARParams, SamplingParams

LM_FILE = "state_dict.bin"
CODEC_FILE = "compression_state_dict.bin"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# transformer_lm settings the runtime implements; anything else is refused rather than run wrongly
REQUIRED_LM = {"causal": False, "norm_first": True, "bias_ff": False, "bias_attn": False,
               "bias_proj": False, "positional_embedding": "sin", "activation": "gelu",
               "norm": "layer_norm", "kv_repeat": 1, "qk_layer_norm": False, "layer_scale": None,
               "xpos": False, "two_step_cfg": False}
# MusicGen / AudioGen (lm_model 'transformer_lm'): the same layers, causal, no restricted context; the LM's
# own two_step_cfg default is never used (MusicGen passes its generation parameter)
REQUIRED_AR = {**{k: v for k, v in REQUIRED_LM.items() if k != "two_step_cfg"}, "causal": True,
               "past_context": None}
LM_KINDS = {"transformer_lm_magnet": "magnet", "transformer_lm": "musicgen"}

_REQUIRED = object()
T5_PROJ = "condition_provider.conditioners.description.output_proj"
# d_model of the T5 encoders audiocraft's T5Conditioner accepts (its MODELS_DIMS)
T5_WIDTHS = {"t5-small": 512, "t5-base": 768, "t5-large": 1024, "t5-3b": 1024, "t5-11b": 1024,
             "google/flan-t5-small": 512, "google/flan-t5-base": 768, "google/flan-t5-large": 1024,
             "google/flan-t5-3b": 1024, "google/flan-t5-11b": 1024}


def weight_map(cfg: MagnetConfig) -> dict[str, tuple[str, slice | None, tuple[int, ...]]]:
    """runtime key -> (source key, row slice or None, expected shape)."""
    d, c = cfg.dim, cfg.card
    m = {"text_proj.weight": (f"{T5_PROJ}.weight", None, (d, cfg.t5_dim)),
         "text_proj.bias": (f"{T5_PROJ}.bias", None, (d,)),
         "out_norm.weight": ("out_norm.weight", None, (d,)),
         "out_norm.bias": ("out_norm.bias", None, (d,))}
    for k in range(cfg.n_q):
        m[f"emb.{k}.weight"] = (f"emb.{k}.weight", None, (c + 1, d))
        m[f"heads.{k}.weight"] = (f"linears.{k}.weight", None, (c, d))
    for i in range(cfg.num_layers):
        src, dst = f"transformer.layers.{i}", f"layers.{i}"
        m[f"{dst}.self_attn.in_proj.weight"] = (f"{src}.self_attn.in_proj_weight", None, (3 * d, d))
        m[f"{dst}.self_attn.out_proj.weight"] = (f"{src}.self_attn.out_proj.weight", None, (d, d))
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):      # audiocraft applies them apart
            m[f"{dst}.cross_attn.{name}.weight"] = (f"{src}.cross_attention.in_proj_weight",
                                                    slice(j * d, (j + 1) * d), (d, d))
        m[f"{dst}.cross_attn.out_proj.weight"] = (f"{src}.cross_attention.out_proj.weight", None, (d, d))
        m[f"{dst}.linear1.weight"] = (f"{src}.linear1.weight", None, (cfg.hidden_scale * d, d))
        m[f"{dst}.linear2.weight"] = (f"{src}.linear2.weight", None, (d, cfg.hidden_scale * d))
        for norm in ("norm1", "norm_cross", "norm2"):
            for p in ("weight", "bias"):
                m[f"{dst}.{norm}.{p}"] = (f"{src}.{norm}.{p}", None, (d,))
    return m


def source_shapes(cfg: MagnetConfig) -> dict[str, tuple[int, ...]]:
    """Every key (and its shape) an audiocraft export of this geometry holds."""
    out: dict[str, tuple[int, ...]] = {}
    for src, rows, shape in weight_map(cfg).values():
        out[src] = (3 * cfg.dim, cfg.dim) if rows is not None else shape
    return out


def config_from_xp(xp_yaml: str, best_state: dict, where: str) -> MagnetConfig:
    """The runtime config from the LM's xp.cfg (frame/sample rate: EnCodec 32 kHz until a codec says)."""
    try:
        return _config_from_xp(xp_yaml, best_state, where)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ConfigError(f"{where}: xp.cfg has a missing or malformed field ({type(e).__name__}: {e}); "
                          "is this an unmodified audiocraft MAGNeT or MusicGen export?") from None


def _config_from_xp(xp_yaml: str, best_state: dict, where: str) -> MagnetConfig:
    xp = load_xp_yaml(xp_yaml, f"{where}: xp.cfg")
    if not isinstance(xp, dict):
        raise ConfigError(f"{where}: xp.cfg is not a mapping")
    kind = LM_KINDS.get(xp.get("lm_model"))
    if kind is None:
        raise ConfigError(f"{where}: lm_model is {xp.get('lm_model')!r}; this converter handles MAGNeT "
                          "('transformer_lm_magnet') and MusicGen/AudioGen ('transformer_lm') checkpoints")
    cfgx = XpConfig(xp, f"{where}: xp.cfg")
    if not isinstance(cfgx._lookup("transformer_lm", None), dict):   # _lookup: nothing resolved yet
        raise ConfigError(f"{where}: xp.cfg has no 'transformer_lm' section")

    def lm(key: str, default=_REQUIRED):          # only the keys the converter needs are resolved
        value = cfgx.get(f"transformer_lm.{key}", default)
        if value is _REQUIRED:
            raise KeyError(key)
        return value
    family = "MAGNeT" if kind == "magnet" else "MusicGen"
    if kind == "musicgen":
        _check_musicgen_features(xp, cfgx, where)
    for key, want in (REQUIRED_LM if kind == "magnet" else REQUIRED_AR).items():
        if lm(key, want) != want:
            raise ConfigError(f"{where}: transformer_lm.{key} = {lm(key, want)!r} is not supported "
                              f"(released {family} models use {want!r})")
    if cfgx.get("conditioners.description.model") != "t5":
        raise ConfigError(f"{where}: only T5 text conditioning ('description') is supported")
    if "description" not in (cfgx.get("fuser.cross", []) or []):
        raise ConfigError(f"{where}: expected the 'description' condition to be fused by cross-attention")
    for key in ("sum", "prepend", "input_interpolate"):
        if cfgx.get(f"fuser.{key}", []):
            raise ConfigError(f"{where}: fuser.{key} = {cfgx.get(f'fuser.{key}')!r} is not supported "
                              "(released MAGNeT models fuse text by cross-attention only)")
    if cfgx.get("fuser.cross_attention_pos_emb", False):
        raise ConfigError(f"{where}: fuser.cross_attention_pos_emb = true is not supported (released MAGNeT "
                          "models add no positions to the cross-attention source)")
    proj = best_state.get(f"{T5_PROJ}.weight")
    if not isinstance(proj, torch.Tensor) or proj.dim() != 2:
        raise CheckpointError(f"{where}: best_state lacks a 2-D {T5_PROJ}.weight")
    t5_name = str(cfgx.get("conditioners.description.t5.name"))
    if t5_name in T5_WIDTHS and proj.shape[1] != T5_WIDTHS[t5_name]:
        raise CheckpointError(f"{where}: {T5_PROJ}.weight has shape {list(proj.shape)}, but {t5_name} "
                              f"outputs width {T5_WIDTHS[t5_name]}; the weights and xp.cfg do not belong together")
    n_q, num_layers = int(lm("n_q")), int(lm("num_layers"))
    check_counts(best_state, n_q, num_layers, where)      # before anything sized by them is built
    if kind == "musicgen":
        return _musicgen_config(cfgx, lm, xp, n_q, num_layers, t5_name, int(proj.shape[1]), where)
    # audiocraft's loader overwrites these three from other sections (see docs/DESIGN.md, Conversion)
    cfg = MagnetConfig(
        dim=int(lm("dim")), num_heads=int(lm("num_heads")), num_layers=num_layers,
        card=int(lm("card")), n_q=n_q, hidden_scale=int(lm("hidden_scale", 4)),
        subcodes_context=int(lm("subcodes_context", 5)), span_len=int(cfgx.get("masking.span_len")),
        frame_rate=50, segment_duration=float(cfgx.get("dataset.segment_duration")),
        max_period=float(lm("max_period", 10000)), positional_scale=float(lm("positional_scale", 1.0)),
        t5_name=t5_name, t5_dim=int(proj.shape[1]),
        sample_rate=int(xp.get("sample_rate", 32000)) if isinstance(xp.get("sample_rate"), int) else 32000,
        generation=SamplingParams(decoding_steps=(20, 10, 10, 10)[:n_q] + (10,) * max(0, n_q - 4)))
    cfg.validate(where)
    return cfg


def _check_musicgen_features(xp: dict, cfgx: XpConfig, where: str) -> None:
    """Refuse, with what is not supported, the MusicGen variants this runtime does not run."""
    conditioners = cfgx.get("conditioners", {}) or {}
    if isinstance(conditioners, dict) and any(
            isinstance(c, dict) and c.get("model") in ("chroma_stem", "chroma") or name == "self_wav"
            for name, c in conditioners.items()):
        raise CheckpointError(f"{where}: this is a MusicGen melody model (chroma conditioning on a reference "
                              "audio); melody conditioning is not supported: use a text-to-music MusicGen "
                              "(musicgen-small/medium/large)")
    channels = xp.get("channels", 1)
    if channels != 1 or cfgx.get("interleave_stereo_codebooks.use", False):
        raise CheckpointError(f"{where}: this is a stereo MusicGen ({channels} channels, interleaved codebooks); "
                              "stereo is not supported: use a mono MusicGen (musicgen-small/medium/large)")
    for key in ("conditioners.description.model",):
        if cfgx.get(key, None) is None:
            raise ConfigError(f"{where}: expected a T5 'description' conditioner")


def _musicgen_config(cfgx: XpConfig, lm, xp: dict, n_q: int, num_layers: int, t5_name: str, t5_dim: int,
                     where: str) -> MagnetConfig:
    modeling = cfgx.get("codebooks_pattern.modeling", None)
    if modeling is None:
        modeling = lm("q_modeling", None)
    if modeling != "delay":
        raise ConfigError(f"{where}: codebooks_pattern.modeling = {modeling!r} is not supported (released "
                          "MusicGen models use 'delay')")
    delays = cfgx.get("codebooks_pattern.delay.delays", None)
    if delays is None:
        delays = list(range(n_q))
    for key in ("flatten_first", "empty_initial"):
        if cfgx.get(f"codebooks_pattern.delay.{key}", 0):
            raise ConfigError(f"{where}: codebooks_pattern.delay.{key} = "
                              f"{cfgx.get(f'codebooks_pattern.delay.{key}')!r} is not supported (released: 0)")
    if not isinstance(delays, list) or len(delays) != n_q:
        raise ConfigError(f"{where}: codebooks_pattern.delay.delays = {delays!r}: expected {n_q} delays")
    segment = float(cfgx.get("dataset.segment_duration"))
    sample_rate = int(xp.get("sample_rate", 32000)) if isinstance(xp.get("sample_rate"), int) else 32000
    coef = float(cfgx.get("classifier_free_guidance.inference_coef", 3.0))
    cfg = MagnetConfig(
        dim=int(lm("dim")), num_heads=int(lm("num_heads")), num_layers=num_layers, card=int(lm("card")),
        n_q=n_q, hidden_scale=int(lm("hidden_scale", 4)), subcodes_context=-1, span_len=1, frame_rate=50,
        segment_duration=segment, max_period=float(lm("max_period", 10000)),
        positional_scale=float(lm("positional_scale", 1.0)), t5_name=t5_name, t5_dim=t5_dim,
        sample_rate=sample_rate, kind="musicgen", delays=tuple(int(d) for d in delays), lm_cfg_coef=coef,
        generation=ARParams(duration=min(MUSICGEN_DEFAULT_DURATION, segment)))
    cfg.validate(where)
    return cfg


def check_counts(best_state: dict, n_q: int, num_layers: int, where: str) -> None:
    """The codebook and layer counts xp.cfg claims against the keys best_state holds (cheap: no tensor
    touched, nothing sized by the claim built); CheckpointError naming the mismatch."""
    layers, embs = set(), set()
    for key in best_state:
        parts = str(key).split(".")
        if parts[:2] == ["transformer", "layers"] and len(parts) > 2 and parts[2].isdigit():
            layers.add(int(parts[2]))
        elif parts[0] == "emb" and len(parts) == 3 and parts[1].isdigit():
            embs.add(int(parts[1]))
    for name, claimed, found, what in (("num_layers", num_layers, layers, "transformer.layers.<i>"),
                                       ("n_q", n_q, embs, "emb.<k>.weight")):
        if len(found) != claimed or (found and (min(found) != 0 or max(found) != claimed - 1)):
            # name a few missing keys when the claim is small enough to enumerate (never sized by the claim)
            missing = [what.replace("<i>", str(i)).replace("<k>", str(i))
                       for i in range(min(claimed, 4096)) if i not in found][:3]
            raise CheckpointError(f"{where}: xp.cfg says transformer_lm.{name} = {claimed} but best_state "
                                  f"holds {what} for {len(found)} (indices {sorted(found)[:3]}...{sorted(found)[-3:]}"
                                  f"{'; missing ' + ', '.join(missing) if missing else ''}); "
                                  "the weights and xp.cfg do not belong together")


def map_state(best_state: dict, cfg: MagnetConfig, dtype: torch.dtype | None, where: str) -> dict:
    """Source state dict -> runtime tensors, strictly (no missing, no unknown, no wrong shapes)."""
    expected = source_shapes(cfg)
    missing = sorted(set(expected) - set(best_state))
    unknown = sorted(set(best_state) - set(expected))
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {missing[:5]}")
        if unknown:
            parts.append(f"unknown {len(unknown)} key(s): {unknown[:5]}")
        raise CheckpointError(f"{where}: {'; '.join(parts)}. The weights do not match the xp.cfg geometry "
                              f"(dim {cfg.dim}, {cfg.num_layers} layers, n_q {cfg.n_q}); is the export "
                              "complete and from MAGNeT?")
    for key, shape in expected.items():
        t = best_state[key]
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{where}: {key} is a {type(t).__name__}, not a tensor")
        if tuple(t.shape) != shape:
            raise CheckpointError(f"{where}: {key} has shape {list(t.shape)}, expected {list(shape)} "
                                  "from xp.cfg; the weights and config do not belong together")
        if not t.is_floating_point():
            raise CheckpointError(f"{where}: {key} has dtype {t.dtype}, expected a float tensor")
    out = {}
    for dst, (src, rows, _) in weight_map(cfg).items():
        t = best_state[src] if rows is None else best_state[src][rows]
        out[dst] = (t if dtype is None else t.to(dtype)).contiguous().clone()
    return out


def convert(src: str | Path, out: str | Path, *, dtype: str | None = None, overwrite: bool = False) -> Path:
    """audiocraft export folder (or its state_dict.bin) -> converted model folder ``out``.

    dtype: None keeps the stored dtype (the released files are float16); or 'float16' / 'bfloat16' /
    'float32'. Returns the output folder.
    """
    src, out = Path(src), Path(out)
    lm_path = src if src.is_file() else src / LM_FILE
    if not lm_path.exists():
        hint = " (it looks like a converted model already)" if (src / "config.json").exists() else ""
        raise CheckpointError(f"{lm_path} not found{hint}: SRC must be an audiocraft MAGNeT export folder "
                              f"holding {LM_FILE} (e.g. `huggingface-cli download facebook/magnet-small-10secs "
                              "--local-dir DIR`)")
    src_dir, out_abs = lm_path.parent.resolve(), out.resolve()
    if out_abs == src_dir or out_abs in src_dir.parents or src_dir in out_abs.parents:
        raise CheckpointError(f"output folder {out} overlaps the source {lm_path.parent}; converting into it "
                              "would replace the checkpoint: choose a separate output folder")
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    check_zip_sizes(lm_path)                  # a compressed storage would inflate inside torch.load
    pkg = load_pickle_safely(lm_path)
    if not isinstance(pkg, dict) or not isinstance(pkg.get("xp.cfg"), str) or not isinstance(
            pkg.get("best_state"), dict):
        raise CheckpointError(f"{lm_path}: expected audiocraft's export dict with 'xp.cfg' (YAML string) and "
                              "'best_state'; this file is something else")
    best_state = pkg["best_state"]
    cfg = config_from_xp(pkg["xp.cfg"], best_state, str(lm_path))
    tensors = map_state(best_state, cfg, DTYPES.get(dtype) if dtype else None, str(lm_path))
    stored = sorted({str(t.dtype).replace("torch.", "") for t in tensors.values()})
    cfg = dataclasses.replace(cfg, weights_dtype=stored[0] if len(stored) == 1 else "mixed", source={
        "file": LM_FILE, "sha256": sha256_file(lm_path), "audiocraft_version": str(pkg.get("version", "")),
        "keys": len(best_state), "parameters": sum(t.numel() for t in best_state.values())})
    codec_path = lm_path.parent / CODEC_FILE
    with atomic_dir(out, overwrite=overwrite) as tmp:
        if codec_path.exists():
            note = convert_codec(codec_path, tmp / "codec")
            rates = {k: note[k] for k in ("sample_rate", "frame_rate") if note.get(k) is not None}
            if rates.get("frame_rate") is not None and rates["frame_rate"] != int(rates["frame_rate"]):
                raise ConfigError(f"{codec_path}: frame rate {rates['frame_rate']} is not a whole number")
            rates = {k: int(v) for k, v in rates.items()}
            cfg = dataclasses.replace(cfg, codec={**note, "file": CODEC_FILE}, **rates)
            cfg.validate(str(lm_path))
            n_q, card = note.get("n_q"), note.get("card")
            if (n_q is not None and n_q != cfg.n_q) or (card is not None and card != cfg.card):
                raise CheckpointError(f"{codec_path}: the codec has {n_q} codebooks x {card} but the LM "
                                      f"expects {cfg.n_q} x {cfg.card}; the two files do not belong together")
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "magnet_fast/1"})
        cfg.save(tmp)
        record_digests(tmp)                   # size + SHA-256 of every file: verified when the cache loads it
    return out
