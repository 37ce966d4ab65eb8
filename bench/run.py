"""Kernel benchmarks: runs bench/test_kernels.py under pytest-benchmark, writes results.json + results.md.

    python bench/run.py                      # CUDA if available, else the reduced CPU set
    python bench/run.py --ops banded_attn --shapes T500 --out bench/results/tmp
    TRITON_INTERPRET=1 python bench/run.py --device cpu --dtype fp32 --tiny --out DIR   (gpu_check.sh dry run)

The tests (one per op, shape and provider of bench/registry.py; cases in bench/cases.py) assert each
provider's parity gate against the op's first (reference) provider before pytest-benchmark times it
(CUDA: every call ends with torch.cuda.synchronize()). This driver runs them in-process with
``--benchmark-only --benchmark-json OUT/benchmark.json`` (the raw result: every round's time) and converts
that JSON into OUT/results.json (rows: op, shape, dims, provider, dtype, gate, max abs error, median ms,
p20 and p80 ms, speedup vs the reference) and results.md, which bench/report.py and bench/plot.py read.
results.json is also written after every test from the timings so far, so a run killed at its time limit
keeps what finished. A provider whose gate failed or that raised is reported with no time and no speedup.
Arguments this script does not know are passed to pytest (e.g. ``-k triton``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import pytest
import torch
from cases import DTYPES
from common import ROOT, fmt, loadavg, save_results, stamp
from registry import REGISTRY

BENCH = Path(__file__).resolve().parent
JSON_NAME = "benchmark.json"
ROW_KEYS = ("ms", "ms_p20", "ms_p80", "speedup_vs_ref")
# CUDA: a round lasts at least this long (pytest-benchmark loops a faster call within one round and keeps
# the round's mean): a 20 us kernel gives ~400 rounds in 0.2 s, not ~10000 (the JSON keeps every one).
# CPU: pytest-benchmark's default (a round is one call), so a call stalled by other load stays one outlier.
ROUND_MIN_S = 5e-4


def spread_ms(stats: dict) -> tuple[float, float, float, str]:
    """(median, p20, p80) in ms from pytest-benchmark stats, and where p20/p80 came from: the rounds' raw
    times ('data', which --benchmark-json keeps), else pytest-benchmark's quartiles q1/q3."""
    data = stats.get("data") or []
    if len(data) >= 2:
        q = statistics.quantiles(data, n=10)
        return stats["median"] * 1e3, q[1] * 1e3, q[7] * 1e3, "p20/p80 of the rounds' times"
    if data:
        return stats["median"] * 1e3, data[0] * 1e3, data[0] * 1e3, "one round (p20 = p80 = its time)"
    return stats["median"] * 1e3, stats["q1"] * 1e3, stats["q3"] * 1e3, "q1/q3 (no raw timings in the JSON)"


def rows_from(records: list[dict], timings: dict) -> tuple[list[dict], set[str]]:
    """Rows of results.json: one per test that ran (``records``: the tests' ``kernel_case`` properties, in
    run order), timed from ``timings`` {(op, shape, provider): pytest-benchmark stats} where the gate
    passed. Also returns where the spreads came from."""
    rows, sources, ms = [], set(), {}
    for rec in records:
        row = {"op": rec["op"], "shape": rec["shape"], **{f"dim_{k}": v for k, v in rec["dims"].items()},
               "provider": rec["provider"], "dtype": rec["dtype"],
               "gate": rec["gate"] or "error: see the pytest output", "max_abs_err": rec["max_abs_err"],
               **dict.fromkeys(ROW_KEYS)}
        stats = timings.get((rec["op"], rec["shape"], rec["provider"])) if rec["gate"] == "pass" else None
        if stats:
            row["ms"], row["ms_p20"], row["ms_p80"], source = spread_ms(stats)
            sources.add(source)
            ms[(rec["op"], rec["shape"], rec["provider"])] = row["ms"]
        rows.append(row)
    for row, rec in zip(rows, records, strict=True):
        base = ms.get((rec["op"], rec["shape"], rec["reference"]))
        if row["ms"] and base:
            row["speedup_vs_ref"] = base / row["ms"]
    return rows, sources


