"""The HTTP side: ``create_app(models, **settings)`` -> a FastAPI (ASGI) app.

Endpoints: ``POST /v1/generate`` (JSON -> WAV bytes or JSON tokens), ``POST /v1/edit`` (multipart: a WAV and
JSON params -> the edited WAV or tokens; serve/editing.py), ``GET /v1/models``, ``GET /healthz``,
``GET /metrics`` (Prometheus), ``GET /`` (the web page, shipped in ``static/``), OpenAPI at ``/docs``.
Every error is JSON ``{"error": "<one line>", "type": "<exception class>"}`` with its status code:
413 body too large, 422 invalid JSON or parameters (the engine's own message), 429 queue full (with
``Retry-After``), 500 a failed batch (numerics, out of memory), 503 shutting down, 504 timed out.
Models load when the app starts (its lifespan), one worker thread each (``scheduler.ModelWorker``).
"""
from __future__ import annotations

import asyncio
import json
import sys
import time
import warnings
from contextlib import asynccontextmanager
from pathlib import Path

from magnet_fast.errors import MagnetFastError, ParameterError
from magnet_fast.serve.scheduler import (
    FORMATS,
    Closed,
    ModelWorker,
    QueueFull,
    Request,
    Result,
    check_request,
    generation_keywords,
    model_window,
)

try:                                  # FastAPI resolves the endpoint's annotation in this module's globals
    from starlette.requests import Request as HTTPRequest
except ImportError:                   # without the serve extra; create_app says what to install
    HTTPRequest = None

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY = 64 * 1024                  # bytes of a /v1/generate JSON body
DEFAULT_MAX_BATCH = {"cpu": 4, "cuda": 16}
POLL_S = 0.1                          # how often a waiting request checks its client and its deadline


class TooLarge(MagnetFastError):
    """The request body is over the limit (HTTP 413)."""


