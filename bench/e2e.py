#!/usr/bin/env python3
"""End-to-end text -> tokens: magnet_fast vs audiocraft 1.3.0 on the same weights, in one process.

Runs with the audiocraft oracle's interpreter (``tests/fixtures/setup_audiocraft.sh`` builds it and
installs this repo into it without dependencies)::

    .venv-audiocraft/bin/python bench/e2e.py [--dim 512 --layers 8 --heads 8] [--batches 1 4]
    .venv-audiocraft/bin/python bench/e2e.py --model musicgen [...]   (MusicGen: bench/e2e_musicgen.py)
    python bench/e2e.py --device cuda --dim 1024 --heads 16 --layers 24 --steps 20,10,10,10   (GPU)

1. Builds a random MAGNeT of the given geometry with audiocraft's own builders (released settings,
   card 2048, 10 or 30 s), saves it in the released checkpoint format (fp16), converts it with magnet_fast.
2. Gates. CPU: ``exact`` (the CPU default) must give identical tokens to audiocraft for the same seed;
   every other provider's logits must be within rel. err 1e-5 of the exact engine's. CUDA: every
   provider's bf16 logits within rel. err 2e-2 of the fp32 exact engine's. No speed is reported for a
   provider whose gate failed.
3. Times audiocraft's ``MagnetLMModel.generate`` and ``MagnetFast.generate_tokens`` round-robin (same
   texts, seeds and schedule; T5 conditioning included), median of ``--repeats``.
   On CUDA audiocraft runs as its MAGNeT wrapper runs it (fp16 weights, fp16 autocast) with an xformers
   stand-in that calls PyTorch's scaled_dot_product_attention with the float band bias (the CPU stand-in
   is the plain-matmul reference used for parity).
Providers: ``audiocraft`` and magnet_fast variants BACKEND[+graphs][+fused] (see bench/runtime.py).
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


def fair_gpu_attention() -> None:
    """Replace the CPU parity stand-in for xformers' memory_efficient_attention by PyTorch SDPA with the
    same float band bias (BMHK layout), so that audiocraft gets a fast fused attention on the GPU too."""
    import torch.nn.functional as F
    from xformers import ops

    def memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None, *, op=None,
                                   output_dtype=None):
        if attn_bias is not None and not isinstance(attn_bias, torch.Tensor):
            raise NotImplementedError("bench stand-in: tensor biases only (MAGNeT uses no causal mask)")
        q, k, v = (x.transpose(1, 2) for x in (query, key, value))
        bias = None if attn_bias is None else attn_bias.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p, scale=scale)
        return out.transpose(1, 2).to(output_dtype or query.dtype)
    ops.memory_efficient_attention = memory_efficient_attention


def build_checkpoint(folder: Path, config_dir: Path, dim: int, heads: int, layers: int, seed: int,
                     duration: int = 10) -> None:
    cfg = acref.tiny_cfg(config_dir, 2048, f"{duration}s")
    cfg.transformer_lm.dim, cfg.transformer_lm.num_heads, cfg.transformer_lm.num_layers = dim, heads, layers
    lm = acref.build_random_lm(cfg, seed, linear_gain=4.0)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in lm.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"xp.cfg": OmegaConf.to_yaml(cfg), "best_state": state, "version": "1.3.0", "exported": True},
               folder / "state_dict.bin")


def main() -> None:
    if "--model" in sys.argv:                 # --model musicgen: the MusicGen benchmark (bench/e2e_musicgen.py)
        i = sys.argv.index("--model")
        kind = sys.argv[i + 1] if i + 1 < len(sys.argv) else ""
        if kind not in ("magnet", "musicgen"):
            raise SystemExit("--model must be magnet or musicgen")
        rest = sys.argv[1:i] + sys.argv[i + 2:]
        if kind == "musicgen":
            sys.path.insert(0, str(ROOT / "bench"))
            import e2e_musicgen
            return e2e_musicgen.main(rest)
        sys.argv = [sys.argv[0], *rest]
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
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--duration", type=int, default=10, choices=[10, 30])
    ap.add_argument("--providers", nargs="+", default=None,
                    help="default (CPU): audiocraft exact windowed; (CUDA): audiocraft sdpa sdpa+graphs "
                         "triton+graphs triton+fused+graphs")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    cuda = args.device == "cuda"
    if cuda:
        fair_gpu_attention()
    if args.threads:
        torch.set_num_threads(args.threads)
    from audiocraft.models import loaders
    from audiocraft.modules.conditioners import ConditioningAttributes
    from common import (
        apply_variant,
        parse_variant,
        recordings,
        save_results,
        set_decoder_capacity,
        stamp,
        sync,
        token_gate,
    )

    try:
        import magnet_fast as mf
    except ImportError:
        raise SystemExit(f"magnet_fast is not installed in {sys.executable}: run tests/fixtures/setup_audiocraft.sh "
                         "(it installs the repo into the oracle venv) or pip install --no-deps -e .") from None
    steps = [int(s) for s in args.steps.split(",")]
    names = args.providers or (["audiocraft", "sdpa", "sdpa+graphs", "triton+graphs", "triton+fused+graphs"]
                               if cuda else ["audiocraft", "exact", "windowed"])
    t5 = ROOT / "tests" / "fixtures" / "ac_ref" / "t5_tiny"
    acref.patch_t5(t5)
    tmp = Path(tempfile.mkdtemp(prefix="magnet-e2e-"))
    build_checkpoint(tmp / "ckpt", Path(args.config_dir), args.dim, args.heads, args.layers, seed=1234,
                     duration=args.duration)
    mf.convert(tmp / "ckpt", tmp / "converted")
    ac = loaders.load_lm_model_magnet(str(tmp / "ckpt"), compression_model_frame_rate=50, device=args.device)
    ours = mf.MagnetFast.from_pretrained(tmp / "converted", t5=t5, device=args.device)
    ref = ours if not cuda else mf.MagnetFast.from_pretrained(tmp / "converted", t5=t5, device="cuda",
                                                              dtype="float32")
    # +int8 providers (CPU): the same converted weights loaded with quantize="int8" (torch dynamic quantization)
    ours8 = (mf.MagnetFast.from_pretrained(tmp / "converted", t5=t5, device=args.device, quantize="int8")
             if any("int8" in parse_variant(n)[1] for n in names if n != "audiocraft") else None)
    frames = ours.frames
    base = dict(use_sampling=True, temp=3.0, top_k=0, top_p=0.9, max_cfg_coef=10.0, min_cfg_coef=1.0,
                anneal_temp=True, span_scoring="max", span_arrangement="nonoverlap")

    def run_ac(texts, seed, dsteps):
        torch.manual_seed(seed)
        conds = [ConditioningAttributes(text={"description": t}) for t in texts]
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
            return ac.generate(prompt=None, conditions=conds, num_samples=None, max_gen_len=frames,
                               decoding_steps=dsteps, **base)

    def ours_with(variant):
        backend, flags = parse_variant(variant)
        model = ours8 if "int8" in flags else ours

        def run(texts, seed, dsteps):
            apply_variant(model, variant)                    # recordings are kept while other variants run
            return model.generate_tokens(texts, seed=seed, decoding_steps=dsteps, temperature=3.0, top_p=0.9)
        run.backend, run.flags, run.model = backend, flags, model
        return run

    providers = {name: run_ac if name == "audiocraft" else ours_with(name) for name in names}
    set_decoder_capacity(ours, max(4, len(providers)))     # round-robin must not evict a recording
    gates, errs, agree = {}, {}, {}
    seq = torch.randint(0, 2048, (4, 4, frames - frames % 3), generator=torch.Generator().manual_seed(0))
    seq = seq.to(args.device)
    with torch.inference_mode():
        kv_ref = ref.lm.cross_kv(ref.condition(TEXTS[:2]))
        kv = ours.lm.cross_kv(ours.condition(TEXTS[:2]))
        exact = [ref.lm(seq, kv_ref, stage, "exact").float() for stage in range(4)]
        if not cuda:            # the parity proof, also when 'exact' is not among the timed providers
            gates["exact"] = torch.equal(run_ac(TEXTS[:2], 7, [2, 1, 1, 1]),
                                         ours_with("exact")(TEXTS[:2], 7, [2, 1, 1, 1]))
        for name, fn in providers.items():
            if name in ("audiocraft", "exact"):
                continue
            kv_m = kv if fn.model is ours else fn.model.lm.cross_kv(fn.model.condition(TEXTS[:2]))
            errs[name] = max(((fn.model.lm(seq, kv_m, stage, fn.backend, None, 2).float() - exact[stage]).norm()
                              / exact[stage].norm()).item() for stage in range(4))   # as generate runs it
            # int8: quantized linears, ~1e-2 (its tokens' statistics: tests/engines/test_int8.py)
            gates[name] = errs[name] < (5e-2 if "int8" in fn.flags else 2e-2 if cuda else 1e-5)
    for name, fn in providers.items():       # graphs / fused: replayed greedy tokens == eager default sampler
        if name != "audiocraft" and fn.flags - {"int8"} and gates[name]:
            agree[name] = token_gate(ours, name, TEXTS[:2])
            gates[name] = agree[name] >= 0.99
    print("gates: " + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" + (f" (rel. err {errs[k]:.1e})" if k in errs else
                                                                   " (tokens identical to audiocraft)")
                                for k, v in gates.items()))
    meta = stamp(args.device)
    meta.update(geometry={"dim": args.dim, "heads": args.heads, "layers": args.layers, "card": 2048,
                          "frames": frames}, duration=args.duration, steps=steps, repeats=args.repeats,
                gates={k: "PASS" if v else "FAIL" for k, v in gates.items()}, rel_err=errs,
                greedy_token_agreement=agree,
                dtype=str(ours.dtype).removeprefix("torch."),
                audiocraft="1.3.0 (MagnetLMModel.generate; xformers stand-in: " +
                           ("SDPA with the float band bias, fp16 autocast)" if cuda else "plain-matmul reference)"))
    out = args.out or ROOT / "bench" / "results" / f"e2e-{args.device}-{meta['date'][:10]}"

    def write_out(final: bool) -> None:       # after every batch: a run killed at its time limit keeps rows
        meta["loadavg_at_end"] = os.getloadavg()
        ours_names = [n for n in providers if n != "audiocraft"]
        gate_text = "; ".join(f"{k}: " + ("identical tokens to audiocraft" if k not in errs else
                                          f"logits rel. err {errs[k]:.1e} vs fp32 exact") + f" (**{meta['gates'][k]}**)"
                              for k in gates)
        lines = [f"# End to end, text -> tokens: {meta['device_name']}", "",
                 f"torch {meta['torch']}, commit `{meta['git_commit'][:12]}`, {meta['date']}, load average "
                 f"{meta['loadavg_at_start']} at start, {meta['loadavg_at_end']} at end", "",
                 f"Geometry dim {args.dim}, {args.heads} heads, {args.layers} layers, card 2048, {frames} frames, "
                 f"steps {steps}, CFG batch 2B; random weights in the released format; magnet_fast {meta['dtype']}; "
                 f"audiocraft {meta['audiocraft']}. Gates: {gate_text}. Median of {args.repeats} round-robin runs, "
                 "T5 conditioning included.", "",
                 "| B | " + " | ".join(f"{n} (s)" + ("" if n == "audiocraft" else f" | {n} speedup")
                                      for n in providers) + " |",
                 "|---|" + "---|" * (len(providers) + len(ours_names))]

        def sp(x):
            return f"{x:.2f}x" if x else "n/a"
        for r in rows:
            cells = []
            for n in providers:
                cells.append(f"{r[f'{n}_s']:.3f}")
                if n != "audiocraft":
                    cells.append(sp(r.get(f"{n}_speedup")))
            lines.append(f"| {r['batch']} | " + " | ".join(cells) + " |")
        save_results(out, meta, rows, lines, plots=final)

    rows = []
    for batch in args.batches:
        texts = (TEXTS * batch)[:batch]
        for fn in providers.values():
            fn(texts, 1, steps)                                              # warm-up (and recording), not timed
        recorded = recordings(ours)
        times = {name: [] for name in providers}
        for r in range(args.repeats):
            for name, fn in providers.items():
                sync(args.device)
                t0 = time.perf_counter()
                fn(texts, 100 + r, steps)
                sync(args.device)
                times[name].append(time.perf_counter() - t0)
        if recordings(ours) != recorded:
            print("warning: steps were recorded during the timed runs; graph timings include recording")
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"batch": batch, **{f"{k}_s": v for k, v in med.items()},
               **{f"{k}_speedup": med["audiocraft"] / med[k] if gates[k] and "audiocraft" in med else None
                  for k in gates if k in med},
               **{f"{k}_samples_per_s": batch / v for k, v in med.items()}, "all_s": times,
               "recorded_while_timing": recordings(ours) != recorded}
        rows.append(row)
        print(f"B={batch}: " + ", ".join(f"{k} {v:.3f} s" for k, v in med.items())
              + "; speedups " + ", ".join(f"{k} {row[f'{k}_speedup'] or float('nan'):.2f}x" for k in gates
                                          if k in med),
              flush=True)
        ours.clear_cuda_graphs()                            # free this batch size's recordings
        write_out(final=False)
    write_out(final=True)
    print(f"wrote {out}")
    if not all(gates.values()):
        raise SystemExit("a parity gate failed: no speedup is claimed for it")


if __name__ == "__main__":
    main()
