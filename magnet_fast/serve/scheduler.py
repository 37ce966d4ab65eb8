"""Dynamic batching for the server: one worker thread owns each model, requests wait in a bounded queue,
and compatible requests (same model, same generation parameters) run as one batch.

No web framework here (``app.py`` is the HTTP side), so the scheduler can be driven and tested alone.

- **Batches.** The worker takes the oldest waiting request and every later one with the same parameters,
  up to ``max_batch``; it waits at most ``window_s`` after the oldest one arrived for more to come
  (whichever comes first). Requests with other parameters keep their place in the queue.
- **Per-request determinism.** A batch runs in the engine's batch-invariant mode with one seed per row
  (``generate_tokens(texts, seed=[...], batch_invariant=True)``), and each row's audio is decoded alone
  (a batch of one), so a response depends only on its own text, seed and parameters: it is byte-identical
  to ``magnet-fast generate --seed N`` of the same request (the CLI's single-prompt call draws the same
  stream; tests/serve check it), whatever it was batched with.
- **Buckets.** A batch may be padded to the next bucket size (copies of its first row, results dropped)
  so that only a few batch shapes ever run: on CUDA each shape is a CUDA-graph recording, and the
  engine's decoder cache is sized to hold one per bucket. Padding rows cannot change the real rows
  (batch-invariant mode). On CPU nothing is recorded, so the default there is no padding.
- **Faults.** Bad parameters are refused before queueing with the engine's own message
  (``check_request``: the same checks ``generate_tokens`` runs). A full queue raises ``QueueFull``.
  A request whose client went away or whose deadline passed before its batch started is dropped. An
  error in a batch (``NumericsError``; out of memory after the engine's own halving retries, a
  ``ResourceError``) fails only that batch's requests.
"""
from __future__ import annotations

import inspect
import json
import math
import secrets
import threading
import time
import traceback
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from magnet_fast.errors import MagnetFastError, ParameterError

# Keywords of generate_tokens a request may not set: the server sets them, or they take Python objects
# (paired engines, callables, tensors) that a JSON request cannot carry.
SERVER_KEYWORDS = frozenset({"self", "descriptions", "seed", "prompt", "progress", "generator", "batch_invariant",
                             "max_batch", "callback", "rescorer", "rescore_weight", "rescore_temperature",
                             "hybrid", "hybrid_seconds", "hybrid_params"})
BODY_KEYS = ("model", "text", "seed", "format")          # request keys besides the generation parameters
FORMATS = ("wav", "tokens")
SEED_LIMIT = 2**63 - 1 - 1024      # per-row seed lists must stay valid for check_seed at any batch size
DRAWN_SEED_BITS = 32               # seeds drawn for requests without one (returned in X-Seed)


class QueueFull(MagnetFastError):
    """The model's queue is full (HTTP 429); ``retry_after`` seconds is a hint when to try again."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Closed(MagnetFastError):
    """The server is shutting down and takes no new requests (HTTP 503)."""


# ----------------------------------------------------------------------------------------- requests
def generation_keywords(engine) -> set[str]:
    """The generation parameters a request may set on ``engine``: its ``generate_tokens`` keywords minus
    those the server controls (``SERVER_KEYWORDS``)."""
    params = inspect.signature(engine.generate_tokens).parameters.values()
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names - SERVER_KEYWORDS


def model_window(engine) -> float:
    """The longest generation without long-form windows (seconds)."""
    return float(engine.duration)


def check_params(engine, params: dict, max_duration: float | None = None) -> None:
    """Run the checks ``generate_tokens`` runs on these parameters before any work (the same functions:
    ``engine.params``, the long-form plan), so a bad request is refused with the engine's message before
    it is queued. ``max_duration``: this server's bound on ``duration`` (seconds)."""
    duration, stride = params.get("duration"), params.get("extend_stride")
    if engine.config.kind == "musicgen":
        from magnet_fast.engines.musicgen import long_form_plan
        long = long_form_plan(engine.config, duration, stride)
        sampling = {k: v for k, v in params.items() if k not in ("duration", "extend_stride")}
        engine.params(duration=engine.max_duration if long else duration, **sampling)
    else:
        from magnet_fast.engines.longform import long_form
        from magnet_fast.params import output_frames
        sampling = {k: v for k, v in params.items() if k not in ("duration", "extend_stride")}
        p = engine.params(**sampling)
        long_form(duration, stride, window_s=engine.duration, frame_rate=engine.frame_rate,
                  window_frames=output_frames(engine.frames, engine.config.span_len, p.span_arrangement),
                  default_stride_s=engine.duration / 2)
    if max_duration is not None and duration is not None and duration > max_duration:
        raise ParameterError(f"duration {duration:g} s is over this server's limit of {max_duration:g} s "
                             "(magnet-fast serve --max-duration)")


