"""The job itself: plan (`prepare`: lock, manifest, what is left to do, targets checked), the shared
skeleton of the local and Ray runs (`run_skeleton`), `run_job`, the summary."""
from __future__ import annotations

import errno
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magnet_fast.errors import MagnetFastError
from magnet_fast.io.files import sha256_file
from magnet_fast.jobs.generate import ModelSpec, load_model, process_items
from magnet_fast.jobs.items import (
    _TEMP,
    DEFAULT_MAX_BATCH,
    FILES_NAME,
    LOCK_NAME,
    MANIFEST_NAME,
    Item,
    JobError,
    JobWarning,
    LineError,
    canonical,
    parse_job,
)
from magnet_fast.jobs.manifest import Manifest, _cap, make_row


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
