#!/usr/bin/env python3
"""What one MAGNeT decoding step launches: kernels (CUDA) or top-level ops (CPU) per step, by kind, with
their time, from torch.profiler over one whole text -> tokens call divided by its step count.

    python bench/profile_step.py --device cuda --geometry small --batch 1 --variant triton+fused+graphs
    python bench/profile_step.py --device cpu --geometry tiny --steps 2,1,1,1 --variant windowed   (dry run)

CUDA: the profiled call is a *replay* (a first call with the same shape records, policy True), so the table
is what a replayed step costs; CUPTI reports the kernels a graph launches like any other. A second, eager
call (graphs off, same variant) is profiled too: the same kernels plus the launch overhead graphs remove.
Kinds: gemm, attention, layernorm, gelu, cast/copy, sampling (sort/top-k/softmax/scatter/gather/cumsum),
other elementwise. The issue's target: <= 350 kernels per replayed step.
Writes bench/results/profile-<device>-<date>/results.{json,md} (bench/common.py's stamp).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
KINDS = (  # first match wins (lower-case substrings of kernel / op names)
    ("attention", ("attn", "attention", "flash", "fmha", "banded")),
    ("gemm", ("gemm", "cutlass", "cublas", "nvjet", "xmma", "aten::mm", "aten::addmm", "aten::bmm", "matmul",
              "aten::linear", "sm90_", "splitk")),
    ("layernorm", ("layer_norm", "layernorm")),
    ("gelu", ("gelu",)),
    ("sampling", ("sort", "topk", "softmax", "scatter", "gather", "cumsum", "sample", "argmax", "exponential",
                  "radix", "multinomial")),
    ("cast/copy", ("copy", "aten::to", "_to_copy", "cast", "convert")),
)


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(k in low for k in keys):
            return kind
    return "elementwise/other"


def _device_us(e) -> float:
    for attr in ("self_device_time_total", "device_time", "self_cuda_time_total", "cuda_time"):
        v = getattr(e, attr, None)
        if v:
            return float(v)
    return 0.0


def profile_call(fn, cuda: bool) -> dict[str, list[float]]:
    """kind -> [count, microseconds] of the kernels (CUDA) or top-level aten ops (CPU) of ``fn()``."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    table: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if cuda:
            if e.device_type != torch.autograd.DeviceType.CUDA or "memcpy" in e.name.lower() \
                    or "memset" in e.name.lower():
                continue
            us = _device_us(e)
        else:
            parent = e.cpu_parent
            if not e.name.startswith("aten::") or (parent is not None and parent.name.startswith("aten::")):
                continue
            us = float(e.cpu_time_total)
        row = table[kind_of(e.name)]
        row[0] += 1
        row[1] += us
    return dict(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--geometry", default="small", choices=["tiny", "small", "medium"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", default="20,10,10,10")
    ap.add_argument("--variant", default=None, help="default: triton+fused+graphs (CUDA), windowed (CPU)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from common import apply_variant, parse_variant, save_results, stamp
    from runtime import T5, build

    import magnet_fast as mf
    cuda = args.device == "cuda"
    variant = args.variant or ("triton+fused+graphs" if cuda else "windowed")
    _, flags = parse_variant(variant)
    steps = [int(s) for s in args.steps.split(",")]
    n_steps = sum(steps)
    tmp = Path(tempfile.mkdtemp(prefix="magnet-profile-")) / "model"
    build(tmp, args.geometry, 10)
    model = mf.MagnetFast.from_pretrained(tmp, device=args.device, dtype="bfloat16" if cuda else "float32", t5=T5)
    apply_variant(model, variant)
    texts = [f"track {i} with drums" for i in range(args.batch)]

    def call():
        return model.generate_tokens(texts, seed=0, decoding_steps=steps)
    call()                                   # warm-up; records under +graphs (policy True)
    runs = {"replayed" if "graphs" in flags else "eager": profile_call(call, cuda)}
    if "graphs" in flags:
        model.set_cuda_graphs(False)
        call()
        runs["eager"] = profile_call(call, cuda)
    meta = stamp(args.device)
    meta.update(geometry=args.geometry, batch=args.batch, steps=steps, variant=variant,
                unit="kernels" if cuda else "top-level aten ops",
                per_step_totals={run: {"count": sum(v[0] for v in t.values()) / n_steps,
                                       "ms": sum(v[1] for v in t.values()) / n_steps / 1e3}
                                 for run, t in runs.items()})
    rows = []
    for run, table in runs.items():
        total_us = sum(v[1] for v in table.values()) or 1.0
        for kind, (count, us) in sorted(table.items(), key=lambda kv: -kv[1][1]):
            rows.append({"run": run, "kind": kind, "per_step": count / n_steps, "ms_per_step": us / n_steps / 1e3,
                         "share": us / total_us})
    md = [f"# One MAGNeT step by kind: {meta['device_name']}", "",
          f"torch {meta['torch']}, commit `{meta['git_commit'][:12]}`, {meta['date']}; geometry {args.geometry}, "
          f"10 s, B = {args.batch}, variant {variant}, steps {steps}; per step = whole call / {n_steps} steps "
          f"({meta['unit']}; CPU times are op wall times, CUDA times kernel times).", "",
          "| run | kind | per step | ms per step | share |", "|---|---|---|---|---|"]
    md += [f"| {r['run']} | {r['kind']} | {r['per_step']:.1f} | {r['ms_per_step']:.3f} | {r['share']:.0%} |"
           for r in rows]
    md += [""] + [f"- {run}: {t['count']:.0f} {meta['unit']} per step, {t['ms']:.3f} ms"
                  for run, t in meta["per_step_totals"].items()]
    out = args.out or ROOT / "bench" / "results" / f"profile-{args.device}-{meta['date'][:10]}"
    save_results(out, meta, rows, md, plots=False)
    print("\n".join(md))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
