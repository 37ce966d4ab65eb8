"""``magnet-fast``: generate | convert | info. Bad input -> one line on stderr, exit code 2."""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from magnet_fast.demo import DEMO_MODEL  # noqa: E402  (the bundled demo, package data)
from magnet_fast.errors import MagnetFastError, UsageError, exit_interrupted, interrupted
from magnet_fast.flags import (
    CHUNK,
    add_flags,
    check_paired_models,
    generation_overrides,
    paired_models,
    read_prompts,
)


class _Parser(argparse.ArgumentParser):
    """argparse with the documented error contract: one ``magnet-fast: error: ...`` line, exit code 2 (no
    usage block). Subparsers inherit the class (add_subparsers' default parser_class)."""

    def error(self, message: str):
        self.exit(2, f"magnet-fast: error: {message}\n")


def cmd_generate(args) -> int:
    from magnet_fast.engines.inputs import check_max_batch
    from magnet_fast.engines.registry import ENGINES, config_of
    from magnet_fast.io.audio import audio_info, check_writable, output_paths, write_wav
    from magnet_fast.params import check_seed
    prompts = read_prompts(args)
    model_dir = Path(args.model) if args.model else DEMO_MODEL
    cfg = config_of(model_dir)
    family = ENGINES[cfg.kind]                                 # the engine and its checks, from config.json
    params = generation_overrides(args, cfg.kind)
    length = family.check(cfg, params)                         # every value checked before loading
    check_paired_models(args, cfg)
    check_seed(args.seed)
    check_max_batch(args.max_batch)
    from magnet_fast.engines.inputs import check_sources
    check_sources(t5=args.t5, codec=args.codec)                 # local folders exist: before loading
    prompt_wav = None
    if args.prompt_audio:
        audio_info(args.prompt_audio, length)                   # kind and length from the header
        from magnet_fast.engines.inputs import prompt_audio_tensor  # samples read and checked before loading
        prompt_wav = prompt_audio_tensor(args.prompt_audio, len(prompts), None, length)
    out = Path(args.out) if args.out else None
    if args.tokens_only and out is not None:
        from magnet_fast.io.audio import check_tokens_out
        check_tokens_out(out)                                    # x.wav is not a folder for tokens
    if args.tokens_only:
        paths = [out if out is not None and out.suffix == ".safetensors"
                 else (out or Path("outputs")) / "tokens.safetensors"]
    else:
        paths = output_paths(out, prompts, Path("outputs"))
    check_writable(paths, args.force)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)          # the notice is printed once below
        model = family.engine().from_pretrained(model_dir, device=args.device, dtype=args.dtype, t5=args.t5,
                                                codec=args.codec, allow_download=args.allow_download,
                                                attention="exact" if args.exact else None,
                                                quantize="int8" if args.int8 else None)
    if model.config.notice:
        print(f"note: {model.config.notice}", file=sys.stderr)
    params.update(paired_models(args, model.device, args.dtype))     # --hybrid / --rescore (MAGNeT only)
    t0 = time.perf_counter()
    prompt = None
    if prompt_wav is not None:
        prompt = model.encode(*prompt_wav)
    elif not args.tokens_only:
        model.load_codec()                                    # fail now, not after decoding
    # Streaming: chunks of --max-batch (default: CHUNK per device) are decoded one after another with one
    # random stream continued across them (the API's max_batch draws), and each chunk's WAVs are written
    # before the next chunk starts, so memory stays flat in the number of prompts.
    import torch
    size = args.max_batch or CHUNK[model.device.type]
    gen = None if args.seed is None else torch.Generator(device=model.device).manual_seed(args.seed)
    kept, clipped, audio_s, written = [], 0, 0.0, []
    for start in range(0, len(prompts), size):
        part = slice(start, start + size)
        tokens = model.generate_tokens(prompts[part], generator=gen, progress=not args.quiet,
                                       max_batch=args.max_batch,
                                       prompt=None if prompt is None else prompt[part],
                                       **({"loop": True} if args.loop else {}), **params)
        if args.tokens_only:
            kept.append(tokens.cpu())
            continue
        if args.loop:                                         # decoded wrapped around (editing.py)
            from magnet_fast.engines.editing import loop_audio
            wav = loop_audio(model, tokens)
        else:
            wav = model.decode(tokens)
        for path, w in zip(paths[part], wav, strict=True):
            clipped += write_wav(path, w, model.sample_rate)
            print(path, flush=True)
            written.append(path)
        audio_s += wav.shape[-1] / model.sample_rate * wav.shape[0]
        del tokens, wav
    wall = time.perf_counter() - t0
    if args.tokens_only:
        from safetensors.torch import save as save_bytes

        from magnet_fast.io.files import atomic_write_bytes
        tokens = torch.cat(kept).contiguous()
        atomic_write_bytes(paths[0], save_bytes({"tokens": tokens}), make_parents=True)
        print(f"wrote {paths[0]}: tokens {list(tokens.shape)} in {wall:.2f} s on {model.device}")
        return 0
    note = f", {clipped} samples clipped" if clipped else ""
    print(f"{len(written)} file(s), {audio_s:.2f} s of audio in {wall:.2f} s (real-time factor "
          f"{audio_s / wall:.2f}x) on {model.device} {str(model.dtype).replace('torch.', '')}{note}")
    return 0


