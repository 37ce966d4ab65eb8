"""audiocraft-compatible audio output: ``audio_write`` (with its ``peak`` / ``clip`` / ``rms`` / ``loudness``
normalisation strategies), ``normalize_audio``, an ITU-R BS.1770 ``loudness`` in plain torch, and a
``display_audio`` that shows players in a notebook and does nothing elsewhere. ``magnet_fast.compat``
re-exports them under audiocraft's names (docs/DESIGN.md, Compat layer)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from magnet_fast.errors import ParameterError


def _in_notebook():
    """The running IPython kernel's shell, or None (a script, a terminal IPython, no IPython at all)."""
    ipython = sys.modules.get("IPython")       # a notebook has imported it already; never import it here
    get = getattr(ipython, "get_ipython", None)
    shell = get() if callable(get) else None
    return shell if shell is not None and getattr(shell, "kernel", None) is not None else None


def display_audio(samples: torch.Tensor, sample_rate: int) -> None:
    """Show an audio player per row of ``samples`` ([B, C, T] or [C, T]) in a notebook; outside a notebook
    (a script, a terminal) do nothing."""
    if not isinstance(samples, torch.Tensor) or samples.dim() not in (2, 3):
        raise ParameterError("samples must be a tensor [B, C, T] or [C, T]")
    if _in_notebook() is None:
        return None
    from IPython.display import Audio, display
    samples = samples.detach().float().cpu()
    if samples.dim() == 2:
        samples = samples[None]
    for audio in samples:
        display(Audio(audio.numpy(), rate=sample_rate))
    return None


# ITU-R BS.1770-4 K-weighting at 48 kHz (Tables 1 and 2): the pre-filter (a high shelf) and the RLB high-pass
_K_STAGES_48K = (((1.53512485958697, -2.69169618940638, 1.19839281085285), (1.0, -1.69065929318241, 0.73248077421585)),
                 ((1.0, -2.0, 1.0), (1.0, -1.99004745483398, 0.99007225036621)))
_CHANNEL_WEIGHTS = (1.0, 1.0, 1.0, 1.41, 1.41)       # L, R, C, Ls, Rs


