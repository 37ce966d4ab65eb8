"""Resumable batch jobs: ``magnet-fast batch JOB.jsonl --out DIR`` (and ``run_job`` in Python).

A job file holds one JSON object per line: ``{"id": ..., "text": ..., "seed"?: int, "duration"?: ...,
<any generation parameter>}``; parameters missing from a line come from the command line (``defaults``),
then from the model. Each item becomes ``DIR/<sanitised id>.wav``, and ``DIR/manifest.jsonl`` gets one
line per finished item (``MANIFEST_FIELDS``).

- **Crash-safe.** A WAV is written to a hidden temporary sibling (``.<name>.wav.tmp-*``, never mistaken for
  an output; stale ones are deleted when a job starts), fsynced and renamed into place; only then is its
  manifest line appended (one ``write`` of a complete line, then ``fsync``). A ``kill -9`` leaves at most a
  complete WAV without a manifest line (regenerated next time) and a partial last manifest line (ignored
  with a warning and cut off before the next append).
- **Resumable.** An item is skipped when the last manifest record for its id says ``done``, asks for the
  same text, seed, parameters and model (``model_key``: weights digest, loader, attention, dtype, device
  kind), and its file is present with the recorded sha256; anything else is generated (again). Failed
  items are retried on the next run.
- **Never writes outside DIR or over the user's files.** Every file the job writes or repairs is opened
  with O_NOFOLLOW or refused when a symlink; a file in DIR that no record names (nor the run's own list of
  files, ``FILES_NAME``) is refused without ``force`` (docs/reliability.md).
- **Deterministic per item.** Generation runs in batch-invariant mode with one seed per item (the line's
  ``seed``, else ``seed_from_id(id)``: sha256 of the id, 62 bits), and each item's tokens are decoded to
  audio alone (batch of one, one CPU thread: EnCodec's convolutions on CPU differ in the last bit with
  the batch size and the thread count, which flips 16-bit rounding). So a resumed, re-ordered, sharded or
  Ray run writes the same bytes as one uninterrupted run.
- **Failures are per item.** Bad lines (with their line number), unknown or bad parameters and numerics
  errors are recorded as ``failed`` with the error, and the job goes on; the exit code is 1 when anything
  failed. A job file that cannot be parsed at all is an error (exit 2) before any work.

Items with equal parameters are decoded together, ``max_batch`` at a time. The model is any object with
the ``generate(texts, seed=[...], batch_invariant=True, **params)`` protocol (MagnetFast, MusicGenFast);
parameter names are checked against its ``generate_tokens`` signature. When it also has
``generate_tokens`` + ``decode`` and accepts every parameter of a group there, tokens are generated in
batches and decoded per item; otherwise each item goes through ``generate`` alone.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import inspect
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from magnet_fast.errors import MagnetFastError
from magnet_fast.io.files import sha256_file

MANIFEST_NAME = "manifest.jsonl"
LOCK_NAME = ".magnet-fast-batch.lock"
MANIFEST_FIELDS = ("id", "status", "file", "sha256", "audio_s", "wall_s", "text", "seed", "seed_from_id",
                   "params", "error", "line", "clipped", "finished", "model")
# Every run lists the files it is about to write in FILES_NAME first (one write, fsynced), so a file in DIR
# that neither a manifest record nor this list names is the user's: refused without --force.
FILES_NAME = ".magnet-fast-batch.files"
# Keywords the runner sets itself; a job line may not.
RESERVED = frozenset({"self", "descriptions", "texts", "prompt", "prompt_audio", "prompt_sample_rate", "seed",
                      "generator", "progress", "batch_invariant", "max_batch"})
LINE_KEYS = frozenset({"id", "text", "seed"})
SEED_BITS = 62                       # derived seeds: < 2**62 (the model's own random seeds use this range)
MAX_NAME = 96                        # characters kept from an id in its file name
DEFAULT_MAX_BATCH = {"cpu": 4, "cuda": 32}
_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_TEMP = re.compile(r"^\..+\.wav\.tmp-[^/]*$")      # magnet_fast.io.files.atomic_file's names for a WAV


class JobError(MagnetFastError, ValueError):
    """The job as a whole cannot run (unreadable or unparseable job file, unusable output folder, another
    job running in it). Raised before any work; the CLI prints it as one line and exits with code 2."""


class JobWarning(UserWarning):
    """Something in the output folder was repaired (a partial manifest line, a changed or missing file)."""


# ----------------------------------------------------------------------------------------- items
def seed_from_id(item_id: str) -> int:
    """The seed of an item without one: the first 8 bytes of sha256(id) as a big-endian int, masked to
    ``SEED_BITS`` bits (stable across runs, machines and Python versions)."""
    digest = hashlib.sha256(item_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << SEED_BITS) - 1)


def _utf8(text: str) -> bool:
    from magnet_fast.io.files import utf8_ok
    return utf8_ok(text)


def _id_hash(item_id: str) -> str:
    return hashlib.sha256(item_id.encode("utf-8")).hexdigest()[:8]


def safe_name(item_id: str) -> str:
    """A file stem for ``item_id``: [A-Za-z0-9._-] kept, anything else '_', no leading dot, at most
    ``MAX_NAME`` characters; when that changed the id, ``-<8 hex of sha256(id)>`` is appended so that
    different ids stay different files."""
    stem = _SAFE.sub("_", item_id).lstrip(".")[:MAX_NAME] or "item"
    return stem if stem == item_id else f"{stem}-{_id_hash(item_id)}"


def file_names(ids: list[str]) -> dict[str, str]:
    """id -> WAV file name, unique also case-folded (case-insensitive file systems) and after the
    disambiguation itself: ids whose names collide get ``-<hash of the id>`` appended, 8 hex digits first,
    longer (16, 32, 64) while any name still collides (an id may be crafted to equal another's
    disambiguated name). Depends only on the set of ids, not their order."""
    names = {i: safe_name(i) for i in ids}
    for width in (8, 16, 32, 64, None):
        count: dict[str, int] = {}
        for n in names.values():
            count[n.casefold()] = count.get(n.casefold(), 0) + 1
        clash = [i for i, n in names.items() if count[n.casefold()] > 1]
        if not clash:
            break
        if width is None:                                  # distinct ids, distinct sha256: unreachable
            raise JobError(f"cannot give ids {clash[:3]} distinct file names")
        for i in clash:
            stem = _SAFE.sub("_", i).lstrip(".")[:MAX_NAME] or "item"
            names[i] = f"{stem}-{hashlib.sha256(i.encode('utf-8')).hexdigest()[:width]}"
    return {i: f"{n}.wav" for i, n in names.items()}


@dataclass
class Item:
    """One job line ready to run."""
    id: str
    text: str | None
    seed: int
    seed_from_id: bool
    params: dict[str, Any]
    line: int
    file: str = ""
    model: dict | None = None

    def request(self) -> tuple:
        """What the output depends on (compared with the manifest record on resume): the text, the seed,
        the parameters and the model key (``model_key``: weights digest, kind, attention, dtype, device)."""
        return (self.text, self.seed, canonical(self.params), canonical(self.model))

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Item:
        return cls(**json.loads(text))


@dataclass
class LineError:
    line: int
    id: str | None
    error: str


def canonical(params) -> str:
    """A job's parameters (or model key) as one string (sorted keys): equal strings, equal requests (grouping,
    resume)."""
    return json.dumps(params, sort_keys=True, ensure_ascii=False)


def _parse_line(obj, n: int, defaults: dict) -> Item | str:
    """One decoded JSON line -> Item, or the error message (without the line number)."""
    if not isinstance(obj, dict):
        return f"must be a JSON object {{\"id\": ..., \"text\": ...}}, got {type(obj).__name__}"
    if "id" not in obj:
        return "has no 'id'"
    raw = obj["id"]
    if isinstance(raw, bool) or not isinstance(raw, (str, int)) or (isinstance(raw, str) and not raw.strip()):
        return f"'id' must be a non-empty string or an integer, got {json.dumps(raw)}"
    item_id = str(raw)
    if not _utf8(item_id):
        return "'id' holds a lone surrogate (\\ud800-\\udfff escape), which is not text; fix the id"
    if "text" not in obj:
        return "has no 'text' (the description; null for an unconditional item)"
    text = obj["text"]
    if text is not None and not isinstance(text, str):
        return f"'text' must be a string or null, got {type(text).__name__}"
    if text is not None:
        from magnet_fast.checks import check_descriptions
        from magnet_fast.errors import ParameterError
        try:
            check_descriptions([text])                        # lone surrogates, length cap: the API's checks
        except ParameterError as e:
            return f"'text': {e}"
    seed = obj.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        return f"'seed' must be an integer in [0, 2**63), got {json.dumps(seed)}"
    if seed is not None:
        from magnet_fast.errors import ParameterError
        from magnet_fast.params import check_seed
        try:
            check_seed(seed)                                  # the engine's own range, so it never refuses later
        except ParameterError:
            return f"'seed' {seed} is over the largest seed the engine takes ({2**63 - 3}); use a smaller one"
    reserved = sorted(k for k in obj if k in RESERVED and k != "seed")
    if reserved:
        return f"sets {', '.join(map(repr, reserved))}, which the job runner controls"
    params = {**defaults, **{k: v for k, v in obj.items() if k not in LINE_KEYS}}
    return Item(item_id, text, seed_from_id(item_id) if seed is None else seed, seed is None, params, n)


def parse_job(path: str | Path, defaults: dict | None = None) -> tuple[list[Item], list[LineError]]:
    """Read a job file -> (items, per-line errors). Blank lines are skipped. A line that is not JSON, not an
    object, lacks id/text, has a bad seed or repeats an earlier id is a LineError (with the id when it has
    a usable, first-seen one). JobError when the file is unreadable or no line parses at all."""
    from magnet_fast.io.files import check_path, parse_json, read_lines
    path = check_path(path, "job file", JobError)
    defaults = dict(defaults or {})
    lines = read_lines(path, what="job file", error=JobError)      # regular file, bounded, split on \n only
    items: list[Item] = []
    errors: list[LineError] = []
    seen: dict[str, int] = {}
    parsed_any = False
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        obj, why = parse_json(line)
        if why is not None:
            errors.append(LineError(n, None, f"{path.name}:{n}: {why}"))
            continue
        parsed_any = parsed_any or isinstance(obj, dict)
        got = _parse_line(obj, n, defaults)
        raw = obj.get("id") if isinstance(obj, dict) else None
        ok = isinstance(raw, (str, int)) and not isinstance(raw, bool) and str(raw).strip() and _utf8(str(raw))
        usable = str(raw) if ok else None
        if usable is not None and usable in seen:
            errors.append(LineError(n, None, f"{path.name}:{n}: duplicate id {usable!r} (first on line "
                                             f"{seen[usable]})"))
            continue
        if usable is not None:
            seen[usable] = n
        if isinstance(got, str):
            errors.append(LineError(n, usable, f"{path.name}:{n}: {got}"))
        else:
            items.append(got)
    if not parsed_any:
        what = "is empty" if not errors else f"has no line that parses as a JSON object ({errors[0].error})"
        raise JobError(f"job file {path} {what}; expected one {{\"id\": ..., \"text\": ...}} object per line")
    names = file_names([it.id for it in items] + [e.id for e in errors if e.id is not None])
    for it in items:
        it.file = names[it.id]
    return items, errors


# ----------------------------------------------------------------------------------------- manifest
class Manifest:
    """``DIR/manifest.jsonl``: one JSON record per finished item, appended as a complete line and fsynced;
    the last record per id wins. A partial last line (a crash mid-append) is ignored with a warning and cut
    off, so the next append starts a fresh line; other unreadable lines are ignored with a warning.

    Opened once, for appending, before any work (O_NOFOLLOW: a symlink is refused, never followed; a
    read-only file or a folder is a JobError now, not after the first WAV); read through the bounded reader."""

    def __init__(self, path: Path, warn: Callable[[str], None]):
        from magnet_fast.io.files import open_nofollow
        self.path = Path(path)
        self.records: dict[str, dict] = {}
        self.files: set[str] = set()                  # every file name any record mentions
        self.line_errors: set[tuple] = set()          # (line, error) of recorded job-line errors
        self._warn = warn
        self._fd: int | None = None
        try:
            self._fd = open_nofollow(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise JobError(f"manifest {self.path} is a symbolic link; refusing to write through it (it could "
                               "point outside the output folder): remove the link or choose another --out") from None
            raise JobError(f"cannot write the manifest {self.path} ({e.strerror or e}); make it writable or "
                           "choose another --out") from None
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    def _load(self) -> None:
        from magnet_fast.io.files import (
            MAX_LINE_BYTES,
            MAX_MANIFEST_BYTES,
            parse_json,
            read_regular,
            split_lines,
        )
        data = read_regular(self.path, max_bytes=MAX_MANIFEST_BYTES, what="manifest", error=JobError, fd=self._fd)
        end = data.rfind(b"\n") + 1
        if end < len(data):
            self._warn(f"{self.path}: ignoring an incomplete last line (a run was interrupted while writing "
                       "it); that item will be generated again")
            os.ftruncate(self._fd, end)
            os.fsync(self._fd)
        for n, raw in enumerate(split_lines(data[:end], max_line=max(MAX_LINE_BYTES, end), decode_errors=False), 1):
            if raw is not None and not raw.strip():
                continue
            rec, why = parse_json(raw) if raw is not None else (None, "not UTF-8")
            if not isinstance(rec, dict):
                self._warn(f"{self.path}:{n}: not a manifest record; ignored")
                continue
            if isinstance(rec.get("file"), str):
                self.files.add(rec["file"])
            if rec.get("status") == "failed" and rec.get("params") is None:
                self.line_errors.add((rec.get("line"), rec.get("error")))
            if isinstance(rec.get("id"), str):
                self.records[rec["id"]] = rec

    def append(self, row: dict) -> None:
        self.append_many([row])

    def append_many(self, rows: list[dict]) -> None:
        """Append records in one write and one fsync (a batch of line errors, the files a run announces)."""
        from magnet_fast.io.files import json_line
        if not rows:
            return
        data = "".join(json_line(r) + "\n" for r in rows).encode("utf-8")
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)
        for row in rows:
            if isinstance(row.get("file"), str):
                self.files.add(row["file"])
            if isinstance(row.get("id"), str):
                self.records[row["id"]] = row

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _cap(text: str) -> str:
    from magnet_fast.io.files import cap
    return cap(text, 1000)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def make_row(item: Item | None, status: str, *, file=None, sha256=None, audio_s=0.0, wall_s=0.0,
             error=None, clipped=0, line=None, item_id=None) -> dict:
    """A manifest record (``MANIFEST_FIELDS``, in that order)."""
    return {"id": item.id if item is not None else item_id, "status": status, "file": file, "sha256": sha256,
            "audio_s": round(audio_s, 6), "wall_s": round(wall_s, 6),
            "text": item.text if item else None, "seed": item.seed if item else None,
            "seed_from_id": item.seed_from_id if item else None, "params": item.params if item else None,
            "error": None if error is None else _cap(error), "line": item.line if item else line,
            "clipped": clipped, "finished": _now(), "model": item.model if item else None}


# ----------------------------------------------------------------------------------------- generation
@dataclass
class ModelSpec:
    """How to load a model (picklable, so Ray replicas can load their own copy): ``loader`` is
    "module:Class" with a ``from_pretrained(path, **kwargs)``; ``kwargs`` are passed on (device, dtype,
    t5, codec, allow_download, attention, ...)."""
    path: str
    kwargs: dict = field(default_factory=dict)
    loader: str = "magnet_fast.engines.magnet:MagnetFast"

    @property
    def device(self) -> str:
        return str(self.kwargs.get("device") or "cpu")

    def load(self):
        import importlib
        module, _, name = self.loader.partition(":")
        cls = getattr(importlib.import_module(module), name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)        # e.g. the demo's "untrained weights" notice
            return cls.from_pretrained(self.path, **self.kwargs)


def load_model(model):
    """A loaded model, a ModelSpec, or a zero-argument callable returning a model -> the model, with its
    codec loaded (a missing codec fails the job before any work, not every item)."""
    if isinstance(model, ModelSpec):
        model = model.load()
    elif callable(model) and not hasattr(model, "generate"):
        model = model()
    if callable(getattr(model, "load_codec", None)):
        model.load_codec()
    return model


def _signature_names(fn) -> tuple[set[str], bool]:
    """(keyword names of fn, whether it takes **kwargs)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return set(), True
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def accepted_params(model) -> tuple[set[str], bool]:
    """Generation parameter names an item may set: the keywords of ``model.generate_tokens`` (else of
    ``model.generate``) minus those the runner sets; and whether any name is accepted (**kwargs)."""
    fn = getattr(model, "generate_tokens", None) or model.generate
    names, anything = _signature_names(fn)
    return names - RESERVED, anything


