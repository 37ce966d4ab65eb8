#!/usr/bin/env python3
"""Training step: magnet_fast's ``Trainer.step`` vs audiocraft 1.3.0's ``MagnetSolver.run_step`` (training
branch: loss, backward, clip 1.0, AdamW step) on the same weights and batch, in one process, CPU.

    PYTHONPATH=. .venv-audiocraft/bin/python bench/train.py [--dim 256 --heads 4 --layers 4 --batch 2]

1. Builds a random MAGNeT of the given geometry with audiocraft's builders (card 2048, 10 s: T = 500), saves
   it in the released format, converts it with magnet_fast.
2. Gate: the first step's loss of every provider equals audiocraft's (same seeds: rel. err <= 1e-5).
3. Times steps round-robin (audiocraft, then ours with each of --backends: 'exact', 'windowed' = the CPU
   default, 'sdpa'), the
   median of --repeats after one warm-up each; T5 conditioning (with word dropout) included on both sides.
audiocraft runs its own run_step on a solver object holding just what run_step reads
(tests/fixtures/gen_train_reference.py, ``make_solver``), with AdamW (betas 0.9/0.95) and max_norm 1.0.
Writes bench/results/train-cpu-<date>/results.{json,md}.
"""
from __future__ import annotations

import argparse
import datetime
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
sys.path.insert(0, str(ROOT / "bench"))
import gen_reference as acref  # noqa: E402  (installs the audiocraft import stubs)
import gen_train_reference as trref  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

TEXTS = ["energetic edm with drums and bass", "calm piano", "funky disco groove", "slow jazz guitar"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config-dir", default=os.environ.get("AUDIOCRAFT_CONFIG_DIR",
                                                       str(ROOT / ".ac-dl" / "audiocraft-1.3.0" / "config")))
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backends", nargs="+", default=["exact", "windowed", "sdpa"],
                    help="magnet_fast attention backends to time (exact = the parity mode, windowed = CPU default)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from audiocraft.models import loaders
    from common import save_results, stamp
    from e2e import build_checkpoint

    import magnet_fast as mf
    from magnet_fast.train import Trainer
    t5 = ROOT / "tests" / "fixtures" / "ac_ref" / "t5_tiny"
    acref.patch_t5(t5)
    tmp = Path(tempfile.mkdtemp(prefix="magnet-train-bench-"))
    build_checkpoint(tmp / "ckpt", Path(args.config_dir), args.dim, args.heads, args.layers, seed=1234)
    mf.convert(tmp / "ckpt", tmp / "converted")

    ac = loaders.load_lm_model_magnet(str(tmp / "ckpt"), compression_model_frame_rate=50, device="cpu")
    ac.train()
    solver = trref.make_solver(ac, padded=False)
    solver.__dict__["current_stage"] = "train"          # run_step's training branch
    solver.__dict__["cfg"] = OmegaConf.merge(solver.cfg, {"optim": {"max_norm": 1.0, "eager_sync": False},
                                                          "fsdp": {"use": False}})
    solver.__dict__.update(optimizer=torch.optim.AdamW(ac.parameters(), lr=1e-5, betas=(0.9, 0.95), eps=1e-8,
                                                       weight_decay=0.0), scaler=None, lr_scheduler=None)
    frames = 500
    tokens = torch.randint(0, 2048, (args.batch, 4, frames), generator=torch.Generator().manual_seed(0))
    texts = (TEXTS * args.batch)[: args.batch]
    infos = [trref._Info(t, frames * 640, 32000) for t in texts]

    def ac_step(seed):
        random.seed(seed)
        torch.manual_seed(seed)
        return float(solver.run_step(0, (tokens.clone(), infos), {})["ce"])

    providers = {"audiocraft": ac_step}
    for backend in args.backends:
        tr = Trainer.from_pretrained(tmp / "converted", t5=t5, attention=backend)

        def ours(seed, tr=tr):
            random.seed(seed)
            torch.manual_seed(seed)
            return tr.step(tokens, texts)
        providers[f"magnet_fast[{backend}]"] = ours

    first = {name: fn(0) for name, fn in providers.items()}          # gate + warm-up
    want = first["audiocraft"]
    gate = {name: abs(v - want) <= 1e-5 * abs(want) for name, v in first.items()}
    times = {name: [] for name in providers}
    for r in range(args.repeats):
        for name, fn in providers.items():
            t0 = time.perf_counter()
            fn(100 + r)
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["audiocraft"])
    rows, md = [], []
    meta = {**stamp("cpu"), "dim": args.dim, "heads": args.heads, "layers": args.layers, "batch": args.batch,
            "frames": frames, "card": 2048, "threads": args.threads, "repeats": args.repeats}
    md += ["# Training step on CPU: magnet_fast vs audiocraft 1.3.0 MagnetSolver.run_step", "",
           f"dim {args.dim}, {args.heads} heads, {args.layers} layers, card 2048, B={args.batch}, T={frames}, "
           f"{args.threads} threads, median of {args.repeats} (load at start {meta['loadavg_at_start']})", "",
           "| provider | first-step loss | gate (rel. err <= 1e-5) | step (s) | tokens/s | speed-up |",
           "|---|---|---|---|---|---|"]
    for name in providers:
        med = statistics.median(times[name])
        row = {"provider": name, "first_loss": first[name], "gate": gate[name], "median_s": med,
               "times_s": times[name], "tokens_per_s": args.batch * 4 * frames / med,
               "speedup": base / med if gate[name] else None}
        rows.append(row)
        speed = "—" if row["speedup"] is None else f"{row['speedup']:.2f}x"
        md.append(f"| {name} | {first[name]:.6f} | {'pass' if gate[name] else 'FAIL'} | {med:.3f} | "
                  f"{row['tokens_per_s']:.0f} | {speed} |")
        print(md[-1])
    date = datetime.date.today().isoformat()
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"train-cpu-{date}"
    save_results(out, meta, rows, md, plots=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
