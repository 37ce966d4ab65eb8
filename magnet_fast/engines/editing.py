"""Music editing with MAGNeT's masked decoding: regenerate time ranges (inpainting), variations, and seamless
loops (docs/editing.md).

Everything here is one mechanism of the Decoder (generate.py): **kept frames**. A call builds, per row,
``known`` [B, n_q, T] tokens and a ``source`` [B, T] index (frame f takes its token from itself: decoded;
from ``known``: kept; from another frame: a copy) plus a schedule ``(region units, start timestep)``:

- an edit keeps every frame outside its ranges; the cosine schedule runs over the region's unit count
  (spans for 'nonoverlap', frames for 'stride1'); a prefix prompt is the range [P, T) (the same tokens as
  ``generate_tokens(prompt=...)``), the whole clip is a plain generation (the same tokens, same stream);
- a variation re-masks ``round``-ed ``strength`` of the spans (a seeded draw) on every codebook and starts
  MAGNeT's schedule at the masking rate ``strength`` (timestep acos(strength) * 2 / pi);
- a loop (LoopGen, arXiv 2504.04466: the method is theirs, this code is ours) decodes a tile of the
  requested length inside padding that, before and after every step, holds copies of the tile wrapped
  around (left: its end, right: its start), so the tile's end is decoded next to its own start.

Audio edits encode with the model's codec, edit the tokens, decode, and splice the result into the input
with an equal-power crossfade: samples outside [start - crossfade, end + crossfade] are the input's.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch

from magnet_fast.checks import check_descriptions
from magnet_fast.engines.inputs import check_flag, check_generator, check_token_tensor
from magnet_fast.errors import ParameterError
from magnet_fast.params import output_frames

EDIT_MAX_SECONDS = 600.0          # the longest input an audio edit/variation accepts (checked from the header)
LOOP_MIN_PAD_S = 0.5              # a loop needs at least this much wrapped context on each side (seconds)

SAMPLING_KEYS = ("decoding_steps", "temperature", "top_p", "top_k", "use_sampling", "max_cfg_coef",
                 "min_cfg_coef", "span_arrangement", "span_scoring", "anneal_temp")


# ------------------------------------------------------------------------------------------- inputs
def check_tokens(model, tokens) -> torch.Tensor:
    """Codec tokens [B, n_q, T] (integer, values in [0, card)) -> long tensor on the model's device."""
    cfg = model.config
    check_token_tensor(tokens, "tokens", f"[B, {cfg.n_q}, T]")
    b, k, t = tokens.shape
    if b < 1 or k != cfg.n_q or t < 1:
        raise ParameterError(f"tokens have shape {list(tokens.shape)}; expected [B, {cfg.n_q}, T] with B, T >= 1")
    tokens = tokens.to(dtype=torch.long)
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= cfg.card:
        raise ParameterError(f"tokens must be in [0, {cfg.card}), got values in [{lo}, {hi}]")
    return tokens.to(model.device)


def _descriptions(descriptions, batch: int) -> list[str | None]:
    if descriptions is None or isinstance(descriptions, str):
        descriptions = [descriptions] * batch
    descriptions = check_descriptions(descriptions)
    if len(descriptions) != batch:
        raise ParameterError(f"{len(descriptions)} descriptions for {batch} rows: pass one per row, one text, or None")
    return descriptions


def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParameterError(f"{name} must be a finite number of seconds, got {value!r}")
    return float(value)


