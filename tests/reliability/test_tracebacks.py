"""Class 4 of issue 24: tracebacks instead of one line. Over-long path components at every path entry,
JSON edge values (huge integers, deep nesting), lone surrogates, a manifest that is a folder, --threads
bounds, concurrent loading from threads (a process-wide load lock), audio_write bounds, Ctrl-C at
start-up, checks before the model load, seed range, np.float32 durations, from_pretrained(None)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch

from magnet_fast import jobs
from magnet_fast.demo import DEMO_MODEL
from magnet_fast.errors import CheckpointError, MagnetFastError, ParameterError

from .conftest import FAST, never_load, write_job

ROOT = Path(__file__).resolve().parents[2]
MG_DEMO = ROOT / "magnet_fast" / "demo" / "musicgen-tiny-demo"
LONG = "n" * 300                                           # one component over NAME_MAX (255 bytes)


def _quiet(_m):
    pass


def one_line(capsys, *words):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    for w in words:
        assert w in err[0], err
    return err[0]


# ----------------------------------------------------------------------------------------- ENAMETOOLONG
@pytest.mark.parametrize("argv", [
    ["generate", "x", "--model", LONG], ["info", LONG], ["generate", "x", "--prompt-audio", LONG],
    ["generate", "x", "--out", f"{LONG}/a.wav"], ["generate", "x", "--out", f"{LONG}.wav"],
    ["batch", "JOB", "--out", LONG], ["batch", "JOB", "--out", f"d/{LONG}/e"], ["convert", LONG, "out"],
    ["convert", str(DEMO_MODEL), f"{LONG}/x"], ["generate", "x", "--t5", LONG], ["generate", "x", "--t5", f"./{LONG}"],
    ["generate", "x", "--hybrid", LONG], ["generate", "x", "--prompts-file", LONG], ["batch", LONG, "--out", "o"],
])
def test_over_long_path_component_is_one_line(argv, tmp_path, monkeypatch, capsys):
    from magnet_fast.cli import main
    monkeypatch.chdir(tmp_path)
    write_job(tmp_path / "JOB", [{"id": "a", "text": "x"}])
    assert main(argv) == 2
    one_line(capsys)


def test_over_long_names_in_the_python_api(tmp_path):
    from magnet_fast import MagnetFast
    from magnet_fast.compat import MAGNeT
    from magnet_fast.io.audio_out import audio_write
    with pytest.raises(CheckpointError):
        MagnetFast.from_pretrained(LONG)
    with pytest.raises(CheckpointError):
        MAGNeT.get_pretrained(LONG, device="cpu")
    with pytest.raises(CheckpointError):
        MAGNeT.get_pretrained(f"./{LONG}", device="cpu")
    with pytest.raises(ParameterError):
        audio_write(str(tmp_path / LONG), torch.zeros(1, 100), 32000)
    with pytest.raises(MagnetFastError):
        jobs.run_job(tmp_path / LONG, tmp_path / "o", never_load, warn=_quiet)


# ----------------------------------------------------------------------------------------- JSON edge values
EDGE = ['{"id": "big", "text": "x", "top_k": ' + "9" * 5000 + "}", "[" * 100_000 + "]" * 100_000,
        '{"id": "deep", "text": "x", "p": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"id": "neg", "text": "x", "seed": -' + "1" * 5000 + "}"]


def test_json_edge_values_in_a_job_are_line_errors(tmp_path):
    job = tmp_path / "job.jsonl"
    job.write_text("\n".join(EDGE + [json.dumps({"id": "ok", "text": "x"})]) + "\n")
    items, errors = jobs.parse_job(job, {})
    assert [it.id for it in items] == ["ok"] and [e.line for e in errors] == [1, 2, 3, 4]


def test_json_edge_values_in_a_manifest_are_ignored_lines(tmp_path):
    job = write_job(tmp_path / "job.jsonl", [{"id": "a", "text": "x"}])
    out = tmp_path / "out"
    out.mkdir()
    (out / jobs.MANIFEST_NAME).write_text("\n".join(EDGE) + "\n")
    seen = []
    plan = jobs.prepare(job, out, FAST, seen.append)
    plan.close()
    assert len(seen) == len(EDGE)


def test_json_edge_values_in_a_prompts_file_are_one_line(tmp_path, capsys):
    from magnet_fast.cli import main
    for n, line in enumerate(EDGE):
        p = tmp_path / f"p{n}.jsonl"
        p.write_text(line + "\n")
        assert main(["generate", "--prompts-file", str(p), "--out", str(tmp_path / "o")]) == 2
        one_line(capsys, "JSON")


# ----------------------------------------------------------------------------------------- lone surrogates
def test_lone_surrogates_are_refused_cleanly(tmp_path, demo_model, capsys):
    job = tmp_path / "job.jsonl"
    job.write_text('{"id": "t", "text": "a\\ud800b"}\n{"id": "\\udc00x", "text": "y"}\n'
                   + json.dumps({"id": "ok", "text": "x"}) + "\n")
    items, errors = jobs.parse_job(job, {})
    assert [it.id for it in items] == ["ok"] and [e.line for e in errors] == [1, 2]
    summary = jobs.run_job(job, tmp_path / "out", demo_model, defaults=FAST, warn=_quiet)
    assert summary.failed == 2 and summary.done == 1
    for line in (tmp_path / "out" / jobs.MANIFEST_NAME).read_bytes().splitlines():
        line.decode("utf-8")                                          # the manifest stays UTF-8
    with pytest.raises(ParameterError, match="surrogate"):
        demo_model.generate_tokens(["bad \ud800 text"], decoding_steps=[1, 1, 1, 1])
    from magnet_fast.cli import main
    assert main(["generate", "bad \udcff text", "--out", str(tmp_path / "g.wav")]) == 2
    one_line(capsys, "surrogate")


# ----------------------------------------------------------------------------------------- threads
@pytest.mark.parametrize("threads", [100_000, 0, -1])
def test_threads_bounded(threads, tmp_path, capsys):
    from magnet_fast.cli import main
    job = write_job(tmp_path / "job.jsonl", [{"id": "a", "text": "x"}])
    assert main(["batch", str(job), "--out", str(tmp_path / "o"), "--threads", str(threads)]) == 2
    one_line(capsys, "threads")
    with pytest.raises(ParameterError):
        jobs.run_job(job, tmp_path / "o2", never_load, threads=threads, warn=_quiet)


# ----------------------------------------------------------------------------------------- loading lock
LOAD_SCRIPT = r"""
import sys, threading, warnings
warnings.simplefilter("ignore")
from magnet_fast import MagnetFast, MusicGenFast
from magnet_fast.demo import DEMO_MODEL
results = []
def load(i):
    try:
        cls, path = (MagnetFast, DEMO_MODEL) if i % 2 == 0 else (MusicGenFast, sys.argv[1])
        m = cls.from_pretrained(path)
        m.load_codec()
        results.append("ok")
    except BaseException as e:
        results.append(f"{type(e).__name__}: {e}")
