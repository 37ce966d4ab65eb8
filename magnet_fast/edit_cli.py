"""``magnet-fast edit`` / ``magnet-fast vary`` and ``generate --loop`` (docs/editing.md).

Every input is checked before the model loads (the audio from its header): a bad one is one line on stderr,
exit code 2, and nothing is written. The output WAV is written atomically.
"""
from __future__ import annotations

import math
import sys
import time
import warnings
from pathlib import Path

from magnet_fast.demo import DEMO_MODEL


def _usage(message: str):
    from magnet_fast.errors import UsageError
    return UsageError(message)


def _generation_flags(p) -> None:
    """The generate command's MAGNeT sampling and model flags (same names, same meaning)."""
    p.add_argument("--model", help=f"converted MAGNeT model folder (default: the bundled demo, {DEMO_MODEL.name})")
    p.add_argument("--out", help="output .wav (default: outputs/<input name>_<command>.wav)")
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", help="decoding steps per codebook, e.g. 20,10,10,10")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--cfg", help="CFG coefficient MAX,MIN (annealed), e.g. 10,1")
    p.add_argument("--stride1", action="store_true", help="overlapping-span masking")
    p.add_argument("--span-scoring", choices=["max", "prod"])
    p.add_argument("--greedy", action="store_true", help="argmax decoding (no sampling)")
    p.add_argument("--no-anneal", action="store_true", help="constant temperature")
    p.add_argument("--rescore", metavar="MUSICGEN_DIR", help="rescore every MAGNeT step with this MusicGen")
    p.add_argument("--rescore-weight", type=float, help="w in w*p_rescorer + (1-w)*p_magnet (default 0.7)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--exact", action="store_true", help="parity mode attention (audiocraft's arithmetic)")
    p.add_argument("--t5", help="local T5 folder (default: the model's t5/ or its config name)")
    p.add_argument("--codec", help="local EnCodec folder (transformers format) overriding the model's")
    p.add_argument("--allow-download", action="store_true", help="let transformers fetch T5/codec from the hub")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(duration=None, extend_stride=None, hybrid=None, hybrid_seconds=None, two_step_cfg=False)


def _intermixed(parser_class):
    """The CLI's parser class, parsing options and positionals intermixed (``IN.wav --start S --end E "text"``:
    plain argparse would bind the text before the options and then refuse it)."""
    class Intermixed(parser_class):
        _inner = False

        def parse_known_args(self, args=None, namespace=None):
            if self._inner:
                return super().parse_known_args(args, namespace)
            self._inner = True
            try:
                return self.parse_known_intermixed_args(args, namespace)
            finally:
                self._inner = False
    return Intermixed


def add_parsers(sub) -> None:
    """Register ``edit`` and ``vary`` on the CLI's subparsers and ``--loop`` on ``generate``."""
    default_class = sub._parser_class
    sub._parser_class = _intermixed(default_class)
    try:
        _add(sub)
    finally:
        sub._parser_class = default_class
    g = sub.choices.get("generate")
    if g is not None:
        g.add_argument("--loop", action="store_true", help="a seamless loop of --duration seconds (default half "
                       "the window; LoopGen's circular decoding)")
        generate = g.get_default("func")

        def generate_checked(args):                 # the loop's length is checked before the model loads
            _check_loop(args)
            return generate(args)
        g.set_defaults(func=generate_checked)


def _check_loop(args) -> None:
    if not args.loop:
        return
    from magnet_fast.config import MagnetConfig
    from magnet_fast.engines.editing import loop_geometry
    cfg = MagnetConfig.load(Path(args.model) if args.model else DEMO_MODEL)
    if cfg.kind != "magnet":
        raise _usage(f"--loop is for MAGNeT models (masked decoding); this is a {cfg.kind} model")
    if args.prompt_audio or args.hybrid or args.extend_stride is not None:
        raise _usage("--loop does not combine with --prompt-audio, --hybrid or --extend-stride")
    loop_geometry(cfg, "stride1" if args.stride1 else cfg.generation.span_arrangement,
                  args.duration)


def _add(sub) -> None:
    e = sub.add_parser("edit", help="regenerate a time range of a WAV (inpainting), keeping the rest")
    e.add_argument("input", metavar="IN.wav", help="the audio to edit")
    e.add_argument("text", nargs="?", help="description of the music (default: unconditional)")
    e.add_argument("--start", type=float, required=True, help="range start (seconds)")
    e.add_argument("--end", type=float, required=True, help="range end (seconds)")
    e.add_argument("--crossfade", type=float, default=0.05, help="equal-power crossfade at each boundary "
                   "(seconds, default 0.05)")
    _generation_flags(e)
    e.set_defaults(func=cmd_edit)
    v = sub.add_parser("vary", help="a variation of a WAV: re-mask a fraction of its spans and decode again")
    v.add_argument("input", metavar="IN.wav", help="the audio to vary")
    v.add_argument("text", nargs="?", help="description of the music (default: unconditional)")
    v.add_argument("--strength", type=float, required=True, help="fraction of spans regenerated, in (0, 1]")
    _generation_flags(v)
    v.set_defaults(func=cmd_vary)


