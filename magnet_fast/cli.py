"""``magnet-fast``: generate | convert | info. Bad input -> one line on stderr, exit code 2."""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from magnet_fast.demo import DEMO_MODEL  # noqa: E402  (the bundled demo, package data)
from magnet_fast.errors import MagnetFastError

CHUNK = {"cpu": 4, "cuda": 32}     # prompts decoded (and written) at a time when --max-batch is not given


class UsageError(MagnetFastError):
    """A command-line mistake (bad flag value, unreadable prompts file, ...). A MagnetFastError, so that the
    one-line exit-2 contract holds whichever module instance raised it (``python -m magnet_fast.cli`` runs
    this file as ``__main__`` while jobs.py raises ``magnet_fast.cli.UsageError``)."""


class _Parser(argparse.ArgumentParser):
    """argparse with the documented error contract: one ``magnet-fast: error: ...`` line, exit code 2 (no
    usage block). Subparsers inherit the class (add_subparsers' default parser_class)."""

    def error(self, message: str):
        self.exit(2, f"magnet-fast: error: {message}\n")


JSONL_KEYS = ("description", "text")


def _int_list(text: str, name: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise UsageError(f"{name} must be comma-separated integers, got {text!r}") from None


def _float_pair(text: str, name: str) -> tuple[float, float]:
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 2:
        raise UsageError(f"{name} must be MAX,MIN (two numbers), got {text!r}")
    return values[0], values[1]


def read_prompts(args) -> list[str | None]:
    """Prompts from the command line and --prompts-file; --unconditional turns each into None."""
    prompts: list[str | None] = list(args.prompts)
    if args.prompts_file:
        path = Path(args.prompts_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"prompts file {path} is not readable text ({e})") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            if path.suffix == ".jsonl":
                try:
                    item = json.loads(line)
                except json.JSONDecodeError:
                    raise UsageError(f"{path}:{n} is not valid JSON") from None
                prompts.append(_jsonl_prompt(item, f"{path}:{n}"))
            else:
                prompts.append(line.strip())
    if args.unconditional:
        return [None] * max(1, len(prompts))
    if not prompts:
        raise UsageError("no prompts: pass at least one text (or --prompts-file FILE)")
    if any(p is not None and not p.strip() for p in prompts):
        raise UsageError("empty prompt text; use --unconditional for unconditional generation")
    return prompts


def _jsonl_prompt(item, where: str) -> str | None:
    """One .jsonl line -> a prompt: a JSON string, or an object with 'description' (or 'text'), whose
    null value means an unconditional row. Anything else (a typo'd key, a bare null) is refused."""
    if isinstance(item, str):
        return item
    if not isinstance(item, dict):
        raise UsageError(f"{where} must be a JSON object {{\"description\": \"...\"}} (or a JSON string), got "
                         f"{json.dumps(item)}")
    unknown = sorted(set(item) - set(JSONL_KEYS))
    if unknown:
        raise UsageError(f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; the known keys are "
                         f"{' and '.join(map(repr, JSONL_KEYS))}")
    if not item:
        raise UsageError(f"{where} is an empty object; give it a 'description' (null for unconditional)")
    text = item.get("description", item.get("text"))
    if text is not None and not isinstance(text, str):
        raise UsageError(f"{where} needs a string 'description'")
    return text


MAGNET_ONLY = {"steps": "--steps", "stride1": "--stride1", "span_scoring": "--span-scoring",
               "no_anneal": "--no-anneal", "hybrid": "--hybrid", "hybrid_seconds": "--hybrid-seconds",
               "rescore": "--rescore", "rescore_weight": "--rescore-weight"}
MUSICGEN_ONLY = {"two_step_cfg": "--two-step-cfg"}
LONG_FORM = {"duration": "--duration", "extend_stride": "--extend-stride"}


def _refuse(args, flags: dict, kind: str, other: str) -> None:
    given = [flag for dest, flag in flags.items() if getattr(args, dest, None) not in (None, False)]
    if given:
        raise UsageError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for {other} models; "
                         f"this is a {kind} model")


