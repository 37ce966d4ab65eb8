"""Model names and folders -> converted model folders, through a local cache of conversions.

The resolver behind ``magnet_fast.compat``'s ``get_pretrained`` (docs/DESIGN.md, "Compat layer and the
converted-model cache"). ``resolve_model(source)`` accepts:

* a folder written by ``magnet-fast convert`` (config.json in the magnet_fast format + model.safetensors):
  returned as it is;
* an audiocraft export folder (``state_dict.bin`` + ``compression_state_dict.bin``, as
  ``huggingface-cli download facebook/magnet-small-10secs --local-dir DIR`` leaves it), or the path of its
  ``state_dict.bin``: converted into the cache;
* a Hugging Face model name (``facebook/magnet-small-10secs``): the two files are taken from the local hub
  cache, where audiocraft's own download puts them (``AUDIOCRAFT_CACHE_DIR`` first when set, as audiocraft
  does, then the default hub cache, ``HF_HUB_CACHE`` / ``HF_HOME``), and converted into the cache. Nothing is
  fetched unless ``allow_download``; a missing file is one ``CheckpointError`` naming the download command.

Converted models live in ``converted_root()``: ``$MAGNET_FAST_CACHE/converted`` (default
``${XDG_CACHE_HOME:-~/.cache}/magnet_fast/converted``), one folder ``<name>-<key>`` per source. The key
hashes the content digests of both source files with the converted format and magnet_fast's version, so a
changed source (a new hub revision, an edited export) or a new converter converts again, and an unchanged
one is reused. A file in the hub cache's ``blobs/`` is named by its content hash already (sha256 for LFS
files); other files are hashed with SHA-256 once per (inode, size, mtime, ctime), remembered in
``converted_root()/.digests.json``. Each conversion is atomic (``magnet_fast.io.files.atomic_dir`` via
``convert``): a folder in the cache is complete or absent. Old conversions are never deleted (another
process may be using one); remove stale ``<name>-*`` folders by hand.

T5 and a pointer-form codec (``{'pretrained': 'facebook/encodec_32khz'}``) are not converted: the engine
resolves them from the same local hub cache at load time (``magnet_fast.io.files.resolve_pretrained``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

from magnet_fast.errors import CheckpointError
from magnet_fast.io.files import (
    atomic_write_bytes,
    looks_like_path,
    serialised_load,
    sha256_file,
    verify_digests,
)

LM_FILE = "state_dict.bin"
CODEC_FILE = "compression_state_dict.bin"
SOURCE_FILES = (LM_FILE, CODEC_FILE)
CACHE_ENV = "MAGNET_FAST_CACHE"
AUDIOCRAFT_CACHE_ENV = "AUDIOCRAFT_CACHE_DIR"
DIGESTS_NAME = ".digests.json"

log = logging.getLogger("magnet_fast")


# ------------------------------------------------------------------------------------------- locations
def cache_root() -> Path:
    """``$MAGNET_FAST_CACHE``, else ``$XDG_CACHE_HOME/magnet_fast``, else ``~/.cache/magnet_fast``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "magnet_fast"


def converted_root() -> Path:
    """Where converted models are cached (``cache_root() / "converted"``)."""
    return cache_root() / "converted"


def download_command(repo_id: str) -> str:
    """The shell command that puts ``repo_id``'s audiocraft files into the local hub cache."""
    return f"huggingface-cli download {repo_id} {LM_FILE} {CODEC_FILE}"


# ------------------------------------------------------------------------------------------- public
def is_converted(folder: Path) -> bool:
    """A folder written by ``magnet-fast convert``: config.json in the magnet_fast format + weights."""
    from magnet_fast.config import CONFIG_NAME, FORMAT, WEIGHTS_NAME
    folder = Path(folder)
    try:
        fmt = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError):
        return False
    return fmt == FORMAT and (folder / WEIGHTS_NAME).is_file()


