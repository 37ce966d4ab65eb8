"""Python API: ``MagnetFast.from_pretrained(path).generate_tokens([...])`` (docs/DESIGN.md, Pipeline)."""
from __future__ import annotations

from pathlib import Path

import torch

from magnet_fast.checks import check_descriptions
from magnet_fast.config import MagnetConfig
from magnet_fast.decoding.magnet import Decoder, decode
from magnet_fast.decoding.sampling import SAMPLERS
from magnet_fast.engines.base import Engine
from magnet_fast.engines.hybrid import HybridPlan
from magnet_fast.engines.inputs import check_prompt
from magnet_fast.engines.pairing import Rescoring
from magnet_fast.engines.request import Progress, Request
from magnet_fast.errors import ParameterError
from magnet_fast.nn.conditioning import TextEncoder
from magnet_fast.nn.model import MagnetLM
from magnet_fast.params import SamplingParams, output_frames, resolve_params


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
            from magnet_fast.engines.editing import loop_tokens
            return loop_tokens(self, **{k: v for k, v in locals().items() if k not in ("self", "loop_tokens")})
        return self.run(self.request(
            descriptions, seed=seed, prompt=prompt, decoding_steps=decoding_steps, temperature=temperature,
            top_p=top_p, top_k=top_k, use_sampling=use_sampling, max_cfg_coef=max_cfg_coef,
            min_cfg_coef=min_cfg_coef, span_arrangement=span_arrangement, span_scoring=span_scoring,
            anneal_temp=anneal_temp, progress=progress, generator=generator, batch_invariant=batch_invariant,
            max_batch=max_batch, rescorer=rescorer, rescore_weight=rescore_weight,
            rescore_temperature=rescore_temperature, hybrid=hybrid, hybrid_seconds=hybrid_seconds,
            hybrid_params=hybrid_params, duration=duration, extend_stride=extend_stride, callback=callback))

    def request(self, descriptions, *, seed=None, prompt=None, progress: bool = False, generator=None,
                batch_invariant: bool = False, max_batch=None, rescorer=None, rescore_weight=0.7,
                rescore_temperature: float = 1.0, hybrid=None, hybrid_seconds: float = 3.0,
                hybrid_params: dict | None = None, duration=None, extend_stride=None, callback=None,
                **sampling) -> Request:
        """``generate_tokens``' keywords -> a validated ``Request`` (every check before any work);
        ``sampling``: the ``SamplingParams`` overrides (decoding_steps, temperature, top_p, ...)."""
        check_descriptions(descriptions)
        from magnet_fast.engines.inputs import plain_number  # np.float32 durations like np.float64
        duration, extend_stride, hybrid_seconds = map(plain_number, (duration, extend_stride, hybrid_seconds))
        if callback is not None and not callable(callback):
            raise ParameterError("callback must be callable (done, total) or None")
        params = self.params(**sampling)
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
            from magnet_fast.engines.inputs import check_hybrid_fits
            check_hybrid_fits(hybrid_seconds, duration, self.duration, self.frame_rate)   # issue 24
            plan = HybridPlan(self, hybrid, hybrid_seconds, hybrid_params, frames)
        return self._request(descriptions, params, frames, prompt=prompt, seed=seed, generator=generator,
                             batch_invariant=batch_invariant, max_batch=max_batch, progress=progress,
                             callback=callback, long=long, keep=keep, rescoring=rescoring, hybrid=plan)

    # ----------------------------------------------------------------------------------- window hooks
    def _head(self, req: Request, generator):
        if req.hybrid is not None:              # the AR prefix of every row draws first
            return req.hybrid.prefix(list(req.descriptions), generator, req.max_batch, req.progress)
        return req.prompt

    def _progress_total(self, req: Request) -> int:
        from magnet_fast.engines.longform import plan as n_windows
        windows = 1 if req.long is None else n_windows(req.long[0], req.frames, req.long[1])
        return sum(req.params.decoding_steps) * windows

    def _prepare(self, req: Request, texts: list):
        cond, cross_lengths = self.conditioning(texts, req.batch_invariant)
        with torch.inference_mode():
            kv = self.lm.cross_kv(cond)
        # the rescorer's own T5 and cross K/V, once per generation
        rescore = None if req.rescoring is None else req.rescoring.prepare(texts, req.batch_invariant)
        return kv, cross_lengths, rescore

    def _decode_window(self, req: Request, ctx, texts: list, prompt, generator, progress: Progress,
                       on_step=None) -> torch.Tensor:
        kv, cross_lengths, rescore = ctx
        n_prompt = 0 if prompt is None else prompt.shape[-1]
        shape = None if self.cuda_graphs != "auto" else Decoder.make_key(
            self.lm, len(texts), self.frames, kv[0][0].shape[-2], req.params, n_prompt, cross_lengths,
            self.sampler, None, None if rescore is None else rescore.spec)
        graphs = self.decoders.mode_for(shape, self.cuda_graphs, self._graph_mode)
        cache = self.decoders if graphs is not None or self.cuda_graphs is True else None
        return decode(self.lm, kv, len(texts), self.frames, req.params, prompt=prompt, generator=generator,
                      cross_lengths=cross_lengths, sampler=self.sampler, callback=progress.step, graphs=graphs,
                      cache=cache, on_step=on_step, rescore=rescore)

    def _long_form(self, duration, extend_stride, frames: int):
        """(long-form plan or None, frames to keep of a single window or None); ParameterError on bad input."""
        from magnet_fast.engines.longform import long_form
        window_s = self.duration
        long = long_form(duration, extend_stride, window_s=window_s, frame_rate=self.frame_rate,
                         window_frames=frames, default_stride_s=window_s / 2)
        keep = None
        if long is None and duration is not None:
            keep = min(frames, max(1, round(duration * self.frame_rate)))
        return long, keep

    def _audio(self, tokens: torch.Tensor, kwargs: dict) -> torch.Tensor:
        if kwargs.get("loop", False) is not False:        # a loop's audio is decoded wrapped around (editing.py)
            from magnet_fast.engines.editing import loop_audio
            return loop_audio(self, tokens)
        return self.decode(tokens)

    # ------------------------------------------------------------------- editing (editing.py, docs/editing.md)
    def edit_tokens(self, tokens, start=None, end=None, descriptions=None, **kwargs) -> torch.Tensor:
        """Regenerate frames [round(start * rate), round(end * rate)) of tokens [B, K, T] (or ``ranges=``) given
        the text and the kept frames on both sides; every other frame is kept bit for bit."""
        from magnet_fast.engines.editing import edit_tokens
        return edit_tokens(self, tokens, start, end, descriptions, **kwargs)

    def edit(self, audio, start=None, end=None, descriptions=None, **kwargs) -> torch.Tensor:
        """Audio (path or [B, C, S] with sample_rate=) -> the edited audio, spliced with an equal-power
        crossfade (crossfade=0.05 s): samples outside [start - crossfade, end + crossfade] are the input's."""
        from magnet_fast.engines.editing import edit
        return edit(self, audio, start, end, descriptions, **kwargs)

    def vary_tokens(self, tokens, strength, descriptions=None, **kwargs) -> torch.Tensor:
        """A variation: ``strength`` in (0, 1] of the spans re-masked and decoded from that masking rate."""
        from magnet_fast.engines.editing import vary_tokens
        return vary_tokens(self, tokens, strength, descriptions, **kwargs)

    def vary(self, audio, strength, descriptions=None, **kwargs) -> torch.Tensor:
        """Audio (path or [B, C, S] with sample_rate=) -> a variation (``vary_tokens``), decoded."""
        from magnet_fast.engines.editing import vary
        return vary(self, audio, strength, descriptions, **kwargs)

    def params(self, **overrides) -> SamplingParams:
        """This model's defaults overridden by the non-None ``overrides``, validated (ParameterError)."""
        return resolve_params(self.config.generation, self.config.n_q, self.config.card,
                              frames=self.config.frames, span_len=self.config.span_len, **overrides)
