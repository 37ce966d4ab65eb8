"""``Request``: everything one generation call asks for, built and validated once (``Engine.request``),
before any work. ``generate_tokens(...)`` keeps its keywords (they are the API) and builds one; the engine's
run loop, a batch job or a server reads only this object."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Request:
    """One call, validated. descriptions: the texts (None = unconditional rows). params: the family's
    frozen sampling parameters (``SamplingParams`` / ``ARParams``). frames: one window's frames. prompt:
    tokens [B, n_q, P] or None. seed / generator: the random streams (see ``Engine._seed_streams``).
    long: (total frames, stride frames) for long-form, else None; keep: frames to keep of one window, or
    None. rescoring / hybrid: MAGNeT's rescorer settings (``pairing.Rescoring``) and hybrid plan
    (``hybrid.HybridPlan``), or None. callback(done, total): per decoding step."""
    descriptions: tuple
    params: Any
    frames: int
    prompt: torch.Tensor | None = None
    seed: Any = None
    generator: torch.Generator | None = None
    batch_invariant: bool = False
    max_batch: int | None = None
    long: tuple[int, int] | None = None
    keep: int | None = None
    progress: bool = False
    callback: Any = None
    rescoring: Any = None
    hybrid: Any = None
    extra: dict = field(default_factory=dict)      # a family's own settings (e.g. MusicGen's two-step K/V)

    @property
    def batch(self) -> int:
        return len(self.descriptions)

    def rows(self, part: slice) -> list:
        return list(self.descriptions[part])


class Progress:
    """One call's progress: a tqdm bar (``progress=True``) and/or the caller's ``callback(done, total)``,
    spanning every window and chunk. ``expect(n)`` adds the steps of a window about to run."""

    def __init__(self, show: bool, callback=None, total: int | None = None, desc: str = "decoding"):
        self.callback = callback
        self.bar = None
        if show:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=desc, unit="step")
        self._fixed = total is not None

    def expect(self, steps: int) -> None:
        if self.bar is not None and not self._fixed:
            self.bar.total = (self.bar.total or 0) + steps
            self.bar.refresh()

    @property
    def step(self):
        """The per-step hook a decoder calls, or None when nobody listens."""
        if self.bar is None and self.callback is None:
            return None

        def step(done, total):
            if self.bar is not None:
                self.bar.update(1)
            if self.callback is not None:
                self.callback(done, total)
        return step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
