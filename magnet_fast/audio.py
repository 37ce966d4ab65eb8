"""WAV in and out through soundfile: safe output names, atomic writes, no silent overwrites."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from magnet_fast._io import atomic_file
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


def check_writable(paths: list[Path], force: bool) -> None:
    """Fail before any work if a target exists (without force) or its folder cannot be written."""
    for path in paths:
        if path.exists() and not force:
            raise ParameterError(f"{path} exists; pass --force to overwrite it or choose another --out")
        folder = path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ParameterError(f"output folder {folder} cannot be created ({e.strerror}); "
                                 "choose another --out") from None
        if not os.access(folder, os.W_OK):
            raise ParameterError(f"output folder {folder} is not writable; choose another --out")


def write_wav(path: Path, wav: torch.Tensor, sample_rate: int) -> int:
    """Write [C, S] float audio as 16-bit PCM via a temp file + rename. Returns clipped sample count."""
    import soundfile as sf
    data = wav.detach().float().cpu().numpy().T                      # [S, C]
    clipped = int(np.count_nonzero(np.abs(data) > 1.0))
    data = np.clip(data, -1.0, 1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        sf.write(tmp, data, sample_rate, subtype="PCM_16", format="WAV")
    return clipped


def read_audio(path: str | Path) -> tuple[torch.Tensor, int]:
    """Any soundfile-readable file -> ([C, S] float32, sample_rate)."""
    import soundfile as sf
    if not Path(path).is_file():
        raise ParameterError(f"prompt audio {path} not found")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError, TypeError) as e:
        raise ParameterError(f"prompt audio {path} is not readable audio ({e}); use WAV/FLAC/OGG") from None
    if data.size == 0:
        raise ParameterError(f"prompt audio {path} is empty")
    return torch.from_numpy(np.ascontiguousarray(data.T)), int(sr)
