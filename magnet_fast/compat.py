"""A drop-in for audiocraft 1.3.0's generation API, run by magnet_fast (README, "Coming from audiocraft").

Change the imports and nothing else::

    from magnet_fast.compat import MAGNeT, audio_write, display_audio    # was: from audiocraft... import ...

    model = MAGNeT.get_pretrained('facebook/magnet-small-10secs')        # from the local HF cache, converted once
    model.set_generation_params(span_arrangement='stride1')
    wav, tokens = model.generate(['calm piano'], progress=True, return_tokens=True)   # [B, 1, T], [B, 4, T']
    audio_write('out/0', wav[0].cpu(), model.sample_rate, strategy='loudness', loudness_compressor=True)

What is here (audiocraft's names, signatures and defaults):

* ``MAGNeT`` and ``MusicGen``: ``get_pretrained(name, device=None)``, ``set_generation_params(...)``,
  ``generate``, ``generate_unconditional``, ``generate_continuation``, ``generate_audio``,
  ``set_custom_progress_callback``, ``sample_rate``, ``frame_rate``, ``audio_channels``, ``max_duration``,
  ``duration``, ``generation_params``, ``name``, ``device``, and the attributes the demos reach into:
  ``compression_model`` (``sample_rate``, ``frame_rate``, ``channels``, ``cardinality``, ``num_codebooks``,
  ``encode``, ``decode``) and ``lm.cfg`` (``dataset.segment_duration``, ``transformer_lm.*``, ...; a
  read-only summary of the converted config, not audiocraft's whole Hydra config). ``MusicGen`` needs the
  engine ``magnet_fast.MusicGenFast``; melody (``generate_with_chroma``) and stereo models are refused.
* ``audio_write`` (the strategies ``peak``, ``clip``, ``rms``, ``loudness``; WAV only), ``normalize_audio``,
  ``loudness`` (ITU-R BS.1770-4, pure torch) and ``display_audio`` (players in a notebook, nothing elsewhere).
* ``MultiBandDiffusion``: importable, so the demos' import line works; using it is a ConfigError.

Names resolve through ``magnet_fast.io.hub.resolve_model``: a hub name from the local Hugging Face cache (where
audiocraft's own download puts the files), an audiocraft export folder or a ``magnet-fast convert`` folder;
conversions are cached (``MAGNET_FAST_CACHE``). Nothing is downloaded unless ``allow_download=True``.

Faithfulness: on CPU the models run ``attention="exact"`` (``CPU_ATTENTION``), so ``torch.manual_seed(s)``
followed by ``generate`` gives audiocraft's tokens for that seed (tested against audiocraft's own outputs).
``get_pretrained(..., attention="windowed")`` or ``model.set_attention("windowed")`` is the faster CPU
path (not bitwise; see README). On CUDA the engine defaults apply (Triton attention, bf16), where parity
with audiocraft (fp16 autocast) is statistical, as before.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from magnet_fast.engines.registry import entry_for
from magnet_fast.errors import CheckpointError, ConfigError, ParameterError
from magnet_fast.io.audio_out import audio_write, display_audio, loudness, normalize_audio  # noqa: F401  (audiocraft's names)
from magnet_fast.io.files import serialised_load
from magnet_fast.io.hub import resolve_model

__all__ = ["MAGNeT", "MusicGen", "MultiBandDiffusion", "audio_write", "display_audio", "normalize_audio",
           "loudness", "CPU_ATTENTION"]

CPU_ATTENTION = "exact"      # what get_pretrained uses on CPU unless attention= is given (None: engine default)

# audiocraft's MusicGen.get_pretrained maps these short names (with a deprecation warning)
_MUSICGEN_SHORT_NAMES = {"small": "facebook/musicgen-small", "medium": "facebook/musicgen-medium",
                         "large": "facebook/musicgen-large", "melody": "facebook/musicgen-melody"}
_UNSUPPORTED = (("melody", "melody (chroma) conditioning"), ("stereo", "stereo output"),
                ("musicgen-style", "style conditioning"))


# ============================================================================================ views
class AttrDict(dict):
    """Read-only view by attribute or key (``cfg.dataset.segment_duration``), like audiocraft's OmegaConf
    node; nested dicts are AttrDicts too."""

    def __init__(self, data: dict):
        super().__init__({k: AttrDict(v) if isinstance(v, dict) else v for k, v in data.items()})

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no field {name!r}: magnet_fast.compat keeps {sorted(self)} "
                                 "here, not audiocraft's whole training config") from None

    def __setattr__(self, name, value):
        raise AttributeError("the config is read-only: use set_generation_params to change generation settings")


def _number(x):
    """10.0 -> 10 (audiocraft's YAML holds ints for whole durations), other values unchanged."""
    return int(x) if isinstance(x, float) and x.is_integer() else x


def _magnet_view(cfg) -> tuple[str, dict, dict]:
    return "transformer_lm_magnet", {"subcodes_context": cfg.subcodes_context}, {"masking": {"span_len": cfg.span_len}}


def _musicgen_view(cfg) -> tuple[str, dict, dict]:
    pattern = {"codebooks_pattern": {"modeling": "delay", "delay": {"delays": list(cfg.delays)}}} if cfg.delays else {}
    return "transformer_lm", {}, pattern


# config.json's kind (magnet_fast.engines.registry) -> audiocraft's names for that family: (lm_model, the
# transformer_lm fields it adds, the config sections it adds)
_FAMILY_VIEW = {"magnet": _magnet_view, "musicgen": _musicgen_view}


def _cfg_view(engine) -> AttrDict:
    cfg = engine.config
    lm_model, lm_extra, extra = _FAMILY_VIEW[cfg.kind](cfg)
    lm = {k: getattr(cfg, k) for k in ("dim", "num_heads", "num_layers", "hidden_scale", "n_q", "card")
          if hasattr(cfg, k)}
    view = {"dataset": {"segment_duration": _number(float(engine.duration))},
            "sample_rate": int(engine.sample_rate),
            "channels": int(engine.codec.channels),
            "lm_model": lm_model,
            "transformer_lm": {**lm, **lm_extra},
            "conditioners": {"description": {"model": "t5", "t5": {"name": cfg.t5_name}}},
            **extra}
    return AttrDict(view)


class CompressionModel:
    """``model.compression_model``: the codec with audiocraft's CompressionModel surface."""

    def __init__(self, engine):
        self._engine = engine

    @property
    def _codec(self):
        return self._engine.codec

    @property
    def sample_rate(self) -> int:
        return int(self._codec.sample_rate)

    @property
    def frame_rate(self):
        return self._codec.frame_rate

    @property
    def channels(self) -> int:
        return int(self._codec.channels)

    @property
    def cardinality(self) -> int:
        return int(self._codec.card)

    @property
    def num_codebooks(self) -> int:
        return int(self._engine.config.n_q)

    @property
    def total_codebooks(self) -> int:
        return int(self._codec.n_q)

    def encode(self, x: torch.Tensor):
        """Audio [B, C, T] at ``sample_rate`` -> (codes [B, K, T'], None), as audiocraft."""
        return _plain(self._engine.encode(x, self.sample_rate)), None

    def decode(self, codes: torch.Tensor, scale=None) -> torch.Tensor:
        """Codes [B, K, T'] -> audio [B, C, T]; ``scale`` must be None (EnCodec without renormalisation)."""
        if scale is not None:
            raise ParameterError("scale must be None: the codec does not renormalise")
        return _plain(self._engine.decode(codes))

    def eval(self):
        return self

    def __repr__(self) -> str:
        return (f"CompressionModel(sample_rate={self.sample_rate}, frame_rate={self.frame_rate}, "
                f"channels={self.channels}, codebooks={self.num_codebooks}x{self.cardinality})")


class LanguageModel:
    """``model.lm``: what the demos read (``cfg``), plus the LM's sizes; generation goes through the model."""

    def __init__(self, engine, cfg: AttrDict):
        self._engine = engine
        self.cfg = cfg

    @property
    def card(self) -> int:
        return int(self._engine.config.card)

    @property
    def n_q(self) -> int:
        return int(self._engine.config.n_q)

    num_codebooks = n_q

    @property
    def special_token_id(self) -> int:
        return self.card

    def parameters(self):
        return self._engine.lm.parameters()

    def eval(self):
        return self

    def __repr__(self) -> str:
        return f"LanguageModel({self.cfg.lm_model}, {self.n_q}x{self.card}, segment {self.cfg.dataset.segment_duration} s)"


def _plain(t: torch.Tensor) -> torch.Tensor:
    """An ordinary tensor (audiocraft returns no_grad tensors; the engine's are inference tensors, which
    refuse in-place updates outside inference mode)."""
    return t.clone() if isinstance(t, torch.Tensor) and t.is_inference() else t


def _print_progress(generated: int, to_generate: int) -> None:
    print(f"{generated: 6d} / {to_generate: 6d}", end="\r", flush=True)     # audiocraft's default display


def _device(device):
    from magnet_fast.engines.inputs import check_device
    if device is None:
        device = "cuda" if torch.cuda.device_count() else "cpu"
    return check_device(device)


def _attention(attention, device: torch.device):
    if attention is not None:
        return attention
    return CPU_ATTENTION if device.type == "cpu" else None


def _engine(folder: Path, want: str, name: str) -> type:
    """The engine class for ``folder`` (``magnet_fast.engines.registry``), which must be a ``want`` model."""
    family = entry_for(folder)
    if family.kind != want:
        raise ConfigError(f"{name!r} is a {family.label} model; load it with "
                          f"magnet_fast.compat.{family.label}.get_pretrained")
    return family.engine()


def _refuse_unsupported(name: str) -> None:
    if Path(name).expanduser().exists():
        return                                  # a folder: the converter decides from its xp.cfg
    low = name.lower()
    for word, what in _UNSUPPORTED:
        if word in low:
            raise ConfigError(f"{name!r}: {what} is not supported by magnet_fast; use a mono text-to-music "
                              "model (facebook/musicgen-small, -medium, -large; facebook/magnet-*)")


# ============================================================================================ models
class _GenModel:
    """What MAGNeT and MusicGen share: audiocraft's BaseGenModel surface over a magnet_fast engine."""

    def __init__(self, name: str, engine):
        self.name = name
        self.engine = engine
        self.compression_model = CompressionModel(engine)
        self.lm = LanguageModel(engine, _cfg_view(engine))
        self.cfg = self.lm.cfg
        self.max_duration = _number(float(engine.duration))
        self.duration = self.max_duration
        self.extend_stride = None
        self.device = engine.device
        self.generation_params: dict = {}
        self._progress_callback = None

    # ------------------------------------------------------------------------------------ facts
    @property
    def frame_rate(self):
        """Codec frames per second."""
        return self.compression_model.frame_rate

    @property
    def sample_rate(self) -> int:
        """Sample rate of the generated audio."""
        return self.compression_model.sample_rate

    @property
    def audio_channels(self) -> int:
        """Channels of the generated audio."""
        return self.compression_model.channels

    def set_custom_progress_callback(self, progress_callback=None) -> None:
        """``progress_callback(done, total)`` replaces the default display when generating with progress=True."""
        if progress_callback is not None and not callable(progress_callback):
            raise ParameterError("progress_callback must be callable (done, total) or None")
        self._progress_callback = progress_callback

    def set_attention(self, backend: str) -> None:
        """magnet_fast's attention backend: 'exact' (audiocraft's tokens on CPU) or a faster one
        ('windowed' on CPU, 'triton' / 'sdpa' on CUDA)."""
        self.engine.set_attention(backend)

    def _reporter(self, progress: bool):
        if not progress:
            return None
        return self._progress_callback or _print_progress

    # ------------------------------------------------------------------------------------ generation
    def generate_unconditional(self, num_samples: int, progress: bool = False, return_tokens: bool = False):
        """``num_samples`` unconditional samples: audio [B, C, T] (and tokens [B, K, T'] with return_tokens)."""
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ParameterError(f"num_samples must be a positive integer, got {num_samples!r}")
        return self._finish(self._generate_tokens([None] * num_samples, None, progress), return_tokens)

    def generate(self, descriptions, progress: bool = False, return_tokens: bool = False):
        """Samples conditioned on ``descriptions`` (None rows are unconditional): audio [B, C, T] (and tokens
        [B, K, T'] with return_tokens)."""
        from magnet_fast.checks import check_descriptions
        descriptions = check_descriptions(descriptions)
        self.engine.load_codec()                     # fail before decoding if the codec cannot load
        return self._finish(self._generate_tokens(descriptions, None, progress), return_tokens)

    def generate_continuation(self, prompt: torch.Tensor, prompt_sample_rate: int, descriptions=None,
                              progress: bool = False, return_tokens: bool = False):
        """Continue ``prompt`` ([B, C, T] or [C, T] at ``prompt_sample_rate``), optionally text-conditioned.
        The output starts with the (re-encoded) prompt, as in audiocraft."""
        from magnet_fast.checks import check_descriptions
        if not isinstance(prompt, torch.Tensor):
            raise ParameterError("prompt must be a torch.Tensor of audio samples [B, C, T] or [C, T]")
        if prompt.dim() == 2:
            prompt = prompt[None]
        if prompt.dim() != 3:
            raise ParameterError("prompt should have 3 dimensions: [B, C, T] (C = 1).")
        if descriptions is None:
            descriptions = [None] * len(prompt)
        descriptions = check_descriptions(descriptions)
        if len(descriptions) != len(prompt):
            raise ParameterError(f"Prompt and nb. descriptions doesn't match: {len(prompt)} prompt rows, "
                                 f"{len(descriptions)} descriptions")
        rate = prompt_sample_rate
        if isinstance(rate, float) and rate.is_integer():
            rate = int(rate)
        prompt_tokens = self.engine.prompt_tokens(prompt, len(descriptions), rate)
        self._check_prompt_length(prompt_tokens)
        return self._finish(self._generate_tokens(descriptions, prompt_tokens, progress), return_tokens)

    def generate_audio(self, gen_tokens: torch.Tensor) -> torch.Tensor:
        """Tokens [B, K, T'] -> audio [B, C, T]."""
        if not isinstance(gen_tokens, torch.Tensor) or gen_tokens.dim() != 3:
            raise ParameterError("gen_tokens must be a tensor [B, K, T]")
        return _plain(self.engine.decode(gen_tokens))

    def _finish(self, tokens: torch.Tensor, return_tokens: bool):
        tokens = _plain(tokens)
        audio = self.generate_audio(tokens)
        return (audio, tokens) if return_tokens else audio

    def _check_prompt_length(self, prompt_tokens: torch.Tensor) -> None:
        pass

    def _generate_tokens(self, descriptions, prompt_tokens, progress: bool) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, {self.sample_rate} Hz, {self.max_duration} s, "
                f"device={self.device})")