def cmd_convert(args) -> int:
    from magnet_fast.io.convert import convert
    from magnet_fast.io.files import check_output_dir
    check_output_dir(Path(args.out), args.force)     # before reading a multi-GB checkpoint (convert re-checks)
    t0 = time.perf_counter()
    out = convert(args.src, args.out, dtype=args.dtype, overwrite=args.force)
    print(f"converted {args.src} -> {out} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_info(args) -> int:
    from safetensors import SafetensorError, safe_open

    from magnet_fast.config import WEIGHTS_NAME
    from magnet_fast.engines.registry import ENGINES, config_of
    from magnet_fast.errors import CheckpointError
    folder = Path(args.model) if args.model else DEMO_MODEL
    cfg = config_of(folder)
    params, dtypes = 0, set()
    try:
        weights = safe_open(str(folder / WEIGHTS_NAME), "pt")
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{folder / WEIGHTS_NAME} is missing or unreadable ({e}); re-run "
                              "`magnet-fast convert`") from None
    header = {}
    with weights as f:
        for key in f.keys():
            sl = f.get_slice(key)
            header[key] = (tuple(sl.get_shape()), sl.get_dtype())
            n = 1
            for d in sl.get_shape():
                n *= d
            params += n
            dtypes.add(sl.get_dtype())
    from magnet_fast.nn.loading import check_header
    check_header(folder / WEIGHTS_NAME, cfg, header)          # the same checks as loading it for generate
    info = {"model": str(folder), "parameters": params, "dtypes": sorted(dtypes), **cfg.to_dict()}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    family = ENGINES[cfg.kind]
    shape, defaults = DESCRIBE[cfg.kind](cfg)
    delays = f" {list(cfg.delays)}" if cfg.delays else ""
    print(f"{folder}\n  kind: {cfg.kind} ({family.description}{delays})")
    print(f"  LM: {params / 1e6:.1f} M parameters ({', '.join(sorted(dtypes))}), dim {cfg.dim}, "
          f"{cfg.num_layers} layers, {cfg.num_heads} heads, {cfg.n_q} codebooks x {cfg.card}")
    print(f"  audio: {cfg.segment_duration:g} s at {cfg.frame_rate} Hz frames ({cfg.frames}), "
          f"{cfg.sample_rate} Hz; {shape}")
    print(f"  text: {cfg.t5_name} (width {cfg.t5_dim})" + ("; bundled t5/" if (folder / "t5").is_dir() else ""))
    print(f"  codec: {json.dumps(cfg.codec)}")
    print(f"  defaults: {defaults}")
    if cfg.notice:
        print(f"  note: {cfg.notice}")
    return 0


def _describe_magnet(cfg) -> tuple[str, str]:
    g = cfg.generation
    return (f"span {cfg.span_len}, band +-{cfg.subcodes_context}",
            f"steps {list(g.decoding_steps)}, temperature {g.temperature}, top_p {g.top_p}, top_k {g.top_k}, "
            f"cfg {g.max_cfg_coef}->{g.min_cfg_coef}, {g.span_arrangement}/{g.span_scoring}")


def _describe_musicgen(cfg) -> tuple[str, str]:
    g = cfg.generation
    return (f"up to {cfg.segment_duration:g} s per generation",
            f"duration {g.duration:g} s, sampling {g.use_sampling}, temperature {g.temperature}, top_k {g.top_k}, "
            f"top_p {g.top_p}, cfg {g.cfg_coef}, two-step cfg {g.two_step_cfg}")


# config.json's kind -> (the ``info`` shape line, the defaults line)
DESCRIBE = {"magnet": _describe_magnet, "musicgen": _describe_musicgen}


# ----------------------------------------------------------------------------------------- batch
def add_batch_parser(sub) -> None:
    """Register ``magnet-fast batch`` on the CLI's subparsers."""
    b = sub.add_parser("batch", help="run a resumable JSONL job: one WAV per line + manifest.jsonl")
    b.add_argument("job", help='JSONL: {"id": ..., "text": ..., "seed"?: int, <generation params>} per line')
    b.add_argument("--out", required=True, help="output folder (WAVs + manifest.jsonl; rerun to resume)")
    add_flags(b, "batch")
    b.add_argument("--threads", type=int, help="torch CPU threads per process (per replica with --ray)")
    b.add_argument("--force", action="store_true", help="replace files in --out that the manifest does not know")
    b.add_argument("--ray", action="store_true", help="run on Ray Data (pip install -e \".[ray]\")")
    b.add_argument("--ray-address", help="Ray cluster address (default: a local Ray)")
    b.add_argument("--replicas", type=int, help="model replicas with --ray (default 1; one per GPU on CUDA)")
    b.set_defaults(func=cmd_batch)