def frame_ranges(start, end, ranges, batch: int, frames: int, frame_rate: int, span_len: int
                 ) -> list[list[tuple[int, int]]]:
    """(start, end) seconds or ``ranges`` -> per row, sorted frame ranges [round(s * rate), round(e * rate)),
    validated: inside the clip, start < end, at least one span long, not overlapping. ``ranges``: a list of
    (start, end) pairs for every row, or one such list per row."""
    if ranges is None:
        if start is None or end is None:
            raise ParameterError("pass start and end (seconds), or ranges=[(start, end), ...]")
        ranges = [(start, end)]
    elif start is not None or end is not None:
        raise ParameterError("pass start/end or ranges, not both")
    if not isinstance(ranges, (list, tuple)) or not ranges:
        raise ParameterError("ranges must be a non-empty list of (start, end) pairs in seconds")
    per_row = all(isinstance(r, (list, tuple)) and r and all(isinstance(x, (list, tuple)) for x in r)
                  for r in ranges)
    rows = list(ranges) if per_row else [ranges] * batch
    if len(rows) != batch:
        raise ParameterError(f"ranges has {len(rows)} rows of ranges for {batch} rows of tokens")
    clip_s = frames / frame_rate
    out = []
    for row in rows:
        spans = []
        for pair in row:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ParameterError(f"a range must be a (start, end) pair in seconds, got {pair!r}")
            s, e = _number(pair[0], "start"), _number(pair[1], "end")
            if s >= e:
                raise ParameterError(f"range start {s:g} s must be before its end {e:g} s")
            if s < 0 or e > clip_s + 0.5 / frame_rate:
                raise ParameterError(f"range {s:g}-{e:g} s lies outside the audio (0-{clip_s:g} s)")
            a, b = round(s * frame_rate), min(round(e * frame_rate), frames)
            if b - a < span_len:
                raise ParameterError(f"range {s:g}-{e:g} s covers {max(b - a, 0)} frame(s); a range must cover at "
                                     f"least one span ({span_len} frames = {1000 * span_len / frame_rate:g} ms)")
            spans.append((a, b))
        spans.sort()
        for (a0, b0), (a1, b1) in zip(spans, spans[1:], strict=False):
            if a1 < b0:
                raise ParameterError(f"ranges overlap ({a0 / frame_rate:g}-{b0 / frame_rate:g} s and "
                                     f"{a1 / frame_rate:g}-{b1 / frame_rate:g} s); merge them")
        out.append(spans)
    return out


def check_strength(strength) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 < strength <= 1.0:
        raise ParameterError(f"strength must be a number in (0, 1] (the fraction of spans regenerated), got "
                             f"{strength!r}")
    return float(strength)


# ------------------------------------------------------------------------------------------- masks
def decode_length(frames: int, span_len: int, arrangement: str) -> int:
    """The decoded length for ``frames`` tokens: 'nonoverlap' rounds up to whole spans (the extra frames
    are generated and cut), 'stride1' decodes the frames as they are."""
    return frames + (-frames) % span_len if span_len > 1 and arrangement == "nonoverlap" else frames


def keep_source(kept: torch.Tensor) -> torch.Tensor:
    """Kept frames [B, T] bool -> the Decoder's source index [B, T] (kept frame f: T + f, else f)."""
    t = kept.shape[-1]
    frames = torch.arange(t, device=kept.device).expand_as(kept)
    return torch.where(kept, frames + t, frames)


def region_units(source: torch.Tensor, unit: int) -> torch.Tensor:
    """Per row, the units the schedule runs over: those with at least one decoded frame. [B] long."""
    free = source == torch.arange(source.shape[-1], device=source.device)
    return free.reshape(source.shape[0], -1, unit).any(-1).sum(-1)


def wrap_source(tile: int, pad: int, length: int) -> torch.Tensor:
    """A loop's source index [length]: the tile is frames [pad, pad + tile); frame f (padding included) is
    the tile's frame (f - pad) mod tile, so the left padding holds the tile's end and the right its start."""
    f = torch.arange(length)
    return pad + torch.remainder(f - pad, tile)


def variation_start(strength: float) -> float:
    """The timestep at which MAGNeT's cosine schedule cos(t * pi / 2) masks ``strength`` of the units."""
    return 0.0 if strength >= 1.0 else math.acos(strength) * 2 / math.pi


def variation_steps(decoding_steps, start: float) -> tuple[int, ...]:
    """The steps of each stage left from timestep ``start`` on (the same step density as the full schedule;
    every step when start is 0)."""
    return tuple(n if start == 0.0 else max(1, math.ceil((1 - start) * (n - 1)) + 1) for n in decoding_steps)


