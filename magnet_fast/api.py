"""Python API: ``MagnetFast.from_pretrained(path).generate_tokens([...])`` (docs/DESIGN.md, Pipeline)."""
from __future__ import annotations

from pathlib import Path

import torch

from magnet_fast.batching import GRAPH_POLICIES, OUT_OF_MEMORY, DecoderCache, decode_in_chunks, streams  # noqa: F401
from magnet_fast.conditioning import TextEncoder
from magnet_fast.config import MagnetConfig
from magnet_fast.engine import Engine
from magnet_fast.errors import ParameterError
from magnet_fast.generate import Decoder, decode
from magnet_fast.hybrid import HybridPlan
from magnet_fast.inputs import (
    check_descriptions,
    check_flag,
    check_generator,
    check_max_batch,
    check_prompt,
)
from magnet_fast.model import MagnetLM, load_lm  # noqa: F401  (load_lm: re-exported)
from magnet_fast.params import SamplingParams, output_frames, resolve_params
from magnet_fast.rescoring import Rescoring
from magnet_fast.sampling import SAMPLERS


class MagnetFast(Engine):
    """A converted MAGNeT checkpoint ready to generate. Build it with ``from_pretrained`` (engine.Engine:
    loading, conditioning, codec and settings shared with MusicGenFast)."""

    KIND = "magnet"
    LM_CLASS = MagnetLM

    def __init__(self, lm: MagnetLM, text: TextEncoder, cfg: MagnetConfig, path: Path | None = None,
                 codec_source: str | Path | None = None, allow_download: bool = False):
        self.sampler = "torch"
        self._graph_mode = "cuda"                     # tests use "fx" (generate.Decoder) on CPU
        super().__init__(lm, text, cfg, path, codec_source, allow_download)

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

    def set_sampler(self, sampler: str) -> None:
        """'torch' (default: audiocraft's sampling ops and draw pairing; bitwise on CPU) or 'fused' (one
        custom op per step, the Triton kernel on CUDA; same distribution, other draws for top-p)."""
        if sampler not in SAMPLERS:
            raise ParameterError(f"sampler must be 'torch' or 'fused', got {sampler!r}")
        if sampler == "fused" and not hasattr(torch.library, "triton_op"):
            raise ParameterError(f"the fused sampler needs torch >= 2.6 (torch.library.triton_op); this is "
                                 f"{torch.__version__}")
        self.sampler = sampler

    def generate_tokens(self, descriptions, *, seed: int | list[int] | None = None,
                        prompt: torch.Tensor | None = None,
                        decoding_steps=None, temperature=None, top_p=None, top_k=None,
                        use_sampling: bool | None = None, max_cfg_coef=None, min_cfg_coef=None,
                        span_arrangement=None, span_scoring=None, anneal_temp: bool | None = None,
                        progress: bool = False, generator: torch.Generator | None = None,
                        batch_invariant: bool = False, max_batch: int | None = None,
                        rescorer=None, rescore_weight=0.7, rescore_temperature: float = 1.0,
                        hybrid=None, hybrid_seconds: float = 3.0, hybrid_params: dict | None = None,
                        duration: float | None = None, extend_stride: float | None = None,
                        callback=None, loop: bool = False) -> torch.Tensor:
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

        rescorer: a MusicGenFast sharing this model's codec tokens (n_q, card, frame rate; else ConfigError).
        Every step then runs it teacher-forced over the candidate (its own T5, conditional rows only) and
        scores spans by ``w * p_rescorer + (1 - w) * p_magnet`` at the newly sampled tokens, p_rescorer =
        softmax(logits / rescore_temperature). rescore_weight w: a float in [0, 1] or one per decoding step
        (sum(decoding_steps) values, stage order); w = 0 is exactly the generation without a rescorer.

        hybrid: a MusicGenFast (same codec tokens) that first generates P = round(hybrid_seconds * frame_rate)
        frames autoregressively (its own sampling parameters: ``hybrid_params``, e.g. {"top_k": 250}; its
        config's defaults otherwise); MAGNeT then decodes the rest with them as a fixed prompt. One random
        stream: the AR part draws first, MAGNeT continues it (per-row streams: each row's prefix is decoded
        alone from its own stream). Not combinable with ``prompt``; rescoring may be on at the same time.

        duration (seconds): None or at most the model's window (``self.duration``, 10 s / 30 s) gives the
        window's generation cut to round(duration * frame_rate) frames (the tokens of the plain generation).
        Over the window, long-form: window 1 is the plain generation (with ``prompt`` / ``hybrid`` if given),
        each further window takes the last ``window - extend_stride`` seconds as its fixed prompt, one random
        stream runs through all windows (rescoring applies in each), and the output is cut to
        round(duration * frame_rate) frames. Default extend_stride: half the window (MAGNeT attends both
        ways, so a new window gets as much context as it generates; docs/DESIGN.md, Long-form generation).

        callback(done, total): called after every decoding step (total: the steps of one window).

        loop=True: a seamless loop of ``duration`` seconds (default half the window) by LoopGen's circular
        padding (editing.py, docs/editing.md); not combinable with prompt, hybrid or long-form.
        """
        if loop is not False:                               # editing.py: every other keyword passes through
            from magnet_fast.editing import loop_tokens
            return loop_tokens(self, **{k: v for k, v in locals().items() if k not in ("self", "loop_tokens")})
        descriptions = check_descriptions(descriptions)
        if callback is not None and not callable(callback):
            raise ParameterError("callback must be callable (done, total) or None")
        params = self.params(decoding_steps=decoding_steps, temperature=temperature, top_p=top_p, top_k=top_k,
                             use_sampling=use_sampling, max_cfg_coef=max_cfg_coef, min_cfg_coef=min_cfg_coef,
                             span_arrangement=span_arrangement, span_scoring=span_scoring, anneal_temp=anneal_temp)
        frames = output_frames(self.frames, self.config.span_len, params.span_arrangement)
        long, keep = self._long_form(duration, extend_stride, frames)
        prompt = check_prompt(prompt, len(descriptions), self.config.n_q, self.config.card, frames, self.device)
        rescoring = None if rescorer is None else Rescoring(self, rescorer, rescore_weight, rescore_temperature,
                                                            params.decoding_steps)
        rescoring = rescoring if rescoring is not None and rescoring.active else None     # all w = 0: none
        plan = None
        if hybrid is not None:
            if prompt is not None:
                raise ParameterError("hybrid generates MAGNeT's prompt itself: pass prompt (or prompt_audio) or "
                                     "hybrid, not both")
            plan = HybridPlan(self, hybrid, hybrid_seconds, hybrid_params, frames)
        check_generator(generator, self.device)
        max_batch = check_max_batch(max_batch)
        batch_invariant = check_flag(batch_invariant, "batch_invariant")
        fresh = self._seed_streams(seed, generator, batch_invariant, len(descriptions))
        gens, prefix = [], []

        def chunk(part: slice):
            if not gens:                          # fresh streams for each (re)start of the call
                gens.append(fresh() if fresh is not None else generator)
                if plan is not None:              # the AR prefix of every row draws first
                    prefix[:] = [plan.prefix(descriptions, gens[0], max_batch, progress)]
            gen = gens[0][part] if isinstance(gens[0], list) else gens[0]
            head = prefix[0] if prefix else prompt
            head = None if head is None else head[part]
            if long is None:
                out = self._decode(descriptions[part], params, head, gen, progress, bool(batch_invariant),
                                   rescoring=rescoring, user_callback=callback)
                return out if keep is None else out[..., :keep]
            from magnet_fast.longform import generate_windows
            from magnet_fast.longform import plan as n_windows
            total, stride = long
            bar = None
            if progress:
                from tqdm.auto import tqdm
                bar = tqdm(total=sum(params.decoding_steps) * n_windows(total, frames, stride), desc="decoding",
                           unit="step")
            try:
                return generate_windows(
                    lambda p: self._decode(descriptions[part], params, p, gen, False, bool(batch_invariant),
                                           rescoring=rescoring, bar=bar, user_callback=callback),
                    head, total, frames, stride)
            finally:
                if bar is not None:
                    bar.close()

        return torch.cat(decode_in_chunks(chunk, len(descriptions), max_batch, device=self.device,
                                          invariant=bool(batch_invariant),
                                          on_retry=self._retry(fresh, generator, gens, prefix)))

    def _long_form(self, duration, extend_stride, frames: int):
        """(long-form plan or None, frames to keep of a single window or None); ParameterError on bad input."""
        from magnet_fast.longform import long_form
        window_s = self.duration
        long = long_form(duration, extend_stride, window_s=window_s, frame_rate=self.frame_rate,
                         window_frames=frames, default_stride_s=window_s / 2)
        keep = None
        if long is None and duration is not None:
            keep = min(frames, max(1, round(duration * self.frame_rate)))
        return long, keep

    def params(self, **overrides) -> SamplingParams:
        """This model's defaults overridden by the non-None ``overrides``, validated (ParameterError)."""
        return resolve_params(self.config.generation, self.config.n_q, self.config.card,
                              frames=self.config.frames, span_len=self.config.span_len, **overrides)

    def _decode(self, descriptions, params: SamplingParams, prompt, generator, progress: bool,
                batch_invariant: bool = False, on_step=None, rescoring: Rescoring | None = None,
                bar=None, user_callback=None) -> torch.Tensor:
        cond, cross_lengths = self.conditioning(descriptions, batch_invariant)
        with torch.inference_mode():
            kv = self.lm.cross_kv(cond)
        rescore = rescore_key = None
        if rescoring is not None:                  # the rescorer's own T5 and cross K/V, once per generation
            rescore_kv, rescore_lengths = rescoring.condition(descriptions, batch_invariant)
            rescore_key = rescoring.key(rescore_kv, rescore_lengths)
            rescore = (rescoring.engine.lm, rescore_key, rescore_kv)
        own = callback = None
        if progress:
            from tqdm.auto import tqdm
            own = bar = tqdm(total=sum(params.decoding_steps), desc="decoding", unit="step")
        if bar is not None or user_callback is not None:   # this call's bar, or one spanning several calls

            def callback(done, total):
                if bar is not None:
                    bar.update(1)
                if user_callback is not None:
                    user_callback(done, total)
        try:
            with self.decoders.lock:
                n_prompt = 0 if prompt is None else prompt.shape[-1]
                shape = None if self.cuda_graphs != "auto" else Decoder.make_key(
                    self.lm, len(descriptions), self.frames, kv[0][0].shape[-2], params, n_prompt, cross_lengths,
                    self.sampler, None, rescore_key)
                graphs = self.decoders.mode_for(shape, self.cuda_graphs, self._graph_mode)
                cache = self.decoders if graphs is not None or self.cuda_graphs is True else None
                out = decode(self.lm, kv, len(descriptions), self.frames, params, prompt=prompt,
                             generator=generator, cross_lengths=cross_lengths, sampler=self.sampler,
                             callback=callback, graphs=graphs, cache=cache, on_step=on_step, rescore=rescore)
                self.decoders.evict()
            return out
        finally:
            if own is not None:
                own.close()

    def generate(self, descriptions, *, prompt_audio=None, prompt_sample_rate: int | None = None,
                 **kwargs) -> torch.Tensor:
        """Text (and optional audio prompt to continue) -> audio [B, channels, samples] at sample_rate.

        Takes every keyword of ``generate_tokens`` (seed, decoding_steps, temperature, top_p, ..., rescorer,
        rescore_weight, hybrid, hybrid_seconds, hybrid_params). The prompt audio is encoded and continued;
        the output starts with it, as in audiocraft (not combinable with hybrid).
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
        if kwargs.get("loop", False) is not False:        # a loop's audio is decoded wrapped around (editing.py)
            from magnet_fast.editing import loop_audio
            return loop_audio(self, self.generate_tokens(descriptions, **kwargs))
        return self.decode(self.generate_tokens(descriptions, **kwargs))

    # ------------------------------------------------------------------- editing (editing.py, docs/editing.md)
    def edit_tokens(self, tokens, start=None, end=None, descriptions=None, **kwargs) -> torch.Tensor:
        """Regenerate frames [round(start * rate), round(end * rate)) of tokens [B, K, T] (or ``ranges=``) given
        the text and the kept frames on both sides; every other frame is kept bit for bit."""
        from magnet_fast.editing import edit_tokens
        return edit_tokens(self, tokens, start, end, descriptions, **kwargs)

    def edit(self, audio, start=None, end=None, descriptions=None, **kwargs) -> torch.Tensor:
        """Audio (path or [B, C, S] with sample_rate=) -> the edited audio, spliced with an equal-power
        crossfade (crossfade=0.05 s): samples outside [start - crossfade, end + crossfade] are the input's."""
        from magnet_fast.editing import edit
        return edit(self, audio, start, end, descriptions, **kwargs)

    def vary_tokens(self, tokens, strength, descriptions=None, **kwargs) -> torch.Tensor:
        """A variation: ``strength`` in (0, 1] of the spans re-masked and decoded from that masking rate."""
        from magnet_fast.editing import vary_tokens
        return vary_tokens(self, tokens, strength, descriptions, **kwargs)

    def vary(self, audio, strength, descriptions=None, **kwargs) -> torch.Tensor:
        """Audio (path or [B, C, S] with sample_rate=) -> a variation (``vary_tokens``), decoded."""
        from magnet_fast.editing import vary
        return vary(self, audio, strength, descriptions, **kwargs)

