"""Bad input for prepare / finetune / Trainer: one line, exit 2 (or an error recorded per file for prepare),
nothing lost or half-written."""
from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch

from magnet_fast.cli import main
from magnet_fast.demo import DEMO_MODEL, MUSICGEN_DEMO_MODEL
from magnet_fast.errors import ConfigError, NumericsError, ParameterError
from magnet_fast.train import Trainer
from magnet_fast.train.run import RunSettings, finetune

from .conftest import CLIP_TEXTS, clips, write_tiny_model, write_token_data


def run_cli(capsys, *argv) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def one_line(err: str, *needles: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("magnet-fast: error:"), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_prepare_folder_without_audio(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("hello")
    rc, err = run_cli(capsys, "prepare", str(tmp_path / "a"), "--out", str(tmp_path / "d"), "--quiet")
    assert rc == 2
    one_line(err, "no audio files")
    assert not (tmp_path / "d").exists()


def test_prepare_records_bad_files_and_goes_on(tmp_path, capsys):
    audio = tmp_path / "audio"
    audio.mkdir()
    sr = 32000
    sf.write(audio / "good.wav", (0.2 * np.sin(np.arange(int(10.5 * sr)) / 9)).astype("float32"), sr)
    (audio / "good.txt").write_text("calm piano")
    (audio / "corrupt.wav").write_bytes(b"RIFF\x00\x00not audio at all")
    sf.write(audio / "badcap.flac", np.zeros((8000, 2), dtype="float32"), 16000)
    (audio / "badcap.json").write_text("{not json")
    rc, err = run_cli(capsys, "prepare", str(audio), "--out", str(tmp_path / "d"), "--quiet")
    assert rc == 0, err
    rows = {r["file"]: r for r in map(json.loads, (tmp_path / "d" / "index.jsonl").read_text().splitlines())}
    assert "not readable audio" in rows["corrupt.wav"]["error"]
    assert "not JSON" in rows["badcap.flac"]["error"]
    good = rows["good.wav"]
    assert good["text"] == "calm piano" and good["segments"] == 2
    from safetensors.torch import load_file
    shard = load_file(str(tmp_path / "d" / good["shard"]))
    assert list(shard["tokens"].shape) == [2, 4, 500] and shard["lengths"].tolist() == [500, 25]
    # a rerun skips the done file and retries the failed ones (fixed caption now passes)
    (audio / "badcap.json").write_text('{"description": "slow jazz"}')
    rc, err = run_cli(capsys, "prepare", str(audio), "--out", str(tmp_path / "d"), "--quiet")
    assert rc == 0 and "skipped 1" in err
    rows = {r["file"]: r for r in map(json.loads, (tmp_path / "d" / "index.jsonl").read_text().splitlines())}
    assert rows["badcap.flac"]["text"] == "slow jazz" and rows["good.wav"]["shard"] == good["shard"]
    assert "error" in rows["corrupt.wav"]


def test_musicgen_model_refused(tmp_path, capsys):
    with pytest.raises(ConfigError, match="MAGNeT"):
        Trainer.from_pretrained(MUSICGEN_DEMO_MODEL)
    data = write_token_data(tmp_path / "data", clips(card=2048, frames=500), CLIP_TEXTS)
    rc, err = run_cli(capsys, "finetune", str(data), "--model", str(MUSICGEN_DEMO_MODEL), "--out",
                      str(tmp_path / "run"), "--quiet")
    assert rc == 2
    one_line(err, "musicgen")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, needle", [(["--steps", "0"], "--steps"), (["--batch-size", "0"], "--batch-size"),
                                           (["--lr", "nan"], "--lr"), (["--warmup", "-1"], "--warmup")])
def test_bad_run_settings(tmp_path, capsys, flags, needle):
    data = write_token_data(tmp_path / "data", clips(card=2048, frames=500), CLIP_TEXTS)
    rc, err = run_cli(capsys, "finetune", str(data), "--model", str(DEMO_MODEL), "--out", str(tmp_path / "run"),
                      "--quiet", *flags)
    assert rc == 2
    one_line(err, needle)
    assert not (tmp_path / "run").exists()


def test_data_for_another_model_refused(tmp_path, capsys):
    data = write_token_data(tmp_path / "data", clips(card=64, frames=10), CLIP_TEXTS)
    rc, err = run_cli(capsys, "finetune", str(data), "--model", str(DEMO_MODEL), "--out", str(tmp_path / "run"),
                      "--quiet")
    assert rc == 2
    one_line(err, "prepare the data with this model")


def test_trainer_input_checks(tmp_path):
    trainer = Trainer.from_pretrained(write_tiny_model(tmp_path / "m", dim=32, heads=2, layers=1, seconds=0.2))
    good = clips()
    with pytest.raises(ParameterError, match="token ids"):
        trainer.loss(good + 64, CLIP_TEXTS)
    with pytest.raises(ParameterError, match=r"\[B, 4, T\]"):
        trainer.loss(torch.zeros(4, 4, 11, dtype=torch.long), CLIP_TEXTS)
    with pytest.raises(ParameterError, match="texts"):
        trainer.loss(good, CLIP_TEXTS[:2])
    with pytest.raises(ParameterError, match="lengths"):
        trainer.loss(good, CLIP_TEXTS, lengths=[10, 0, 3, 3])
    with pytest.raises(ParameterError, match="lora_rank"):
        Trainer.from_pretrained(tmp_path / "m", lora_rank=-1)


def test_nan_loss_is_a_numerics_error_and_keeps_the_last_checkpoint(tmp_path):
    model = write_tiny_model(tmp_path / "m", dim=32, heads=2, layers=1, seconds=0.2)
    data = write_token_data(tmp_path / "data", clips(), CLIP_TEXTS)
    run = tmp_path / "run"
    settings = RunSettings(data_dir=str(data), model=str(model), steps=20, batch_size=2, save_every=4, lr=1e-3)

    def poison(trainer, row):
        if row["step"] == 6:
            with torch.no_grad():
                trainer.model.layers[0].linear1.weight[0, 0] = float("nan")
    with pytest.raises(NumericsError, match="step-00000004"):
        finetune(settings, run, progress=False, on_step=poison)
    latest = json.loads((run / "latest.json").read_text())
    assert latest["step"] == 4
    from safetensors.torch import load_file
    weights = load_file(str(run / latest["checkpoint"] / "weights.safetensors"))
    assert all(bool(torch.isfinite(w).all()) for w in weights.values())
    assert [json.loads(x)["step"] for x in (run / "log.jsonl").read_text().splitlines()] == list(range(1, 7))


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill a disk needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1000k", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_full_disk_while_checkpointing(tmp_path, small_disk, capsys):
    """The disk (1000 KiB) holds one checkpoint (~0.65 MB) but not a second beside it: one line, exit 2, the first
    checkpoint whole and pointed to, no temporary folder left."""
    model = write_tiny_model(tmp_path / "m", dim=32, heads=2, layers=1, seconds=0.2)
    data = write_token_data(tmp_path / "data", clips(), CLIP_TEXTS)
    run = small_disk / "run"
    rc, err = run_cli(capsys, "finetune", str(data), "--model", str(model), "--out", str(run), "--steps", "8",
                      "--save-every", "2", "--batch-size", "2", "--quiet")
    assert rc == 2
    one_line(err, "no space left on device")
    latest = json.loads((run / "latest.json").read_text())
    assert latest["step"] == 2
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step-00000002"], names
    assert sorted(p.name for p in (run / "checkpoints" / "step-00000002").iterdir()) == [
        "optimizer.safetensors", "rng.safetensors", "state.json", "weights.safetensors"]
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []
