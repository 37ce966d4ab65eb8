"""``magnet-fast prepare`` and ``magnet-fast finetune`` (+ ``--export``): parsers and commands.

``add_parsers(subparsers)`` registers both on the main CLI (magnet_fast/cli.py); errors follow its
contract (MagnetFastError -> one line, exit 2).
"""
from __future__ import annotations

import sys
from pathlib import Path


def _positive_int(name):
    def parse(text: str) -> int:
        import argparse
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {v}")
        return v
    return parse


def add_parsers(sub) -> None:
    """Register ``prepare`` and ``finetune`` on the CLI's subparsers."""
    from magnet_fast.demo import DEMO_MODEL
    p = sub.add_parser("prepare", help="audio folder -> token shards + index.jsonl for finetune")
    p.add_argument("audio_dir", metavar="AUDIO_DIR")
    p.add_argument("--out", required=True, metavar="DATA_DIR")
    p.add_argument("--model", default=str(DEMO_MODEL), help="converted MAGNeT folder (its codec encodes)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_prepare)
    f = sub.add_parser("finetune", help="fine-tune a MAGNeT model on a prepared folder (resumable); "
                                        "--export RUN_DIR OUT_MODEL writes the result as a model folder")
    f.add_argument("data_dir", metavar="DATA_DIR", nargs="?")
    f.add_argument("--model", metavar="MODEL_DIR")
    f.add_argument("--out", metavar="RUN_DIR")
    f.add_argument("--export", nargs=2, metavar=("RUN_DIR", "OUT_MODEL"))
    f.add_argument("--steps", type=int, default=1000)
    f.add_argument("--batch-size", type=int, default=4)
    f.add_argument("--grad-accum", type=int, default=1)
    f.add_argument("--lr", type=float, default=1e-5)
    f.add_argument("--warmup", type=int, default=0)
    f.add_argument("--weight-decay", type=float, default=0.0)
    f.add_argument("--lora-rank", type=int, default=0)
    f.add_argument("--save-every", type=int, default=100)
    f.add_argument("--device", default="cpu")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--attention", choices=["exact", "sdpa", "windowed", "triton"], default=None)
    f.add_argument("--cfg-dropout", type=float, default=0.3)
    f.add_argument("--word-dropout", type=float, default=0.3)
    f.add_argument("--force", action="store_true", help="with --export: replace an existing model folder")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=cmd_finetune)


def cmd_prepare(args) -> int:
    from magnet_fast.train.data import prepare
    stats = prepare(args.audio_dir, args.out, args.model, device=args.device, progress=not args.quiet)
    print(f"prepared {stats['done']} file(s) ({stats['segments']} segments), skipped {stats['skipped']} "
          f"already done, {stats['failed']} failed (see {Path(args.out) / 'index.jsonl'})", file=sys.stderr)
    return 0


def cmd_finetune(args) -> int:
    from magnet_fast.errors import UsageError
    from magnet_fast.train.run import RunSettings, export_run, finetune
    if args.export:
        if args.data_dir or args.out or args.model:
            raise UsageError("--export RUN_DIR OUT_MODEL takes no DATA_DIR, --model or --out")
        out = export_run(args.export[0], args.export[1], overwrite=args.force)
        print(f"exported {out}", file=sys.stderr)
        return 0
    missing = [n for n, v in (("DATA_DIR", args.data_dir), ("--model", args.model), ("--out", args.out)) if not v]
    if missing:
        raise UsageError(f"finetune needs {', '.join(missing)} (or --export RUN_DIR OUT_MODEL)")
    settings = RunSettings(data_dir=str(Path(args.data_dir).resolve()), model=str(Path(args.model).resolve()),
                           steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
                           warmup=args.warmup, weight_decay=args.weight_decay, lora_rank=args.lora_rank,
                           save_every=args.save_every, device=args.device, seed=args.seed,
                           attention=args.attention, cfg_dropout=args.cfg_dropout, word_dropout=args.word_dropout)
    result = finetune(settings, args.out, progress=not args.quiet)
    print(f"trained to step {result['steps']}, final loss {result['final_loss']:.4f}; run folder {args.out}",
          file=sys.stderr)
    return 0
