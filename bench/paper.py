#!/usr/bin/env python3
"""The MAGNeT paper's variants on this engine, one run: latency of MAGNeT, MAGNeT + MusicGen rescoring,
Hybrid-MAGNeT (1 s, 3 s, 5 s MusicGen prefix) and MusicGen alone, same duration, texts and geometry.

    python bench/paper.py                         # CPU: dim 512, 8 heads, 4 layers, 1 thread (~5 min)
    python bench/paper.py --dim 1024 --heads 16 --layers 24 --device cuda --repeats 5   (released small)

The CPU default is a documented smaller geometry: the released small one (dim 1024, 24 layers) takes about
12x the FLOPs per step, far over a 5-minute run on 2 cores, and one thread because the 2 cores are shared
(two threads on a busy machine slowed single runs 3-10x in trials; pass --threads 2 on an idle machine).

1. Builds two random-weight models of one geometry in the converted format in a temp folder: a MAGNeT
   (10 s, card 2048, 4 codebooks, span 3, band 5) and a MusicGen (delays 0-3, same T5 width), both on the
   tests' tiny T5 (width 768 like t5-base; text encoding is a negligible share either way).
2. Gates (short schedules): rescoring at w = 0 gives MAGNeT's tokens; the hybrid prefix equals MusicGen
   alone with the same seed and the rest MAGNeT continuing the stream. A failed gate stops the run.
3. Times text -> tokens round-robin (median of --repeats; T5 included), B = --batch, MAGNeT with its defaults
   (CPU: 'windowed' attention; steps --steps), rescoring with w = --weight, MusicGen with its defaults
   (top-k 250, CFG 3) for --duration seconds. Per step: the rescoring overhead from the end-to-end
   difference, and the rescorer's step alone (its teacher-forced forward + mixing) against a MAGNeT step.
Writes bench/results/paper-<device>-<date>/results.{json,md} (bench/common.py's stamp and atomic writer).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
T5 = ROOT / "tests" / "fixtures" / "ac_ref" / "t5_tiny"          # width 768, like t5-base
TEXTS = ["energetic edm with drums and bass", "calm piano", "funky disco groove", "slow jazz with guitar"]


def build(folder: Path, kind: str, dim: int, heads: int, layers: int, duration: float, seed: int,
          steps=(20, 10, 10, 10)) -> None:
    """A random-weight model in the converted format (fp16 weights, like convert's default). The MAGNeT's
    default decoding steps are ``steps`` (a 1 s dry-run model has 16 spans: audiocraft's 20 would not fit)."""
    from magnet_fast.config import MagnetConfig
    from magnet_fast.nn.model import MagnetLM
    from magnet_fast.params import ARParams, SamplingParams
    geo = dict(dim=dim, num_heads=heads, num_layers=layers, card=2048, t5_name="t5-base", t5_dim=768)
    if kind == "magnet":
        cfg = MagnetConfig(**geo, segment_duration=duration, generation=SamplingParams(decoding_steps=tuple(steps)))
    else:
        cfg = MagnetConfig(**geo, kind="musicgen", delays=(0, 1, 2, 3), lm_cfg_coef=3.0, span_len=1,
                           subcodes_context=-1, segment_duration=30.0, generation=ARParams())
    with torch.device("meta"):
        lm = MagnetLM(cfg)
    g = torch.Generator().manual_seed(seed)
    state = {k: (torch.randn(v.shape, generator=g) * (0.02 if v.dim() == 2 else 1.0)).to(torch.float16)
             for k, v in lm.state_dict().items()}
    folder.mkdir(parents=True)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "magnet_fast/1"})
    cfg.save(folder)


def gates(magnet, musicgen, texts) -> dict:
    """Cheap correctness checks before any timing (short schedules)."""
    from magnet_fast.engines.hybrid import duration_for
    short = dict(decoding_steps=[2, 1, 1, 1])
    plain = magnet.generate_tokens(texts, seed=1, **short)
    w0 = magnet.generate_tokens(texts, seed=1, rescorer=musicgen, rescore_weight=0.0, **short)
    out = {"rescore_w0_equals_magnet": "PASS" if torch.equal(plain, w0) else "FAIL"}
    p = 10
    hyb = magnet.generate_tokens(texts, seed=1, hybrid=musicgen, hybrid_seconds=p / magnet.frame_rate, **short)
    g = torch.Generator(device=magnet.device).manual_seed(1)
    prefix = musicgen.generate_tokens(texts, generator=g, duration=duration_for(p, magnet.frame_rate))
    rest = magnet.generate_tokens(texts, prompt=prefix, generator=g, **short)
    out["hybrid_equals_musicgen_then_magnet"] = "PASS" if torch.equal(hyb, rest) else "FAIL"
    return out


