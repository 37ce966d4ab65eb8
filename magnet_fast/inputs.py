"""Checks of what a caller passes besides the sampling parameters: descriptions, prompt tokens, prompt
audio, device and dtype. Each raises ParameterError with the fix in the message."""
from __future__ import annotations

from pathlib import Path

import torch

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


def check_descriptions(descriptions) -> list[str | None]:
    if isinstance(descriptions, str) or not isinstance(descriptions, (list, tuple)):
        raise ParameterError("descriptions must be a list of strings (or None for unconditional "
                             f"rows), got {type(descriptions).__name__}")
    if not descriptions:
        raise ParameterError("descriptions is empty: pass at least one text (or None)")
    bad = [d for d in descriptions if d is not None and not isinstance(d, str)]
    if bad:
        raise ParameterError(f"descriptions must be str or None, got {type(bad[0]).__name__}")
    return list(descriptions)


def check_prompt(prompt, batch: int, n_q: int, card: int, frames: int, device) -> torch.Tensor | None:
    """Prompt tokens [B, n_q, P] with 0 < P < frames and ids in [0, card) -> long tensor on ``device``."""
    if prompt is None:
        return None
    if (not isinstance(prompt, torch.Tensor) or prompt.dim() != 3 or prompt.is_floating_point()
            or prompt.is_complex() or prompt.dtype == torch.bool):
        got = (f"a {prompt.dtype} tensor of shape {list(prompt.shape)}" if isinstance(prompt, torch.Tensor)
               else type(prompt).__name__)
        raise ParameterError(f"prompt must be an integer tensor [B, n_q, P] of codec tokens, got {got}")
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
    from magnet_fast.audio import read_audio
    if isinstance(prompt_audio, (str, Path)):
        wav, sample_rate = read_audio(prompt_audio, max_seconds=duration)   # length from the header first
    elif isinstance(prompt_audio, torch.Tensor):
        if sample_rate is None:
            raise ParameterError("a tensor prompt_audio needs prompt_sample_rate")
        wav = prompt_audio
    else:
        raise ParameterError("prompt_audio must be a file path or a tensor of samples")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 1:
        raise ParameterError(f"prompt_sample_rate must be a positive integer (Hz), got {sample_rate!r}")
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
