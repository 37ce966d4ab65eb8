"""Batch jobs on Ray Data (magnet_fast/ray_jobs.py) on a local Ray with the bundled demo model: the same
bytes and manifest as the single-process run, resume after an interrupted run, a failing item recorded."""
from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import pytest

pytest.importorskip("soundfile", reason="soundfile (and its cffi) not installed: jobs write WAVs with it")
ray = pytest.importorskip("ray", reason='Ray not installed (pip install -e ".[ray]"; .ci/run installs it)')
pytest.importorskip("ray.data", reason='Ray Data not installed (pip install -e ".[ray]")')

from magnet_fast.demo import DEMO_MODEL  # noqa: E402
from magnet_fast.jobs import FILES_NAME, ModelSpec, file_names, run_job  # noqa: E402
from magnet_fast.ray_jobs import run_ray_job  # noqa: E402

FAST = {"decoding_steps": [2, 1, 1, 1]}
ITEMS = [
    {"id": "calm piano", "text": "calm piano", "seed": 11},
    {"id": "edm", "text": "energetic edm with drums and bass"},
    {"id": "jazz", "text": "jazz trio", "seed": 3, "temperature": 2.0},
    {"id": "overflow", "text": "x", "max_cfg_coef": 1e39},             # fails: NumericsError
    {"id": "lofi", "text": "lo-fi hip hop", "temperature": 2.0},
    {"id": "silence", "text": None, "seed": 5},
]
GOOD = [it["id"] for it in ITEMS if it["id"] != "overflow"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.wav"))}


def last_records(folder: Path) -> dict:
    recs = {}
    for line in (folder / "manifest.jsonl").read_text().splitlines():
        rec = json.loads(line)
        recs[rec["id"]] = rec
    return recs


def test_ray_job_matches_single_process_and_resumes(local_ray, tmp_path):
    job = tmp_path / "job.jsonl"
    job.write_text("".join(json.dumps(it) + "\n" for it in ITEMS) + "{broken\n")
    # the reference: the single-process run, in this process, with torch's default thread count (the Ray
    # replicas below run with 1 and 2 threads)
    from magnet_fast import MagnetFast
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = MagnetFast.from_pretrained(DEMO_MODEL)
    single = run_job(job, tmp_path / "single", model, defaults=FAST, max_batch=4, warn=lambda m: None)
    assert (single.done, single.failed) == (5, 2)
    ref, ref_recs = outputs(tmp_path / "single"), last_records(tmp_path / "single")
    names = file_names([it["id"] for it in ITEMS])
    assert sorted(ref) == sorted(names[i] for i in GOOD)
    spec = ModelSpec(str(DEMO_MODEL))

    # 2 replicas, batches of 2: identical files and manifest rows, the failing item and bad line recorded
    got = run_ray_job(job, tmp_path / "ray", spec, defaults=FAST, max_batch=2, replicas=2,
                      warn=lambda m: None)
    assert (got.done, got.skipped, got.failed, got.total) == (5, 0, 2, 7)
    assert outputs(tmp_path / "ray") == ref
    recs = last_records(tmp_path / "ray")
    assert set(recs) == set(ref_recs) == {*GOOD, "overflow", None}
    keys = ("status", "file", "sha256", "seed", "seed_from_id", "params", "text", "audio_s", "line")
    for item_id, rec in recs.items():
        assert {k: rec[k] for k in keys} == {k: ref_recs[item_id][k] for k in keys}, item_id
        if rec["status"] == "done":
            assert rec["sha256"] == hashlib.sha256(ref[rec["file"]]).hexdigest()
    assert recs["overflow"]["error"].startswith("NumericsError")
    assert recs[None]["error"].startswith("job.jsonl:7: not valid JSON")

    # an interrupted run: 2 items recorded, a manifest line cut off mid-write, a finished WAV whose line
    # never made it (damaged here, so it must be regenerated) and a stale temp file
    out = tmp_path / "interrupted"
    out.mkdir()
    lines = (tmp_path / "single" / "manifest.jsonl").read_text().splitlines()
    kept = [ln for ln in lines if json.loads(ln)["id"] in ("calm piano", "jazz")]
    (out / "manifest.jsonl").write_text("\n".join(kept) + "\n" + lines[-1][:40])
    for item_id in ("calm piano", "jazz"):
        shutil.copy(tmp_path / "single" / names[item_id], out / names[item_id])
    (out / names["edm"]).write_bytes(ref[names["edm"]][:1000])
    (out / FILES_NAME).write_text(names["edm"] + "\n")     # the run listed it before writing (issue 24)
    (out / f".{names['lofi']}.tmp-x1y2").write_bytes(b"partial")
    warned = []
    resumed = run_ray_job(job, out, spec, defaults=FAST, max_batch=4, replicas=1, warn=warned.append)
    assert (resumed.done, resumed.skipped, resumed.failed) == (3, 2, 2)
    assert any("incomplete last line" in w for w in warned)
    assert outputs(out) == ref
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    statuses = {k: r["status"] for k, r in ref_recs.items()}
    assert {k: r["status"] for k, r in last_records(out).items()} == statuses
