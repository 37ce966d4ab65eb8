"""Long-form generation: ``duration`` beyond the model's window, by sliding windows (docs/DESIGN.md,
Long-form generation).

Window 1 is a normal generation (with the caller's prompt, if any). Each further window takes the last
``window - stride`` frames generated so far as its fixed prompt and decodes the rest; the output is window 1
followed by each window's new frames, cut to exactly ``round(duration * frame_rate)`` frames. Every window
after the first has the same shape (batch, frames, prompt length), so one decoder (buffers, recorded graphs)
serves all of them and memory does not grow with the number of windows. One random stream runs through all
windows, so ``seed=s`` makes the whole piece reproducible.
"""
from __future__ import annotations

import math

import torch

from magnet_fast.errors import ParameterError


def plan(total: int, window: int, stride: int, n_prompt: int = 0) -> int:
    """How many windows produce ``total`` frames (window frames each, ``stride`` new frames per extra one)."""
    if total <= window:
        return 1
    return 1 + math.ceil((total - window) / stride)


def check_stride(stride_s, window_s: float, frame_rate: int, window_frames: int) -> int:
    """extend_stride (seconds) -> frames; 0 < stride < window, and at least one frame of context."""
    if isinstance(stride_s, bool) or not isinstance(stride_s, (int, float)) or not math.isfinite(stride_s):
        raise ParameterError(f"extend_stride must be a finite number of seconds, got {stride_s!r}")
    frames = int(round(stride_s * frame_rate))
    if not 0 < frames < window_frames:
        raise ParameterError(f"extend_stride must be in (0, {window_s:g}) s (the model's window), got {stride_s!r}")
    return frames


def long_form(duration, extend_stride, *, window_s: float, frame_rate: int, window_frames: int,
              default_stride_s: float):
    """(total frames, stride frames) when ``duration`` (seconds) exceeds the window ``window_s``, else None.
    ``extend_stride`` (seconds) is checked whenever given; the default stride is ``default_stride_s``.
    ParameterError for a bad duration (<= 0, over LONGFORM_MAX_S, not a number) or stride."""
    from magnet_fast.params import LONGFORM_MAX_S, _number
    numeric = duration is not None and not isinstance(duration, bool) and isinstance(duration, (int, float))
    if duration is not None:
        _number("duration", duration, 0.0, LONGFORM_MAX_S, lo_open=True)
    long = numeric and duration > window_s
    stride = None
    if extend_stride is not None:
        stride = check_stride(extend_stride, window_s, frame_rate, window_frames)
    elif long:
        stride = check_stride(default_stride_s, window_s, frame_rate, window_frames)
    if long:
        from magnet_fast.engines.inputs import check_windows
        check_windows(round(duration * frame_rate), window_frames, stride, frame_rate)   # issue 24: bounded
    return (round(duration * frame_rate), stride) if long else None


def window_plan(cfg, duration, extend_stride, window_frames: int, default_stride_s: float | None = None):
    """``long_form`` for a model config: its window is ``cfg.segment_duration`` at ``cfg.frame_rate``,
    ``window_frames`` the frames one window returns; the default stride is half the window unless
    ``default_stride_s`` is given. The plan a frontend checks before loading the model."""
    window_s = cfg.segment_duration
    return long_form(duration, extend_stride, window_s=window_s, frame_rate=cfg.frame_rate,
                     window_frames=window_frames,
                     default_stride_s=window_s / 2 if default_stride_s is None else default_stride_s)


def generate_windows(decode_window, prompt: torch.Tensor | None, total: int, window: int, stride: int,
                     on_window=None, short_last: bool = False) -> torch.Tensor:
    """decode_window(prompt [B, K, P] or None) -> tokens [B, K, window] (prompt included). Returns
    [B, K, total]. on_window(index, n_windows) is called before each window.

    short_last=True is audiocraft's MusicGen loop (``magnet_fast.compat``): decode_window(prompt, start) is
    also told the first frame ``start`` (= index * stride) of its window so that it can make the last one
    only as long as what is left, and the output is the windows' frames as returned, not cut to ``total``."""
    n = plan(total, window, stride)
    if on_window is not None:
        on_window(0, n)
    out = decode_window(prompt, 0) if short_last else decode_window(prompt)
    parts, produced = [out], out.shape[-1]
    context = window - stride
    for i in range(1, n):
        if on_window is not None:
            on_window(i, n)
        tail = out[..., -context:]
        out = decode_window(tail.contiguous(), i * stride) if short_last else decode_window(tail.contiguous())
        new = out[..., context:]
        parts.append(new)
        produced += new.shape[-1]
    whole = torch.cat(parts, dim=-1)
    return whole if short_last else whole[..., :total]
