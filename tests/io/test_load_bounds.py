"""Hostile inputs are refused by bounds checked before any work (docs/DESIGN.md, Conversion: "Bounds checked
before work"). Anything that could blow up on a regression runs in a subprocess under a 1.5 GB address-space
limit and a timeout, so a regression fails the test instead of taking the machine down."""
from __future__ import annotations

import io
import json
import math
import resource
import shutil
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import torch

from magnet_fast.config import MagnetConfig
from magnet_fast.errors import CheckpointError, ConfigError, ParameterError
from magnet_fast.params import MAX_FRAMES, SamplingParams, resolve_params, validate

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "ac_ref" / "magnet_tiny" / "state_dict.bin"
DEMO = ROOT / "magnet_fast" / "demo" / "magnet-tiny-demo"
MEM_LIMIT = 1536 << 20


def run_limited(code: str, timeout: float = 60) -> tuple[str, float]:
    """Run ``code`` in a fresh interpreter under RLIMIT_AS; returns (stdout+stderr, seconds)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (MEM_LIMIT, MEM_LIMIT))
    start = time.monotonic()
    try:
        r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                           timeout=timeout, preexec_fn=limit, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"not refused within {timeout} s")
    return r.stdout + r.stderr, time.monotonic() - start


CONVERT_SNIPPET = """
import time, magnet_fast as mf
from magnet_fast.errors import CheckpointError
t = time.monotonic()
try:
    mf.convert({src!r}, {out!r})
    print("CONVERTED")
except CheckpointError as e:
    print("REFUSED", type(e).__name__, e)
