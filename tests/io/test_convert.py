"""Converter: round trip, derived config, strictness and safety (every failure names key/file + fix)."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import magnet_fast as mf
from magnet_fast.errors import CheckpointError, ConfigError
from magnet_fast.io.convert.lm import CODEC_FILE, LM_FILE

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def source(ref10):
    return torch.load(ref10.checkpoint / LM_FILE, weights_only=True)


def write_export(folder: Path, pkg: dict, codec: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(pkg, folder / LM_FILE)
    if codec is not None:
        torch.save(codec, folder / CODEC_FILE)
    return folder


def test_round_trip_preserves_every_value(ref10, source, tmp_path):
    out = mf.convert(ref10.checkpoint, tmp_path / "m")
    tensors = load_file(str(out / "model.safetensors"))
    best = source["best_state"]
    d = 64
    assert torch.equal(tensors["emb.2.weight"], best["emb.2.weight"])
    assert torch.equal(tensors["heads.3.weight"], best["linears.3.weight"])
    assert torch.equal(tensors["layers.1.self_attn.in_proj.weight"],
                       best["transformer.layers.1.self_attn.in_proj_weight"])
    packed = best["transformer.layers.0.cross_attention.in_proj_weight"]
    for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
        assert torch.equal(tensors[f"layers.0.cross_attn.{name}.weight"], packed[j * d:(j + 1) * d])
    assert {t.dtype for t in tensors.values()} == {torch.float16}          # released fp16 kept
    n_out = sum(t.numel() for t in tensors.values())
    assert n_out == sum(t.numel() for t in best.values()) == 443_584


def test_config_fields_from_xp_cfg(ref10, tmp_path):
    cfg = json.loads((mf.convert(ref10.checkpoint, tmp_path / "m") / "config.json").read_text())
    # the loader's overrides: segment_duration/span_len come from dataset/masking, not transformer_lm
    assert (cfg["segment_duration"], cfg["span_len"], cfg["frame_rate"]) == (10.0, 3, 50)
    assert (cfg["dim"], cfg["num_heads"], cfg["num_layers"], cfg["card"], cfg["n_q"]) == (64, 4, 2, 512, 4)
    assert (cfg["subcodes_context"], cfg["t5_name"], cfg["t5_dim"]) == (5, "t5-base", 768)
    assert cfg["generation"]["decoding_steps"] == [20, 10, 10, 10]
    assert cfg["codec"] == {"kind": "pointer", "pretrained": "facebook/encodec_32khz", "file": CODEC_FILE,
                            "sample_rate": 32000, "frame_rate": 50}
    assert cfg["source"]["keys"] == 36 and len(cfg["source"]["sha256"]) == 64


def test_dtype_option(ref10, tmp_path):
    out = mf.convert(ref10.checkpoint, tmp_path / "m", dtype="float32")
    tensors = load_file(str(out / "model.safetensors"))
    assert {t.dtype for t in tensors.values()} == {torch.float32}
    with pytest.raises(ConfigError, match="dtype"):
        mf.convert(ref10.checkpoint, tmp_path / "m2", dtype="int8")


def _mutated(source: dict, fn) -> dict:
    pkg = dict(source)
    pkg["best_state"] = dict(source["best_state"])
    fn(pkg)
    return pkg


@pytest.mark.parametrize("mutation, match", [
    pytest.param(lambda p: p["best_state"].pop("transformer.layers.1.linear2.weight"),
                 r"missing 1 key.*layers\.1\.linear2", id="missing-key"),
    pytest.param(lambda p: p["best_state"].__setitem__("extra.weight", torch.zeros(2)),
                 r"unknown 1 key.*extra\.weight", id="unknown-key"),
    pytest.param(lambda p: p["best_state"].__setitem__("emb.0.weight", torch.zeros(512, 64)),
                 r"emb\.0\.weight has shape \[512, 64\], expected \[513, 64\]", id="shape"),
    pytest.param(lambda p: p["best_state"].__setitem__("out_norm.bias", torch.zeros(64, dtype=torch.long)),
                 r"out_norm\.bias has dtype", id="int-dtype"),
    pytest.param(lambda p: p.__setitem__("xp.cfg", p["xp.cfg"].replace("lm_model: transformer_lm_magnet",
                                                                       "lm_model: transformer_lm_other")),
                 r"handles MAGNeT .* and MusicGen", id="unknown-lm"),
    pytest.param(lambda p: p.__setitem__("xp.cfg", p["xp.cfg"].replace("lm_model: transformer_lm_magnet",
                                                                       "lm_model: transformer_lm")),
                 r"causal = False is not supported \(released MusicGen models use True\)", id="magnet-as-musicgen"),
    pytest.param(lambda p: p.__setitem__("xp.cfg", p["xp.cfg"].replace("causal: false", "causal: true")),
                 r"causal.*not supported", id="causal-lm"),
    pytest.param(lambda p: p.pop("best_state"), r"'best_state'", id="no-best-state"),
])
def test_strict_errors_and_nothing_written(source, tmp_path, mutation, match):
    src = write_export(tmp_path / "src", _mutated(source, mutation))
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match=match):
        mf.convert(src, out)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]      # no temp folder left behind


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_refuses_arbitrary_pickles(source, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with open(src / LM_FILE, "wb") as f:
        pickle.dump({"xp.cfg": source["xp.cfg"], "best_state": Evil()}, f)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        mf.convert(src, tmp_path / "out")


def test_truncated_and_missing_files(ref10, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    data = (ref10.checkpoint / LM_FILE).read_bytes()
    (src / LM_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        mf.convert(src, tmp_path / "out")
    with pytest.raises(CheckpointError, match="audiocraft MAGNeT export folder"):
        mf.convert(tmp_path / "nowhere", tmp_path / "out")


def test_existing_output_needs_overwrite(ref10, tmp_path):
    out = mf.convert(ref10.checkpoint, tmp_path / "m")
    with pytest.raises(CheckpointError, match="already exists"):
        mf.convert(ref10.checkpoint, out)
    with pytest.raises(CheckpointError, match="converted model already"):
        mf.convert(out, tmp_path / "again")
    mf.convert(ref10.checkpoint, out, overwrite=True, dtype="float32")
    assert load_file(str(out / "model.safetensors"))["emb.0.weight"].dtype == torch.float32


def test_full_codec_export_is_converted(source, tmp_path):
    """A full compression export becomes codec/ (transformers EnCodec); its rates reach config.json."""
    codec16 = FIXTURES / "ac_codec_16k" / CODEC_FILE                    # 16 kHz, 4 x 512: fits the LM
    src = write_export(tmp_path / "src", source)
    (src / CODEC_FILE).write_bytes(codec16.read_bytes())
    out = mf.convert(src, tmp_path / "m")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["codec"]["kind"] == "full" and cfg["codec"]["path"] == "codec"
    assert (cfg["sample_rate"], cfg["frame_rate"]) == (16000, 50)
    assert (out / "codec" / "model.safetensors").is_file()


def test_codec_that_does_not_fit_the_lm_is_refused(source, tmp_path):
    src = write_export(tmp_path / "src", source)
    (src / CODEC_FILE).write_bytes((FIXTURES / "ac_codec" / CODEC_FILE).read_bytes())   # 4 x 2048
    with pytest.raises(CheckpointError, match="4 codebooks x 2048 but the LM expects 4 x 512"):
        mf.convert(src, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_loader_rejects_mismatched_weights(ref10, tmp_path):
    out = mf.convert(ref10.checkpoint, tmp_path / "m")
    cfg = json.loads((out / "config.json").read_text())
    cfg["num_layers"] = 3
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"missing keys \['layers\.2"):
        mf.MagnetFast.from_pretrained(out)
    (out / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not readable JSON"):
        mf.MagnetFast.from_pretrained(out)
    with pytest.raises(CheckpointError, match="is an audiocraft export"):
        mf.MagnetFast.from_pretrained(ref10.checkpoint)


def test_loader_rejects_damaged_or_mismatched_parts(ref10, tmp_path):
    """Truncated weights, integer tensors, a T5 of the wrong width: each a typed error naming the fix."""
    from safetensors.torch import save_file
    out = mf.convert(ref10.checkpoint, tmp_path / "m")
    weights = out / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 3])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        mf.MagnetFast.from_pretrained(out)
    tensors = load_file(str(mf.convert(ref10.checkpoint, tmp_path / "m2") / "model.safetensors"))
    tensors["out_norm.bias"] = torch.zeros(64, dtype=torch.int32)
    save_file(tensors, str(weights))
    with pytest.raises(CheckpointError, match="out_norm.bias has dtype torch.int32"):
        mf.MagnetFast.from_pretrained(out)
    weights.write_bytes((tmp_path / "m2" / "model.safetensors").read_bytes())
    demo_t5 = FIXTURES.parents[1] / "magnet_fast" / "demo" / "magnet-tiny-demo" / "t5"  # width 64, not 768
    with pytest.raises(CheckpointError, match="has width 64 but the model's text projection expects 768"):
        mf.MagnetFast.from_pretrained(out, t5=demo_t5)
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        mf.MagnetFast.from_pretrained(out, t5="no-such-org/no-such-t5")


def test_codec_override_that_does_not_fit_is_refused(ref10, tmp_path):
    out = mf.convert(ref10.checkpoint, tmp_path / "m")
    demo_codec = FIXTURES.parents[1] / "magnet_fast" / "demo" / "magnet-tiny-demo" / "codec"  # 4 x 2048
    model = mf.MagnetFast.from_pretrained(out, t5=FIXTURES / "ac_ref" / "t5_tiny", codec=demo_codec)
    with pytest.raises(CheckpointError, match="codec has 4 codebooks x 2048 .* LM expects 4 x 512"):
        model.generate(["x"], decoding_steps=[1, 1, 1, 1])


def test_output_inside_or_equal_to_source_is_refused(ref10, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / LM_FILE).write_bytes((ref10.checkpoint / LM_FILE).read_bytes())
    for out in (src, src / "sub", tmp_path):
        with pytest.raises(CheckpointError, match="overlaps the source"):
            mf.convert(src, out, overwrite=True)
    assert (src / LM_FILE).is_file()                                   # the checkpoint is untouched


def test_converted_files_follow_the_umask(ref10, tmp_path):
    import os
    umask = os.umask(0)
    os.umask(umask)
    out = mf.convert(ref10.checkpoint, tmp_path / "m")
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("edit, match", [
    pytest.param(lambda x: x.replace("  dim: 64\n", "  dimm: 64\n", 1), "missing or malformed", id="no-dim"),
    pytest.param(lambda x: x.replace("span_len: 3", "span_len: null", 1), "missing or malformed",
                 id="null-span"),
    pytest.param(lambda x: x.replace("cross_attention_pos_emb: false", "cross_attention_pos_emb: true"),
                 "cross_attention_pos_emb", id="pos-emb-on-condition"),
])
def test_malformed_xp_cfg_is_a_config_error(source, tmp_path, edit, match):
    pkg = dict(source)
    pkg["xp.cfg"] = edit(pkg["xp.cfg"])
    assert pkg["xp.cfg"] != source["xp.cfg"]
    with pytest.raises(ConfigError, match=match):
        mf.convert(write_export(tmp_path / "src", pkg), tmp_path / "out")


def test_malformed_config_json(ref10, tmp_path):
    out = mf.convert(ref10.checkpoint, tmp_path / "m")
    cfg = json.loads((out / "config.json").read_text())
    cfg["generation"]["decoding_steps"] = 5
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="malformed field"):
        mf.MagnetFast.from_pretrained(out)