for round in range(2):                       # cold (first imports), then warm
    results.clear()
    ts = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    print(round, results, flush=True)
    assert results == ["ok"] * 4, results
"""


def test_four_threads_load_at_once_cold_and_warm(tmp_path):
    proc = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(MG_DEMO)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]


def test_four_threads_get_pretrained_at_once():
    from magnet_fast.compat import MAGNeT
    got = []

    def load():
        try:
            got.append(MAGNeT.get_pretrained(str(DEMO_MODEL), device="cpu").sample_rate)
        except BaseException as e:  # noqa: BLE001
            got.append(repr(e))
    ts = [threading.Thread(target=load) for _ in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        [t.start() for t in ts]
        [t.join() for t in ts]
    assert got == [32000] * 4, got


# ----------------------------------------------------------------------------------------- audio_write
@pytest.mark.parametrize("kwargs, match", [
    ({"sample_rate": 2**31}, "Hz"), ({"sample_rate": 2**40}, "Hz"),
    ({"wav": torch.zeros(3000, 2)}, "wav.T"), ({"wav": torch.zeros(3000, 100)}, "channels"),
    ({"stem_name": "a\x00b"}, "NUL"), ({"strategy": "loudness", "sample_rate": 2**30}, "Hz"),
])
def test_audio_write_bounds(kwargs, match, tmp_path):
    from magnet_fast.io.audio_out import audio_write, loudness
    args = {"stem_name": str(tmp_path / "x"), "wav": torch.rand(1, 1000) - 0.5, "sample_rate": 32000, **kwargs}
    with pytest.raises(ParameterError, match=match):
        audio_write(args.pop("stem_name"), args.pop("wav"), args.pop("sample_rate"), **args)
    if "sample_rate" in kwargs:
        with pytest.raises(ParameterError, match="Hz"):
            loudness(torch.rand(1, 100), kwargs["sample_rate"])
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------- start-up
@pytest.mark.parametrize("delay", [0.3, 1.5])
def test_ctrl_c_during_start_up_is_one_line(tmp_path, delay):
    proc = subprocess.Popen([sys.executable, "-m", "magnet_fast.cli", "generate", "x", "--out", str(tmp_path / "a.wav")],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err[-2000:]
    if proc.returncode != 0:
        assert proc.returncode == 130 and err.strip().splitlines()[-1] == "magnet-fast: interrupted", err


# A SIGINT delivered while a given module is being imported: a meta-path finder (it finds nothing, so the
# real import proceeds) sends the signal to its own process when the import system asks for that module.
_SIGNAL_AT_IMPORT = """
import os, runpy, signal, sys
target, where = sys.argv.pop(1), sys.argv.pop(1)
KILL = "os.kill(os.getpid(), signal.SIGINT)"
class SignalAtImport:
    def find_spec(self, name, path=None, target_module=None):
        if name == target:
            sys.meta_path.remove(self)
            if where == "exec":            # inside code run by exec of a string, as dataclasses runs it (the
                exec(KILL + "; (lambda: 0)()", {"os": os, "signal": signal})   # handler runs at the call)
            else:
                eval(compile(KILL, "<kick>", "eval"))
        return None
