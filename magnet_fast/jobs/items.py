"""A job file's items: parsing JSONL lines into `Item`s (with line errors), seeds derived from ids, and
file names unique after sanitising and case folding."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from magnet_fast.errors import MagnetFastError

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
