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

The package: ``items`` (job lines → items, seeds, file names), ``manifest`` (the record), ``generate`` (the
model and the items' audio), ``run`` (plan, lock, the shared skeleton, ``run_job``); everything is
importable from ``magnet_fast.jobs`` as before.
"""
from magnet_fast.jobs.generate import (
    ModelSpec,
    accepted_params,
    load_model,
    process_items,
    synthesize,
)
from magnet_fast.jobs.items import (
    DEFAULT_MAX_BATCH,
    FILES_NAME,
    LINE_KEYS,
    LOCK_NAME,
    MANIFEST_FIELDS,
    MANIFEST_NAME,
    MAX_NAME,
    RESERVED,
    SEED_BITS,
    Item,
    JobError,
    JobWarning,
    LineError,
    canonical,
    file_names,
    parse_job,
    safe_name,
    seed_from_id,
)
from magnet_fast.jobs.manifest import (
    Manifest,
    make_row,
)
from magnet_fast.jobs.run import (
    SHOWN_LINE_ERRORS,
    JobPlan,
    JobSummary,
    model_key,
    prepare,
    record_line_errors,
    run_job,
    run_skeleton,
    summarize,
)

__all__ = ["DEFAULT_MAX_BATCH", "FILES_NAME", "Item", "JobError", "JobPlan", "JobSummary",
           "JobWarning", "LINE_KEYS", "LOCK_NAME", "LineError", "MANIFEST_FIELDS", "MANIFEST_NAME",
           "MAX_NAME", "Manifest", "ModelSpec", "RESERVED", "SEED_BITS", "SHOWN_LINE_ERRORS",
           "accepted_params", "canonical", "file_names", "load_model", "make_row",
           "model_key", "parse_job", "prepare", "process_items", "record_line_errors", "run_job",
           "run_skeleton", "safe_name", "seed_from_id", "summarize", "synthesize"]
