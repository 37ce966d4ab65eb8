"""Python API: ``MagnetFast.from_pretrained(path).generate_tokens([...])`` (docs/DESIGN.md, Pipeline)."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from magnet_fast.batching import GRAPH_POLICIES, OUT_OF_MEMORY, DecoderCache, decode_in_chunks, streams  # noqa: F401
from magnet_fast.conditioning import TextEncoder, encode_condition
from magnet_fast.config import MagnetConfig
from magnet_fast.errors import BatchSplitWarning, CheckpointError, ParameterError
from magnet_fast.generate import Decoder, decode
from magnet_fast.inputs import (
    check_descriptions,
    check_device,
    check_dtype,
    check_flag,
    check_generator,
    check_max_batch,
    check_prompt,
    prompt_audio_tensor,
)
from magnet_fast.model import MagnetLM, load_lm  # noqa: F401  (load_lm: re-exported)
from magnet_fast.params import SamplingParams, check_seed, output_frames, resolve_params
from magnet_fast.sampling import SAMPLERS


class MagnetFast:
    """A converted MAGNeT checkpoint ready to generate. Build it with ``from_pretrained``."""

    def __init__(self, lm: MagnetLM, text: TextEncoder, cfg: MagnetConfig, path: Path | None = None,
                 codec_source: str | Path | None = None, allow_download: bool = False):
        self.lm, self.text, self.config, self.path = lm, text, cfg, path
        self._codec = None
        self._codec_source, self._allow_download = codec_source, allow_download
        self.device = lm.emb[0].weight.device
        self.dtype = lm.compute_dtype
        self.sampler = "torch"
        self.decoders = DecoderCache(capacity=4)      # Decoders (buffers, CUDA graphs) of recent shapes
        self.cuda_graphs = "auto" if self.device.type == "cuda" else False
        self._graph_mode = "cuda"                     # tests use "fx" (generate.Decoder) on CPU
        lm.set_attention(self._default_attention())

    # ----------------------------------------------------------------------------------- settings
    def _default_attention(self) -> str:
        """CPU: 'windowed' (the fast path; 'exact' is the bitwise-audiocraft parity mode). CUDA: 'triton'
        (H200, bf16, with graphs: logits within 3.5e-3 of fp32 exact; small 10 s 0.176 vs 0.184 s at B=1,
        1.638 vs 1.696 s at B=16, medium 0.465 vs 0.495 s at B=1 against 'sdpa'; bench/results/h200-*),
        or 'sdpa' where the kernel cannot run (torch < 2.6, a head dim it does not support)."""
        if self.device.type != "cuda":
            return "windowed"
        from magnet_fast.kernels.banded_attn import SUPPORTED_D
        if hasattr(torch.library, "triton_op") and self.config.head_dim in SUPPORTED_D:
            return "triton"
        return "sdpa"

    @property
    def attention_backend(self) -> str:
        return self.lm.attention_backend

    def set_attention(self, backend: str) -> None:
        """'exact' (bitwise audiocraft on CPU fp32: the parity mode), 'windowed' (the CPU default: the band in
        dense blocks, not bitwise), 'triton' (the CUDA default) or 'sdpa'. See attention.py."""
        self.lm.set_attention(backend)

    def set_sampler(self, sampler: str) -> None:
        """'torch' (default: audiocraft's sampling ops and draw pairing; bitwise on CPU) or 'fused' (one
        custom op per step, the Triton kernel on CUDA; same distribution, other draws for top-p)."""
        if sampler not in SAMPLERS:
            raise ParameterError(f"sampler must be 'torch' or 'fused', got {sampler!r}")
        if sampler == "fused" and not hasattr(torch.library, "triton_op"):
            raise ParameterError(f"the fused sampler needs torch >= 2.6 (torch.library.triton_op); this is "
                                 f"{torch.__version__}")
        self.sampler = sampler

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
        """Use this codec (a ``magnet_fast.codec.Codec``) for decode/encode instead of loading one."""
        self._codec = codec

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device = "cpu", dtype=None,
                        t5: str | Path | None = None, codec: str | Path | None = None,
                        allow_download: bool = False, attention: str | None = None,
                        cuda_graphs: bool | str | None = None) -> MagnetFast:
        """Load a folder written by ``magnet-fast convert``.

        device: 'cpu' or 'cuda'. dtype: None picks float32 on CPU, bfloat16 on CUDA. t5: local T5 folder or
        hub name overriding config.json; by default a ``t5/`` folder inside the model folder, else the
        config's name from the local HF cache. codec: local EnCodec folder (transformers format) overriding
        what the converter recorded; loaded on first use, so token generation never needs it.
        allow_download: let transformers fetch the T5 / a pointer-form codec from the hub if not cached.
        attention: None (windowed on CPU, triton on CUDA where it can run) or a backend name
        (``set_attention``; 'exact' is the bitwise parity mode). cuda_graphs: None ('auto' on CUDA) or see
        ``set_cuda_graphs``.
        """
        folder = Path(path)
        cfg = MagnetConfig.load(folder)
        device = check_device(device)
        lm = load_lm(folder, cfg, device, check_dtype(dtype, device))
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
            from magnet_fast.codec import Codec
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

    def generate_tokens(self, descriptions, *, seed: int | list[int] | None = None,
                        prompt: torch.Tensor | None = None,
                        decoding_steps=None, temperature=None, top_p=None, top_k=None,
                        use_sampling: bool | None = None, max_cfg_coef=None, min_cfg_coef=None,
                        span_arrangement=None, span_scoring=None, anneal_temp: bool | None = None,
                        progress: bool = False, generator: torch.Generator | None = None,
                        batch_invariant: bool = False, max_batch: int | None = None) -> torch.Tensor:
        """Generate codec tokens [B, n_q, T] (T = 498 for 10 s models with 'nonoverlap', else frames).

        None means the model's default (config.json). ``seed`` draws from a private generator seeded
        with it (same stream as ``torch.manual_seed(seed)``, without touching the global RNG);
        seed=None uses ``generator`` if given, else torch's global generator. Descriptions may contain
        None (unconditional rows).

        batch_invariant=True (a deviation from audiocraft, off by default): each text is encoded alone, text
        padding is masked out of cross-attention and every row samples from its own stream (seeded
        ``seed + i``, or ``seed[i]`` when seed is a list), so a row's tokens depend only on its text and
        its seed, not on its batch mates. A list of seeds also works without batch_invariant (one stream
        per row, audiocraft's conditioning). batch_invariant without a seed draws one base seed from
        ``generator`` or torch's global RNG.

        max_batch: decode at most this many descriptions at once (memory); the output keeps the input
        order. Without it, running out of memory halves the chunk size and starts over (fresh seeded
        streams; a BatchSplitWarning says so) until a single description does not fit (ResourceError); with
        it, running out of memory is a ResourceError naming a smaller max_batch.
        """
        descriptions = check_descriptions(descriptions)
        params = self.params(decoding_steps=decoding_steps, temperature=temperature, top_p=top_p, top_k=top_k,
                             use_sampling=use_sampling, max_cfg_coef=max_cfg_coef, min_cfg_coef=min_cfg_coef,
                             span_arrangement=span_arrangement, span_scoring=span_scoring, anneal_temp=anneal_temp)
        frames = output_frames(self.frames, self.config.span_len, params.span_arrangement)
        prompt = check_prompt(prompt, len(descriptions), self.config.n_q, self.config.card, frames, self.device)
        check_generator(generator, self.device)
        max_batch = check_max_batch(max_batch)
        batch_invariant = check_flag(batch_invariant, "batch_invariant")
        seeds = check_seed(seed, len(descriptions))
        if seeds is None and batch_invariant:     # one base seed from the caller's (or the global) RNG
            seeds = [int(torch.randint(0, 2**62, (1,), generator=generator, device=self.device).item())]
        if batch_invariant and seeds is not None and len(seeds) == 1:
            seeds = [seeds[0] + i for i in range(len(descriptions))]
        fresh = streams(seeds, isinstance(seed, (list, tuple)) or bool(batch_invariant), self.device)
        gens = []

        def chunk(part: slice):
            if not gens:                          # fresh streams for each (re)start of the call
                gens.append(fresh() if fresh is not None else generator)
            gen = gens[0][part] if isinstance(gens[0], list) else gens[0]
            return self._decode(descriptions[part], params, None if prompt is None else prompt[part], gen,
                                progress, bool(batch_invariant))

        def retry():
            gens.clear()
            self.clear_cuda_graphs()
            if fresh is None and generator is not None:
                warnings.warn("the retry continues the given generator's stream (pass seed= to make the "
                              "split run reproducible)", BatchSplitWarning, stacklevel=4)
        return torch.cat(decode_in_chunks(chunk, len(descriptions), max_batch, device=self.device,
                                          invariant=bool(batch_invariant), on_retry=retry))

    def params(self, **overrides) -> SamplingParams:
        """This model's defaults overridden by the non-None ``overrides``, validated (ParameterError)."""
        return resolve_params(self.config.generation, self.config.n_q, self.config.card,
                              frames=self.config.frames, span_len=self.config.span_len, **overrides)

    def _decode(self, descriptions, params: SamplingParams, prompt, generator, progress: bool,
                batch_invariant: bool = False, on_step=None) -> torch.Tensor:
        cond, cross_lengths = self.conditioning(descriptions, batch_invariant)
        with torch.inference_mode():
            kv = self.lm.cross_kv(cond)
        bar = callback = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=sum(params.decoding_steps), desc="decoding", unit="step")

            def callback(done, total):
                bar.update(1)
        try:
            with self.decoders.lock:
                n_prompt = 0 if prompt is None else prompt.shape[-1]
                shape = None if self.cuda_graphs != "auto" else Decoder.make_key(
                    self.lm, len(descriptions), self.frames, kv[0][0].shape[-2], params, n_prompt, cross_lengths,
                    self.sampler, None)
                graphs = self.decoders.mode_for(shape, self.cuda_graphs, self._graph_mode)
                cache = self.decoders if graphs is not None or self.cuda_graphs is True else None
                out = decode(self.lm, kv, len(descriptions), self.frames, params, prompt=prompt,
                             generator=generator, cross_lengths=cross_lengths, sampler=self.sampler,
                             callback=callback, graphs=graphs, cache=cache, on_step=on_step)
                self.decoders.evict()
            return out
        finally:
            if bar is not None:
                bar.close()

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

    def generate(self, descriptions, *, prompt_audio=None, prompt_sample_rate: int | None = None,
                 **kwargs) -> torch.Tensor:
        """Text (and optional audio prompt to continue) -> audio [B, channels, samples] at sample_rate.

        Takes every keyword of ``generate_tokens`` (seed, decoding_steps, temperature, top_p, ...).
        The prompt audio is encoded and continued; the output starts with it, as in audiocraft.
        """
        if prompt_audio is not None:
            if kwargs.get("prompt") is not None:
                raise ParameterError("pass either prompt (tokens) or prompt_audio, not both")
            check_descriptions(descriptions)
            kwargs["prompt"] = self.prompt_tokens(prompt_audio, len(descriptions), prompt_sample_rate)
        else:
            self.load_codec()                              # fail before decoding if there is no codec
        return self.decode(self.generate_tokens(descriptions, **kwargs))