@serialised_load                                   # conversions into the cache: one at a time per process
def resolve_model(source, *, allow_download: bool = False) -> Path:
    """A hub name, an audiocraft export (folder or its state_dict.bin) or a converted folder -> the
    converted model folder to load (converting into the cache when needed). CheckpointError / ConfigError
    (from the converter) with the fix otherwise."""
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str) or not source.strip():
        raise CheckpointError(f"model name must be a Hugging Face model name (e.g. 'facebook/magnet-small-10secs') "
                              f"or a folder, got {source!r}")
    from magnet_fast.io.files import check_path
    path = check_path(source, "model name or folder", CheckpointError).expanduser()
    if path.exists():
        return _from_local(path)
    if looks_like_path(source):
        raise CheckpointError(f"{source}: no such file or folder; pass a Hugging Face model name (e.g. "
                              "'facebook/magnet-small-10secs'), an audiocraft export folder (state_dict.bin + "
                              "compression_state_dict.bin) or a folder made by `magnet-fast convert`")
    files = _hub_files(source, allow_download)
    return _converted(files, label=source)


# ------------------------------------------------------------------------------------------- local
def _from_local(path: Path) -> Path:
    if path.is_file():
        if path.name != LM_FILE:
            raise CheckpointError(f"{path} is a file; pass the folder holding {LM_FILE} and {CODEC_FILE}, or a "
                                  "folder made by `magnet-fast convert`")
        path = path.parent
    if is_converted(path):
        return path
    if not (path / LM_FILE).is_file():
        raise CheckpointError(f"{path} is neither an audiocraft export ({LM_FILE} + {CODEC_FILE}) nor a folder made "
                              "by `magnet-fast convert` (config.json + model.safetensors)")
    if not (path / CODEC_FILE).is_file():
        raise CheckpointError(f"{path} has {LM_FILE} but no {CODEC_FILE} (the audio codec, or a pointer to it); "
                              f"download both files of the model (e.g. `{download_command('facebook/magnet-small-10secs')} "
                              "--local-dir DIR`)")
    return _converted({LM_FILE: path / LM_FILE, CODEC_FILE: path / CODEC_FILE}, label=path.resolve().name)


# ------------------------------------------------------------------------------------------- hub cache
def _hub_caches() -> list[str | None]:
    """Where audiocraft's files may be: AUDIOCRAFT_CACHE_DIR (audiocraft downloads there when it is set),
    then the default hub cache (None: huggingface_hub's HF_HUB_CACHE)."""
    env = os.environ.get(AUDIOCRAFT_CACHE_ENV)
    return [env, None] if env else [None]


def _hub_cache_names() -> list[str]:
    from huggingface_hub import constants
    return [c if c is not None else str(constants.HF_HUB_CACHE) for c in _hub_caches()]


def _hub_files(repo_id: str, allow_download: bool) -> dict[str, Path]:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:                                    # transformers depends on it; belt and braces
        raise CheckpointError("huggingface_hub is not installed; pass a local folder instead of a hub name") from None
    files: dict[str, Path] = {}
    for name in SOURCE_FILES:
        for cache_dir in _hub_caches():
            try:
                found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
            except Exception:  # noqa: BLE001 - HFValidationError (bad repo id) and friends
                raise CheckpointError(
                    f"{repo_id!r} is neither a folder nor a valid Hugging Face model name (like "
                    "'facebook/magnet-small-10secs')") from None
            if isinstance(found, str) and Path(found).is_file():
                files[name] = Path(found)
                break
    missing = [n for n in SOURCE_FILES if n not in files]
    if missing and allow_download:
        files.update(_download(repo_id, missing))
        missing = []
    if missing:
        where = " or ".join(_hub_cache_names())
        have = f" (the cache holds only {', '.join(sorted(files))})" if files else ""
        raise CheckpointError(
            f"model {repo_id!r} is not in the local Hugging Face cache ({where}): {', '.join(missing)} missing"
            f"{have}, and downloads are off. Download it once with `{download_command(repo_id)}` (or pass "
            "allow_download=True); nothing is fetched otherwise")
    return files


