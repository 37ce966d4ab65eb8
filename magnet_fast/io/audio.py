"""WAV in and out through soundfile: safe output names, atomic writes, no silent overwrites."""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import torch

from magnet_fast.errors import ParameterError
from magnet_fast.io.files import atomic_write_bytes


def slug(text: str | None, max_len: int = 48) -> str:
    """A file-name-safe stem from a prompt: ascii letters, digits, '-' and '_' only; never empty."""
    s = re.sub(r"[^a-z0-9]+", "_", (text or "unconditional").lower()).strip("_")
    return s[:max_len].rstrip("_") or "prompt"


def output_paths(out: Path | None, prompts: list[str | None], default_dir: Path) -> list[Path]:
    """Where each prompt's WAV goes: ``out`` as a file (one prompt, .wav suffix) or a folder."""
    if out is not None and out.suffix.lower() == ".wav":
        if len(prompts) != 1:
            raise ParameterError(f"--out {out} names one file but there are {len(prompts)} prompts; "
                                 "pass a folder instead")
        return [out]
    folder = out if out is not None else default_dir
    width = max(2, len(str(len(prompts) - 1)))
    return [folder / f"{i:0{width}d}_{slug(p)}.wav" for i, p in enumerate(prompts)]


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".opus")


def check_tokens_out(out: Path) -> None:
    """``--tokens-only --out``: a .safetensors file or a folder; an audio file name is refused (it would
    otherwise become a folder named ``x.wav``)."""
    if out.suffix.lower() in AUDIO_SUFFIXES:
        raise ParameterError(f"--tokens-only writes tokens: --out {out} names an audio file; pass a .safetensors "
                             "file or a folder")


def missing_folders(path: Path) -> list[Path]:
    """The folders above ``path`` that do not exist yet, outermost first (what writing it would create)."""
    missing = []
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]


def check_writable(paths: list[Path], force: bool) -> None:
    """Fail before any work if a target exists (without force), is a folder, or its folder cannot be
    created or written. Creates nothing: folders are made when the first file is written."""
    for path in paths:
        if path.is_dir():
            raise ParameterError(f"{path} is a folder; choose another --out")
        if path.exists() and not force:
            raise ParameterError(f"{path} exists; pass --force to overwrite it or choose another --out")
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent                      # the nearest existing ancestor
        if not folder.is_dir():
            raise ParameterError(f"output folder {path.parent} cannot be created: {folder} is a file, not a "
                                 "folder; choose another --out")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ParameterError(f"output folder {folder} is not writable; choose another --out")


