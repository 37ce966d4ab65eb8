"""Checks of what a caller passes besides the sampling parameters: descriptions, prompt tokens, prompt
audio, device and dtype. Each raises ParameterError with the fix in the message."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from magnet_fast.checks import (
    check_sample_rate,
)
from magnet_fast.errors import ParameterError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def check_device(device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ParameterError(f"device must be 'cpu' or 'cuda' (or 'cuda:N'), got {device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError("device 'cuda' requested but CUDA is not available; use device='cpu'")
    return device


def check_dtype(dtype, device: torch.device) -> torch.dtype:
    """None: float32 on CPU, bfloat16 on CUDA; else a name or a torch dtype of DTYPES."""
    if dtype is None:
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ParameterError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        return DTYPES[dtype]
    if dtype not in DTYPES.values():
        raise ParameterError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    return dtype


def check_token_tensor(x, name: str, layout: str) -> None:
    """``x`` must be an integer tensor of three dims (codec tokens; not float, complex or bool): else one
    ParameterError naming ``name``, the expected ``layout`` and what came."""
    if (not isinstance(x, torch.Tensor) or x.dim() != 3 or x.is_floating_point() or x.is_complex()
            or x.dtype == torch.bool):
        got = f"a {x.dtype} tensor of shape {list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ParameterError(f"{name} must be an integer tensor {layout} of codec tokens, got {got}")


def check_prompt(prompt, batch: int, n_q: int, card: int, frames: int, device) -> torch.Tensor | None:
    """Prompt tokens [B, n_q, P] with 0 < P < frames and ids in [0, card) -> long tensor on ``device``."""
    if prompt is None:
        return None
    check_token_tensor(prompt, "prompt", "[B, n_q, P]")
    b, k, p = prompt.shape
    if b != batch or k != n_q:
        raise ParameterError(f"prompt has shape {list(prompt.shape)}; expected [{batch}, {n_q}, P] for "
                             f"{batch} description(s)")
    if not 0 < p < frames:
        raise ParameterError(f"prompt length {p} frames must be in 1..{frames - 1} (the model generates "
                             f"{frames} frames)")
    prompt = prompt.to(dtype=torch.long)          # any integer dtype; compared in int64, not in int8/uint8
    lo, hi = int(prompt.min()), int(prompt.max())
    if lo < 0 or hi >= card:
        raise ParameterError(f"prompt tokens must be in [0, {card}), got values in [{lo}, {hi}]")
    return prompt.to(device=device)


def check_flag(value, name: str) -> bool:
    """A real bool (True/False): a string such as "no" or "false" would otherwise switch a mode on."""
    if not isinstance(value, bool):
        raise ParameterError(f"{name} must be True or False, got {value!r}")
    return value


def check_generator(generator, device: torch.device):
    if generator is not None and (not isinstance(generator, torch.Generator)
                                  or generator.device.type != device.type):
        raise ParameterError(f"generator must be a torch.Generator on {device.type}, got {generator!r}")
    return generator


MAX_THREADS = 1024


def check_threads(threads) -> int | None:
    """torch CPU threads: None or 1..min(MAX_THREADS, 4 x the CPUs) (100000 threads crash OpenMP)."""
    import os
    if threads is None:
        return None
    most = min(MAX_THREADS, 4 * (os.cpu_count() or 1))
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= most:
        raise ParameterError(f"threads must be an integer in 1..{most} (4 x this machine's CPUs), got {threads!r}")
    return threads


def check_max_batch(max_batch) -> int | None:
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
        raise ParameterError(f"max_batch must be a positive integer, got {max_batch!r}")
    return max_batch


def prompt_audio_tensor(prompt_audio, batch: int, sample_rate: int | None, duration: float):
    """Audio prompt (path, or tensor [S] / [C, S] / [B, C, S] with its sample rate) -> ([B, C, S] float32,
    sample rate), checked: finite, shorter than the model's duration, one row or one per description."""
    from magnet_fast.io.audio import read_audio
    if isinstance(prompt_audio, (str, Path)):
        wav, sample_rate = read_audio(prompt_audio, max_seconds=duration)   # length from the header first
    elif isinstance(prompt_audio, torch.Tensor):
        if sample_rate is None:
            raise ParameterError("a tensor prompt_audio needs prompt_sample_rate")
        wav = prompt_audio
    else:
        raise ParameterError("prompt_audio must be a file path or a tensor of samples")
    sample_rate = check_sample_rate(sample_rate, "prompt_sample_rate")
    wav = pcm_to_float(wav)
    while wav.dim() < 3:
        wav = wav.unsqueeze(0)
    if not torch.isfinite(wav).all():
        raise ParameterError("prompt audio contains NaN or inf samples")
    seconds = wav.shape[-1] / sample_rate
    if seconds >= duration:
        raise ParameterError(f"prompt audio is {seconds:.2f} s; it must be shorter than the model's "
                             f"{duration:g} s")
    if wav.shape[0] == 1 and batch > 1:
        wav = wav.expand(batch, -1, -1)
    if wav.shape[0] != batch:
        raise ParameterError(f"prompt audio has {wav.shape[0]} rows for {batch} descriptions")
    return wav.float(), sample_rate