def _spec_list(models) -> list[tuple[str, object]]:
    """``models`` -> [(name, folder path or loaded engine)]: a folder, an engine, a dict name -> either,
    or a list of folders / (name, folder) pairs. A folder's name is its last path component."""
    from magnet_fast.engines.base import Engine
    if isinstance(models, (str, Path, Engine)):
        models = [models]
    if isinstance(models, dict):
        items = list(models.items())
    elif isinstance(models, (list, tuple)):
        items = []
        for m in models:
            if isinstance(m, tuple) and len(m) == 2:
                items.append(m)
            elif isinstance(m, Engine):
                items.append((Path(m.path).name if m.path is not None else "model", m))
            else:
                items.append((Path(m).name, m))
    else:
        raise ParameterError(f"models must be a folder, an engine or a dict name -> folder/engine, got "
                             f"{type(models).__name__}")
    if not items:
        raise ParameterError("no models to serve")
    names = [n for n, _ in items]
    bad = [n for n in names if not isinstance(n, str) or not n or "\n" in n]
    if bad:
        raise ParameterError(f"model names must be non-empty strings, got {bad[0]!r}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ParameterError(f"model name {dup[0]!r} is given twice; name them: --model NAME=DIR")
    return items


class ServeState:
    """Everything the app holds: settings, the loaded engines and their workers, the metrics."""

    def __init__(self, models, *, max_batch: int | None = None, batch_window_ms: float = 20.0,
                 max_queue: int = 64, timeout: float | None = None, device: str = "cpu", dtype=None,
                 exact: bool = False, t5=None, buckets="auto", max_duration: float | None = None,
                 max_body: int = MAX_BODY, max_upload: int | None = None, log=None):
        from magnet_fast.config import MagnetConfig
        from magnet_fast.engines.inputs import check_device
        self.specs = _spec_list(models)
        self.kinds = {}
        for name, m in self.specs:                # config.json of every folder checked before anything loads
            self.kinds[name] = m.config.kind if hasattr(m, "config") else MagnetConfig.load(Path(m)).kind
        for label, value, lo in (("max_batch", max_batch, 1), ("max_queue", max_queue, 1),
                                 ("max_body", max_body, 1), ("max_upload", max_upload, 1)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < lo):
                raise ParameterError(f"{label} must be an integer >= {lo}, got {value!r}")
        for label, value in (("batch_window_ms", batch_window_ms), ("timeout", timeout),
                             ("max_duration", max_duration)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not value >= 0 or value == float("inf")):
                raise ParameterError(f"{label} must be a finite number >= 0, got {value!r}")
        if timeout is not None and timeout <= 0:
            raise ParameterError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.device = str(check_device(device))
        self.dtype, self.exact, self.t5 = dtype, bool(exact), t5
        self.max_batch = max_batch or DEFAULT_MAX_BATCH["cuda" if self.device.startswith("cuda") else "cpu"]
        self.window_s = batch_window_ms / 1000.0
        self.max_queue, self.timeout, self.max_body = max_queue, timeout, max_body
        if max_upload is None:
            from magnet_fast.serve.editing import MAX_UPLOAD as max_upload
        self.max_upload = max_upload
        # CPU: no graphs to reuse, so padding would only cost compute; CUDA: powers of two (one recording each)
        self.buckets = ("pow2" if self.device.startswith("cuda") else None) if buckets == "auto" else buckets
        self.max_duration_setting = max_duration
        self.log = log or (lambda message: print(f"magnet-fast serve: {message}", file=sys.stderr))
        self.engines: dict = {}
        self.workers: dict[str, ModelWorker] = {}
        self.max_duration: dict[str, float] = {}
        self.metrics = None
        self.started = self.draining = False
        self.default_model = self.specs[0][0]

    # ------------------------------------------------------------------ lifecycle
    def load(self, name: str, spec):
        from magnet_fast.engines.base import Engine
        if isinstance(spec, Engine):
            return spec
        from magnet_fast.engines.registry import ENGINES
        cls = ENGINES[self.kinds[name]].engine()                   # the model's kind decides the engine
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)            # the demo's "untrained weights" notice
            engine = cls.from_pretrained(spec, device=self.device, dtype=self.dtype, t5=self.t5,
                                         attention="exact" if self.exact else None)
        if engine.config.notice:
            self.log(f"{name}: note: {engine.config.notice}")
        return engine

    def start(self) -> None:
        from magnet_fast.serve.metrics import Metrics
        if self.started:
            return
        self.metrics = Metrics(self.max_batch)
        for name, spec in self.specs:
            engine = self.load(name, spec)
            engine.load_codec()                       # a missing codec fails at start, not per request
            self.engines[name] = engine
            self.max_duration[name] = (self.max_duration_setting if self.max_duration_setting is not None
                                       else model_window(engine))
            self.workers[name] = ModelWorker(name, engine, max_batch=self.max_batch, window_s=self.window_s,
                                             max_queue=self.max_queue, buckets=self.buckets,
                                             metrics=self.metrics, log=self.log)
        for w in self.workers.values():
            w.start()
        self.started = True

    def stop(self) -> None:
        self.draining = True
        for w in self.workers.values():
            w.stop()

    # ------------------------------------------------------------------ facts
    def models(self) -> list[dict]:
        out = []
        for name, engine in self.engines.items():
            cfg = engine.config
            out.append({"name": name, "kind": cfg.kind, "engine": type(engine).__name__,
                        "sample_rate": engine.sample_rate, "frame_rate": engine.frame_rate,
                        "channels": getattr(engine.codec, "channels", 1),
                        "window_s": model_window(engine), "max_duration_s": self.max_duration[name],
                        "default_duration_s": (cfg.generation.duration if cfg.kind == "musicgen"
                                               else model_window(engine)),
                        "defaults": _jsonable(cfg.generation), "parameters": sorted(generation_keywords(engine)),
                        "device": str(engine.device), "dtype": str(engine.dtype).replace("torch.", ""),
                        "attention": engine.attention_backend, "notice": cfg.notice,
                        "default": name == self.default_model})
        return out


def _jsonable(params) -> dict:
    from dataclasses import asdict
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(params).items()}


def _error(status: int, message: str, kind: str | None = None, headers: dict | None = None):
    from fastapi.responses import JSONResponse
    return JSONResponse({"error": message, "type": kind}, status_code=status, headers=headers)


def _headers(req: Request, result: Result, latency_s: float) -> dict:
    ms = {"queue": result.queue_s * 1000, "compute": result.compute_s * 1000, "total": latency_s * 1000}
    return {"X-Seed": str(req.seed), "X-Seed-Drawn": "1" if req.seed_drawn else "0", "X-Model": req.model,
            "X-Queue-Ms": f"{ms['queue']:.1f}", "X-Compute-Ms": f"{ms['compute']:.1f}",
            "X-Latency-Ms": f"{ms['total']:.1f}", "X-Batch-Size": str(result.batch),
            "X-Audio-Seconds": f"{result.audio_s:.3f}", "X-Clipped-Samples": str(result.clipped),
            "Server-Timing": ", ".join(f"{k};dur={v:.1f}" for k, v in ms.items())}