def batch_defaults(args, kind: str) -> dict:
    """``batch`` flags -> the job's default generation parameters (only those given): the same flag rules
    and checks as ``generate`` (``generation_overrides``)."""
    return {k: v for k, v in generation_overrides(args, kind).items() if v is not None}


def _model_config(args) -> tuple[Path, object]:
    from magnet_fast.engines.registry import config_of
    folder = Path(args.model) if args.model else DEMO_MODEL
    return folder, config_of(folder)


def model_spec(args):
    """The CLI's model (a converted MAGNeT or MusicGen folder: the engine follows config.json's kind through
    ``magnet_fast.engines.registry``), checked from its config.json before anything loads."""
    from magnet_fast.engines.registry import ENGINES
    from magnet_fast.jobs import ModelSpec
    folder, cfg = _model_config(args)
    family = ENGINES[cfg.kind]
    defaults = {k: v for k, v in batch_defaults(args, cfg.kind).items() if k != "duration"}
    family.check(cfg, defaults)
    kwargs = {"device": args.device, "dtype": args.dtype, "t5": args.t5, "codec": args.codec,
              "allow_download": args.allow_download, "attention": "exact" if args.exact else None}
    return ModelSpec(str(folder.resolve()), kwargs, loader=family.loader)


def cmd_batch(args) -> int:
    """``magnet-fast batch`` (magnet_fast/jobs/): exit 0 when every item is done, 1 when any failed, 2 for
    usage errors."""
    from magnet_fast.jobs import MANIFEST_NAME, run_job
    for name in ("max_batch", "replicas", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if not args.ray and (args.replicas is not None or args.ray_address is not None):
        raise UsageError("--replicas and --ray-address need --ray")
    if args.ray:
        from magnet_fast.ray_jobs import require_ray
        require_ray()
    defaults = batch_defaults(args, _model_config(args)[1].kind)
    spec = model_spec(args)

    def warn(message: str) -> None:
        print(f"magnet-fast: warning: {message}", file=sys.stderr)

    if args.ray:
        from magnet_fast.ray_jobs import run_ray_job
        summary = run_ray_job(args.job, args.out, spec, defaults=defaults, max_batch=args.max_batch,
                              replicas=args.replicas or 1, address=args.ray_address, threads=args.threads,
                              quiet=args.quiet, warn=warn, force=args.force)
    else:
        summary = run_job(args.job, args.out, spec, defaults=defaults, max_batch=args.max_batch,
                          threads=args.threads, quiet=args.quiet, warn=warn, force=args.force)
    print(summary.line())
    if summary.failed:
        shown = ", ".join(repr(i) if i is not None else "(line)" for i in summary.failed_ids[:5])
        more = ", ..." if summary.failed > 5 else ""
        print(f"magnet-fast: {summary.failed} item(s) failed ({shown}{more}); errors in "
              f"{summary.out / MANIFEST_NAME}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="magnet-fast", description="Fast, faithful MAGNeT inference.")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="text -> WAV (one file per prompt)")
    g.add_argument("prompts", nargs="*", help="text descriptions")
    g.add_argument("--prompts-file", help="one prompt per line (.txt) or {'description': ...} per line (.jsonl)")
    add_flags(g, "generate")
    g.set_defaults(func=cmd_generate)
    c = sub.add_parser("convert", help="audiocraft export folder -> converted model folder")
    c.add_argument("src")
    c.add_argument("out")
    c.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], help="default: keep stored dtype")
    c.add_argument("--force", action="store_true", help="replace an existing output folder")
    c.set_defaults(func=cmd_convert)
    i = sub.add_parser("info", help="describe a converted model")
    i.add_argument("model", nargs="?")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)
    add_batch_parser(sub)                          # magnet-fast batch: resumable JSONL jobs (jobs/)
    from magnet_fast.serve.cli import add_parser as add_serve_parser
    add_serve_parser(sub)                          # magnet-fast serve: HTTP API (magnet_fast/serve)
    from magnet_fast.train.cli import add_parsers as add_train_parsers
    add_train_parsers(sub)                         # magnet-fast prepare / finetune (magnet_fast/train/cli.py)
    from magnet_fast.edit_cli import add_parsers
    add_parsers(sub)                               # magnet-fast edit / vary, generate --loop (edit_cli.py)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (MagnetFastError, UsageError) as e:
        print(f"magnet-fast: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        from magnet_fast.io.files import os_error_line
        line = os_error_line(e)              # a path too long / a symlink loop: one line, not a traceback
        if line is None:
            raise
        print(f"magnet-fast: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if interrupted():                    # a real Ctrl-C in the CLI process: leave now (errors.py)
            exit_interrupted()
        print("magnet-fast: interrupted", file=sys.stderr)
        return 130
    except BaseException:
        if interrupted():                    # an import cut short by Ctrl-C can fail with another error
            exit_interrupted()
        raise


if __name__ == "__main__":
    sys.exit(main())