def _split_path(model, params: dict) -> bool:
    """Batched generate_tokens + per-item decode, when the model has both and takes every parameter."""
    gen, dec = getattr(model, "generate_tokens", None), getattr(model, "decode", None)
    if not (callable(gen) and callable(dec)):
        return False
    names, anything = _signature_names(gen)
    return anything or ({"seed", "batch_invariant"} | set(params)) <= names


@contextlib.contextmanager
def _one_cpu_thread(model):
    """One intra-op thread while decoding on CPU: the codec's output then does not depend on the process's
    thread count (single process vs. Ray replicas)."""
    import torch
    device = getattr(model, "device", None)
    if device is not None and torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def synthesize(model, texts: list, seeds: list[int], params: dict) -> list:
    """Audio [C, S] for each text, each depending only on its own text, seed and ``params``."""
    if _split_path(model, params):
        tokens = model.generate_tokens(list(texts), seed=list(seeds), batch_invariant=True, **params)
        out = []
        with _one_cpu_thread(model):
            for i in range(len(texts)):
                out.append(model.decode(tokens[i:i + 1])[0])
        return out
    return [model.generate([t], seed=[s], batch_invariant=True, **params)[0]
            for t, s in zip(texts, seeds, strict=True)]


def _error_text(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _write_output(path: Path, audio, sample_rate: int) -> tuple[str, float, int]:
    """Atomic, fsynced WAV write -> (sha256, audio seconds, clipped samples)."""
    from magnet_fast.io.audio import wav_bytes
    from magnet_fast.io.files import atomic_file
    data, clipped = wav_bytes(audio, sample_rate)
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return hashlib.sha256(data).hexdigest(), audio.shape[-1] / sample_rate, clipped


def process_items(model, items: list[Item], out_dir: Path, max_batch: int) -> list[dict]:
    """Generate and write ``items`` (any parameters): manifest rows in the order the items finish.
    Items with equal parameters run together, ``max_batch`` at a time; when a batch fails, its items run
    one by one so that only the failing ones are recorded as failed. A failed write (disk full) raises."""
    from magnet_fast.io.files import WriteError
    out_dir = Path(out_dir)
    names, anything = accepted_params(model)
    rows: list[dict] = []
    groups: dict[str, list[Item]] = {}
    for it in items:
        unknown = sorted(set(it.params) - names - {"duration"}) if not anything else []
        if unknown:
            rows.append(make_row(it, "failed", error=f"ParameterError: unknown parameter(s) "
                                 f"{', '.join(map(repr, unknown))}; {type(model).__name__} takes "
                                 f"{', '.join(sorted(names))}"))
            continue
        groups.setdefault(canonical(it.params), []).append(it)

    def run(chunk: list[Item]) -> list[dict]:
        t0 = time.perf_counter()
        audio = synthesize(model, [it.text for it in chunk], [it.seed for it in chunk], chunk[0].params)
        done = []
        for it, a in zip(chunk, audio, strict=True):
            sha, seconds, clipped = _write_output(out_dir / it.file, a, model.sample_rate)
            done.append((it, sha, seconds, clipped))
        wall = (time.perf_counter() - t0) / len(chunk)
        return [make_row(it, "done", file=it.file, sha256=sha, audio_s=s, wall_s=wall, clipped=c)
                for it, sha, s, c in done]

    for group in groups.values():
        for start in range(0, len(group), max_batch):
            chunk = group[start:start + max_batch]
            try:
                rows.extend(run(chunk))
                continue
            except WriteError:
                raise
            except Exception as e:  # noqa: BLE001 - recorded per item below
                if len(chunk) == 1:
                    rows.append(make_row(chunk[0], "failed", error=_error_text(e)))
                    continue
            for it in chunk:                          # isolate the failing item(s)
                t0 = time.perf_counter()
                try:
                    rows.extend(run([it]))
                except WriteError:
                    raise
                except Exception as e:  # noqa: BLE001
                    rows.append(make_row(it, "failed", error=_error_text(e),
                                         wall_s=time.perf_counter() - t0))
    return rows


# ----------------------------------------------------------------------------------------- the job
@dataclass
class JobPlan:
    """A job ready to run: the output folder locked, stale temp files removed, the manifest loaded."""
    out: Path
    manifest: Manifest
    pending: list[Item]
    skipped: list[Item]
    line_errors: list[LineError]
    total: int
    _lock: Any = None

    def close(self) -> None:
        self.manifest.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None


@dataclass
class JobSummary:
    total: int
    done: int
    skipped: int
    failed: int
    audio_s: float
    wall_s: float
    out: Path
    failed_ids: list = field(default_factory=list)

    @property
    def items_per_s(self) -> float:
        return (self.done + self.failed) / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def realtime_factor(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s > 0 else 0.0

    def line(self) -> str:
        return (f"{self.done} done, {self.skipped} skipped (already done), {self.failed} failed of "
                f"{self.total} items; {self.audio_s:.2f} s of audio in {self.wall_s:.2f} s "
                f"({self.items_per_s:.2f} items/s, real-time factor {self.realtime_factor:.2f}x); "
                f"manifest {self.out / MANIFEST_NAME}")


def _default_warn(message: str) -> None:
    warnings.warn(message, JobWarning, stacklevel=3)


def _lock(out: Path):
    """An exclusive lock on the output folder (POSIX): two jobs must not write one manifest."""
    from magnet_fast.io.files import open_nofollow
    try:
        fd = open_nofollow(out / LOCK_NAME, os.O_RDWR | os.O_CREAT)   # a (dangling) symlink: ELOOP, not followed
    except OSError as e:
        why = "is a symbolic link; refusing to write through it" if e.errno == errno.ELOOP else \
            f"cannot be created ({e.strerror or e})"
        raise JobError(f"lock file {out / LOCK_NAME} {why}: remove it or choose another --out") from None
    f = os.fdopen(fd, "a+b")  # noqa: SIM115 - held for the job's lifetime
    try:
        import fcntl
    except ImportError:                                   # not POSIX: no lock
        return f
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise JobError(f"another batch job is writing to {out} (locked: {out / LOCK_NAME}); wait for it or "
                       "choose another --out") from None
    return f


def prepare(job: str | Path, out: str | Path, defaults: dict | None = None,
            warn: Callable[[str], None] | None = None, *, force: bool = False, model=None) -> JobPlan:
    """Parse the job, lock and tidy the output folder, load the manifest, decide what is left to do.
    ``model``: what ``model_key`` identifies (a ModelSpec or a loaded model; the resume key includes it).
    ``force``: files in the folder that no manifest record names may be replaced (else JobError)."""
    from magnet_fast.io.files import check_path
    warn = warn or _default_warn
    if isinstance(out, str) and not out.strip():
        raise JobError("--out is empty; pass the output folder (e.g. --out runs/job1)")
    out = check_path(out, "--out", JobError)
    items, line_errors = parse_job(job, defaults)
    key = model_key(model)
    for it in items:
        it.model = key
    if out.exists() and not out.is_dir():
        raise JobError(f"--out {out} is a file; pass a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JobError(f"cannot create output folder {out} ({e.strerror or e}); choose another "
                       "--out") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise JobError(f"output folder {out} is not writable; choose another --out")
    lock = _lock(out)
    try:
        for stale in out.iterdir():
            if _TEMP.match(stale.name) and stale.is_file():
                stale.unlink(missing_ok=True)
        manifest = Manifest(out / MANIFEST_NAME, warn)
        try:
            pending, skipped = _todo(items, manifest, out, warn)
            _check_targets(pending, manifest, out, force)
            _announce(out, [it.file for it in pending])
        except BaseException:
            manifest.close()
            raise
    except BaseException:
        lock.close()
        raise
    return JobPlan(out, manifest, pending, skipped, line_errors, len(items) + len(line_errors), lock)


def _check_targets(pending: list[Item], manifest: Manifest, out: Path, force: bool) -> None:
    """Before any work: no pending item's file is a symlink, and none is a file that no manifest record
    names (the user's own ``a.wav``) unless ``force``."""
    unknown = []
    announced = _announced(out)
    for it in pending:
        path = out / it.file
        if path.is_symlink():
            raise JobError(f"{path} is a symbolic link; refusing to write through it (it could point outside "
                           "the output folder): remove the link or choose another --out")
        if path.exists() and it.file not in manifest.files and it.file not in announced:
            unknown.append(it.file)
    if unknown and not force:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise JobError(f"{out} holds {', '.join(unknown[:3])}{more}, which this job would overwrite but its "
                       "manifest does not know; move them away, choose another --out, or pass --force to "
                       "replace them")


def _announced(out: Path) -> set[str]:
    from magnet_fast.io.files import MAX_MANIFEST_BYTES, read_regular, refuse_symlink, split_lines
    path = out / FILES_NAME
    refuse_symlink(path, "file list", JobError)
    if not path.exists():
        return set()
    data = read_regular(path, max_bytes=MAX_MANIFEST_BYTES, what="file list", error=JobError)
    return {n for n in split_lines(data, max_line=1 << 16, decode_errors=False, error=JobError) if n}


def _announce(out: Path, names: list[str]) -> None:
    """Append the files this run is about to write to ``FILES_NAME`` (one write, fsynced, O_NOFOLLOW)."""
    from magnet_fast.io.files import open_nofollow
    if not names:
        return
    try:
        fd = open_nofollow(out / FILES_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    except OSError as e:
        raise JobError(f"cannot write {out / FILES_NAME} ({e.strerror or e}); choose another --out") from None
    try:
        view = memoryview("".join(n + "\n" for n in names).encode("utf-8"))
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def model_key(model) -> dict | None:
    """What of the model changes an item's bytes, for the resume key: the weights' identity (digest of
    config.json + model.safetensors), the engine kind, attention backend, compute dtype and device kind.
    A ModelSpec gives it before loading (attention: as requested, 'default' when not given); a loaded
    engine from its state; anything else (a callable) None."""
    try:
        import torch

        from magnet_fast.engines.inputs import check_dtype
        from magnet_fast.io.files import model_identity
        if isinstance(model, ModelSpec):
            device = torch.device(model.device)
            folder, kw = Path(model.path), model.kwargs
            dtype = check_dtype(kw.get("dtype"), device)
            return {"digest": model_identity(folder), "loader": model.loader,
                    "attention": kw.get("attention") or "default", "dtype": str(dtype).replace("torch.", ""),
                    "device": device.type}
        path = getattr(model, "path", None)
        if path is not None and hasattr(model, "generate"):
            backend = str(getattr(model, "attention_backend", "default"))
            default = getattr(model, "_default_attention", None)
            if callable(default) and default() == backend:
                backend = "default"                       # as a ModelSpec without attention= says it
            return {"digest": model_identity(Path(path)), "loader": f"{type(model).__module__}:{type(model).__name__}",
                    "attention": backend,
                    "dtype": str(getattr(model, "dtype", "")).replace("torch.", ""),
                    "device": torch.device(getattr(model, "device", "cpu")).type}
    except MagnetFastError:
        raise
    except Exception:  # noqa: BLE001 - an unusual model object: no key (compared as None)
        return None
    return None


def _todo(items: list[Item], manifest: Manifest, out: Path, warn) -> tuple[list[Item], list[Item]]:
    """(pending, skipped): skipped when the last record is done, for the same request and file name, and
    the file is there with the recorded sha256."""
    pending, skipped, changed, missing = [], [], 0, 0
    for it in items:
        rec = manifest.records.get(it.id)
        if rec is None or rec.get("status") != "done":
            pending.append(it)
            continue
        # a model object we cannot identify (a callable loading something) compares text, seed, params only
        model = rec.get("model") if it.model is not None else None
        same = (rec.get("text"), rec.get("seed"), canonical(rec.get("params") or {}),
                canonical(model)) == it.request()
        path = out / it.file
        if not same or rec.get("file") != it.file:
            changed += 1
            pending.append(it)
        elif not path.is_file() or sha256_file(path) != rec.get("sha256"):
            missing += 1
            pending.append(it)
        else:
            skipped.append(it)
    if changed:
        warn(f"{changed} item(s) of the manifest asked for another text, seed or parameters (or another model: "
             "weights, attention, dtype or device); generating them again")
    if missing:
        warn(f"{missing} done item(s) have a missing or modified file; generating them again")
    return pending, skipped


SHOWN_LINE_ERRORS = 5


def record_line_errors(plan: JobPlan, warn: Callable[[str], None]) -> None:
    """Warn about the first SHOWN_LINE_ERRORS bad lines and the count of the rest; record them in one
    manifest write; lines already recorded by an earlier run (same line, same error) are not recorded again."""
    errors = plan.line_errors
    for e in errors[:SHOWN_LINE_ERRORS]:
        warn(e.error)
    if len(errors) > SHOWN_LINE_ERRORS:
        warn(f"... and {len(errors) - SHOWN_LINE_ERRORS} more bad line(s) (all recorded in "
             f"{plan.manifest.path})")
    new = [make_row(None, "failed", error=e.error, line=e.line, item_id=e.id) for e in errors
           if (e.line, _cap(e.error)) not in plan.manifest.line_errors]
    plan.manifest.append_many(new)


def _bar(total: int, quiet: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="item", desc="items", disable=quiet or total == 0, file=sys.stderr)


def run_skeleton(job: str | Path, out: str | Path, setup: Callable[[JobPlan], Callable], *,
                 defaults: dict | None = None, quiet: bool = True,
                 warn: Callable[[str], None] | None = None, force: bool = False, model=None) -> JobSummary:
    """What every job runner does around the generation (``run_job`` here, ``ray_jobs.run_ray_job`` on Ray):
    parse the job, lock and tidy the output folder, record the bad lines, and, when something is left to
    do, ``setup(plan)`` (load the model, start a cluster: not timed) returns ``run(record)``, which
    generates ``plan.pending`` and calls ``record(row)`` for each finished item's manifest row (appended
    and fsynced at once, counted on the progress bar). The folder is unlocked whatever happens. ``force`` and
    ``model``: see ``prepare``."""
    warn = warn or _default_warn
    plan = prepare(job, out, defaults, warn, force=force, model=model)
    try:
        record_line_errors(plan, warn)
        rows: list[dict] = []
        t0 = time.perf_counter()
        if plan.pending:
            run = setup(plan)
            t0 = time.perf_counter()
            with _bar(len(plan.pending), quiet) as bar:

                def record(row: dict) -> None:
                    plan.manifest.append(row)
                    rows.append(row)
                    bar.update(1)
                run(record)
        return summarize(plan, rows, time.perf_counter() - t0)
    finally:
        plan.close()


def run_job(job: str | Path, out: str | Path, model, *, defaults: dict | None = None,
            max_batch: int | None = None, threads: int | None = None, quiet: bool = True,
            warn: Callable[[str], None] | None = None, force: bool = False) -> JobSummary:
    """Run a job file in this process. ``model``: a loaded model (``generate`` protocol), a ``ModelSpec``
    or a zero-argument callable (loaded only when something is left to do). ``defaults``: generation
    parameters for lines that do not set them. ``max_batch``: items decoded together (default 4 on CPU,
    32 on CUDA). ``threads``: torch CPU threads for this process. Returns a JobSummary (``summary.failed``
    > 0 when anything failed). ``force``: replace files in ``out`` that the manifest does not know."""
    from magnet_fast.engines.inputs import check_max_batch, check_threads
    check_max_batch(max_batch)
    check_threads(threads)

    def setup(plan: JobPlan):
        nonlocal model
        if threads is not None:
            import torch
            torch.set_num_threads(threads)
        model = load_model(model)
        device = str(getattr(model, "device", "cpu")).split(":")[0]
        size = max_batch or DEFAULT_MAX_BATCH.get(device, 4)

        def run(record) -> None:
            by_params: dict[str, list[Item]] = {}
            for it in plan.pending:
                by_params.setdefault(canonical(it.params), []).append(it)
            for group in by_params.values():
                for start in range(0, len(group), size):
                    for row in process_items(model, group[start:start + size], plan.out, size):
                        record(row)
        return run

    return run_skeleton(job, out, setup, defaults=defaults, quiet=quiet, warn=warn, force=force, model=model)


def summarize(plan: JobPlan, rows: list[dict], wall: float) -> JobSummary:
    done = [r for r in rows if r["status"] == "done"]
    failed = [r["id"] for r in rows if r["status"] != "done"] + [e.id for e in plan.line_errors]
    return JobSummary(total=plan.total, done=len(done), skipped=len(plan.skipped), failed=len(failed),
                      audio_s=sum(r["audio_s"] for r in done), wall_s=wall, out=plan.out, failed_ids=failed)
