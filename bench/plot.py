#!/usr/bin/env python3
"""Plots for committed benchmark results (needs matplotlib; not a dependency of the package).

    python bench/plot.py bench/results/*/results.json

Writes PNGs next to each results.json: kernel results (bench/run.py) as per-op bar charts, end-to-end
results (bench/e2e.py) as time and speedup per batch, runtime results (bench/runtime.py) as latency and
throughput against batch size per attention backend.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def kernels(rows: list[dict], meta: dict, out: Path) -> None:
    for op in dict.fromkeys(r["op"] for r in rows):
        timed = [r for r in rows if r["op"] == op and r.get("ms")]
        fig, ax = plt.subplots(figsize=(9, 0.45 * len(timed) + 1.5))
        ax.barh([f"{r['shape']} · {r['provider']}" for r in timed], [r["ms"] for r in timed])
        ax.set_xscale("log")
        ax.set_xlabel("ms (median)")
        ax.set_title(f"{op} — {meta['device_name']}", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / f"{op}.png", dpi=110)
        plt.close(fig)


def e2e(rows: list[dict], meta: dict, out: Path) -> None:
    names = [k[:-2] for k in rows[0] if k.endswith("_s") and k not in ("all_s",) and not k.endswith("per_s")]
    ours = [n for n in names if f"{n}_speedup" in rows[0]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    batches = [r["batch"] for r in rows]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        a.bar([x + (i - (len(names) - 1) / 2) * width for x in range(len(rows))], [r[f"{name}_s"] for r in rows],
              width, label=name)
    a.set_xticks(range(len(rows)), [f"B={x}" for x in batches])
    a.set_ylabel("seconds, text -> tokens")
    a.legend(fontsize=7)
    for name in ours:
        b.plot(batches, [r[f"{name}_speedup"] or 0 for r in rows], marker="o", label=f"magnet_fast {name}")
    b.axhline(1.0, color="grey", lw=0.8)
    b.set_xlabel("batch")
    b.set_ylabel("speedup vs audiocraft 1.3.0")
    b.legend(fontsize=7)
    fig.suptitle(f"end to end — {meta['device_name']}, torch {meta['torch']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "e2e.png", dpi=110)
    plt.close(fig)


def runtime(rows: list[dict], meta: dict, out: Path) -> None:
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for backend in dict.fromkeys(r.get("variant", r["backend"]) for r in rows):
        ok = [r for r in rows if r.get("variant", r["backend"]) == backend and r["gate"] == "PASS"]
        a.plot([r["batch"] for r in ok], [r["seconds"] for r in ok], marker="o", label=backend)
        b.plot([r["batch"] for r in ok], [r["samples_per_s"] for r in ok], marker="o", label=backend)
    for ax, label in ((a, "latency, s"), (b, "samples / s")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch")
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle(f"runtime {meta['geometry']} {meta['duration']} s {meta['dtype']} — {meta['device_name']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "runtime.png", dpi=110)
    plt.close(fig)


def plot(path: Path) -> bool:
    """Plot one results.json next to itself; False for an unknown layout."""
    data = json.loads(Path(path).read_text())
    rows, meta = data["rows"], data["meta"]
    kind = (kernels if rows and "op" in rows[0] else e2e if rows and "audiocraft_s" in rows[0]
            else runtime if rows and "backend" in rows[0] else None)
    if kind is None:
        return False
    kind(rows, meta, Path(path).parent)
    return True


def main() -> None:
    for name in sys.argv[1:]:
        print(f"plotted {Path(name).parent}" if plot(Path(name)) else f"{name}: unknown results layout, skipped")


if __name__ == "__main__":
    main()