def generation_overrides(args, kind: str = "magnet") -> dict:
    """CLI flags -> generate_tokens keywords (None = the model's default). Only parsing and flag rules
    here; the values are checked by magnet_fast.params (resolve_params / resolve_ar_params), like every
    API call's. kind: the model's ('magnet' or 'musicgen'); the other family's flags are refused."""
    params = {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k}
    if args.top_k is not None:
        if args.top_p is not None:
            raise UsageError("--top-p and --top-k exclude each other (top-p wins upstream); pass one")
        params["top_p"] = 0.0                       # otherwise the model's default top_p would win
    if args.greedy:
        params["use_sampling"] = False
    if kind == "musicgen":
        _refuse(args, MAGNET_ONLY, "MusicGen", "MAGNeT")
        if args.cfg is not None:
            try:
                params["cfg_coef"] = float(args.cfg)
            except ValueError:
                raise UsageError(f"--cfg must be one number for a MusicGen model, got {args.cfg!r}") from None
        if getattr(args, "two_step_cfg", False):
            params["two_step_cfg"] = True
        params["duration"] = args.duration
        params["extend_stride"] = getattr(args, "extend_stride", None)   # generate only (batch: per item)
        return params
    _refuse(args, MUSICGEN_ONLY, "MAGNeT", "MusicGen")
    params["duration"], params["extend_stride"] = args.duration, getattr(args, "extend_stride", None)
    params["span_scoring"] = args.span_scoring
    if args.steps is not None:
        params["decoding_steps"] = _int_list(args.steps, "--steps")
    if args.cfg is not None:
        params["max_cfg_coef"], params["min_cfg_coef"] = _float_pair(args.cfg, "--cfg")
    if args.stride1:
        params["span_arrangement"] = "stride1"
    if args.no_anneal:
        params["anneal_temp"] = False
    return params


def check_paired_models(args, cfg) -> None:
    """--hybrid / --rescore: MusicGen folders sharing the MAGNeT model's codec tokens (before loading);
    their flags without them are refused."""
    from magnet_fast.config import MagnetConfig
    if args.hybrid is None and args.hybrid_seconds is not None:
        raise UsageError("--hybrid-seconds needs --hybrid MUSICGEN_DIR")
    if args.rescore is None and args.rescore_weight is not None:
        raise UsageError("--rescore-weight needs --rescore MUSICGEN_DIR")
    w = args.rescore_weight
    if w is not None and not 0.0 <= w <= 1.0:
        raise UsageError(f"--rescore-weight must be in [0, 1], got {w}")
    h = args.hybrid_seconds
    if h is not None and not 0.0 < h < cfg.segment_duration:
        raise UsageError(f"--hybrid-seconds must be in (0, {cfg.segment_duration:g}) (the MAGNeT model's "
                         f"duration), got {h}")
    for flag, folder in (("--hybrid", args.hybrid), ("--rescore", args.rescore)):
        if folder is None:
            continue
        other = MagnetConfig.load(Path(folder))
        if other.kind != "musicgen":
            raise UsageError(f"{flag} needs a MusicGen model folder; {folder} is a {other.kind} model")
        if (other.n_q, other.card, other.frame_rate) != (cfg.n_q, cfg.card, cfg.frame_rate):
            raise UsageError(f"{flag} {folder}: {other.n_q} codebooks x {other.card} at {other.frame_rate} Hz, "
                             f"but the MAGNeT model has {cfg.n_q} x {cfg.card} at {cfg.frame_rate} Hz: they must "
                             "share the codec's tokens")


def _paired(args, device, dtype) -> dict:
    """--hybrid / --rescore -> the generate_tokens keywords (the MusicGen engines loaded)."""
    from magnet_fast.engines.musicgen import MusicGenFast
    out = {}
    loaded = {}

    def load(folder):
        key = str(Path(folder).resolve())
        if key not in loaded:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                loaded[key] = MusicGenFast.from_pretrained(folder, device=device, dtype=dtype,
                                                           allow_download=args.allow_download)
        return loaded[key]
    if args.hybrid is not None:
        out["hybrid"] = load(args.hybrid)
        if args.hybrid_seconds is not None:
            out["hybrid_seconds"] = args.hybrid_seconds
    if args.rescore is not None:
        out["rescorer"] = load(args.rescore)
        if args.rescore_weight is not None:
            out["rescore_weight"] = args.rescore_weight
    return out


