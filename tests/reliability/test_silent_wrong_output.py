"""Class 2 of issue 24: silent wrong output. The resume key covers what changes the bytes (weights digest,
attention, dtype, device kind); JSONL is split on \\n only (BOM accepted) in jobs and --prompts-file; integer
PCM prompt audio is scaled (bool/complex refused); compat decoding_steps strictly typed; the converted cache
verified against digests recorded at conversion and reconverted when damaged; a hybrid prefix not shorter
than the output refused; batch --out '', --tokens-only --out x.wav, NaN/Infinity and huge echoed values."""
from __future__ import annotations

import json
import shutil
import types
import warnings
from pathlib import Path

import pytest
import torch

from magnet_fast import jobs
from magnet_fast.demo import DEMO_MODEL
from magnet_fast.errors import ParameterError
from magnet_fast.jobs import ModelSpec, parse_job, prepare

from .conftest import FAST, write_job

ROOT = Path(__file__).resolve().parents[2]
MG_DEMO = ROOT / "magnet_fast" / "demo" / "musicgen-tiny-demo"


def _quiet(_m):
    pass


# ----------------------------------------------------------------------------------------- resume key
def _fake_done(out: Path, item, key):
    """A finished record for ``item`` as a run with model key ``key`` leaves it (file + sha256)."""
    data = b"RIFF done by an earlier run"
    (out / item.file).write_bytes(data)
    import hashlib
    row = jobs.make_row(item, "done", file=item.file, sha256=hashlib.sha256(data).hexdigest())
    row["model"] = key
    (out / jobs.MANIFEST_NAME).write_text(json.dumps(row) + "\n")


@pytest.mark.parametrize("change", ["model", "attention", "dtype", "device_kind_same"])
def test_resume_key_includes_what_changes_the_bytes(tmp_path, change):
    job = write_job(tmp_path / "job.jsonl", [{"id": "a", "text": "x"}])
    out = tmp_path / "out"
    out.mkdir()
    first = ModelSpec(str(DEMO_MODEL), {"device": "cpu"})
    item = parse_job(job, FAST)[0][0]
    _fake_done(out, item, jobs.model_key(first))
    plan = prepare(job, out, FAST, _quiet, model=first)
    assert [it.id for it in plan.skipped] == ["a"]                         # same model: skipped
    plan.close()
    if change == "model":                                                 # other weights, same config
        other = tmp_path / "other"
        shutil.copytree(DEMO_MODEL, other)
        w = other / "model.safetensors"
        data = bytearray(w.read_bytes())
        data[-1] ^= 1
        w.write_bytes(bytes(data))
        second = ModelSpec(str(other), {"device": "cpu"})
    elif change == "attention":
        second = ModelSpec(str(DEMO_MODEL), {"device": "cpu", "attention": "exact"})
    elif change == "dtype":
        second = ModelSpec(str(DEMO_MODEL), {"device": "cpu", "dtype": "bfloat16"})
    else:                                                                 # float32 is the CPU default
        second = ModelSpec(str(DEMO_MODEL), {"device": "cpu", "dtype": "float32"})
    plan = prepare(job, out, FAST, _quiet, model=second)
    try:
        expect = ["a"] if change == "device_kind_same" else []
        assert [it.id for it in plan.skipped] == expect
    finally:
        plan.close()
    key = jobs.model_key(first)
    assert set(key) >= {"digest", "attention", "dtype", "device"} and key["device"] == "cpu"


def test_resume_key_same_for_a_loaded_model_and_its_spec(demo_model):
    assert jobs.model_key(demo_model) == jobs.model_key(ModelSpec(str(DEMO_MODEL), {"device": "cpu"}))
    assert jobs.model_key(lambda: demo_model) is None                   # unknown before loading


# ----------------------------------------------------------------------------------------- JSONL lines
LEGAL_INSIDE = ["\u2028", "\u2029", "\u0085", "\x0c", "\x0b", "\x1c", "\x1d", "\x1e"]


def test_job_lines_split_on_newline_only_with_bom_and_crlf(tmp_path):
    texts = [f"before{c}after" for c in LEGAL_INSIDE]
    body = "".join(json.dumps({"id": f"i{n}", "text": t}, ensure_ascii=False) + "\r\n" for n, t in enumerate(texts))
    job = tmp_path / "job.jsonl"
    job.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8") + b'{"id": "last", "text": "z", "seed": "bad"}\n')
    items, errors = parse_job(job, {})
    assert [it.text for it in items] == texts
    assert [it.line for it in items] == list(range(1, len(texts) + 1))
    assert [e.line for e in errors] == [len(texts) + 1]                   # line numbers stay right


