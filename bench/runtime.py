#!/usr/bin/env python3
"""magnet_fast runtime latency/throughput on MAGNeT geometries (random weights in the converted format).

    python bench/runtime.py --device cuda --geometry small --batches 1 4 16 64 --out DIR
    python bench/runtime.py --device cpu --geometry tiny --batches 1 --steps 2,1,1,1     (smoke test)

Each --variants entry is an attention backend with optional "+graphs" (CUDA-graph replay) and "+fused"
(the fused sampler), e.g. ``sdpa``, ``sdpa+graphs``, ``triton+fused+graphs``. For each: a logits gate
first (vs the fp32 'exact' backend on the same device, rel. err < 2e-2 for bf16/fp16, 1e-5 for fp32; for
+graphs/+fused also >= 99 % equal greedy tokens vs the eager default sampler, replayed),
then text -> tokens timed (median of --repeats, CUDA-synchronised), with the achieved TFLOP/s of the LM
passes and the share of --peak-tflops, and the codec decode (text -> WAV = both). No audiocraft here: the
side-by-side baseline is bench/e2e.py (which needs the audiocraft oracle environment).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
GEOMETRIES = {"tiny": (64, 4, 2), "small": (1024, 16, 24), "medium": (1536, 24, 48)}
T5 = ROOT / "tests" / "fixtures" / "ac_ref" / "t5_tiny"          # width 768, like t5-base


def build(folder: Path, geometry: str, duration: int) -> None:
    from magnet_fast.config import MagnetConfig
    from magnet_fast.nn.model import MagnetLM
    dim, heads, layers = GEOMETRIES[geometry]
    cfg = MagnetConfig(dim=dim, num_heads=heads, num_layers=layers, card=2048, t5_name="t5-base", t5_dim=768,
                       segment_duration=float(duration))
    with torch.device("meta"):
        lm = MagnetLM(cfg)
    g = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(v.shape, generator=g) * (0.02 if v.dim() == 2 else 1.0)).to(torch.float16)
             for k, v in lm.state_dict().items()}
    folder.mkdir(parents=True)
    save_file(state, str(folder / "model.safetensors"))
    cfg.save(folder)


def codec_32khz(device: str):
    """transformers EncodecModel at the released 32 kHz size (56.9 M params), random weights."""
    from transformers import EncodecConfig, EncodecModel

    from magnet_fast.io.codec import Codec
    cfg = EncodecConfig(sampling_rate=32000, audio_channels=1, upsampling_ratios=[8, 5, 4, 4], num_filters=64,
                        hidden_size=128, codebook_size=2048, codebook_dim=128, target_bandwidths=[2.2],
                        num_lstm_layers=2, use_causal_conv=False, normalize=False, pad_mode="constant",
                        norm_type="weight_norm", compress=2, chunk_length_s=None, overlap=None,
                        use_conv_shortcut=False)
    torch.manual_seed(0)
    return Codec(EncodecModel(cfg).to(device), source="random 32 kHz EnCodec (bench)")


def flops_per_pass(cfg, rows: int, t: int, stage: int, l_text: int = 12, null_skip: bool = True) -> float:
    """The sum of ``flop_parts`` (see there)."""
    return sum(flop_parts(cfg, rows, t, stage, l_text, null_skip))


def flop_parts(cfg, rows: int, t: int, stage: int, l_text: int = 12, null_skip: bool = True) -> tuple[float, float]:
    """FLOPs (2 per multiply-add) of one MAGNeT forward over ``rows`` = 2B CFG rows (B conditioned, B null)
    of ``t`` frames at ``stage``; the floor divides this by the peak rate.

    Per layer and per token, in multiply-adds (d = dim, hidden 4d, no biases that matter):
      self-attention  Q, K, V, O projections         4 d^2
      feed-forward    d -> 4d -> d                   8 d^2
      cross-attention Q and O projections            2 d^2, on the B conditioned rows only: outside 'exact'
                      the null rows' cross-attention (exactly 0) is skipped (``MagnetLM.guided_logits``),
                      and the condition's K/V are computed once per generation, not per step
    so a row averages 12 d^2 + 2 d^2 / 2 = 13 d^2 per layer (``null_skip``; 14 d^2 in 'exact'), plus the
    head (d x card per token; all t positions counted, an upper bound when the head runs on the re-masked
    positions only). Attention scores and mixing: 2 t x keys x d per row (keys: t at stage 0, the band
    2 * subcodes_context + 1 later) and 2 t x l_text x d on the rows that run cross-attention.
    Elementwise work (norms, GELU, casts, sampling) is not counted: the floor is a GEMM floor.
    -> (linear FLOPs, attention FLOPs)."""
    d, n = cfg.dim, cfg.num_layers
    cross_rows = rows // 2 if null_skip else rows
    linear = 2 * t * (rows * (n * 12 * d * d + d * cfg.card) + cross_rows * n * 2 * d * d)
    keys = t if stage == 0 else min(t, 2 * cfg.subcodes_context + 1)
    attn = 2 * n * t * d * (2 * rows * keys + 2 * cross_rows * l_text)
    return float(linear), float(attn)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--geometry", choices=list(GEOMETRIES), default="small")
    ap.add_argument("--duration", type=int, choices=[10, 30], default=10)
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--variants", nargs="+", default=None,
                    help="default (CUDA): sdpa sdpa+graphs windowed+graphs triton+graphs triton+fused+graphs; "
                         "(CPU): exact windowed")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--steps", default="20,10,10,10")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-codec", action="store_true",
                    help="skip the codec decode timing (text->WAV = text->tokens; the dry run: a random 32 kHz "
                         "EnCodec decode of 10 s takes ~10-25 s on a shared CPU)")
    ap.add_argument("--peak-tflops", type=float, default=800.0, help="for the fraction of peak (H100 bf16 ~800)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    from common import (
        apply_variant,
        parse_variant,
        recordings,
        save_results,
        set_codec,
        stamp,
        sync,
        token_gate,
    )

    import magnet_fast as mf
    cuda = args.device == "cuda"
    dtype = args.dtype or ("bfloat16" if cuda else "float32")
    variants = args.variants or (["sdpa", "sdpa+graphs", "windowed+graphs", "triton+graphs", "triton+fused+graphs"]
                                 if cuda else ["exact", "windowed"])
    steps = [int(s) for s in args.steps.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="magnet-runtime-")) / "model"
    build(tmp, args.geometry, args.duration)
    model = mf.MagnetFast.from_pretrained(tmp, device=args.device, dtype=dtype, t5=T5)
    ref = mf.MagnetFast.from_pretrained(tmp, device=args.device, dtype="float32", t5=T5)
    if not args.no_codec:
        set_codec(model, codec_32khz(args.device))          # text -> WAV timing (codec decode, float32)
    cfg = model.config
    t = cfg.frames - cfg.frames % cfg.span_len
    meta = stamp(args.device)
    meta.update(geometry=args.geometry, duration=args.duration, dtype=dtype, steps=steps, frames=t,
                peak_tflops=args.peak_tflops, codec="none (decode not timed)" if args.no_codec else "32 kHz random")

    seq = torch.randint(0, 2048, (2, 4, t), generator=torch.Generator().manual_seed(1)).to(args.device)
    with torch.inference_mode():
        kv_ref = ref.lm.cross_kv(ref.condition(["calm piano"]))
        kv = model.lm.cross_kv(model.condition(["calm piano"]))
        exact = {s: ref.lm(seq, kv_ref, s, "exact").float() for s in (0, 1)}
    tol = 1e-5 if dtype == "float32" else 2e-2
    rows = []
    out = args.out or ROOT / "bench" / "results" / f"runtime-{args.device}-{meta['date'][:10]}"

    def write_out(final: bool) -> None:       # after every row: a run killed at its time limit keeps rows
        lines = [f"# Runtime, text -> tokens: {meta['device_name']}", "",
                 f"torch {meta['torch']}, triton {meta['triton']}, commit `{meta['git_commit'][:12]}`, {meta['date']}; "
                 f"geometry {args.geometry}, {args.duration} s ({t} frames), {dtype}, steps {steps}; random weights. "
                 f"Floor = LM FLOPs at {args.peak_tflops:g} TFLOP/s. text->WAV = text->tokens + the codec decode "
                 f"(transformers EnCodec at the 32 kHz size, random weights, float32).", "",
                 "| variant | B | gate (rel. err) | text->tokens s | samples/s | TFLOP/s | floor s | floor/actual "
                 "| codec decode s | text->WAV s |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if r["gate"] == "PASS":
                lines.append(f"| {r['variant']} | {r['batch']} | PASS ({r['rel_err']:.1e}) | {r['seconds']:.3f} | "
                             f"{r['samples_per_s']:.2f} | {r['tflops']:.2f} | {r['floor_s']:.4f} | "
                             f"{r['fraction_of_floor']:.3f} | {r['decode_s']:.3f} | {r['text_to_wav_s']:.3f} |")
            else:
                agree = "" if r["greedy_token_agreement"] is None else f", tokens {r['greedy_token_agreement']:.3f}"
                lines.append(f"| {r['variant']} | {r['batch']} | FAIL ({r['rel_err']:.1e}{agree}) | | | | | | | |")
        save_results(out, meta, rows, lines, plots=final)

    for variant in variants:
        backend, flags = parse_variant(variant)
        with torch.inference_mode():
            err = max(((model.lm(seq, kv, s, backend, None, 1).float() - exact[s]).norm() / exact[s].norm()).item()
                      for s in (0, 1))
        agree = token_gate(model, variant, ["calm piano", "fast drums"]) if flags and err < tol else None
        gate = err < tol and (agree is None or agree >= 0.99)
        apply_variant(model, variant)
        for batch in args.batches:
            texts = [f"track {i} with drums" for i in range(batch)]
            row = {"variant": variant, "backend": backend, "batch": batch, "gate": "PASS" if gate else "FAIL",
                   "rel_err": err, "greedy_token_agreement": agree}
            if gate:
                sync(args.device)
                t0 = time.perf_counter()
                model.generate_tokens(texts, seed=0, decoding_steps=steps)            # warm-up (and recording)
                sync(args.device)
                row["first_call_s"] = time.perf_counter() - t0
                recorded = recordings(model)
                times = []
                for r in range(args.repeats):
                    sync(args.device)
                    t0 = time.perf_counter()
                    model.generate_tokens(texts, seed=r, decoding_steps=steps)
                    sync(args.device)
                    times.append(time.perf_counter() - t0)
                row["recorded_while_timing"] = recordings(model) != recorded
                sec = statistics.median(times)
                tokens = None if args.no_codec else model.generate_tokens(texts, seed=0, decoding_steps=steps)
                wav_times = []
                for _ in range(0 if args.no_codec else args.repeats):
                    sync(args.device)
                    t0 = time.perf_counter()
                    model.decode(tokens)
                    sync(args.device)
                    wav_times.append(time.perf_counter() - t0)
                decode_s = statistics.median(wav_times) if wav_times else 0.0          # --no-codec: not timed
                row.update(decode_s=decode_s, text_to_wav_s=sec + decode_s)
                flops = sum(n * flops_per_pass(cfg, 2 * batch, t, stage, null_skip=backend != "exact")
                            for stage, n in enumerate(steps))
                row.update(seconds=sec, samples_per_s=batch / sec, tflops=flops / sec / 1e12,
                           floor_s=flops / (args.peak_tflops * 1e12), all_s=times)
                row["fraction_of_floor"] = row["floor_s"] / sec
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "all_s"}), flush=True)
            write_out(final=False)
        model.set_cuda_graphs(False)
        model.clear_cuda_graphs()                        # frees the recordings before the next variant
    write_out(final=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
