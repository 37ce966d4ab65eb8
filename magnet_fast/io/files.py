"""File helpers shared by conversion and run time: restricted unpickling of audiocraft exports, atomic
writes (one file: ``atomic_file`` / ``atomic_write_bytes``; one folder: ``atomic_dir``) and the one
resolver of local-folder / Hugging Face-cache sources (``resolve_pretrained``) used for T5 and the codec."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch

from magnet_fast.errors import CheckpointError, MagnetFastError


def load_pickle_safely(path: Path) -> object:
    """torch.load with weights_only=True (tensors, dicts, strings only); anything else is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(
                f"{path}: refusing to unpickle it: it holds Python objects beyond tensors, dicts and "
                f"strings ({msg}). Only audiocraft exports (state_dict.bin as published on the hub) are "
                "accepted; re-export the checkpoint with audiocraft's export functions.") from None
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({msg}); the file may be truncated "
                              "or corrupted: download it again") from None


class WriteError(MagnetFastError, OSError):
    """An output could not be written (disk full, read-only or missing folder); nothing partial is left."""


_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _disk_full(e: BaseException) -> bool:
    """An OSError (errno 28 / quota) or a library error that wraps one (safetensors, libsndfile)."""
    if isinstance(e, OSError) and e.errno in _FULL:
        return True
    text = str(e)
    return "No space left on device" in text or "StorageFull" in text or "os error 28" in text


def write_error(e: BaseException, path: Path) -> WriteError:
    """The one-line WriteError for a failed write of ``path``."""
    if _disk_full(e):
        return WriteError(f"cannot write {path}: no space left on device; free space or choose another "
                          "output location")
    reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return WriteError(f"cannot write {path} ({reason}); choose another output location")


CONVERTED_ENTRIES = {"config.json", "model.safetensors", "codec", "t5"}


def check_replaceable(out: Path) -> None:
    """Raise CheckpointError unless ``out`` is recognisably a converted model folder (what overwrite may
    replace): config.json in the magnet_fast format, model.safetensors, optionally codec/ and t5/, nothing
    else. Anything else (a file, a folder of photos, an audiocraft export) is left untouched."""
    import json

    from magnet_fast.config import CONFIG_NAME, FORMAT, WEIGHTS_NAME
    if not out.is_dir():
        raise CheckpointError(f"{out} exists and is not a folder; refusing to replace it with a converted "
                              "model: choose another output folder")
    names = {p.name for p in out.iterdir()}
    other = sorted(names - CONVERTED_ENTRIES)
    try:
        fmt = json.loads((out / CONFIG_NAME).read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError):
        fmt = None
    if other or fmt != FORMAT or not (out / WEIGHTS_NAME).is_file():
        why = (f"it holds other files ({', '.join(other[:5])}{', ...' if len(other) > 5 else ''})" if other
               else f"it has no {CONFIG_NAME} in the {FORMAT} format plus {WEIGHTS_NAME}")
        raise CheckpointError(f"{out} exists and is not a converted model folder ({why}); overwrite (--force) "
                              "only replaces a folder written by `magnet-fast convert`: choose another "
                              "output folder")


def check_output_dir(out: Path, overwrite: bool) -> None:
    """An existing ``out`` needs ``overwrite`` and must be a converted model folder (CheckpointError)."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise CheckpointError(f"{out} already exists; choose another output folder or pass overwrite "
                                  "(CLI: --force)")
        check_replaceable(out)


@contextlib.contextmanager
def atomic_dir(out: Path, overwrite: bool = False):
    """Yield a temporary sibling folder; on success it replaces ``out`` in one rename, else vanishes.
    ``overwrite`` replaces only a converted model folder (``check_replaceable``)."""
    out = Path(out)
    check_output_dir(out, overwrite)
    created = _make_parents(out)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        _remove_empty(created)
        raise write_error(e, out) from None
    try:
        try:
            yield tmp
        except Exception as e:
            if _disk_full(e):
                raise write_error(e, out) from None
            raise
        mask = _umask()                                   # mkdtemp/mkstemp/safetensors make 0o700/0o600
        for path in [tmp, *tmp.rglob("*")]:
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            try:
                os.replace(tmp, out)
            except OSError:
                os.replace(old / out.name, out)           # put the previous folder back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if not out.exists():
            _remove_empty(created)


def _make_parents(path: Path) -> list[Path]:
    """Create ``path``'s missing parent folders; return them (outermost first) for ``_remove_empty``."""
    missing, folder = [], Path(path).parent
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    missing.reverse()
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _remove_empty(missing)
        raise write_error(e, path) from None
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders this module created, innermost first, where they are still empty."""
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """0o666 minus the umask: what open() would give a new file (mkstemp makes 0o600 files)."""
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_file(path: Path, make_parents: bool = False):
    """Yield a temporary sibling path to write ``path``'s content to; on success it replaces ``path`` in one
    rename (with the mode open() would give a new file), else vanishes: readers never see a partial file.
    ``make_parents`` creates missing folders (removed again if the write fails). A failed write (disk full,
    unwritable folder) is a WriteError."""
    path = Path(path)
    created = _make_parents(path) if make_parents else []
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    except OSError as e:
        _remove_empty(created)
        raise write_error(e, path) from None
    os.close(fd)
    done = False
    try:
        try:
            yield tmp
            os.chmod(tmp, default_file_mode())
            os.replace(tmp, path)
            done = True
        except OSError as e:
            raise write_error(e, path) from None
        except Exception as e:
            if _disk_full(e):
                raise write_error(e, path) from None
            raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if not done:
            _remove_empty(created)


def atomic_write_bytes(path: Path, data: bytes, make_parents: bool = False) -> None:
    """Write a file through a temporary sibling and a rename: readers never see a partial file."""
    with atomic_file(path, make_parents) as tmp, open(tmp, "wb") as f:
        f.write(data)


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes as 64 hex digits, read in 4 MiB blocks (the one file digest: job
    manifests, the conversion cache, converted models' provenance)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def looks_like_path(source: str) -> bool:
    """A string that can only be a filesystem path (hub ids are 'name' or 'org/name')."""
    return (Path(source).is_absolute() or source.startswith((".", "~")) or source.count("/") > 1
            or "\\" in source)


def cached_hub_folder(repo_id: str) -> str | None:
    """The local hub-cache snapshot folder holding ``repo_id``'s config.json, without any network access.

    (``from_pretrained(name, local_files_only=True)`` still contacts the Hub with huggingface_hub 2.4: it
    fetches an agent registry while building request headers. Resolving the folder here avoids that.)"""
    try:
        from huggingface_hub import try_to_load_from_cache
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 - an invalid repo id is simply not cached
        return None
    return str(Path(found).parent) if isinstance(found, str) else None


def resolve_pretrained(source: str, *, allow_download: bool, not_found: str,
                       not_cached: str) -> tuple[str, bool]:
    """Where transformers' ``from_pretrained`` should load ``source`` from: ``(where, local_files_only)``.

    A local folder wins; a string that can only be a path but is no folder raises CheckpointError(not_found);
    a hub name loads from the Hub when ``allow_download``, else from the local hub cache (resolved here,
    offline) or raises CheckpointError(not_cached). The two messages carry the caller's fix.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return str(path), True
    if looks_like_path(source):
        raise CheckpointError(not_found)
    if allow_download:
        return source, False
    where = cached_hub_folder(source)
    if where is None:
        raise CheckpointError(not_cached)
    return where, True
