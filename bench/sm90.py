#!/usr/bin/env python3
"""Compile every kernel configuration the runtime can launch for Hopper (sm_90), without a GPU.

    python bench/sm90.py [--out DIR] [--quick] [--only-backward]

Triton compiles ahead of time for a target it is not running on: ``triton.compile(ASTSource(...),
target=GPUTarget("cuda", 90, 32))`` builds the cubin on a CPU-only machine, and ``cuobjdump
--dump-resource-usage`` (shipped in Triton's wheel) reads registers, stack (spills) and shared memory from
it. Each row: kernel, config, REG, STACK, SHARED, compile seconds, or the compile error. A row fails when
the compile fails, when shared memory exceeds Hopper's 227 KiB per block, or when the config spills
(STACK > 0) unless it is listed in ``KNOWN_SPILLS`` with a reason. tests/kernel_ops/test_sm90_compile.py runs this.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)          # compiling needs the real @jit path

SMEM_LIMIT = 227 * 1024                            # bytes of shared memory one block may use on sm_90
KNOWN_SPILLS: dict[str, str] = {}                  # config id -> why a spill is accepted
DTYPES = {"fp16": "fp16", "bf16": "bf16", "fp32": "fp32"}


def attention_configs(quick: bool = False):
    """(id, constexprs, options, dtype) for every launch ``banded_attn_fwd`` can make on CUDA."""
    from magnet_fast.kernels.banded_attn import triton as bt
    dims = bt.SUPPORTED_D if not quick else (16, 64, 128)
    seen = set()
    for dtype in ("bf16", "fp16", "fp32"):
        for d in dims:
            # banded (the runtime's window is 5 frames) and full (window None / >= T-1)
            for banded, window in ((True, 5), (False, 10_000)):
                fp32 = dtype == "fp32"
                for store_lse in (False, True):      # inference, and training (saves the log-sum-exp)
                    cfg = bt.block_config(1500, d, banded, window, interpret=False, fp32=fp32,
                                          store_lse=store_lse)
                    key = (dtype, d, banded, store_lse, cfg["BM"], cfg["BN"], cfg["num_warps"], cfg["num_stages"])
                    if key in seen:
                        continue
                    seen.add(key)
                    const = {"D": d, "BD": 1 << (d - 1).bit_length(), "BM": cfg["BM"], "BN": cfg["BN"],
                             "BANDED": banded, "UPCAST": fp32, "IEEE": fp32, "STORE_LSE": store_lse}
                    name = "banded_attn_lse" if store_lse else "banded_attn"
                    cid = (f"{name} {dtype} D{d} {'band' if banded else 'full'} "
                           f"{cfg['BM']}x{cfg['BN']} w{cfg['num_warps']} s{cfg['num_stages']}")
                    yield cid, const, {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}, dtype
                    if d == 64:     # as torch.compile launches it: Python float arguments typed fp64
                        yield (cid + " qk_scale:fp64", {**const, "_sig": {"qk_scale": "fp64"}},
                               {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}, dtype)


def backward_configs(quick: bool = False):
    """(kernel, id, constexprs, options, dtype) for every launch ``banded_attn_bwd`` can make on CUDA: the
    delta kernel per (dtype, D), the dK/dV and dQ kernels per (dtype, D, banded/full)."""
    from magnet_fast.kernels.banded_attn import triton_bwd as tb
    dims = tb.SUPPORTED_D if not quick else (16, 64, 128)
    seen = set()
    for dtype in ("bf16", "fp16", "fp32"):
        fp32 = dtype == "fp32"
        for d in dims:
            bd = 1 << (d - 1).bit_length()
            delta = tb.bwd_block_config(d, True, 5, interpret=False, fp32=fp32)["delta"]
            yield (tb.banded_attn_bwd_delta_kernel, f"banded_attn_bwd_delta {dtype} D{d} {delta['BT']} "
                   f"w{delta['num_warps']}", {"D": d, "BD": bd, "BT": delta["BT"], "HAS_GLSE": False},
                   {"num_warps": delta["num_warps"], "num_stages": 1}, dtype)
            for banded, window in ((True, 5), (True, 40), (False, 10_000)):
                cfg = tb.bwd_block_config(d, banded, window, interpret=False, fp32=fp32)
                for name, fn in (("dkdv", tb.banded_attn_bwd_dkdv_kernel), ("dq", tb.banded_attn_bwd_dq_kernel)):
                    c = cfg[name]
                    key = (name, dtype, d, banded, c["BM"], c["BN"], c["num_warps"], c["num_stages"])
                    if key in seen:
                        continue
                    seen.add(key)
                    const = {"D": d, "BD": bd, "BM": c["BM"], "BN": c["BN"], "BANDED": banded, "UPCAST": fp32,
                             "IEEE": fp32}
                    opts = {"num_warps": c["num_warps"], "num_stages": c["num_stages"]}
                    cid = (f"banded_attn_bwd_{name} {dtype} D{d} {'band' if banded else 'full'} "
                           f"{c['BM']}x{c['BN']} w{c['num_warps']} s{c['num_stages']}")
                    yield fn, cid, const, opts, dtype
                    if d == 64 and banded and window == 5:          # torch.compile's fp64 Python floats
                        yield fn, cid + " sm_scale:fp64", {**const, "_sig": {"sm_scale": "fp64"}}, opts, dtype


def sampler_configs(quick: bool = False):
    """(id, constexprs, options, dtype) for ``sample_step_fwd`` at the released card and the test cards."""
    from magnet_fast.kernels.sample import naive
    from magnet_fast.kernels.sample import triton as st
    cards = (2048, 512, 97) if not quick else (2048, 97)
    for dtype in ("bf16", "fp16", "fp32"):
        for card in cards:
            for span, scoring in ((3, "max"), (1, "prod")):
                bv = 1 << (card - 1).bit_length()
                warps = st.num_warps_for(bv)
                const = {"BV": bv, "SPAN": span, "SCORING": st.SCORINGS[scoring],
                         "TEMP_FLOOR": naive.TEMPERATURE_FLOOR, "FIXED_SCORE": naive.DONT_REMASK}
                yield (f"sample_step {dtype} card{card} span{span} {scoring} w{warps}", const,
                       {"num_warps": warps, "num_stages": 1}, dtype)


def _signature(fn, dtype: str, constexprs: dict) -> dict:
    """Triton signature strings for the kernels' pointer / int / float arguments."""
    ptr = {"q": dtype, "k": dtype, "v": dtype, "o": dtype, "do": dtype, "dq": dtype, "dk": dtype, "dv": dtype,
           "lse": "fp32", "glse": "fp32", "delta": "fp32", "cond": dtype, "uncond": dtype, "noise": "fp32",
           "tokens": "i64", "masked": "i1", "coef_p": "fp32", "temp_p": "fp32", "top_p_p": "fp32",
           "top_k_p": "i64", "greedy_p": "i1", "tok_out": "i64", "prob_out": "fp32", "score_out": "fp32"}
    floats = {"qk_scale", "sm_scale"}
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ptr:
            sig[name] = "*" + ptr[name]
        elif name in floats:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def cuobjdump() -> str | None:
    import triton
    cand = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(cand) if cand.exists() else shutil.which("cuobjdump")