# ------------------------------------------------------------------------------ issue 24 (docs/reliability.md)
def pcm_to_float(wav: torch.Tensor) -> torch.Tensor:
    """Audio samples as float: floating tensors unchanged; integer PCM scaled to [-1, 1) the way WAV readers
    do (int16 / 2**15, int32 / 2**31, int8 / 2**7, uint8 offset binary (x - 128) / 128); bool and complex
    tensors refused (casting would keep 0/1 or drop the imaginary part)."""
    if not isinstance(wav, torch.Tensor):
        raise ParameterError("audio must be a torch.Tensor of samples")
    if wav.is_floating_point():
        return wav
    if wav.dtype == torch.bool or wav.is_complex():
        raise ParameterError(f"audio samples of dtype {wav.dtype} are not audio; pass float samples in [-1, 1] "
                             "(or integer PCM)")
    if wav.dtype == torch.uint8:
        return (wav.to(torch.float64) - 128.0).div(128.0).float()
    bits = {torch.int8: 8, torch.int16: 16, torch.int32: 32}.get(wav.dtype)
    if bits is None:
        raise ParameterError(f"audio samples of dtype {wav.dtype} are not a PCM format; pass float samples in "
                             "[-1, 1], or int8/int16/int32/uint8 PCM")
    return wav.to(torch.float64).div(2.0 ** (bits - 1)).float()


def check_steps_list(steps, n_q: int) -> list[int]:
    """decoding_steps as the compat layer takes it: a list/tuple of ``n_q`` integers (numpy integers and
    whole floats like 4.0 too); a string ('20' is not [2, 0]), a fractional float (10.9 is not 10), bools
    and other objects are refused."""
    import operator
    if isinstance(steps, (str, bytes, bytearray, dict)) or not isinstance(steps, (list, tuple)):
        raise ParameterError(f"decoding_steps must be a list of {n_q} integers, got {_short(steps)}")
    out = []
    for i, s in enumerate(steps):
        if isinstance(s, float) and s.is_integer() and abs(s) < 2**31:
            s = int(s)                            # 4.0 is 4 (the compat layer always took whole floats)
        if isinstance(s, bool) or type(s).__name__ == "bool_" or isinstance(s, float):
            raise ParameterError(f"decoding_steps must be integers, got {_short(s)} ({type(s).__name__}) for "
                                 f"codebook {i}")
        try:
            out.append(operator.index(s))
        except TypeError:
            raise ParameterError(f"decoding_steps must be integers, got {_short(s)} ({type(s).__name__}) for "
                                 f"codebook {i}") from None
    return out


def _short(v) -> str:
    from magnet_fast.io.files import short
    return short(v)


def check_hybrid_fits(hybrid_seconds, duration, window_s: float, frame_rate) -> None:
    """A hybrid prefix must be shorter than the output: with ``duration`` under the window, MAGNeT keeps
    round(duration * frame_rate) frames, and a prefix of as many frames or more would return MusicGen's
    audio alone."""
    if hybrid_seconds is None or duration is None:
        return
    duration, hybrid_seconds = plain_number(duration), plain_number(hybrid_seconds)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (duration, hybrid_seconds)):
        return                                    # the type errors are the parameter checks' to report
    if duration > window_s:
        return                                    # long-form: the prefix is window 1's
    keep = max(1, round(duration * frame_rate))
    if round(hybrid_seconds * frame_rate) >= keep:
        raise ParameterError(f"the hybrid prefix ({hybrid_seconds:g} s) must be shorter than the output "
                             f"(duration {duration:g} s); lower hybrid_seconds (--hybrid-seconds) or raise the "
                             "duration")


def plain_number(v):
    """numpy scalars -> Python int/float (np.float32 is not a float subclass; np.float64 is); else unchanged."""
    if type(v).__module__ == "numpy" and hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        if type(v).__name__ == "bool_":
            return v
        return v.item()
    return v


MAX_WINDOWS = 1000                 # long-form windows per generation (3600 s at MAGNeT's default 5 s stride: 719)
MIN_STRIDE_FRACTION = 0.05         # extend_stride >= 5 % of the window (10 s: 0.5 s; 30 s: 1.5 s)


def check_windows(total: int, window: int, stride: int, frame_rate) -> None:
    """Long-form bounds, before any work: the stride at least MIN_STRIDE_FRACTION of the window (and one
    frame), and at most MAX_WINDOWS windows (``--duration 3600 --extend-stride 0.02`` asked for 179,503)."""
    least = max(1, math.ceil(MIN_STRIDE_FRACTION * window))
    if stride < least:
        raise ParameterError(f"extend_stride {stride / frame_rate:g} s is under the {least / frame_rate:g} s minimum "
                             f"({MIN_STRIDE_FRACTION:.0%} of the {window / frame_rate:g} s window); raise it")
    n = 1 if total <= window else 1 + math.ceil((total - window) / stride)
    if n > MAX_WINDOWS:
        need = (total - window) / (MAX_WINDOWS - 1) / frame_rate
        raise ParameterError(f"duration {total / frame_rate:g} s with extend_stride {stride / frame_rate:g} s needs {n} "
                             f"windows, over the {MAX_WINDOWS}-window bound; raise extend_stride to at least "
                             f"{need:.2f} s or shorten the duration")


