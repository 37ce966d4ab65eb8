"""Batch jobs on Ray Data: ``magnet-fast batch JOB.jsonl --out DIR --ray [--ray-address A] [--replicas N]``.

The driver does what the single-process run does before and after generating (``magnet_fast.jobs``: parse
the job, lock and tidy DIR, skip done ids, append manifest lines); Ray Data runs the pending items through
``map_batches`` with an actor pool of ``JobWorker`` replicas. Each replica loads the model once, runs
``jobs.process_items`` (the same code as the single-process run: batch-invariant generation, per-item
decode, atomic fsynced WAV writes into DIR) and returns manifest rows, which the driver appends as they
arrive, so an interrupted run keeps every item that finished. Outputs are byte-identical to the
single-process run's.

Resources per replica: ``num_gpus=1`` on CUDA; on CPU a fraction of a CPU, so that the actors leave room
for Ray Data's own read/write tasks (actors holding every CPU starve them), and ``threads`` torch threads.
On a cluster, DIR must be storage every node can write (NFS, a mounted bucket), and magnet_fast and the
model folder must be installed / present at the same paths on every node.

``ray`` is imported lazily: without the ``ray`` extra only ``--ray`` fails (one line naming the install).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from magnet_fast.jobs import (
    DEFAULT_MAX_BATCH,
    Item,
    JobError,
    JobPlan,
    JobSummary,
    ModelSpec,
    canonical,
    load_model,
    process_items,
    run_skeleton,
)

INSTALL = 'pip install -e ".[ray]"'


def require_ray():
    """Import ray (with Ray Data) or raise JobError naming the install command."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise JobError(f"--ray needs Ray Data ({e}); install it with: {INSTALL}  (or pip install "
                       "'ray[data]>=2.9')") from None
    return ray


class JobWorker:
    """One replica of the actor pool: loads the model once, then turns batches of items into WAVs in
    ``out_dir`` and manifest rows (JSON strings in a ``row`` column)."""

    def __init__(self, model, out_dir: str, max_batch: int, threads: int | None = None):
        if threads:
            import torch
            torch.set_num_threads(threads)
        self.model = load_model(model)
        self.out = Path(out_dir)
        self.max_batch = max_batch

    def __call__(self, batch):
        import numpy as np
        items = [Item.from_json(str(s)) for s in batch["item"]]
        rows = process_items(self.model, items, self.out, self.max_batch)
        return {"row": np.array([json.dumps(r, ensure_ascii=False) for r in rows], dtype=object)}


def _device(model) -> str:
    if isinstance(model, ModelSpec):
        return model.device.split(":")[0]
    return "cpu"


def _cpus_per_replica(cluster_cpus: float, replicas: int, gpu: bool) -> float:
    """GPU replicas: 1 CPU each. CPU replicas: share all but one CPU (left to Ray Data's tasks), at most one
    each (never less than 0.05)."""
    if gpu:
        return 1.0
    spare = cluster_cpus - 1 if cluster_cpus > 1 else cluster_cpus / 2
    return round(max(0.05, min(1.0, spare / replicas)), 3)


def _last_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


def run_ray_job(job: str | Path, out: str | Path, model: ModelSpec | Callable, *,
                defaults: dict | None = None, max_batch: int | None = None, replicas: int = 1,
                address: str | None = None, threads: int | None = None, num_cpus: float | None = None,
                num_gpus: float | None = None, quiet: bool = True,
                warn: Callable[[str], None] | None = None, force: bool = False) -> JobSummary:
    """Run a job file on Ray Data; same outputs, manifest and resumability as ``jobs.run_job``.

    model: a ``ModelSpec`` (or a picklable zero-argument callable) that each replica loads once.
    replicas: actor-pool size (one per GPU on a GPU cluster). address: the cluster (``ray.init(address)``)
    when Ray is not initialised yet; None starts a local Ray (shut down again afterwards). threads: torch
    CPU threads per replica (default: the cluster's CPUs / replicas). num_cpus / num_gpus: per replica
    (defaults: 1 GPU + 1 CPU on CUDA; a fraction of a CPU on CPU, see ``_cpus_per_replica``).
    """
    from magnet_fast.engines.inputs import check_max_batch
    ray = require_ray()
    check_max_batch(max_batch)
    from magnet_fast.engines.inputs import check_threads
    check_threads(threads)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise JobError(f"replicas must be a positive integer, got {replicas!r}")
    if not isinstance(model, ModelSpec) and (hasattr(model, "generate") or not callable(model)):
        raise JobError("run_ray_job needs a ModelSpec (or a zero-argument callable) that each replica loads; "
                       "a loaded model cannot be shipped to the replicas")
    started = []

    def setup(plan: JobPlan):
        nonlocal num_cpus, num_gpus, threads
        if not ray.is_initialized():
            if address:
                ray.init(address=address, logging_level=logging.WARNING)
            else:
                ray.init(include_dashboard=False, logging_level=logging.WARNING)
            started.append(True)
        logging.getLogger("ray.data").setLevel(logging.WARNING)   # our bar counts items
        ctx = ray.data.DataContext.get_current()
        if hasattr(ctx, "enable_progress_bars"):
            ctx.enable_progress_bars = False               # ours (run_skeleton's) counts items
        device = _device(model)
        gpu = device == "cuda"
        cluster_cpus = float(ray.cluster_resources().get("CPU", 1.0))
        if num_cpus is None:
            num_cpus = _cpus_per_replica(cluster_cpus, replicas, gpu)
        if num_gpus is None:
            num_gpus = 1 if gpu else 0
        if threads is None and not gpu:
            threads = max(1, int(cluster_cpus) // replicas)
        size = max_batch or DEFAULT_MAX_BATCH.get(device, 4)
        # items with equal parameters next to each other, so that batches are mostly one group
        pending = sorted(plan.pending, key=lambda it: (canonical(it.params), it.line))
        ds = ray.data.from_items([{"item": it.to_json()} for it in pending])
        remote = {"num_gpus": num_gpus} if num_gpus else {}
        ds = ds.map_batches(
            JobWorker, batch_size=size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=replicas), num_cpus=num_cpus,
            fn_constructor_kwargs={"model": model, "out_dir": str(plan.out.resolve()), "max_batch": size,
                                   "threads": threads},
            **remote)

        def run(record) -> None:
            finished = 0
            try:
                for row in ds.iter_rows():
                    record(json.loads(row["row"]))
                    finished += 1
            except (KeyboardInterrupt, JobError):
                raise
            except Exception as e:  # noqa: BLE001 - Ray wraps the replica's error in a long report
                raise JobError(f"the Ray job stopped: {_last_line(e)} ({finished} item(s) finished and "
                               "recorded; rerun to resume)") from None
        return run

    try:
        return run_skeleton(job, out, setup, defaults=defaults, quiet=quiet, warn=warn, force=force, model=model)
    finally:
        if started:
            ray.shutdown()
