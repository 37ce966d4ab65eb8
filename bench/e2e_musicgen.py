#!/usr/bin/env python3
"""End-to-end MusicGen text -> tokens: magnet_fast's MusicGenFast vs audiocraft 1.3.0's ``LMModel.generate``
on the same weights, in one process (``bench/e2e.py --model musicgen`` runs this).

    .venv-audiocraft/bin/python bench/e2e_musicgen.py [--dim 512 --layers 8 --heads 8] [--seconds 10]
    python bench/e2e_musicgen.py --device cuda --dim 1024 --heads 16 --layers 24      (GPU)

1. Builds a random MusicGen of the given geometry with audiocraft's own builders (released settings:
   delay pattern, causal, card 2048, t5-base width), saves it in the released format (fp16), converts it.
2. Gates. CPU: ``exact`` must give audiocraft's tokens for the same seed; ``sdpa`` (the default: null rows'
   cross-attention skipped, on CUDA the static KV-cache step + CUDA graph) its logits within rel. err 1e-5
   of exact (CPU) / 2e-2 (CUDA bf16) over a teacher-forced pattern sequence. No speed for a failed gate.
3. Times audiocraft's ``LMModel.generate`` (as ``MusicGen.generate`` calls it: defaults top-k 250, CFG 3)
   and ``MusicGenFast.generate_tokens`` round-robin, median of ``--repeats``, T5 conditioning included.
Writes bench/results/e2e-musicgen-<device>-<date>/results.{json,md}, stamped like the other benchmarks.
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
sys.path.insert(0, str(ROOT / "bench"))
import gen_musicgen_reference as mgref  # noqa: E402  (installs the audiocraft import stubs)
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

TEXTS = ["energetic edm with drums and bass", "calm piano", "funky disco groove", "slow jazz with guitar"]


def build_checkpoint(folder: Path, config_dir: Path, dim: int, heads: int, layers: int, seed: int) -> None:
    cfg = mgref.tiny_musicgen_cfg(config_dir, 2048)
    cfg.transformer_lm.dim, cfg.transformer_lm.num_heads, cfg.transformer_lm.num_layers = dim, heads, layers
    lm = mgref.build_random_lm(cfg, seed, linear_gain=2.0)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in lm.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"xp.cfg": OmegaConf.to_yaml(cfg), "best_state": state, "version": "1.3.0", "exported": True},
               folder / "state_dict.bin")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config-dir", default=os.environ.get("AUDIOCRAFT_CONFIG_DIR",
                                                           ROOT / ".ac-dl" / "audiocraft-1.3.0" / "config"))
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0, help="duration generated (frames = 50 x seconds)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--providers", nargs="+", default=None,
                    help="default: audiocraft exact sdpa; 'sdpa+int8' (CPU): quantize='int8'")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    from audiocraft.models import loaders
    from audiocraft.modules import transformer as ac_transformer
    from common import save_results, stamp, sync

    import magnet_fast as mf
    names = args.providers or ["audiocraft", "exact", "sdpa"]
    t5 = ROOT / "tests" / "fixtures" / "ac_ref" / "t5_tiny"
    mgref.patch_t5(t5)
    tmp = Path(tempfile.mkdtemp(prefix="musicgen-e2e-"))
    build_checkpoint(tmp / "ckpt", Path(args.config_dir), args.dim, args.heads, args.layers, seed=1234)
    mf.convert(tmp / "ckpt", tmp / "converted")
    ac_transformer.set_efficient_attention_backend("torch")
    ac = loaders.load_lm_model(str(tmp / "ckpt"), device=args.device)
    # "sdpa+int8" (CPU): the same weights loaded with quantize="int8" (torch dynamic quantization)
    models = {name: mf.MusicGenFast.from_pretrained(tmp / "converted", t5=t5, device=args.device,
                                                    attention="exact" if name.split("+")[0] == "exact" else "sdpa",
                                                    cuda_graphs=True if cuda else None,   # warm-up records
                                                    quantize="int8" if name.endswith("+int8") else None)
              for name in names if name != "audiocraft"}
    ref = mf.MusicGenFast.from_pretrained(tmp / "converted", t5=t5, device=args.device, dtype="float32",
                                          attention="exact")
    frames = int(args.seconds * 50)
    gen = dict(use_sampling=True, temp=1.0, top_k=250, top_p=0.0, cfg_coef=3.0, two_step_cfg=False)

    def run_ac(texts, seed):
        torch.manual_seed(seed)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
            return ac.generate(None, mgref.attributes(texts), num_samples=None, max_gen_len=frames,
                               remove_prompts=False, **gen)

    def ours(name):
        def run(texts, seed):
            return models[name].generate_tokens(texts, seed=seed, duration=args.seconds)
        return run
    providers = {name: run_ac if name == "audiocraft" else ours(name) for name in names}
    gates, errs = {}, {}
    if not cuda and "exact" in models:
        gates["exact"] = torch.equal(run_ac(TEXTS[:2], 7), providers["exact"](TEXTS[:2], 7))
    from magnet_fast.decoding.ar import KVCache
    seq = torch.randint(0, 2049, (4, 4, 64), generator=torch.Generator().manual_seed(0)).to(args.device)

    def teacher_forced(model, static: bool):
        lm = model.lm
        cfg = lm.cfg
        with torch.inference_mode():
            kv = lm.cross_kv(model.condition(TEXTS[:2]))
            cache = KVCache(cfg.num_layers, 4, cfg.num_heads, 64, cfg.head_dim, lm.compute_dtype, seq.device)
            if not static:
                return lm.step_logits(seq, kv, cache, 0, null_from=2).float()
            table = lm.position_table(64)
            return torch.cat([lm.step_logits(seq[..., i:i + 1], kv, cache, torch.tensor([i], device=seq.device),
                                             null_from=2, static=True, table=table).float()
                              for i in range(64)], dim=2)
    with torch.inference_mode():
        cache = KVCache(ref.lm.cfg.num_layers, 4, ref.lm.cfg.num_heads, 64, ref.lm.cfg.head_dim, torch.float32,
                        seq.device)
        exact = ref.lm.step_logits(seq, ref.lm.cross_kv(ref.condition(TEXTS[:2])), cache, 0).float()
    for name, model in models.items():
        if name == "exact" and not cuda:
            continue
        got = teacher_forced(model, static=cuda)
        errs[name] = ((got - exact).norm() / exact.norm()).item()
        gates[name] = errs[name] < (5e-2 if name.endswith("+int8") else 2e-2 if cuda else 1e-5)
    print("gates: " + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" + (f" (rel. err {errs[k]:.1e})" if k in errs
                                                                   else " (tokens identical to audiocraft)")
                                for k, v in gates.items()), flush=True)
    meta = stamp(args.device)
    meta.update(model="musicgen", geometry={"dim": args.dim, "heads": args.heads, "layers": args.layers,
                                            "card": 2048, "frames": frames, "delays": [0, 1, 2, 3]},
                seconds=args.seconds, repeats=args.repeats, gates={k: "PASS" if v else "FAIL" for k, v in gates.items()},
                rel_err=errs, audiocraft="1.3.0 (LMModel.generate with MusicGen's defaults; torch SDPA backend)")
    out = args.out or ROOT / "bench" / "results" / f"e2e-musicgen-{args.device}-{meta['date'][:10]}"
    rows = []

    def write_out(final: bool) -> None:
        meta["loadavg_at_end"] = os.getloadavg()
        ours_names = [n for n in providers if n != "audiocraft"]
        lines = [f"# MusicGen end to end, text -> tokens: {meta['device_name']}", "",
                 f"torch {meta['torch']}, commit `{meta['git_commit'][:12]}`, {meta['date']}, load average "
                 f"{meta['loadavg_at_start']} at start, {meta['loadavg_at_end']} at end", "",
                 f"Geometry dim {args.dim}, {args.heads} heads, {args.layers} layers, card 2048, {frames} frames "
                 f"({args.seconds:g} s, {frames + 3} AR steps), delay pattern, top-k 250, CFG 3 (batch 2B); random "
                 f"weights in the released format. Gates: " + "; ".join(
                     f"{k}: " + ("identical tokens to audiocraft" if k not in errs else f"logits rel. err {errs[k]:.1e}")
                     + f" (**{meta['gates'][k]}**)" for k in gates)
                 + f". Median of {args.repeats} round-robin runs, T5 conditioning included.", "",
                 "| B | " + " | ".join(f"{n} (s)" + ("" if n == "audiocraft" else f" | {n} speedup")
                                      for n in providers) + " |",
                 "|---|" + "---|" * (len(providers) + len(ours_names))]
        for r in rows:
            cells = []
            for n in providers:
                cells.append(f"{r[f'{n}_s']:.3f}")
                if n != "audiocraft":
                    sp = r.get(f"{n}_speedup")
                    cells.append(f"{sp:.2f}x" if sp else "n/a")
            lines.append(f"| {r['batch']} | " + " | ".join(cells) + " |")
        save_results(out, meta, rows, lines, plots=final)

    for batch in args.batches:
        texts = (TEXTS * batch)[:batch]
        for fn in providers.values():
            fn(texts, 1)                                                       # warm-up, not timed
        times = {name: [] for name in providers}
        for r in range(args.repeats):
            for name, fn in providers.items():
                sync(args.device)
                t0 = time.perf_counter()
                fn(texts, 100 + r)
                sync(args.device)
                times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"batch": batch, **{f"{k}_s": v for k, v in med.items()},
               **{f"{k}_speedup": med["audiocraft"] / med[k] if gates.get(k) and "audiocraft" in med else None
                  for k in models},
               **{f"{k}_samples_per_s": batch / v for k, v in med.items()}, "all_s": times}
        rows.append(row)
        print(f"B={batch}: " + ", ".join(f"{k} {v:.3f} s" for k, v in med.items()), flush=True)
        write_out(final=False)
    write_out(final=True)
    print(f"wrote {out}")
    if not all(gates.values()):
        raise SystemExit("a parity gate failed: no speedup is claimed for it")


if __name__ == "__main__":
    main()
