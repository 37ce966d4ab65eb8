"""What every engine shares (MAGNeT's ``MagnetFast``, MusicGen's ``MusicGenFast``): loading a converted
folder, the T5 conditioning, the codec, settings and the decoder cache (docs/DESIGN.md, Pipeline)."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from magnet_fast.checks import check_descriptions
from magnet_fast.config import ENGINES, MagnetConfig
from magnet_fast.engines.batching import GRAPH_POLICIES, DecoderCache, decode_in_chunks, streams
from magnet_fast.engines.inputs import (
    check_device,
    check_dtype,
    check_flag,
    check_generator,
    check_max_batch,
    check_model_folder,
    check_prompt,
    memory_chunk,
    prompt_audio_tensor,
)
from magnet_fast.engines.longform import generate_windows
from magnet_fast.engines.request import Progress, Request
from magnet_fast.errors import BatchSplitWarning, CheckpointError, ConfigError, ParameterError
from magnet_fast.io.files import serialised_load
from magnet_fast.nn.conditioning import TextEncoder, encode_condition
from magnet_fast.nn.loading import QUANTIZE, load_lm, quantize_int8
from magnet_fast.nn.model import MagnetLM
from magnet_fast.params import check_seed


class Engine:
    """Base of the engines: a loaded LM + text encoder + (lazily) codec, and the per-call scaffolding every
    family shares: a validated ``Request``, seed streams, chunks that halve on out-of-memory, progress and
    callback, long-form windows and ``generate()``. A family (``MagnetFast``, ``MusicGenFast``) sets ``KIND``
    (the config.json kind it decodes) and ``LM_CLASS``, builds its Request in ``generate_tokens`` and
    implements the window hooks ``_prepare`` (condition once per chunk) and ``_decode_window``."""

    KIND = "magnet"
    LM_CLASS = MagnetLM

    def __init__(self, lm: MagnetLM, text: TextEncoder, cfg: MagnetConfig, path: Path | None = None,
                 codec_source: str | Path | None = None, allow_download: bool = False):
        self.lm, self.text, self.config, self.path = lm, text, cfg, path
        self._codec = None
        self._codec_source, self._allow_download = codec_source, allow_download
        self.device = lm.device
        self.dtype = lm.compute_dtype
        self.decoders = DecoderCache(capacity=4)      # decoders (buffers, CUDA graphs) of recent shapes
        self.cuda_graphs = "auto" if self.device.type == "cuda" else False
        lm.set_attention(self._default_attention())

    def _default_attention(self) -> str:
        return "exact"

    # ----------------------------------------------------------------------------------- seeds
    def _seed_streams(self, seed, generator, batch_invariant: bool, n: int):
        """The call's fresh random streams (``batching.streams``): one seeded stream, one per row for a seed
        list or batch-invariant mode (seed + i; without a seed one base seed is drawn from ``generator`` or
        torch's RNG), or None (use ``generator`` / the global RNG)."""
        seeds = check_seed(seed, n)
        if seeds is None and batch_invariant:
            seeds = [int(torch.randint(0, 2**62, (1,), generator=generator, device=self.device).item())]
        if batch_invariant and len(seeds) == 1:
            seeds = [seeds[0] + i for i in range(n)]
        return streams(seeds, isinstance(seed, (list, tuple)) or batch_invariant, self.device)

    def _retry(self, fresh, generator, *state: list):
        """``decode_in_chunks``' on_retry: forget the call's streams and cached state (the lists in ``state``)
        and the decoders; a caller-given generator's stream continues, which a warning says."""
        def retry():
            for part in state:
                part.clear()
            self.clear_cuda_graphs()
            if fresh is None and generator is not None:
                warnings.warn("the retry continues the given generator's stream (pass seed= to make the "
                              "split run reproducible)", BatchSplitWarning, stacklevel=4)
        return retry

    # ----------------------------------------------------------------------------------- one call
    def _request(self, descriptions, params, frames: int, *, prompt=None, seed=None, generator=None,
                 batch_invariant=False, max_batch=None, progress=False, callback=None, **family) -> Request:
        """The checks every family shares, before any work -> a frozen ``Request``."""
        descriptions = check_descriptions(descriptions)
        if callback is not None and not callable(callback):
            raise ParameterError("callback must be callable (done, total) or None")
        prompt = check_prompt(prompt, len(descriptions), self.config.n_q, self.config.card, frames, self.device)
        check_generator(generator, self.device)
        # a default chunk from a memory estimate when max_batch is not given (many prompts in one call)
        max_batch = memory_chunk(self, len(descriptions), check_max_batch(max_batch))
        batch_invariant = bool(check_flag(batch_invariant, "batch_invariant"))
        check_seed(seed, len(descriptions))
        return Request(tuple(descriptions), params, frames, prompt, seed, generator, batch_invariant, max_batch,
                       progress=progress, callback=callback, **family)

    def run(self, req: Request) -> torch.Tensor:
        """Decode a Request -> tokens [B, n_q, T]: fresh streams, chunks of ``max_batch`` rows (halved and
        started over on out-of-memory), each chunk conditioned once and decoded window by window."""
        fresh = self._seed_streams(req.seed, req.generator, req.batch_invariant, req.batch)
        gens, heads = [], []

        def chunk(part: slice):
            if not gens:                          # fresh streams for each (re)start of the call
                gens.append(fresh() if fresh is not None else req.generator)
                heads[:] = [self._head(req, gens[0])]
            gen = gens[0][part] if isinstance(gens[0], list) else gens[0]
            head = None if heads[0] is None else heads[0][part]
            texts = req.rows(part)
            ctx = self._prepare(req, texts)
            with Progress(req.progress, req.callback, self._progress_total(req)) as progress:
                def window(prompt):
                    with self.decoders.lock:
                        out = self._decode_window(req, ctx, texts, prompt, gen, progress)
                        self.decoders.evict()
                    return out
                if req.long is None:
                    out = window(head)
                    return out if req.keep is None else out[..., :req.keep]
                total, stride = req.long
                return generate_windows(window, head, total, req.frames, stride)

        return torch.cat(decode_in_chunks(chunk, req.batch, self._chunk_size(req), device=self.device,
                                          invariant=req.batch_invariant,
                                          on_retry=self._retry(fresh, req.generator, gens, heads)))

    # hooks a family implements
    def _head(self, req: Request, generator):
        """The fixed frames every window 1 starts from (the prompt; MAGNeT: a hybrid prefix drawn first)."""
        return req.prompt

    def _chunk_size(self, req: Request) -> int | None:
        return req.max_batch

    def _progress_total(self, req: Request) -> int | None:
        """The call's step count when known up front (else windows add theirs: ``Progress.expect``)."""
        return None

    def _prepare(self, req: Request, texts: list):
        """What every window of a chunk shares (the condition K/V), computed once."""
        raise NotImplementedError

    def _decode_window(self, req: Request, ctx, texts: list, prompt, generator, progress: Progress):
        raise NotImplementedError

    def generate_tokens(self, descriptions, **kwargs) -> torch.Tensor:
        raise NotImplementedError

    def generate(self, descriptions, *, prompt_audio=None, prompt_sample_rate: int | None = None,
                 **kwargs) -> torch.Tensor:
        """Text (and optional audio prompt to continue) -> audio [B, channels, samples] at sample_rate.

        Takes every keyword of ``generate_tokens``. The prompt audio is encoded and continued; the output
        starts with it, as in audiocraft (MAGNeT: not combinable with hybrid).
        """
        if prompt_audio is not None:
            if kwargs.get("prompt") is not None:
                raise ParameterError("pass either prompt (tokens) or prompt_audio, not both")
            if kwargs.get("hybrid") is not None:
                raise ParameterError("hybrid generates MAGNeT's prompt itself: pass prompt_audio or hybrid, not both")
            check_descriptions(descriptions)
            kwargs["prompt"] = self.prompt_tokens(prompt_audio, len(descriptions), prompt_sample_rate)
        else:
            self.load_codec()                              # fail before decoding if there is no codec
        return self._audio(self.generate_tokens(descriptions, **kwargs), kwargs)

    def _audio(self, tokens: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """generate()'s tokens -> audio (MAGNeT: a loop is decoded wrapped around its ends)."""
        return self.decode(tokens)

    # ----------------------------------------------------------------------------------- settings
    @property
    def attention_backend(self) -> str:
        return self.lm.attention_backend

    def set_attention(self, backend: str) -> None:
        """'exact' (bitwise audiocraft on CPU fp32: the parity mode), 'windowed' (the CPU default: the band in
        dense blocks, not bitwise), 'triton' (the CUDA default) or 'sdpa'. See attention.py."""
        self.lm.set_attention(backend)

    def set_cuda_graphs(self, enabled: bool | str) -> None:
        """CUDA graphs for the decoding steps (CUDA only): True records a shape (batch, text length,
        parameters, prompt length, backend, sampler) on its first call and replays it afterwards; "auto"
        (the CUDA default) records on a shape's second call, so one-off shapes cost no recording; False
        runs eagerly. Recordings are kept for the last ``decoders.capacity`` shapes; ``clear_cuda_graphs()``
        frees them. Calls on one model are serialised while graphs are on."""
        if enabled not in GRAPH_POLICIES or (enabled is not True and enabled is not False and enabled != "auto"):
            raise ParameterError(f"cuda_graphs must be True, False or 'auto', got {enabled!r}")
        if enabled and self.device.type != "cuda":
            raise ParameterError(f"CUDA graphs need a CUDA device; this model is on {self.device.type}")
        self.cuda_graphs = enabled

    def clear_cuda_graphs(self) -> None:
        """Drop every cached Decoder, with its recorded graphs and static buffers."""
        self.decoders.clear()

    def set_codec(self, codec) -> None:
        """Use this codec (a ``magnet_fast.io.codec.Codec``) for decode/encode instead of loading one."""
        self._codec = codec

    @classmethod
    @serialised_load                                  # one load at a time per process (issue 24)
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device = "cpu", dtype=None,
                        t5: str | Path | None = None, codec: str | Path | None = None,
                        allow_download: bool = False, attention: str | None = None,
                        cuda_graphs: bool | str | None = None, quantize: str | None = None) -> Engine:
        """Load a folder written by ``magnet-fast convert``.

        device: 'cpu' or 'cuda'. dtype: None picks float32 on CPU, bfloat16 on CUDA. t5: local T5 folder or
        hub name overriding config.json; by default a ``t5/`` folder inside the model folder, else the
        config's name from the local HF cache. codec: local EnCodec folder (transformers format) overriding
        what the converter recorded; loaded on first use, so token generation never needs it.
        allow_download: let transformers fetch the T5 / a pointer-form codec from the hub if not cached.
        attention: None (windowed on CPU, triton on CUDA where it can run) or a backend name
        (``set_attention``; 'exact' is the bitwise parity mode). cuda_graphs: None ('auto' on CUDA) or see
        ``set_cuda_graphs``. quantize: None, or 'int8' (CPU float32 only, opt-in): the LM's linears with int8
        weights and dynamically quantized activations (``loading.quantize_int8``); tokens are then
        statistically, not bitwise, audiocraft's (docs/gpu-plan.md, CPU int8).
        """
        folder = check_model_folder(path)            # None, NUL, over-long names: one CheckpointError
        cfg = MagnetConfig.load(folder)
        if cfg.kind != cls.KIND:
            raise ConfigError(f"{folder} is a {cfg.kind} model ({ENGINES[cfg.kind]}), not a {cls.KIND} model: load "
                              f"it with magnet_fast.{ENGINES[cfg.kind]}.from_pretrained")
        device = check_device(device)
        lm_dtype = check_dtype(dtype, device)
        if quantize not in QUANTIZE:
            raise ParameterError(f"quantize must be None or 'int8', got {quantize!r}")
        if quantize and (device.type != "cpu" or lm_dtype != torch.float32):
            raise ParameterError("quantize='int8' is for CPU float32 models (torch's dynamic quantization); "
                                 f"this one is {device.type} {str(lm_dtype).replace('torch.', '')}: use "
                                 "device='cpu' with dtype None/'float32', or drop quantize")
        lm = load_lm(folder, cfg, device, lm_dtype, model_cls=cls.LM_CLASS)
        if quantize:
            lm = quantize_int8(lm)
        if t5 is None:
            t5 = folder / "t5" if (folder / "t5").is_dir() else cfg.t5_name
        text = TextEncoder(t5, device=device, allow_download=allow_download)
        if text.dim != cfg.t5_dim:
            raise CheckpointError(f"T5 {str(t5)!r} has width {text.dim} but the model's text projection "
                                  f"expects {cfg.t5_dim} ({cfg.t5_name}); pass the matching T5 with t5=")
        if cfg.notice:
            warnings.warn(f"{folder}: {cfg.notice}", stacklevel=2)
        model = cls(lm, text, cfg, folder, codec_source=codec, allow_download=allow_download)
        if attention is not None:
            model.set_attention(attention)
        if cuda_graphs is not None:
            model.set_cuda_graphs(cuda_graphs)
        return model

    # ----------------------------------------------------------------------------------- facts
    @property
    def frame_rate(self) -> int:
        return self.config.frame_rate

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate if self._codec is not None else self.config.sample_rate

    @property
    def codec(self):
        """The EnCodec tokenizer (transformers' EncodecModel), loaded on first use."""
        return self.load_codec()

    def load_codec(self):
        """Load the codec now (it is otherwise loaded on first use); raises CheckpointError if unusable."""
        if self._codec is None:
            from magnet_fast.io.codec import Codec
            if self.config.codec is None and self._codec_source is None:
                raise CheckpointError(f"{self.path}: no codec was converted with this model; pass codec=PATH "
                                      "(CLI: --codec PATH) to an EnCodec folder in transformers format")
            note = self.config.codec or {"kind": "pointer", "pretrained": str(self._codec_source)}
            codec = Codec.load(self.path, note, device=self.device, override=self._codec_source,
                               allow_download=self._allow_download)
            if (codec.n_q, codec.card, codec.frame_rate) != (self.config.n_q, self.config.card,
                                                             self.config.frame_rate):
                raise CheckpointError(
                    f"codec has {codec.n_q} codebooks x {codec.card} at {codec.frame_rate} Hz but the LM "
                    f"expects {self.config.n_q} x {self.config.card} at {self.config.frame_rate} Hz; pass "
                    "the codec this model was trained with (codec=PATH)")
            self._codec = codec
        return self._codec

    @property
    def frames(self) -> int:
        return self.config.frames

    @property
    def duration(self) -> float:
        return self.config.segment_duration

    # ----------------------------------------------------------------------------------- work
    def condition(self, descriptions: list[str | None]) -> torch.Tensor:
        """Descriptions -> LM condition [2B, L, dim] (cond rows then null rows; null rows are zero)."""
        return self.conditioning(descriptions)[0]

    def conditioning(self, descriptions, batch_invariant: bool = False):
        """(condition [2B, L, dim], per-row key lengths for cross-attention or None); see
        ``conditioning.encode_condition``."""
        return encode_condition(self.text, self.lm, descriptions, batch_invariant)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Codec tokens [B, n_q, T] -> audio [B, channels, T * hop] at ``sample_rate``."""
        return self.codec.decode(tokens)

    def encode(self, wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Audio [B, C, S] (or [C, S] / [S]) at ``sample_rate`` -> codec tokens [B, n_q, T]."""
        if not isinstance(wav, torch.Tensor):
            raise ParameterError("wav must be a torch.Tensor of audio samples")
        while wav.dim() < 3:
            wav = wav.unsqueeze(0)
        return self.codec.encode(wav.to(self.device), sample_rate)

    def prompt_tokens(self, prompt_audio, batch: int, prompt_sample_rate: int | None = None) -> torch.Tensor:
        """Audio prompt (path, or tensor [S] / [C, S] / [B, C, S] with prompt_sample_rate) -> tokens."""
        wav, rate = prompt_audio_tensor(prompt_audio, batch, prompt_sample_rate, self.duration)
        return self.encode(wav, rate)

