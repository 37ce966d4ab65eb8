"""Codec parity: audiocraft's compression_state_dict.bin -> transformers' EncodecModel, bitwise.

Fixtures (tests/fixtures/ac_codec, ac_codec_16k) come from tests/fixtures/gen_codec_reference.py run with
audiocraft 1.3.0: its own EncodecModel (MAGNeT's 32 kHz / Audio-MAGNeT's 16 kHz layout, shrunk), exported
with audiocraft's export_encodec and re-loaded with load_compression_model. The `live` tests re-run that
generator now (and at the real 32 kHz size, and for non-default SEANet settings) and compare bitwise.
"""
from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

import magnet_fast.io.codec
from magnet_fast.errors import CheckpointError, ConfigError, ParameterError
from magnet_fast.io.codec import Codec
from magnet_fast.io.convert.codec import convert_codec, encodec_config_from_xp, hf_codec_key

CODEC_FILE = "compression_state_dict.bin"
FIXTURE_THREADS = 2     # gen_codec_reference.py's intra-op threads on the 2-core machine that made the fixtures


@pytest.fixture(autouse=True)
def _fixture_thread_count(monkeypatch):
    """Convolution results depend on the intra-op thread count (oneDNN splits the work by thread), and
    the fixtures are bitwise: decode with the count they were made with, here and in the oracle's
    subprocesses, whatever the run uses elsewhere (one thread per xdist worker, tests/conftest.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(FIXTURE_THREADS)
    monkeypatch.setenv("OMP_NUM_THREADS", str(FIXTURE_THREADS))
    yield
    torch.set_num_threads(before)


def _xp(ref) -> dict:
    return yaml.safe_load(ref.package()["xp.cfg"])


def _set(tree: dict, dotted: str, value) -> dict:
    tree = copy.deepcopy(tree)
    node = tree
    *parents, last = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return tree


def _save(tmp_path, pkg: dict):
    path = tmp_path / CODEC_FILE
    torch.save(pkg, path)
    return path


# ------------------------------------------------------------------------------------------ parity
def test_decode_bitwise(codec_ref, convert_and_load):
    _, _, codec = convert_and_load(codec_ref)
    t = codec_ref.tensors
    out = codec.decode(t["codes"])
    assert out.dtype == torch.float32 and out.shape == t["decoded"].shape
    assert torch.equal(out, t["decoded"]), f"max diff {(out - t['decoded']).abs().max().item():.3g}"


def test_encode_codes_equal(codec_ref, convert_and_load):
    _, _, codec = convert_and_load(codec_ref)
    t = codec_ref.tensors
    codes = codec.encode(t["wav"], codec_ref.meta["sample_rate"])
    assert codes.dtype == torch.long
    assert torch.equal(codes, t["wav_codes"]), f"{(codes != t['wav_codes']).sum().item()} codes differ"


def test_encode_prompt_channel_conversion(codec_ref, convert_and_load):
    """A stereo prompt at the codec rate: convert_audio's downmix, then the same codes."""
    _, _, codec = convert_and_load(codec_ref)
    t = codec_ref.tensors
    mixed = codec.convert_audio(t["prompt_mix"], codec.sample_rate)
    assert torch.equal(mixed, t["prompt_mix_converted"])
    assert torch.equal(codec.encode(t["prompt_mix"], codec.sample_rate), t["prompt_mix_codes"])
    # audiocraft's own resampled 44.1 kHz prompt encodes to the same codes
    assert torch.equal(codec.encode(t["prompt44k_converted"], codec.sample_rate), t["prompt44k_codes"])


def test_encode_resampled_prompt_with_julius(codec_ref, convert_and_load):
    pytest.importorskip("julius", reason="julius (audiocraft's resampler) is not installed")
    _, _, codec = convert_and_load(codec_ref)
    t = codec_ref.tensors
    rate = codec_ref.meta["prompt_rate"]
    assert torch.equal(codec.convert_audio(t["prompt44k"], rate), t["prompt44k_converted"])
    assert torch.equal(codec.encode(t["prompt44k"], rate), t["prompt44k_codes"])


def test_resampling_without_julius_is_a_clear_error(codec_ref32, convert_and_load, monkeypatch):
    _, _, codec = convert_and_load(codec_ref32)
    monkeypatch.setitem(sys.modules, "julius", None)          # import julius -> ImportError
    with pytest.raises(ParameterError, match=r"44100 Hz.*32000 Hz.*julius"):
        codec.encode(codec_ref32.tensors["prompt44k"], 44100)


