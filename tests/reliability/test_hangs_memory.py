"""Class 3 of issue 24: hangs, unbounded memory or time. Resampling cost bounded before julius (rates in
1 kHz..384 kHz, a bounded sinc path where julius' kernel would be large); one bounded reader for regular
files (no /dev/zero, no FIFO, size and line limits) for job files, --prompts-file and manifests; a
description length cap; parse errors summarised and recorded in one write, not again on rerun; long-form
window bounds (API, CLI, batch lines, compat)."""
from __future__ import annotations

import json
import os
import struct
import threading
import time
import warnings

import pytest
import torch

from magnet_fast import jobs
from magnet_fast.errors import MagnetFastError, ParameterError

from .conftest import FAST, never_load, write_job


def _quiet(_m):
    pass


def within(seconds: float, fn, *args, **kwargs):
    """Run fn in a thread; fail if it has not returned after ``seconds`` (a hang), re-raise its exception."""
    box = {}

    def run():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001
            box["error"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn.__name__} still running after {seconds} s (a hang)"
    if "error" in box:
        raise box["error"]
    return box.get("value")


# ----------------------------------------------------------------------------------------- resampling
def test_resample_cost_is_bounded_and_matches_julius_where_cheap():
    from magnet_fast.io.audio import JULIUS_MAX_KERNEL, julius_kernel_size, resample, sinc_resample
    julius = pytest.importorskip("julius")
    x = torch.randn(2, 11025)
    for rate in (44100, 48000, 22050, 16000, 96000, 8000):
        assert julius_kernel_size(rate, 32000) <= JULIUS_MAX_KERNEL
        assert torch.equal(resample(x[:, : rate // 4], rate, 32000), julius.resample_frac(x[:, : rate // 4], rate, 32000))
        # the bounded path computes the same filter (an independent implementation of it)
        assert (sinc_resample(x[:, : rate // 4], rate, 32000) - julius.resample_frac(x[:, : rate // 4], rate, 32000)
                ).abs().max() < 1e-3
    for rate in (31999, 32001, 383_999, 1_009):
        assert julius_kernel_size(rate, 32000) > JULIUS_MAX_KERNEL                  # julius would need GBs
        t = torch.sin(torch.arange(rate // 5) / rate * 2 * torch.pi * 220.0)[None]
        y = within(60, resample, t, rate, 32000)
        assert y.shape[-1] == (32000 * t.shape[-1]) // rate
        ref = torch.sin(torch.arange(y.shape[-1]) / 32000 * 2 * torch.pi * 220.0)
        assert (y[0, 200:-200] - ref[200:-200]).abs().max() < 2e-2               # julius: 1.6e-2 at 1 kHz


@pytest.mark.parametrize("rate", [10**12, 2**31 - 1, 999, 384_001, 0, -5, 32000.5, True])
def test_absurd_sample_rates_refused_before_work(rate, demo_model):
    wav = torch.zeros(1, 64)
    with pytest.raises(ParameterError):
        within(10, demo_model.prompt_tokens, wav, 1, rate)
    with pytest.raises(ParameterError):
        within(10, demo_model.encode, wav, rate)


def test_wav_header_rate_out_of_range_refused_from_the_header(tmp_path):
    from magnet_fast.io.audio import read_audio
    path = tmp_path / "odd.wav"
    pcm = b"\x00\x00" * 64
    fmt = struct.pack("<HHIIHH", 1, 1, 2**31 - 1, 2 * (2**31 - 1) & 0xFFFFFFFF, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(pcm)) + pcm
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    with pytest.raises(ParameterError, match="Hz"):
        within(10, read_audio, path, 10.0)


# ----------------------------------------------------------------------------------------- bounded reader
@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "fifo.jsonl"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("source", ["/dev/zero", "fifo", "folder", "huge_line"])
def test_job_file_that_is_not_a_bounded_regular_file(tmp_path, source, request):
    if source == "fifo":
        path = request.getfixturevalue("fifo")
    elif source == "folder":
        path = tmp_path / "dir.jsonl"
        path.mkdir()
    elif source == "huge_line":
        path = tmp_path / "long.jsonl"
        path.write_text(json.dumps({"id": "a", "text": "x" * (2 << 20)}) + "\n")
    else:
        path = source
    with pytest.raises(MagnetFastError):
        within(20, jobs.run_job, path, tmp_path / "out", never_load, defaults=FAST, warn=_quiet)


@pytest.mark.parametrize("source", ["/dev/zero", "fifo"])
def test_prompts_file_that_is_not_a_regular_file(tmp_path, source, request, capsys):
    from magnet_fast.cli import main
    path = request.getfixturevalue("fifo") if source == "fifo" else source
    assert within(20, main, ["generate", "--prompts-file", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "regular file" in err[0]


def test_manifest_that_is_a_fifo_or_device(tmp_path, fifo):
    job = write_job(tmp_path / "job.jsonl", [{"id": "a", "text": "x"}])
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / jobs.MANIFEST_NAME)
    with pytest.raises(MagnetFastError, match="manifest"):
        within(20, jobs.run_job, job, out, never_load, defaults=FAST, warn=_quiet)


def test_read_regular_limits():
    from magnet_fast.io.files import read_regular, split_lines
    with pytest.raises(ParameterError, match="limit"):
        split_lines(b"a" * 100 + b"\n", max_line=50)
    with pytest.raises(ParameterError, match="regular"):
        within(10, read_regular, "/dev/zero", max_bytes=10, what="x")


# ----------------------------------------------------------------------------------------- descriptions
def test_description_length_is_capped_before_tokenizing(demo_model):
    from magnet_fast.checks import MAX_DESCRIPTION_CHARS
    huge = "piano " * 200_000                                         # 1.2 MB: refused at once
    t0 = time.perf_counter()
    with pytest.raises(ParameterError, match="characters"):
        demo_model.generate_tokens([huge], decoding_steps=[1, 1, 1, 1])
    with pytest.raises(ParameterError, match="characters"):
        demo_model.text.encode([huge])
    assert time.perf_counter() - t0 < 2
    from magnet_fast.checks import check_descriptions
    assert check_descriptions(["a" * MAX_DESCRIPTION_CHARS]) == ["a" * MAX_DESCRIPTION_CHARS]   # at the cap


# ----------------------------------------------------------------------------------------- parse errors
def test_many_bad_lines_one_summary_one_write_no_repeat(tmp_path):
    n = 5000
    job = tmp_path / "job.jsonl"
    job.write_text("".join("{bad\n" for _ in range(n)))
    job.write_text(job.read_text() + json.dumps({"id": "ok", "text": "x"}) + "\n")
    out = tmp_path / "out"
    shown = []
    with pytest.MonkeyPatch.context() as mp:
        writes = []
        real = os.fsync
        mp.setattr(os, "fsync", lambda fd: writes.append(fd) or real(fd))
        plan = jobs.prepare(job, out, FAST, shown.append)
        jobs.record_line_errors(plan, shown.append)
        plan.close()
    assert len(shown) <= jobs.SHOWN_LINE_ERRORS + 1 and str(n - jobs.SHOWN_LINE_ERRORS) in shown[-1]
    assert len(writes) <= 3                                          # file list + one manifest batch
    lines = (out / jobs.MANIFEST_NAME).read_text().splitlines()
    assert len(lines) == n
    plan = jobs.prepare(job, out, FAST, _quiet)                      # rerun: the same errors are not re-added
    jobs.record_line_errors(plan, _quiet)
    plan.close()
    assert len((out / jobs.MANIFEST_NAME).read_text().splitlines()) == n


# ----------------------------------------------------------------------------------------- long-form
@pytest.mark.parametrize("duration, stride", [(3600, 0.02), (3600, 0.4), (3600, 3.0), (100, 0.1)])
def test_long_form_window_count_bounded(duration, stride, demo_model, tmp_path, capsys):
    from magnet_fast.cli import main
    t0 = time.perf_counter()
    with pytest.raises(ParameterError, match="extend_stride"):
        demo_model.generate_tokens(["x"], duration=duration, extend_stride=stride, decoding_steps=[1, 1, 1, 1])
    assert main(["generate", "x", "--duration", str(duration), "--extend-stride", str(stride),
                 "--out", str(tmp_path / "o.wav")]) == 2
    assert "extend_stride" in capsys.readouterr().err
    job = write_job(tmp_path / "job.jsonl", [{"id": "a", "text": "x", "duration": duration,
                                              "extend_stride": stride}])
    summary = jobs.run_job(job, tmp_path / "out", demo_model, defaults=FAST, warn=_quiet)
    assert summary.failed == 1
    assert time.perf_counter() - t0 < 30


def test_compat_musicgen_long_form_bounds():
    from pathlib import Path

    from magnet_fast import MusicGenFast
    from magnet_fast.compat import MusicGen
    mg = Path(__file__).resolve().parents[2] / "magnet_fast" / "demo" / "musicgen-tiny-demo"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = MusicGen("demo", MusicGenFast.from_pretrained(mg))
    for kw in ({"duration": 1e9}, {"duration": 3601}, {"extend_stride": 0.001, "duration": 60},
               {"duration": 3600, "extend_stride": 0.02}, {"duration": float("nan")}):
        with pytest.raises(ParameterError):
            m.set_generation_params(**kw)
    import numpy as np
    m.set_generation_params(duration=np.float32(0.5))
    assert m.duration == 0.5


# ----------------------------------------------------------------------------------------- memory chunk
def test_default_chunk_from_a_memory_estimate(demo_model, monkeypatch):
    """Without max_batch, a call whose rows would not fit in half the available memory is decoded in chunks
    derived from the estimate (announced), with the same tokens as that max_batch given explicitly."""
    from magnet_fast.engines import inputs
    from magnet_fast.errors import BatchSplitWarning
    per_row = inputs.row_bytes(demo_model.config)
    monkeypatch.setattr(inputs, "available_memory", lambda device: int(per_row * 3.5 / inputs.MEMORY_SHARE))
    texts = [f"t{i}" for i in range(7)]
    sizes = []
    real = demo_model._decode_window

    def spy(req, ctx, texts, *a, **k):
        sizes.append(len(texts))
        return real(req, ctx, texts, *a, **k)
    monkeypatch.setattr(demo_model, "_decode_window", spy)
    with pytest.warns(BatchSplitWarning, match="chunks of 3"):
        auto = demo_model.generate_tokens(texts, seed=4, decoding_steps=[1, 1, 1, 1])
    assert sizes == [3, 3, 1]
    sizes.clear()
    explicit = demo_model.generate_tokens(texts, seed=4, decoding_steps=[1, 1, 1, 1], max_batch=3)
    assert sizes == [3, 3, 1] and torch.equal(auto, explicit)
    sizes.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", BatchSplitWarning)
        demo_model.generate_tokens(texts[:3], seed=4, decoding_steps=[1, 1, 1, 1])      # fits: one batch
    assert sizes == [3]
    monkeypatch.undo()
    free = inputs.available_memory(torch.device("cpu"))                   # the real reading: a positive size
    assert free is None or free > 0