def wav_bytes(wav: torch.Tensor, sample_rate: int) -> tuple[bytes, int]:
    """[C, S] float audio -> (16-bit PCM WAV file bytes, clipped sample count)."""
    import io

    import soundfile as sf
    data = wav.detach().float().cpu().numpy().T                      # [S, C]
    clipped = int(np.count_nonzero(np.abs(data) > 1.0))
    buf = io.BytesIO()
    sf.write(buf, np.clip(data, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
    return buf.getvalue(), clipped


def write_wav(path: Path, wav: torch.Tensor, sample_rate: int) -> int:
    """Write [C, S] float audio as 16-bit PCM via a temp file + rename (encoded in memory first, so a full
    disk is an OSError with its errno, never a partial file). Returns the clipped sample count."""
    data, clipped = wav_bytes(wav, sample_rate)
    atomic_write_bytes(path, data, make_parents=True)
    return clipped


def audio_info(path: str | Path, max_seconds: float | None = None):
    """Check a prompt audio file from its header only (no samples decoded): a regular, soundfile-readable
    file, shorter than ``max_seconds`` when given. Returns soundfile's info (frames, samplerate, ...)."""
    import soundfile as sf
    p = Path(path)
    if p.is_dir():
        raise ParameterError(f"prompt audio {path} is a folder, not an audio file")
    if not p.exists():
        raise ParameterError(f"prompt audio {path} not found")
    if not p.is_file():
        raise ParameterError(f"prompt audio {path} is not a regular file (a device, pipe or socket); pass "
                             "an audio file")
    try:
        info = sf.info(str(p))
    except (RuntimeError, sf.LibsndfileError, TypeError) as e:
        raise ParameterError(f"prompt audio {path} is not readable audio ({e}); use WAV/FLAC/OGG") from None
    except OSError as e:
        raise ParameterError(f"prompt audio {path} is not readable ({e.strerror or e})") from None
    from magnet_fast.checks import MAX_RATE, MIN_RATE
    if not MIN_RATE <= info.samplerate <= MAX_RATE:
        raise ParameterError(f"prompt audio {path} says {info.samplerate} Hz in its header; rates in "
                             f"{MIN_RATE}..{MAX_RATE} Hz are accepted: resample it first")
    if max_seconds is not None and info.samplerate > 0 and info.frames / info.samplerate >= max_seconds:
        raise ParameterError(f"prompt audio is {info.frames / info.samplerate:.2f} s; it must be shorter "
                             f"than the model's {max_seconds:g} s")
    return info


def read_audio(path: str | Path, max_seconds: float | None = None) -> tuple[torch.Tensor, int]:
    """Any soundfile-readable file -> ([C, S] float32, sample_rate). With ``max_seconds``, a file that is
    not shorter is refused from its header (``audio_info``), before its samples are decoded."""
    import soundfile as sf
    audio_info(path, max_seconds)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError, TypeError) as e:
        raise ParameterError(f"prompt audio {path} is not readable audio ({e}); use WAV/FLAC/OGG") from None
    except OSError as e:
        raise ParameterError(f"prompt audio {path} is not readable ({e.strerror or e})") from None
    if data.size == 0:
        raise ParameterError(f"prompt audio {path} is empty")
    return torch.from_numpy(np.ascontiguousarray(data.T)), int(sr)


# ------------------------------------------------------------------------------ resampling with a cost bound
JULIUS_MAX_KERNEL = 4_000_000          # julius' kernel elements (new * (2 * width + old) after the gcd): 16 MB
RESAMPLE_CHUNK = 1 << 16               # output samples per chunk of the bounded resampler


def julius_kernel_size(old_sr: int, new_sr: int, zeros: int = 24, rolloff: float = 0.945) -> int:
    """Elements of the kernel ``julius.resample_frac(x, old_sr, new_sr)`` builds (one row per output phase,
    built in a Python loop): ``new * (2 * ceil(zeros * old / (rolloff * min(old, new))) + old)`` on the rates
    reduced by their gcd. 44100 -> 32000: 163,520; 31999 -> 32000: 1.02e9 (4 GB, minutes)."""
    g = math.gcd(old_sr, new_sr)
    old, new = old_sr // g, new_sr // g
    if old == new:
        return 0
    width = math.ceil(zeros * old / (rolloff * min(old, new)))
    return new * (2 * width + old)


def resample(wav: torch.Tensor, old_sr: int, new_sr: int) -> torch.Tensor:
    """Resample [..., T] from ``old_sr`` to ``new_sr`` (both checked in MIN_RATE..MAX_RATE), T' = floor(T *
    new / old). Where julius' kernel is small (every common rate pair: 44.1k, 48k, 22.05k, 16k, 96k ... to
    32k) this is ``julius.resample_frac``, audiocraft's resampler, exactly. Where it would be large (rates
    whose reduced ratio is big, e.g. 31999 -> 32000) the same windowed-sinc filter (24 zero crossings, Hann
    window, rolloff 0.945) is evaluated directly at each output position, in chunks of RESAMPLE_CHUNK
    outputs: memory and time linear in the audio length (not bitwise julius; docs/reliability.md)."""
    from magnet_fast.checks import check_sample_rate
    old_sr, new_sr = check_sample_rate(old_sr, "sample rate"), check_sample_rate(new_sr, "target sample rate")
    if old_sr == new_sr:
        return wav
    if julius_kernel_size(old_sr, new_sr) <= JULIUS_MAX_KERNEL:
        try:
            import julius
        except ImportError:
            raise ParameterError(
                f"audio at {old_sr} Hz must be resampled to {new_sr} Hz; install julius (`pip install julius`, "
                "the resampler audiocraft uses) or resample it yourself") from None
        return julius.resample_frac(wav, old_sr, new_sr)
    return sinc_resample(wav, old_sr, new_sr)


def sinc_resample(wav: torch.Tensor, old_sr: int, new_sr: int, zeros: int = 24,
                  rolloff: float = 0.945) -> torch.Tensor:
    """julius' filter (sinc * cos^2 window, cutoff rolloff * min(old, new) / 2, taps normalised to sum 1,
    edges replicated) at arbitrary positions, chunked: output n sits at input position n * old / new."""
    shape, length = wav.shape, wav.shape[-1]
    x = wav.reshape(-1, length).to(torch.float64)
    out_len = (new_sr * length) // old_sr
    cutoff = rolloff * min(old_sr, new_sr) / old_sr           # in cycles per input sample x 2 (julius' sr)
    width = math.ceil(zeros / cutoff)
    padded = torch.nn.functional.pad(x[:, None], (width, width + 1), mode="replicate")[:, 0]
    taps = torch.arange(-width, width + 2, dtype=torch.float64, device=wav.device)
    out = torch.empty(x.shape[0], out_len, dtype=torch.float64, device=wav.device)
    for start in range(0, out_len, RESAMPLE_CHUNK):
        n = torch.arange(start, min(out_len, start + RESAMPLE_CHUNK), dtype=torch.float64, device=wav.device)
        pos = n * old_sr / new_sr
        base = torch.floor(pos)
        idx = base[:, None] + taps[None]                        # [N, taps] input sample indices
        t = ((idx - pos[:, None]) * cutoff).clamp(-zeros, zeros) * math.pi
        kernel = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / torch.where(t == 0, torch.ones_like(t), t))
        kernel = kernel * torch.cos(t / zeros / 2) ** 2
        kernel = kernel / kernel.sum(-1, keepdim=True)
        gather = (idx + width).long().clamp(0, padded.shape[-1] - 1)
        out[:, start:start + len(n)] = (padded[:, gather] * kernel[None]).sum(-1)
    return out.to(wav.dtype).reshape(*shape[:-1], out_len)