def cmd_generate(args) -> int:
    from magnet_fast.config import MagnetConfig
    from magnet_fast.engines.inputs import check_max_batch
    from magnet_fast.engines.magnet import MagnetFast
    from magnet_fast.engines.musicgen import MusicGenFast
    from magnet_fast.io.audio import audio_info, check_writable, output_paths, write_wav
    from magnet_fast.params import check_seed, resolve_ar_params, resolve_params
    prompts = read_prompts(args)
    model_dir = Path(args.model) if args.model else DEMO_MODEL
    cfg = MagnetConfig.load(model_dir)
    params = generation_overrides(args, cfg.kind)
    if cfg.kind == "musicgen":                                 # every value checked before loading
        from magnet_fast.engines.musicgen import long_form_plan
        long = long_form_plan(cfg, params["duration"], params["extend_stride"])
        sampling = {k: v for k, v in params.items() if k != "extend_stride"}
        if long is not None:
            sampling["duration"] = cfg.segment_duration
        length = resolve_ar_params(cfg.generation, cfg.card, max_duration=cfg.segment_duration,
                                   **sampling).duration
    else:
        from magnet_fast.engines.longform import long_form
        from magnet_fast.params import output_frames
        sampling = {k: v for k, v in params.items() if k not in ("duration", "extend_stride")}
        p = resolve_params(cfg.generation, cfg.n_q, cfg.card, frames=cfg.frames, span_len=cfg.span_len, **sampling)
        long_form(params["duration"], params["extend_stride"], window_s=cfg.segment_duration,
                  frame_rate=cfg.frame_rate, window_frames=output_frames(cfg.frames, cfg.span_len,
                                                                         p.span_arrangement),
                  default_stride_s=cfg.segment_duration / 2)
        length = cfg.segment_duration
        check_paired_models(args, cfg)
    check_seed(args.seed)
    check_max_batch(args.max_batch)
    if args.prompt_audio:
        audio_info(args.prompt_audio, length)                   # kind and length from the header
    out = Path(args.out) if args.out else None
    if args.tokens_only:
        paths = [out if out is not None and out.suffix == ".safetensors"
                 else (out or Path("outputs")) / "tokens.safetensors"]
    else:
        paths = output_paths(out, prompts, Path("outputs"))
    check_writable(paths, args.force)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)          # the notice is printed once below
        engine = MusicGenFast if cfg.kind == "musicgen" else MagnetFast
        model = engine.from_pretrained(model_dir, device=args.device, dtype=args.dtype, t5=args.t5,
                                           codec=args.codec, allow_download=args.allow_download,
                                           attention="exact" if args.exact else None,
                                           quantize="int8" if getattr(args, "int8", False) else None)
    if model.config.notice:
        print(f"note: {model.config.notice}", file=sys.stderr)
    if cfg.kind == "magnet":
        params.update(_paired(args, model.device, args.dtype))
    t0 = time.perf_counter()
    prompt = None
    if args.prompt_audio:
        from magnet_fast.engines.inputs import prompt_audio_tensor
        wav, rate = prompt_audio_tensor(args.prompt_audio, len(prompts), None, length)
        prompt = model.encode(wav, rate)
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
                                       prompt=None if prompt is None else prompt[part], **params)
        if args.tokens_only:
            kept.append(tokens.cpu())
            continue
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

    from magnet_fast.config import WEIGHTS_NAME, MagnetConfig
    from magnet_fast.errors import CheckpointError
    folder = Path(args.model) if args.model else DEMO_MODEL
    cfg = MagnetConfig.load(folder)
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
    check_header(folder / WEIGHTS_NAME, cfg, header)         # the same checks as loading it for generate
    info = {"model": str(folder), "parameters": params, "dtypes": sorted(dtypes), **cfg.to_dict()}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    g = cfg.generation
    print(f"{folder}\n  kind: {cfg.kind} ({'MusicGen: autoregressive, delay pattern ' + str(list(cfg.delays)) if cfg.kind == 'musicgen' else 'MAGNeT: masked, parallel decoding'})")
    print(f"  LM: {params / 1e6:.1f} M parameters ({', '.join(sorted(dtypes))}), dim {cfg.dim}, "
          f"{cfg.num_layers} layers, {cfg.num_heads} heads, {cfg.n_q} codebooks x {cfg.card}")
    shape = (f"span {cfg.span_len}, band +-{cfg.subcodes_context}" if cfg.kind == "magnet"
             else f"up to {cfg.segment_duration:g} s per generation")
    print(f"  audio: {cfg.segment_duration:g} s at {cfg.frame_rate} Hz frames ({cfg.frames}), "
          f"{cfg.sample_rate} Hz; {shape}")
    print(f"  text: {cfg.t5_name} (width {cfg.t5_dim})" + ("; bundled t5/" if (folder / "t5").is_dir() else ""))
    print(f"  codec: {json.dumps(cfg.codec)}")
    if cfg.kind == "musicgen":
        print(f"  defaults: duration {g.duration:g} s, sampling {g.use_sampling}, temperature {g.temperature}, "
              f"top_k {g.top_k}, top_p {g.top_p}, cfg {g.cfg_coef}, two-step cfg {g.two_step_cfg}")
    else:
        print(f"  defaults: steps {list(g.decoding_steps)}, temperature {g.temperature}, top_p {g.top_p}, "
              f"top_k {g.top_k}, cfg {g.max_cfg_coef}->{g.min_cfg_coef}, {g.span_arrangement}/{g.span_scoring}")
    if cfg.notice:
        print(f"  note: {cfg.notice}")
    return 0


