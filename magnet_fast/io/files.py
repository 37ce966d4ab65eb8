"""File helpers shared by conversion and run time: restricted unpickling of audiocraft exports, atomic
writes (one file: ``atomic_file`` / ``atomic_write_bytes``; one folder: ``atomic_dir``) and the one
resolver of local-folder / Hugging Face-cache sources (``resolve_pretrained``) used for T5 and the codec."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path

import torch

from magnet_fast.errors import CheckpointError, MagnetFastError, ParameterError


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


CONVERTED_ENTRIES = {"config.json", "model.safetensors", "codec", "t5", "digests.json"}


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



# ============================================================================ hostile input (docs/reliability.md)
# --------------------------------------------------------------------------- path guard
MAX_COMPONENT_BYTES = 255            # NAME_MAX of every common file system
MAX_PATH_BYTES = 4095                # PATH_MAX - 1 (Linux)


def check_path(path, what: str, error=ParameterError) -> Path:
    """A path a user passed, checked before any file system call: a str or os.PathLike, no NUL byte, encodable
    (no lone surrogates), each component at most 255 bytes, the whole at most 4095 (else ENAMETOOLONG would
    be a traceback deep inside a library). Returns it as a Path; ``error`` (a MagnetFastError class) names
    ``what`` and the fix."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise error(f"{what} must be a path (str or os.PathLike), got {type(path).__name__}")
    if not path:
        raise error(f"{what} is empty; pass a path")
    if "\x00" in path:
        raise error(f"{what} {short(path)} contains a NUL character; pass a valid path")
    try:
        raw = os.fsencode(path)
    except UnicodeEncodeError:
        raise error(f"{what} {short(path)} is not encodable (a lone surrogate?); pass a valid path") from None
    longest = max((len(c) for c in raw.split(b"/")), default=0)
    if longest > MAX_COMPONENT_BYTES:
        raise error(f"{what} {short(path)}: a path component is {longest} bytes, over the file system's "
                    f"{MAX_COMPONENT_BYTES}; use a shorter name")
    if len(raw) > MAX_PATH_BYTES:
        raise error(f"{what} {short(path)} is {len(raw)} bytes long, over the {MAX_PATH_BYTES}-byte path limit; "
                    "use a shorter path")
    return Path(path)


def short(value, limit: int = 80) -> str:
    """repr(value) cut to ``limit`` characters (error messages never echo megabytes of input)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 20]}...<{len(text)} chars>"


def cap(text: str, limit: int = 500) -> str:
    """``text`` cut to ``limit`` characters with a marker (echoed values in messages and manifests)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def refuse_symlink(path: Path, what: str, error=None) -> None:
    """Raise (WriteError by default) when ``path`` is a symbolic link (dangling or not): a job never writes,
    truncates or creates a file through a link, which could point outside its folder."""
    if os.path.islink(path):
        raise (error or WriteError)(f"{what} {path} is a symbolic link; refusing to write through it (it could "
                                    "point outside the output folder): remove the link or choose another folder")


def open_nofollow(path: Path, flags: int, mode: int = 0o666) -> int:
    """os.open with O_NOFOLLOW (and O_CLOEXEC): a symlink at ``path`` is ELOOP, never followed."""
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), mode)


# --------------------------------------------------------------------------- the bounded reader
MAX_TEXT_BYTES = 256 << 20           # a job file, a prompts file (256 MiB)
MAX_LINE_BYTES = 1 << 20             # one JSONL line (1 MiB)
MAX_MANIFEST_BYTES = 2 << 30         # a manifest grows with the items done (~500 bytes each)
MAX_CONFIG_BYTES = 16 << 20          # config.json, digests.json