def _download(repo_id: str, names: list[str]) -> dict[str, Path]:
    from huggingface_hub import hf_hub_download
    out = {}
    for name in names:
        try:
            out[name] = Path(hf_hub_download(repo_id=repo_id, filename=name, cache_dir=_hub_caches()[0]))
        except Exception as e:  # noqa: BLE001 - offline, unknown repo, missing file: one message
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise CheckpointError(f"cannot download {name} of {repo_id!r} ({first}); check the name (e.g. "
                                  f"'facebook/magnet-small-10secs') and the network, or run "
                                  f"`{download_command(repo_id)}`") from None
    return out


# ------------------------------------------------------------------------------------------- conversion
def cache_key(files: dict[str, Path]) -> str:
    """16 hex digits naming a conversion: the content digests of the source files, the converted format
    and magnet_fast's version (a newer converter converts again)."""
    from magnet_fast.config import FORMAT, VERSION
    parts = [FORMAT, VERSION] + [f"{name}={file_digest(files[name])}" for name in sorted(files)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _slug(label: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", label.replace("/", "--")).strip("-.")
    return s[:80] or "model"


def _converted(files: dict[str, Path], label: str) -> Path:
    from magnet_fast.io.convert import convert
    out = converted_root() / f"{_slug(label)}-{cache_key(files)}"
    if out.exists() or out.is_symlink():
        why = verify_digests(out) if out.is_dir() and not out.is_symlink() else "not a folder"
        if why is None:
            log.debug("magnet_fast: using the converted %s at %s", label, out)
            return out
        warnings.warn(f"magnet_fast: the converted cache entry {out} is damaged ({why}); reconverting it from "
                      f"{label}", UserWarning, stacklevel=3)
        _set_aside(out)
    log.info("magnet_fast: converting %s once into %s", label, out)
    staging = None
    src = files[LM_FILE].parent
    if any(Path(p).parent != src or Path(p).name != n for n, p in files.items()):
        # the two files are not siblings under their own names (two hub revisions): stage links to them
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=_parent_for(out)))
        for name, path in files.items():
            (staging / name).symlink_to(Path(path).resolve())
        src = staging
    try:
        convert(src, out)
    except CheckpointError:
        if is_converted(out):                    # another process converted the same source meanwhile
            return out
        raise
    except OSError:
        if is_converted(out):                    # lost the final rename to a concurrent conversion
            return out
        raise
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return out


def _set_aside(out: Path) -> None:
    """Move a damaged cache entry out of the way (one rename, so a reader never sees it half removed), then
    delete it; the conversion that follows writes a fresh one atomically."""
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=_parent_for(out)))
    try:
        os.replace(out, old / out.name)
    except FileNotFoundError:                    # another process set it aside first
        pass
    shutil.rmtree(old, ignore_errors=True)


def _parent_for(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.parent


# ------------------------------------------------------------------------------------------- digests
def file_digest(path: Path) -> str:
    """A content digest of ``path``: the blob name for a file in a hub cache's ``blobs/`` (its content
    hash), else its SHA-256 (remembered per inode, size, mtime and ctime in ``.digests.json``)."""
    real = Path(path).resolve()
    if real.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", real.name):
        return f"blob:{real.name}"
    st = real.stat()
    stamp = f"{real}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    memo_path = converted_root() / DIGESTS_NAME
    memo = _read_memo(memo_path)
    if isinstance(memo.get(stamp), str):
        return memo[stamp]
    digest = f"sha256:{sha256_file(real)}"
    memo = {k: v for k, v in _read_memo(memo_path).items() if not k.startswith(f"{real}|")}
    memo[stamp] = digest
    try:
        atomic_write_bytes(memo_path, json.dumps(memo, indent=0, sort_keys=True).encode(), make_parents=True)
    except OSError:                              # a read-only cache still works, it just hashes again
        pass
    return digest


def _read_memo(path: Path) -> dict:
    try:
        memo = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}
