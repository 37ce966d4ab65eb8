"""``POST /v1/edit`` without the web framework: the multipart body parsed in memory, the request checked before
it is queued (the checks ``magnet-fast edit`` runs, with the engine's own messages), and the edit run on the
model's worker thread, alone (``EditRequest.execute``; the worker serialises it with generation batches).

A response is byte-identical to ``magnet-fast edit IN.wav --start S --end E "text" --seed N`` with the same
model and flags: the upload is decoded by the same reader (libsndfile, float32) and goes through the same
``MagnetFast.edit`` call (not batch-invariant: a lone row, like the CLI) and the same WAV writer.
Nothing is written to disk: the upload and the result stay in memory.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from typing import Any

from magnet_fast.errors import MagnetFastError, ParameterError
from magnet_fast.serve.scheduler import Request, Result, check_request

MAX_UPLOAD = 32 * 1024 * 1024          # bytes of a /v1/edit multipart body (the WAV and the JSON)
EDIT_BODY_KEYS = ("model", "text", "seed", "format", "start", "end", "ranges", "crossfade")
AUDIO_FIELD, PARAMS_FIELD = "audio", "params"


class MissingExtra(MagnetFastError):
    """A package of the serve extra is not installed (HTTP 500 with the install line)."""


# ----------------------------------------------------------------------------------------- the body
def parse_form(body: bytes, content_type: str | None) -> dict[str, bytes]:
    """A multipart/form-data body -> {field name: its bytes}, parsed in memory (python-multipart's
    streaming parser; no temporary files). ParameterError when it is not well-formed multipart."""
    try:
        from python_multipart.multipart import MultipartParser, parse_options_header
    except ImportError:
        try:                                             # python-multipart < 0.0.13
            from multipart.multipart import MultipartParser, parse_options_header
        except ImportError:
            raise MissingExtra("POST /v1/edit needs python-multipart (the serve extra): "
                               "pip install -e \".[serve]\"") from None
    ctype, options = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data" or not options.get(b"boundary"):
        raise ParameterError("POST /v1/edit takes multipart/form-data: an 'audio' file (WAV) and a 'params' "
                             "field (JSON), e.g. curl -F audio=@in.wav -F 'params={...}'")
    fields: dict[str, bytes] = {}
    part: dict[str, Any] = {}
    header: list[bytes] = [b"", b""]
    done = []

    def on_part_begin():
        part.clear()
        part.update(headers={}, data=[])

    def on_header_field(data, start, end):
        header[0] += data[start:end]

    def on_header_value(data, start, end):
        header[1] += data[start:end]

    def on_header_end():
        part["headers"][header[0].strip().lower()] = header[1].strip()
        header[0], header[1] = b"", b""

    def on_part_data(data, start, end):
        part["data"].append(bytes(data[start:end]))

    def on_part_end():
        disposition, opts = parse_options_header(part["headers"].get(b"content-disposition", b""))
        name = opts.get(b"name")
        if disposition != b"form-data" or name is None:
            raise ParameterError("a multipart part has no Content-Disposition: form-data; name=...")
        name = name.decode("utf-8", "replace")
        if name in fields:
            raise ParameterError(f"the form field {name!r} is given twice")
        fields[name] = b"".join(part["data"])

    parser = MultipartParser(options[b"boundary"], {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_part_data": on_part_data, "on_part_end": on_part_end,
        "on_end": lambda: done.append(True)})
    try:
        parser.write(body)
        parser.finalize()
    except ParameterError:
        raise
    except Exception as e:  # noqa: BLE001 - python-multipart's parse errors (their classes vary by version)
        raise ParameterError(f"the multipart body is malformed ({e})") from None
    if not done:
        raise ParameterError("the multipart body is cut short (no closing boundary)")
    return fields


def form_fields(fields: dict[str, bytes]) -> tuple[dict, bytes]:
    """{name: bytes} -> (the decoded 'params' JSON object, the 'audio' bytes); ParameterError otherwise."""
    extra = sorted(set(fields) - {AUDIO_FIELD, PARAMS_FIELD})
    if extra:
        raise ParameterError(f"unknown form field(s) {', '.join(map(repr, extra))}; POST /v1/edit takes "
                             f"'{AUDIO_FIELD}' (a WAV file) and '{PARAMS_FIELD}' (JSON)")
    if AUDIO_FIELD not in fields or not fields[AUDIO_FIELD]:
        raise ParameterError(f"missing '{AUDIO_FIELD}': the WAV file to edit (curl -F audio=@in.wav)")
    raw = fields.get(PARAMS_FIELD)
    if raw is None:
        raise ParameterError(f"missing '{PARAMS_FIELD}': a JSON object with start, end (or ranges), text, seed, ...")
    try:
        params = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ParameterError(f"the '{PARAMS_FIELD}' field is not valid JSON ({getattr(e, 'msg', e)})") from None
    if not isinstance(params, dict):
        raise ParameterError(f"the '{PARAMS_FIELD}' field must be a JSON object, got {type(params).__name__}")
    return params, fields[AUDIO_FIELD]


# ----------------------------------------------------------------------------------------- the request
@dataclass(eq=False)
class EditRequest(Request):
    """An edit in a model's queue: it never shares a batch; the worker calls ``execute`` on its thread."""
    audio: bytes = b""
    start: float | None = None
    end: float | None = None
    ranges: list | None = None
    crossfade: float = 0.05

    @property
    def key(self) -> str:
        return f"edit\n{id(self)}"                      # equal to no other request's key: a batch of one

    def read(self):
        """The upload -> ([C, S] float32, sample rate), decoded like ``read_audio`` decodes a file."""
        import numpy as np
        import soundfile as sf
        import torch
        try:
            data, rate = sf.read(io.BytesIO(self.audio), dtype="float32", always_2d=True)
        except (RuntimeError, sf.LibsndfileError, TypeError) as e:
            raise ParameterError(f"the uploaded audio is not readable audio ({e}); send a WAV file") from None
        return torch.from_numpy(np.ascontiguousarray(data.T)), int(rate)

    def execute(self, engine) -> Result:
        """Run the edit on ``engine`` (the worker's thread) -> Result 200 with WAV bytes or tokens."""
        wav, rate = self.read()
        kw = dict(seed=self.seed, ranges=self.ranges, **self.params)
        if self.format == "tokens":
            from magnet_fast.engines.editing import read_input
            audio, audio_rate = read_input(engine, wav, rate)
            tokens = engine.edit_tokens(engine.encode(audio, audio_rate), self.start, self.end, self.text, **kw)
            return Result(200, tokens=tokens[0].tolist(), audio_s=tokens.shape[-1] / engine.frame_rate)
        from magnet_fast.io.audio import wav_bytes
        out = engine.edit(wav, self.start, self.end, self.text, sample_rate=rate, crossfade=self.crossfade, **kw)
        data, clipped = wav_bytes(out[0], engine.sample_rate)      # the CLI's writer: write_wav(out, wav[0], rate)
        return Result(200, wav=data, clipped=clipped, audio_s=out.shape[-1] / engine.sample_rate)


