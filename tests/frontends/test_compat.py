"""magnet_fast.compat (audiocraft 1.3.0's generation API) and magnet_fast.io.hub (names -> converted folders).

Offline, against a fake Hugging Face cache of tiny audiocraft-format checkpoints under the released names
(tests/fake_hub.py). Parity: the compat API, seeded with torch.manual_seed like an audiocraft user, gives the
tokens audiocraft itself produced for the same settings (tests/fixtures/ac_ref*, ac_musicgen).
"""
from __future__ import annotations

import ast
import hashlib
import inspect
import json
import math
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fake_hub  # noqa: E402

import magnet_fast  # noqa: E402
from magnet_fast import compat  # noqa: E402
from magnet_fast.errors import CheckpointError, ConfigError, ParameterError  # noqa: E402
from magnet_fast.io import hub  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
AUDIOCRAFT_SOURCES = [REPO / ".ac-dl" / "audiocraft-1.3.0" / "audiocraft",
                      *sorted((REPO / ".venv-audiocraft" / "lib").glob("python3*/site-packages/audiocraft"))]
HAS_MUSICGEN = hasattr(magnet_fast, "MusicGenFast") and fake_hub.MUSICGEN.is_dir()


# ============================================================================================ fixtures
def _point_at(mp: pytest.MonkeyPatch, cache: Path, mf_cache: Path) -> None:
    import huggingface_hub.constants as hf_constants
    mp.setenv("HF_HUB_CACHE", str(cache))
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("MAGNET_FAST_CACHE", str(mf_cache))
    mp.delenv("AUDIOCRAFT_CACHE_DIR", raising=False)
    mp.setattr(hf_constants, "HF_HUB_CACHE", str(cache))      # read at import time by huggingface_hub


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("compat_hub")
    cache = fake_hub.build(root, musicgen=True)
    mp = pytest.MonkeyPatch()
    _point_at(mp, cache, root / "magnet_fast_cache")
    yield types.SimpleNamespace(root=root, cache=cache, converted=root / "magnet_fast_cache" / "converted")
    mp.undo()


@pytest.fixture
def own_hub(tmp_path, monkeypatch):
    """An empty hub cache and converted cache of this test's own (add repos with fake_hub.add_repo)."""
    cache, mf = tmp_path / "hub", tmp_path / "mf"
    cache.mkdir()
    _point_at(monkeypatch, cache, mf)
    return types.SimpleNamespace(cache=cache, converted=mf / "converted")


_models: dict = {}


def _load(cls, name: str, **kw):
    key = (cls.__name__, name, tuple(sorted(kw.items())))
    if key not in _models:
        _models[key] = cls.get_pretrained(name, **kw)
    return _models[key]


@pytest.fixture(scope="module")
def magnet10(fake):
    return _load(compat.MAGNeT, "facebook/magnet-small-10secs")


@pytest.fixture(scope="module")
def magnet30(fake):
    return _load(compat.MAGNeT, "facebook/magnet-small-30secs")


def _reference(folder: str):
    from safetensors.torch import load_file
    return json.loads((FIXTURES / folder / "reference.json").read_text()), load_file(
        str(FIXTURES / folder / "reference.safetensors"))


def _audiocraft_signature(relpath: str, cls: str | None, func: str):
    """(names, defaults) of audiocraft 1.3.0's [cls.]func read from its source (sdist or oracle venv); None
    when neither is here."""
    for root in AUDIOCRAFT_SOURCES:
        path = root / relpath
        if not path.is_file():
            continue
        body = ast.parse(path.read_text()).body
        if cls is not None:
            body = next(n for n in body if isinstance(n, ast.ClassDef) and n.name == cls).body
        return _ast_params(next(n for n in body if isinstance(n, ast.FunctionDef) and n.name == func))
    return None


def _ast_params(fn: ast.FunctionDef):
    args = [a.arg for a in fn.args.args if a.arg != "self"]
    defaults = [ast.literal_eval(d) for d in fn.args.defaults]
    return args, dict(zip(args[len(args) - len(defaults):], defaults, strict=True))


def _our_params(fn):
    """(positional names, defaults) of fn; keyword-only extras (attention=, allow_download=) are ours."""
    sig = inspect.signature(fn)
    ps = [p for p in sig.parameters.values() if p.name != "self" and p.kind is not p.KEYWORD_ONLY]
    norm = {p.name: (list(p.default) if isinstance(p.default, tuple) else p.default)
            for p in ps if p.default is not p.empty}
    return [p.name for p in ps], norm


# ============================================================================================ signatures
MAGNET_PARAMS = (["use_sampling", "top_k", "top_p", "temperature", "max_cfg_coef", "min_cfg_coef", "decoding_steps",
                  "span_arrangement"],
                 {"use_sampling": True, "top_k": 0, "top_p": 0.9, "temperature": 3.0, "max_cfg_coef": 10.0,
                  "min_cfg_coef": 1.0, "decoding_steps": [20, 10, 10, 10], "span_arrangement": "nonoverlap"})
MUSICGEN_PARAMS = (["use_sampling", "top_k", "top_p", "temperature", "duration", "cfg_coef", "two_step_cfg",
                    "extend_stride"],
                   {"use_sampling": True, "top_k": 250, "top_p": 0.0, "temperature": 1.0, "duration": 30.0,
                    "cfg_coef": 3.0, "two_step_cfg": False, "extend_stride": 18})