def _prepare(args, command: str):
    """Everything checked before loading: model kind, flags, the audio header, the range / strength, the
    output path. -> (model folder, sampling keywords, clip seconds, output path)."""
    from magnet_fast.config import MagnetConfig
    from magnet_fast.engines.editing import EDIT_MAX_SECONDS, check_strength, frame_ranges
    from magnet_fast.errors import ParameterError
    from magnet_fast.flags import check_paired_models, generation_overrides
    from magnet_fast.io.audio import audio_info, check_writable
    from magnet_fast.params import check_seed, resolve_params
    model_dir = Path(args.model) if args.model else DEMO_MODEL
    cfg = MagnetConfig.load(model_dir)
    if cfg.kind != "magnet":
        raise _usage(f"{command} needs a MAGNeT model (masked decoding fills a range from both sides); {model_dir} "
                     f"is a {cfg.kind} model, which can only continue a prompt (use generate --prompt-audio)")
    params = generation_overrides(args, "magnet")
    params = {k: v for k, v in params.items() if k not in ("duration", "extend_stride")}
    resolve_params(cfg.generation, cfg.n_q, cfg.card, frames=cfg.frames, span_len=cfg.span_len, **params)
    check_paired_models(args, cfg)
    check_seed(args.seed)
    if args.text is not None and not args.text.strip():
        raise _usage("empty description; leave it out for an unconditional edit")
    try:
        info = audio_info(args.input)
    except ParameterError as e:
        raise _usage(str(e).replace("prompt audio", "input audio", 1)) from None
    seconds = info.frames / info.samplerate if info.samplerate > 0 else 0.0
    if seconds <= 0:
        raise _usage(f"input audio {args.input} is empty")
    if seconds > EDIT_MAX_SECONDS:
        raise _usage(f"input audio is {seconds:.1f} s; {command} takes at most {EDIT_MAX_SECONDS:g} s: cut it first")
    frames = math.ceil(seconds * cfg.frame_rate)
    if command == "edit":
        cf = args.crossfade
        if not math.isfinite(cf) or cf < 0:
            raise _usage(f"--crossfade must be >= 0 seconds, got {cf:g}")
        frame_ranges(args.start, args.end, None, 1, frames, cfg.frame_rate, cfg.span_len)
    else:
        check_strength(args.strength)
        window = cfg.frames - cfg.frames % cfg.span_len
        if frames > window:
            raise _usage(f"input audio is {seconds:.2f} s; vary works on at most the model's window "
                         f"({cfg.segment_duration:g} s): cut it first")
    out = Path(args.out) if args.out else Path("outputs") / f"{Path(args.input).stem}_{command}.wav"
    if out.suffix.lower() != ".wav":
        raise _usage(f"--out {out} must name a .wav file")
    check_writable([out], args.force)
    return model_dir, params, out


def _load(args, model_dir):
    from magnet_fast.engines.magnet import MagnetFast
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = MagnetFast.from_pretrained(model_dir, device=args.device, dtype=args.dtype, t5=args.t5,
                                           codec=args.codec, allow_download=args.allow_download,
                                           attention="exact" if args.exact else None)
    if model.config.notice:
        print(f"note: {model.config.notice}", file=sys.stderr)
    model.load_codec()
    return model


def _run(args, command: str) -> int:
    from magnet_fast.flags import paired_models
    from magnet_fast.io.audio import write_wav
    model_dir, params, out = _prepare(args, command)
    model = _load(args, model_dir)
    params.update(paired_models(args, model.device, args.dtype))
    t0 = time.perf_counter()
    common = dict(seed=args.seed, progress=not args.quiet, **params)
    if command == "edit":
        wav = model.edit(args.input, args.start, args.end, args.text, crossfade=args.crossfade, **common)
    else:
        wav = model.vary(args.input, args.strength, args.text, **common)
    clipped = write_wav(out, wav[0], model.sample_rate)
    print(out, flush=True)
    note = f", {clipped} samples clipped" if clipped else ""
    print(f"{command}: {wav.shape[-1] / model.sample_rate:.2f} s of audio in {time.perf_counter() - t0:.2f} s on "
          f"{model.device}{note}")
    return 0


def cmd_edit(args) -> int:
    return _run(args, "edit")


def cmd_vary(args) -> int:
    return _run(args, "vary")


__all__ = ["add_parsers", "cmd_edit", "cmd_vary"]
