"""Hybrid-MAGNeT (issue #14; magnet_fast/engines/hybrid.py): a MusicGen LM writes the first P frames, MAGNeT the rest.

The prefix must be exactly ``MusicGenFast.generate_tokens`` for P frames with the same seed, and the rest
exactly ``MagnetFast.generate_tokens(prompt=prefix)`` continuing that generator: both engines are checked
against audiocraft by their own parity tests, so this pins the hybrid call to them.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch

import magnet_fast as mf
from magnet_fast.engines.hybrid import duration_for
from magnet_fast.errors import ConfigError, ParameterError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
T5_TINY = FIXTURES / "ac_ref" / "t5_tiny"
TEXTS = ["energetic edm with drums and bass", "calm piano"]
SHORT = dict(decoding_steps=[3, 2, 2, 1])


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def musicgen(musicgen_folder):
    return mf.MusicGenFast.from_pretrained(musicgen_folder, t5=T5_TINY, attention="exact")


def test_duration_gives_exactly_p_frames():
    """MusicGen counts int(duration * frame_rate) frames; P / rate can fall one ulp short (29 -> 28)."""
    assert int(29 / 50 * 50) == 28                              # why the helper exists
    for rate in (50, 25, 75):
        for p in range(1, 1501):
            assert int(duration_for(p, rate) * rate) == p


@pytest.mark.parametrize("seconds, frames, hybrid_params", [
    pytest.param(0.58, 29, None, id="29-frames-defaults"),                 # 0.58 * 50 = 28.999999999999996
    pytest.param(1.0, 50, {"top_k": 20, "temperature": 0.8, "cfg_coef": 2.0}, id="50-frames-own-params"),
])
def test_prefix_is_musicgen_and_rest_is_magnet_continuing_the_stream(model10, musicgen, seconds, frames,
                                                                    hybrid_params):
    seed = 21
    out = model10.generate_tokens(TEXTS, seed=seed, hybrid=musicgen, hybrid_seconds=seconds,
                                  hybrid_params=hybrid_params, **SHORT)
    assert out.shape == (2, 4, 498)
    extra = hybrid_params or {}
    # the prefix: MusicGen alone, same seed, P frames, its own sampling parameters
    alone = musicgen.generate_tokens(TEXTS, seed=seed, duration=duration_for(frames, 50), **extra)
    assert alone.shape == (2, 4, frames)
    assert torch.equal(out[..., :frames], alone)
    # the rest: MAGNeT with that prompt, continuing the generator where the prefix left it
    g = torch.Generator().manual_seed(seed)
    prefix = musicgen.generate_tokens(TEXTS, generator=g, duration=duration_for(frames, 50), **extra)
    rest = model10.generate_tokens(TEXTS, prompt=prefix, generator=g, **SHORT)
    assert torch.equal(out, rest)
    # ... and not from a fresh stream (the test can fail: the continuation matters)
    fresh = model10.generate_tokens(TEXTS, prompt=prefix, seed=seed, **SHORT)
    assert not torch.equal(out, fresh)


def test_hybrid_with_rescoring_and_global_rng(model10, musicgen):
    """Rescoring on at the same time; without a seed both parts draw from torch's global RNG in turn."""
    weights = [1.0, 0.5, 0.2, 0.7, 0.0, 0.3, 0.9, 0.4]
    torch.manual_seed(8)
    out = model10.generate_tokens(TEXTS, hybrid=musicgen, hybrid_seconds=0.7, rescorer=musicgen,
                                  rescore_weight=weights, **SHORT)
    after = torch.get_rng_state()
    torch.manual_seed(8)
    prefix = musicgen.generate_tokens(TEXTS, duration=duration_for(35, 50))
    want = model10.generate_tokens(TEXTS, prompt=prefix, rescorer=musicgen, rescore_weight=weights, **SHORT)
    assert torch.equal(out, want) and torch.equal(torch.get_rng_state(), after)
    plain = model10.generate_tokens(TEXTS, prompt=prefix, generator=torch.Generator().manual_seed(0), **SHORT)
    assert not torch.equal(out[..., 35:], plain[..., 35:])