AUDIO_WRITE_PARAMS = (["stem_name", "wav", "sample_rate", "format", "mp3_rate", "ogg_rate", "normalize", "strategy",
                       "peak_clip_headroom_db", "rms_headroom_db", "loudness_headroom_db", "loudness_compressor",
                       "log_clipping", "make_parent_dir", "add_suffix"],
                      {"format": "wav", "mp3_rate": 320, "ogg_rate": None, "normalize": True, "strategy": "peak",
                       "peak_clip_headroom_db": 1, "rms_headroom_db": 18, "loudness_headroom_db": 14,
                       "loudness_compressor": False, "log_clipping": True, "make_parent_dir": True,
                       "add_suffix": True})


@pytest.mark.parametrize("ours, expected, source", [
    (compat.MAGNeT.set_generation_params, MAGNET_PARAMS, ("models/magnet.py", "MAGNeT", "set_generation_params")),
    (compat.MusicGen.set_generation_params, MUSICGEN_PARAMS,
     ("models/musicgen.py", "MusicGen", "set_generation_params")),
    (compat.audio_write, AUDIO_WRITE_PARAMS, ("data/audio.py", None, "audio_write")),
], ids=["MAGNeT.set_generation_params", "MusicGen.set_generation_params", "audio_write"])
def test_signatures_are_audiocrafts(ours, expected, source):
    """Same keywords, order and defaults as audiocraft 1.3.0 (and as its source says, when it is here)."""
    assert _our_params(ours) == expected
    upstream = _audiocraft_signature(*source)
    if upstream is not None:
        assert _our_params(ours) == upstream


def test_generation_signatures():
    for name, params in (("generate", ["descriptions", "progress", "return_tokens"]),
                         ("generate_unconditional", ["num_samples", "progress", "return_tokens"]),
                         ("generate_continuation", ["prompt", "prompt_sample_rate", "descriptions", "progress",
                                                    "return_tokens"]),
                         ("set_custom_progress_callback", ["progress_callback"])):
        for cls in (compat.MAGNeT, compat.MusicGen):
            assert _our_params(getattr(cls, name))[0] == params, (cls, name)
    for cls, default in ((compat.MAGNeT, "facebook/magnet-small-10secs"), (compat.MusicGen, "facebook/musicgen-melody")):
        names, defaults = _our_params(cls.get_pretrained)
        assert names == ["name", "device"] and defaults == {"name": default, "device": None}


# ============================================================================================ the API
def test_magnet_surface(magnet10):
    m = magnet10
    assert isinstance(m.engine, magnet_fast.MagnetFast)
    assert m.generation_params == {"use_sampling": True, "temp": 3.0, "top_k": 0, "top_p": 0.9, "max_cfg_coef": 10.0,
                                   "min_cfg_coef": 1.0, "decoding_steps": [20, 10, 10, 10],
                                   "span_arrangement": "nonoverlap"}
    assert (m.sample_rate, m.frame_rate, m.audio_channels, m.max_duration, m.duration) == (32000, 50, 1, 10, 10)
    assert m.compression_model.sample_rate == 32000 and m.compression_model.cardinality == 512
    assert m.compression_model.num_codebooks == 4 and m.compression_model.channels == 1
    assert m.lm.cfg.dataset.segment_duration == 10 and m.lm.cfg["transformer_lm"]["card"] == 512
    assert m.lm.cfg.conditioners.description.t5.name == "t5-base"
    assert m.device == torch.device("cpu") and m.engine.attention_backend == "exact"     # parity on CPU
    with pytest.raises(AttributeError, match="segment_duration"):
        m.lm.cfg.dataset.nonexistent_field    # noqa: B018
    with pytest.raises(AttributeError, match="read-only"):
        m.lm.cfg.dataset.segment_duration = 5


def test_set_generation_params_checks_now(magnet10):
    m = magnet10
    before = dict(m.generation_params)
    for bad in ({"top_p": 1.5}, {"span_arrangement": "zigzag"}, {"decoding_steps": [20, 10]},
                {"decoding_steps": ["a", 1, 1, 1]}, {"temperature": -1.0}):
        with pytest.raises(ParameterError):
            m.set_generation_params(**bad)
        assert m.generation_params == before, bad
    m.set_generation_params(decoding_steps=[4.0, 2, 2, 2], span_arrangement="stride1")
    assert m.generation_params["decoding_steps"] == [4, 2, 2, 2]
    m.set_generation_params()
    assert m.generation_params == before


def test_attention_switch(fake):
    fast = compat.MAGNeT.get_pretrained("facebook/magnet-small-10secs", attention="windowed")
    assert fast.engine.attention_backend == "windowed"
    fast.set_attention("exact")
    assert fast.engine.attention_backend == "exact"


def _runs(folder: str):
    meta, _ = _reference(folder)
    # what audiocraft's MAGNeT.generate can express: no token prompt, its lm.generate defaults for these two
    return [(folder, name) for name, run in meta["runs"].items()
            if not run["prompt"] and run["generate_kwargs"]["anneal_temp"]
            and run["generate_kwargs"]["span_scoring"] == "max"]


