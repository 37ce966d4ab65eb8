"""The job's record: ``DIR/manifest.jsonl`` (`Manifest`) and its rows (`make_row`)."""
from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path

from magnet_fast.jobs.items import Item, JobError


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
