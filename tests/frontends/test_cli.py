"""The ``magnet-fast`` CLI: success paths and every bad input (exit 2, one line). Most cases run
``magnet_fast.cli.main`` in-process (``run_main``: the same exit code and printed lines, without a
subprocess's interpreter and torch start-up); one case per group runs the real console (``cli``)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sf = pytest.importorskip("soundfile", reason="soundfile (and its cffi) not installed: the CLI writes WAVs with it")

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "magnet_fast" / "demo" / "magnet-tiny-demo"
AC_EXPORT = ROOT / "tests" / "fixtures" / "ac_ref" / "magnet_tiny"
FAST = ["--steps", "2,1,1,1", "--quiet"]


def child_env() -> dict:
    """The environment of a console run: this checkout's magnet_fast first on the path (not whichever
    magnet_fast is installed), nothing else of the caller's PYTHONPATH."""
    return {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": str(ROOT)}


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m magnet_fast.cli`` in a child process: the console contract (exit code, stdout, stderr)."""
    env = child_env()
    return subprocess.run([sys.executable, "-m", "magnet_fast.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def run_main(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``magnet_fast.cli.main`` in this process: the same exit code and printed lines as the console script,
    without a subprocess's interpreter and torch start-up (~3 s per case)."""
    import contextlib
    import io

    from magnet_fast.cli import main
    out, err, old = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:                  # argparse errors exit through the parser
                code = e.code
    finally:
        os.chdir(old)
    return subprocess.CompletedProcess(["magnet-fast", *args], code, out.getvalue(), err.getvalue())


def assert_usage_error(proc: subprocess.CompletedProcess, match: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("magnet-fast: error:")]
    assert len(lines) == 1 and match in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_generate_demo_writes_wavs(tmp_path):
    proc = run_main("generate", "lo-fi beat with piano", "calm strings", "--seed", "3", *FAST, "--out", "songs",
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    files = sorted((tmp_path / "songs").iterdir())
    assert [f.name for f in files] == ["00_lo_fi_beat_with_piano.wav", "01_calm_strings.wav"]
    umask = os.umask(0)
    os.umask(umask)
    assert files[0].stat().st_mode & 0o777 == 0o666 & ~umask            # not mkstemp's 0o600
    data, sr = sf.read(files[0])
    assert sr == 32000 and data.shape == (498 * 640,) and np.isfinite(data).all() and np.abs(data).max() > 0
    assert "real-time factor" in proc.stdout and "untrained demo weights" in proc.stderr
    again = run_main("generate", "lo-fi beat with piano", "calm strings", "--seed", "3", *FAST, "--out", "again",
                     cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert np.array_equal(sf.read(tmp_path / "again" / files[0].name)[0], data)   # the seed reproduces
    one = cli("generate", "lo-fi beat with piano", "--seed", "3", *FAST, "--out", "one.wav", cwd=tmp_path)  # console
    assert one.returncode == 0, one.stderr
    assert sf.read(tmp_path / "one.wav")[0].shape == data.shape
    assert_usage_error(run_main("generate", "x", *FAST, "--out", "one.wav", cwd=tmp_path), "--force")
    assert run_main("generate", "x", *FAST, "--out", "one.wav", "--force", cwd=tmp_path).returncode == 0


def test_prompts_file_and_tokens_only(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"description": "edm"}\n\n{"description": null}\n')
    proc = run_main("generate", "--prompts-file", "p.jsonl", "--tokens-only", *FAST, "--out", "t.safetensors",
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    from safetensors.torch import load_file
    assert list(load_file(str(tmp_path / "t.safetensors"))["tokens"].shape) == [2, 4, 498]


def test_convert_and_info(tmp_path):
    proc = cli("convert", str(AC_EXPORT), "conv", cwd=tmp_path)                  # the console run
    assert proc.returncode == 0, proc.stderr
    info = run_main("info", "conv", cwd=tmp_path)
    assert info.returncode == 0 and "0.4 M parameters (F16)" in info.stdout, info.stdout
    assert_usage_error(run_main("convert", str(AC_EXPORT), "conv", cwd=tmp_path), "already exists")
    assert_usage_error(run_main("convert", str(tmp_path), "x", cwd=tmp_path), "state_dict.bin not found")


@pytest.mark.parametrize("args, match", [
    pytest.param(["x", "--model", "nowhere"], "model folder nowhere not found", id="unknown-model"),
    pytest.param(["x", "--model", str(AC_EXPORT)], "run `magnet-fast convert", id="not-converted"),
    pytest.param([], "no prompts", id="no-prompts"),
    pytest.param(["  "], "empty prompt", id="blank-prompt"),
    pytest.param(["x", "--steps", "20,10,10"], "decoding_steps must be 4", id="steps-length"),
    pytest.param(["x", "--steps", "20,0,10,10"], "decoding_steps must be 4", id="steps-zero"),
    pytest.param(["x", "--steps", "a,b"], "comma-separated integers", id="steps-text"),
    pytest.param(["x", "--top-p", "-0.1"], "top_p must be >= 0.0", id="top-p-negative"),
    pytest.param(["x", "--top-p", "1.5"], "top_p must be <= 1.0", id="top-p-high"),
    pytest.param(["x", "--seed", "-1"], "seed must be an integer in [0, 2**63)", id="seed-negative"),
    pytest.param(["x", "--top-p", "0.5", "--top-k", "5"], "exclude each other", id="top-p-and-k"),
    pytest.param(["x", "--temperature", "-1"], "temperature must be >= 0", id="negative-temperature"),
    pytest.param(["x", "--cfg", "10"], "MAX,MIN", id="cfg-one-value"),
    pytest.param(["x", "--prompts-file", "missing.txt"], "not readable", id="prompts-file-missing"),
    pytest.param(["a", "b", "--out", "one.wav"], "names one file", id="one-file-many-prompts"),
])
def test_bad_input(tmp_path, args, match):
    runner = cli if args == ["x", "--model", "nowhere"] else run_main      # one real console run
    proc = runner("generate", *args, *(FAST if "--steps" not in args else ["--quiet"]), cwd=tmp_path)
    assert_usage_error(proc, match)
    assert list(tmp_path.iterdir()) == [] or all(p.suffix != ".wav" for p in tmp_path.rglob("*"))


def test_bad_prompt_audio(tmp_path):
    sf.write(tmp_path / "long.wav", np.zeros(32000 * 11, dtype=np.float32), 32000)
    assert_usage_error(run_main("generate", "x", *FAST, "--prompt-audio", "long.wav", cwd=tmp_path),
                       "must be shorter than the model's 10 s")
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    assert_usage_error(run_main("generate", "x", *FAST, "--prompt-audio", "junk.wav", cwd=tmp_path),
                       "not readable audio")
    assert not list(tmp_path.glob("outputs/*.wav"))


def test_unwritable_output(tmp_path):
    (tmp_path / "file").write_text("I am a file")
    assert_usage_error(run_main("generate", "x", *FAST, "--out", "file/sub", cwd=tmp_path), "cannot be created")


def test_output_names_are_sanitised():
    from magnet_fast.io.audio import output_paths, slug
    assert slug("../../etc/passwd") == "etc_passwd"
    assert slug("   ") == "prompt" and slug(None) == "unconditional"
    paths = output_paths(Path("out"), ["../../x", "a/b\\c:d", "é!"], Path("d"))
    assert [p.parent for p in paths] == [Path("out")] * 3
    assert [p.name for p in paths] == ["00_x.wav", "01_a_b_c_d.wav", "02_prompt.wav"]


def test_info_on_damaged_model(tmp_path):
    assert run_main("convert", str(AC_EXPORT), "conv", cwd=tmp_path).returncode == 0
    (tmp_path / "conv" / "model.safetensors").unlink()
    assert_usage_error(run_main("info", "conv", cwd=tmp_path), "missing or unreadable")


def test_engine_registry_is_the_one_place_the_kind_is_read(tmp_path):
    """magnet_fast.engines.registry: config.json's kind -> the engine class (the one that loads that folder), its
    loader for batch jobs, and the pre-load checks the CLI runs (the engine's own ParameterErrors)."""
    import json
    import shutil
    import warnings

    import magnet_fast as mf
    from magnet_fast.config import ENGINES, KINDS, MagnetConfig
    from magnet_fast.engines import registry
    from magnet_fast.errors import ConfigError, ParameterError
    mg = DEMO.parent / "musicgen-tiny-demo"
    assert tuple(registry.ENGINES) == KINDS
    assert registry.engine_for(DEMO) is mf.MagnetFast and registry.engine_for(str(mg)) is mf.MusicGenFast
    assert registry.engine_for(MagnetConfig.load(mg)) is mf.MusicGenFast
    for kind, entry in registry.ENGINES.items():
        assert entry.engine().KIND == kind and entry.engine().__name__ == ENGINES[kind] and entry.kind == kind
    # the checks: the window's seconds, or the engine's own error for the same value
    assert registry.entry_for(DEMO).check(MagnetConfig.load(DEMO), {"duration": 25.0}) == 10.0
    assert registry.entry_for(mg).check(MagnetConfig.load(mg), {"duration": 4.0}) == 4.0
    assert registry.entry_for(mg).check(MagnetConfig.load(mg), {"duration": 45.0}) == 30.0     # long-form window
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)                  # the demos' "untrained weights" notice
        engines = {folder: registry.engine_for(folder).from_pretrained(folder) for folder in (DEMO, mg)}
    for folder, params in ((DEMO, {"decoding_steps": [1, 1]}), (DEMO, {"duration": 20.0, "extend_stride": 10.0}),
                           (mg, {"top_k": 5000}), (mg, {"duration": 40.0, "extend_stride": 31.0})):
        with pytest.raises(ParameterError) as checked:
            registry.entry_for(folder).check(MagnetConfig.load(folder), params)
        with pytest.raises(ParameterError) as engine:
            engines[folder].generate_tokens(["x"], **params)
        assert str(checked.value) == str(engine.value)
    bad = tmp_path / "bad"
    shutil.copytree(DEMO, bad, ignore=shutil.ignore_patterns("t5", "codec", "*.safetensors"))
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "kind": "audiogen"}))
    with pytest.raises(ConfigError, match="kind must be one of"):
        registry.engine_for(bad)
