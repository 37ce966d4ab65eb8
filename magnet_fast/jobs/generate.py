"""Generating a job's items: the model (`ModelSpec`, loaded once), parameter checks against its signature,
batched tokens decoded per item, WAVs written atomically (`process_items`)."""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from magnet_fast.jobs.items import RESERVED, Item, canonical
from magnet_fast.jobs.manifest import make_row


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