def _k_weight(x: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """K-weighted x [C, T] (float64). The 48 kHz biquads are carried to ``sample_rate`` by the bilinear
    map between the two rates (the digital filter at fs whose response at f is the 48 kHz one at
    48000/pi * atan(fs/48000 * tan(pi f/fs))), applied in the frequency domain over a zero-padded FFT
    long enough (1 s of tail) for the filters' decay, i.e. linear filtering from a zero state."""
    n_in = x.shape[-1]
    n = 1 << math.ceil(math.log2(n_in + sample_rate))
    w = torch.arange(n // 2 + 1, dtype=torch.float64) * (2 * math.pi / n)
    w48 = 2 * torch.atan((sample_rate / 48000.0) * torch.tan(w / 2))
    z1 = torch.exp(-1j * w48)                          # z^-1 on the 48 kHz unit circle
    h = torch.ones_like(z1)
    for b, a in _K_STAGES_48K:
        h = h * (b[0] + b[1] * z1 + b[2] * z1 * z1) / (a[0] + a[1] * z1 + a[2] * z1 * z1)
    return torch.fft.irfft(torch.fft.rfft(x, n=n) * h, n=n)[..., :n_in]


def loudness(wav: torch.Tensor, sample_rate: int) -> float:
    """Integrated loudness in LUFS (ITU-R BS.1770-4): K-weighting, 400 ms blocks every 100 ms, channel
    weights 1/1/1/1.41/1.41, the absolute gate at -70 LUFS and the relative gate 10 LU below the
    absolutely gated loudness. A signal shorter than one block is one block. -inf when every block is
    below the absolute gate (silence). wav: [C, T] or [T], at most 5 channels."""
    if not isinstance(wav, torch.Tensor) or wav.dim() not in (1, 2) or wav.shape[-1] == 0:
        raise ParameterError("wav must be a non-empty tensor [C, T] or [T]")
    from magnet_fast.checks import check_sample_rate
    sample_rate = check_sample_rate(sample_rate)            # 2**30 Hz would size an 8.6 GB FFT
    x = wav.detach().to("cpu", torch.float64)
    if x.dim() == 1:
        x = x[None]
    if x.shape[0] > len(_CHANNEL_WEIGHTS):
        raise ParameterError(f"loudness is defined for at most {len(_CHANNEL_WEIGHTS)} channels, got {x.shape[0]}")
    y = _k_weight(x, sample_rate)
    block = int(round(0.4 * sample_rate))
    hop = max(1, int(round(block / 4)))
    energy = torch.nn.functional.pad(torch.cumsum(y * y, dim=-1), (1, 0))   # energy[t] = sum of y^2 before t
    if y.shape[-1] < block:
        starts, block = torch.tensor([0]), y.shape[-1]
    else:
        starts = torch.arange(0, y.shape[-1] - block + 1, hop)
    z = (energy[:, starts + block] - energy[:, starts]) / block           # [C, J] mean square per block
    g = torch.tensor(_CHANNEL_WEIGHTS[: x.shape[0]], dtype=torch.float64)[:, None]

    def lufs(power):
        return -0.691 + 10 * torch.log10(power)
    block_loudness = lufs((g * z).sum(0))
    kept = block_loudness > -70.0
    if not kept.any():
        return float("-inf")
    relative = lufs((g * z[:, kept].mean(-1, keepdim=True)).sum()) - 10.0
    kept = kept & (block_loudness > relative)
    return float(lufs((g * z[:, kept].mean(-1, keepdim=True)).sum()))


def _clip(wav: torch.Tensor, log_clipping: bool, stem_name: str | None) -> torch.Tensor:
    peak = wav.abs().max()
    if log_clipping and peak > 1:
        share = (wav.abs() > 1).float().mean().item()
        print(f"CLIPPING {stem_name or ''} happening with proba (a bit of clipping is okay):", share,
              "maximum scale: ", peak.item(), file=sys.stderr)
    return wav.clamp(-1, 1)


def normalize_audio(wav: torch.Tensor, normalize: bool = True, strategy: str = "peak",
                    peak_clip_headroom_db: float = 1, rms_headroom_db: float = 18, loudness_headroom_db: float = 14,
                    loudness_compressor: bool = False, log_clipping: bool = False, sample_rate: int | None = None,
                    stem_name: str | None = None) -> torch.Tensor:
    """audiocraft's strategies on [C, T] float audio. 'peak': scale the largest |sample| to
    -peak_clip_headroom_db dBFS (with normalize=False only when it would clip); 'clip': clamp to that level;
    'rms': scale the mono mix's RMS to -rms_headroom_db dBFS (normalize=False: only down), then clip to
    [-1, 1]; 'loudness': scale to -loudness_headroom_db LUFS (BS.1770; left alone below an RMS of 2e-3),
    tanh-compress if loudness_compressor, then clip; 'none' / '': unchanged (must not clip).
    Silent audio stays silent."""
    scale_peak = 10 ** (-peak_clip_headroom_db / 20)
    scale_rms = 10 ** (-rms_headroom_db / 20)
    if strategy == "peak":
        peak = wav.abs().max()
        if peak > 0:
            rescaling = scale_peak / peak
            if normalize or rescaling < 1:
                wav = wav * rescaling
    elif strategy == "clip":
        wav = wav.clamp(-scale_peak, scale_peak)
    elif strategy == "rms":
        rms = wav.mean(dim=0).pow(2).mean().sqrt()
        if rms > 0:
            rescaling = scale_rms / rms
            if normalize or rescaling < 1:
                wav = wav * rescaling
        wav = _clip(wav, log_clipping, stem_name)
    elif strategy == "loudness":
        if sample_rate is None:
            raise ParameterError("the 'loudness' strategy needs sample_rate")
        if wav.pow(2).mean().sqrt().item() >= 2e-3:           # audiocraft's energy floor
            level = loudness(wav, sample_rate)
            if math.isfinite(level):
                wav = wav * 10.0 ** ((-loudness_headroom_db - level) / 20.0)
                if loudness_compressor:
                    wav = torch.tanh(wav)
        wav = _clip(wav, log_clipping, stem_name)
    elif strategy in ("", "none"):
        if wav.abs().max() >= 1:
            raise ParameterError("strategy 'none' needs audio within (-1, 1); pick 'peak', 'clip', 'rms' or "
                                 "'loudness'")
    else:
        raise ParameterError(f"unknown strategy {strategy!r}: use 'peak', 'clip', 'rms', 'loudness' or 'none'")
    return wav


MAX_CHANNELS = 64          # channels audio_write accepts (libsndfile's WAV writer refuses far more, without a hint)


def audio_write(stem_name, wav: torch.Tensor, sample_rate: int, format: str = "wav", mp3_rate: int = 320,
                ogg_rate: int | None = None, normalize: bool = True, strategy: str = "peak",
                peak_clip_headroom_db: float = 1, rms_headroom_db: float = 18, loudness_headroom_db: float = 14,
                loudness_compressor: bool = False, log_clipping: bool = True, make_parent_dir: bool = True,
                add_suffix: bool = True) -> Path:
    """audiocraft's ``audio_write``: normalise ``wav`` ([C, T] or [T] float) with ``strategy`` (see
    ``normalize_audio``) and write ``stem_name`` + '.wav' as 16-bit PCM (atomically: temp file + rename).
    Returns the path. Only format='wav' is supported (mp3/ogg/flac need ffmpeg in audiocraft)."""
    from magnet_fast.io.audio import write_wav
    if format != "wav":
        raise ParameterError(f"format {format!r} is not supported: magnet_fast writes WAV only (format='wav'); "
                             "convert the file afterwards (e.g. ffmpeg) for mp3/ogg/flac")
    from magnet_fast.checks import check_sample_rate
    from magnet_fast.io.files import check_path
    if not isinstance(wav, torch.Tensor) or not wav.dtype.is_floating_point:
        raise ParameterError("wav must be a floating point tensor [C, T] or [T]")
    sample_rate = check_sample_rate(sample_rate)            # >= 2**31 overflows the WAV header
    check_path(str(stem_name) + (".wav" if add_suffix else ""), "stem_name")   # NUL, over-long names
    wav = wav.detach().float().cpu()
    if wav.dim() == 1:
        wav = wav[None]
    elif wav.dim() > 2:
        raise ParameterError(f"Input wav should be at most 2 dimension, got shape {list(wav.shape)}; write one row "
                             "of a batch at a time (wav[i])")
    if wav.shape[-1] == 0:
        raise ParameterError("wav is empty")
    if wav.shape[0] > MAX_CHANNELS:
        hint = (f"; it looks like [T, C] (time first): pass wav.T, i.e. [{wav.shape[1]}, {wav.shape[0]}]"
                if wav.shape[1] <= MAX_CHANNELS else "")
        raise ParameterError(f"wav has {wav.shape[0]} channels (shape [C, T] = {list(wav.shape)}); WAV output takes "
                             f"at most {MAX_CHANNELS}{hint}")
    if not wav.isfinite().all():
        raise ParameterError("wav contains NaN or inf samples")
    wav = normalize_audio(wav, normalize, strategy, peak_clip_headroom_db, rms_headroom_db, loudness_headroom_db,
                          loudness_compressor, log_clipping=log_clipping, sample_rate=sample_rate,
                          stem_name=str(stem_name))
    path = Path(str(stem_name) + (".wav" if add_suffix else ""))
    if not make_parent_dir and not path.parent.is_dir():
        raise ParameterError(f"folder {path.parent} does not exist (pass make_parent_dir=True to create it)")
    write_wav(path, wav, sample_rate)
    return path
