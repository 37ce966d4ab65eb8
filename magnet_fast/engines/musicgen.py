"""MusicGen on the same engine: ``MusicGenFast.from_pretrained(path).generate_tokens([...])``
(docs/DESIGN.md, MusicGen). Loading, conditioning, codec, seeds, errors and the decoder cache are the
engine's (engine.py, batching.py); the autoregressive loop with its static KV cache is ar.py."""
from __future__ import annotations

import torch

from magnet_fast.checks import check_descriptions
from magnet_fast.decoding.ar import ARDecoder, MusicGenLM, decode_ar
from magnet_fast.engines.base import Engine
from magnet_fast.engines.request import Progress, Request
from magnet_fast.errors import ParameterError
from magnet_fast.nn.conditioning import encode_condition_apart
from magnet_fast.nn.pattern import first_step
from magnet_fast.params import ARParams, resolve_ar_params

MUSICGEN_BACKENDS = ("exact", "sdpa")
DEFAULT_STRIDE_S = 18.0        # audiocraft's MusicGen extend_stride (30 s window: 12 s of context, 18 s new)


def long_form_plan(cfg, duration, extend_stride):
    """(total frames, stride frames) when ``duration`` exceeds the model's window (config.segment_duration),
    else None; ``extend_stride`` (seconds) is checked whenever given. ParameterError otherwise. Default
    stride: audiocraft's 18 s, or half the window for a model shorter than 36 s."""
    from magnet_fast.engines.longform import long_form
    window_s = cfg.segment_duration
    if duration is not None and not isinstance(duration, bool) and isinstance(duration, (int, float)) \
            and duration <= window_s:
        duration_check = None                     # a window's duration: checked by the sampling parameters
    else:
        duration_check = duration
    return long_form(duration_check, extend_stride, window_s=window_s, frame_rate=cfg.frame_rate,
                     window_frames=int(window_s * cfg.frame_rate),
                     default_stride_s=min(DEFAULT_STRIDE_S, window_s / 2))


