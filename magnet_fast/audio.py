"""WAV in and out through soundfile: safe output names, atomic writes, no silent overwrites."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from magnet_fast._io import atomic_write_bytes
from magnet_fast.errors import ParameterError


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
