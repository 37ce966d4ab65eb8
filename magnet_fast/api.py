"""Python API: ``MagnetFast.from_pretrained(path).generate_tokens([...])``."""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from magnet_fast.conditioning import TextEncoder
from magnet_fast.config import WEIGHTS_NAME, MagnetConfig
from magnet_fast.errors import BatchSplitWarning, CheckpointError, ParameterError, ResourceError
from magnet_fast.generate import Params, decode, output_frames, resolve_params
from magnet_fast.model import MagnetLM

OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)   # torch < 2.5: cuda only
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _dtype(dtype, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ParameterError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        return DTYPES[dtype]
    if dtype not in DTYPES.values():
        raise ParameterError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    return dtype


def _needs_triton_ops(what: str) -> None:
    if not hasattr(torch.library, "triton_op"):
        raise ParameterError(f"{what} needs torch >= 2.6 (torch.library.triton_op); this is {torch.__version__}")


def _keeps_fp32(key: str) -> bool:
    """Embeddings, LayerNorms, the text projection and the output heads stay float32 under bf16/fp16
    weights (see model.py, mixed precision)."""
    return key.startswith(("emb.", "heads.", "text_proj.")) or any(
        part.startswith(("norm", "out_norm")) for part in key.split("."))


def load_lm(folder: Path, cfg: MagnetConfig, device: torch.device, dtype: torch.dtype) -> MagnetLM:
    """Build the LM on the meta device and assign the (mmapped, cast) safetensors weights."""
    path = folder / WEIGHTS_NAME
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found; re-run `magnet-fast convert`") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); it may be truncated: "
                              "re-run `magnet-fast convert`") from None
    with torch.device("meta"):
        lm = MagnetLM(cfg)
    expected = {k: tuple(v.shape) for k, v in lm.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unknown = sorted(set(state) - set(expected))
    if missing or unknown:
        raise CheckpointError(f"{path}: missing keys {missing[:5]}, unknown keys {unknown[:5]} for the "
                              f"geometry in config.json; re-run `magnet-fast convert`")
    for k, shape in expected.items():
        if tuple(state[k].shape) != shape:
            raise CheckpointError(f"{path}: {k} has shape {list(state[k].shape)}, config.json implies "
                                  f"{list(shape)}; re-run `magnet-fast convert`")
        if not state[k].is_floating_point():
            raise CheckpointError(f"{path}: {k} has dtype {state[k].dtype}; expected floating point")
    lm.load_state_dict({k: v.to(device=device, dtype=torch.float32 if _keeps_fp32(k) else dtype)
                        for k, v in state.items()}, assign=True)
    return lm.eval().requires_grad_(False)


class MagnetFast:
    """A converted MAGNeT checkpoint ready to generate. Build it with ``from_pretrained``."""

    def __init__(self, lm: MagnetLM, text: TextEncoder, cfg: MagnetConfig, path: Path | None = None,
                 codec_source: str | Path | None = None, allow_download: bool = False):
        self.lm, self.text, self.config, self.path = lm, text, cfg, path
        self._codec = None
        self._codec_source, self._allow_download = codec_source, allow_download
        self.device = lm.emb[0].weight.device
        self.dtype = lm.compute_dtype
        self.attention_backend = self._default_attention()
        self.sampler = "torch"
        self.cuda_graphs = False
        self._graph_mode = "cuda"                        # tests use "fx" (generate.Decoder) on CPU
        self._decoders: OrderedDict = OrderedDict()      # graph mode: Decoder per shape key, LRU
        self._lock = threading.RLock()                   # a cached Decoder's buffers serve one call at a time

    DECODER_CACHE_SIZE = 4

    def _default_attention(self) -> str:
        """CPU: 'exact'. CUDA: 'triton' (validated on an H200: logits within 3.5e-3 of fp32 exact, 16-100x
        the dense reference, 2-4 % faster end to end than 'sdpa'), or 'sdpa' where the kernel cannot run
        (torch < 2.6, a head dim it does not support)."""
        if self.device.type != "cuda":
            return "exact"
        from magnet_fast.kernels.banded_attn import SUPPORTED_D
        if hasattr(torch.library, "triton_op") and self.config.head_dim in SUPPORTED_D:
            return "triton"
        return "sdpa"

    def set_cuda_graphs(self, enabled: bool) -> None:
        """Record each decoding step as a CUDA graph on its first run and replay it afterwards (CUDA only;
        off by default: a new shape costs a recording; see README). Recordings and their buffers are kept for
        the last ``DECODER_CACHE_SIZE`` shapes (batch, text length, parameters, prompt length, backend,
        sampler), also while graphs are switched off; ``clear_cuda_graphs()`` frees them. Calls on one
        model are serialised while graphs are on (the recordings' buffers are shared); a new text length
        means a new recording (an eager pass plus capture), so graphs pay off for repeated shapes."""
        if not isinstance(enabled, bool):
            raise ParameterError(f"cuda_graphs must be True or False, got {enabled!r}")
        if enabled and self.device.type != "cuda":
            raise ParameterError(f"CUDA graphs need a CUDA device; this model is on {self.device.type}")
        self.cuda_graphs = enabled

    def clear_cuda_graphs(self) -> None:
        """Drop every recorded graph and its static buffers."""
        self._decoders.clear()

    def set_sampler(self, sampler: str) -> None:
        """'torch' (default: audiocraft's sampling ops and draw pairing; bitwise on CPU) or 'fused' (one
        custom op per step, the Triton kernel on CUDA; same distribution, other draws for top-p)."""
        if sampler not in ("torch", "fused"):
            raise ParameterError(f"sampler must be 'torch' or 'fused', got {sampler!r}")
        if sampler == "fused":
            _needs_triton_ops("the fused sampler")
        self.sampler = sampler

    def set_attention(self, backend: str) -> None:
        """Choose the attention backend: 'exact' (bitwise audiocraft on CPU fp32; the CPU default),
        'triton' (the banded Triton kernel; the CUDA default), 'sdpa' or 'windowed' (O(T*window) band;
        not bitwise). See attention.py."""
        from magnet_fast.attention import BACKENDS
        if backend not in BACKENDS:
            raise ParameterError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "triton":
            _needs_triton_ops("the triton attention backend")
            from magnet_fast.kernels.banded_attn import SUPPORTED_D
            if self.device.type == "cuda" and self.config.head_dim not in SUPPORTED_D:
                raise ParameterError(f"the triton attention kernel supports head dims {SUPPORTED_D}, this "
                                     f"model has {self.config.head_dim}; use 'sdpa' or 'windowed'")
        self.attention_backend = backend

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device = "cpu", dtype=None,
                        t5: str | Path | None = None, codec: str | Path | None = None,
                        allow_download: bool = False, attention: str | None = None,
                        cuda_graphs: bool = False) -> MagnetFast:
        """Load a folder written by ``magnet-fast convert``.

        device: 'cpu' (float32, bitwise audiocraft parity) or 'cuda'. dtype: None picks float32 on CPU,
        bfloat16 on CUDA. t5: local T5 folder or hub name overriding config.json; by default a ``t5/``
        folder inside the model folder, else the config's name from the local HF cache.
        codec: local EnCodec folder (transformers format) overriding what the converter recorded; the
        codec is loaded on first use, so token generation never needs it.
        allow_download: let transformers fetch the T5 / a pointer-form codec from the hub if not cached.
        attention: None (exact on CPU, triton on CUDA where it can run) or a backend name (see ``set_attention``).
        cuda_graphs: record and replay the decoding steps as CUDA graphs (see ``set_cuda_graphs``).
        """
        folder = Path(path)
        cfg = MagnetConfig.load(folder)
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError):
            raise ParameterError(f"device must be 'cpu' or 'cuda' (or 'cuda:N'), got {device!r}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ParameterError("device 'cuda' requested but CUDA is not available; use device='cpu'")
        lm = load_lm(folder, cfg, device, _dtype(dtype, device))
        if t5 is None:
            t5 = folder / "t5" if (folder / "t5").is_dir() else cfg.t5_name
        text = TextEncoder(t5, device=device, allow_download=allow_download)
        if text.dim != cfg.t5_dim:
            raise CheckpointError(f"T5 {str(t5)!r} has width {text.dim} but the model's text projection "
                                  f"expects {cfg.t5_dim} ({cfg.t5_name}); pass the matching T5 with t5=")
        if cfg.notice:
            import warnings
            warnings.warn(f"{folder}: {cfg.notice}", stacklevel=2)
        model = cls(lm, text, cfg, folder, codec_source=codec, allow_download=allow_download)
        if attention is not None:
            model.set_attention(attention)
        if cuda_graphs:
            model.set_cuda_graphs(True)
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
        return self._conditioning(descriptions, batch_invariant=False)[0]

    def _conditioning(self, descriptions, batch_invariant: bool):
        """(condition [2B, L, dim], per-row condition lengths for cross-attention or None).

        Default (audiocraft's behaviour): the texts are encoded as one padded batch and cross-attention
        attends over the padding, so a row depends on its batch mates. batch_invariant: each text is
        encoded alone and padding is masked out of cross-attention (null rows keep their all-zero keys).
        """
        if not batch_invariant:
            hidden, mask = self.text.encode(descriptions)
            with torch.inference_mode():
                return self.lm.project_text(hidden.to(self.device), mask.to(self.device)), None
        parts = [self.text.encode([d]) for d in descriptions]             # each: [2, L_i, width]
        n, width = len(descriptions), self.text.dim
        length = max(h.shape[1] for h, _ in parts)
        hidden = torch.zeros(2 * n, length, width, device=self.text.device)
        mask = torch.zeros(2 * n, length, dtype=torch.long, device=self.text.device)
        for i, (h, m) in enumerate(parts):
            hidden[i, : h.shape[1]] = h[0]
            mask[i, : m.shape[1]] = m[0]
        # null rows have zero keys/values: attending to one of them gives exactly 0, as with the padding
        lengths = tuple(max(1, int(m.sum())) for m in mask)
        with torch.inference_mode():
            return self.lm.project_text(hidden.to(self.device), mask.to(self.device)), lengths

    def _check_descriptions(self, descriptions) -> list[str | None]:
        if isinstance(descriptions, str) or not isinstance(descriptions, (list, tuple)):
            raise ParameterError("descriptions must be a list of strings (or None for unconditional "
                                 f"rows), got {type(descriptions).__name__}")
        if not descriptions:
            raise ParameterError("descriptions is empty: pass at least one text (or None)")
        bad = [d for d in descriptions if d is not None and not isinstance(d, str)]
        if bad:
            raise ParameterError(f"descriptions must be str or None, got {type(bad[0]).__name__}")
        return list(descriptions)

    def _check_prompt(self, prompt, batch: int, params: Params) -> torch.Tensor | None:
        if prompt is None:
            return None
        if not isinstance(prompt, torch.Tensor) or prompt.dim() != 3 or prompt.is_floating_point():
            raise ParameterError("prompt must be an integer tensor [B, n_q, P] of codec tokens")
        b, k, p = prompt.shape
        frames = output_frames(self.frames, self.config.span_len, params.span_arrangement)
        if b != batch or k != self.config.n_q:
            raise ParameterError(f"prompt has shape {list(prompt.shape)}; expected [{batch}, "
                                 f"{self.config.n_q}, P] for {batch} description(s)")
        if not 0 < p < frames:
            raise ParameterError(f"prompt length {p} frames must be in 1..{frames - 1} (the model "
                                 f"generates {frames} frames)")
        if prompt.min() < 0 or prompt.max() >= self.config.card:
            raise ParameterError(f"prompt tokens must be in [0, {self.config.card})")
        return prompt.to(device=self.device, dtype=torch.long)

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
        per row, audiocraft's conditioning).

        max_batch: decode at most this many descriptions at once (memory); the output keeps the input
        order. Without it, running out of memory halves the chunk size and starts over (fresh seeded
        streams; a BatchSplitWarning says so) until a single description does not fit (ResourceError); with
        it, running out of memory is a ResourceError naming a smaller max_batch. With batch_invariant
        splitting does not change any row; in audiocraft mode each chunk is conditioned and sampled as its
        own batch, one stream. (batch_invariant without a seed draws one
        base seed from ``generator`` or torch's global RNG.)
        """
        descriptions = self._check_descriptions(descriptions)
        params = resolve_params(self.config.generation, self.config.n_q, decoding_steps=decoding_steps,
                                temperature=temperature, top_p=top_p, top_k=top_k,
                                use_sampling=use_sampling, max_cfg_coef=max_cfg_coef,
                                min_cfg_coef=min_cfg_coef, span_arrangement=span_arrangement,
                                span_scoring=span_scoring, anneal_temp=anneal_temp)
        if params.top_k > self.config.card:
            raise ParameterError(f"top_k must be <= the codebook size {self.config.card}, got {params.top_k}")
        prompt = self._check_prompt(prompt, len(descriptions), params)
        if generator is not None and (not isinstance(generator, torch.Generator)
                                      or generator.device.type != self.device.type):
            raise ParameterError(f"generator must be a torch.Generator on {self.device.type}, got {generator!r}")
        if seed is None and batch_invariant:
            # one base seed from the caller's (or torch's global) generator, then a stream per row
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=self.device).item())
        gens = None
        if seed is not None:
            seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed]
            if any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**63 - len(seeds) - 1
                   for s in seeds):
                raise ParameterError(f"seed must be an integer in [0, 2**63) (or a list of them), got {seed!r}")
            if isinstance(seed, (list, tuple)) and len(seeds) != len(descriptions):
                raise ParameterError(f"{len(seeds)} seeds for {len(descriptions)} descriptions")
            if batch_invariant and len(seeds) == 1:
                seeds = [seeds[0] + i for i in range(len(descriptions))]
            per_row = isinstance(seed, (list, tuple)) or batch_invariant

            def gens():              # fresh streams: a retry after running out of memory starts over
                g = [torch.Generator(device=self.device).manual_seed(s) for s in seeds]
                return g if per_row else g[0]
        if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int)
                                      or max_batch < 1):
            raise ParameterError(f"max_batch must be a positive integer, got {max_batch!r}")
        size = max_batch or len(descriptions)
        while True:
            generator_now = gens() if gens is not None else generator
            failed = None
            try:
                out = []
                for start in range(0, len(descriptions), size):
                    part = slice(start, start + size)
                    gen = generator_now[part] if isinstance(generator_now, list) else generator_now
                    out.append(self._decode(descriptions[part], params, None if prompt is None else prompt[part],
                                            gen, progress, bool(batch_invariant)))
            except OUT_OF_MEMORY:
                failed = len(descriptions[part])              # the chunk that did not fit
            if failed is None:
                break
            out = None           # cleanup outside the except block: its traceback pinned the failed frames
            self.clear_cuda_graphs()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if max_batch is not None or failed == 1:
                raise ResourceError(f"out of {self.device.type} memory decoding a batch of {failed}; pass "
                                    f"max_batch={max(1, failed // 2)} (CLI: --max-batch) or use fewer "
                                    "descriptions per call" if failed > 1 else
                                    f"out of {self.device.type} memory decoding a single description; "
                                    "free memory, use a lower-precision dtype or a smaller model")
            size = (failed + 1) // 2
            import warnings
            note = ("" if batch_invariant else " (audiocraft mode: each chunk is conditioned and sampled as "
                    "its own batch, so rows differ from an unsplit run; batch_invariant=True avoids that)")
            warnings.warn(f"out of {self.device.type} memory with a batch of {failed}; decoding in chunks "
                          f"of {size} instead{note}. Pass max_batch= to choose.", BatchSplitWarning, stacklevel=2)
            if gens is None and generator is not None:
                warnings.warn("the retry continues the given generator's stream (pass seed= to make the "
                              "split run reproducible)", BatchSplitWarning, stacklevel=2)
        return torch.cat(out)

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
        from magnet_fast.audio import read_audio
        if isinstance(prompt_audio, (str, Path)):
            wav, prompt_sample_rate = read_audio(prompt_audio)
        elif isinstance(prompt_audio, torch.Tensor):
            if prompt_sample_rate is None:
                raise ParameterError("a tensor prompt_audio needs prompt_sample_rate")
            wav = prompt_audio
        else:
            raise ParameterError("prompt_audio must be a file path or a tensor of samples")
        rate = prompt_sample_rate
        if isinstance(rate, bool) or not isinstance(rate, int) or rate < 1:
            raise ParameterError(f"prompt_sample_rate must be a positive integer (Hz), got {prompt_sample_rate!r}")
        while wav.dim() < 3:
            wav = wav.unsqueeze(0)
        if not torch.isfinite(wav).all():
            raise ParameterError("prompt audio contains NaN or inf samples")
        seconds = wav.shape[-1] / prompt_sample_rate
        if seconds >= self.duration:
            raise ParameterError(f"prompt audio is {seconds:.2f} s; it must be shorter than the model's "
                                 f"{self.duration:g} s")
        if wav.shape[0] == 1 and batch > 1:
            wav = wav.expand(batch, -1, -1)
        if wav.shape[0] != batch:
            raise ParameterError(f"prompt audio has {wav.shape[0]} rows for {batch} descriptions")
        return self.encode(wav.float(), prompt_sample_rate)

    def generate(self, descriptions, *, prompt_audio=None, prompt_sample_rate: int | None = None,
                 **kwargs) -> torch.Tensor:
        """Text (and optional audio prompt to continue) -> audio [B, channels, samples] at sample_rate.

        Takes every keyword of ``generate_tokens`` (seed, decoding_steps, temperature, top_p, ...).
        The prompt audio is encoded and continued; the output starts with it, as in audiocraft.
        """
        if prompt_audio is not None:
            if kwargs.get("prompt") is not None:
                raise ParameterError("pass either prompt (tokens) or prompt_audio, not both")
            self._check_descriptions(descriptions)
            kwargs["prompt"] = self.prompt_tokens(prompt_audio, len(descriptions), prompt_sample_rate)
        else:
            self.load_codec()                              # fail before decoding if there is no codec
        return self.decode(self.generate_tokens(descriptions, **kwargs))

    def _decode(self, descriptions, params: Params, prompt, generator, progress: bool,
                batch_invariant: bool = False) -> torch.Tensor:
        cond, cross_lengths = self._conditioning(descriptions, batch_invariant)
        with torch.inference_mode():
            kv = self.lm.cross_kv(cond)
        bar = callback = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=sum(params.decoding_steps), desc="decoding", unit="step")

            def callback(done, total):
                bar.update(1)
        cache = self._decoders if self.cuda_graphs else None
        try:
            with self._lock:
                out = decode(self.lm, kv, len(descriptions), self.frames, params, prompt=prompt,
                             generator=generator, backend=self.attention_backend, cross_lengths=cross_lengths,
                             sampler=self.sampler, callback=callback,
                             graphs=self._graph_mode if self.cuda_graphs else None, cache=cache)
                while cache is not None and len(cache) > self.DECODER_CACHE_SIZE:
                    cache.popitem(last=False)                 # least recently used shape
            return out
        finally:
            if bar is not None:
                bar.close()
