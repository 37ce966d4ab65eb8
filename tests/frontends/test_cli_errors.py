"""Hostile input to the ``magnet-fast`` CLI: one error line, exit 2, nothing destroyed or left behind,
everything checkable refused before the model loads. In-process ``main`` (``run_main``) except one console
run per group (``cli``) and the memory measurement (one child process per run)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.frontends.test_cli import AC_EXPORT, FAST, assert_usage_error, child_env, cli, run_main

sf = pytest.importorskip("soundfile", reason="soundfile (and its cffi) not installed: the CLI writes WAVs with it")

LOADED = "note: untrained demo weights"          # printed once the demo model has loaded


def assert_one_line(proc: subprocess.CompletedProcess, match: str) -> None:
    """The documented contract: stderr is exactly one `magnet-fast: error:` line (no usage block)."""
    assert_usage_error(proc, match)
    assert [ln for ln in proc.stderr.splitlines() if ln.strip()] == [
        ln for ln in proc.stderr.splitlines() if ln.startswith(("magnet-fast: error:", "note:"))], proc.stderr


# ---------------------------------------------------------------- 1. argparse errors: one line
@pytest.mark.parametrize("args, match", [
    pytest.param(["generate", "x", "--seed", "abc"], "argument --seed: invalid int value: 'abc'", id="seed-text"),
    pytest.param(["generate", "x", "--dtype", "float64"], "argument --dtype: invalid choice", id="dtype"),
    pytest.param(["generate", "x", "--no-such-flag"], "unrecognized arguments: --no-such-flag", id="unknown-flag"),
    pytest.param(["convert", "only-src"], "the following arguments are required: out", id="convert-missing"),
    pytest.param([], "the following arguments are required: command", id="no-command"),
])
def test_argparse_errors_are_one_line(tmp_path, args, match):
    proc = (cli if args == [] else run_main)(*args, cwd=tmp_path)
    assert_one_line(proc, match)
    assert "usage:" not in proc.stderr and proc.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_help_still_works(tmp_path):
    proc = run_main("generate", "--help", cwd=tmp_path)
    assert proc.returncode == 0 and "usage: magnet-fast generate" in proc.stdout


# ---------------------------------------------------------------- 2. convert --force destroys nothing foreign
def test_convert_force_refuses_a_foreign_folder_and_a_file(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "holiday.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (photos / "album").mkdir()
    (photos / "album" / "b.jpg").write_bytes(b"b")
    assert_one_line(cli("convert", str(AC_EXPORT), "photos", "--force", cwd=tmp_path),     # the console run
                    "not a converted model folder")
    assert sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*")) == ["album", "album/b.jpg",
                                                                                  "holiday.jpg"]
    assert (photos / "holiday.jpg").read_bytes() == b"\xff\xd8 not really a jpeg"
    # a folder that has a config.json but not ours (e.g. an audiocraft or transformers folder)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"model_type": "t5"}')
    (tmp_path / "other" / "model.safetensors").write_bytes(b"x")
    assert_one_line(run_main("convert", str(AC_EXPORT), "other", "--force", cwd=tmp_path),
                    "not a converted model folder")
    assert (tmp_path / "other" / "config.json").read_text() == '{"model_type": "t5"}'
    (tmp_path / "notes.txt").write_text("keep me")
    assert_one_line(run_main("convert", str(AC_EXPORT), "notes.txt", "--force", cwd=tmp_path), "is not a folder")
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "other", "photos"]   # no temp folders


def test_convert_force_replaces_a_converted_folder(tmp_path):
    assert run_main("convert", str(AC_EXPORT), "conv", cwd=tmp_path).returncode == 0
    proc = run_main("convert", str(AC_EXPORT), "conv", "--force", "--dtype", "float32", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "F32" in run_main("info", "conv", cwd=tmp_path).stdout


# ---------------------------------------------------------------- 3. prompts file and --steps
@pytest.mark.parametrize("content, match", [
    pytest.param('{"desciption": "calm piano"}\n', "unknown key(s) 'desciption'; the known keys are 'description' "
                 "and 'text'", id="typo-key"),
    pytest.param('{"description": "a"}\nnull\n', "p.jsonl:2 must be a JSON object", id="null-line"),
    pytest.param('{}\n', "empty object", id="empty-object"),
    pytest.param('[1, 2]\n', "must be a JSON object", id="list-line"),
])
def test_jsonl_prompts_are_strict(tmp_path, content, match):
    (tmp_path / "p.jsonl").write_text(content)
    proc = run_main("generate", "--prompts-file", "p.jsonl", *FAST, cwd=tmp_path)
    assert_one_line(proc, match)
    assert LOADED not in proc.stderr


@pytest.mark.parametrize("flag, match", [
    pytest.param("--steps", "--steps must be comma-separated integers, got ''", id="steps"),
    pytest.param("--cfg", "--cfg must be MAX,MIN", id="cfg"),
])
def test_empty_flag_values_are_refused(tmp_path, flag, match):
    proc = run_main("generate", "x", flag, "", "--quiet", cwd=tmp_path)
    assert_one_line(proc, match)
    assert LOADED not in proc.stderr


# ---------------------------------------------------------------- 4. output paths and a full disk
def test_output_under_a_file_or_onto_a_folder(tmp_path):
    (tmp_path / "file").write_text("I am a file")
    for out in ("file/x.wav", "file/sub", "file/a/b/c.wav"):
        proc = (cli if out == "file/x.wav" else run_main)("generate", "x", *FAST, "--out", out, cwd=tmp_path)
        assert_one_line(proc, "file is a file, not a folder")
        assert LOADED not in proc.stderr
    proc = run_main("generate", "x", *FAST, "--tokens-only", "--out", "file/t.safetensors", cwd=tmp_path)
    assert_one_line(proc, "file is a file, not a folder")
    (tmp_path / "d.wav").mkdir()
    proc = run_main("generate", "x", *FAST, "--out", "d.wav", "--force", cwd=tmp_path)
    assert_one_line(proc, "d.wav is a folder")
    assert LOADED not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.wav", "file"]


@pytest.fixture
def tiny_fs(tmp_path):
    """An 8 KiB tmpfs: too small for a demo WAV (637 KB) or its tokens (16 KB)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill a disk needs root")
    mnt = tmp_path / "full"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.parametrize("out", ["x.wav", "sub/deeper", "tok/t.safetensors"])