def test_prompts_file_split_on_newline_only_with_bom(tmp_path):
    from magnet_fast.cli import build_parser
    from magnet_fast.flags import read_prompts
    texts = [f"a{c}b" for c in LEGAL_INSIDE]
    p = tmp_path / "p.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps({"description": t}, ensure_ascii=False) + "\r\n"
                                            for t in texts).encode("utf-8"))
    args = build_parser().parse_args(["generate", "--prompts-file", str(p)])
    assert read_prompts(args) == texts
    t = tmp_path / "p.txt"
    t.write_bytes(b"\xef\xbb\xbfone\x0cstill one\r\ntwo\xe2\x80\xa8still two\n")
    args = build_parser().parse_args(["generate", "--prompts-file", str(t)])
    assert read_prompts(args) == ["one\x0cstill one", "two\u2028still two"]


# ----------------------------------------------------------------------------------------- prompt audio
@pytest.mark.parametrize("dtype, scale", [(torch.int16, 32768.0), (torch.int32, 2.0**31), (torch.int8, 128.0)])
def test_integer_pcm_prompt_audio_is_scaled(dtype, scale):
    from magnet_fast.engines.inputs import prompt_audio_tensor
    info = torch.iinfo(dtype)
    pcm = torch.tensor([[info.min, -1, 0, 1, info.max]], dtype=dtype)
    wav, rate = prompt_audio_tensor(pcm, 1, 32000, 10.0)
    assert wav.dtype == torch.float32 and rate == 32000
    assert torch.equal(wav[0, 0], pcm[0].double().div(scale).float())
    assert float(wav.abs().max()) <= 1.0


def test_uint8_pcm_is_offset_binary():
    from magnet_fast.engines.inputs import prompt_audio_tensor
    wav, _ = prompt_audio_tensor(torch.tensor([0, 128, 255], dtype=torch.uint8), 1, 32000, 10.0)
    assert wav.flatten().tolist() == [-1.0, 0.0, 127 / 128]


@pytest.mark.parametrize("bad", [torch.ones(1, 100, dtype=torch.bool), torch.ones(1, 100, dtype=torch.complex64)])
def test_bool_and_complex_prompt_audio_refused(bad, demo_model):
    from magnet_fast.compat import MAGNeT
    from magnet_fast.engines.inputs import prompt_audio_tensor
    with pytest.raises(ParameterError, match="dtype"):
        prompt_audio_tensor(bad, 1, 32000, 10.0)
    compat = MAGNeT.__new__(MAGNeT)
    compat.engine = demo_model
    with pytest.raises(ParameterError, match="dtype"):
        compat.generate_continuation(bad, 32000)


# ----------------------------------------------------------------------------------------- compat steps
@pytest.mark.parametrize("steps", [[20, 10, 10, 10.9], [20.5, 10, 10, 10], ["2", 1, 1, 1], [True, 1, 1, 1], "20",
                                   "2011", b"\x01\x01\x01\x01", {1: 1, 2: 2, 3: 3, 4: 4}, [20, 10, 10, None]])
def test_compat_decoding_steps_strictly_typed(steps, demo_model):
    from magnet_fast.compat import MAGNeT
    m = MAGNeT("demo", demo_model)
    before = dict(m.generation_params)
    with pytest.raises(ParameterError):
        m.set_generation_params(decoding_steps=steps)
    assert m.generation_params == before
    import numpy as np
    m.set_generation_params(decoding_steps=(np.int64(2), 1, 1, 1))          # integer types pass
    assert m.generation_params["decoding_steps"] == [2, 1, 1, 1]