def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParameterError(f"\"{name}\" must be a finite number of seconds, got {value!r}")
    return float(value)


def check_edit(params: dict, audio: bytes, engines: dict, *, default_model: str | None = None) -> EditRequest:
    """The 'params' JSON and the audio bytes -> an ``EditRequest``, checked before any work (model kind,
    sampling parameters, the audio's header, the ranges against its length, crossfade), or ParameterError
    with a one-line message: the checks and messages of ``magnet-fast edit`` and ``MagnetFast.edit``."""
    import soundfile as sf

    from magnet_fast.checks import MAX_RATE, MIN_RATE
    from magnet_fast.engines.editing import EDIT_MAX_SECONDS, SAMPLING_KEYS, frame_ranges
    from magnet_fast.params import output_frames
    name = params.get("model", default_model)
    if isinstance(name, str) and name in engines and engines[name].config.kind != "magnet":
        kind = engines[name].config.kind
        raise ParameterError(f"edit needs a MAGNeT model (masked decoding fills a range from both sides); {name} is "
                             f"a {kind} model with no masked decoding, which can only continue a prompt")
    # model, text, seed and format: the checks of /v1/generate (a lone row's seed, the same bounds)
    base = {k: params[k] for k in ("model", "text", "seed", "format") if k in params}
    base.setdefault("text", None)
    req = check_request(base, engines, default_model=default_model)
    engine = engines[req.model]
    allowed = set(SAMPLING_KEYS)
    sampling = {k: v for k, v in params.items() if k not in EDIT_BODY_KEYS}
    unknown = sorted(set(sampling) - allowed)
    if unknown:
        raise ParameterError(f"unknown parameter(s) {', '.join(map(repr, unknown))} for an edit; it takes "
                             f"{', '.join(EDIT_BODY_KEYS + tuple(sorted(allowed)))}")
    sampling = {k: v for k, v in sampling.items() if v is not None}
    for k in ("decoding_steps",):                         # JSON lists -> the tuples the API takes
        if isinstance(sampling.get(k), list):
            sampling[k] = tuple(sampling[k])
    p = engine.params(**sampling)                         # the engine's own validation and messages
    crossfade = _number(params.get("crossfade", 0.05), "crossfade")
    if crossfade < 0:
        raise ParameterError(f"crossfade must be >= 0 seconds, got {crossfade:g}")
    try:
        info = sf.info(io.BytesIO(audio))
    except (RuntimeError, sf.LibsndfileError, TypeError) as e:
        raise ParameterError(f"the uploaded audio is not readable audio ({e}); send a WAV file") from None
    if not MIN_RATE <= info.samplerate <= MAX_RATE:
        raise ParameterError(f"the uploaded audio says {info.samplerate} Hz in its header; rates in "
                             f"{MIN_RATE}..{MAX_RATE} Hz are accepted: resample it first")
    seconds = info.frames / info.samplerate
    if seconds <= 0:
        raise ParameterError("the uploaded audio is empty")
    if seconds > EDIT_MAX_SECONDS:
        raise ParameterError(f"input audio is {seconds:.1f} s; editing takes at most {EDIT_MAX_SECONDS:g} s: "
                             "cut it first")
    start, end, ranges = params.get("start"), params.get("end"), params.get("ranges")
    frames = math.ceil(seconds * engine.frame_rate)
    rows = frame_ranges(start, end, ranges, 1, frames, engine.frame_rate, engine.config.span_len)
    window = output_frames(engine.frames, engine.config.span_len, p.span_arrangement)
    for a, e in rows[0]:
        if e - a > window:
            raise ParameterError(f"range {a / engine.frame_rate:g}-{e / engine.frame_rate:g} s is longer than the "
                                 f"model's window ({window / engine.frame_rate:g} s); edit it in parts")
    return EditRequest(req.model, req.text, req.seed, sampling, req.format, seed_drawn=req.seed_drawn,
                       audio=audio, start=start, end=end, ranges=ranges, crossfade=crossfade)


__all__ = ["MAX_UPLOAD", "EditRequest", "MissingExtra", "check_edit", "form_fields", "parse_form"]