@dataclass(eq=False)
class Request:
    """One generation request in a model's queue."""
    model: str
    text: str | None
    seed: int
    params: dict
    format: str = "wav"
    seed_drawn: bool = False
    arrival: float = field(default_factory=time.monotonic)
    deadline: float | None = None            # monotonic time after which it is dropped if not started
    on_done: Callable[[Result], None] | None = None
    cancelled: bool = False                  # the client went away or timed out: drop if not started
    started: float | None = None

    @property
    def key(self) -> str:
        """Requests with equal keys can share a batch (same model and generation parameters)."""
        return self.model + "\n" + json.dumps(self.params, sort_keys=True)


@dataclass
class Result:
    """What a request got: ``status`` 200 with ``wav`` bytes or ``tokens`` (nested lists), or an error."""
    status: int
    wav: bytes | None = None
    tokens: list | None = None
    error: str | None = None
    error_type: str | None = None            # the exception's class name
    batch: int = 0                           # real rows in the batch that ran it
    padded: int = 0                          # rows after padding to a bucket
    queue_s: float = 0.0                     # arrival -> batch start
    compute_s: float = 0.0                   # the batch's generation + this row's decode
    audio_s: float = 0.0
    clipped: int = 0


def check_request(body: Any, engines: dict, *, default_model: str | None = None,
                  max_duration: dict | None = None) -> Request:
    """A decoded JSON body -> a ``Request`` (seed drawn when missing), or ParameterError with a one-line
    message saying what to change. ``engines``: model name -> loaded engine."""
    if not isinstance(body, dict):
        raise ParameterError(f"the request body must be a JSON object {{\"text\": ..., ...}}, got "
                             f"{type(body).__name__}")
    name = body.get("model", default_model)
    if name is None:
        raise ParameterError(f"several models are served; pass \"model\": one of {sorted(engines)}")
    if not isinstance(name, str) or name not in engines:
        raise ParameterError(f"unknown model {name!r}; this server has {sorted(engines)} (GET /v1/models)")
    engine = engines[name]
    if "text" not in body:
        raise ParameterError("missing \"text\": the description (null for unconditional generation)")
    text = body["text"]
    if text is not None and not isinstance(text, str):
        raise ParameterError(f"\"text\" must be a string or null, got {type(text).__name__}")
    if text is not None and not text.strip():
        raise ParameterError("empty \"text\"; pass null for unconditional generation")
    fmt = body.get("format", "wav")
    if fmt not in FORMATS:
        raise ParameterError(f"\"format\" must be one of {list(FORMATS)}, got {fmt!r}")
    seed, drawn = body.get("seed"), False
    if seed is None:
        seed, drawn = secrets.randbits(DRAWN_SEED_BITS), True
    else:
        from magnet_fast.params import check_seed
        if isinstance(seed, list):
            raise ParameterError(f"seed must be an integer in [0, 2**63) (one per request), got {seed!r}")
        check_seed(seed)
        if seed > SEED_LIMIT:
            raise ParameterError(f"seed must be an integer in [0, 2**63 - 1025] on this server, got {seed}")
    allowed = generation_keywords(engine)
    params = {k: v for k, v in body.items() if k not in BODY_KEYS}
    unknown = sorted(set(params) - allowed)
    if unknown:
        fixed = sorted(set(params) & SERVER_KEYWORDS)
        why = (f"; {', '.join(map(repr, fixed))} cannot be set over HTTP" if fixed else "")
        raise ParameterError(f"unknown parameter(s) {', '.join(map(repr, unknown))} for {name} "
                             f"({type(engine).__name__}){why}; it takes {', '.join(sorted(allowed))}")
    params = {k: v for k, v in params.items() if v is not None}
    limit = (max_duration or {}).get(name)
    check_params(engine, params, limit)
    return Request(name, text, int(seed), params, fmt, seed_drawn=drawn)