def test_per_row_streams_decode_each_prefix_alone(model10, musicgen):
    """batch_invariant: row i's prefix is MusicGen's batch-invariant row (seed + i), its rest MAGNeT's."""
    out = model10.generate_tokens(TEXTS, seed=5, batch_invariant=True, hybrid=musicgen, hybrid_seconds=0.5,
                                  decoding_steps=[2, 1, 1, 1])
    alone = musicgen.generate_tokens(TEXTS, seed=5, batch_invariant=True, duration=duration_for(25, 50))
    assert torch.equal(out[..., :25], alone)
    one = model10.generate_tokens(TEXTS[1:], seed=6, batch_invariant=True, hybrid=musicgen, hybrid_seconds=0.5,
                                  decoding_steps=[2, 1, 1, 1])
    assert torch.equal(out[1:], one)                            # row 1 depends only on its text and seed


@pytest.fixture(scope="module")
def audio_model(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    for name, folder in (("state_dict.bin", "ac_ref/magnet_tiny"), ("compression_state_dict.bin", "ac_codec_16k")):
        (src / name).write_bytes((FIXTURES / folder / name).read_bytes())
    out = mf.convert(src, tmp_path_factory.mktemp("m") / "model")
    return mf.MagnetFast.from_pretrained(out, t5=T5_TINY)


def test_generate_returns_the_hybrid_audio(audio_model, musicgen):
    kw = dict(seed=3, hybrid=musicgen, hybrid_seconds=1.0, decoding_steps=[2, 1, 1, 1])
    wav = audio_model.generate(["calm piano"], **kw)
    tokens = audio_model.generate_tokens(["calm piano"], **kw)
    assert wav.shape == (1, 1, 498 * audio_model.codec.hop_length) and torch.isfinite(wav).all()
    assert torch.equal(wav, audio_model.decode(tokens))
    with pytest.raises(ParameterError, match="prompt_audio or hybrid"):
        audio_model.generate(["calm piano"], prompt_audio=torch.zeros(16000), prompt_sample_rate=16000, **kw)


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("seconds, match", [
    pytest.param(0.0, r"in \(0, 10\)", id="zero"),
    pytest.param(-1.0, r"in \(0, 10\)", id="negative"),
    pytest.param(10.0, r"in \(0, 10\)", id="model-duration"),
    pytest.param(12.5, r"in \(0, 10\)", id="longer"),
    pytest.param(float("nan"), r"in \(0, 10\)", id="nan"),
    pytest.param("3", r"in \(0, 10\)", id="string"),
    pytest.param(0.005, "is 0 frames", id="under-a-frame"),
    pytest.param(9.96, "is 498 frames", id="no-frame-left"),
])
def test_bad_hybrid_seconds(model10, musicgen, seconds, match):
    with pytest.raises(ParameterError, match=match):
        model10.generate_tokens(["x"], hybrid=musicgen, hybrid_seconds=seconds)


@pytest.mark.parametrize("params, match", [
    pytest.param({"duration": 2.0}, "not settable", id="duration"),
    pytest.param({"top_q": 3}, "not settable", id="unknown"),
    pytest.param([("top_k", 3)], "must be a dict", id="not-dict"),
    pytest.param({"top_k": -1}, "top_k must be >= 0", id="bad-value"),
])
def test_bad_hybrid_params(model10, musicgen, params, match):
    with pytest.raises(ParameterError, match=match):
        model10.generate_tokens(["x"], hybrid=musicgen, hybrid_params=params)


def test_hybrid_must_be_a_compatible_musicgen(model10, musicgen):
    for wrong in (model10, "musicgen"):
        with pytest.raises(ParameterError, match="hybrid must be a MusicGenFast"):
            model10.generate_tokens(["x"], hybrid=wrong)
    for field, value in (("n_q", 8), ("card", 2048), ("frame_rate", 25)):
        other = copy.copy(musicgen)
        other.config = dataclasses.replace(musicgen.config, **{field: value})
        with pytest.raises(ConfigError, match="same codec token space"):
            model10.generate_tokens(["x"], hybrid=other)
    with pytest.raises(ParameterError, match="not both"):
        model10.generate_tokens(["x"], hybrid=musicgen, prompt=torch.zeros(1, 4, 20, dtype=torch.long))