# every expressible 10 s run; of the 30 s ones (1500 frames, slow on CPU) the 3-row top-k batch with a null row
@pytest.mark.parametrize("folder, run_name", _runs("ac_ref") + [r for r in _runs("ac_ref_30s") if r[1] == "mixed_batch"])
def test_tokens_match_audiocraft(folder, run_name, magnet10, magnet30):
    """torch.manual_seed(s); model.generate(..., return_tokens=True) == audiocraft's tokens for seed s, with the
    same RNG consumption; the audio is the codec's decoding of those tokens."""
    model = magnet10 if folder == "ac_ref" else magnet30
    meta, tensors = _reference(folder)
    run = meta["runs"][run_name]
    kw = run["generate_kwargs"]
    model.set_generation_params(use_sampling=kw["use_sampling"], top_k=kw["top_k"], top_p=kw["top_p"],
                                temperature=kw["temp"], max_cfg_coef=kw["max_cfg_coef"],
                                min_cfg_coef=kw["min_cfg_coef"], decoding_steps=kw["decoding_steps"],
                                span_arrangement=kw["span_arrangement"])
    torch.manual_seed(run["seed_before_generate"])
    if all(d is None for d in run["descriptions"]):
        wav, tokens = model.generate_unconditional(len(run["descriptions"]), return_tokens=True)
    else:
        wav, tokens = model.generate(run["descriptions"], return_tokens=True)
    probe = torch.rand(1).item()
    expected = tensors[f"run.{run_name}.tokens"].long()
    assert tokens.shape == expected.shape and tokens.dtype == torch.int64
    assert torch.equal(tokens, expected), f"{(tokens != expected).float().mean().item():.3f} of tokens differ"
    assert probe == run["rng_probe_after"], "RNG consumption differs from audiocraft"
    assert wav.shape == (tokens.shape[0], 1, tokens.shape[-1] * 640) and wav.dtype == torch.float32
    assert torch.equal(wav, model.engine.decode(tokens))
    wav.mul_(1.0)                              # an ordinary tensor, as audiocraft returns (not an inference one)


def test_other_seed_other_tokens(magnet10):
    """The comparison above can fail: another seed gives other tokens."""
    meta, tensors = _reference("ac_ref")
    run = meta["runs"]["topk"]
    kw = run["generate_kwargs"]
    magnet10.set_generation_params(top_k=kw["top_k"], top_p=kw["top_p"], decoding_steps=kw["decoding_steps"])
    torch.manual_seed(run["seed_before_generate"] + 1)
    tokens = magnet10.generate(run["descriptions"], return_tokens=True)[1]
    assert not torch.equal(tokens, tensors["run.topk.tokens"].long())


def test_generate_continuation(magnet10):
    m = magnet10
    m.set_generation_params(decoding_steps=[3, 2, 2, 2])
    g = torch.Generator().manual_seed(3)
    prompt = 0.3 * torch.randn(2, 2, 44100, generator=g)          # 1 s of stereo at 44.1 kHz
    torch.manual_seed(7)
    wav, tokens = m.generate_continuation(prompt, 44100, ["calm piano", None], return_tokens=True)
    encoded = m.engine.prompt_tokens(prompt, 2, 44100)               # resampled to 32 kHz, mixed to mono
    assert tokens.shape == (2, 4, 498) and torch.equal(tokens[..., : encoded.shape[-1]], encoded)
    torch.manual_seed(7)
    gp = m.generation_params                                       # audiocraft's names -> the engine's
    direct = m.engine.generate_tokens(["calm piano", None], prompt=encoded, use_sampling=gp["use_sampling"],
                                      temperature=gp["temp"], top_k=gp["top_k"], top_p=gp["top_p"],
                                      max_cfg_coef=gp["max_cfg_coef"], min_cfg_coef=gp["min_cfg_coef"],
                                      decoding_steps=gp["decoding_steps"], span_arrangement=gp["span_arrangement"],
                                      anneal_temp=True, span_scoring="max")
    assert torch.equal(tokens, direct)
    assert wav.shape == (2, 1, 498 * 640)
    # [C, T] is one row; descriptions default to unconditional
    one = m.generate_continuation(prompt[0], 44100.0)
    assert one.shape == (1, 1, 498 * 640)
    with pytest.raises(ParameterError, match="3 dimensions"):
        m.generate_continuation(prompt[0, 0], 44100)
    with pytest.raises(ParameterError, match="doesn't match"):
        m.generate_continuation(prompt, 44100, ["one"])
    with pytest.raises(ParameterError, match="shorter than"):
        m.generate_continuation(torch.zeros(1, 1, 32000 * 11), 32000)


def test_progress(magnet10, capsys):
    m = magnet10
    m.set_generation_params(decoding_steps=[2, 1, 1, 1])
    calls = []
    m.set_custom_progress_callback(lambda done, total: calls.append((done, total)))
    m.generate(["calm piano"], progress=False)
    assert calls == []                           # audiocraft reports only with progress=True
    m.generate(["calm piano"], progress=True)
    assert calls == [(i, 5) for i in range(1, 6)]
    m.set_custom_progress_callback(None)
    capsys.readouterr()
    m.generate_unconditional(1, progress=True)
    assert "     5 /      5" in capsys.readouterr().out      # audiocraft's default display
    with pytest.raises(ParameterError):
        m.set_custom_progress_callback("not callable")