def resource_usage(cubin: bytes) -> dict:
    tool = cuobjdump()
    if tool is None:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True,
                             check=False).stdout
    usage = {}
    for key in ("REG", "STACK", "SHARED", "LOCAL"):
        m = re.search(rf"\b{key}:(\d+)", out)
        if m:
            usage[key] = int(m.group(1))
    return usage


def compile_one(fn, constexprs: dict, options: dict, dtype: str) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    constexprs = dict(constexprs)
    overrides = constexprs.pop("_sig", {})
    sig = {**_signature(fn, DTYPES[dtype], constexprs), **overrides}
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs)
    t0 = time.perf_counter()
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
    row = {"compile_s": round(time.perf_counter() - t0, 2)}
    row.update(resource_usage(kernel.asm["cubin"]))
    # Triton reports the shared memory its launcher will request (dynamic, above the cubin's static part)
    row["SHARED_LAUNCH"] = int(getattr(kernel.metadata, "shared", 0))
    return row


def extra_attention_config(spec: str):
    """'dtype,D,band|full,BM,BN,warps,stages[,lse]' -> one attention config (tiles the runtime does not pick;
    ',lse': the training forward that also stores the log-sum-exp)."""
    dtype, d, kind, bm, bn, warps, stages, *lse = spec.split(",")
    d, bm, bn, warps, stages = int(d), int(bm), int(bn), int(warps), int(stages)
    fp32 = dtype == "fp32"
    const = {"D": d, "BD": 1 << (d - 1).bit_length(), "BM": bm, "BN": bn, "BANDED": kind == "band",
             "UPCAST": fp32, "IEEE": fp32, "STORE_LSE": lse == ["lse"]}
    name = "banded_attn_lse" if lse == ["lse"] else "banded_attn"
    return (f"{name} {dtype} D{d} {kind} {bm}x{bn} w{warps} s{stages} (extra)", const,
            {"num_warps": warps, "num_stages": stages}, dtype)