# ------------------------------------------------------------------------------------------- decoding
class _Call:
    """One editing call's shared set-up: sampling parameters, random streams, rescoring, progress."""

    def __init__(self, model, descriptions, kw: dict):
        unknown = set(kw) - set(SAMPLING_KEYS) - {"seed", "generator", "batch_invariant", "progress", "callback",
                                                  "rescorer", "rescore_weight", "rescore_temperature"}
        if unknown:
            raise ParameterError(f"unsupported keyword(s) for editing: {', '.join(sorted(unknown))}")
        self.model, self.descriptions = model, descriptions
        self.params = model.params(**{k: kw.get(k) for k in SAMPLING_KEYS})
        callback = kw.get("callback")
        if callback is not None and not callable(callback):
            raise ParameterError("callback must be callable (done, total) or None")
        self.callback, self.progress = callback, bool(kw.get("progress", False))
        self.generator = check_generator(kw.get("generator"), model.device)
        self.batch_invariant = check_flag(kw.get("batch_invariant", False), "batch_invariant")
        fresh = model._seed_streams(kw.get("seed"), self.generator, self.batch_invariant, len(descriptions))
        self.gens = fresh() if fresh is not None else self.generator
        self.rescore = (kw.get("rescorer"), kw.get("rescore_weight", 0.7), kw.get("rescore_temperature", 1.0))

    def generator_for(self, rows: list[int]):
        return [self.gens[i] for i in rows] if isinstance(self.gens, list) else self.gens

    def run(self, rows: list[int], known, source, schedule, params=None, on_step=None) -> torch.Tensor:
        """Decode rows ``rows`` with kept frames (known [b, K, t], source [b, t]) -> tokens [b, K, t]."""
        from magnet_fast.decoding.magnet import decode
        from magnet_fast.engines.pairing import Rescoring
        from magnet_fast.engines.request import Progress
        model, params = self.model, params or self.params
        descriptions = [self.descriptions[i] for i in rows]
        cond, cross_lengths = model.conditioning(descriptions, self.batch_invariant)
        with torch.inference_mode():
            kv = model.lm.cross_kv(cond)
        rescore = None
        if self.rescore[0] is not None:
            rescoring = Rescoring(model, *self.rescore, params.decoding_steps)
            if rescoring.active:
                rescore = rescoring.prepare(descriptions, self.batch_invariant)
        with Progress(self.progress, self.callback, sum(params.decoding_steps), desc="editing") as progress:
            out = decode(model.lm, kv, len(rows), known.shape[-1], params, generator=self.generator_for(rows),
                         cross_lengths=cross_lengths, sampler=model.sampler, callback=progress.step,
                         on_step=on_step, rescore=rescore, kept=(known, source), schedule=schedule)
        if bool((out == model.lm.mask_id).any()):           # every decoded frame must have been sampled
            raise RuntimeError("internal error: a masked frame was left undecoded (please report)")
        return out


def _arrangement_unit(model, params) -> int:
    from magnet_fast.decoding.spans import make_arrangement
    return make_arrangement(model.config.span_len, params.span_arrangement).unit