def timings_from_json(path: Path) -> dict:
    """{(op, shape, provider): stats} from a pytest-benchmark JSON written by bench/test_kernels.py."""
    out = {}
    for b in json.loads(path.read_text())["benchmarks"]:
        info = b.get("extra_info") or {}
        if {"op", "shape", "provider"} <= info.keys():
            out[(info["op"], info["shape"], info["provider"])] = b["stats"]
    return out


def write(rows: list[dict], meta: dict, out: Path, plots: bool = True):
    lines = [f"# Kernel benchmarks: {meta['device_name']}", "",
             f"torch {meta['torch']}, triton {meta['triton']}, commit `{meta['git_commit'][:12]}`"
             f"{' (dirty)' if meta['git_dirty'] else ''}, {meta['date']}, timer: {meta['timer']}, load average "
             f"{meta['loadavg_at_start']} at start, {meta['loadavg_at_end']} at end", "",
             "Speedup is vs the op's first (reference) provider and only shown when the gate passed. "
             f"Spread: {meta.get('spread') or '—'}. Timed by pytest-benchmark {meta['pytest_benchmark']} "
             f"(at least {meta['benchmark_min_rounds']} rounds and about {meta['benchmark_max_time_s']} s per case"
             + (f"; a call shorter than {ROUND_MIN_S * 1e3:g} ms is repeated within a round, whose mean is kept"
                if meta["device"] == "cuda" else "") + "); "
             + (f"raw timings (every round) in `{meta['benchmark_json']}`." if meta["benchmark_json"] else
                "raw timings: not written (the run did not finish)."), ""]
    for op in dict.fromkeys(r["op"] for r in rows):
        lines += [f"## {op}", "", "| shape | provider | dtype | ms (median) | p20–p80 | speedup | gate | max abs err |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["op"] == op):
            lines.append(f"| {r['shape']} | {r['provider']} | {r['dtype']} | {fmt(r['ms'], '.3f')} | "
                         f"{fmt(r['ms_p20'], '.3f')}–{fmt(r['ms_p80'], '.3f')} | {fmt(r['speedup_vs_ref'], '.2f')} | "
                         f"{r['gate']} | {fmt(r['max_abs_err'], '.1e')} |")
        lines.append("")
    save_results(out, meta, rows, lines, plots=plots)


class Collector:
    """pytest plugin: each test's ``kernel_case`` property (gate included, also for failed and skipped
    tests) and its timings, so far; ``on_change()`` after every test."""

    def __init__(self, on_change):
        self.records, self.timings, self.on_change = [], {}, on_change

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        yield
        if call.when != "call":
            return
        rec = dict(item.user_properties).get("kernel_case")
        if rec is None:
            return
        self.records.append(rec)
        bench = getattr(item, "funcargs", {}).get("benchmark")
        if bench is not None and bench.stats and not bench.has_error:
            self.timings[(rec["op"], rec["shape"], rec["provider"])] = bench.stats.as_dict(include_data=True)["stats"]
        self.on_change()


def pytest_args(args, extra: list[str]) -> tuple[list[str], float, int]:
    tiny = args.tiny
    max_time = args.max_time if args.max_time is not None else (0.2 if args.device == "cuda" or tiny else 0.5)
    min_rounds = args.min_rounds if args.min_rounds is not None else (2 if tiny else 7)
    out = [str(BENCH / "test_kernels.py"), f"--rootdir={ROOT}", "-p", "no:cacheprovider", "--benchmark-only",
           f"--benchmark-json={args.out / (JSON_NAME + '.tmp')}", f"--benchmark-max-time={max_time}",
           f"--benchmark-min-rounds={min_rounds}",
           *([f"--benchmark-min-time={ROUND_MIN_S}"] if args.device == "cuda" else []),
           "--benchmark-columns=min,median,iqr,max,rounds,iterations",
           f"--kernel-device={args.device}", f"--kernel-dtype={args.dtype}",
           *(f"--kernel-op={op}" for op in args.ops)]
    if args.shapes:
        out.append(f"--kernel-shapes={args.shapes}")
    if args.cpu_all:
        out.append("--kernel-cpu-all")
    if tiny:
        out.append("--kernel-tiny")
    return [*out, *extra], max_time, min_rounds


def main():
    # a pytest session of its own: started from a test of an xdist run it inherits the worker's variables,
    # which make pytest-benchmark think it runs under xdist and disable itself
    for name in [n for n in os.environ if n.startswith("PYTEST_XDIST_")]:
        del os.environ[name]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Other arguments are passed to pytest.")
    ap.add_argument("--ops", nargs="+", default=list(REGISTRY), choices=list(REGISTRY))
    ap.add_argument("--shapes", default="", help="only shapes whose name contains this")
    ap.add_argument("--dtype", choices=list(DTYPES), help="default: fp16 on CUDA, fp32 on CPU")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--cpu-all", action="store_true", help="all shapes on CPU, not the reduced set")
    ap.add_argument("--tiny", action="store_true",
                    help="tiny odd shapes, Triton under the interpreter on CPU (gpu_check.sh dry run)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (CPU); default: torch's")
    ap.add_argument("--max-time", type=float, help="pytest-benchmark seconds per case (default: 0.2 CUDA or tiny, 0.5 CPU)")
    ap.add_argument("--min-rounds", type=int, help="pytest-benchmark rounds per case at least (default: 7, tiny 2)")
    ap.add_argument("--out", type=Path, help="default: bench/results/<device>-<date>")
    args, extra = ap.parse_known_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.dtype = args.dtype or ("fp16" if args.device == "cuda" else "fp32")
    meta = stamp(args.device)
    tag = meta["device_name"].split("(")[0].strip().lower().replace(" ", "-")[:40] if args.device == "cuda" \
        else "cpu"
    args.out = (args.out or ROOT / "bench" / "results" / f"{tag}-{meta['date'][:10]}").resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / JSON_NAME).unlink(missing_ok=True)         # the folder holds this run's raw result or none
    argv, max_time, min_rounds = pytest_args(args, extra)
    import pytest_benchmark
    meta.update(timer="pytest-benchmark median, time.perf_counter" +
                      (", each call ends with torch.cuda.synchronize()" if args.device == "cuda" else ""),
                pytest_benchmark=pytest_benchmark.__version__, benchmark_json=None,
                benchmark_max_time_s=max_time, benchmark_min_rounds=min_rounds, spread=None, loadavg_at_end=None)

    def save(timings: dict, final: bool) -> list[dict]:
        rows, sources = rows_from(collector.records, timings)
        meta["spread"] = ", ".join(sorted(sources)) or None
        if final:
            meta["loadavg_at_end"] = loadavg()
        write(rows, meta, args.out, plots=final)
        return rows

    collector = Collector(lambda: save(collector.timings, final=False))
    code = pytest.main(argv, plugins=[collector])
    # pytest-benchmark opens its JSON when it starts and fills it at the end: a killed run leaves it empty,
    # so it is written beside and renamed once complete. The stored raw result is the source of the final
    # timings (the in-run copy if pytest ended without writing it).
    partial = args.out / (JSON_NAME + ".tmp")
    timings = collector.timings
    if partial.exists() and partial.stat().st_size:
        partial.replace(args.out / JSON_NAME)
        meta["benchmark_json"] = JSON_NAME
        timings = timings_from_json(args.out / JSON_NAME)
    partial.unlink(missing_ok=True)
    rows = save(timings, final=True)
    print(f"wrote {args.out}")
    if any(r["gate"] == "FAIL" for r in rows):
        raise SystemExit("parity gate failed for at least one provider (see results.md)")
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):   # a provider that raised is reported
        raise SystemExit(f"pytest exited with {code!r}")


if __name__ == "__main__":
    main()
