"""Text -> audio through the API: LM + converted EnCodec (16 kHz fixture codec, card 512 like the LM)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import magnet_fast as mf
from magnet_fast.errors import CheckpointError, ParameterError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SHORT = {"decoding_steps": [2, 1, 1, 1]}


@pytest.fixture(scope="module")
def audio_model(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    for name, folder in (("state_dict.bin", "ac_ref/magnet_tiny"), ("compression_state_dict.bin", "ac_codec_16k")):
        (src / name).write_bytes((FIXTURES / folder / name).read_bytes())
    out = mf.convert(src, tmp_path_factory.mktemp("m") / "model")
    return mf.MagnetFast.from_pretrained(out, t5=FIXTURES / "ac_ref" / "t5_tiny")


def test_generate_decodes_the_generated_tokens(audio_model):
    wav = audio_model.generate(["calm piano", None], seed=4, **SHORT)
    tokens = audio_model.generate_tokens(["calm piano", None], seed=4, **SHORT)
    hop = audio_model.codec.hop_length
    assert audio_model.sample_rate == 16000 and hop == 320
    assert wav.shape == (2, 1, 498 * hop) and torch.isfinite(wav).all()
    assert torch.equal(wav, audio_model.decode(tokens))


def test_audio_prompt_is_encoded_and_continued(audio_model):
    g = torch.Generator().manual_seed(0)
    prompt = 0.1 * torch.randn(1, 16000, generator=g)                  # 1 s at the codec's rate
    wav = audio_model.generate(["calm piano"], prompt_audio=prompt, prompt_sample_rate=16000, seed=1, **SHORT)
    codes = audio_model.encode(prompt, 16000)
    assert codes.shape == (1, 4, 50)
    tokens = audio_model.encode(wav[..., : 50 * 320], 16000)
    assert wav.shape == (1, 1, 498 * 320)
    # the prompt tokens are kept verbatim, so decoding them again gives the same first frames' codes
    assert torch.equal(audio_model.generate_tokens(["calm piano"], prompt=codes, seed=1, **SHORT)[..., :50], codes)
    assert tokens.shape == codes.shape


def test_resampled_stereo_prompt(audio_model, tmp_path):
    import soundfile as sf
    path = tmp_path / "p.wav"
    sf.write(path, np.zeros((22050, 2), dtype=np.float32), 44100)             # 0.5 s stereo at 44.1 kHz
    assert audio_model.prompt_tokens(path, batch=2).shape == (2, 4, 25)


@pytest.mark.parametrize("kwargs, match", [
    pytest.param({"prompt_audio": torch.zeros(16000 * 10), "prompt_sample_rate": 16000}, "shorter than",
                 id="too-long"),
    pytest.param({"prompt_audio": torch.zeros(100)}, "needs prompt_sample_rate", id="no-rate"),
    pytest.param({"prompt_audio": torch.full((100,), float("nan")), "prompt_sample_rate": 16000}, "NaN",
                 id="nan"),
    pytest.param({"prompt_audio": 3}, "file path or a tensor", id="type"),
    pytest.param({"prompt_audio": "missing.wav"}, "not found", id="missing-file"),
])
def test_bad_audio_prompts(audio_model, kwargs, match):
    with pytest.raises(ParameterError, match=match):
        audio_model.generate(["x"], **SHORT, **kwargs)


def test_model_without_codec_explains(model10):
    """The fixture LM records a hub pointer codec that is not available offline: a clear error."""
    with pytest.raises(CheckpointError, match="facebook/encodec_32khz"):
        model10.generate(["x"], **SHORT)