def read_regular(path, *, max_bytes: int, what: str, error=ParameterError, fd: int | None = None) -> bytes:
    """The whole content of a regular file, at most ``max_bytes``: a FIFO, a device (/dev/zero), a socket or
    a folder is refused before reading (opened non-blocking, so a FIFO without writer cannot hang), and so
    is a larger file. ``fd``: read that open descriptor (from its current offset 0) instead of opening."""
    own = fd is None
    if own:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            raise error(f"{what} {path} is not readable ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a device, pipe or socket)"
            raise error(f"{what} {path} is {kind}; pass a regular file")
        if st.st_size > max_bytes:
            raise error(f"{what} {path} is {st.st_size} bytes, over the {max_bytes}-byte limit; split it")
        chunks, size = [], 0
        while size <= max_bytes:
            block = os.pread(fd, min(1 << 20, max_bytes + 1 - size), size)
            if not block:
                break
            chunks.append(block)
            size += len(block)
        if size > max_bytes:
            raise error(f"{what} {path} is over the {max_bytes}-byte limit (it grew while being read); split it")
        return b"".join(chunks)
    except OSError as e:
        raise error(f"{what} {path} is not readable ({e.strerror or e})") from None
    finally:
        if own:
            os.close(fd)


def split_lines(data: bytes, *, max_line: int = MAX_LINE_BYTES, what: str = "file",
                error=ParameterError, decode_errors: bool = True) -> list[str | None]:
    """Bytes -> lines, split on ``\n`` only (``\r\n`` tolerated; U+2028, U+0085, form feed and friends are
    legal inside a JSON string and stay inside their line), a leading UTF-8 BOM accepted. A line over
    ``max_line`` bytes is an ``error`` naming its number; a line that is not UTF-8 is an error too, or None
    with ``decode_errors=False`` (the caller reports it per line)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    out: list[str | None] = []
    for n, raw in enumerate(parts, 1):
        if len(raw) > max_line:
            raise error(f"{what}:{n} is {len(raw)} bytes, over the {max_line}-byte line limit")
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            if decode_errors:
                raise error(f"{what}:{n} is not UTF-8 text ({e.reason} at byte {e.start})") from None
            out.append(None)
    return out


def read_lines(path, *, max_bytes: int = MAX_TEXT_BYTES, max_line: int = MAX_LINE_BYTES, what: str = "file",
               error=ParameterError) -> list[str]:
    """``read_regular`` + ``split_lines``: the one way a text/JSONL input is read."""
    data = read_regular(path, max_bytes=max_bytes, what=what, error=error)
    return split_lines(data, max_line=max_line, what=f"{what} {path}", error=error)


MAX_INT_DIGITS = 40                  # JSON integers beyond this are refused (2**63 has 19 digits)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON (write a number or null)")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def parse_json(text: str):
    """One JSON document -> (value, None) or (None, why): NaN/Infinity refused (not JSON), integers over
    ``MAX_INT_DIGITS`` digits refused, deep nesting (RecursionError) and every decoding error a message,
    never an exception."""
    try:
        return json.loads(text, parse_constant=_no_constant, parse_int=_bounded_int), None
    except json.JSONDecodeError as e:
        return None, f"not valid JSON ({e.msg} at column {e.colno})"
    except RecursionError:
        return None, "not valid JSON (nested too deeply)"
    except ValueError as e:
        return None, f"not valid JSON ({cap(str(e), 120)})"


def _finite(obj):
    if isinstance(obj, float) and obj != obj or obj in (float("inf"), float("-inf")):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def json_line(obj) -> str:
    """Strict JSON for a record (no bare NaN/Infinity: non-finite floats become null), one line."""
    try:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(obj), ensure_ascii=False, allow_nan=False)


def utf8_ok(text: str) -> bool:
    """False for a string holding lone surrogates (JSON's "\\ud800"), which cannot be written as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --------------------------------------------------------------------------- digests
_DIGESTS: dict[tuple, str] = {}
_DIGESTS_LOCK = threading.Lock()


def sha256_of(path: Path) -> str:
    """SHA-256 (hex) of a file, remembered in-process per (path, inode, size, mtime, ctime)."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _DIGESTS_LOCK:
        if key in _DIGESTS:
            return _DIGESTS[key]
    h = hashlib.sha256()
    with open(real, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    with _DIGESTS_LOCK:
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


DIGESTS_FILE = "digests.json"


def record_digests(folder: Path) -> None:
    """Write ``folder/digests.json``: size and SHA-256 of every file below ``folder`` (conversion time)."""
    folder = Path(folder)
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != DIGESTS_FILE:
            files[p.relative_to(folder).as_posix()] = {"size": p.stat().st_size, "sha256": sha256_of(p)}
    (folder / DIGESTS_FILE).write_text(json.dumps({"files": files}, indent=1, sort_keys=True) + "\n")


def verify_digests(folder: Path) -> str | None:
    """None when every file ``digests.json`` records is there with its size and SHA-256 (sizes first: a
    truncated file costs no hashing) and nothing else is, else what is wrong (one phrase)."""
    folder = Path(folder)
    try:
        data = read_regular(folder / DIGESTS_FILE, max_bytes=MAX_CONFIG_BYTES, what="digests",
                            error=CheckpointError)
    except CheckpointError:
        return f"no readable {DIGESTS_FILE}"
    recorded, why = parse_json(data.decode("utf-8", "replace"))
    files = recorded.get("files") if isinstance(recorded, dict) else None
    if not isinstance(files, dict) or not files:
        return f"{DIGESTS_FILE} is malformed"
    try:
        for name, want in files.items():
            p = folder / name
            if not isinstance(want, dict) or not p.is_file() or p.is_symlink() or p.stat().st_size != want.get("size"):
                return f"{name} is missing or has another size"
        for name, want in files.items():
            if sha256_of(folder / name) != want.get("sha256"):
                return f"{name} was modified (its SHA-256 differs from the conversion's)"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    return None


def model_identity(folder: Path) -> str:
    """What identifies a converted model's bytes: SHA-256 over config.json and model.safetensors's digest
    (16 hex digits; the weights' digest is remembered per file stamp, so a resume pays it once per process)."""
    from magnet_fast.config import CONFIG_NAME, WEIGHTS_NAME
    folder = Path(folder)
    h = hashlib.sha256()
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            h.update(f"{name}={sha256_of(folder / name)}\n".encode())
        except OSError:
            h.update(f"{name}=missing\n".encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- loading from threads
LOAD_LOCK = threading.RLock()


def serialised_load(fn):
    """Decorator: run ``fn`` under the process-wide ``LOAD_LOCK``. Model construction (lazy transformers
    imports, the meta-device build, conversion into the cache) is not thread-safe; loads run one at a time,
    generation on the loaded models stays concurrent."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with LOAD_LOCK:
            return fn(*args, **kwargs)
    return wrapper


def os_error_line(e: OSError) -> str | None:
    """The one-line message for an OSError a user's path caused (ENAMETOOLONG, ELOOP, EILSEQ), else None."""
    why = {errno.ENAMETOOLONG: "a path component or the path is too long for the file system; use a shorter name",
           errno.ELOOP: "too many levels of symbolic links; fix the links",
           errno.EILSEQ: "the name is not valid for the file system"}.get(e.errno)
    if why is None:
        return None
    where = e.filename if e.filename is not None else ""
    return f"{short(str(where)) if where else 'path'}: {why}"