async def _read_body(request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise TooLarge(f"request body of {int(length)} bytes is over the {limit}-byte limit")
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise TooLarge(f"request body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


GENERATE_DOC = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["text"],
        "properties": {
            "model": {"type": "string", "description": "a name from GET /v1/models (default: the first)"},
            "text": {"type": ["string", "null"], "description": "the description; null: unconditional"},
            "seed": {"type": "integer", "description": "0 <= seed < 2**63; drawn (and returned in X-Seed) "
                                                      "when missing"},
            "duration": {"type": "number", "description": "seconds"},
            "format": {"type": "string", "enum": list(FORMATS), "default": "wav"}},
        "additionalProperties": {"description": "any generation parameter of the model's generate_tokens "
                                                "(GET /v1/models lists them)"}}}}},
    "responses": {"200": {"description": "16-bit PCM WAV (format=wav) or JSON tokens (format=tokens)",
                          "content": {"audio/wav": {}, "application/json": {}}}},
}


EDIT_DOC = {
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["audio", "params"],
        "properties": {
            "audio": {"type": "string", "format": "binary", "description": "the audio to edit (WAV)"},
            "params": {"type": "string", "description": (
                "JSON: {\"model\", \"start\", \"end\" (seconds) or \"ranges\": [[s, e], ...], \"text\" (null: "
                "unconditional), \"seed\", \"crossfade\" (0.05 s), \"format\": \"wav\"|\"tokens\", and any "
                "sampling keyword of MagnetFast.edit (decoding_steps, temperature, top_p, top_k, ...)}")}}}}}},
    "responses": {"200": {"description": "16-bit PCM WAV (format=wav) or JSON tokens (format=tokens)",
                          "content": {"audio/wav": {}, "application/json": {}}}},
}