def test_facts_and_note(codec_ref, convert_and_load):
    note, model_dir, codec = convert_and_load(codec_ref)
    m = codec_ref.meta
    assert note == {"kind": "full", "path": "codec", "sample_rate": m["sample_rate"],
                    "frame_rate": m["frame_rate"], "n_q": m["n_q"], "card": m["card"], "channels": 1,
                    "pad_mode": "constant", "ratios": m["ratios"]}
    assert json.loads(json.dumps(note)) == note                                  # goes into config.json
    assert (codec.sample_rate, codec.frame_rate, codec.n_q, codec.card, codec.hop_length, codec.channels) == (
        m["sample_rate"], m["frame_rate"], m["n_q"], m["card"], m["hop_length"], 1)
    assert sorted(p.name for p in (model_dir / "codec").iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((model_dir / "codec" / "config.json").read_text())
    assert cfg["pad_mode"] == "constant" and cfg["use_conv_shortcut"] is False and cfg["normalize"] is False
    assert cfg["use_causal_conv"] is False and cfg["num_lstm_layers"] == 2
    with safe_open(str(model_dir / "codec" / "model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"F32"}


def test_converted_weights_equal_source(codec_ref32, convert_and_load):
    """Every source tensor lands, unchanged, under its transformers name."""
    _, _, codec = convert_and_load(codec_ref32)
    src = codec_ref32.package()["best_state"]
    dst = codec.model.state_dict()
    assert len(src) == len(dst)
    for key, value in src.items():
        assert torch.equal(dst[hf_codec_key(key)], value), key


def test_real_configs_match_spec(codec_ref):
    """The fixture's xp.cfg at the real size gives the released EncodecConfig (32 kHz / 16 kHz)."""
    xp = _set(_set(_xp(codec_ref), "seanet.n_filters", 64), "seanet.dimension", 128)
    xp = _set(xp, "rvq.bins", 2048)
    cfg = encodec_config_from_xp(xp)
    sr = codec_ref.meta["sample_rate"]
    assert (cfg.sampling_rate, list(cfg.upsampling_ratios)) == (sr, [8, 5, 4, 4] if sr == 32000 else [8, 5, 4, 2])
    assert (cfg.num_filters, cfg.hidden_size, cfg.codebook_dim, cfg.codebook_size) == (64, 128, 128, 2048)
    assert (cfg.num_quantizers, cfg.frame_rate, cfg.hop_length) == (4, 50, sr // 50)
    assert cfg.target_bandwidths == [pytest.approx(2.2)]
    assert (cfg.use_causal_conv, cfg.normalize, cfg.use_conv_shortcut, cfg.pad_mode) == (False, False, False,
                                                                                         "constant")
    assert (cfg.num_residual_layers, cfg.kernel_size, cfg.last_kernel_size, cfg.residual_kernel_size,
            cfg.dilation_growth_rate, cfg.compress, cfg.num_lstm_layers, cfg.norm_type, cfg.audio_channels,
            cfg.trim_right_ratio, cfg.chunk_length_s) == (1, 7, 7, 3, 2, 2, 2, "weight_norm", 1, 1.0, None)


@pytest.mark.parametrize("n_q,bins,sr,ratios", [(4, 2048, 32000, [8, 5, 4, 4]), (4, 2048, 16000, [8, 5, 4, 2]),
                                                (8, 1024, 24000, [8, 5, 4, 2]), (32, 1024, 24000, [8, 5, 4, 2]),
                                                (3, 64, 48000, [8, 5, 4, 2]), (7, 4096, 44100, [7, 7, 3, 3])])
def test_bandwidth_gives_n_q(codec_ref32, n_q, bins, sr, ratios):
    """target_bandwidths is chosen so transformers and audiocraft's HF wrapper both read back n_q."""
    xp = _set(_set(_set(_xp(codec_ref32), "rvq.n_q", n_q), "rvq.bins", bins), "sample_rate", sr)
    cfg = encodec_config_from_xp(_set(xp, "seanet.ratios", ratios))
    assert cfg.num_quantizers == n_q and cfg.frame_rate == sr // math.prod(ratios)
    fr = sr / math.prod(ratios)
    assert int(cfg.target_bandwidths[0] * 1000 / (fr * math.log2(bins))) == n_q


# ------------------------------------------------------------------------------------------ pointer form
@pytest.mark.parametrize("name,rates", [("facebook/encodec_32khz", (32000, 50)),
                                        ("facebook/encodec_24khz", (24000, 75)),
                                        ("someone/encodec_custom", (None, None))])
def test_pointer_note(tmp_path, name, rates):
    src = _save(tmp_path, {"pretrained": name, "exported": True, "version": "1.3.0"})
    out = tmp_path / "out" / "codec"
    note = convert_codec(src, out)
    assert note == {"kind": "pointer", "pretrained": name, "sample_rate": rates[0], "frame_rate": rates[1]}
    assert not out.exists() and not (tmp_path / "out").exists()


def test_pointer_without_local_model_fails_without_download(tmp_path, no_network):
    note = {"kind": "pointer", "pretrained": "magnet-fast-tests/no-such-encodec"}
    with pytest.raises(CheckpointError, match=r"no-such-encodec.*codec=PATH.*huggingface-cli download "
                                              r"magnet-fast-tests/no-such-encodec --local-dir"):
        Codec.load(tmp_path, note)


def test_pointer_loads_from_local_hub_cache(codec_ref32, convert_and_load, tmp_path, monkeypatch, no_network):
    """A pointer resolves through the local hub cache (as audiocraft's from_pretrained would) offline."""
    import shutil

    import huggingface_hub.constants
    note, model_dir, _ = convert_and_load(codec_ref32)
    repo = tmp_path / "hub" / "models--facebook--encodec_32khz"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copytree(model_dir / note["path"], repo / "snapshots" / ("0" * 40))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    codec = Codec.load(tmp_path, {"kind": "pointer", "pretrained": "facebook/encodec_32khz"})
    t = codec_ref32.tensors
    assert torch.equal(codec.decode(t["codes"]), t["decoded"])


def test_missing_local_override_is_named(tmp_path, no_network):
    with pytest.raises(CheckpointError, match="no such folder"):
        Codec.load(tmp_path, {"kind": "pointer", "pretrained": "x/y"}, override=tmp_path / "nope")


@pytest.mark.parametrize("name", ["dac_44khz", "debug_compression_model"])
def test_pointer_to_non_encodec_is_refused(tmp_path, name):
    with pytest.raises(CheckpointError, match="not an EnCodec"):
        Codec.load(tmp_path, {"kind": "pointer", "pretrained": name})


def test_override_wins_over_pointer(codec_ref32, convert_and_load, tmp_path, no_network):
    note, model_dir, _ = convert_and_load(codec_ref32)
    codec = Codec.load(tmp_path, {"kind": "pointer", "pretrained": "facebook/encodec_32khz"},
                       override=model_dir / note["path"])
    t = codec_ref32.tensors
    assert torch.equal(codec.decode(t["codes"]), t["decoded"])


def test_override_must_be_a_converted_folder(codec_ref32, tmp_path):
    with pytest.raises(CheckpointError, match="convert_codec"):
        Codec.load(tmp_path, {"kind": "pointer", "pretrained": "x/y"}, override=codec_ref32.source)
    with pytest.raises(CheckpointError, match="no config.json"):
        Codec.load(tmp_path, {"kind": "pointer", "pretrained": "x/y"}, override=tmp_path)


@pytest.mark.parametrize("note,match", [({"kind": "full", "path": "codec"}, "missing; re-run the conversion"),
                                        ({"kind": "full"}, "no 'path'"),
                                        ({"kind": "other"}, "neither 'full' nor 'pointer'"),
                                        ({"kind": "pointer"}, "no 'pretrained'")])
def test_bad_notes(tmp_path, note, match):
    with pytest.raises(CheckpointError, match=match):
        Codec.load(tmp_path, note)


# ------------------------------------------------------------------------------------------ strictness
def _convert_modified(tmp_path, pkg):
    out = tmp_path / "out"
    try:
        return convert_codec(_save(tmp_path, pkg), out)
    finally:
        assert not (out / "model.safetensors").exists(), "a failed conversion must not write weights"


def test_missing_key(codec_ref32, tmp_path):
    pkg = codec_ref32.package()
    del pkg["best_state"]["decoder.model.3.convtr.convtr.weight_v"]
    with pytest.raises(CheckpointError, match=r"lacks 1 key.*'decoder\.layers\.3\.conv\.parametrizations\."
                                              r"weight\.original1'"):
        _convert_modified(tmp_path, pkg)


def test_unknown_key(codec_ref32, tmp_path):
    pkg = codec_ref32.package()
    pkg["best_state"]["encoder.model.99.conv.conv.bias"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"'encoder\.model\.99\.conv\.conv\.bias'.*unknown key"):
        _convert_modified(tmp_path, pkg)
    pkg = codec_ref32.package()
    pkg["best_state"]["quantizer.vq.layers.0._codebook.something"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="something"):
        _convert_modified(tmp_path, pkg)


def test_extra_codebook_is_unknown(codec_ref32, tmp_path):
    pkg = codec_ref32.package()
    for name in ("inited", "cluster_size", "embed", "embed_avg"):
        pkg["best_state"][f"quantizer.vq.layers.4._codebook.{name}"] = \
            pkg["best_state"][f"quantizer.vq.layers.0._codebook.{name}"]
    with pytest.raises(CheckpointError, match=r"quantizer\.vq\.layers\.4\._codebook"):
        _convert_modified(tmp_path, pkg)


def test_shape_mismatch(codec_ref32, tmp_path):
    pkg = codec_ref32.package()
    key = "quantizer.vq.layers.2._codebook.embed"
    pkg["best_state"][key] = pkg["best_state"][key][:, :4].clone()
    with pytest.raises(CheckpointError, match=r"'quantizer\.vq\.layers\.2\._codebook\.embed'\] has shape "
                                              r"\(2048, 4\), expected \(2048, 8\)"):
        _convert_modified(tmp_path, pkg)


def test_wrong_value_types(codec_ref32, tmp_path):
    pkg = codec_ref32.package()
    pkg["best_state"]["encoder.model.0.conv.conv.bias"] = pkg["best_state"]["encoder.model.0.conv.conv.bias"].long()
    with pytest.raises(CheckpointError, match=r"encoder\.model\.0\.conv\.conv\.bias.*floating"):
        _convert_modified(tmp_path, pkg)
    pkg = codec_ref32.package()
    pkg["best_state"]["encoder.model.0.conv.conv.bias"] = [0.0, 1.0]
    with pytest.raises(CheckpointError, match="not a tensor"):
        _convert_modified(tmp_path, pkg)


def test_fp16_export_is_widened_to_fp32(codec_ref32, tmp_path):
    pkg = codec_ref32.package()
    pkg["best_state"] = {k: v.half() for k, v in pkg["best_state"].items()}
    note = convert_codec(_save(tmp_path, pkg), tmp_path / "out")
    codec = Codec.load(tmp_path, {**note, "path": "out"})
    assert all(p.dtype == torch.float32 for p in codec.model.state_dict().values() if p.is_floating_point())
    assert torch.equal(codec.model.state_dict()["quantizer.layers.0.codebook.embed"],
                       pkg["best_state"]["quantizer.vq.layers.0._codebook.embed"].float())


def test_parametrized_weight_norm_keys_are_accepted(codec_ref32, tmp_path):
    """An export made with torch's newer parametrized weight_norm names converts to the same model."""
    pkg = codec_ref32.package()
    pkg["best_state"] = {k.replace("weight_g", "parametrizations.weight.original0")
                         .replace("weight_v", "parametrizations.weight.original1"): v
                         for k, v in pkg["best_state"].items()}
    note = convert_codec(_save(tmp_path, pkg), tmp_path / "out")
    assert note["path"] == "out"
    t = codec_ref32.tensors
    assert torch.equal(Codec.load(tmp_path, note).decode(t["codes"]), t["decoded"])


@pytest.mark.parametrize("pkg,match", [({"best_state": {}}, "neither a hub pointer"),
                                       ({"xp.cfg": 3, "best_state": {}}, "'xp.cfg' is a int"),
                                       ({"pretrained": 5}, "'pretrained' is 5")])
def test_bad_packages(tmp_path, pkg, match):
    with pytest.raises(CheckpointError, match=match):
        convert_codec(_save(tmp_path, pkg), tmp_path / "out")


def test_not_a_dict_and_unsafe_pickles(tmp_path):
    with pytest.raises(CheckpointError, match="expected a dict"):
        convert_codec(_save(tmp_path, [1, 2]), tmp_path / "out")
    path = tmp_path / "evil.bin"
    torch.save({"pretrained": "facebook/encodec_32khz", "obj": ConfigError("x")}, path)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        convert_codec(path, tmp_path / "out")
    with pytest.raises(CheckpointError, match="not found"):
        convert_codec(tmp_path / "nope.bin", tmp_path / "out")


# ------------------------------------------------------------------------------------------ config
UNSUPPORTED = [
    ("seanet.activation", "LeakyReLU", "seanet.activation"),
    ("seanet.activation_params", {"alpha": 0.5}, "seanet.activation_params"),
    ("seanet.decoder.final_activation", "Tanh", "final_activation"),
    ("seanet.disable_norm_outer_blocks", 1, "disable_norm_outer_blocks"),
    ("seanet.norm", "time_group_norm", "seanet.norm"),
    ("seanet.norm", "none", "seanet.norm"),
    ("seanet.lstm", 0, "seanet.lstm"),
    ("seanet.pad_mode", "zeros", "seanet.pad_mode"),
    ("seanet.encoder.n_filters", 8, "seanet.encoder.n_filters"),
    ("seanet.decoder.trim_right_ratio", 0.5, "trim_right_ratio"),
    ("seanet.decoder.bogus", 1, "seanet.decoder.bogus"),
    ("seanet.trim_right_ratio", 1.0, "decoder-only"),
    ("seanet.ratios", [8, 5, 4, 3], "not a multiple"),
    ("seanet.n_filters", "${oc.env:FILTERS}", "seanet.n_filters"),
    ("seanet.n_filters", 2.5, "seanet.n_filters"),
    ("seanet.channels", 2, "seanet.channels"),
    ("channels", 3, "encodec.channels"),
    ("rvq.bins", 1000, "rvq.bins"),
    ("rvq.n_q", None, "rvq.n_q"),
    ("compression_model", "dac", "compression_model"),
    ("encodec.quantizer", "no_quant", "encodec.quantizer"),
    ("encodec.autoencoder", "other", "encodec.autoencoder"),
    ("encodec.causal", "${encodec.causal}", "cyclic"),
]


@pytest.mark.parametrize("field,value,match", UNSUPPORTED, ids=[f"{u[0]}={u[1]}" for u in UNSUPPORTED])
def test_unsupported_settings_are_refused(codec_ref32, field, value, match):
    with pytest.raises(ConfigError, match=match):
        encodec_config_from_xp(_set(_xp(codec_ref32), field, value))


def test_causal_renormalize_is_refused(codec_ref32):
    xp = _set(_set(_xp(codec_ref32), "encodec.causal", True), "encodec.renormalize", True)
    with pytest.raises(ConfigError, match="encodec.renormalize"):
        encodec_config_from_xp(xp)


def test_missing_field_is_named(codec_ref32):
    xp = _xp(codec_ref32)
    del xp["rvq"]["bins"]
    with pytest.raises(ConfigError, match="'rvq.bins'"):
        encodec_config_from_xp(xp)


def test_unsupported_export_is_refused_at_conversion(codec_ref32, tmp_path):
    pkg = codec_ref32.package()
    pkg["xp.cfg"] = yaml.safe_dump(_set(_xp(codec_ref32), "seanet.norm", "time_group_norm"))
    with pytest.raises(ConfigError, match=rf"{CODEC_FILE}.*seanet.norm"):
        _convert_modified(tmp_path, pkg)


def test_config_follows_settings(codec_ref32):
    """Each audiocraft knob lands in the matching EncodecConfig field (interpolations resolved)."""
    xp = _xp(codec_ref32)
    assert xp["seanet"]["causal"] == "${encodec.causal}" and xp["encodec"]["sample_rate"] == "${sample_rate}"
    xp = _set(xp, "encodec.causal", True)
    xp = _set(xp, "seanet.decoder.trim_right_ratio", 0.25)
    xp = _set(xp, "seanet.true_skip", False)
    xp = _set(xp, "seanet.pad_mode", "reflect")
    xp = _set(xp, "channels", 2)
    xp = _set(xp, "seanet.lstm", 1)
    cfg = encodec_config_from_xp(yaml.safe_dump(xp))
    assert (cfg.use_causal_conv, cfg.trim_right_ratio, cfg.use_conv_shortcut, cfg.pad_mode, cfg.audio_channels,
            cfg.num_lstm_layers) == (True, 0.25, True, "reflect", 2, 1)
    cfg = encodec_config_from_xp(_set(_xp(codec_ref32), "encodec.renormalize", True))
    assert cfg.normalize is True


# ------------------------------------------------------------------------------------------ inputs
@pytest.mark.parametrize("codes,match", [
    ([[[0]]], "torch.Tensor"),
    (torch.zeros(1, 4, 5), "integer"),
    (torch.zeros(1, 4, 5, dtype=torch.bool), "integer"),
    (torch.zeros(4, 5, dtype=torch.long), r"\[B, K, T\]"),
    (torch.zeros(1, 5, 5, dtype=torch.long), "K <= 4"),
    (torch.zeros(1, 4, 0, dtype=torch.long), "T >= 1"),
    (torch.full((1, 4, 5), -1, dtype=torch.long), r"\[0, 2048\).*-1"),
    (torch.full((1, 4, 5), 2048, dtype=torch.long), r"\[0, 2048\).*2048"),
])
def test_decode_validation(codec_ref32, convert_and_load, codes, match):
    _, _, codec = convert_and_load(codec_ref32)
    with pytest.raises(ParameterError, match=match):
        codec.decode(codes)


def test_decode_accepts_int32_and_fewer_codebooks(codec_ref32, convert_and_load):
    _, _, codec = convert_and_load(codec_ref32)
    codes = codec_ref32.tensors["codes"]
    assert torch.equal(codec.decode(codes.int()), codec_ref32.tensors["decoded"])
    assert codec.decode(codes[:, :2]).shape == (2, 1, 37 * 640)


@pytest.mark.parametrize("wav,rate,match", [
    ("x", 32000, "torch.Tensor"),
    (torch.zeros(100, dtype=torch.int16), 32000, "floating point"),
    (torch.zeros(1, 1, 1, 100), 32000, r"\[S\], \[C, S\] or \[B, C, S\]"),
    (torch.zeros(0), 32000, "empty"),
    (torch.tensor([0.0, float("nan")]), 32000, "NaN or infinite"),
    (torch.tensor([0.0, float("inf")]), 32000, "NaN or infinite"),
    (torch.zeros(100), 0, "positive integer"),
    (torch.zeros(100), -8000, "positive integer"),
    (torch.zeros(100), 32000.5, "positive integer"),
    (torch.zeros(100), "32000", "positive integer"),
    (torch.zeros(100), True, "positive integer"),
])
def test_encode_validation(codec_ref32, convert_and_load, wav, rate, match):
    _, _, codec = convert_and_load(codec_ref32)
    with pytest.raises(ParameterError, match=match):
        codec.encode(wav, rate)


def test_encode_shapes(codec_ref32, convert_and_load):
    _, _, codec = convert_and_load(codec_ref32)
    wav = codec_ref32.tensors["wav"]
    ref = codec_ref32.tensors["wav_codes"]
    assert torch.equal(codec.encode(wav[0, 0], 32000), ref[:1])              # [S]
    assert torch.equal(codec.encode(wav[1], 32000.0), ref[1:])               # [C, S], integral float rate
    assert torch.equal(codec.encode(wav.double(), 32000), ref)               # float64 -> float32
    assert codec.encode(torch.zeros(1), 32000).shape == (1, 4, 1)            # one sample -> one frame


def test_channel_conversion_rules():
    """audiocraft's convert_audio_channels: mean to mono, repeat mono, keep the first channels, else error."""
    from transformers import EncodecConfig, EncodecModel
    torch.manual_seed(0)
    cfg = EncodecConfig(sampling_rate=8000, audio_channels=2, upsampling_ratios=[4, 2], num_filters=2,
                        hidden_size=4, codebook_size=16, target_bandwidths=[8.0], use_causal_conv=False,
                        use_conv_shortcut=False, pad_mode="constant", num_lstm_layers=1)
    stereo = Codec(EncodecModel(cfg))
    x = torch.randn(2, 1, 40)
    assert torch.equal(stereo.convert_audio(x, 8000), x.expand(2, 2, 40))
    y = torch.randn(1, 3, 40)
    assert torch.equal(stereo.convert_audio(y, 8000), y[:, :2])
    assert stereo.encode(y, 8000).shape == (1, 2, 5)
    z = torch.randn(1, 2, 40)
    assert torch.equal(stereo.convert_audio(z, 8000), z)
    mono = Codec(EncodecModel(EncodecConfig(**{**cfg.to_dict(), "audio_channels": 1})))
    assert torch.equal(mono.convert_audio(y, 8000), y.mean(dim=1, keepdim=True))
    assert (mono.n_q, mono.card, mono.frame_rate, mono.hop_length) == (2, 16, 1000, 8)


# ------------------------------------------------------------------------------------------ live
def _assert_same_reference(fresh, committed):
    assert set(fresh.tensors) == set(committed.tensors)
    for key, value in committed.tensors.items():
        assert torch.equal(fresh.tensors[key], value), f"audiocraft now gives a different '{key}'"


def _assert_parity(ref, tmp_path):
    note = convert_codec(ref.source, tmp_path / "model" / "codec")
    codec = Codec.load(tmp_path / "model", note)
    t = ref.tensors
    out = codec.decode(t["codes"])
    assert torch.equal(out, t["decoded"]), f"decode max diff {(out - t['decoded']).abs().max().item():.3g}"
    assert torch.equal(codec.encode(t["wav"], codec.sample_rate), t["wav_codes"])
    if "prompt_mix" in t:
        assert torch.equal(codec.encode(t["prompt_mix"], codec.sample_rate), t["prompt_mix_codes"])
        assert torch.equal(codec.encode(t["prompt44k_converted"], codec.sample_rate), t["prompt44k_codes"])
    return note


@pytest.mark.live
def test_live_fixtures_reproduce(oracle, codec_ref, tmp_path):
    """audiocraft, run now, writes the committed export byte for byte and the same outputs; parity holds."""
    fresh = oracle(codec_ref.meta["variant"], tmp_path / "ref")
    assert fresh.source.read_bytes() == codec_ref.source.read_bytes(), "the export is not reproducible"
    _assert_same_reference(fresh, codec_ref)
    _assert_parity(fresh, tmp_path)


@pytest.mark.live
@pytest.mark.parametrize("variant", ["causal", "stereo"])
def test_live_other_settings(oracle, tmp_path, variant):
    """Causal/trim/conv-shortcut/dilation/compress/kernels/1-layer LSTM; stereo/reflect/renormalize."""
    ref = oracle(variant, tmp_path / "ref")
    note = _assert_parity(ref, tmp_path)
    assert (note["n_q"], note["card"], note["pad_mode"]) == (ref.meta["n_q"], ref.meta["card"], ref.meta["pad_mode"])


@pytest.mark.live
def test_live_julius_resampling_in_oracle_env(oracle, codec_ref32, convert_and_load):
    """With julius installed (the oracle venv has it), encode(44.1 kHz stereo) equals audiocraft's codes."""
    _, model_dir, _ = convert_and_load(codec_ref32)
    package_dir = Path(magnet_fast.io.codec.__file__).resolve().parent
    # only magnet_fast.io.codec (+ errors, _io) is imported there: a bare package object stands in for
    # magnet_fast/__init__.py, which needs the rest of the project
    script = (
        "import sys, types, torch\n"
        "pkg = types.ModuleType('magnet_fast'); pkg.__path__ = [sys.argv[1]]; sys.modules['magnet_fast'] = pkg\n"
        "from safetensors.torch import load_file\n"
        "from magnet_fast.io.codec import Codec\n"
        "import julius\n"
        "t = load_file(sys.argv[3]); c = Codec.load(sys.argv[2], {'kind': 'full', 'path': 'codec'})\n"
        "assert torch.equal(c.convert_audio(t['prompt44k'], 44100), t['prompt44k_converted'])\n"
        "assert torch.equal(c.encode(t['prompt44k'], 44100), t['prompt44k_codes'])\n"
        "print('ok')\n")
    proc = subprocess.run([str(oracle.python), "-c", script, str(package_dir), str(model_dir),
                           str(codec_ref32.folder / "reference.safetensors")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


@pytest.mark.live
def test_live_full_size_32khz(oracle, tmp_path):
    """The real 32 kHz EnCodec size (n_filters 64, dimension 128, 56.9 M params), random weights."""
    ref = oracle("full32k", tmp_path / "ref")
    assert ref.meta["params"] == 56_884_674
    note = _assert_parity(ref, tmp_path)
    assert note == {"kind": "full", "path": "codec", "sample_rate": 32000, "frame_rate": 50, "n_q": 4,
                    "card": 2048, "channels": 1, "pad_mode": "constant", "ratios": [8, 5, 4, 4]}