def extra_backward_config(spec: str):
    """'dkdv|dq,dtype,D,band|full,BM,BN,warps,stages' -> (kernel, id, constexprs, options, dtype)."""
    from magnet_fast.kernels.banded_attn import triton_bwd as tb
    name, dtype, d, kind, bm, bn, warps, stages = spec.split(",")
    d, bm, bn, warps, stages = int(d), int(bm), int(bn), int(warps), int(stages)
    fn = {"dkdv": tb.banded_attn_bwd_dkdv_kernel, "dq": tb.banded_attn_bwd_dq_kernel}[name]
    fp32 = dtype == "fp32"
    const = {"D": d, "BD": 1 << (d - 1).bit_length(), "BM": bm, "BN": bn, "BANDED": kind == "band",
             "UPCAST": fp32, "IEEE": fp32}
    return (fn, f"banded_attn_bwd_{name} {dtype} D{d} {kind} {bm}x{bn} w{warps} s{stages} (extra)", const,
            {"num_warps": warps, "num_stages": stages}, dtype)


def check(quick: bool = False, extra: list[str] = (), only_extra: bool = False,
          extra_backward: list[str] = (), only_backward: bool = False) -> list[dict]:
    from magnet_fast.kernels.banded_attn import triton as bt
    from magnet_fast.kernels.sample import triton as st
    rows = []
    plan = [(bt.banded_attn_fwd_kernel, *c) for c in (extra_attention_config(spec) for spec in extra)]
    plan += [extra_backward_config(spec) for spec in extra_backward]
    if not only_extra:
        if not only_backward:
            plan += [(bt.banded_attn_fwd_kernel, *c) for c in attention_configs(quick)]
        plan += list(backward_configs(quick))
        if not only_backward:
            plan += [(st.sample_step_kernel, *c) for c in sampler_configs(quick)]
    for fn, cid, const, opts, dtype in plan:
        row = {"config": cid, **opts}
        try:
            row.update(compile_one(fn, const, opts, dtype))
        except Exception as e:  # noqa: BLE001 - every compile failure becomes a failed row
            row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300] if str(e) else ''}"
        smem = max(row.get("SHARED", 0), row.get("SHARED_LAUNCH", 0))
        problems = []
        if "error" in row:
            problems.append(row["error"])
        if smem > SMEM_LIMIT:
            problems.append(f"shared memory {smem} B > {SMEM_LIMIT} B")
        if row.get("STACK", 0) > 0 and cid not in KNOWN_SPILLS:
            problems.append(f"spills: STACK {row['STACK']} B")
        row["ok"] = not problems
        row["problems"] = problems
        rows.append(row)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="write results.json + results.md here")
    ap.add_argument("--quick", action="store_true", help="fewer head dims and cards")
    ap.add_argument("--extra-attention", action="append", default=[], metavar="SPEC",
                    help="also compile 'dtype,D,band|full,BM,BN,warps,stages[,lse]' (a tile to evaluate)")
    ap.add_argument("--extra-backward", action="append", default=[], metavar="SPEC",
                    help="also compile 'dkdv|dq,dtype,D,band|full,BM,BN,warps,stages' (a backward tile)")
    ap.add_argument("--only-extra", action="store_true",
                    help="compile only the --extra-attention / --extra-backward configs")
    ap.add_argument("--only-backward", action="store_true",
                    help="only the backward kernels (delta, dK/dV, dQ) and the extras")
    args = ap.parse_args()
    import torch
    import triton
    rows = check(args.quick, args.extra_attention, args.only_extra, args.extra_backward, args.only_backward)
    lines = ["| config | warps | stages | REG | STACK | SHARED | compile s | ok |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        shared = max(r.get("SHARED", 0), r.get("SHARED_LAUNCH", 0))
        lines.append(f"| {r['config']} | {r['num_warps']} | {r['num_stages']} | {r.get('REG', '-')} | "
                     f"{r.get('STACK', '-')} | {shared} | {r.get('compile_s', '-')} | "
                     f"{'yes' if r['ok'] else '; '.join(r['problems'])} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        meta = {"device": "none (ahead-of-time compile)", "device_name": "sm_90 cubin, GPUTarget('cuda', 90, 32)",
                "triton": triton.__version__, "torch": torch.__version__, "python": sys.version.split()[0],
                "date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()), "git_commit": _commit(),
                "smem_limit_bytes": SMEM_LIMIT}
        (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        (args.out / "results.md").write_text(
            f"# sm_90 compile check (registers, spills, shared memory per launchable config)\n\n"
            f"Triton {meta['triton']}, torch {meta['torch']}, commit `{meta['git_commit'][:12]}`, {meta['date']}. "
            f"A row fails on a compile error, STACK > 0 (spills) or shared memory > {SMEM_LIMIT} B.\n\n{table}\n")
    bad = [r for r in rows if not r["ok"]]
    print(f"{len(rows) - len(bad)} of {len(rows)} configs compile for sm_90 within limits")
    return 1 if bad else 0


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=False).stdout.strip()
    except OSError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
