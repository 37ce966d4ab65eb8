"""Audio edits: the splice keeps every sample outside [start - crossfade, end + crossfade], the CLI's WAV
round trip keeps the 16-bit samples there, and every bad input is one line, exit 2, nothing written."""
from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from magnet_fast.engines.editing import equal_power_splice
from magnet_fast.errors import ParameterError
from tests.editing.conftest import FAST
from tests.frontends.test_cli import assert_usage_error, run_main

RATE = 32000


def test_equal_power_splice_gains():
    s, fade = 1000, 100
    ones, zeros = torch.ones(1, s, dtype=torch.float64), torch.zeros(1, s, dtype=torch.float64)
    out_gain = equal_power_splice(ones, zeros, [(400, 600)], fade)        # the original's gain
    in_gain = equal_power_splice(zeros, ones, [(400, 600)], fade)         # the edit's gain
    assert torch.equal(out_gain[:, :300], ones[:, :300]) and torch.equal(out_gain[:, 700:], ones[:, 700:])
    assert torch.equal(in_gain[:, 400:600], ones[:, 400:600])
    assert torch.allclose(out_gain ** 2 + in_gain ** 2, ones)             # equal power everywhere
    assert (in_gain[0, 300:400].diff() > 0).all() and (in_gain[0, 600:700].diff() < 0).all()
    cut = equal_power_splice(zeros, ones, [(50, 600)], fade)              # a fade cut by the clip's start
    assert 0 < cut[0, 0] < cut[0, 49] < 1 and math.isclose(cut[0, 49].item(), math.sin((99.5 / 100) * math.pi / 2))


def test_edit_keeps_samples_outside_the_crossfade(demo):
    g = torch.Generator().manual_seed(0)
    wav = torch.rand(2, 2, 3 * RATE, generator=g) - 0.5                 # stereo into a mono model: the mean
    out = demo.edit(wav, 1.0, 2.0, ["a", None], sample_rate=RATE, crossfade=0.1, seed=1, **FAST)
    mono = wav.mean(dim=1, keepdim=True)
    assert out.shape == mono.shape
    lo, hi = round(0.9 * RATE), round(2.1 * RATE)
    assert torch.equal(out[..., :lo], mono[..., :lo]) and torch.equal(out[..., hi:], mono[..., hi:])
    assert (out[..., RATE: 2 * RATE] != mono[..., RATE: 2 * RATE]).float().mean() > 0.99
    with pytest.raises(ParameterError, match="needs sample_rate"):
        demo.edit(wav, 1.0, 2.0)
    with pytest.raises(ParameterError, match="crossfade"):
        demo.edit(wav, 1.0, 2.0, sample_rate=RATE, crossfade=-0.1)


def test_vary_audio(demo):
    wav = torch.rand(1, 1, 2 * RATE, generator=torch.Generator().manual_seed(1)) - 0.5
    out = demo.vary(wav, 0.5, "a", sample_rate=RATE, seed=2, **FAST)
    assert out.shape == wav.shape and torch.isfinite(out).all()


def _wav(path, seconds=3.0, channels=1):
    x = np.random.default_rng(0).integers(-9000, 9000, size=(int(seconds * RATE), channels)).astype(np.int16)
    sf.write(str(path), x, RATE, subtype="PCM_16")
    return x


def test_cli_edit_round_trip_keeps_16_bit_samples(tmp_path):
    x = _wav(tmp_path / "in.wav")
    proc = run_main("edit", "in.wav", "--start", "1", "--end", "2", "calm piano", "--crossfade", "0.05",
                    "--seed", "3", "--steps", "2,1,1,1", "--quiet", "--out", "out.wav", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    y, rate = sf.read(str(tmp_path / "out.wav"), dtype="int16", always_2d=True)
    assert rate == RATE and y.shape == x.shape
    lo, hi = round(0.95 * RATE), round(2.05 * RATE)
    assert np.array_equal(y[:lo], x[:lo]) and np.array_equal(y[hi:], x[hi:])
    assert (y[RATE: 2 * RATE] != x[RATE: 2 * RATE]).mean() > 0.9
    proc = run_main("vary", "in.wav", "--strength", "0.4", "--steps", "2,1,1,1", "--quiet", "--out", "v.wav",
                    cwd=tmp_path)
    assert proc.returncode == 0 and (tmp_path / "v.wav").is_file(), proc.stderr


@pytest.mark.parametrize("args, match", [
    (["edit", "in.wav", "--start", "2", "--end", "1"], "must be before its end"),
    (["edit", "in.wav", "--start", "1", "--end", "1"], "must be before its end"),
    (["edit", "in.wav", "--start", "1", "--end", "1.04"], "at least one span"),
    (["edit", "in.wav", "--start", "1", "--end", "5"], "outside the audio"),
    (["edit", "in.wav", "--start", "-1", "--end", "1"], "outside the audio"),
    (["edit", "in.wav", "--start", "1", "--end", "2", "--crossfade", "-0.1"], "--crossfade"),
    (["edit", "missing.wav", "--start", "1", "--end", "2"], "input audio missing.wav not found"),
    (["edit", "in.wav", "--start", "1", "--end", "2", "--model", "MUSICGEN"], "needs a MAGNeT model"),
    (["edit", "long.wav", "--start", "1", "--end", "2"], "at most 600 s"),
    (["edit", "in.wav", "--start", "1", "--end", "2", "--out", "x.mp3"], "must name a .wav"),
    (["edit", "in.wav", "--start", "1", "--end", "2", "--steps", "a,b"], "--steps"),
    (["edit", "in.wav", "--start", "1"], "required"),
    (["vary", "in.wav", "--strength", "0"], "strength must be a number in (0, 1]"),
    (["vary", "in.wav", "--strength", "1.5"], "strength must be a number in (0, 1]"),
    (["vary", "long.wav", "--strength", "0.5"], "at most 600 s"),
    (["vary", "in.wav", "--strength", "0.5", "--model", "MUSICGEN"], "needs a MAGNeT model"),
    (["generate", "a", "--loop", "--duration", "9.5"], "a loop's duration must be in"),
    (["generate", "a", "--loop", "--model", "MUSICGEN"], "--loop is for MAGNeT models"),
])
def test_cli_bad_inputs_one_line_exit_2_nothing_written(tmp_path, args, match):
    from magnet_fast.demo import MUSICGEN_DEMO_MODEL
    _wav(tmp_path / "in.wav")
    if "long.wav" in args:                                              # 601 s of silence at 8 kHz
        sf.write(str(tmp_path / "long.wav"), np.zeros(601 * 8000, dtype=np.int16), 8000, subtype="PCM_16")
    before = sorted(p.name for p in tmp_path.iterdir())
    args = [str(MUSICGEN_DEMO_MODEL) if a == "MUSICGEN" else a for a in args]
    proc = run_main(*args, cwd=tmp_path)
    assert_usage_error(proc, match)
    assert sorted(p.name for p in tmp_path.iterdir()) == before          # nothing written
