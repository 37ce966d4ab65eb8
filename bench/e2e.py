#!/usr/bin/env python3
"""End-to-end text -> tokens: magnet_fast vs audiocraft 1.3.0 on the same weights, in one process.

Runs with the audiocraft oracle's interpreter (``tests/fixtures/setup_audiocraft.sh`` builds it), into
which this repo is installed without dependencies::

    .venv-audiocraft/bin/pip install --no-deps -e .
    .venv-audiocraft/bin/python bench/e2e.py [--dim 512 --layers 8 --heads 8] [--batches 1 4]

1. Builds a random MAGNeT of the given geometry with audiocraft's own builders (released settings,
   card 2048, 10 s), saves it in the released checkpoint format (fp16), converts it with magnet_fast.
2. Parity gates. ``exact`` (the CPU default): same seed and a short schedule give identical tokens.
   ``windowed`` (O(T*window) band attention, SDPA for full stages; not bitwise): logits of every stage
   within rel. err 1e-5 of the exact engine's. No speed is reported for a provider whose gate failed.
3. Times audiocraft's ``MagnetLMModel.generate`` and ``MagnetFast.generate_tokens`` (exact, windowed)
   round-robin (same texts, seeds and schedule; T5 conditioning included), median of ``--repeats``.
Writes bench/results/e2e-<device>-<date>/results.{json,md}, stamped like the kernel benchmarks.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
import gen_reference as acref  # noqa: E402  (installs the audiocraft import stubs)
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

TEXTS = ["energetic edm with drums and bass", "calm piano", "funky disco groove", "slow jazz with guitar"]


def build_checkpoint(folder: Path, config_dir: Path, dim: int, heads: int, layers: int, seed: int) -> None:
    cfg = acref.tiny_cfg(config_dir, 2048, "10s")
    cfg.transformer_lm.dim, cfg.transformer_lm.num_heads, cfg.transformer_lm.num_layers = dim, heads, layers
    lm = acref.build_random_lm(cfg, seed, linear_gain=4.0)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in lm.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"xp.cfg": OmegaConf.to_yaml(cfg), "best_state": state, "version": "1.3.0", "exported": True},
               folder / "state_dict.bin")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config-dir", default=os.environ.get("AUDIOCRAFT_CONFIG_DIR",
                                                           ROOT / ".ac-dl" / "audiocraft-1.3.0" / "config"))
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--steps", default="4,2,2,2")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from audiocraft.models import loaders
    from audiocraft.modules.conditioners import ConditioningAttributes
    from run import save_results, stamp

    import magnet_fast as mf
    steps = [int(s) for s in args.steps.split(",")]
    t5 = ROOT / "tests" / "fixtures" / "ac_ref" / "t5_tiny"
    acref.patch_t5(t5)
    tmp = Path(tempfile.mkdtemp(prefix="magnet-e2e-"))
    build_checkpoint(tmp / "ckpt", Path(args.config_dir), args.dim, args.heads, args.layers, seed=1234)
    mf.convert(tmp / "ckpt", tmp / "converted")
    ac = loaders.load_lm_model_magnet(str(tmp / "ckpt"), compression_model_frame_rate=50, device="cpu")
    ours = mf.MagnetFast.from_pretrained(tmp / "converted", t5=t5)
    base = dict(use_sampling=True, temp=3.0, top_k=0, top_p=0.9, max_cfg_coef=10.0, min_cfg_coef=1.0,
                anneal_temp=True, span_scoring="max", span_arrangement="nonoverlap")

    def run_ac(texts, seed, dsteps):
        torch.manual_seed(seed)
        conds = [ConditioningAttributes(text={"description": t}) for t in texts]
        with torch.no_grad():
            return ac.generate(prompt=None, conditions=conds, num_samples=None, max_gen_len=500,
                               decoding_steps=dsteps, **base)

    def ours_with(backend):
        def run(texts, seed, dsteps):
            ours.set_attention(backend)
            return ours.generate_tokens(texts, seed=seed, decoding_steps=dsteps, temperature=3.0, top_p=0.9)
        return run

    providers = {"audiocraft": run_ac, "exact": ours_with("exact"), "windowed": ours_with("windowed")}
    gates = {"exact": torch.equal(run_ac(TEXTS[:2], 7, [2, 1, 1, 1]), providers["exact"](TEXTS[:2], 7, [2, 1, 1, 1]))}
    seq = torch.randint(0, 2048, (4, 4, 498), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        kv = ours.lm.cross_kv(ours.condition(TEXTS[:2]))
        errs = []
        for stage in range(4):
            ref = ours.lm(seq, kv, stage, "exact")
            fast = ours.lm(seq, kv, stage, "windowed", None, 2)              # as generate runs it
            errs.append(((fast - ref).norm() / ref.norm()).item())
    gates["windowed"] = max(errs) < 1e-5
    print(f"gates: exact tokens identical to audiocraft: {gates['exact']}; windowed logits max rel. err "
          f"{max(errs):.2e} (< 1e-5: {gates['windowed']})")
    meta = stamp("cpu")
    meta.update(geometry={"dim": args.dim, "heads": args.heads, "layers": args.layers, "card": 2048,
                          "frames": 500}, steps=steps, repeats=args.repeats,
                gates={k: "PASS" if v else "FAIL" for k, v in gates.items()}, windowed_rel_err=max(errs),
                audiocraft="1.3.0 (MagnetLMModel.generate, pure-torch xformers stand-in)")
    rows = []
    for batch in args.batches:
        texts = (TEXTS * batch)[:batch]
        for fn in providers.values():
            fn(texts, 1, steps)                                              # warm-up, not timed
        times = {name: [] for name in providers}
        for r in range(args.repeats):
            for name, fn in providers.items():
                t0 = time.perf_counter()
                fn(texts, 100 + r, steps)
                times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"batch": batch, **{f"{k}_s": v for k, v in med.items()},
               **{f"{k}_speedup": med["audiocraft"] / med[k] if gates[k] else None for k in gates},
               "samples_per_s_exact": batch / med["exact"], "all_s": times}
        rows.append(row)
        print(f"B={batch}: " + ", ".join(f"{k} {v:.2f} s" for k, v in med.items())
              + "; speedups " + ", ".join(f"{k} {row[f'{k}_speedup'] or float('nan'):.2f}x" for k in gates))
    meta["loadavg_at_end"] = os.getloadavg()
    out = args.out or ROOT / "bench" / "results" / f"e2e-cpu-{meta['date'][:10]}"
    lines = [f"# End to end, text -> tokens: {meta['device_name']}", "",
             f"torch {meta['torch']}, commit `{meta['git_commit'][:12]}`, {meta['date']}, load average "
             f"{meta['loadavg_at_start']} at start, {meta['loadavg_at_end']} at end", "",
             f"Geometry dim {args.dim}, {args.heads} heads, {args.layers} layers, card 2048, 500 frames (498 out), "
             f"steps {steps}, CFG batch 2B; random weights in the released format; fp32 CPU throughout. Gates: "
             f"exact = identical tokens to audiocraft (**{meta['gates']['exact']}**); windowed = logits within "
             f"rel. err 1e-5 of exact (max {max(errs):.1e}, **{meta['gates']['windowed']}**). Median of "
             f"{args.repeats} round-robin runs, T5 conditioning included.", "",
             "| B | audiocraft 1.3.0 (s) | magnet_fast exact (s) | speedup | magnet_fast windowed (s) | speedup |",
             "|---|---|---|---|---|---|"]

    def sp(x):
        return f"{x:.2f}x" if x else "n/a (gate failed)"
    for r in rows:
        lines.append(f"| {r['batch']} | {r['audiocraft_s']:.3f} | {r['exact_s']:.3f} | {sp(r['exact_speedup'])} | "
                     f"{r['windowed_s']:.3f} | {sp(r['windowed_speedup'])} |")
    save_results(out, meta, rows, lines)
    print(f"wrote {out}")
    if not all(gates.values()):
        raise SystemExit("a parity gate failed: no speedup is claimed for it")


if __name__ == "__main__":
    main()
