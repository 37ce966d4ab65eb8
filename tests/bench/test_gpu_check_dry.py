"""The GPU check rehearsed on CPU: bench/gpu_check.sh's dry run of EVERY stage of the device plan (tests,
kernels, runtime, profile, e2e, musicgen, paper: same scripts and plumbing, toy sizes, one round each,
no codec decode), so a broken script, a missing wheel or a stale import is caught here and not on a lent
GPU. Its kernels stage is also the test of bench/run.py (the same tiny CPU command; one run, not two)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "bench" / "report.py"
pytestmark = pytest.mark.slow


def _prerequisites() -> str | None:
    if not (ROOT / ".whl").is_dir():
        return "no .whl/ (run bash bench/gpu_wheels.sh; .ci/run does)"
    if not (ROOT / ".venv-audiocraft" / "bin" / "python").exists():
        return "no audiocraft oracle (tests/fixtures/setup_audiocraft.sh; .ci/run does)"
    return None


ROW_KEYS = {"op", "shape", "provider", "dtype", "gate", "max_abs_err", "ms", "ms_p20", "ms_p80",
            "speedup_vs_ref"}


def _check_kernel_benchmarks(folder: Path) -> None:
    """The kernels stage is bench/run.py's tiny CPU run as pytest-benchmark tests (Triton under the
    interpreter, few rounds): every provider's parity gate passes and is timed, results.json has the rows
    bench/report.py reads, and pytest-benchmark's JSON (the raw result) is kept beside it."""
    rows = json.loads((folder / "results.json").read_text())["rows"]
    assert rows and all(ROW_KEYS <= r.keys() for r in rows)
    passed = {(r["op"], r["provider"]) for r in rows if r["gate"] == "pass" and r["ms"] and r["ms"] > 0}
    want = {("banded_attn", p) for p in ("naive", "sdpa", "windowed", "triton")} | \
           {("sample_step", p) for p in ("torch_ops", "fused")}
    assert want <= passed, (want - passed, rows)
    assert all(r["ms_p20"] <= r["ms_p80"] and r["speedup_vs_ref"] > 0 for r in rows if r["ms"])
    raw = json.loads((folder / "benchmark.json").read_text())["benchmarks"]
    assert {(b["extra_info"]["op"], b["extra_info"]["provider"]) for b in raw} >= want
    assert all(b["stats"]["data"] and b["extra_info"]["gate"] == "pass" for b in raw)
    assert "| tiny-T97-W5 | triton | float32 |" in (folder / "results.md").read_text()


def test_gpu_check_dry_run(tmp_path):
    missing = _prerequisites()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must rehearse the GPU check: {missing}")
        pytest.skip(missing)
    out, tar = tmp_path / "gc", tmp_path / "gc.tgz"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    env.update(GPU_CHECK_DRY="1", GPU_CHECK_TAR=str(tar), PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(out), "quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "gpu_check rc=0 dry=1" in proc.stdout
    assert not (out / "FAILED.txt").exists()
    assert "passed" in (out / "pytest-gpu.log").read_text()
    # every benchmark stage wrote its stamped results, with passing gates
    kinds = {"bench-bf16": "op", "runtime-small-10s": "variant", "e2e-cuda-small": "audiocraft_s",
             "profile-step": "kind", "e2e-musicgen": "audiocraft_s", "paper": "mode"}
    for stage, key in kinds.items():
        data = json.loads((out / stage / "results.json").read_text())
        assert data["rows"] and key in data["rows"][0], stage
        assert data["meta"]["git_tree"] and data["meta"]["torch"], stage
    _check_kernel_benchmarks(out / "bench-bf16")
    runtime = json.loads((out / "runtime-small-10s" / "results.json").read_text())["rows"]
    assert all(r["gate"] == "PASS" and r["seconds"] > 0 for r in runtime)
    e2e = json.loads((out / "e2e-cuda-small" / "results.json").read_text())
    assert e2e["meta"]["gates"]["exact"] == "PASS"
    paper = json.loads((out / "paper" / "results.json").read_text())
    assert set(paper["meta"]["gates"].values()) == {"PASS"} and not paper["meta"]["recorded_while_timing"]
    assert {r["mode"] for r in paper["rows"]} >= {"MAGNeT", "MusicGen alone"}
    profile = json.loads((out / "profile-step" / "results.json").read_text())["rows"]
    assert {"gemm", "attention", "layernorm"} <= {r["kind"] for r in profile}
    # the archive holds the same folder (what the device tool returns)
    with tarfile.open(tar) as t:
        names = t.getnames()
    assert "gc/runtime-small-10s/results.json" in names and "gc/env.txt" in names
    # and the README tables can be generated from those results
    results = tmp_path / "results"
    results.mkdir()
    for stage in ("bench-bf16", "runtime-small-10s", "e2e-cuda-small", "e2e-musicgen"):
        (out / stage).rename(results / stage)
    readme = tmp_path / "README.md"
    readme.write_text("# t\n<!-- perf:begin: generated by bench/report.py from bench/results/*/results.json; "
                      "do not edit -->\n<!-- perf:end -->\n")
    subprocess.run([sys.executable, str(REPORT), "--readme", str(readme), "--results", str(results)], check=True,
                   capture_output=True)
    text = readme.read_text()
    assert "**Runtime, tiny geometry" in text and "**Kernel microbenchmarks**" in text and "audiocraft" in text