class MAGNeT(_GenModel):
    """audiocraft's ``MAGNeT`` over ``magnet_fast.MagnetFast`` (the model's ``engine``)."""

    def __init__(self, name: str, engine):
        super().__init__(name, engine)
        self.set_generation_params()

    @staticmethod
    @serialised_load
    def get_pretrained(name: str = "facebook/magnet-small-10secs", device=None, *, attention: str | None = None,
                       allow_download: bool = False) -> MAGNeT:
        """Load a MAGNeT: a hub name (from the local Hugging Face cache; converted once into
        ``MAGNET_FAST_CACHE``), an audiocraft export folder, or a ``magnet-fast convert`` folder.

        device: None -> 'cuda' if available, else 'cpu' (as audiocraft). attention: None -> 'exact' on CPU
        (audiocraft's tokens; ``CPU_ATTENTION``), the engine default on CUDA; or a backend name ('windowed'
        is the faster CPU path). allow_download: fetch missing files from the Hub (off by default)."""
        device = _device(device)
        folder = resolve_model(name, allow_download=allow_download)
        engine = _engine(folder, "magnet", name).from_pretrained(folder, device=device,
                                                                 allow_download=allow_download,
                                                                 attention=_attention(attention, device))
        engine.load_codec()                          # audiocraft loads the codec with the model
        return MAGNeT(name, engine)

    def set_generation_params(self, use_sampling: bool = True, top_k: int = 0, top_p: float = 0.9,
                              temperature: float = 3.0, max_cfg_coef: float = 10.0, min_cfg_coef: float = 1.0,
                              decoding_steps=(20, 10, 10, 10), span_arrangement: str = "nonoverlap") -> None:
        """audiocraft's MAGNeT settings, with its defaults (``decoding_steps`` per codebook; top_p > 0 wins
        over top_k). Checked now: a bad value is a ParameterError here, not at generation."""
        from magnet_fast.engines.inputs import check_steps_list
        steps = check_steps_list(decoding_steps, self.lm.n_q)          # '20', 10.9, True refused, not cast
        params = {"use_sampling": use_sampling, "temp": temperature, "top_k": top_k, "top_p": top_p,
                  "max_cfg_coef": max_cfg_coef, "min_cfg_coef": min_cfg_coef, "decoding_steps": steps,
                  "span_arrangement": span_arrangement}
        self.engine.params(**self._engine_kwargs(params))      # validate before keeping
        self.generation_params = params

    @staticmethod
    def _engine_kwargs(params: dict) -> dict:
        # anneal_temp and span_scoring are fixed by audiocraft's MAGNeT (lm.generate's defaults)
        return {"use_sampling": params["use_sampling"], "temperature": params["temp"], "top_k": params["top_k"],
                "top_p": params["top_p"], "max_cfg_coef": params["max_cfg_coef"],
                "min_cfg_coef": params["min_cfg_coef"], "decoding_steps": list(params["decoding_steps"]),
                "span_arrangement": params["span_arrangement"], "anneal_temp": True, "span_scoring": "max"}

    def _generate_tokens(self, descriptions, prompt_tokens, progress: bool) -> torch.Tensor:
        return self.engine.generate_tokens(descriptions, prompt=prompt_tokens, callback=self._reporter(progress),
                                           **self._engine_kwargs(self.generation_params))


