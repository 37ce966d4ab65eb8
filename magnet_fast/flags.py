"""What the CLI's generating commands share (generate, batch, edit, vary): the one flag table, prompts
read from flags and files, generation keywords from flags (the family's own flags per kind), and the paired
models (--rescore / --hybrid). Frontends import it; it imports no frontend."""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

from magnet_fast.demo import DEMO_MODEL
from magnet_fast.errors import UsageError

CHUNK = {"cpu": 4, "cuda": 32}     # prompts decoded (and written) at a time when --max-batch is not given
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
        from magnet_fast.io.files import check_path, parse_json, read_lines
        path = check_path(args.prompts_file, "--prompts-file", UsageError)
        lines = read_lines(path, what="prompts file", error=UsageError)   # regular, bounded, split on \n only
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            if path.suffix == ".jsonl":
                item, why = parse_json(line)
                if why is not None:
                    raise UsageError(f"{path}:{n} is {why}")
                prompts.append(_jsonl_prompt(item, f"{path}:{n}"))
            else:
                prompts.append(line.strip())
    if args.unconditional:
        return [None] * max(1, len(prompts))
    if not prompts:
        raise UsageError("no prompts: pass at least one text (or --prompts-file FILE)")
    if any(p is not None and not p.strip() for p in prompts):
        raise UsageError("empty prompt text; use --unconditional for unconditional generation")
    from magnet_fast.checks import check_descriptions
    return check_descriptions(prompts)             # length cap, lone surrogates: before the model loads


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
               "rescore": "--rescore", "rescore_weight": "--rescore-weight", "loop": "--loop"}
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
    API call's. kind: the model's (a key of ``magnet_fast.engines.registry.ENGINES``); the other family's flags are
    refused."""
    params = {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k}
    if args.top_k is not None:
        if args.top_p is not None:
            raise UsageError("--top-p and --top-k exclude each other (top-p wins upstream); pass one")
        params["top_p"] = 0.0                       # otherwise the model's default top_p would win
    if args.greedy:
        params["use_sampling"] = False
    FAMILY_FLAGS[kind](args, params)
    return params


def _musicgen_flags(args, params: dict) -> None:
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


def _magnet_flags(args, params: dict) -> None:
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


# config.json's kind -> the family's flags (the keys are magnet_fast.engines.registry.ENGINES')
FAMILY_FLAGS = {"magnet": _magnet_flags, "musicgen": _musicgen_flags}


def check_paired_models(args, cfg) -> None:
    """--hybrid / --rescore: MusicGen folders sharing the MAGNeT model's codec tokens (before loading);
    their flags without them are refused."""
    from magnet_fast.engines.pairing import check_token_space
    from magnet_fast.engines.registry import config_of
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
    if args.hybrid is not None:
        from magnet_fast.engines.inputs import check_hybrid_fits
        check_hybrid_fits(3.0 if h is None else h, args.duration, cfg.segment_duration, cfg.frame_rate)
    for flag, folder in (("--hybrid", args.hybrid), ("--rescore", args.rescore)):
        if folder is None:
            continue
        other = config_of(folder)
        if other.kind != "musicgen":
            raise UsageError(f"{flag} needs a MusicGen model folder; {folder} is a {other.kind} model")
        check_token_space(cfg, other, f"{flag} {folder}")      # the engines' own check, before loading


def paired_models(args, device, dtype) -> dict:
    """--hybrid / --rescore -> the generate_tokens keywords (the MusicGen engines loaded)."""
    from magnet_fast.engines.registry import engine_for
    out = {}
    loaded = {}

    def load(folder):
        key = str(Path(folder).resolve())
        if key not in loaded:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                loaded[key] = engine_for(folder).from_pretrained(folder, device=device, dtype=dtype,
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


# The generation flags, declared once for ``generate`` and ``batch``: (flags, argparse keywords, commands).
# ``help`` may be a dict command -> text where the commands word it differently.
BOTH, GENERATE = ("generate", "batch"), ("generate",)
FLAGS = (
    (("--model",), {"help": f"converted model folder (default: the bundled demo, {DEMO_MODEL.name})"}, BOTH),
    (("--out",), {"help": "output .wav (one prompt) or folder (default: ./outputs)"}, GENERATE),
    (("--seed",), {"type": int}, GENERATE),
    (("--steps",), {"help": {"generate": "decoding steps per codebook, e.g. 20,10,10,10",
                             "batch": "default decoding steps per codebook, e.g. 20,10,10,10"}}, BOTH),
    (("--temperature",), {"type": float}, BOTH),
    (("--top-p",), {"type": float}, BOTH),
    (("--top-k",), {"type": int}, BOTH),
    (("--cfg",), {"help": {"generate": "CFG coefficient: MAX,MIN annealed for MAGNeT (e.g. 10,1); one number for "
                                       "MusicGen (e.g. 3)",
                           "batch": "default CFG: MAX,MIN annealed for MAGNeT (e.g. 10,1); one number for "
                                    "MusicGen"}}, BOTH),
    (("--duration",), {"type": float, "help": {
        "generate": "seconds to generate, prompt included (MusicGen default 15); over the model's window "
                    "(MusicGen 30 s) it generates long-form in sliding windows",
        "batch": "default duration in seconds (passed only when given)"}}, BOTH),
    (("--extend-stride",), {"type": float, "help": "long-form (--duration over the model's window): seconds "
                            "each further window advances (MusicGen default 18, MAGNeT half the window)"}, GENERATE),
    (("--hybrid",), {"metavar": "MUSICGEN_DIR", "help": "Hybrid-MAGNeT: this MusicGen generates the first "
                     "--hybrid-seconds autoregressively, MAGNeT decodes the rest"}, GENERATE),
    (("--hybrid-seconds",), {"type": float, "help": "the autoregressive prefix (default 3)"}, GENERATE),
    (("--rescore",), {"metavar": "MUSICGEN_DIR", "help": "rescore every MAGNeT step with this MusicGen"},
     GENERATE),
    (("--rescore-weight",), {"type": float, "help": "w in w*p_rescorer + (1-w)*p_magnet (default 0.7)"},
     GENERATE),
    (("--two-step-cfg",), {"action": "store_true", "help": "MusicGen: separate conditional and "
                           "unconditional forwards (audiocraft's two_step_cfg)"}, GENERATE),
    (("--stride1",), {"action": "store_true", "help": "overlapping-span masking (the demo's setting)"}, BOTH),
    (("--span-scoring",), {"choices": ["max", "prod"]}, BOTH),
    (("--greedy",), {"action": "store_true", "help": "argmax decoding (no sampling)"}, BOTH),
    (("--no-anneal",), {"action": "store_true", "help": "constant temperature"}, BOTH),
    (("--unconditional",), {"action": "store_true", "help": "ignore the texts (null condition)"}, GENERATE),
    (("--prompt-audio",), {"help": "audio file to continue (shorter than the model's duration)"}, GENERATE),
    (("--max-batch",), {"type": int, "help": {
        "generate": f"decode (and write) at most N prompts at a time (memory; default {CHUNK['cpu']} on CPU, "
                    f"{CHUNK['cuda']} on CUDA)",
        "batch": f"items decoded together (default {CHUNK['cpu']} on CPU, {CHUNK['cuda']} on CUDA)"}}, BOTH),
    (("--device",), {"default": "cpu", "choices": ["cpu", "cuda"]}, BOTH),
    (("--dtype",), {"choices": ["float32", "float16", "bfloat16"]}, BOTH),
    (("--exact",), {"action": "store_true", "help": "parity mode: audiocraft's dense attention arithmetic (on CPU "
                    "float32 its tokens bit for bit for the same seed; slower than the default)"}, BOTH),
    (("--int8",), {"action": "store_true", "help": "CPU float32 only, opt-in: int8 linears (torch dynamic "
                   "quantization); tokens statistically, not bitwise, the float32 ones"}, GENERATE),
    (("--t5",), {"help": "local T5 folder (default: the model's t5/ or its config name)"}, BOTH),
    (("--codec",), {"help": "local EnCodec folder (transformers format) overriding the model's"}, BOTH),
    (("--allow-download",), {"action": "store_true", "help": "let transformers fetch T5/codec from the hub"},
     BOTH),
    (("--tokens-only",), {"action": "store_true", "help": "write tokens (.safetensors) instead of audio"},
     GENERATE),
    (("--force",), {"action": "store_true", "help": "overwrite existing output files"}, GENERATE),
    (("--quiet",), {"action": "store_true", "help": "no progress bar"}, BOTH),
)


def add_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """Declare ``FLAGS``' rows for ``command`` ('generate' or 'batch') on ``parser``."""
    for flags, kwargs, commands in FLAGS:
        if command in commands:
            kwargs = dict(kwargs)
            if isinstance(kwargs.get("help"), dict):
                kwargs["help"] = kwargs["help"][command]
            parser.add_argument(*flags, **kwargs)