def check_long_form(duration, extend_stride, window_s: float, frame_rate) -> None:
    """The compat layer's long-form settings under the engine's bounds: duration in (0, LONGFORM_MAX_S],
    0 < extend_stride < window, and ``check_windows``."""
    from magnet_fast.params import LONGFORM_MAX_S, _number
    duration, extend_stride = plain_number(duration), plain_number(extend_stride)
    _number("duration", duration, 0.0, LONGFORM_MAX_S, lo_open=True)
    _number("extend_stride", extend_stride, 0.0, lo_open=True)
    if not extend_stride < window_s:
        raise ParameterError(f"Cannot stride by more than max generation duration: extend_stride must be in "
                             f"(0, {window_s}) s, got {extend_stride!r}")
    if duration > window_s:
        check_windows(round(duration * frame_rate), int(window_s * frame_rate), int(frame_rate * extend_stride),
                      frame_rate)


def check_model_folder(path) -> Path:
    """``from_pretrained``'s path: a str or os.PathLike naming a folder (None, a number, a NUL byte or a name
    over the file system's limits is one CheckpointError naming the fix, not a TypeError / ENAMETOOLONG)."""
    from magnet_fast.errors import CheckpointError
    from magnet_fast.io.files import check_path
    if path is None:
        raise CheckpointError("from_pretrained needs the converted model folder (e.g. a folder written by "
                              "`magnet-fast convert`, or magnet_fast.demo.DEMO_MODEL), got None")
    return check_path(path, "model folder", CheckpointError).expanduser()


def check_sources(**sources) -> None:
    """``--t5`` / ``--codec`` / ``--hybrid`` style values that look like local paths must exist as folders
    (checked before the model loads); hub names are left to the loader."""
    from magnet_fast.errors import CheckpointError
    from magnet_fast.io.files import check_path, looks_like_path
    for name, value in sources.items():
        if value is None:
            continue
        path = check_path(value, f"--{name}", CheckpointError).expanduser()
        if looks_like_path(str(value)) and not path.is_dir():
            raise CheckpointError(f"--{name} {value}: no such folder; pass a local {name} folder (or a hub name)")


# ------------------------------------------------------------------------------ memory-derived default chunk
MEMORY_SHARE = 0.5                 # of the available memory one call may plan for


def available_memory(device: torch.device) -> int | None:
    """Bytes the process may still allocate: CUDA's free memory, or on CPU the smaller of /proc/meminfo's
    MemAvailable and the cgroup's limit minus its usage (Linux overcommit means a failed allocation is not
    a safe signal: the OOM killer comes first). None when unknown."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except Exception:  # noqa: BLE001
            return None
    found = []
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            limit = f.read().strip()
        if limit != "max":
            with open("/sys/fs/cgroup/memory.current", encoding="ascii") as f:
                found.append(max(0, int(limit) - int(f.read().strip())))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def row_bytes(cfg) -> int:
    """A generous estimate of the peak bytes one description costs during a decoding step (fp32 upper
    bound, CFG doubles the rows): logits and their softmax copies over every codebook and frame, dense
    attention scores, the feed-forward activations, and (MusicGen) the KV cache over the window."""
    t = cfg.frames
    per_cfg_row = 3 * cfg.n_q * t * cfg.card + cfg.num_heads * t * t + 3 * t * cfg.dim * cfg.hidden_scale
    if getattr(cfg, "kind", "magnet") == "musicgen":
        per_cfg_row += 2 * cfg.num_layers * t * cfg.dim         # the autoregressive KV cache
    return 2 * 4 * per_cfg_row


def memory_chunk(engine, n: int, max_batch: int | None) -> int | None:
    """``max_batch`` when given; else None when ``n`` descriptions fit in MEMORY_SHARE of the available
    memory by ``row_bytes``, else the chunk that does (a BatchSplitWarning says so). 10**4 prompts in one
    call no longer grow to the OOM killer."""
    if max_batch is not None or n <= 1:
        return max_batch
    free = available_memory(torch.device(engine.device))
    if free is None:
        return None
    fits = max(1, int(free * MEMORY_SHARE) // max(1, row_bytes(engine.config)))
    if n <= fits:
        return None
    import warnings

    from magnet_fast.errors import BatchSplitWarning
    warnings.warn(f"{n} descriptions need about {n * row_bytes(engine.config) / 2**30:.1f} GiB at once, over half of "
                  f"the {free / 2**30:.1f} GiB available; decoding in chunks of {fits} (pass max_batch= to choose)",
                  BatchSplitWarning, stacklevel=3)
    return fits