class MusicGen(_GenModel):
    """audiocraft's ``MusicGen`` (text-to-music, mono) over ``magnet_fast.MusicGenFast``."""

    def __init__(self, name: str, engine):
        super().__init__(name, engine)
        self.set_generation_params(duration=15)     # audiocraft's default duration

    @staticmethod
    @serialised_load
    def get_pretrained(name: str = "facebook/musicgen-melody", device=None, *, attention: str | None = None,
                       allow_download: bool = False) -> MusicGen:
        """Load a MusicGen like ``MAGNeT.get_pretrained`` does. audiocraft's default name is the melody model,
        which is not supported: pass e.g. 'facebook/musicgen-small'."""
        if name == "debug":
            raise ConfigError("the 'debug' model is audiocraft's random test model; magnet_fast has no equivalent: "
                              "pass a released name such as 'facebook/musicgen-small'")
        if name in _MUSICGEN_SHORT_NAMES:
            warnings.warn("MusicGen pretrained model relying on deprecated checkpoint mapping. Please use full "
                          f"pre-trained id instead: {_MUSICGEN_SHORT_NAMES[name]}", stacklevel=2)
            name = _MUSICGEN_SHORT_NAMES[name]
        if not isinstance(name, str):
            raise CheckpointError(f"model name must be a string, got {name!r}")
        _refuse_unsupported(name)
        device = _device(device)
        folder = resolve_model(name, allow_download=allow_download)
        engine = _engine(folder, "musicgen", name).from_pretrained(folder, device=device,
                                                                   allow_download=allow_download,
                                                                   attention=_attention(attention, device))
        codec = engine.load_codec()
        if int(codec.channels) != 1:
            raise ConfigError(f"{name!r} produces {codec.channels} channels; stereo is not supported by magnet_fast")
        return MusicGen(name, engine)

    def set_generation_params(self, use_sampling: bool = True, top_k: int = 250, top_p: float = 0.0,
                              temperature: float = 1.0, duration: float = 30.0, cfg_coef: float = 3.0,
                              two_step_cfg: bool = False, extend_stride: float = 18) -> None:
        """audiocraft's MusicGen settings, with its defaults. ``duration`` may exceed ``max_duration``:
        the model then continues its own output in windows ``extend_stride`` seconds apart, as audiocraft."""
        from magnet_fast.engines.inputs import check_long_form, plain_number
        duration, extend_stride = plain_number(duration), plain_number(extend_stride)
        check_long_form(duration, extend_stride, float(self.max_duration), self.frame_rate)   # engine's bounds
        params = {"use_sampling": use_sampling, "temp": temperature, "top_k": top_k, "top_p": top_p,
                  "cfg_coef": cfg_coef, "two_step_cfg": two_step_cfg}
        self.engine.params(**self._engine_kwargs(params, min(float(duration), float(self.max_duration))))
        self.extend_stride = extend_stride
        self.duration = duration
        self.generation_params = params

    def generate_with_chroma(self, descriptions, melody_wavs, melody_sample_rate, progress: bool = False,
                             return_tokens: bool = False):
        """Not supported: melody (chroma) conditioning needs musicgen-melody, which magnet_fast does not run."""
        raise ConfigError("generate_with_chroma: melody (chroma) conditioning is not supported by magnet_fast; "
                          "use generate (text) or generate_continuation (audio prompt)")

    @staticmethod
    def _engine_kwargs(params: dict, duration: float) -> dict:
        return {"use_sampling": params["use_sampling"], "temperature": params["temp"], "top_k": params["top_k"],
                "top_p": params["top_p"], "cfg_coef": params["cfg_coef"], "two_step_cfg": params["two_step_cfg"],
                "duration": duration}

    def _check_prompt_length(self, prompt_tokens: torch.Tensor) -> None:
        limit = int(min(self.duration, self.max_duration) * self.frame_rate)
        if prompt_tokens.shape[-1] >= limit:
            raise ParameterError(f"the prompt ({prompt_tokens.shape[-1]} frames) must be shorter than the audio to "
                                 f"generate ({limit} frames = {min(self.duration, self.max_duration)} s)")

    def _chunk(self, descriptions, prompt, duration: float, progress: bool, offset: int) -> torch.Tensor:
        """One window of ``duration`` seconds starting at frame ``offset`` (progress counts from there)."""
        kwargs = self._engine_kwargs(self.generation_params, duration)
        report = self._reporter(progress)
        if report is not None:
            kwargs["callback"] = lambda done, total: report(done + offset, total)
        return self.engine.generate_tokens(descriptions, prompt=prompt, **kwargs)

    def _generate_tokens(self, descriptions, prompt_tokens, progress: bool) -> torch.Tensor:
        if self.duration <= self.max_duration:
            return self._chunk(descriptions, prompt_tokens, float(self.duration), progress, 0)
        # longer than the model's window: continue the last (max_duration - extend_stride) s, as audiocraft
        # does, with its last window only as long as what is left (longform.py's loop, short_last)
        from magnet_fast.engines.longform import generate_windows

        def window(prompt, start: int) -> torch.Tensor:
            chunk = min(self.duration - start / self.frame_rate, self.max_duration)
            return self._chunk(descriptions, prompt, float(chunk), progress, start)
        return generate_windows(window, prompt_tokens, int(self.duration * self.frame_rate),
                                int(self.max_duration * self.frame_rate), int(self.frame_rate * self.extend_stride),
                                short_last=True)


class MultiBandDiffusion:
    """audiocraft's diffusion decoder: not supported (the demos import it; using it raises ConfigError)."""

    def __init__(self, *args, **kwargs):
        raise self._unsupported()

    @staticmethod
    def _unsupported() -> ConfigError:
        return ConfigError("MultiBandDiffusion (the diffusion decoder) is not supported by magnet_fast; decode "
                           "tokens with model.generate_audio (EnCodec)")

    @staticmethod
    def get_mbd_musicgen(device=None):
        raise MultiBandDiffusion._unsupported()

    @staticmethod
    def get_mbd_24khz(bw: float = 3.0, device=None, n_q=None):
        raise MultiBandDiffusion._unsupported()