def rescorer_step_seconds(magnet, musicgen, texts, steps, weight, repeats: int) -> tuple[float, float]:
    """(one rescoring call: teacher-forced forward + mixing, one MAGNeT step without it), median seconds,
    on the state of a real decode (stage 1's first step, which is rescored when the stage has >= 2 steps).
    On CUDA both are recorded once as CUDA graphs (``StaticRunner.run_step``, the decoder's own protocol)
    and the replays are timed, as a decode under graphs runs them; on CPU they run eagerly."""
    from common import sync

    from magnet_fast.decoding.magnet import Decoder
    from magnet_fast.engines.pairing import Rescoring
    params = magnet.params(decoding_steps=steps)
    rescoring = Rescoring(magnet, musicgen, weight, 1.0, params.decoding_steps)
    cond, lengths = magnet.conditioning(texts)
    graphs = "cuda" if magnet.device.type == "cuda" else None
    with torch.inference_mode():
        kv = magnet.lm.cross_kv(cond)
        request = rescoring.prepare(texts, False)
        dec = Decoder(magnet.lm, len(texts), magnet.frames, params, cross_lengths=lengths, rescore=request,
                      sampler=magnet.sampler, graphs=graphs)
        dec._load(kv, None, request.kv)
        s, step = dec.state, dec.plans[1][0]
        if dec.rescorer.weight(step) == 0.0:
            raise SystemExit(f"steps {steps}: stage 1 needs >= 2 steps for a rescored step to time")
        s.seq[:, 0] = torch.randint(0, 2048, s.seq[:, 0].shape, generator=torch.Generator().manual_seed(0)).to(
            s.seq.device)
        s.prefix = magnet.lm.stage_prefix(s.seq, 1, out=dec.prefix)
        row = torch.randint(0, 2048, s.row.shape, generator=torch.Generator().manual_seed(1)).to(s.seq.device)
        s.seq[:, 1] = row.repeat(2, 1)                           # a full candidate row (both CFG halves)
        probs = torch.rand(row.shape, device=row.device)
        masked = torch.ones_like(row, dtype=torch.bool)
        rescorer = dec.rescorer

        def rescore_call():
            rescorer(s.seq, step, row, probs, masked)

        def plain_step():                                        # the same step without rescoring
            dec.rescorer = None
            try:
                dec._body(step)
            finally:
                dec.rescorer = rescorer

        def reset():
            s.row.fill_(magnet.lm.mask_id)
            s.scores.zero_()

        t_res, t_step = [], []
        for i in range(repeats + 1):                             # round 0: warm-up (and recording under CUDA)
            sync(magnet.device.type)
            t0 = time.perf_counter()
            dec.run_step(("paper", "rescore"), rescore_call)
            sync(magnet.device.type)
            if i:
                t_res.append(time.perf_counter() - t0)
            reset()
            sync(magnet.device.type)
            t0 = time.perf_counter()
            dec.run_step(("paper", "step"), plain_step)
            sync(magnet.device.type)
            if i:
                t_step.append(time.perf_counter() - t0)
            reset()
        if graphs is not None and len(dec.recorded) != 2:
            raise SystemExit(f"expected 2 recorded steps, found {len(dec.recorded)}")
    return statistics.median(t_res), statistics.median(t_step)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--steps", default="20,10,10,10")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--weight", type=float, default=0.7, help="rescore_weight")
    ap.add_argument("--hybrid-seconds", type=float, nargs="+", default=[1.0, 3.0, 5.0])
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds (>= 3 for a claim; the dry run uses 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 on CPU, torch's on CUDA)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--render", type=Path, metavar="DIR", help="only rewrite DIR/results.md from DIR/results.json")
    args = ap.parse_args()
    if args.render:
        import json

        from common import write_atomic
        data = json.loads((args.render / "results.json").read_text())
        write_atomic(args.render / "results.md", "\n".join(render(data["meta"], data["rows"])) + "\n")
        return
    threads = args.threads or (1 if args.device == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    from common import recordings, save_results, set_decoder_capacity, stamp, sync

    import magnet_fast as mf
    started = time.perf_counter()
    steps = [int(s) for s in args.steps.split(",")]
    texts = TEXTS[: args.batch] if args.batch <= len(TEXTS) else [TEXTS[i % len(TEXTS)] for i in range(args.batch)]
    tmp = Path(tempfile.mkdtemp(prefix="magnet-paper-"))
    build(tmp / "magnet", "magnet", args.dim, args.heads, args.layers, args.duration, seed=0, steps=steps)
    build(tmp / "musicgen", "musicgen", args.dim, args.heads, args.layers, args.duration, seed=1)
    # CUDA: graphs recorded on a shape's first call (the warm-up round below), replayed while timing; every
    # shape of a round (MAGNeT, rescoring, 3 hybrids, their MusicGen prefixes, MusicGen alone) stays cached
    graphs = True if args.device == "cuda" else None
    magnet = mf.MagnetFast.from_pretrained(tmp / "magnet", device=args.device, t5=T5, cuda_graphs=graphs)
    musicgen = mf.MusicGenFast.from_pretrained(tmp / "musicgen", device=args.device, t5=T5, cuda_graphs=graphs)
    capacity = 4 * (3 + len(args.hybrid_seconds))
    set_decoder_capacity(magnet, capacity)
    set_decoder_capacity(musicgen, capacity)
    frames = magnet.generate_tokens(texts[:1], seed=0, decoding_steps=[1, 1, 1, 1]).shape[-1]

    meta = stamp(args.device)
    meta.update(geometry={"dim": args.dim, "heads": args.heads, "layers": args.layers, "card": 2048, "n_q": 4},
                duration_s=args.duration, magnet_frames=frames, musicgen_frames=int(args.duration * 50),
                steps=steps, batch=args.batch, rescore_weight=args.weight, repeats=args.repeats,
                cuda_graphs=magnet.cuda_graphs, decoder_capacity=capacity,
                magnet_attention=magnet.attention_backend, musicgen_attention=musicgen.attention_backend,
                dtype=str(magnet.dtype).replace("torch.", ""), threads=torch.get_num_threads(),
                weights="random (fp16 stored), built by bench/paper.py", t5="tests/fixtures/ac_ref/t5_tiny")
    meta["gates"] = gates(magnet, musicgen, texts)
    if "FAIL" in meta["gates"].values():
        raise SystemExit(f"gate failed: {meta['gates']}")

    modes = {"MAGNeT": lambda s: magnet.generate_tokens(texts, seed=s, decoding_steps=steps),
             f"MAGNeT + rescoring (w={args.weight:g})": lambda s: magnet.generate_tokens(
                 texts, seed=s, decoding_steps=steps, rescorer=musicgen, rescore_weight=args.weight)}
    for sec in args.hybrid_seconds:
        modes[f"Hybrid ({sec:g} s prefix)"] = lambda s, sec=sec: magnet.generate_tokens(
            texts, seed=s, decoding_steps=steps, hybrid=musicgen, hybrid_seconds=sec)
    modes["MusicGen alone"] = lambda s: musicgen.generate_tokens(texts, seed=s, duration=args.duration)
    times: dict[str, list[float]] = {m: [] for m in modes}
    warm: dict[str, float] = {}
    for r in range(-1, args.repeats):     # round -1: the warm-up of every shape timed below (records under CUDA)
        if r == 0:
            recorded = (recordings(magnet), recordings(musicgen))
        for name, fn in modes.items():    # round-robin: load drifts hit every mode alike
            sync(args.device)
            t0 = time.perf_counter()
            out = fn(100 + r)
            sync(args.device)
            dt = time.perf_counter() - t0
            if r < 0:
                warm[name] = dt
            else:
                times[name].append(dt)
            assert out.shape[0] == len(texts)
            print(f"  round {r}{' (warm-up)' if r < 0 else ''}: {name}: {dt:.2f} s", flush=True)
    meta["warm_up_s"] = warm
    # a change here means a timed round recorded (or re-recorded after an eviction): not a replay timing
    meta["recorded_while_timing"] = (recordings(magnet), recordings(musicgen)) != recorded
    if args.device == "cuda" and meta["recorded_while_timing"]:
        raise SystemExit("a timed round recorded CUDA graphs (decoder cache too small?): timings are not replays")

    res_step, magnet_step = rescorer_step_seconds(magnet, musicgen, texts, steps, args.weight, max(3, args.repeats))
    n_steps = sum(steps)
    base = statistics.median(times["MAGNeT"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"mode": name, "batch": args.batch, "seconds": med, "all_s": ts,
                     "vs_magnet": med / base, "frames": int(args.duration * 50) if name == "MusicGen alone" else frames})
    resc = statistics.median(times[f"MAGNeT + rescoring (w={args.weight:g})"])
    rescored = n_steps - len(steps)                  # the last step of each stage is not rescored
    meta["rescoring_overhead"] = {
        "end_to_end_s": resc - base, "end_to_end_ratio": resc / base, "rescored_steps": rescored,
        "per_step_from_end_to_end_s": (resc - base) / n_steps,
        "per_rescored_step_from_end_to_end_s": (resc - base) / rescored, "magnet_step_e2e_s": base / n_steps,
        "rescorer_call_alone_s": res_step, "magnet_step_alone_s": magnet_step,
        "rescorer_call_vs_magnet_step": res_step / magnet_step}
    meta["wall_s"] = time.perf_counter() - started
    out = args.out or ROOT / "bench" / "results" / f"paper-{args.device}-{meta['date'][:10]}"
    md = render(meta, rows)
    save_results(out, meta, rows, md, plots=False)
    print("\n".join(md))
    print(f"wrote {out}")


def render(meta: dict, rows: list[dict]) -> list[str]:
    """results.md of a run, from its results.json content."""
    geo, steps, ov = meta["geometry"], meta["steps"], meta["rescoring_overhead"]
    n_steps = sum(steps)
    rescored = ov.get("rescored_steps", n_steps - len(steps))
    md = [f"# Paper variants on magnet_fast — {meta['device_name']}, torch {meta['torch']}, "
          f"commit `{meta['git_commit'][:7]}`{' (dirty)' if meta['git_dirty'] else ''}, {meta['date']}", "",
          f"Random weights, both models dim {geo['dim']}, {geo['heads']} heads, {geo['layers']} layers, card "
          f"{geo['card']}, {geo['n_q']} codebooks (tiny T5); B = {meta['batch']}; {meta['duration_s']:g} s "
          f"({meta['magnet_frames']} MAGNeT frames nonoverlap, {meta['musicgen_frames']} MusicGen frames); MAGNeT "
          f"steps {','.join(map(str, steps))}, attention '{meta['magnet_attention']}'; MusicGen defaults (top-k 250, "
          f"CFG 3), attention '{meta['musicgen_attention']}'; {meta['dtype']}, {meta['threads']} threads; text → "
          f"tokens, median of {meta['repeats']} round-robin runs after a warm-up round (CUDA graphs: "
          f"{meta.get('cuda_graphs', 'n/a')}; recorded while timing: {meta.get('recorded_while_timing', 'n/a')}); "
          f"load average at start {meta['loadavg_at_start']}. "
          "Gates: " + ", ".join(f"{k} {v}" for k, v in meta["gates"].items()) + ".", "",
          "| mode | text → tokens | vs MAGNeT | runs |", "|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['mode']} | {r['seconds']:.3f} s | {r['vs_magnet']:.2f}x | "
                  + ", ".join(f"{t:.2f}" for t in r["all_s"]) + " |")
    per_rescored = ov["end_to_end_s"] / rescored
    md += ["", f"Rescoring overhead (w = {meta['rescore_weight']:g}; {rescored} of {n_steps} steps rescored, the last "
           f"step of each stage is not): end to end +{ov['end_to_end_s']:.3f} s ({ov['end_to_end_ratio']:.2f}x "
           f"MAGNeT), i.e. +{per_rescored * 1e3:.1f} ms per rescored step (+{ov['per_step_from_end_to_end_s'] * 1e3:.1f} "
           f"ms averaged over all steps) on a {ov['magnet_step_e2e_s'] * 1e3:.1f} ms MAGNeT step; measured alone, one "
           f"rescorer call (teacher-forced forward of B rows over T + 4 positions, softmax, mixing) takes "
           f"{ov['rescorer_call_alone_s'] * 1e3:.1f} ms vs {ov['magnet_step_alone_s'] * 1e3:.1f} ms for a MAGNeT step "
           f"({ov['rescorer_call_vs_magnet_step']:.2f}x).", "", f"Whole run {meta['wall_s']:.0f} s."]
    return md


if __name__ == "__main__":
    main()