# ----------------------------------------------------------------------------------------- converted cache
@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    import sys
    sys.path.insert(0, str(ROOT / "tests"))
    import fake_hub
    import huggingface_hub.constants as hf_constants
    cache, mf = tmp_path / "hub", tmp_path / "mf"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MAGNET_FAST_CACHE", str(mf))
    monkeypatch.delenv("AUDIOCRAFT_CACHE_DIR", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    fake_hub.add_repo(cache, "facebook/magnet-small-10secs", fake_hub.folder_files(fake_hub.MAGNET_10S))
    return types.SimpleNamespace(cache=cache, converted=mf / "converted")


@pytest.mark.parametrize("damage", ["modify_weights", "truncate_weights", "corrupt_config", "delete_weights"])
def test_converted_cache_verified_and_reconverted(hub_cache, damage):
    from magnet_fast.io import hub
    from magnet_fast.io.files import DIGESTS_FILE
    folder = hub.resolve_model("facebook/magnet-small-10secs")
    recorded = json.loads((folder / DIGESTS_FILE).read_text())["files"]
    assert {"config.json", "model.safetensors"} <= set(recorded)
    good = {n: (folder / n).read_bytes() for n in ("config.json", "model.safetensors")}
    w, c = folder / "model.safetensors", folder / "config.json"
    if damage == "modify_weights":
        data = bytearray(w.read_bytes())
        data[-3] ^= 0x40
        w.write_bytes(bytes(data))
    elif damage == "truncate_weights":
        w.write_bytes(w.read_bytes()[:1000])
    elif damage == "corrupt_config":
        c.write_text("{not json")
    else:
        w.unlink()
    with pytest.warns(UserWarning, match="reconvert"):
        again = hub.resolve_model("facebook/magnet-small-10secs")
    assert again == folder
    assert {n: (folder / n).read_bytes() for n in good} == good
    assert not [p for p in folder.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hub.resolve_model("facebook/magnet-small-10secs") == folder     # healthy now: silent


# ----------------------------------------------------------------------------------------- hybrid
def test_hybrid_prefix_must_be_shorter_than_the_output(tmp_path, capsys):
    from magnet_fast import MagnetFast, MusicGenFast
    from magnet_fast.cli import main
    for seconds, duration in ((5, 2), (2, 2), (1.99, 2)):
        assert main(["generate", "x", "--hybrid", str(MG_DEMO), "--hybrid-seconds", str(seconds), "--duration",
                     str(duration), "--out", str(tmp_path / "o.wav")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "hybrid" in err[0] and "shorter" in err[0], err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        magnet, mg = MagnetFast.from_pretrained(DEMO_MODEL), MusicGenFast.from_pretrained(MG_DEMO)
    with pytest.raises(ParameterError, match="shorter"):
        magnet.generate_tokens(["x"], hybrid=mg, hybrid_seconds=5.0, duration=2.0, decoding_steps=[1, 1, 1, 1])
    assert not (tmp_path / "o.wav").exists()


# ----------------------------------------------------------------------------------------- minor
def test_batch_out_empty_and_tokens_only_wav_refused(tmp_path, capsys, monkeypatch):
    from magnet_fast.cli import main
    monkeypatch.chdir(tmp_path)
    job = write_job(tmp_path / "job.jsonl", [{"id": "a", "text": "x"}])
    assert main(["batch", str(job), "--out", "", "--steps", "1,1,1,1"]) == 2
    assert "--out" in capsys.readouterr().err
    assert not (tmp_path / "manifest.jsonl").exists() and not list(tmp_path.glob("*.wav"))
    for out in ("x.wav", "x.WAV", "x.flac"):
        assert main(["generate", "x", "--tokens-only", "--out", out]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--tokens-only" in err[0]
        assert not (tmp_path / out).exists()


def test_nan_infinity_and_huge_values_never_reach_the_manifest(tmp_path):
    from magnet_fast.jobs import run_job

    def model():
        raise AssertionError("not loaded: every line fails")
    lines = ['{"id": "n", "text": "x", "temperature": NaN}', '{"id": "i", "text": "x", "top_p": Infinity}',
             '{"id": "m", "text": "x", "top_p": -Infinity}',
             json.dumps({"id": "big", "text": "x", "seed": "9" * 200})]
    job = tmp_path / "job.jsonl"
    job.write_text("\n".join(lines) + "\n")
    summary = run_job(job, tmp_path / "out", model, defaults=FAST, warn=_quiet)
    assert summary.failed == 4
    raw = (tmp_path / "out" / jobs.MANIFEST_NAME).read_text()
    for line in raw.splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in the manifest"))
        assert len(line) < 4000


def test_huge_echoed_error_is_capped(tmp_path, demo_model):
    job = write_job(tmp_path / "job.jsonl", [{"id": "s", "text": "x", "decoding_steps": list(range(100000))}])
    summary = jobs.run_job(job, tmp_path / "out", demo_model, warn=_quiet)
    assert summary.failed == 1
    rec = [json.loads(x) for x in (tmp_path / "out" / jobs.MANIFEST_NAME).read_text().splitlines()][-1]
    assert rec["status"] == "failed" and len(rec["error"]) <= 1100