# ----------------------------------------------------------------------------------------- batch
def add_batch_parser(sub) -> None:
    """Register ``magnet-fast batch`` on the CLI's subparsers."""
    b = sub.add_parser("batch", help="run a resumable JSONL job: one WAV per line + manifest.jsonl")
    b.add_argument("job", help='JSONL: {"id": ..., "text": ..., "seed"?: int, <generation params>} per line')
    b.add_argument("--out", required=True, help="output folder (WAVs + manifest.jsonl; rerun to resume)")
    b.add_argument("--model", help="converted model folder (default: the bundled demo)")
    b.add_argument("--steps", help="default decoding steps per codebook, e.g. 20,10,10,10")
    b.add_argument("--temperature", type=float)
    b.add_argument("--top-p", type=float)
    b.add_argument("--top-k", type=int)
    b.add_argument("--cfg", help="default CFG: MAX,MIN annealed for MAGNeT (e.g. 10,1); one number for MusicGen")
    b.add_argument("--stride1", action="store_true")
    b.add_argument("--span-scoring", choices=["max", "prod"])
    b.add_argument("--greedy", action="store_true")
    b.add_argument("--no-anneal", action="store_true")
    b.add_argument("--duration", type=float, help="default duration in seconds (passed only when given)")
    b.add_argument("--max-batch", type=int, help="items decoded together (default 4 on CPU, 32 on CUDA)")
    b.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    b.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    b.add_argument("--exact", action="store_true", help="parity attention (see `generate --exact`)")
    b.add_argument("--t5", help="local T5 folder")
    b.add_argument("--codec", help="local EnCodec folder (transformers format)")
    b.add_argument("--allow-download", action="store_true")
    b.add_argument("--threads", type=int, help="torch CPU threads per process (per replica with --ray)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.add_argument("--ray", action="store_true", help="run on Ray Data (pip install -e \".[ray]\")")
    b.add_argument("--ray-address", help="Ray cluster address (default: a local Ray)")
    b.add_argument("--replicas", type=int, help="model replicas with --ray (default 1; one per GPU on CUDA)")
    b.set_defaults(func=cmd_batch)


def batch_defaults(args, kind: str) -> dict:
    """``batch`` flags -> the job's default generation parameters (only those given): the same flag rules
    and checks as ``generate`` (``generation_overrides``)."""
    return {k: v for k, v in generation_overrides(args, kind).items() if v is not None}


def _model_kind(args) -> tuple[Path, object]:
    from magnet_fast.config import MagnetConfig
    from magnet_fast.demo import DEMO_MODEL
    folder = Path(args.model) if args.model else DEMO_MODEL
    return folder, MagnetConfig.load(folder)


def model_spec(args):
    """The CLI's model (a converted MAGNeT or MusicGen folder: the engine follows config.json's kind),
    checked from its config.json before anything loads."""
    from magnet_fast.jobs import ModelSpec
    from magnet_fast.params import resolve_ar_params, resolve_params
    folder, cfg = _model_kind(args)
    defaults = {k: v for k, v in batch_defaults(args, cfg.kind).items() if k != "duration"}
    kwargs = {"device": args.device, "dtype": args.dtype, "t5": args.t5, "codec": args.codec,
              "allow_download": args.allow_download, "attention": "exact" if args.exact else None}
    if cfg.kind == "musicgen":
        resolve_ar_params(cfg.generation, cfg.card, **defaults)
        return ModelSpec(str(folder.resolve()), kwargs, loader="magnet_fast.engines.musicgen:MusicGenFast")
    resolve_params(cfg.generation, cfg.n_q, cfg.card, frames=cfg.frames, span_len=cfg.span_len, **defaults)
    return ModelSpec(str(folder.resolve()), kwargs)


def cmd_batch(args) -> int:
    """``magnet-fast batch`` (magnet_fast/jobs.py): exit 0 when every item is done, 1 when any failed, 2 for
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
    defaults = batch_defaults(args, _model_kind(args)[1].kind)
    spec = model_spec(args)

    def warn(message: str) -> None:
        print(f"magnet-fast: warning: {message}", file=sys.stderr)

    if args.ray:
        from magnet_fast.ray_jobs import run_ray_job
        summary = run_ray_job(args.job, args.out, spec, defaults=defaults, max_batch=args.max_batch,
                              replicas=args.replicas or 1, address=args.ray_address, threads=args.threads,
                              quiet=args.quiet, warn=warn)
    else:
        summary = run_job(args.job, args.out, spec, defaults=defaults, max_batch=args.max_batch,
                          threads=args.threads, quiet=args.quiet, warn=warn)
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
    g.add_argument("--model", help=f"converted model folder (default: the bundled demo, {DEMO_MODEL.name})")
    g.add_argument("--out", help="output .wav (one prompt) or folder (default: ./outputs)")
    g.add_argument("--seed", type=int)
    g.add_argument("--steps", help="decoding steps per codebook, e.g. 20,10,10,10")
    g.add_argument("--temperature", type=float)
    g.add_argument("--top-p", type=float)
    g.add_argument("--top-k", type=int)
    g.add_argument("--cfg", help="CFG coefficient: MAX,MIN annealed for MAGNeT (e.g. 10,1); one number for "
                   "MusicGen (e.g. 3)")
    g.add_argument("--duration", type=float, help="seconds to generate, prompt included (MusicGen default 15); "
                   "over the model's window (MusicGen 30 s) it generates long-form in sliding windows")
    g.add_argument("--extend-stride", type=float, help="long-form (--duration over the model's window): seconds "
                   "each further window advances (MusicGen default 18, MAGNeT half the window)")
    g.add_argument("--hybrid", metavar="MUSICGEN_DIR", help="Hybrid-MAGNeT: this MusicGen generates the first "
                   "--hybrid-seconds autoregressively, MAGNeT decodes the rest")
    g.add_argument("--hybrid-seconds", type=float, help="the autoregressive prefix (default 3)")
    g.add_argument("--rescore", metavar="MUSICGEN_DIR", help="rescore every MAGNeT step with this MusicGen")
    g.add_argument("--rescore-weight", type=float, help="w in w*p_rescorer + (1-w)*p_magnet (default 0.7)")
    g.add_argument("--two-step-cfg", action="store_true", help="MusicGen: separate conditional and "
                   "unconditional forwards (audiocraft's two_step_cfg)")
    g.add_argument("--stride1", action="store_true", help="overlapping-span masking (the demo's setting)")
    g.add_argument("--span-scoring", choices=["max", "prod"])
    g.add_argument("--greedy", action="store_true", help="argmax decoding (no sampling)")
    g.add_argument("--no-anneal", action="store_true", help="constant temperature")
    g.add_argument("--unconditional", action="store_true", help="ignore the texts (null condition)")
    g.add_argument("--prompt-audio", help="audio file to continue (shorter than the model's duration)")
    g.add_argument("--max-batch", type=int, help="decode (and write) at most N prompts at a time (memory; default "
                                                 f"{CHUNK['cpu']} on CPU, {CHUNK['cuda']} on CUDA)")
    g.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    g.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    g.add_argument("--exact", action="store_true",
                   help="parity mode: audiocraft's dense attention arithmetic (on CPU float32 its tokens bit "
                        "for bit for the same seed; slower than the default)")
    g.add_argument("--int8", action="store_true",
                   help="CPU float32 only, opt-in: int8 linears (torch dynamic quantization); tokens statistically, "
                        "not bitwise, the float32 ones")
    g.add_argument("--t5", help="local T5 folder (default: the model's t5/ or its config name)")
    g.add_argument("--codec", help="local EnCodec folder (transformers format) overriding the model's")
    g.add_argument("--allow-download", action="store_true", help="let transformers fetch T5/codec from the hub")
    g.add_argument("--tokens-only", action="store_true", help="write tokens (.safetensors) instead of audio")
    g.add_argument("--force", action="store_true", help="overwrite existing output files")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
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
    add_batch_parser(sub)                          # magnet-fast batch: resumable JSONL jobs (jobs.py)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from magnet_fast.errors import MagnetFastError
    try:
        return args.func(args)
    except (MagnetFastError, UsageError) as e:
        print(f"magnet-fast: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("magnet-fast: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