print("SECONDS", time.monotonic() - t)
"""


def _source_with(tmp_path: Path, edit_xp=None, edit_state=None) -> Path:
    pkg = torch.load(FIXTURE, weights_only=True)
    if edit_xp:
        pkg["xp.cfg"] = edit_xp(pkg["xp.cfg"])
    if edit_state:
        edit_state(pkg["best_state"])
    src = tmp_path / "src"
    src.mkdir()
    torch.save(pkg, src / "state_dict.bin")            # no compression_state_dict.bin: the LM only
    return src


def _convert_limited(tmp_path: Path, src: Path) -> tuple[str, float]:
    out, _ = run_limited(CONVERT_SNIPPET.format(src=str(src), out=str(tmp_path / "out")))
    seconds = float(out.rsplit("SECONDS", 1)[1].split()[0]) if "SECONDS" in out else math.inf
    return out, seconds


# 1. YAML alias bombs and ${...} fan-outs ---------------------------------------------------------------

def _alias_bomb(xp: str) -> str:
    lines = ["  bomb0: &a0 [" + ", ".join(["x"] * 10) + "]"]
    lines += [f"  bomb{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    return xp.replace("transformer_lm:\n", "transformer_lm:\n" + "\n".join(lines) + "\n", 1)


def _fan_out(xp: str, where: str) -> str:
    levels = ["f0: [" + ", ".join(["x"] * 10) + "]"]
    levels += [f"f{i}: [" + ", ".join([f"'${{f{i - 1}}}'"] * 10) + "]" for i in range(1, 9)]
    xp = xp + "\n".join(levels) + "\n"
    if where == "needed":            # fuser.sum is read by the converter
        return xp.replace("  sum: []\n", "  sum: ${f8}\n", 1)
    return xp.replace("transformer_lm:\n", "transformer_lm:\n  fan: ${f8}\n", 1)


def test_yaml_alias_bomb_is_refused_fast(tmp_path):
    out, seconds = _convert_limited(tmp_path, _source_with(tmp_path, _alias_bomb))
    assert "REFUSED ConfigError" in out and "alias" in out, out[-2000:]
    assert seconds < 5, out[-2000:]


def test_interpolation_fan_out_in_a_needed_key_is_refused_fast(tmp_path):
    out, seconds = _convert_limited(tmp_path, _source_with(tmp_path, lambda x: _fan_out(x, "needed")))
    assert "REFUSED ConfigError" in out and "fuser.sum" in out and "nodes" in out, out[-2000:]
    assert seconds < 5, out[-2000:]


def test_interpolation_fan_out_in_an_unused_key_is_never_resolved(tmp_path):
    """Only the keys the converter needs are resolved: a fan-out elsewhere costs nothing."""
    out, seconds = _convert_limited(tmp_path, _source_with(tmp_path, lambda x: _fan_out(x, "unused")))
    assert "CONVERTED" in out, out[-2000:]
    assert seconds < 5, out[-2000:]


def test_oversized_or_deep_yaml_is_refused():
    from magnet_fast.io.convert.xpcfg import load_xp_yaml
    with pytest.raises(ConfigError, match="characters, over the"):
        load_xp_yaml("a: " + "x" * (2 << 20))
    with pytest.raises(ConfigError, match="nests deeper"):
        load_xp_yaml("[" * 200 + "]" * 200)


# 2. geometry checked against the weights before anything is built -------------------------------------

def test_xp_cfg_layer_count_is_checked_against_the_weights_first(tmp_path):
    src = _source_with(tmp_path, lambda x: x.replace("  num_layers: 2\n", "  num_layers: 1000000\n", 1))
    out, seconds = _convert_limited(tmp_path, src)
    assert "REFUSED" in out and "num_layers = 1000000" in out and "2 (indices" in out, out[-2000:]
    assert seconds < 5, out[-2000:]


def test_xp_cfg_codebook_count_is_checked_against_the_weights_first(tmp_path):
    src = _source_with(tmp_path, lambda x: x.replace("  n_q: 4\n", "  n_q: 1000000000\n", 1))
    out, seconds = _convert_limited(tmp_path, src)
    assert "REFUSED" in out and "n_q = 1000000000" in out, out[-2000:]
    assert seconds < 5, out[-2000:]


def _demo_copy(tmp_path: Path, **config_edits) -> Path:
    folder = tmp_path / "demo"
    shutil.copytree(DEMO, folder)
    raw = json.loads((folder / "config.json").read_text())
    for k, v in config_edits.items():
        raw[k] = v
    (folder / "config.json").write_text(json.dumps(raw))
    return folder


LOAD_SNIPPET = """
import torch
from magnet_fast.config import MagnetConfig
from magnet_fast.errors import CheckpointError
from magnet_fast.nn.loading import load_lm
try:
    load_lm({folder!r}, MagnetConfig.load({folder!r}), torch.device("cpu"), torch.float32)
    print("LOADED")
except CheckpointError as e:
    print("REFUSED", type(e).__name__, e)
"""


def test_config_json_with_100000_layers_is_refused_before_building(tmp_path):
    folder = _demo_copy(tmp_path, num_layers=100000)
    out, seconds = run_limited(LOAD_SNIPPET.format(folder=str(folder)))
    assert "REFUSED" in out and "num_layers" in out, out[-2000:]
    assert seconds < 30, out[-2000:]


def test_load_lm_checks_the_header_before_building(tmp_path, monkeypatch):
    """A layer count within the config bound but not the file's: refused from the header, nothing built."""
    import magnet_fast.nn.loading as model_mod

    def no_build(*a, **k):
        raise AssertionError("MagnetLM built before the header check")
    monkeypatch.setattr(model_mod, "MagnetLM", no_build)
    folder = _demo_copy(tmp_path, num_layers=700)
    with pytest.raises(CheckpointError, match=r"num_layers = 700 but the weights hold 2 layers"):
        model_mod.load_lm(folder, MagnetConfig.load(folder), torch.device("cpu"), torch.float32)


# 3. durations and decoding steps bounded ---------------------------------------------------------------

def _demo_dict(**edits) -> dict:
    raw = json.loads((DEMO / "config.json").read_text())
    gen = edits.pop("generation", {})
    raw.update(edits)
    raw["generation"].update(gen)
    return raw


