"""Which engine runs a converted model: the one place a model's ``kind`` (config.json) is turned into an
engine and its family's facts, for every frontend (CLI, audiocraft compat, batch jobs).

``engine_for(folder or config)`` gives the engine class (``MagnetFast``, ``MusicGenFast``);
``entry_for(...)`` its ``EngineEntry``: the family's name for messages, the ``"module:Class"`` loader a
batch job's ``ModelSpec`` ships to its workers, a one-line description, and ``check``: the family's
``generate_tokens`` keywords checked against the config before anything loads (the same checks the engine
makes, so a frontend can refuse bad input in seconds instead of after loading T5 and the LM).

A new model family registers one ``EngineEntry`` here; the frontends need no other change to load it.
Engines are imported lazily (``magnet-fast --help`` and job parsing stay light).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from magnet_fast.config import MagnetConfig


@dataclass(frozen=True)
class EngineEntry:
    kind: str                                    # config.json's "kind"
    label: str                                   # the family's name in messages ("MAGNeT")
    loader: str                                  # "module:Class" with from_pretrained(path, **kwargs)
    description: str                             # one line for ``magnet-fast info``
    check: Callable[[MagnetConfig, dict], float]  # (config, generate_tokens keywords) -> one window (s)

    def engine(self) -> type:
        """The engine class (imported now)."""
        module, _, name = self.loader.partition(":")
        return getattr(importlib.import_module(module), name)


def _check_magnet(cfg: MagnetConfig, params: dict) -> float:
    """MAGNeT's sampling parameters and long-form settings (``duration``, ``extend_stride``) -> the
    window's seconds (an audio prompt must be shorter). ParameterError like ``MagnetFast.generate_tokens``."""
    from magnet_fast.engines.longform import window_plan
    from magnet_fast.params import output_frames, resolve_params
    sampling = {k: v for k, v in params.items() if k not in ("duration", "extend_stride")}
    p = resolve_params(cfg.generation, cfg.n_q, cfg.card, frames=cfg.frames, span_len=cfg.span_len, **sampling)
    window_plan(cfg, params.get("duration"), params.get("extend_stride"),
                output_frames(cfg.frames, cfg.span_len, p.span_arrangement))
    return cfg.segment_duration


def _check_musicgen(cfg: MagnetConfig, params: dict) -> float:
    """MusicGen's sampling parameters, ``duration`` and ``extend_stride`` -> the seconds of one window's
    output (the generation's, or the model's window in long-form). ParameterError like
    ``MusicGenFast.generate_tokens``."""
    from magnet_fast.engines.musicgen import long_form_plan
    from magnet_fast.params import resolve_ar_params
    long = long_form_plan(cfg, params.get("duration"), params.get("extend_stride"))
    sampling = {k: v for k, v in params.items() if k != "extend_stride"}
    if long is not None:
        sampling["duration"] = cfg.segment_duration
    return resolve_ar_params(cfg.generation, cfg.card, max_duration=cfg.segment_duration, **sampling).duration


ENGINES: dict[str, EngineEntry] = {
    "magnet": EngineEntry("magnet", "MAGNeT", "magnet_fast.engines.magnet:MagnetFast",
                          "MAGNeT: masked, parallel decoding", _check_magnet),
    "musicgen": EngineEntry("musicgen", "MusicGen", "magnet_fast.engines.musicgen:MusicGenFast",
                            "MusicGen: autoregressive, delay pattern", _check_musicgen),
}


def config_of(source: str | Path | MagnetConfig) -> MagnetConfig:
    """A converted model folder (its config.json, checked) or a loaded config -> the config."""
    return source if isinstance(source, MagnetConfig) else MagnetConfig.load(Path(source))


def entry_for(source: str | Path | MagnetConfig) -> EngineEntry:
    """The registry entry of a converted model folder or config (config.json's kind; MagnetConfig.load
    refuses unknown kinds with a ConfigError)."""
    return ENGINES[config_of(source).kind]


def engine_for(source: str | Path | MagnetConfig) -> type:
    """The engine class that runs a converted model folder or config: ``engine_for(path).from_pretrained(path)``."""
    return entry_for(source).engine()