def _fill(call: _Call, rows: list[int], tokens: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Regenerate the frames of ``tokens`` [b, K, T] not ``kept`` [b, T] -> [b, K, T]; kept frames bit for bit.
    Rows whose regions have different unit counts decode as separate groups (one schedule per decode)."""
    model, params = call.model, call.params
    span, unit = model.config.span_len, _arrangement_unit(model, params)
    t = decode_length(tokens.shape[-1], span, params.span_arrangement)
    pad = t - tokens.shape[-1]
    known = torch.nn.functional.pad(tokens, (0, pad))
    kept = torch.nn.functional.pad(kept, (0, pad), value=False)         # rounding frames are decoded, then cut
    source = keep_source(kept)
    counts = region_units(source, unit).tolist()
    out = torch.empty_like(known)
    for count in sorted(set(counts), key=counts.index):
        group = [i for i, c in enumerate(counts) if c == count]
        idx = torch.tensor(group, device=known.device)
        out[idx] = call.run([rows[i] for i in group], known[idx], source[idx], (count, 0.0))
    out = out[..., : tokens.shape[-1]]
    return torch.where(kept[:, None, : tokens.shape[-1]], tokens, out)    # (a no-op: kept frames are kept)


def edit_tokens(model, tokens, start=None, end=None, descriptions=None, *, ranges=None, **kw) -> torch.Tensor:
    """``MagnetFast.edit_tokens``: regenerate frames [round(start * rate), round(end * rate)) (or each of
    ``ranges``) of every codebook, conditioned on the text and the kept frames on both sides. Inputs longer
    than the model's window are edited inside a window around each group of ranges."""
    tokens = check_tokens(model, tokens)
    b, _, total = tokens.shape
    descriptions = _descriptions(descriptions, b)
    call = _Call(model, descriptions, kw)
    rate, span = model.frame_rate, model.config.span_len
    rows = frame_ranges(start, end, ranges, b, total, rate, span)
    window = output_frames(model.frames, span, call.params.span_arrangement)
    kept = torch.ones(b, total, dtype=torch.bool, device=tokens.device)
    for i, spans in enumerate(rows):
        for a, e in spans:
            if e - a > window:
                raise ParameterError(f"range {a / rate:g}-{e / rate:g} s is longer than the model's window "
                                     f"({window / rate:g} s); edit it in parts")
            kept[i, a:e] = False
    if total <= window:
        return _fill(call, list(range(b)), tokens, kept)
    out = tokens.clone()                 # long input: each row's ranges, grouped into windows, in time order
    for i, spans in enumerate(rows):
        groups: list[list[tuple[int, int]]] = []
        for a, e in spans:
            if groups and e - groups[-1][0][0] <= window:
                groups[-1].append((a, e))
            else:
                groups.append([(a, e)])
        for group in groups:
            lo, hi = group[0][0], group[-1][1]
            w0 = min(max(0, (lo + hi) // 2 - window // 2), total - window)
            part = _fill(call, [i], out[i: i + 1, :, w0: w0 + window], kept[i: i + 1, w0: w0 + window])
            out[i, :, w0: w0 + window] = part[0]
    return out


def vary_tokens(model, tokens, strength, descriptions=None, **kw) -> torch.Tensor:
    """``MagnetFast.vary_tokens``: re-mask ``strength`` of the spans (a seeded draw, the same spans on every
    codebook) and decode them with MAGNeT's schedule started at that masking rate; strength=1 is a fresh
    generation (the same tokens as ``generate_tokens`` with the same seed)."""
    tokens = check_tokens(model, tokens)
    strength = check_strength(strength)
    b, _, total = tokens.shape
    descriptions = _descriptions(descriptions, b)
    call = _Call(model, descriptions, kw)
    params, span = call.params, model.config.span_len
    window = output_frames(model.frames, span, params.span_arrangement)
    if total > window:
        raise ParameterError(f"tokens are {total} frames; a variation works on at most the model's window "
                             f"({window} frames = {window / model.frame_rate:g} s): vary a part")
    unit = _arrangement_unit(model, params)
    t = decode_length(total, span, params.span_arrangement)
    n_spans = -(-t // span)
    chosen = max(1, round(strength * n_spans))
    start = variation_start(strength)
    params = replace(params, decoding_steps=variation_steps(params.decoding_steps, start))
    kept = torch.ones(b, n_spans, dtype=torch.bool, device=tokens.device)
    if chosen < n_spans:                                   # the spans to regenerate: a draw of the call's stream
        for i in range(b):
            g = call.gens[i] if isinstance(call.gens, list) else call.gens
            order = torch.randperm(n_spans, generator=g, device=g.device if g is not None else tokens.device)
            kept[i, order[:chosen].to(tokens.device)] = False
    else:
        kept.zero_()
    kept = kept.repeat_interleave(span, dim=-1)[:, :t]
    kept[:, total:] = False
    known = torch.nn.functional.pad(tokens, (0, t - total))
    source = keep_source(kept)
    needed = int(region_units(source, unit).max())          # the region's units (a partial last span included)
    n_units = t // unit                   # the schedule's units: its first step must mask the whole region
    while _first_count(params, n_units, start) < needed:
        n_units += 1
    out = call.run(list(range(b)), known, source, (n_units, start), params=params)[..., :total]
    return torch.where(kept[:, None, :total], tokens, out)


def loop_geometry(cfg, arrangement: str, duration) -> tuple[int, int]:
    """(tile frames, padding frames each side) of a loop of ``duration`` seconds (None: half the window) in
    the model's window; ParameterError when it leaves less than LOOP_MIN_PAD_S of wrapped context a side."""
    rate, span = cfg.frame_rate, cfg.span_len
    window = output_frames(cfg.frames, span, arrangement)
    min_pad = max(span, math.ceil(LOOP_MIN_PAD_S * rate / span) * span)
    seconds = cfg.segment_duration / 2 if duration is None else _number(duration, "duration")
    tile = round(seconds * rate)
    if tile < span or tile > window - 2 * min_pad:
        raise ParameterError(f"a loop's duration must be in {span / rate:g}..{(window - 2 * min_pad) / rate:g} s "
                             f"for this model ({cfg.segment_duration:g} s window, {min_pad / rate:g} s of wrapped "
                             f"context each side), got {seconds:g}")
    return tile, (window - tile) // 2 // span * span


def _first_count(params, n_units: int, start: float) -> int:
    from magnet_fast.decoding.schedule import stage_steps
    return stage_steps(0, params.decoding_steps[0], n_units, start=start, temperature=1.0, anneal_temp=False,
                       max_cfg_coef=1.0, min_cfg_coef=1.0)[0].num_masked


def loop_tokens(model, descriptions, *, loop=True, duration=None, on_step=None, **kw) -> torch.Tensor:
    """``generate_tokens(..., loop=True)``: a loop of ``duration`` seconds (default: half the model's window)
    by LoopGen's circular padding. Returns [B, n_q, round(duration * rate)] tokens. on_step: the Decoder's
    observation hook (tests)."""
    if loop is not True:
        raise ParameterError(f"loop must be True or False, got {loop!r}")
    from magnet_fast.engines.inputs import check_max_batch
    max_batch = check_max_batch(kw.pop("max_batch", None))
    for name in ("prompt", "hybrid", "extend_stride"):
        if kw.pop(name, None) is not None:
            raise ParameterError(f"loop=True does not combine with {name}")
    kw.pop("hybrid_seconds", None)
    kw.pop("hybrid_params", None)
    descriptions = check_descriptions(descriptions)
    call = _Call(model, descriptions, kw)
    params, span = call.params, model.config.span_len
    tile, pad = loop_geometry(model.config, params.span_arrangement, duration)
    length = decode_length(tile + 2 * pad, span, params.span_arrangement)
    b = len(descriptions)
    source = wrap_source(tile, pad, length).to(model.device).expand(b, length).contiguous()
    known = torch.zeros(b, model.config.n_q, length, dtype=torch.long, device=model.device)
    count = int(region_units(source[:1], _arrangement_unit(model, params))[0])
    size = max_batch or b                 # chunks of max_batch rows, the call's stream(s) continued across them
    out = torch.cat([call.run(list(range(i, min(b, i + size))), known[i: i + size], source[i: i + size],
                              (count, 0.0), on_step=on_step) for i in range(0, b, size)])
    return out[..., pad: pad + tile]


def loop_audio(model, tokens: torch.Tensor, context: int | None = None) -> torch.Tensor:
    """Decode a loop's tokens [B, K, T] with the codec seeing the loop wrapped around on both sides (``context``
    frames, default 25), cropped to the loop: T * hop samples that join their own start."""
    t = tokens.shape[-1]
    context = model.frame_rate // 2 if context is None else context
    idx = torch.remainder(torch.arange(-context, t + context, device=tokens.device), t)
    wav = model.decode(tokens[..., idx])
    hop = wav.shape[-1] // (t + 2 * context)
    return wav[..., context * hop: (context + t) * hop]


# ------------------------------------------------------------------------------------------- seam metric
@torch.inference_mode()
def seam_perplexity(model, tokens: torch.Tensor, descriptions=None, width: int = 6) -> torch.Tensor:
    """LoopGen's seam metric, our implementation: rotate the loop [B, K, T] by half its length (the wrap
    point lands in the middle), mask ``width`` frames each side of it in one codebook at a time (the later
    codebooks masked, the earlier ones given: MAGNeT's stage view) and return, per row, the model's token
    perplexity exp(mean -log p) of the true tokens there (conditional logits). Lower: a smoother seam."""
    tokens = check_tokens(model, tokens)
    b, k, t = tokens.shape
    if not 0 < width <= t // 2:
        raise ParameterError(f"width must be in 1..{t // 2} frames, got {width}")
    descriptions = _descriptions(descriptions, b)
    rolled = torch.roll(tokens, t // 2, dims=-1)           # frame t - 1 (the end) now sits before frame 0
    mid = t - t // 2                                         # the wrap point: between mid - 1 and mid
    lo, hi = mid - width, mid + width
    kv = model.lm.cross_kv(model.condition(descriptions))
    nll = torch.zeros(b, device=tokens.device)
    for stage in range(k):
        seq = rolled.clone()
        seq[:, stage, lo:hi] = model.lm.mask_id
        seq[:, stage + 1:] = model.lm.mask_id
        cond, _ = model.lm.guided_logits(seq.repeat(2, 1, 1), kv, stage)
        logp = torch.log_softmax(cond[:, lo:hi].float(), dim=-1)
        nll += -logp.gather(-1, rolled[:, stage, lo:hi, None])[..., 0].mean(-1)
    return torch.exp(nll / k)


# ------------------------------------------------------------------------------------------- audio
def read_input(model, audio, sample_rate) -> tuple[torch.Tensor, int]:
    """An edit's input audio (path, or tensor [S] / [C, S] / [B, C, S] with ``sample_rate``) -> ([B, C, S]
    float32 at the model's sample rate and channels, that rate). Longer than EDIT_MAX_SECONDS: refused from
    the header, before any sample is decoded."""
    from magnet_fast.io.audio import audio_info, read_audio
    if isinstance(audio, (str, Path)):
        info = audio_info(audio)
        if info.samplerate > 0 and info.frames / info.samplerate > EDIT_MAX_SECONDS:
            raise ParameterError(f"input audio is {info.frames / info.samplerate:.1f} s; editing takes at most "
                                 f"{EDIT_MAX_SECONDS:g} s: cut it first")
        wav, sample_rate = read_audio(audio)
    elif isinstance(audio, torch.Tensor):
        if sample_rate is None:
            raise ParameterError("a tensor audio input needs sample_rate")
        wav = audio
    else:
        raise ParameterError("audio must be a file path or a tensor of samples")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 1:
        raise ParameterError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    if not isinstance(wav, torch.Tensor) or not wav.is_floating_point() or not 1 <= wav.dim() <= 3 or wav.numel() == 0:
        raise ParameterError("audio must be a non-empty floating-point tensor [S], [C, S] or [B, C, S]")
    if wav.shape[-1] / sample_rate > EDIT_MAX_SECONDS:
        raise ParameterError(f"input audio is {wav.shape[-1] / sample_rate:.1f} s; editing takes at most "
                             f"{EDIT_MAX_SECONDS:g} s: cut it first")
    codec = model.load_codec()
    return codec.convert_audio(wav, sample_rate), codec.sample_rate     # resampled / channel-mixed


def equal_power_splice(original: torch.Tensor, edited: torch.Tensor, bounds: list[tuple[int, int]],
                       fade: int) -> torch.Tensor:
    """original / edited [C, S] -> [C, S]: ``edited`` inside each [a, b) of ``bounds`` (sample indices), the
    original elsewhere, with an equal-power crossfade (cos / sin gains, squares summing to 1) over the
    ``fade`` samples before a and after b; samples outside [a - fade, b + fade) are the original's."""
    out = original.clone()
    s, previous = original.shape[-1], 0
    for a, b in sorted(bounds):
        out[..., a:b] = edited[..., a:b]
        for lo, hi, rising in ((max(previous, a - fade), a, True), (b, min(s, b + fade), False)):
            n = hi - lo
            if n <= 0:
                continue
            theta = (torch.arange(n, dtype=torch.float64, device=original.device) + 0.5) / fade * (math.pi / 2)
            if rising:
                theta = theta + (fade - n) / fade * (math.pi / 2)      # a fade cut short at its start
            else:
                theta = math.pi / 2 - theta
            gain_in, gain_out = torch.sin(theta).to(original.dtype), torch.cos(theta).to(original.dtype)
            out[..., lo:hi] = edited[..., lo:hi] * gain_in + out[..., lo:hi] * gain_out
        previous = b
    return out


def _audio_call(model, audio, sample_rate, crossfade):
    cf = _number(crossfade, "crossfade")
    if cf < 0:
        raise ParameterError(f"crossfade must be >= 0 seconds, got {cf:g}")
    wav, rate = read_input(model, audio, sample_rate)
    return wav, rate, cf


def _decoded(model, tokens: torch.Tensor, samples: int, original: torch.Tensor) -> torch.Tensor:
    edited = model.decode(tokens)
    if edited.shape[-1] < samples:                       # (never: the codec pads up to whole frames)
        edited = torch.cat([edited, original[..., edited.shape[-1]:]], dim=-1)
    return edited[..., :samples]


def edit(model, audio, start=None, end=None, descriptions=None, *, sample_rate=None, crossfade=0.05, ranges=None,
         **kw) -> torch.Tensor:
    """``MagnetFast.edit``: audio -> audio [B, C, S] at ``model.sample_rate``: encode, ``edit_tokens``, decode,
    splice (equal-power crossfade of ``crossfade`` seconds at each boundary; the input's samples elsewhere)."""
    wav, rate, cf = _audio_call(model, audio, sample_rate, crossfade)
    tokens = model.encode(wav, rate)
    b, _, total = tokens.shape
    rows = frame_ranges(start, end, ranges, b, total, model.frame_rate, model.config.span_len)  # checked first
    per_row = [[(a / model.frame_rate, e / model.frame_rate) for a, e in spans] for spans in rows]
    out_tokens = edit_tokens(model, tokens, None, None, descriptions, ranges=per_row, **kw)
    edited = _decoded(model, out_tokens, wav.shape[-1], wav)
    fade = round(cf * rate)
    hop = rate // model.frame_rate
    return torch.stack([equal_power_splice(wav[i], edited[i], [(a * hop, min(e * hop, wav.shape[-1]))
                                                                for a, e in rows[i]], fade)
                        for i in range(b)])


def vary(model, audio, strength, descriptions=None, *, sample_rate=None, **kw) -> torch.Tensor:
    """``MagnetFast.vary``: audio -> a variation (encode, ``vary_tokens``, decode) [B, C, S]."""
    strength = check_strength(strength)
    wav, rate, _ = _audio_call(model, audio, sample_rate, 0.0)
    tokens = model.encode(wav, rate)
    return _decoded(model, vary_tokens(model, tokens, strength, descriptions, **kw), wav.shape[-1], wav)


__all__ = ["EDIT_MAX_SECONDS", "edit", "edit_tokens", "equal_power_splice", "loop_audio", "loop_tokens",
           "seam_perplexity", "vary", "vary_tokens"]