def test_bad_inputs(magnet10):
    with pytest.raises(ParameterError):
        magnet10.generate("a string, not a list")
    with pytest.raises(ParameterError):
        magnet10.generate([])
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ParameterError):
            magnet10.generate_unconditional(bad)


# ============================================================================================ names
def test_hub_name_converted_once_and_reused(fake, monkeypatch):
    convert_module = sys.modules["magnet_fast.io.convert"]      # the package (magnet_fast.io.convert is the function)
    first = hub.resolve_model("facebook/magnet-small-10secs")
    calls = []
    real = convert_module.convert
    monkeypatch.setattr(convert_module, "convert", lambda *a, **k: calls.append(a) or real(*a, **k))
    again = hub.resolve_model("facebook/magnet-small-10secs")
    assert again == first and calls == []
    assert first.parent == fake.converted and first.name.startswith("facebook--magnet-small-10secs-")
    cfg = json.loads((first / "config.json").read_text())
    sha = hashlib.sha256((fake_hub.MAGNET_10S / "state_dict.bin").read_bytes()).hexdigest()
    assert cfg["source"]["sha256"] == sha and cfg["codec"]["pretrained"] == "facebook/encodec_32khz"
    assert not [p for p in fake.converted.iterdir() if ".tmp-" in p.name]          # atomic: no leftovers


def test_changed_source_converts_again(own_hub):
    fake_hub.add_repo(own_hub.cache, "facebook/magnet-small-10secs", fake_hub.folder_files(fake_hub.MAGNET_10S))
    old = hub.resolve_model("facebook/magnet-small-10secs")
    pkg = torch.load(fake_hub.MAGNET_10S / "state_dict.bin", weights_only=True)
    pkg["best_state"]["out_norm.bias"] = pkg["best_state"]["out_norm.bias"] + 1
    fake_hub.add_repo(own_hub.cache, "facebook/magnet-small-10secs",
                      {"state_dict.bin": fake_hub.saved(pkg),
                       "compression_state_dict.bin": fake_hub.MAGNET_10S / "compression_state_dict.bin"})
    new = hub.resolve_model("facebook/magnet-small-10secs")
    assert new != old and old.is_dir() and new.is_dir()
    assert hub.is_converted(new)
    from safetensors.torch import load_file
    assert torch.equal(load_file(str(new / "model.safetensors"))["out_norm.bias"],
                       load_file(str(old / "model.safetensors"))["out_norm.bias"] + 1)


def test_revisions_split_across_snapshots(own_hub):
    """refs/main's snapshot links each file from wherever its blob is; a file only in an older snapshot is
    not the current revision's and counts as missing."""
    fake_hub.add_repo(own_hub.cache, "facebook/magnet-small-10secs",
                      {"state_dict.bin": fake_hub.MAGNET_10S / "state_dict.bin"}, commit="a" * 40)
    with pytest.raises(CheckpointError, match="compression_state_dict.bin missing"):
        hub.resolve_model("facebook/magnet-small-10secs")