def create_app(models, **settings):
    """An ASGI app (FastAPI) serving ``models``: a converted model folder, a loaded engine, or a dict
    name -> folder/engine (MAGNeT and MusicGen kinds; the engine follows config.json's kind).

    settings: max_batch (rows per batch; default 4 on CPU, 16 on CUDA), batch_window_ms (20: how long
    the first request of a batch waits for company), max_queue (64 waiting requests per model, then 429),
    timeout (seconds from arrival; None: no limit; then 504), device, dtype, exact (the parity attention),
    t5 (a T5 folder for folders loaded here), buckets ("auto": powers of two on CUDA, none on CPU; None;
    "pow2"; or sizes), max_duration (seconds a request may ask for; default each model's window, so no
    long-form unless raised), max_body (bytes of a request body, 65536), max_upload (bytes of a /v1/edit
    multipart body: the WAV and its JSON, 32 MiB), log (callable for server lines).
    Folders are checked now and loaded when the app starts (its lifespan: ``with TestClient(app)``,
    uvicorn, Ray Serve)."""
    try:
        from fastapi import FastAPI
        from fastapi.responses import FileResponse, JSONResponse, Response
        from fastapi.staticfiles import StaticFiles
        from starlette.concurrency import run_in_threadpool
    except ImportError as e:
        raise MagnetFastError(f"serving needs the serve extra ({e.name} is missing): pip install -e \".[serve]\"") \
            from None
    state = ServeState(models, **settings)

    @asynccontextmanager
    async def lifespan(app):
        await run_in_threadpool(state.start)
        try:
            yield
        finally:
            await run_in_threadpool(state.stop)

    from magnet_fast.config import VERSION as __version__
    app = FastAPI(title="magnet_fast", version=__version__, lifespan=lifespan,
                  description="MAGNeT / MusicGen generation with dynamic batching (docs/serving.md)")
    app.state.serve = state

    @app.post("/v1/generate", openapi_extra=GENERATE_DOC, summary="text -> WAV (or tokens)")
    async def generate(request: HTTPRequest):
        t0 = time.monotonic()
        model = state.default_model
        try:
            raw = await _read_body(request, state.max_body)
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ParameterError(f"the request body is not valid JSON ({getattr(e, 'msg', e)})") from None
            if isinstance(body, dict) and isinstance(body.get("model"), str) and body["model"] in state.workers:
                model = body["model"]
            if state.draining or not state.started:
                raise Closed("the server is shutting down and takes no new requests")
            req = check_request(body, state.engines, default_model=state.default_model,
                                max_duration=state.max_duration)
        except TooLarge as e:
            state.metrics.request(model, 413)
            return _error(413, str(e), "TooLarge")
        except Closed as e:
            state.metrics.request(model, 503)
            return _error(503, str(e), "Closed")
        except ParameterError as e:
            state.metrics.request(model, 422)
            return _error(422, str(e), type(e).__name__)
        except MagnetFastError as e:                       # e.g. a CheckpointError raised by a check
            state.metrics.request(model, 422)
            return _error(422, str(e).splitlines()[0], type(e).__name__)
        return await _respond(request, req, t0)

    async def _respond(request, req: Request, t0: float):
        """Queue a checked request on its model's worker, wait for it (timeout, disconnect), respond."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def deliver(result: Result) -> None:
            def put():
                if not fut.done():
                    fut.set_result(result)
            try:
                loop.call_soon_threadsafe(put)
            except RuntimeError:                           # the event loop is gone (shutdown)
                pass

        req.on_done = deliver
        req.arrival = t0
        if state.timeout is not None:
            req.deadline = t0 + state.timeout
        worker = state.workers[req.model]
        try:
            worker.submit(req)
        except QueueFull as e:
            state.metrics.request(req.model, 429)
            return _error(429, str(e), "QueueFull", headers={"Retry-After": str(e.retry_after)})
        except Closed as e:
            state.metrics.request(req.model, 503)
            return _error(503, str(e), "Closed")
        while not fut.done():
            budget = POLL_S if req.deadline is None else max(0.0, min(POLL_S, req.deadline - time.monotonic()))
            await asyncio.wait({fut}, timeout=budget)
            if fut.done():
                break
            if req.deadline is not None and time.monotonic() >= req.deadline:
                req.cancelled = True                       # dropped by the worker unless already started
                state.metrics.request(req.model, 504)
                return _error(504, f"timed out after {state.timeout:g} s (magnet-fast serve --timeout)",
                              "Timeout")
            if await request.is_disconnected():
                req.cancelled = True
                state.metrics.request(req.model, 499)
                return Response(status_code=499)
        result: Result = fut.result()
        latency = time.monotonic() - t0
        state.metrics.request(req.model, result.status, latency if result.status == 200 else None)
        if result.status != 200:
            return _error(result.status, result.error or "generation failed", result.error_type)
        headers = _headers(req, result, latency)
        if req.format == "tokens":
            return JSONResponse({"model": req.model, "seed": req.seed, "tokens": result.tokens,
                                 "shape": [len(result.tokens), len(result.tokens[0]) if result.tokens else 0],
                                 "frame_rate": state.engines[req.model].frame_rate}, headers=headers)
        return Response(result.wav, media_type="audio/wav", headers=headers)

    @app.post("/v1/edit", openapi_extra=EDIT_DOC, summary="a WAV + a time range + text -> the edited WAV (or tokens)")
    async def edit(request: HTTPRequest):
        from magnet_fast.serve.editing import MissingExtra, check_edit, form_fields, parse_form
        t0 = time.monotonic()
        model = state.default_model
        try:
            raw = await _read_body(request, state.max_upload)
            params, audio = form_fields(parse_form(raw, request.headers.get("content-type")))
            if isinstance(params.get("model"), str) and params["model"] in state.workers:
                model = params["model"]
            if state.draining or not state.started:
                raise Closed("the server is shutting down and takes no new requests")
            req = await run_in_threadpool(check_edit, params, audio, state.engines,
                                          default_model=state.default_model)
        except TooLarge as e:
            state.metrics.request(model, 413)
            return _error(413, str(e) + " (create_app(max_upload=...))", "TooLarge")
        except Closed as e:
            state.metrics.request(model, 503)
            return _error(503, str(e), "Closed")
        except MissingExtra as e:
            state.metrics.request(model, 500)
            return _error(500, str(e), "MissingExtra")
        except MagnetFastError as e:                       # ParameterError: the engine's own message
            state.metrics.request(model, 422)
            return _error(422, str(e).splitlines()[0], type(e).__name__)
        return await _respond(request, req, t0)

    @app.get("/v1/models", summary="the served models, their defaults and parameters")
    async def models():
        return {"models": state.models(), "max_batch": state.max_batch,
                "batch_window_ms": state.window_s * 1000, "max_queue": state.max_queue, "timeout": state.timeout}

    @app.get("/healthz", summary="200 when every model's worker is running")
    async def healthz():
        workers = {n: {"alive": w.alive, "queue": w.depth(), "busy": w.busy, "batches": w.batches}
                   for n, w in state.workers.items()}
        ok = state.started and not state.draining and all(w["alive"] for w in workers.values())
        status = "ok" if ok else ("draining" if state.draining else "unavailable")
        return JSONResponse({"status": status, "models": workers}, status_code=200 if ok else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics():
        data, content_type = state.metrics.render()
        return Response(data, media_type=content_type)

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