@pytest.mark.parametrize("edits, match", [
    pytest.param({"segment_duration": 1e5}, "over the 120 s bound", id="segment-1e5"),
    pytest.param({"segment_duration": 121.0}, "over the 120 s bound", id="segment-121"),
    pytest.param({"segment_duration": 100.0, "frame_rate": 150}, "over the 12000-frame bound", id="frames"),
    pytest.param({"num_layers": 100000}, "num_layers 100000 is over", id="layers"),
    pytest.param({"generation": {"decoding_steps": [10**9, 10, 10, 10]}}, "more steps than it has units",
                 id="steps-1e9"),
    pytest.param({"generation": {"decoding_steps": [167, 10, 10, 10]}}, r"166 spans of 3 frames", id="steps-167"),
    pytest.param({"generation": {"decoding_steps": [1e20, 10, 10, 10]}}, "whole numbers", id="steps-float"),
    pytest.param({"generation": {"decoding_steps": [True, 10, 10, 10]}}, "whole numbers", id="steps-bool"),
])
def test_config_json_bounds(edits, match):
    with pytest.raises(ConfigError, match=match):
        MagnetConfig.from_dict(_demo_dict(**edits))


def test_released_geometries_stay_within_the_bounds():
    for seconds in (10.0, 30.0):
        cfg = MagnetConfig.from_dict(_demo_dict(segment_duration=seconds))
        assert cfg.frames == seconds * 50
    MagnetConfig.from_dict(_demo_dict(generation={"decoding_steps": [166, 10, 10, 10]}))


def test_steps_bounded_by_units_to_unmask():
    p = SamplingParams()
    assert validate(p, 4, 2048, frames=500, span_len=3).decoding_steps == (20, 10, 10, 10)
    ok = SamplingParams(decoding_steps=(166, 1, 1, 1))
    validate(ok, 4, 2048, frames=500, span_len=3)                     # 500 // 3 spans
    with pytest.raises(ParameterError, match="166 spans of 3 frames"):
        validate(SamplingParams(decoding_steps=(167, 1, 1, 1)), 4, 2048, frames=500, span_len=3)
    stride1 = SamplingParams(decoding_steps=(500, 1, 1, 1), span_arrangement="stride1")
    validate(stride1, 4, 2048, frames=500, span_len=3)                # tokens, not spans
    with pytest.raises(ParameterError, match="500 frames"):
        validate(SamplingParams(decoding_steps=(501, 1, 1, 1), span_arrangement="stride1"), 4, 2048,
                 frames=500, span_len=3)
    with pytest.raises(ParameterError, match="166 spans"):
        resolve_params(p, 4, 2048, frames=500, span_len=3, decoding_steps=(1000, 1, 1, 1))


def test_steps_bounded_without_geometry():
    """Callers that pass no geometry (resolve_params as the API calls it today) still get a bound."""
    with pytest.raises(ParameterError, match=f"{MAX_FRAMES}-frame limit"):
        resolve_params(SamplingParams(), 4, 2048, decoding_steps=(1000000, 1, 1, 1))
    with pytest.raises(ParameterError, match=f"{MAX_FRAMES}-frame limit"):
        resolve_params(SamplingParams(), 4, 2048, decoding_steps=(10**20, 1, 1, 1))
    with pytest.raises(ParameterError, match="whole numbers"):
        resolve_params(SamplingParams(), 4, 2048, decoding_steps=(1e20, 1, 1, 1))
    with pytest.raises(ParameterError, match="whole numbers"):
        resolve_params(SamplingParams(), 4, 2048, decoding_steps=(5.0, 1, 1, 1))
    with pytest.raises(ParameterError, match="whole numbers"):
        resolve_params(SamplingParams(), 4, 2048, decoding_steps=(True, 1, 1, 1))


