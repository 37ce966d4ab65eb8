"""config.json of a converted model: the LM geometry, the decoding defaults and where the parts live."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from magnet_fast.errors import ConfigError, ParameterError
from magnet_fast.params import (
    MAX_FRAMES,
    MAX_SEGMENT_S,
    ARParams,
    SamplingParams,
    validate,
    validate_ar,
)

FORMAT = "magnet_fast/1"
VERSION = "0.1.0"          # magnet_fast's version (pyproject.toml); part of the converted-cache key
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# Geometry bounds (docs/DESIGN.md, "Bounds checked before work"); released: 24/48 layers, 4 codebooks
MAX_LAYERS = 1024
MAX_CODEBOOKS = 64
KINDS = ("magnet", "musicgen")      # the decoding a converted model is for (MagnetFast / MusicGenFast)
ENGINES = {"magnet": "MagnetFast", "musicgen": "MusicGenFast"}


@dataclass(frozen=True)
class MagnetConfig:
    dim: int
    num_heads: int
    num_layers: int
    card: int
    n_q: int = 4
    hidden_scale: int = 4
    subcodes_context: int = 5
    span_len: int = 3
    frame_rate: int = 50
    segment_duration: float = 10.0
    max_period: float = 10000.0
    positional_scale: float = 1.0
    norm_eps: float = 1e-5
    t5_name: str = "t5-base"
    t5_dim: int = 768
    sample_rate: int = 32000
    weights_dtype: str = "float16"
    generation: SamplingParams | ARParams = field(default_factory=SamplingParams)
    kind: str = "magnet"               # "magnet" (masked, parallel) or "musicgen" (autoregressive, causal)
    delays: tuple[int, ...] | None = None   # musicgen: the delay pattern's per-codebook delays
    lm_cfg_coef: float | None = None   # musicgen: the LM's own CFG coefficient (audiocraft's two-step CFG uses it)
    codec: dict | None = None          # what the converter saw of compression_state_dict.bin
    source: dict | None = None         # provenance: file names, sha256, audiocraft version
    notice: str | None = None          # shown to users on load (e.g. "untrained demo weights")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def frames(self) -> int:
        """Frames audiocraft asks for: int(segment_duration * frame_rate) (500 / 1500)."""
        return int(self.segment_duration * self.frame_rate)

    @property
    def max_delay(self) -> int:
        return max(self.delays) if self.delays else 0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if "decoding_steps" in d["generation"]:
            d["generation"]["decoding_steps"] = list(self.generation.decoding_steps)
        if d["delays"] is not None:
            d["delays"] = list(d["delays"])
        return {"format": FORMAT, **d}

    def save(self, folder: Path) -> None:
        (Path(folder) / CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, d: dict, where: str = CONFIG_NAME) -> MagnetConfig:
        d = dict(d)
        fmt = d.pop("format", None)
        if fmt != FORMAT:
            raise ConfigError(f"{where}: format is {fmt!r}, expected {FORMAT!r}; re-create it with "
                              "`magnet-fast convert <audiocraft export dir> <out dir>`")
        gen = dict(d.pop("generation", {}))
        kind = d.get("kind", "magnet")
        if kind not in KINDS:
            raise ConfigError(f"{where}: kind must be one of {KINDS}, got {kind!r}; re-create it with "
                              "`magnet-fast convert`")
        gen_cls = ARParams if kind == "musicgen" else SamplingParams
        known_gen = {f.name for f in dataclasses.fields(gen_cls)}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted((set(d) - known) | (set(gen) - known_gen))
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {unknown}; was it written by a newer magnet_fast?")
        try:
            if "decoding_steps" in gen:          # validate checks each entry (no int(): 1e20, true refused)
                gen["decoding_steps"] = tuple(gen["decoding_steps"])
            if isinstance(d.get("delays"), list):
                d["delays"] = tuple(d["delays"])
            cfg = cls(generation=gen_cls(**gen), **d)
            cfg.validate(where)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: malformed field ({e}); re-create it with `magnet-fast convert`") from None
        return cfg

    @classmethod
    def load(cls, folder: Path) -> MagnetConfig:
        """config.json of a converted model folder; a missing folder or an unconverted audiocraft export
        gets an error that says what to run."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ConfigError(f"model folder {folder} not found; pass a folder made by "
                              "`magnet-fast convert SRC OUT`")
        if (folder / "state_dict.bin").exists() and not (folder / CONFIG_NAME).exists():
            raise ConfigError(f"{folder} is an audiocraft export, not a converted model: run "
                              f"`magnet-fast convert {folder} OUT` and use OUT")
        path = folder / CONFIG_NAME
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path} not found: is {folder} a converted model? Convert an audiocraft "
                              "export with `magnet-fast convert SRC OUT`") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path} is not readable JSON ({e}); re-run `magnet-fast convert`") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a JSON object; re-run `magnet-fast convert`")
        return cls.from_dict(raw, str(path))

    def validate(self, where: str = CONFIG_NAME) -> None:
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"{where}: {msg}")
        for name in ("dim", "num_heads", "num_layers", "card", "n_q", "hidden_scale", "span_len",
                     "frame_rate", "t5_dim", "sample_rate"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise bad(f"{name} must be a positive integer, got {v!r}")
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise bad(f"dim {self.dim} must split into {self.num_heads} heads of even size")
        if self.dim % 2:
            raise bad(f"dim {self.dim} must be even (sinusoidal positions)")
        if not isinstance(self.subcodes_context, int) or self.subcodes_context < -1:
            raise bad(f"subcodes_context must be an integer >= -1, got {self.subcodes_context!r}")
        for name, most in (("num_layers", MAX_LAYERS), ("n_q", MAX_CODEBOOKS)):
            if getattr(self, name) > most:
                raise bad(f"{name} {getattr(self, name)} is over the {most} this runtime accepts")
        for name, positive in (("segment_duration", True), ("max_period", True), ("positional_scale", False),
                               ("norm_eps", True)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad(f"{name} must be a finite number, got {v!r}")
            if positive and not v > 0:
                raise bad(f"{name} must be > 0, got {v!r}")
        if self.segment_duration > MAX_SEGMENT_S:
            raise bad(f"segment_duration {self.segment_duration} s is over the {MAX_SEGMENT_S:g} s bound "
                      "(released MAGNeT models are 10 s and 30 s)")
        if self.frames > MAX_FRAMES:
            raise bad(f"segment_duration {self.segment_duration} s at {self.frame_rate} Hz is {self.frames} "
                      f"frames, over the {MAX_FRAMES}-frame bound")
        if self.frames < self.span_len:
            raise bad(f"segment_duration {self.segment_duration} gives too few frames")
        if self.kind not in KINDS:
            raise bad(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "musicgen":
            self._validate_musicgen(bad)
            return
        if not isinstance(self.generation, SamplingParams):
            raise bad("generation holds MusicGen parameters but kind is 'magnet'")
        try:                               # the same checks as every call's parameters
            validate(self.generation, self.n_q, self.card, frames=self.frames, span_len=self.span_len)
        except ParameterError as e:
            raise bad(f"generation: {e}") from None

    def _validate_musicgen(self, bad) -> None:
        delays = self.delays
        if (not isinstance(delays, tuple) or len(delays) != self.n_q
                or any(isinstance(x, bool) or not isinstance(x, int) or not 0 <= x <= MAX_CODEBOOKS for x in delays)
                or list(delays) != sorted(delays)):
            raise bad(f"delays must be {self.n_q} non-decreasing integers in [0, {MAX_CODEBOOKS}] (one per "
                      f"codebook), got {delays!r}")
        c = self.lm_cfg_coef
        if c is not None and (isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c)):
            raise bad(f"lm_cfg_coef must be a finite number, got {c!r}")
        if not isinstance(self.generation, ARParams):
            raise bad("generation holds MAGNeT parameters but kind is 'musicgen'")
        try:
            validate_ar(self.generation, self.card, max_duration=self.segment_duration)
        except ParameterError as e:
            raise bad(f"generation: {e}") from None
