"""Hostile input to the Python API: flags, prompt tokens, prompt audio, overwrite, CPU out of memory."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from magnet_fast.engines.inputs import check_prompt, prompt_audio_tensor
from magnet_fast.errors import BatchSplitWarning, CheckpointError, ParameterError, ResourceError

SHORT = {"decoding_steps": [2, 1, 1, 1]}
CPU_OOM = ("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
           "allocate 2147483648 bytes. Error code 12 (Cannot allocate memory)")


# ---------------------------------------------------------------- flags
@pytest.mark.parametrize("value", ["no", "false", 0, 1, None, np.bool_(True)])
def test_batch_invariant_must_be_a_bool(model10, value):
    with pytest.raises(ParameterError, match="batch_invariant must be True or False"):
        model10.generate_tokens(["calm piano"], seed=1, batch_invariant=value, **SHORT)


# ---------------------------------------------------------------- prompt tokens
def test_bool_prompt_is_refused():
    with pytest.raises(ParameterError, match="integer tensor .* got a torch.bool tensor"):
        check_prompt(torch.zeros(1, 4, 10, dtype=torch.bool), 1, 4, 2048, 498, "cpu")


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int16, torch.int32])
def test_small_integer_prompts_in_range_are_accepted(dtype):
    ids = torch.arange(40).reshape(1, 4, 10) * 3
    got = check_prompt(ids.to(dtype), 1, 4, 2048, 498, "cpu")
    assert got.dtype == torch.long and torch.equal(got, ids)


def test_out_of_range_prompt_names_the_values():
    with pytest.raises(ParameterError, match=r"must be in \[0, 100\), got values in \[-3, 5\]"):
        check_prompt(torch.tensor([-3, 5], dtype=torch.int8).repeat(1, 4, 5), 1, 4, 100, 498, "cpu")


def test_int8_prompt_generates_like_a_long_prompt(model10):
    ids = torch.randint(0, 100, (1, 4, 20), generator=torch.Generator().manual_seed(0))
    want = model10.generate_tokens(["calm piano"], seed=2, prompt=ids, **SHORT)
    got = model10.generate_tokens(["calm piano"], seed=2, prompt=ids.to(torch.int8), **SHORT)
    assert torch.equal(got, want)


# ---------------------------------------------------------------- prompt audio
def test_prompt_audio_folder_and_device_get_the_right_message(tmp_path):
    with pytest.raises(ParameterError, match="is a folder, not an audio file"):
        prompt_audio_tensor(tmp_path, 1, None, 10.0)
    with pytest.raises(ParameterError, match="not a regular file"):
        prompt_audio_tensor("/dev/zero", 1, None, 10.0)
    with pytest.raises(ParameterError, match="not found"):
        prompt_audio_tensor(tmp_path / "missing.wav", 1, None, 10.0)


def test_long_prompt_audio_is_refused_from_its_header(tmp_path, monkeypatch):
    sf = pytest.importorskip("soundfile")
    sf.write(tmp_path / "long.wav", np.zeros(8000 * 11, dtype=np.float32), 8000)

    def no_decoding(*args, **kwargs):
        raise AssertionError("the samples were decoded before the duration check")
    monkeypatch.setattr(sf, "read", no_decoding)
    with pytest.raises(ParameterError, match="11.00 s; it must be shorter than the model's 10 s"):
        prompt_audio_tensor(tmp_path / "long.wav", 1, None, 10.0)


# ---------------------------------------------------------------- convert(overwrite=True)
def test_convert_overwrite_only_replaces_a_converted_folder(ref10, tmp_path):
    import magnet_fast as mf
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"jpeg")
    with pytest.raises(CheckpointError, match=r"not a converted model folder \(it holds other files \(a.jpg\)\)"):
        mf.convert(ref10.checkpoint, photos, overwrite=True)
    assert [p.name for p in photos.iterdir()] == ["a.jpg"]
    (tmp_path / "f").write_text("keep")
    with pytest.raises(CheckpointError, match="is not a folder"):
        mf.convert(ref10.checkpoint, tmp_path / "f", overwrite=True)
    assert (tmp_path / "f").read_text() == "keep"
    mf.convert(ref10.checkpoint, tmp_path / "conv")
    (tmp_path / "conv" / "stray.txt").write_text("mine")           # a converted folder plus a user's file
    with pytest.raises(CheckpointError, match="stray.txt"):
        mf.convert(ref10.checkpoint, tmp_path / "conv", overwrite=True)
    (tmp_path / "conv" / "stray.txt").unlink()
    assert mf.convert(ref10.checkpoint, tmp_path / "conv", overwrite=True) == tmp_path / "conv"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv", "f", "photos"]


# ---------------------------------------------------------------- CPU out of memory
def _cpu_oom_above(model, monkeypatch, limit, message=CPU_OOM):
    """Make the model's decode fail like CPU allocation does (a plain RuntimeError) above ``limit`` rows."""
    real = type(model)._decode_window
    sizes = []

    def decode(self, req, ctx, texts, *args, **kwargs):
        sizes.append(len(texts))
        if len(texts) > limit:
            raise RuntimeError(message)
        return real(self, req, ctx, texts, *args, **kwargs)
    monkeypatch.setattr(type(model), "_decode_window", decode)
    return sizes


def test_cpu_allocation_failure_splits_the_batch(model10, monkeypatch):
    texts = ["calm piano", "fast techno", None]
    want = model10.generate_tokens(texts, seed=3, batch_invariant=True, **SHORT)
    sizes = _cpu_oom_above(model10, monkeypatch, 1)
    with pytest.warns(BatchSplitWarning) as record:
        got = model10.generate_tokens(texts, seed=3, batch_invariant=True, **SHORT)
    assert [str(w.message).split(";")[0] for w in record] == ["out of cpu memory with a batch of 3",
                                                               "out of cpu memory with a batch of 2"]
    assert torch.equal(got, want) and sizes == [3, 2, 1, 1, 1]
    with pytest.raises(ResourceError, match="batch of 3; pass max_batch=1"):
        model10.generate_tokens(texts, max_batch=3, **SHORT)


@pytest.mark.parametrize("message", ["not enough memory: you tried to allocate 8 GB"])
def test_cpu_not_enough_memory_is_out_of_memory(model10, monkeypatch, message):
    _cpu_oom_above(model10, monkeypatch, 0, message)
    with pytest.raises(ResourceError, match="single description"), pytest.warns(BatchSplitWarning):
        model10.generate_tokens(["a", "b"], **SHORT)


def test_other_runtime_errors_are_not_out_of_memory(model10, monkeypatch):
    _cpu_oom_above(model10, monkeypatch, 0, "shape mismatch in some kernel")
    with warnings.catch_warnings():
        warnings.simplefilter("error", BatchSplitWarning)
        with pytest.raises(RuntimeError, match="shape mismatch") as info:
            model10.generate_tokens(["a", "b"], **SHORT)
    assert not isinstance(info.value, ResourceError)


def test_unreadable_weights_say_permission_denied(monkeypatch, tmp_path):
    """Permission denied is not "not found" (as root the permission bits cannot be tested for real, so the
    OS error is simulated where the weights are opened)."""
    import safetensors

    import magnet_fast as mf
    from magnet_fast.demo import DEMO_MODEL
    from magnet_fast.errors import CheckpointError

    def denied(path, *a, **k):
        raise PermissionError(13, "Permission denied", path)
    monkeypatch.setattr(safetensors, "safe_open", denied)
    with pytest.raises(CheckpointError, match="permission denied"):
        mf.MagnetFast.from_pretrained(DEMO_MODEL)