def test_disk_full_is_one_line_and_leaves_nothing(tmp_path, tiny_fs, out):
    extra = ["--tokens-only"] if out.endswith(".safetensors") else []
    proc = run_main("generate", "x", *FAST, *extra, "--out", str(tiny_fs / out), cwd=tmp_path)
    assert_one_line(proc, "no space left on device")
    assert list(tiny_fs.iterdir()) == []              # no partial file, no temp file, no new folder


# ---------------------------------------------------------------- 5. nothing left behind
def test_failure_after_loading_leaves_no_output_folder(tmp_path):
    proc = cli("generate", "x", *FAST, "--codec", "no/such-codec", "--out", "newdir", cwd=tmp_path)  # console
    assert_one_line(proc, "no/such-codec")
    assert LOADED in proc.stderr                      # it failed past the early checks
    proc = run_main("generate", "x", *FAST, "--codec", "no/such-codec", cwd=tmp_path)   # default ./outputs
    assert_one_line(proc, "no/such-codec")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- 6. checked before loading
@pytest.mark.parametrize("args, match", [
    pytest.param(["--max-batch", "0"], "max_batch must be a positive integer", id="max-batch-0"),
    pytest.param(["--max-batch", "-3"], "max_batch must be a positive integer", id="max-batch-negative"),
    pytest.param(["--top-k", "999999"], "top_k must be <= the codebook size 2048", id="top-k-card"),
    pytest.param(["--seed", str(2**70)], "seed must be an integer in [0, 2**63)", id="seed-huge"),
    pytest.param(["--prompt-audio", "/dev/zero"], "is not a regular file", id="prompt-device"),
    pytest.param(["--prompt-audio", "."], "is a folder, not an audio file", id="prompt-folder"),
    pytest.param(["--prompt-audio", "long.wav"], "must be shorter than the model's 10 s", id="prompt-long"),
])
def test_checked_before_the_model_loads(tmp_path, args, match):
    sf.write(tmp_path / "long.wav", np.zeros(32000 * 11, dtype=np.float32), 32000)
    proc = run_main("generate", "x", *FAST, "--out", "o", *args, cwd=tmp_path)
    assert_one_line(proc, match)
    assert LOADED not in proc.stderr
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["long.wav"]


