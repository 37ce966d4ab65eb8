#!/usr/bin/env python3
"""Editing latency: regenerate a 2 s range of a 10 s clip (``edit_tokens``) vs a full 10 s generation
(``generate_tokens``), and a variation at strength 0.2 (``vary_tokens``), same model, texts, schedule, in one
process, round-robin, median of ``--repeats`` (T5 conditioning included; tokens only, no codec).

    python bench/edit.py                       # the bundled demo model on CPU
    python bench/edit.py --model DIR --device cuda

An edit decodes the whole window (the kept frames are its context) with the model's full step schedule,
so it costs about what a generation costs: the schedule runs over the range's spans, which only shrinks
the head/sampler work where the head is gathered ('windowed'/'triton'). A variation at strength s runs
the schedule's last ~s of its steps.
Writes bench/results/edit-<device>-<date>/results.{json,md}, stamped (bench/common.py).
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import loadavg, save_results, stamp, sync  # noqa: E402

TEXT = ["energetic edm with drums and bass"]

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="converted MAGNeT folder (default: the bundled demo)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", default=None, help="decoding steps, e.g. 20,10,10,10 (default: the model's)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--start", type=float, default=4.0, help="edited range start (s); the range is 2 s")
    ap.add_argument("--seam-seeds", type=int, default=3, help="loops (and plain generations) for the seam metric")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import magnet_fast as mf
    from magnet_fast.demo import DEMO_MODEL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = mf.MagnetFast.from_pretrained(args.model or DEMO_MODEL, device=args.device)
    kw = {} if args.steps is None else {"decoding_steps": [int(x) for x in args.steps.split(",")]}
    clip = model.generate_tokens(TEXT, seed=0, **kw)                   # the clip to edit (10 s window)
    cases = {
        "generate 10 s": lambda: model.generate_tokens(TEXT, seed=1, **kw),
        "edit 2 s of 10 s": lambda: model.edit_tokens(clip, args.start, args.start + 2.0, TEXT, seed=1, **kw),
        "vary 10 s, strength 0.2": lambda: model.vary_tokens(clip, 0.2, TEXT, seed=1, **kw),
    }
    for fn in cases.values():                                         # warm-up (allocations, caches)
        fn()
    times = {name: [] for name in cases}
    load0 = loadavg()
    for _ in range(args.repeats):
        for name, fn in cases.items():
            sync(args.device)
            t0 = time.perf_counter()
            fn()
            sync(args.device)
            times[name].append(time.perf_counter() - t0)
    # LoopGen's seam metric (editing.seam_perplexity): a 4 s loop vs a plain generation cut to 4 s
    from magnet_fast.engines.editing import seam_perplexity
    seam = {"loop=True": [], "plain, cut": []}
    for seed in range(args.seam_seeds):
        loop = model.generate_tokens(TEXT, seed=seed, loop=True, duration=4.0, **kw)
        plain = model.generate_tokens(TEXT, seed=seed, **kw)[..., : loop.shape[-1]]
        seam["loop=True"].append(float(seam_perplexity(model, loop, TEXT)[0]))
        seam["plain, cut"].append(float(seam_perplexity(model, plain, TEXT)[0]))
    base = statistics.median(times["generate 10 s"])
    rows = [{"case": name, "median_s": statistics.median(ts), "runs_s": ts,
             "vs_generate": statistics.median(ts) / base} for name, ts in times.items()]
    meta = {**stamp(args.device), "model": str(args.model or "bundled demo (random weights, dim 64, 2 layers)"),
            "attention": model.attention_backend, "steps": list(model.params(**kw).decoding_steps),
            "frames": int(clip.shape[-1]), "repeats": args.repeats, "loadavg_at_end": loadavg(),
            "loadavg_at_start": load0, "seam_perplexity": seam}
    md = [f"# Editing latency: {meta['device_name']}", "",
          f"torch {meta['torch']}, commit `{meta['git_commit'][:12]}`, {meta['date']}, load average "
          f"{meta['loadavg_at_start']} at start, {meta['loadavg_at_end']} at end", "",
          f"Model: {meta['model']}; attention {meta['attention']}; steps {meta['steps']}; B = 1; {meta['frames']} "
          f"frames; tokens only (T5 conditioning included, no codec); median of {args.repeats} round-robin runs.", "",
          "| case | median (s) | vs generate |", "|---|---|---|"]
    md += [f"| {r['case']} | {r['median_s']:.3f} | {r['vs_generate']:.2f}x |" for r in rows]
    md += ["", f"Seam perplexity (4 s loops, {args.seam_seeds} seeds, width 6 frames; on random weights this "
           "checks the mechanics only, the values carry no musical meaning):", "",
           "| generation | seam perplexity per seed | mean |", "|---|---|---|"]
    md += [f"| {k} | {', '.join(f'{x:.1f}' for x in v)} | {statistics.mean(v):.1f} |" for k, v in seam.items()]
    date = datetime.date.today().isoformat()
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"edit-{args.device}-{date}"
    save_results(out, meta, rows, md, plots=False)
    print("\n".join(md))

if __name__ == "__main__":
    main()