def test_numpy_integer_steps_are_accepted():
    np = pytest.importorskip("numpy")
    got = resolve_params(SamplingParams(), 4, 2048, decoding_steps=[np.int64(5), np.int32(3), 2, 1])
    assert got.decoding_steps == (5, 3, 2, 1) and all(type(s) is int for s in got.decoding_steps)
    with pytest.raises(ParameterError, match="whole numbers"):
        resolve_params(SamplingParams(), 4, 2048, decoding_steps=[np.bool_(True), 1, 1, 1])
    with pytest.raises(ParameterError, match="whole numbers"):
        resolve_params(SamplingParams(), 4, 2048, decoding_steps=[np.float64(5), 1, 1, 1])


# 4. every config float finite (and positive where it must be) -------------------------------------------

@pytest.mark.parametrize("name, value, match", [
    ("norm_eps", math.nan, "finite"), ("norm_eps", math.inf, "finite"), ("norm_eps", 0.0, "> 0"),
    ("max_period", math.nan, "finite"), ("max_period", math.inf, "finite"), ("max_period", -1.0, "> 0"),
    ("positional_scale", math.nan, "finite"), ("positional_scale", -math.inf, "finite"),
    ("segment_duration", math.inf, "finite"),
])
def test_non_finite_config_floats_are_refused(tmp_path, name, value, match):
    folder = _demo_copy(tmp_path, **{name: value})             # json writes NaN / Infinity, json.loads reads them
    with pytest.raises(ConfigError, match=f"{name} must be (a )?{match}"):
        MagnetConfig.load(folder)


@pytest.mark.parametrize("name", ["temperature", "top_p", "max_cfg_coef", "min_cfg_coef"])
def test_non_finite_generation_floats_are_refused(name):
    with pytest.raises(ConfigError, match=f"generation: {name} must be a finite"):
        MagnetConfig.from_dict(_demo_dict(generation={name: math.nan}))


# 5. stored dtypes checked against config.json -----------------------------------------------------------

def _relabel(path: Path, old: str, new: str) -> None:
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    for k, v in header.items():
        if k != "__metadata__" and v["dtype"] == old:
            v["dtype"] = new
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def test_relabelled_dtype_is_refused(tmp_path):
    folder = _demo_copy(tmp_path)
    _relabel(folder / "model.safetensors", "F16", "BF16")               # same size: the file stays readable
    from magnet_fast.nn.loading import load_lm
    with pytest.raises(CheckpointError, match="stored as bfloat16 but config.json says weights_dtype 'float16'"):
        load_lm(folder, MagnetConfig.load(folder), torch.device("cpu"), torch.float32)


def test_weights_dtype_matches_what_convert_writes(tmp_path):
    """convert stores every key in one dtype and says which; the loader accepts exactly that."""
    import magnet_fast as mf
    from magnet_fast.nn.loading import load_lm
    for dtype in (None, "bfloat16", "float32"):
        out = mf.convert(FIXTURE.parent, tmp_path / f"m-{dtype}", dtype=dtype)
        cfg = MagnetConfig.load(out)
        assert cfg.weights_dtype == (dtype or "float16")
        load_lm(out, cfg, torch.device("cpu"), torch.float32)


# 6. declared (uncompressed) sizes checked before torch.load ----------------------------------------------

def test_compressed_storage_bomb_is_refused_before_loading(tmp_path):
    pkg = torch.load(FIXTURE, weights_only=True)
    pkg["best_state"]["bomb"] = torch.zeros(32 << 20, dtype=torch.float16)       # 64 MiB of zeros
    buf = io.BytesIO()
    torch.save(pkg, buf)
    del pkg
    src = tmp_path / "src"
    src.mkdir()
    with zipfile.ZipFile(buf) as zin, zipfile.ZipFile(src / "state_dict.bin", "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    assert (src / "state_dict.bin").stat().st_size < 2 << 20
    out, seconds = _convert_limited(tmp_path, src)
    assert "REFUSED CheckpointError" in out and "declare" in out and "uncompressed" in out, out[-2000:]
    assert seconds < 5, out[-2000:]


def test_genuine_checkpoint_passes_the_size_check():
    from magnet_fast.io.convert.zipcheck import check_zip_sizes
    check_zip_sizes(FIXTURE)
    check_zip_sizes(FIXTURE.parent / "compression_state_dict.bin")
