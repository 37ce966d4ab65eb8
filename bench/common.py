"""What every benchmark script in bench/ shares: the stamp of a run, writing results, CUDA synchronisation,
and the runtime variants (BACKEND[+graphs][+fused]) that bench/runtime.py and bench/e2e.py time.

A results folder holds ``results.json`` (``{"meta": stamp + run settings, "rows": [...]}``), ``results.md``
and, when matplotlib is installed, plots; bench/report.py renders the committed ones into the README.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def working_tree_hash() -> str:
    """Git tree hash of the working tree as it is (tracked and untracked, not ignored), via a throw-away
    index. Equal to ``git rev-parse COMMIT^{tree}`` when the tree is that commit's, so a result stays
    attributable where .git is stale (the device machine's copy stood at an older commit)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        try:
            subprocess.run(["git", "add", "-A"], cwd=ROOT, env=env, capture_output=True, check=True)
            return subprocess.run(["git", "write-tree"], cwd=ROOT, env=env, capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""


def loadavg() -> tuple[float, float, float] | None:
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    cpuinfo = Path("/proc/cpuinfo")
    model = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
             if ln.startswith("model name")] if cpuinfo.exists() else []
    return f"{model[0] if model else platform.processor()} ({torch.get_num_threads()} threads)"


def stamp(device: str) -> dict:
    """Where and on what a run ran: device, library versions, git commit and working-tree hash, date, load."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"device": device, "device_name": device_name(device), "torch": torch.__version__,
            "triton": triton_version, "cuda": torch.version.cuda, "git_commit": _git("rev-parse", "HEAD"),
            "git_tree": working_tree_hash(),
            "git_dirty": bool(_git("status", "--porcelain", "--", "kernels", "bench")),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "loadavg_at_start": loadavg()}


def sync(device: str) -> None:
    """Wait for queued CUDA work (timings of asynchronous launches); nothing on CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def fmt(x, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def write_atomic(path: Path, text: str) -> None:
    from magnet_fast.io.files import atomic_write_bytes
    atomic_write_bytes(path, text.encode())


def save_results(out: Path, meta: dict, rows: list[dict], md_lines: list[str], plots: bool = True) -> None:
    """results.json + results.md in ``out`` (every benchmark script; called after each case, so a run
    killed at its time limit keeps what finished), and plots (when ``plots`` and matplotlib is there)."""
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "results.json", json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    write_atomic(out / "results.md", "\n".join(md_lines) + "\n")
    if not plots:
        return
    try:
        import plot
    except ImportError:                     # matplotlib is optional, not a dependency
        return
    plot.plot(out / "results.json")


# --- runtime variants (bench/runtime.py, bench/e2e.py)

VARIANT_FLAGS = {"graphs", "fused", "int8"}     # int8: a model loaded with quantize="int8" (CPU; bench/e2e.py)


def parse_variant(variant: str) -> tuple[str, set]:
    """'triton+fused+graphs' -> ('triton', {'fused', 'graphs'}); SystemExit on an unknown flag."""
    backend, *flags = variant.split("+")
    if set(flags) - VARIANT_FLAGS:
        raise SystemExit(f"unknown variant {variant!r}: BACKEND[+graphs][+fused][+int8]")
    return backend, set(flags)


def apply_variant(model, variant: str) -> None:
    """Set a MagnetFast's attention backend, sampler and CUDA graphs for a runtime variant."""
    backend, flags = parse_variant(variant)
    model.set_attention(backend)
    model.set_sampler("fused" if "fused" in flags else "torch")
    model.set_cuda_graphs("graphs" in flags)


def recordings(model) -> int:
    """How many steps are recorded now (a change during a timed loop means timings include recording)."""
    return model.decoders.recorded_steps()


def set_decoder_capacity(model, n: int) -> None:
    """Keep the recordings of ``n`` shapes (round-robin timing must not evict one it replays)."""
    model.decoders.capacity = n


def set_codec(model, codec) -> None:
    model.set_codec(codec)


def token_gate(model, variant: str, texts: list[str], steps=(4, 2, 2, 2)) -> float:
    """Greedy tokens of the variant, replayed when it uses graphs, vs the same backend eager with the
    default sampler: the share of equal tokens (1.0 expected; a broken replay or fused sampler shows)."""
    backend, _ = parse_variant(variant)
    apply_variant(model, backend)
    ref = model.generate_tokens(texts, use_sampling=False, decoding_steps=list(steps))
    apply_variant(model, variant)
    model.generate_tokens(texts, use_sampling=False, decoding_steps=list(steps))        # records (graphs)
    got = model.generate_tokens(texts, use_sampling=False, decoding_steps=list(steps))  # replays
    model.clear_cuda_graphs()
    return (got == ref).float().mean().item()