# ----------------------------------------------------------------------------------------- buckets
def make_buckets(max_batch: int, buckets) -> tuple[int, ...]:
    """Bucket sizes: None/() -> no padding (every size runs as it is); "pow2" -> 1, 2, 4, ... up to and
    including max_batch; or explicit sizes (max_batch is always one)."""
    if buckets is None or buckets == () or buckets == []:
        return ()
    if buckets == "pow2":
        sizes = [1 << i for i in range(max_batch.bit_length()) if 1 << i <= max_batch]
    else:
        if isinstance(buckets, str) or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1
                                               for b in buckets):
            raise ParameterError(f"buckets must be 'pow2' or positive integers, got {buckets!r}")
        sizes = [b for b in buckets if b <= max_batch]
    return tuple(sorted(set(sizes) | {max_batch}))


def bucket_for(n: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket holding n rows (n itself without buckets)."""
    return next((b for b in buckets if b >= n), n)


# ----------------------------------------------------------------------------------------- worker
class ModelWorker:
    """The thread that owns one engine: a bounded queue, batch forming, generation and decoding.

    ``metrics``: an object with the ``magnet_fast.serve.metrics.Metrics`` methods, or None."""

    def __init__(self, name: str, engine, *, max_batch: int = 4, window_s: float = 0.02, max_queue: int = 64,
                 buckets=None, metrics=None, log: Callable[[str], None] | None = None):
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ParameterError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        if not isinstance(max_queue, int) or max_queue < 1:
            raise ParameterError(f"max_queue must be an integer >= 1, got {max_queue!r}")
        if not isinstance(window_s, (int, float)) or not math.isfinite(window_s) or window_s < 0:
            raise ParameterError(f"the batch window must be a number of seconds >= 0, got {window_s!r}")
        self.name, self.engine = name, engine
        self.max_batch, self.window_s, self.max_queue = max_batch, float(window_s), max_queue
        self.buckets = make_buckets(max_batch, buckets)
        self.metrics, self.log = metrics, log or (lambda message: None)
        self.queue: deque[Request] = deque()
        self.cond = threading.Condition()
        self.closing = False
        self.busy = False
        self.batches = 0
        self.last_batch_s = 0.0
        cache = getattr(engine, "decoders", None)
        if cache is not None and self.buckets:                 # one cached decoder (graphs) per bucket shape
            cache.capacity = max(cache.capacity, len(self.buckets))
        self.thread = threading.Thread(target=self._loop, name=f"magnet-fast-serve[{name}]", daemon=True)

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking requests, finish the queued ones, and end the thread."""
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        if self.thread.is_alive():
            self.thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def depth(self) -> int:
        with self.cond:
            return len(self.queue)

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained by one batch (at least 1)."""
        per_batch = self.last_batch_s or 1.0
        return max(1, math.ceil(per_batch * max(1, len(self.queue)) / self.max_batch))

    def submit(self, req: Request) -> None:
        """Queue a request (``req.on_done`` gets its Result later) or raise QueueFull / Closed."""
        with self.cond:
            if self.closing:
                raise Closed("the server is shutting down and takes no new requests")
            if len(self.queue) >= self.max_queue:
                raise QueueFull(f"the queue of {self.name} is full ({self.max_queue} waiting); retry later",
                                self.retry_after())
            self.queue.append(req)
            self._depth_metric()
            self.cond.notify_all()

    # ------------------------------------------------------------------ the loop
    def _depth_metric(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth(self.name, len(self.queue))

    def _drop_stale(self, now: float) -> None:
        """Remove cancelled requests and those past their deadline (504) from the queue (lock held)."""
        keep: deque[Request] = deque()
        for r in self.queue:
            if r.cancelled:
                if self.metrics is not None:
                    self.metrics.dropped(self.name, "cancelled")
            elif r.deadline is not None and now >= r.deadline:
                self._finish(r, Result(504, error="timed out waiting in the queue (magnet-fast serve --timeout)",
                                       error_type="Timeout", queue_s=now - r.arrival))
                if self.metrics is not None:
                    self.metrics.dropped(self.name, "timeout")
            else:
                keep.append(r)
        self.queue = keep

    def _take(self) -> list[Request] | None:
        """Block until a batch is ready; None when closing with an empty queue."""
        with self.cond:
            while True:
                self._drop_stale(time.monotonic())
                if not self.queue:
                    self._depth_metric()
                    if self.closing:
                        return None
                    self.cond.wait(0.5)
                    continue
                head = self.queue[0]
                mates = [r for r in self.queue if r.key == head.key]
                wait = head.arrival + self.window_s - time.monotonic()
                if len(mates) >= self.max_batch or wait <= 0 or self.closing or hasattr(head, "execute"):
                    batch = mates[:self.max_batch]
                    taken = set(map(id, batch))
                    self.queue = deque(r for r in self.queue if id(r) not in taken)
                    self._depth_metric()
                    self.busy = True
                    return batch
                self.cond.wait(wait)

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._run(batch)
            except BaseException as e:  # noqa: BLE001 - the worker must outlive any one batch
                self.log(f"{self.name}: batch failed outside generation: {e!r}")
                for r in batch:
                    self._finish(r, Result(500, error=f"internal error: {type(e).__name__}: {e}",
                                           error_type=type(e).__name__))
            finally:
                with self.cond:
                    self.busy = False

    def _finish(self, req: Request, result: Result) -> None:
        if self.metrics is not None:
            self.metrics.finished(self.name, req, result)
        if req.on_done is not None:
            req.on_done(result)

    def _run(self, batch: list[Request]) -> None:
        t0 = time.monotonic()
        for r in batch:
            r.started = t0
        if hasattr(batch[0], "execute"):                # an edit (serve/editing.py): a batch of one, run here
            self._run_alone(batch[0], t0)
            return
        n = len(batch)
        size = bucket_for(n, self.buckets)
        texts = [r.text for r in batch] + [batch[0].text] * (size - n)
        seeds = [r.seed for r in batch] + [batch[0].seed] * (size - n)
        params = dict(batch[0].params)
        if self.metrics is not None:
            self.metrics.batch(self.name, n, size)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                tokens = self.engine.generate_tokens(texts, seed=seeds, batch_invariant=True, **params)
            for w in caught:
                self.log(f"{self.name}: {w.category.__name__}: {w.message}")
        except ParameterError as e:
            self._fail(batch, 422, e, t0)
            return
        except MagnetFastError as e:             # NumericsError, ResourceError (after the engine's retries)
            self._fail(batch, 500, e, t0)
            return
        except Exception as e:  # noqa: BLE001
            self.log(f"{self.name}: {traceback.format_exc()}")
            self._fail(batch, 500, e, t0, prefix="internal error: ")
            return
        gen_s = time.monotonic() - t0
        rate = self.engine.sample_rate
        for i, r in enumerate(batch):
            t1 = time.monotonic()
            try:
                row = tokens[i:i + 1]
                result = Result(200, batch=n, padded=size, queue_s=t0 - r.arrival,
                                audio_s=row.shape[-1] / self.engine.frame_rate)
                if r.format == "tokens":
                    result.tokens = row[0].tolist()
                else:
                    from magnet_fast.io.audio import wav_bytes
                    wav = self.engine.decode(row)[0]           # a batch of one, like a lone CLI call
                    result.wav, result.clipped = wav_bytes(wav, rate)
                    result.audio_s = wav.shape[-1] / rate
                result.compute_s = gen_s + time.monotonic() - t1
            except MagnetFastError as e:
                result = Result(500, error=_one_line(e), error_type=type(e).__name__, batch=n, padded=size,
                                queue_s=t0 - r.arrival)
            self._finish(r, result)
        self.batches += 1
        self.last_batch_s = time.monotonic() - t0

    def _run_alone(self, req: Request, t0: float) -> None:
        """A request that runs by itself (``req.execute(engine) -> Result``), with the faults of a batch."""
        if self.metrics is not None:
            self.metrics.batch(self.name, 1, 1)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = req.execute(self.engine)
            for w in caught:
                self.log(f"{self.name}: {w.category.__name__}: {w.message}")
        except ParameterError as e:
            self._fail([req], 422, e, t0)
            return
        except MagnetFastError as e:
            self._fail([req], 500, e, t0)
            return
        except Exception as e:  # noqa: BLE001
            self.log(f"{self.name}: {traceback.format_exc()}")
            self._fail([req], 500, e, t0, prefix="internal error: ")
            return
        result.batch, result.padded = 1, 1
        result.queue_s, result.compute_s = t0 - req.arrival, time.monotonic() - t0
        self._finish(req, result)
        self.batches += 1
        self.last_batch_s = time.monotonic() - t0

    def _fail(self, batch, status: int, e: BaseException, t0: float, prefix: str = "") -> None:
        message = prefix + _one_line(e)
        self.log(f"{self.name}: batch of {len(batch)} failed ({status}): {message}")
        for r in batch:
            self._finish(r, Result(status, error=message, error_type=type(e).__name__, batch=len(batch),
                                   queue_s=t0 - r.arrival, compute_s=time.monotonic() - t0))


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    return first or type(e).__name__