class MusicGenFast(Engine):
    """A converted MusicGen (or AudioGen) checkpoint ready to generate. Build it with ``from_pretrained``
    (``magnet-fast convert`` writes the folder; the same loader, text encoder and codec as MagnetFast)."""

    KIND = "musicgen"
    LM_CLASS = MusicGenLM

    def _default_attention(self) -> str:
        """'sdpa' everywhere: eager on CPU with the null rows' cross-attention skipped; on CUDA the static
        step (whole-cache masked attention) that a CUDA graph replays. 'exact' is the parity mode (CPU fp32:
        audiocraft's tokens bit for bit)."""
        return "sdpa"

    def set_attention(self, backend: str) -> None:
        """'exact' (bitwise audiocraft on CPU fp32: the parity mode) or 'sdpa' (the default)."""
        if backend not in MUSICGEN_BACKENDS:
            raise ParameterError(f"MusicGen attention must be one of {MUSICGEN_BACKENDS}, got {backend!r} "
                                 "(the banded backends are MAGNeT's)")
        self.lm.set_attention(backend)

    @property
    def frames(self) -> int:
        """Frames of a default-length generation (``config.generation.duration``)."""
        return int(self.config.generation.duration * self.frame_rate)

    @property
    def max_duration(self) -> float:
        return self.config.segment_duration

    @property
    def duration(self) -> float:
        """The longest a generation may be (seconds): the model's training segment (30 s released)."""
        return self.config.segment_duration

    def params(self, **overrides) -> ARParams:
        """This model's defaults overridden by the non-None ``overrides``, validated (ParameterError)."""
        return resolve_ar_params(self.config.generation, self.config.card, max_duration=self.max_duration,
                                 **overrides)

    def generate_tokens(self, descriptions, *, seed: int | list[int] | None = None,
                        prompt: torch.Tensor | None = None, duration: float | None = None,
                        use_sampling: bool | None = None, temperature: float | None = None,
                        top_k: int | None = None, top_p: float | None = None, cfg_coef: float | None = None,
                        two_step_cfg: bool | None = None, progress: bool = False,
                        generator: torch.Generator | None = None, max_batch: int | None = None,
                        batch_invariant: bool = False, extend_stride: float | None = None,
                        callback=None) -> torch.Tensor:
        """Generate codec tokens [B, n_q, frames], frames = int(duration * frame_rate) (the prompt included,
        as audiocraft's ``max_gen_len``). None means the model's default (config.json: audiocraft's
        ``MusicGen.set_generation_params`` values, duration 15 s or the model's maximum if shorter).

        seed: a private generator seeded with it (same stream as ``torch.manual_seed(seed)`` before
        audiocraft's ``generate``); a list gives one stream per row. prompt: tokens [B, n_q, P] to continue
        (P < frames). two_step_cfg: audiocraft's two forwards per step; like audiocraft it then guides with
        the model's own coefficient (``config.lm_cfg_coef``), not ``cfg_coef``. batch_invariant: each row
        decoded alone from its own stream (seed + i, or seed[i]): a row's tokens depend only on its text and
        seed. max_batch: decode at most this many rows at once (see MagnetFast.generate_tokens).
        callback(done, total): called after every autoregressive step (total: the steps of this window).

        Long-form: a ``duration`` over the model's window (``max_duration``, 30 s released) generates in
        windows: each further window continues the last ``window - extend_stride`` seconds (default stride
        18 s, audiocraft's), and the output is cut to round(duration * frame_rate) frames (longform.py).
        """
        return self.run(self.request(
            descriptions, seed=seed, prompt=prompt, duration=duration, use_sampling=use_sampling,
            temperature=temperature, top_k=top_k, top_p=top_p, cfg_coef=cfg_coef, two_step_cfg=two_step_cfg,
            progress=progress, generator=generator, max_batch=max_batch, batch_invariant=batch_invariant,
            extend_stride=extend_stride, callback=callback))

    def request(self, descriptions, *, seed=None, prompt=None, duration=None, progress: bool = False,
                generator=None, max_batch=None, batch_invariant: bool = False, extend_stride=None,
                callback=None, **sampling) -> Request:
        """``generate_tokens``' keywords -> a validated ``Request`` (every check before any work);
        ``sampling``: the ``ARParams`` overrides (use_sampling, temperature, top_k, top_p, cfg_coef,
        two_step_cfg)."""
        check_descriptions(descriptions)
        from magnet_fast.engines.inputs import plain_number  # np.float32 durations like np.float64
        duration, extend_stride = plain_number(duration), plain_number(extend_stride)
        if callback is not None and not callable(callback):
            raise ParameterError("callback must be callable (done, total) or None")
        long = long_form_plan(self.config, duration, extend_stride)
        params = self.params(duration=self.max_duration if long else duration, **sampling)
        frames = int(params.duration * self.frame_rate)
        if frames < 1:
            raise ParameterError(f"duration {params.duration} s is less than one frame at {self.frame_rate} Hz")
        return self._request(descriptions, params, frames, prompt=prompt, seed=seed, generator=generator,
                             batch_invariant=batch_invariant, max_batch=max_batch, progress=progress,
                             callback=callback, long=long)

    # ----------------------------------------------------------------------------------- window hooks
    def _chunk_size(self, req: Request) -> int | None:
        return 1 if req.batch_invariant else req.max_batch     # one row at a time: nothing depends on batch mates

    def _prepare(self, req: Request, texts: list):
        cond, _ = self.conditioning(texts)
        kv_split = None
        with torch.inference_mode():
            kv = self.lm.cross_kv(cond)
            if req.params.two_step_cfg:
                c, n = encode_condition_apart(self.text, self.lm, texts)
                kv_split = (self.lm.cross_kv(c), self.lm.cross_kv(n))
        return kv, kv_split

    def _decode_window(self, req: Request, ctx, texts: list, prompt, generator, progress: Progress):
        kv, kv_split = ctx
        if isinstance(generator, list) and len(generator) == 1:
            generator = generator[0]
        exact = self.lm.attention_backend == "exact"
        static = self.device.type == "cuda" and not exact
        n_prompt = 0 if prompt is None else prompt.shape[-1]
        progress.expect(req.frames + self.config.max_delay + 1 - first_step(n_prompt, self.config.delays))
        graphs = None
        if static and self.cuda_graphs:
            key = ARDecoder.make_key(self.lm, len(texts), req.frames, kv[0][0].shape[-2], req.params, n_prompt,
                                     True, None)
            # AR decoding records on a shape's first call under 'auto' too: one recorded step serves every
            # position, so recording costs one step, while an eager first call runs every step's launches
            graphs = self.decoders.mode_for(key, True, "cuda")
        cache = self.decoders if graphs is not None else None
        return decode_ar(self.lm, kv, len(texts), req.frames, req.params, prompt=prompt, generator=generator,
                         callback=progress.step, static=static, null_skip=not exact, graphs=graphs, cache=cache,
                         kv_split=kv_split, two_step_coef=self.config.lm_cfg_coef)