def _peak_rss_mb(tmp_path, n_prompts: int) -> float:
    """Peak RSS of one `magnet-fast generate` run with n prompts (a child that reports its own peak)."""
    prompts = tmp_path / f"p{n_prompts}.txt"
    prompts.write_text("\n".join(f"calm piano {i}" for i in range(n_prompts)) + "\n")
    code = ("import resource, sys; from magnet_fast.cli import main; rc = main(sys.argv[1:]); "
            "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
    env = child_env()
    proc = subprocess.run([sys.executable, "-c", code, "generate", "--prompts-file", str(prompts), "--steps",
                           "2,1,1,1", "--quiet", "--seed", "1", "--out", str(tmp_path / f"out{n_prompts}")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list((tmp_path / f"out{n_prompts}").glob("*.wav"))) == n_prompts
    return int(proc.stdout.split("PEAK")[-1].split()[0]) / 1024


def test_cli_streams_memory_flat_in_the_number_of_prompts(tmp_path):
    """WAVs are written chunk by chunk (default 4 prompts on CPU), so 24 prompts (six chunks) peak within
    ~1.2x of 4 (one chunk)."""
    small, large = _peak_rss_mb(tmp_path, 4), _peak_rss_mb(tmp_path, 24)
    assert large < 1.2 * small, f"peak RSS {large:.0f} MB for 24 prompts vs {small:.0f} MB for 4"


def test_cli_chunks_continue_one_stream_like_the_api_max_batch(tmp_path):
    """Chunked CLI output equals the API with the same seed and max_batch (one stream across chunks)."""
    import torch

    import magnet_fast as mf
    from magnet_fast.demo import DEMO_MODEL
    texts = [f"calm piano {i}" for i in range(5)]
    proc = run_main("generate", *texts, "--seed", "3", "--steps", "2,1,1,1", "--quiet", "--max-batch", "2",
                    "--tokens-only", "--out", "t.safetensors", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    from safetensors.torch import load_file
    got = load_file(str(tmp_path / "t.safetensors"))["tokens"]
    model = mf.MagnetFast.from_pretrained(DEMO_MODEL)
    want = model.generate_tokens(texts, seed=3, decoding_steps=[2, 1, 1, 1], max_batch=2)
    assert torch.equal(got, want)


@pytest.mark.parametrize("damage", ["truncated", "pickle"])
def test_broken_t5_in_the_model_folder_is_one_line(tmp_path, damage):
    """A truncated t5/model.safetensors, or a t5/ holding only a pickle (pytorch_model.bin, never
    unpickled), is one error line naming the T5, exit 2."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from magnet_fast.demo import DEMO_MODEL
    model = tmp_path / "m"
    shutil.copytree(DEMO_MODEL, model)
    weights = model / "t5" / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        torch.save(load_file(str(weights)), model / "t5" / "pytorch_model.bin")
        weights.unlink()
    proc = run_main("generate", "x", *FAST, "--model", str(model), cwd=tmp_path)
    assert_usage_error(proc, "T5 encoder")
    assert not list(tmp_path.glob("outputs*"))


def test_info_validates_like_generate(tmp_path):
    """`info` on a folder whose config.json does not match its weights (dim, layer count) is one error line,
    as `generate` would say, not a report with exit 0."""
    import json
    import shutil

    from magnet_fast.demo import DEMO_MODEL
    model = tmp_path / "m"
    shutil.copytree(DEMO_MODEL, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["num_layers"] += 3
    (model / "config.json").write_text(json.dumps(cfg))
    assert_usage_error(run_main("info", str(model), cwd=tmp_path), "layer")
    assert run_main("info", str(DEMO_MODEL), cwd=tmp_path).returncode == 0


def test_convert_onto_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, tiny_fs):
    """A conversion that runs out of space (8 KiB tmpfs): one "no space left on device" line, exit 2, and
    neither the output folder nor a temp folder is left on that disk."""
    proc = run_main("convert", str(AC_EXPORT), str(tiny_fs / "conv"), cwd=tmp_path)
    assert_usage_error(proc, "no space left on device")
    assert list(tiny_fs.iterdir()) == []