sys.meta_path.insert(0, SignalAtImport())
sys.argv[0] = "-m"
runpy.run_module("magnet_fast.cli", run_name="__main__", alter_sys=False)
"""


@pytest.mark.parametrize("module, where", [
    ("numpy._core._multiarray_umath", "code"), ("numpy._core.multiarray", "code"), ("torch._C", "code"),
    ("magnet_fast.nn.model", "code"), ("torch.autograd.profiler", "exec"), ("transformers", "exec")])
def test_ctrl_c_inside_any_start_up_import_is_one_line(tmp_path, module, where):
    """numpy swallows a KeyboardInterrupt raised inside its own import, or turns it into "ImportError:
    cannot load module more than once per process"; one that escapes code run by exec (dataclasses)
    makes CPython end with SIGINT (status -2) whatever exit code follows. Each must end as one line, 130."""
    out = tmp_path / "a.wav"
    proc = subprocess.run([sys.executable, "-c", _SIGNAL_AT_IMPORT, module, where, "generate", "x", "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == ["magnet-fast: interrupted"], proc.stderr[-2000:]
    assert not out.exists()                         # the interrupted command did not go on to generate


def test_checks_run_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """Prompt audio content (NaN samples), --t5 / --codec folders and hybrid/duration are refused before any
    from_pretrained: loading is made to fail loudly, so a late check would show up as that failure."""
    import numpy as np
    import soundfile as sf

    from magnet_fast import MagnetFast
    from magnet_fast.cli import main
    monkeypatch.setattr(MagnetFast, "from_pretrained", classmethod(lambda cls, *a, **k: never_load()))
    nan = tmp_path / "nan.wav"
    sf.write(str(nan), np.full((1600, 1), np.nan, dtype=np.float32), 32000, subtype="FLOAT")
    for argv, word in ((["--prompt-audio", str(nan)], "NaN"), (["--t5", "./no/such/t5"], "t5"),
                       (["--codec", "./no/such/codec"], "codec")):
        assert main(["generate", "x", "--out", str(tmp_path / "o.wav"), *argv]) == 2
        one_line(capsys, word)


# ----------------------------------------------------------------------------------------- numbers, None
def test_seed_range_is_one_range(tmp_path, demo_model):
    from magnet_fast.params import check_seed
    job = write_job(tmp_path / "job.jsonl", [{"id": f"s{s}", "text": "x", "seed": s}
                                             for s in (2**63 - 1, 2**63 - 2, 2**63 - 3, 0)])
    items, errors = jobs.parse_job(job, {})
    for it in items:
        check_seed([it.seed])                                  # what the job accepts, the engine accepts
    assert {e.line for e in errors} == {1, 2}


@pytest.mark.parametrize("np_type", ["float32", "float16", "float64", "int32", "int64"])
def test_numpy_durations_accepted_like_python_numbers(np_type, demo_model):
    import numpy as np

    from magnet_fast import MusicGenFast
    value = getattr(np, np_type)(1)
    a = demo_model.generate_tokens(["x"], seed=1, duration=value, decoding_steps=[1, 1, 1, 1])
    b = demo_model.generate_tokens(["x"], seed=1, duration=1.0, decoding_steps=[1, 1, 1, 1])
    assert torch.equal(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mg = MusicGenFast.from_pretrained(MG_DEMO)
    assert mg.generate_tokens(["x"], seed=1, duration=getattr(np, np_type)(0.5) if "float" in np_type else
                              getattr(np, np_type)(1)).shape[-1] > 0


@pytest.mark.parametrize("bad", [None, 5, b"\x00", "a\x00b"])
def test_from_pretrained_bad_path_is_a_checkpoint_error(bad):
    from magnet_fast import MagnetFast, MusicGenFast
    for cls in (MagnetFast, MusicGenFast):
        with pytest.raises(CheckpointError):
            cls.from_pretrained(bad)
