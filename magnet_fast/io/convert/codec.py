"""audiocraft's EnCodec (``compression_state_dict.bin``) -> a transformers ``EncodecModel`` folder.

transformers' ``EncodecModel`` is the same network as audiocraft's SEANet EnCodec (see docs/DESIGN.md,
Conversion) once its config carries audiocraft's settings (``pad_mode`` in particular) and the state dict
is renamed:

    encoder.model.N. / decoder.model.N.        -> encoder.layers.N. / decoder.layers.N.
    .conv.conv. / .convtr.convtr.              -> .conv.
    weight_g / weight_v                        -> parametrizations.weight.original0 / original1
    quantizer.vq.layers.N._codebook.           -> quantizer.layers.N.codebook.

``compression_state_dict.bin`` comes in two forms (see docs/DESIGN.md, Conversion):
  * a hub pointer ``{'pretrained': 'facebook/encodec_32khz', ...}``: audiocraft itself then loads
    transformers' hub model, so does the runtime ``magnet_fast.io.codec.Codec`` (nothing to convert);
  * a full export ``{'xp.cfg': YAML str, 'best_state': state dict, 'version', 'exported'}`` (as written by
    ``audiocraft.utils.export.export_encodec``): converted here to a transformers folder
    (config.json + model.safetensors, float32).
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from magnet_fast.errors import CheckpointError, ConfigError
from magnet_fast.io.convert.xpcfg import XpConfig, load_xp_yaml
from magnet_fast.io.convert.zipcheck import check_zip_sizes
from magnet_fast.io.files import load_pickle_safely

KNOWN_POINTERS = {"facebook/encodec_32khz": (32000, 50), "facebook/encodec_24khz": (24000, 75)}
PAD_MODES = ("constant", "reflect", "replicate", "circular")

# SEANetEncoder/SEANetDecoder constructor defaults (audiocraft 1.3.0), used when xp.cfg omits a key
SEANET_DEFAULTS = {
    "channels": 1, "dimension": 128, "n_filters": 32, "n_residual_layers": 3, "ratios": [8, 5, 4, 2],
    "activation": "ELU", "activation_params": {"alpha": 1.0}, "norm": "none", "norm_params": {},
    "kernel_size": 7, "last_kernel_size": 7, "residual_kernel_size": 3, "dilation_base": 2,
    "causal": False, "pad_mode": "reflect", "true_skip": True, "compress": 2, "lstm": 0,
    "disable_norm_outer_blocks": 0,
}
DECODER_ONLY_DEFAULTS = {"final_activation": None, "final_activation_params": None, "trim_right_ratio": 1.0}


def _as_int(value, field: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < minimum:
        raise ConfigError(f"compression xp.cfg: {field} = {value!r} must be an integer >= {minimum}")
    return int(value)


def _as_bool(value, field: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"compression xp.cfg: {field} = {value!r} must be true or false")
    return value


def _unsupported(field: str, value, why: str) -> ConfigError:
    return ConfigError(f"compression xp.cfg: {field} = {value!r} is not supported: {why}. transformers' "
                       "EncodecModel (which magnet_fast runs) cannot represent this codec")


def _seanet_settings(xp: XpConfig) -> dict:
    """Effective SEANet kwargs (shared + encoder/decoder overrides), checked to agree between the two."""
    shared = xp.get("seanet")
    if not isinstance(shared, dict):
        raise ConfigError("compression xp.cfg: 'seanet' must be a mapping")
    enc_over = shared.get("encoder") or {}
    dec_over = shared.get("decoder") or {}
    shared = {k: v for k, v in shared.items() if k not in ("encoder", "decoder")}
    known = set(SEANET_DEFAULTS) | set(DECODER_ONLY_DEFAULTS)
    for where, block in (("seanet", shared), ("seanet.encoder", enc_over), ("seanet.decoder", dec_over)):
        if not isinstance(block, dict):
            raise ConfigError(f"compression xp.cfg: '{where}' must be a mapping")
        for key in block:
            if key not in known:
                raise ConfigError(f"compression xp.cfg: unknown SEANet setting '{where}.{key}'")
    for key in DECODER_ONLY_DEFAULTS:
        if key in enc_over or key in shared:
            raise ConfigError(f"compression xp.cfg: '{key}' is a decoder-only setting (seanet.decoder.{key})")
    enc = {**SEANET_DEFAULTS, **shared, **enc_over}
    dec = {**SEANET_DEFAULTS, **DECODER_ONLY_DEFAULTS, **shared, **dec_over}
    for key in SEANET_DEFAULTS:
        if enc[key] != dec[key]:
            raise _unsupported(f"seanet.encoder.{key} / seanet.decoder.{key}", (enc[key], dec[key]),
                               "encoder and decoder differ")
    return dec


def encodec_config_from_xp(xp: dict | str):
    """audiocraft's compression xp.cfg (parsed YAML dict, or the YAML string) -> ``transformers.EncodecConfig``.

    Raises ConfigError (a CheckpointError) naming the field for any setting transformers' EncodecModel
    cannot represent.
    """
    from transformers import EncodecConfig

    if isinstance(xp, str):
        xp = load_xp_yaml(xp, "compression xp.cfg")
    if not isinstance(xp, dict):
        raise ConfigError("compression xp.cfg is not a mapping")
    x = XpConfig(xp, "compression xp.cfg")
    model_kind = x.get("compression_model")
    if model_kind != "encodec":
        raise _unsupported("compression_model", model_kind, "only 'encodec' is")
    if x.get("encodec.autoencoder", "seanet") != "seanet":
        raise _unsupported("encodec.autoencoder", x.get("encodec.autoencoder"), "only 'seanet' is")
    if x.get("encodec.quantizer", "rvq") != "rvq":
        raise _unsupported("encodec.quantizer", x.get("encodec.quantizer"), "only 'rvq' is")
    sample_rate = _as_int(x.get("encodec.sample_rate"), "encodec.sample_rate", 1)
    channels = _as_int(x.get("encodec.channels"), "encodec.channels", 1)
    renormalize = _as_bool(x.get("encodec.renormalize", False), "encodec.renormalize")
    model_causal = _as_bool(x.get("encodec.causal", False), "encodec.causal")
    s = _seanet_settings(x)

    if channels not in (1, 2):
        raise _unsupported("encodec.channels", channels, "EncodecModel encodes 1 or 2 channels only")
    if _as_int(s["channels"], "seanet.channels", 1) != channels:
        raise _unsupported("seanet.channels", s["channels"], f"it differs from encodec.channels = {channels}")
    if s["activation"] != "ELU":
        raise _unsupported("seanet.activation", s["activation"], "EncodecModel uses ELU")
    params = dict(s["activation_params"] or {})
    if set(params) - {"alpha"} or float(params.get("alpha", 1.0)) != 1.0:
        raise _unsupported("seanet.activation_params", params, "EncodecModel uses ELU with alpha 1")
    if s["final_activation"] is not None:
        raise _unsupported("seanet.decoder.final_activation", s["final_activation"],
                           "EncodecModel has no final activation")
    if s["norm"] != "weight_norm":
        raise _unsupported("seanet.norm", s["norm"], "only 'weight_norm' is converted")
    if _as_int(s["disable_norm_outer_blocks"], "seanet.disable_norm_outer_blocks") != 0:
        raise _unsupported("seanet.disable_norm_outer_blocks", s["disable_norm_outer_blocks"],
                           "EncodecModel normalises every convolution")
    lstm = _as_int(s["lstm"], "seanet.lstm")
    if lstm < 1:
        raise _unsupported("seanet.lstm", lstm, "EncodecModel always has an LSTM (1 or more layers)")
    if s["pad_mode"] not in PAD_MODES:
        raise _unsupported("seanet.pad_mode", s["pad_mode"], f"expected one of {PAD_MODES}")
    causal = _as_bool(s["causal"], "seanet.causal")
    if model_causal and renormalize:
        raise _unsupported("encodec.renormalize", renormalize, "audiocraft refuses it for a causal model")
    trim = s["trim_right_ratio"]
    if not isinstance(trim, (int, float)) or isinstance(trim, bool) or not 0.0 <= trim <= 1.0:
        raise ConfigError(f"compression xp.cfg: seanet.decoder.trim_right_ratio = {trim!r} must be in [0, 1]")
    if not causal and trim != 1.0:
        raise _unsupported("seanet.decoder.trim_right_ratio", trim, "it only applies to causal convolutions")
    ratios = s["ratios"]
    if not isinstance(ratios, list) or not ratios:
        raise ConfigError(f"compression xp.cfg: seanet.ratios = {ratios!r} must be a list of integers")
    ratios = [_as_int(r, "seanet.ratios", 1) for r in ratios]
    hop = math.prod(ratios)
    if sample_rate % hop:
        raise _unsupported("seanet.ratios", ratios, f"sample_rate {sample_rate} is not a multiple of the hop "
                           f"length {hop}, so the frame rate is not an integer")
    frame_rate = sample_rate // hop
    n_q = _as_int(x.get("rvq.n_q"), "rvq.n_q", 1)
    bins = _as_int(x.get("rvq.bins"), "rvq.bins", 2)
    if bins & (bins - 1):
        raise _unsupported("rvq.bins", bins, "EncodecModel needs a power-of-two codebook size")
    # EncodecConfig derives num_quantizers = 1000 * bw // (frame_rate * bits); audiocraft's HF wrapper
    # n_q = int(bw * 1000 / (frame_rate * log2(bins))): pick the bandwidth both read as n_q
    bandwidth = n_q * math.log2(bins) * frame_rate / 1000
    for _ in range(8):
        if (int(1000 * bandwidth // (frame_rate * math.log2(bins))) == n_q
                and int(bandwidth * 1000 / (frame_rate * math.log2(bins))) == n_q):
            break
        bandwidth = math.nextafter(bandwidth, math.inf)
    cfg = EncodecConfig(
        target_bandwidths=[bandwidth], sampling_rate=sample_rate, audio_channels=channels,
        normalize=renormalize, chunk_length_s=None, overlap=None,
        hidden_size=_as_int(s["dimension"], "seanet.dimension", 1),
        num_filters=_as_int(s["n_filters"], "seanet.n_filters", 1),
        num_residual_layers=_as_int(s["n_residual_layers"], "seanet.n_residual_layers"),
        upsampling_ratios=ratios, norm_type="weight_norm",
        kernel_size=_as_int(s["kernel_size"], "seanet.kernel_size", 1),
        last_kernel_size=_as_int(s["last_kernel_size"], "seanet.last_kernel_size", 1),
        residual_kernel_size=_as_int(s["residual_kernel_size"], "seanet.residual_kernel_size", 1),
        dilation_growth_rate=_as_int(s["dilation_base"], "seanet.dilation_base", 1),
        use_causal_conv=causal, pad_mode=s["pad_mode"],
        compress=_as_int(s["compress"], "seanet.compress", 1), num_lstm_layers=lstm,
        trim_right_ratio=float(trim), codebook_size=bins, codebook_dim=None,
        use_conv_shortcut=not _as_bool(s["true_skip"], "seanet.true_skip"),
    )
    if cfg.num_quantizers != n_q or cfg.frame_rate != frame_rate or cfg.hop_length != hop:
        raise ConfigError(f"compression xp.cfg: could not express n_q={n_q}, frame rate {frame_rate} as an "
                          f"EncodecConfig (got {cfg.num_quantizers}, {cfg.frame_rate})")
    return cfg


# ------------------------------------------------------------------------------------------ weights
_KEY_RULES = [
    # (audiocraft pattern, transformers template)
    (re.compile(r"^(encoder|decoder)\.model\.(\d+)\.(?:conv\.conv|convtr\.convtr)\.(.+)$"),
     r"\1.layers.\2.conv.{p}"),
    (re.compile(r"^(encoder|decoder)\.model\.(\d+)\.block\.(\d+)\.conv\.conv\.(.+)$"),
     r"\1.layers.\2.block.\3.conv.{p}"),
    (re.compile(r"^(encoder|decoder)\.model\.(\d+)\.shortcut\.conv\.conv\.(.+)$"),
     r"\1.layers.\2.shortcut.conv.{p}"),
]
_CONV_PARAMS = {"weight_g": "parametrizations.weight.original0",
                "weight_v": "parametrizations.weight.original1",
                "parametrizations.weight.original0": "parametrizations.weight.original0",
                "parametrizations.weight.original1": "parametrizations.weight.original1",
                "bias": "bias"}
_LSTM = re.compile(r"^(encoder|decoder)\.model\.(\d+)\.lstm\.((?:weight|bias)_(?:ih|hh)_l\d+)$")
_CODEBOOK = re.compile(r"^quantizer\.vq\.layers\.(\d+)\._codebook\.(inited|cluster_size|embed|embed_avg)$")


def hf_codec_key(key: str) -> str | None:
    """audiocraft EncodecModel state-dict key -> transformers EncodecModel key (None: not an EnCodec key)."""
    for pattern, template in _KEY_RULES:
        m = pattern.match(key)
        if m:
            param = _CONV_PARAMS.get(m.groups()[-1])
            if param is None:
                return None
            return m.expand(template.replace("{p}", "")) + param
    m = _LSTM.match(key)
    if m:
        return f"{m.group(1)}.layers.{m.group(2)}.lstm.{m.group(3)}"
    m = _CODEBOOK.match(key)
    if m:
        return f"quantizer.layers.{m.group(1)}.codebook.{m.group(2)}"
    return None


def map_codec_state(best_state: dict, template: dict, where: str) -> dict:
    """Rename audiocraft's EnCodec ``best_state`` to transformers' names, checked key by key against
    ``template`` (an EncodecModel state dict): every key mapped, none missing, none unknown, shapes equal.
    Floating tensors become float32 (audiocraft loads them into a float32 model too)."""
    if not isinstance(best_state, dict):
        raise CheckpointError(f"{where}: 'best_state' is a {type(best_state).__name__}, not a state dict")
    out: dict[str, torch.Tensor] = {}
    source_of: dict[str, str] = {}
    for key, value in best_state.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{where}: best_state has a non-string key {key!r}")
        new = hf_codec_key(key)
        if new is None or new not in template:
            raise CheckpointError(f"{where}: best_state key '{key}' is not part of this EnCodec "
                                  "(unknown key: the weights do not match the xp.cfg architecture)")
        if new in out:
            raise CheckpointError(f"{where}: best_state keys '{source_of[new]}' and '{key}' both map to '{new}'")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{where}: best_state['{key}'] is a {type(value).__name__}, not a tensor")
        want = tuple(template[new].shape)
        if tuple(value.shape) != want:
            raise CheckpointError(f"{where}: best_state['{key}'] has shape {tuple(value.shape)}, expected "
                                  f"{want} from xp.cfg (as '{new}')")
        if not value.is_floating_point():
            raise CheckpointError(f"{where}: best_state['{key}'] has dtype {value.dtype}, expected floating point")
        out[new] = value.detach().to(torch.float32).contiguous()
        source_of[new] = key
    missing = [k for k in template if k not in out]
    if missing:
        raise CheckpointError(f"{where}: best_state lacks {len(missing)} key(s) the xp.cfg architecture needs, "
                              f"e.g. '{missing[0]}'" + (f" (all: {missing[:8]}...)" if len(missing) > 1 else ""))
    return out


def _pointer_note(name) -> dict:
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"compression_state_dict.bin: 'pretrained' is {name!r}, expected a model name")
    sr, fr = KNOWN_POINTERS.get(name, (None, None))
    return {"kind": "pointer", "pretrained": name, "sample_rate": sr, "frame_rate": fr}


def convert_codec(src_file: Path, out_dir: Path) -> dict:
    """audiocraft ``compression_state_dict.bin`` -> note for config.json (and, for a full export, a
    transformers EnCodec folder written into ``out_dir``: config.json + model.safetensors, float32).

    Pointer form: nothing is written; returns {"kind": "pointer", "pretrained", "sample_rate", "frame_rate"}
    (rates None for names not in KNOWN_POINTERS). Full export: returns {"kind": "full", "path":
    out_dir.name, "sample_rate", "frame_rate", "n_q", "card", "channels", "pad_mode", "ratios"}.
    Only ``out_dir`` is written to; the caller makes it atomic.
    """
    from transformers import EncodecModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    src_file, out_dir = Path(src_file), Path(out_dir)
    check_zip_sizes(src_file)
    pkg = load_pickle_safely(src_file)
    if not isinstance(pkg, dict):
        raise CheckpointError(f"{src_file}: expected a dict, got {type(pkg).__name__}")
    if "pretrained" in pkg:
        return _pointer_note(pkg["pretrained"])
    if "xp.cfg" not in pkg or "best_state" not in pkg:
        raise CheckpointError(f"{src_file}: neither a hub pointer ('pretrained') nor a full export ('xp.cfg' + "
                              f"'best_state'); it has keys {sorted(map(str, pkg))}")
    xp = pkg["xp.cfg"]
    if not isinstance(xp, (str, dict)):
        raise CheckpointError(f"{src_file}: 'xp.cfg' is a {type(xp).__name__}, expected a YAML string")
    try:
        config = encodec_config_from_xp(xp)
    except ConfigError as e:
        raise ConfigError(f"{src_file}: {e}") from None
    model = EncodecModel(config).eval()
    state = map_codec_state(pkg["best_state"], model.state_dict(), str(src_file))
    result = model.load_state_dict(state, strict=True)
    if result.missing_keys or result.unexpected_keys:      # map_codec_state already made sure; belt and braces
        raise CheckpointError(f"{src_file}: state dict mismatch {result}")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    if not (out_dir / "model.safetensors").is_file():
        raise CheckpointError(f"{out_dir}: transformers did not write model.safetensors")
    return {"kind": "full", "path": out_dir.name, "sample_rate": config.sampling_rate,
            "frame_rate": config.frame_rate, "n_q": config.num_quantizers, "card": config.codebook_size,
            "channels": config.audio_channels, "pad_mode": config.pad_mode,
            "ratios": list(config.upsampling_ratios)}
