"""Kernel benchmarks: a parity gate per (op, shape, provider), then timings, written as JSON + markdown.

    python bench/run.py                      # CUDA if available, else the reduced CPU set
    python bench/run.py --ops banded_attn --shapes T500 --out bench/results/tmp

GPU timings use triton.testing.do_bench (median, p20, p80); CPU timings are time.perf_counter
medians. Each shape's providers are built, gated and warmed up before that shape is timed (results are written
after every shape, so a run killed at its time limit keeps what finished); a provider whose output fails
the gate against the first (reference) provider is reported as red with no time and no speedup.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from registry import REGISTRY, TINY, TINY_PROVIDERS

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ATTN_ATOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def stamp(device: str) -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""
    if device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        model = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")] if Path("/proc/cpuinfo").exists() else []
        name = f"{model[0] if model else platform.processor()} ({torch.get_num_threads()} threads)"
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"device": device, "device_name": name, "torch": torch.__version__, "triton": triton_version,
            "cuda": torch.version.cuda, "git_commit": git("rev-parse", "HEAD"), "git_tree": working_tree_hash(),
            "git_dirty": bool(git("status", "--porcelain", "--", "kernels", "bench")),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "loadavg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None}


def working_tree_hash() -> str:
    """Git tree hash of the working tree as it is (tracked and untracked, not ignored), via a throw-away
    index. Equal to ``git rev-parse COMMIT^{tree}`` when the tree is that commit's, so a result stays
    attributable where .git is stale (the device machine's copy stood at an older commit)."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        try:
            subprocess.run(["git", "add", "-A"], cwd=ROOT, env=env, capture_output=True, check=True)
            return subprocess.run(["git", "write-tree"], cwd=ROOT, env=env, capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""


_FLEX = None


def interpreting() -> bool:
    """Triton kernels run on CPU under TRITON_INTERPRET=1 (the dry run's tiny shapes only)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def attn_case(dims: dict, dtype, device):
    """-> (inputs, {provider: fn}, gate(out, ref) -> (ok, err))."""
    from magnet_fast.kernels.banded_attn import naive
    B, H, T, D, window = dims["B"], dims["H"], dims["T"], dims["D"], dims["window"]
    q, k, v = (torch.randn(B, H, T, D, device=device, dtype=dtype) for _ in range(3))
    bias_mask = None
    if window is not None:
        idx = torch.arange(T, device=device)
        bias_mask = (idx[:, None] - idx[None, :]).abs() <= window                 # True = attend
    fns = {"naive": lambda: naive.banded_attention(q, k, v, window),
           "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias_mask)}
    if window is not None:                  # the runtime's 'windowed' backend (dense query blocks)
        from magnet_fast.attention import windowed_attention
        fns["windowed"] = lambda: windowed_attention(q, k, v, window)
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        global _FLEX
        _FLEX = _FLEX or torch.compile(flex_attention, dynamic=False)
        block_mask = None
        if window is not None:
            block_mask = create_block_mask(lambda b, h, i, j: (i - j).abs() <= window, None, None, T, T,
                                           device=device)
        fns["flex"] = lambda: _FLEX(q, k, v, block_mask=block_mask)
    except ImportError:
        pass
    if device == "cuda" or interpreting():
        from magnet_fast.kernels.banded_attn import triton as bt
        fns["triton"] = lambda: bt.banded_attn_fwd(q, k, v, window)

    def gate(out, ref):
        err = (out.float() - ref.float()).abs().max().item()
        return err <= ATTN_ATOL[dtype] and out.isfinite().all().item(), err
    return fns, gate


def sample_case(dims: dict, dtype, device):
    from magnet_fast.kernels.sample import triton as st
    B, T, V = dims["B"], dims["T"], dims["V"]
    cond, uncond = (torch.randn(B, T, V, device=device).mul(3).to(dtype) for _ in range(2))
    tokens = torch.full((B, T), V, device=device)
    noise = torch.empty(B, T, V, device=device).exponential_(1)
    masked = torch.ones(B, T // 3, dtype=torch.bool, device=device)
    py = (3.0, 2.0, dims["top_p"], 0, dims["greedy"])
    dev = [torch.tensor(x, device=device) for x in py]
    fns = {"torch_ops": lambda: st.sample_step_ref(cond, uncond, tokens, noise, masked, *py, 3, "max",
                                                   pairing="vocab")}
    if device == "cuda" or interpreting():
        fns["fused"] = lambda: st.sample_step_fwd(cond, uncond, tokens, noise, masked, *dev, 3, "max")

    from magnet_fast.kernels.sample import naive
    tied = torch.zeros(B, T, dtype=torch.bool, device=device)
    if dims["top_p"] > 0 and not dims["greedy"]:            # exact ties at the top-p boundary: keep sets
        probs = naive.step_probs(naive.cfg_logits(cond, uncond, 3.0), 2.0)      # may differ by design
        tied = naive.top_p_boundary_tied(probs, dims["top_p"])

    def gate(out, ref):
        same = (out[0] == ref[0]) & ~tied
        err = (out[1][same] - ref[1][same]).abs().max().item() if same.any() else float("inf")
        return same.float().mean().item() >= 0.999 * (1 - tied.float().mean().item()) and err <= 1e-5, err
    return fns, gate


CASES = {"banded_attn": attn_case, "sample_step": sample_case}


def time_providers(fns: dict, device: str, budget_s: float = 1.5, min_rounds: int = 7) -> dict:
    """{provider: (median, p20, p80) ms}. On CPU the providers are timed round-robin (one call each per
    round), so load from other processes on the machine hits all of them alike."""
    if device == "cuda":
        from triton.testing import do_bench
        return {p: tuple(do_bench(fn, quantiles=[0.5, 0.2, 0.8])) for p, fn in fns.items()}
    t0 = time.perf_counter()
    for fn in fns.values():
        fn()
    once = time.perf_counter() - t0
    times = {p: [] for p in fns}
    for _ in range(max(min_rounds, min(50, int(budget_s / max(once, 1e-6))))):
        for p, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[p].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for p, ts in times.items():
        q = statistics.quantiles(ts, n=10)
        out[p] = (statistics.median(ts), q[1], q[7])
    return out


def run(ops, shape_filter, dtype, device, cpu_all: bool, on_rows=None, tiny: bool = False) -> list[dict]:
    """Gate then time every (op, shape, provider); ``on_rows(rows)`` after each shape's timings."""
    torch._dynamo.config.recompile_limit = 256
    plan = []
    for op in ops:
        cfg = REGISTRY[op]
        providers = cfg.providers if device == "cuda" else cfg.cpu_providers
        if tiny:
            providers = TINY_PROVIDERS[op]
        for shape in (TINY[op] if tiny else cfg.shapes):
            if device != "cuda" and not (shape.cpu or cpu_all or tiny):
                continue
            if shape_filter and shape_filter not in shape.name:
                continue
            plan.append((op, shape, providers))
    rows, gates = [], {}
    for op, shape, providers in plan:       # per shape: gate + warm-up (compiles) every provider, then time
        torch.manual_seed(0)
        fns, gate = CASES[op](shape.dims, dtype, device)
        ref = fns[providers[0]]()
        for p in providers:
            if p not in fns:
                gates[(op, shape.name, p)] = ("unavailable", None)
                continue
            try:
                ok, err = gate(fns[p](), ref)
                gates[(op, shape.name, p)] = ("pass" if ok else "FAIL", err)
            except Exception as e:                          # a provider that cannot run is reported, not fatal
                gates[(op, shape.name, p)] = (f"error: {type(e).__name__}: {str(e)[:120]}", None)
            print(f"gate {op:12s} {shape.name:28s} {p:10s} {gates[(op, shape.name, p)]}", flush=True)
        del ref
        ok = [p for p in providers if gates[(op, shape.name, p)][0] == "pass"]
        timed = time_providers({p: fns[p] for p in ok}, device, min_rounds=3 if tiny else 7)
        base = timed.get(providers[0], (None,))[0]
        for p in providers:
            status, err = gates[(op, shape.name, p)]
            row = {"op": op, "shape": shape.name, **{f"dim_{k}": v for k, v in shape.dims.items()},
                   "provider": p, "dtype": str(dtype).replace("torch.", ""), "gate": status, "max_abs_err": err,
                   "ms": None, "ms_p20": None, "ms_p80": None, "speedup_vs_ref": None}
            if p in timed:
                row["ms"], row["ms_p20"], row["ms_p80"] = timed[p]
                row["speedup_vs_ref"] = base / row["ms"] if base else None
            print(f"time {op:12s} {shape.name:28s} {p:10s} {row['ms']}", flush=True)
            rows.append(row)
        del fns
        if on_rows:
            on_rows(rows)
    return rows


VARIANT_FLAGS = {"graphs", "fused"}


def parse_variant(variant: str) -> tuple[str, set]:
    """'triton+fused+graphs' -> ('triton', {'fused', 'graphs'}); SystemExit on an unknown flag."""
    backend, *flags = variant.split("+")
    if set(flags) - VARIANT_FLAGS:
        raise SystemExit(f"unknown variant {variant!r}: BACKEND[+graphs][+fused]")
    return backend, set(flags)


def apply_variant(model, variant: str) -> None:
    """Set a MagnetFast's attention backend, sampler and CUDA graphs for a runtime variant."""
    backend, flags = parse_variant(variant)
    model.set_attention(backend)
    model.set_sampler("fused" if "fused" in flags else "torch")
    model.set_cuda_graphs("graphs" in flags)


def recordings(model) -> int:
    """How many steps are recorded now (a change during a timed loop means timings include recording)."""
    return sum(len(d._graphs) for d in model._decoders.values()) + len(model._decoders)


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


def fmt(x, spec):
    return "—" if x is None else format(x, spec)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_results(out: Path, meta: dict, rows: list[dict], md_lines: list[str], plots: bool = True) -> None:
    """results.json + results.md in ``out`` (every benchmark script; called after each case, so a run
    killed at its time limit keeps what finished), and plots (when ``plots`` and matplotlib is there)."""
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "results.json", json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    _write_atomic(out / "results.md", "\n".join(md_lines) + "\n")
    if not plots:
        return
    try:
        import plot
    except ImportError:                     # matplotlib is optional, not a dependency
        return
    plot.plot(out / "results.json")


def write(rows: list[dict], meta: dict, out: Path, plots: bool = True):
    lines = [f"# Kernel benchmarks: {meta['device_name']}", "",
             f"torch {meta['torch']}, triton {meta['triton']}, commit `{meta['git_commit'][:12]}`"
             f"{' (dirty)' if meta['git_dirty'] else ''}, {meta['date']}, timer: {meta['timer']}, load average "
             f"{meta['loadavg_at_start']} at start, {meta['loadavg_at_end']} at end", "",
             "Speedup is vs the op's first (reference) provider and only shown when the gate passed.", ""]
    for op in dict.fromkeys(r["op"] for r in rows):
        lines += [f"## {op}", "", "| shape | provider | dtype | ms (median) | p20–p80 | speedup | gate | max abs err |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["op"] == op):
            lines.append(f"| {r['shape']} | {r['provider']} | {r['dtype']} | {fmt(r['ms'], '.3f')} | "
                         f"{fmt(r['ms_p20'], '.3f')}–{fmt(r['ms_p80'], '.3f')} | {fmt(r['speedup_vs_ref'], '.2f')} | "
                         f"{r['gate']} | {fmt(r['max_abs_err'], '.1e')} |")
        lines.append("")
    save_results(out, meta, rows, lines, plots=plots)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", nargs="+", default=list(REGISTRY), choices=list(REGISTRY))
    ap.add_argument("--shapes", default="", help="only shapes whose name contains this")
    ap.add_argument("--dtype", choices=list(DTYPES), help="default: fp16 on CUDA, fp32 on CPU")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--cpu-all", action="store_true", help="all shapes on CPU, not the reduced set")
    ap.add_argument("--tiny", action="store_true",
                    help="tiny odd shapes, Triton under the interpreter on CPU (gpu_check.sh dry run)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (CPU); default: torch's")
    ap.add_argument("--out", type=Path, help="default: bench/results/<device>-<date>")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype or ("fp16" if args.device == "cuda" else "fp32")]
    meta = stamp(args.device)
    meta["timer"] = "triton.testing.do_bench" if args.device == "cuda" else "time.perf_counter median"
    tag = meta["device_name"].split("(")[0].strip().lower().replace(" ", "-")[:40] if args.device == "cuda" \
        else "cpu"
    out = args.out or ROOT / "bench" / "results" / f"{tag}-{meta['date'][:10]}"
    rows = run(args.ops, args.shapes, dtype, args.device, args.cpu_all, tiny=args.tiny,
               on_rows=lambda rows: write(rows, {**meta, "loadavg_at_end": None}, out, plots=False))
    meta["loadavg_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    write(rows, meta, out)
    print(f"wrote {out}")
    if any(r["gate"] == "FAIL" for r in rows):
        raise SystemExit("parity gate failed for at least one provider (see results.md)")


if __name__ == "__main__":
    main()
