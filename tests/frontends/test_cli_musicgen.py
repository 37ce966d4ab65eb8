"""``magnet-fast`` on a MusicGen model (the bundled MusicGen demo): generation, flags of the other family
refused (exit 2, one line), info, and the WAV length from --duration."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

sf = pytest.importorskip("soundfile", reason="soundfile (and its cffi) not installed: the CLI writes WAVs with it")

from tests.frontends.test_cli import cli, run_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MG_DEMO = ROOT / "magnet_fast" / "demo" / "musicgen-tiny-demo"


def one_error_line(proc, match: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("magnet-fast: error:")]
    assert len(lines) == 1 and match in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


class _Done:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def main_in_process(*args: str, cwd: Path, capsys) -> _Done:
    """``magnet_fast.cli.main`` in this process (the bad-input paths exit before any model loads, so a
    subprocess per case would only add interpreter start-up); the exit code and the printed lines."""
    from magnet_fast.cli import main
    old = os.getcwd()
    os.chdir(cwd)
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as e:                      # argparse errors exit through the parser
        code = e.code
    finally:
        os.chdir(old)
    out = capsys.readouterr()
    return _Done(code, out.out, out.err)


def test_musicgen_generate_writes_wavs_of_the_requested_duration(tmp_path):
    proc = run_main("generate", "--model", str(MG_DEMO), "calm piano", "edm", "--duration", "0.42", "--seed", "1",
                    "--top-k", "50", "--cfg", "4", "--quiet", "--out", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    files = sorted((tmp_path / "out").iterdir())
    assert [f.name for f in files] == ["00_calm_piano.wav", "01_edm.wav"]
    wav, rate = sf.read(files[0])
    assert rate == 32000 and len(wav) == int(0.42 * 50) * 640            # int(duration * 50) frames
    again = run_main("generate", "--model", str(MG_DEMO), "calm piano", "edm", "--duration", "0.42", "--seed",
                     "1", "--top-k", "50", "--cfg", "4", "--quiet", "--out", "again", cwd=tmp_path)
    assert again.returncode == 0
    assert (tmp_path / "again" / "00_calm_piano.wav").read_bytes() == files[0].read_bytes()


def test_musicgen_two_step_greedy_tokens_only(tmp_path):
    proc = run_main("generate", "--model", str(MG_DEMO), "x", "--duration", "0.2", "--two-step-cfg", "--greedy",
                    "--tokens-only", "--quiet", "--out", "t.safetensors", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    from safetensors.torch import load_file
    assert list(load_file(str(tmp_path / "t.safetensors"))["tokens"].shape) == [1, 4, 10]


@pytest.mark.parametrize("args, match", [
    (["--steps", "2,1,1,1"], "--steps is for MAGNeT models; this is a MusicGen model"),
    (["--stride1"], "--stride1 is for MAGNeT models"),
    (["--cfg", "10,1"], "--cfg must be one number for a MusicGen model"),
    (["--duration", "4000"], "duration must be <= 3600"),
    (["--duration", "-1"], "duration must be >"),
    (["--top-k", "5000"], "top_k must be <= the codebook size 2048"),
    (["--duration", "40", "--extend-stride", "30"], "extend_stride must be in (0, 30)"),
])
def test_musicgen_bad_flags_exit_2_one_line(tmp_path, args, match, capsys):
    one_error_line(main_in_process("generate", "--model", str(MG_DEMO), "x", *args, cwd=tmp_path, capsys=capsys),
                   match)
    assert not (tmp_path / "outputs").exists()


def test_magnet_refuses_musicgen_flags(tmp_path):
    """One real subprocess for the contract (console exit code, one line); the other cases run in-process."""
    one_error_line(cli("generate", "x", "--two-step-cfg", cwd=tmp_path), "--two-step-cfg is for MusicGen models")


def test_info_shows_the_kind(tmp_path, capsys):
    proc = main_in_process("info", str(MG_DEMO), cwd=tmp_path, capsys=capsys)
    assert proc.returncode == 0 and "kind: musicgen" in proc.stdout and "delay pattern [0, 1, 2, 3]" in proc.stdout
    info = json.loads(main_in_process("info", str(MG_DEMO), "--json", cwd=tmp_path, capsys=capsys).stdout)
    assert info["kind"] == "musicgen" and info["delays"] == [0, 1, 2, 3]
    assert "kind: magnet" in main_in_process("info", cwd=tmp_path, capsys=capsys).stdout


DEMO = ROOT / "magnet_fast" / "demo" / "magnet-tiny-demo"


def test_hybrid_and_rescoring_from_the_cli(tmp_path):
    """The bundled MAGNeT demo with the bundled MusicGen demo as its AR prefix and its rescorer."""
    proc = run_main("generate", "calm piano", "--hybrid", str(MG_DEMO), "--hybrid-seconds", "0.5", "--rescore",
                    str(MG_DEMO), "--rescore-weight", "0.5", "--steps", "2,1,1,1", "--seed", "2", "--tokens-only",
                    "--quiet", "--out", "t.safetensors", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    from safetensors.torch import load_file
    tokens = load_file(str(tmp_path / "t.safetensors"))["tokens"]
    assert list(tokens.shape) == [1, 4, 498]
    import magnet_fast as mf
    prefix = mf.MusicGenFast.from_pretrained(MG_DEMO).generate_tokens(["calm piano"], seed=2, duration=0.5)
    assert (tokens[..., :25] == prefix).all()                    # the AR prefix, then MAGNeT


def test_magnet_long_form_from_the_cli(tmp_path):
    proc = run_main("generate", "x", "--duration", "12.5", "--extend-stride", "5", "--steps", "2,1,1,1", "--seed",
                    "1", "--quiet", "--out", "long.wav", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sf.info(str(tmp_path / "long.wav")).frames == round(12.5 * 50) * 640


@pytest.mark.parametrize("args, match", [
    (["--rescore", str(MG_DEMO), "--rescore-weight", "1.5"], "--rescore-weight must be in [0, 1]"),
    (["--hybrid", str(MG_DEMO), "--hybrid-seconds", "10"], "--hybrid-seconds must be in (0, 10)"),
    (["--hybrid", str(DEMO)], "--hybrid needs a MusicGen model folder"),
    (["--rescore-weight", "0.5"], "--rescore-weight needs --rescore"),
    (["--duration", "20", "--extend-stride", "12"], "extend_stride must be in (0, 10)"),
])
def test_paired_model_flags_exit_2_one_line(tmp_path, args, match, capsys):
    one_error_line(main_in_process("generate", "x", *args, cwd=tmp_path, capsys=capsys), match)
    assert not (tmp_path / "outputs").exists()


def test_musicgen_refuses_hybrid_flags(tmp_path, capsys):
    one_error_line(main_in_process("generate", "--model", str(MG_DEMO), "x", "--hybrid", str(MG_DEMO),
                                   cwd=tmp_path, capsys=capsys), "--hybrid is for MAGNeT models")