def test_local_export_folder_and_converted_folder(own_hub, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(fake_hub.MAGNET_10S, export)
    out = hub.resolve_model(export)
    assert out.parent == own_hub.converted and out.name.startswith("export-") and hub.is_converted(out)
    assert hub.resolve_model(str(export / "state_dict.bin")) == out         # the file itself: same
    assert hub.resolve_model(out) == out                                     # a converted folder: as it is
    memo = json.loads((own_hub.converted / hub.DIGESTS_NAME).read_text())
    assert len(memo) == 2                        # each source file hashed once, remembered by its stat
    shutil.copy(fake_hub.MAGNET_30S / "state_dict.bin", export / "state_dict.bin")       # the export changes
    changed = hub.resolve_model(export)
    assert changed != out and json.loads((changed / "config.json").read_text())["segment_duration"] == 30


@pytest.mark.parametrize("name, match", [
    ("facebook/magnet-medium-10secs", r"not in the local Hugging Face cache.*huggingface-cli download "
                                      r"facebook/magnet-medium-10secs state_dict.bin compression_state_dict.bin"),
    ("bad name!", "neither a folder nor a valid Hugging Face model name"),
    ("./no/such/folder", "no such file or folder"),
    ("", "must be a Hugging Face model name"),
])
def test_bad_names_one_clear_error(fake, name, match):
    with pytest.raises(CheckpointError, match=match) as e:
        compat.MAGNeT.get_pretrained(name)
    assert "\n" not in str(e.value)


def test_not_a_model_folder(own_hub, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither an audiocraft export"):
        hub.resolve_model(tmp_path / "empty")
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(fake_hub.MAGNET_10S / "state_dict.bin", half)
    with pytest.raises(CheckpointError, match="no compression_state_dict.bin"):
        hub.resolve_model(half)
    other = Path(shutil.copy(fake_hub.MAGNET_10S / "state_dict.bin", tmp_path / "other.bin"))
    with pytest.raises(CheckpointError, match="is a file"):
        hub.resolve_model(other)


def test_missing_t5_and_codec_name_the_cache(own_hub):
    """T5 and the pointer codec come from the same local cache; each missing one is one error with the fix."""
    fake_hub.add_repo(own_hub.cache, "facebook/magnet-small-10secs", fake_hub.folder_files(fake_hub.MAGNET_10S))
    with pytest.raises(CheckpointError, match="t5-base") as e:
        compat.MAGNeT.get_pretrained("facebook/magnet-small-10secs")
    assert "\n" not in str(e.value)
    fake_hub.add_repo(own_hub.cache, "t5-base", fake_hub.folder_files(fake_hub.T5_TINY))
    with pytest.raises(CheckpointError, match="facebook/encodec_32khz"):
        compat.MAGNeT.get_pretrained("facebook/magnet-small-10secs")


def test_audiocraft_cache_dir_is_searched(own_hub, tmp_path, monkeypatch):
    """audiocraft downloads into AUDIOCRAFT_CACHE_DIR when it is set: look there too."""
    ac_cache = tmp_path / "ac_cache"
    fake_hub.add_repo(ac_cache, "facebook/magnet-small-10secs", fake_hub.folder_files(fake_hub.MAGNET_10S))
    with pytest.raises(CheckpointError):
        hub.resolve_model("facebook/magnet-small-10secs")
    monkeypatch.setenv("AUDIOCRAFT_CACHE_DIR", str(ac_cache))
    assert hub.is_converted(hub.resolve_model("facebook/magnet-small-10secs"))


def test_files_from_two_caches_are_staged(own_hub, tmp_path, monkeypatch):
    """state_dict.bin in AUDIOCRAFT_CACHE_DIR, compression_state_dict.bin in the default cache: converted
    from links to both, and no staging folder is left behind."""
    ac_cache = tmp_path / "ac_cache"
    fake_hub.add_repo(ac_cache, "facebook/magnet-small-10secs",
                      {"state_dict.bin": fake_hub.MAGNET_10S / "state_dict.bin"})
    fake_hub.add_repo(own_hub.cache, "facebook/magnet-small-10secs",
                      {"compression_state_dict.bin": fake_hub.MAGNET_10S / "compression_state_dict.bin"})
    monkeypatch.setenv("AUDIOCRAFT_CACHE_DIR", str(ac_cache))
    out = hub.resolve_model("facebook/magnet-small-10secs")
    assert hub.is_converted(out) and json.loads((out / "config.json").read_text())["codec"]["kind"] == "pointer"
    assert sorted(p.name for p in own_hub.converted.iterdir()) == [out.name]


def test_allow_download_fetches_missing_files(own_hub, monkeypatch):
    import huggingface_hub
    fetched = []

    def fake_download(repo_id, filename, cache_dir=None, **kw):
        fetched.append((repo_id, filename))
        snapshot = fake_hub.add_repo(own_hub.cache, repo_id, {filename: fake_hub.MAGNET_10S / filename},
                                     commit="b" * 40)
        return str(snapshot / filename)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with pytest.raises(CheckpointError):
        hub.resolve_model("facebook/magnet-small-10secs")                  # off by default: nothing fetched
    assert fetched == []
    out = hub.resolve_model("facebook/magnet-small-10secs", allow_download=True)
    assert sorted(fetched) == [("facebook/magnet-small-10secs", n) for n in sorted(hub.SOURCE_FILES)]
    assert hub.is_converted(out)


def test_unsupported_musicgen_variants():
    for name, what in (("facebook/musicgen-melody", "melody"), ("facebook/musicgen-stereo-small", "stereo"),
                       ("facebook/musicgen-stereo-melody-large", "melody"), ("facebook/musicgen-style", "style")):
        with pytest.raises(ConfigError, match=what) as e:
            compat.MusicGen.get_pretrained(name)
        assert "\n" not in str(e.value)
    with pytest.warns(UserWarning, match="deprecated checkpoint mapping"), pytest.raises(ConfigError, match="melody"):
        compat.MusicGen.get_pretrained("melody")             # audiocraft's short name, mapped then refused
    with pytest.raises(ConfigError, match="melody"):
        compat.MusicGen.get_pretrained()                     # audiocraft's default is the melody model
    with pytest.raises(ConfigError, match="debug"):
        compat.MusicGen.get_pretrained("debug")
    with pytest.raises(ConfigError, match="MultiBandDiffusion"):
        compat.MultiBandDiffusion.get_mbd_musicgen()


# ============================================================================================ MusicGen
@pytest.mark.skipif(not HAS_MUSICGEN, reason="needs magnet_fast.MusicGenFast and tests/fixtures/ac_musicgen")
def test_wrong_class_for_the_model(fake):
    with pytest.raises(ConfigError, match="MusicGen.get_pretrained"):
        compat.MAGNeT.get_pretrained("facebook/musicgen-small")
    with pytest.raises(ConfigError, match="MAGNeT.get_pretrained"):
        compat.MusicGen.get_pretrained("facebook/magnet-small-10secs")


class FakeARengine:
    """The announced MusicGenFast surface, recording calls; the frames call i generates hold the value i."""

    def __init__(self, max_duration=30.0):
        self.calls = []
        self.duration = max_duration
        self.device = torch.device("cpu")
        self.config = types.SimpleNamespace(kind="musicgen", n_q=4, card=512, t5_name="t5-base", dim=8,
                                            num_heads=1, num_layers=1, delays=(0, 1, 2, 3))
        self.codec = types.SimpleNamespace(sample_rate=32000, frame_rate=50, channels=1, card=512, n_q=4)
        self.sample_rate, self.frame_rate = 32000, 50

    def load_codec(self):
        return self.codec

    def params(self, **kw):
        if kw["top_k"] < 0 or kw["duration"] > self.duration:
            raise ParameterError("bad")

    def generate_tokens(self, descriptions, *, prompt=None, duration=None, use_sampling=None, temperature=None,
                        top_k=None, top_p=None, cfg_coef=None, two_step_cfg=None, progress=False, seed=None,
                        generator=None, max_batch=None, callback=None):
        self.calls.append({"prompt": None if prompt is None else prompt.clone(), "duration": duration,
                           "temperature": temperature, "top_k": top_k, "cfg_coef": cfg_coef, "progress": progress,
                           "two_step_cfg": two_step_cfg})
        n = int(duration * 50)
        p = 0 if prompt is None else prompt.shape[-1]
        new = torch.full((len(descriptions), 4, n - p), len(self.calls), dtype=torch.long)
        for i in range(n - p):                    # callback(done, total) after every step, as MusicGenFast
            if callback is not None:
                callback(i + 1, n - p)
        return new if prompt is None else torch.cat([prompt, new], -1)

    def decode(self, tokens):
        return torch.zeros(tokens.shape[0], 1, tokens.shape[-1] * 640)

    def prompt_tokens(self, prompt, batch, rate):
        return torch.zeros(batch, 4, int(prompt.shape[-1] / rate * 50) + 1, dtype=torch.long)


def test_musicgen_settings_and_extension():
    engine = FakeARengine()
    m = compat.MusicGen("facebook/musicgen-small", engine)
    assert m.generation_params == {"use_sampling": True, "temp": 1.0, "top_k": 250, "top_p": 0.0, "cfg_coef": 3.0,
                                   "two_step_cfg": False}
    assert (m.duration, m.extend_stride, m.max_duration) == (15, 18, 30)
    m.generate(["x"])
    assert engine.calls[-1]["duration"] == 15 and engine.calls[-1]["top_k"] == 250
    # 40 s > 30 s: audiocraft's windows: 30 s, then 22 s continuing the last 12 s (stride 18 s)
    m.set_generation_params(duration=40, temperature=0.5, cfg_coef=5.0)
    engine.calls.clear()
    wav, tokens = m.generate(["x", "y"], return_tokens=True)
    assert [c["duration"] for c in engine.calls] == [30.0, 22.0]
    assert engine.calls[0]["prompt"] is None and engine.calls[1]["prompt"].shape[-1] == 600
    assert torch.equal(engine.calls[1]["prompt"], torch.ones(2, 4, 600, dtype=torch.long))
    assert tokens.shape == (2, 4, 2000) and wav.shape == (2, 1, 2000 * 640)
    assert (tokens[..., :1500] == 1).all() and (tokens[..., 1500:] == 2).all()
    assert all(c["temperature"] == 0.5 and c["cfg_coef"] == 5.0 for c in engine.calls)
    for bad in ({"extend_stride": 30}, {"duration": 0}, {"duration": float("nan")}, {"top_k": -1}):
        with pytest.raises(ParameterError):
            m.set_generation_params(**bad)
    with pytest.raises(ConfigError, match="melody"):
        m.generate_with_chroma(["x"], torch.zeros(1, 1, 100), 32000)
    m.set_generation_params(duration=2)
    with pytest.raises(ParameterError, match="shorter than"):
        m.generate_continuation(torch.zeros(1, 1, 32000 * 3), 32000)


def test_musicgen_progress(capsys):
    engine = FakeARengine()
    m = compat.MusicGen("facebook/musicgen-small", engine)
    m.set_generation_params(duration=1)
    m.generate(["x"], progress=True)
    assert engine.calls[-1]["progress"] is False             # audiocraft's display, not the engine's bar
    assert capsys.readouterr().out.split("\r")[-2] == f"{50: 6d} / {50: 6d}"
    calls = []
    m.set_custom_progress_callback(lambda d, t: calls.append((d, t)))
    m.generate(["x"], progress=True)
    assert calls == [(i, 50) for i in range(1, 51)]          # the engine's callback=: every step
    calls.clear()
    m.generate(["x"])
    assert calls == []                                       # progress=False: no report
    m.set_generation_params(duration=40)                     # long-form: counted from each window's start
    m.generate(["x"], progress=True)
    assert calls[:1500] == [(i, 1500) for i in range(1, 1501)]
    assert calls[1500:] == [(900 + i, 500) for i in range(1, 501)]


@pytest.mark.skipif(not HAS_MUSICGEN, reason="needs magnet_fast.MusicGenFast and tests/fixtures/ac_musicgen")
def test_musicgen_tokens_match_audiocraft(fake):
    model = _load(compat.MusicGen, "facebook/musicgen-small")
    assert isinstance(model.engine, magnet_fast.MusicGenFast) and model.max_duration == 30
    meta, tensors = _reference("ac_musicgen")
    failures = []
    for name, run in meta["runs"].items():
        if run["prompt"] is not None or run["max_gen_len"] != 50:
            continue
        kw = run["generate_kwargs"]
        model.set_generation_params(use_sampling=kw["use_sampling"], top_k=kw["top_k"], top_p=kw["top_p"],
                                    temperature=kw["temp"], duration=1.0, cfg_coef=kw["cfg_coef"],
                                    two_step_cfg=kw["two_step_cfg"])
        torch.manual_seed(run["seed_before_generate"])
        if all(d is None for d in run["descriptions"]):
            tokens = model.generate_unconditional(len(run["descriptions"]), return_tokens=True)[1]
        else:
            tokens = model.generate(run["descriptions"], return_tokens=True)[1]
        if not torch.equal(tokens, tensors[f"run/{name}/tokens"].long()):
            failures.append(name)
        elif torch.rand(1).item() != run["rng_probe_after"]:
            failures.append(f"{name}: RNG consumption")
    assert not failures, failures


# ============================================================================================ audio out
K_48K = (([1.53512485958697, -2.69169618940638, 1.19839281085285], [1.0, -1.69065929318241, 0.73248077421585]),
         ([1.0, -2.0, 1.0], [1.0, -1.99004745483398, 0.99007225036621]))


def reference_loudness(x: np.ndarray, rate: int = 48000, gate: bool = True) -> float:
    """An independent BS.1770-4 integrated loudness at 48 kHz: time-domain biquads (scipy), plain loops."""
    from scipy.signal import lfilter
    assert rate == 48000
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    for b, a in K_48K:
        x = lfilter(b, a, x, axis=-1)
    size, step = 19200, 4800
    blocks = [x[:, s:s + size] for s in range(0, x.shape[1] - size + 1, step)]
    z = np.array([[np.mean(ch ** 2) for ch in blk] for blk in blocks])          # [J, C]
    weights = np.array([1.0, 1.0, 1.0, 1.41, 1.41])[: x.shape[0]]
    levels = np.array([-0.691 + 10 * np.log10(np.sum(weights * zj)) for zj in z])
    gated = [j for j in range(len(blocks)) if levels[j] > -70 or not gate]
    if not gate:
        return float(-0.691 + 10 * np.log10(np.sum(weights * z.mean(0))))
    rel = -0.691 + 10 * np.log10(np.sum(weights * z[gated].mean(0))) - 10
    gated = [j for j in gated if levels[j] > rel]
    return float(-0.691 + 10 * np.log10(np.sum(weights * z[gated].mean(0))))


def _music(rate: int, seconds: float = 3.0, seed: int = 0) -> torch.Tensor:
    """A deterministic stereo test signal: tones from 60 Hz to 6 kHz plus noise, a quiet second half."""
    t = torch.arange(int(rate * seconds), dtype=torch.float64) / rate
    g = torch.Generator().manual_seed(seed)
    x = sum(a * torch.sin(2 * math.pi * f * t + p) for f, a, p in ((60, 0.3, 0.1), (440, 0.2, 0.5), (1000, 0.1, 1.0),
                                                               (6000, 0.05, 2.0)))
    x = torch.stack([x, 0.5 * x]) + 0.01 * torch.randn(2, t.numel(), generator=g, dtype=torch.float64)
    x[:, t.numel() // 2:] *= 0.05
    return x.float()


def test_loudness_known_answer():
    """A 997 Hz sine at 0 dBFS in one channel reads -3.01 LKFS (BS.1770-4); amplitude 0.5: -9.03."""
    t = torch.arange(48000 * 5, dtype=torch.float64) / 48000
    sine = 0.5 * torch.sin(2 * math.pi * 997 * t)
    assert compat.loudness(sine, 48000) == pytest.approx(-3.01 + 20 * math.log10(0.5), abs=0.02)
    assert compat.loudness(torch.zeros(1, 48000), 48000) == float("-inf")


def test_loudness_matches_an_independent_implementation():
    x48 = _music(48000)
    ours, ref = compat.loudness(x48, 48000), reference_loudness(x48.numpy())
    assert ours == pytest.approx(ref, abs=0.02)
    # gating matters here: the quiet half (-26 dB) falls under the relative gate
    assert ref > reference_loudness(x48.numpy(), gate=False) + 2
    assert abs(ref - reference_loudness(x48[:, : x48.shape[1] // 2].numpy())) < 0.5
    # other rates: the same sound sampled at 32 / 16 kHz reads (about) the same
    for rate in (32000, 16000):
        assert compat.loudness(_music(rate), rate) == pytest.approx(ref, abs=0.1)


def _read(path: Path):
    import soundfile as sf
    data, rate = sf.read(str(path), dtype="float64", always_2d=True)
    return torch.from_numpy(data.T), rate


def test_audio_write_strategies(tmp_path, capsys):
    x = _music(48000)
    lsb = 2 / 32767
    path = compat.audio_write(tmp_path / "peak", x, 48000)
    assert path == tmp_path / "peak.wav"
    y, rate = _read(path)
    assert rate == 48000 and y.shape == x.shape
    assert y.abs().max().item() == pytest.approx(10 ** (-1 / 20), abs=lsb)

    quiet = 0.1 * x / x.abs().max()
    y, _ = _read(compat.audio_write(tmp_path / "quiet", quiet, 48000, normalize=False))
    assert torch.allclose(y, quiet.double(), atol=lsb)                       # normalize=False: left alone
    y, _ = _read(compat.audio_write(tmp_path / "loud", 4 * x, 48000, normalize=False))
    assert y.abs().max().item() == pytest.approx(10 ** (-1 / 20), abs=lsb)   # ... unless it would clip

    y, _ = _read(compat.audio_write(tmp_path / "clip", 4 * x, 48000, strategy="clip", peak_clip_headroom_db=3))
    assert y.abs().max().item() == pytest.approx(10 ** (-3 / 20), abs=lsb)
    assert torch.allclose(y, (4 * x).double().clamp(-10 ** (-3 / 20), 10 ** (-3 / 20)), atol=lsb)

    y, _ = _read(compat.audio_write(tmp_path / "rms", x, 48000, strategy="rms", rms_headroom_db=20))
    assert y.mean(0).pow(2).mean().sqrt().item() == pytest.approx(10 ** (-20 / 20), rel=1e-3)

    for target in (14, 23):
        y, _ = _read(compat.audio_write(tmp_path / f"lufs{target}", x, 48000, strategy="loudness",
                                        loudness_headroom_db=target))
        assert reference_loudness(y.numpy()) == pytest.approx(-target, abs=0.05)
    capsys.readouterr()
    y, _ = _read(compat.audio_write(tmp_path / "hot", x, 48000, strategy="loudness", loudness_headroom_db=0))
    assert y.abs().max().item() <= 1.0 and "CLIPPING" in capsys.readouterr().err      # clipped, and said so
    y, _ = _read(compat.audio_write(tmp_path / "soft", x, 48000, strategy="loudness", loudness_headroom_db=0,
                                    loudness_compressor=True))
    assert y.abs().max().item() < 1.0 and reference_loudness(y.numpy()) > -6      # tanh: soft, still loud
    silent = torch.zeros(1, 4800)
    for strategy in ("peak", "rms", "loudness"):
        y, _ = _read(compat.audio_write(tmp_path / f"silent_{strategy}", silent, 48000, strategy=strategy))
        assert (y == 0).all()


def test_audio_write_files_and_errors(tmp_path):
    x = _music(16000, seconds=0.5)
    p = compat.audio_write(tmp_path / "a" / "b" / "mono", x[0], 16000)            # [T]; parents made
    y, rate = _read(p)
    assert p.suffix == ".wav" and rate == 16000 and y.shape == (1, x.shape[1])
    assert compat.audio_write(tmp_path / "nosuffix", x, 16000, add_suffix=False) == tmp_path / "nosuffix"
    for kw, match in (({"format": "mp3"}, "WAV only"), ({"format": "ogg"}, "WAV only"),
                      ({"strategy": "loudest"}, "unknown strategy"), ({"sample_rate": 0}, "sample_rate")):
        args = {"sample_rate": 16000, **kw}
        with pytest.raises(ParameterError, match=match):
            compat.audio_write(tmp_path / "bad", x, **args)
    with pytest.raises(ParameterError, match="at most 2 dimension"):
        compat.audio_write(tmp_path / "bad", x[None], 16000)
    with pytest.raises(ParameterError, match="floating point"):
        compat.audio_write(tmp_path / "bad", (x * 100).long(), 16000)
    with pytest.raises(ParameterError, match="NaN"):
        compat.audio_write(tmp_path / "bad", torch.full((1, 10), float("nan")), 16000)
    with pytest.raises(ParameterError, match="make_parent_dir"):
        compat.audio_write(tmp_path / "missing" / "x", x, 16000, make_parent_dir=False)
    assert not list(tmp_path.glob("bad*")) and not (tmp_path / "missing").exists()


def test_display_audio(monkeypatch, capsys):
    wav = torch.zeros(3, 1, 160)
    assert compat.display_audio(wav, 16000) is None                         # no notebook: nothing at all
    assert capsys.readouterr() == ("", "")
    shown = []
    fake_ipython = types.ModuleType("IPython")
    fake_ipython.get_ipython = lambda: types.SimpleNamespace(kernel=object())   # a kernel: a notebook
    fake_display = types.ModuleType("IPython.display")
    fake_display.Audio = lambda data, rate: ("Audio", data.shape, rate)
    fake_display.display = shown.append
    monkeypatch.setitem(sys.modules, "IPython", fake_ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", fake_display)
    compat.display_audio(wav, 16000)
    assert shown == [("Audio", (1, 160), 16000)] * 3
    shown.clear()
    compat.display_audio(wav[0], 32000)                                      # [C, T]: one player
    assert shown == [("Audio", (1, 160), 32000)]
    fake_ipython.get_ipython = lambda: types.SimpleNamespace()               # terminal IPython: no kernel
    shown.clear()
    compat.display_audio(wav, 16000)
    assert shown == []
    with pytest.raises(ParameterError):
        compat.display_audio(torch.zeros(5), 16000)
