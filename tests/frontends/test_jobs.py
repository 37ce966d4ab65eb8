"""Resumable batch jobs (``magnet-fast batch``, magnet_fast/jobs/) on the bundled demo model: parsing and
file names, the manifest's crash handling, byte-identical outputs for resumed / re-ordered / differently
batched runs against single-item generation, per-item failures, and the CLI (exit codes, kill -9, resume)."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from magnet_fast import jobs
from magnet_fast.jobs import JobError, JobWarning, Manifest, parse_job, run_job
from tests.frontends.test_cli import child_env, run_main

sf = pytest.importorskip("soundfile", reason="soundfile (and its cffi) not installed: jobs write WAVs")

ROOT = Path(__file__).resolve().parents[2]
FAST = {"decoding_steps": [2, 1, 1, 1]}
SAMPLES = 498 * 640                                    # demo model: 498 frames x 640 samples per frame
# Five items: given and derived seeds, two parameter groups, an unconditional one, ids needing sanitising.
ITEMS = [
    {"id": "calm piano", "text": "calm piano", "seed": 11},
    {"id": "edm", "text": "energetic edm with drums and bass"},
    {"id": 7, "text": "jazz trio", "seed": 3, "temperature": 2.0},
    {"id": "silence?", "text": None, "seed": 5},
    {"id": "lofi", "text": "lo-fi hip hop", "temperature": 2.0},
]


def write_job(path: Path, items: list, extra_lines: tuple = ()) -> Path:
    path.write_text("".join(json.dumps(it) + "\n" for it in items) + "".join(extra_lines), encoding="utf-8")
    return path


def derived_seed(item_id: str) -> int:
    return int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:8], "big") & (2**62 - 1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """In-process runs use one torch thread (fast on a loaded 2-core machine, and the CLI run killed below
    uses the default, so a thread-count dependence would show up as different bytes)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model():
    from magnet_fast import MagnetFast
    from magnet_fast.demo import DEMO_MODEL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return MagnetFast.from_pretrained(DEMO_MODEL)


def reference_bytes(model, item: dict) -> bytes:
    """The item generated alone through the public API (one CPU thread), as 16-bit WAV bytes."""
    from magnet_fast.io.audio import wav_bytes
    seed = item.get("seed", derived_seed(str(item["id"])))
    params = {**FAST, **{k: v for k, v in item.items() if k not in ("id", "text", "seed")}}
    assert torch.get_num_threads() == 1
    audio = model.generate([item["text"]], seed=[seed], batch_invariant=True, **params)
    return wav_bytes(audio[0], model.sample_rate)[0]


def outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.wav"))}


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def never_load():
    raise AssertionError("the model was loaded although nothing was left to do")


# ----------------------------------------------------------------------------------------- no model
def test_file_names_and_derived_seeds():
    assert jobs.safe_name("take_01.v2-a") == "take_01.v2-a"                   # already safe: unchanged
    h = hashlib.sha256(b"calm piano").hexdigest()[:8]
    assert jobs.safe_name("calm piano") == f"calm_piano-{h}"
    assert jobs.safe_name("../../etc/passwd").startswith("_.._etc_passwd-")   # no path, no leading dot
    long = jobs.safe_name("x" * 500)
    assert len(long) == jobs.MAX_NAME + 9 and long.endswith(hashlib.sha256(b"x" * 500).hexdigest()[:8])
    names = jobs.file_names(["Drums", "drums", "bass", "a/b", "a_b"])
    assert len({n.lower() for n in names.values()}) == 5                      # also case-insensitively
    assert names["bass"] == "bass.wav" and names["a_b"] == "a_b.wav"
    assert names["drums"] == f"drums-{hashlib.sha256(b'drums').hexdigest()[:8]}.wav"
    # the derived seed: first 8 bytes of sha256(id), big-endian, 62 bits; pinned so it never changes
    assert jobs.seed_from_id("edm") == derived_seed("edm") == 3940230217680191621
    assert all(0 <= jobs.seed_from_id(str(i)) < 2**62 for i in range(100))


def test_parse_job_line_errors_and_defaults(tmp_path):
    job = write_job(tmp_path / "job.jsonl", [
        {"id": "a", "text": "x", "temperature": 1.5},
        {"id": "b", "text": "y", "seed": -1},
        {"id": "a", "text": "again"},
        {"text": "no id"},
        {"id": "c"},
        {"id": "d", "text": "z", "max_batch": 2},
    ], extra_lines=("\n", "{not json\n", "[1, 2]\n", '{"id": 5, "text": null, "seed": 9}\n'))
    items, errors = parse_job(job, {"temperature": 3.0, "decoding_steps": [2, 1, 1, 1]})
    assert [(it.id, it.line) for it in items] == [("a", 1), ("5", 10)]
    assert items[0].params == {"temperature": 1.5, "decoding_steps": [2, 1, 1, 1]}    # the line wins
    assert items[0].seed == derived_seed("a") and items[0].seed_from_id
    assert items[1].text is None and items[1].seed == 9 and not items[1].seed_from_id
    got = {e.line: (e.id, e.error) for e in errors}
    assert sorted(got) == [2, 3, 4, 5, 6, 8, 9]
    assert got[2] == ("b", "job.jsonl:2: 'seed' must be an integer in [0, 2**63), got -1")
    assert got[3] == (None, "job.jsonl:3: duplicate id 'a' (first on line 1)")
    assert "job.jsonl:4: has no 'id'" == got[4][1] and "has no 'text'" in got[5][1]
    assert "'max_batch'" in got[6][1] and got[8][1].startswith("job.jsonl:8: not valid JSON")
    assert "must be a JSON object" in got[9][1]
    for content, match in [(b"", "is empty"), (b"{bad\n[]\n", "no line that parses"), (b"\xff\xfe", "UTF-8")]:
        (tmp_path / "bad.jsonl").write_bytes(content)
        with pytest.raises(JobError, match=match):
            parse_job(tmp_path / "bad.jsonl")
    with pytest.raises(JobError, match="not readable"):
        parse_job(tmp_path / "missing.jsonl")


def test_manifest_ignores_partial_last_line_and_keeps_last_record(tmp_path):
    path = tmp_path / "manifest.jsonl"
    lines = [{"id": "a", "status": "failed"}, {"id": "b", "status": "done"}, {"id": "a", "status": "done"}]
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in lines) + b"not a record\n"
                     + b'{"id": "c", "status": "do')
    seen = []
    m = Manifest(path, seen.append)
    assert {k: r["status"] for k, r in m.records.items()} == {"a": "done", "b": "done"}   # last record wins
    assert len(seen) == 2 and "incomplete last line" in seen[0] and ":4: not a manifest record" in seen[1]
    assert path.read_bytes().endswith(b"not a record\n")                                 # partial line cut
    m.append({"id": "c", "status": "done"})
    m.close()
    again = Manifest(path, seen.append)
    assert again.records["c"]["status"] == "done" and len(seen) == 3                   # one more warning only
    assert path.read_bytes().splitlines()[-1] == b'{"id": "c", "status": "done"}'


# ----------------------------------------------------------------------------------------- demo model
def test_outputs_identical_whatever_the_batching_order_or_interruption(model, tmp_path):
    job = write_job(tmp_path / "job.jsonl", ITEMS)
    one = run_job(job, tmp_path / "one", model, defaults=FAST, max_batch=4)
    assert (one.done, one.skipped, one.failed, one.total) == (5, 0, 0, 5)
    assert one.audio_s == pytest.approx(5 * SAMPLES / 32000)
    ref = outputs(tmp_path / "one")
    names = jobs.file_names([str(it["id"]) for it in ITEMS])
    assert sorted(ref) == sorted(names.values())
    for it in ITEMS:                                      # each file == the item generated alone
        assert ref[names[str(it["id"])]] == reference_bytes(model, it), it["id"]
    for rec in records(tmp_path / "one"):
        assert rec["status"] == "done" and rec["error"] is None
        assert rec["sha256"] == hashlib.sha256(ref[rec["file"]]).hexdigest()
        item = next(it for it in ITEMS if str(it["id"]) == rec["id"])
        assert rec["seed"] == item.get("seed", derived_seed(rec["id"]))
        assert rec["seed_from_id"] == ("seed" not in item)
        assert rec["audio_s"] == pytest.approx(SAMPLES / 32000) and rec["wall_s"] > 0
    info = sf.info(str(tmp_path / "one" / names["edm"]))
    assert (info.frames, info.samplerate, info.subtype) == (SAMPLES, 32000, "PCM_16")

    # interrupted, then resumed with another batch size: the first run did items 2 and 4 only
    part = write_job(tmp_path / "part.jsonl", [ITEMS[1], ITEMS[3]])
    run_job(part, tmp_path / "resumed", model, defaults=FAST, max_batch=1)
    resumed = run_job(job, tmp_path / "resumed", model, defaults=FAST, max_batch=3)
    assert (resumed.done, resumed.skipped, resumed.failed) == (3, 2, 0)
    assert outputs(tmp_path / "resumed") == ref

    # lines re-ordered, batches of 2
    reordered = write_job(tmp_path / "reordered.jsonl", ITEMS[::-1])
    run_job(reordered, tmp_path / "reordered", model, defaults=FAST, max_batch=2)
    assert outputs(tmp_path / "reordered") == ref

    # a complete rerun skips everything without loading the model
    again = run_job(job, tmp_path / "one", never_load, defaults=FAST)
    assert (again.done, again.skipped, again.failed) == (0, 5, 0)

    # a damaged output, or a request that changed, is generated again (with a warning)
    (tmp_path / "one" / names["edm"]).write_bytes(b"RIFF broken")
    with pytest.warns(JobWarning, match="missing or modified file"):
        fixed = run_job(job, tmp_path / "one", model, defaults=FAST)
    assert (fixed.done, fixed.skipped) == (1, 4) and outputs(tmp_path / "one") == ref
    before = outputs(tmp_path / "resumed")
    with pytest.warns(JobWarning, match="another text, seed or parameters"):
        changed = run_job(part, tmp_path / "resumed", model, defaults={"decoding_steps": [3, 1, 1, 1]})
    assert (changed.done, changed.skipped) == (2, 0)
    after = outputs(tmp_path / "resumed")
    redone = sorted(names[str(it["id"])] for it in (ITEMS[1], ITEMS[3]))
    assert [n for n in after if after[n] != before[n]] == redone


def test_failed_items_are_recorded_and_the_job_goes_on(model, tmp_path):
    good = [ITEMS[0], ITEMS[1]]
    bad = [
        {"id": "big seed", "text": "calm piano", "seed": 2**63 - 1},        # same group as the good ones
        {"id": "typo", "text": "x", "temprature": 2.0},
        {"id": "overflow", "text": "x", "max_cfg_coef": 1e39},              # NumericsError
        {"id": "negative", "text": "x", "temperature": -1.0},               # ParameterError
    ]
    job = write_job(tmp_path / "job.jsonl", [bad[0], good[0], bad[1], good[1], bad[2], bad[3]],
                    extra_lines=("oops\n",))
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".edm.wav.tmp-abc123"                                  # left by a killed run
    stale.write_bytes(b"partial")
    summary = run_job(job, out, model, defaults=FAST, max_batch=4, warn=lambda m: None)
    assert (summary.done, summary.failed, summary.total) == (2, 5, 7)
    assert not stale.exists()
    recs = {r["id"]: r for r in records(out)}
    assert {k: r["status"] for k, r in recs.items() if k} == {
        "big seed": "failed", "typo": "failed", "overflow": "failed", "negative": "failed",
        "calm piano": "done", "edm": "done"}
    assert "largest seed the engine takes" in recs["big seed"]["error"]   # refused by the parser (issue 24)
    assert recs["typo"]["error"].startswith("ParameterError: unknown parameter(s) 'temprature'")
    assert recs["overflow"]["error"].startswith("NumericsError: non-finite")
    assert recs["negative"]["error"].startswith("ParameterError: temperature must be >= 0")
    assert recs[None]["error"].startswith("job.jsonl:7: not valid JSON") and recs[None]["line"] == 7
    for it in good:                                       # the batch mates of the failing seed are fine
        name = jobs.file_names([it["id"]])[it["id"]]
        assert (out / name).read_bytes() == reference_bytes(model, it)
    want = sorted(jobs.file_names(["calm piano", "edm"]).values())
    assert sorted(p.name for p in out.glob("*.wav")) == want


# ----------------------------------------------------------------------------------------- CLI
def test_cli_kill_9_leaves_no_partial_output_and_resumes(model, tmp_path):
    items = [{"id": f"item-{i}", "text": f"song number {i}"} for i in range(6)]
    items.insert(3, {"id": "bad", "text": "x", "max_cfg_coef": 1e39})
    job = write_job(tmp_path / "job.jsonl", items)
    args = ["batch", "job.jsonl", "--out", "out", "--steps", "2,1,1,1", "--max-batch", "1", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "magnet_fast.cli", *args], cwd=tmp_path, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    manifest = tmp_path / "out" / "manifest.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.exists() and manifest.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    lines = manifest.read_bytes().split(b"\n")
    complete = [json.loads(ln) for ln in lines[:-1]]                     # every finished line parses
    assert 1 <= len(complete) < len(items)
    for rec in complete:                                                 # no line for an unfinished item
        if rec["status"] == "done":
            assert rec["sha256"] == hashlib.sha256((tmp_path / "out" / rec["file"]).read_bytes()).hexdigest()
    for wav in (tmp_path / "out").glob("*.wav"):                         # no partial WAV
        assert sf.info(str(wav)).frames == SAMPLES

    resumed = run_main(*args, "--threads", "1", cwd=tmp_path)              # in-process (the kill: a console)
    assert resumed.returncode == 1, resumed.stderr                       # the 'bad' item failed
    done_before = sum(r["status"] == "done" for r in complete)
    summary = f"{6 - done_before} done, {done_before} skipped (already done), 1 failed of 7 items"
    assert summary in resumed.stdout
    assert "items/s" in resumed.stdout and "real-time factor" in resumed.stdout
    assert "1 item(s) failed ('bad')" in resumed.stderr and "Traceback" not in resumed.stderr
    assert not [p for p in (tmp_path / "out").iterdir() if ".tmp-" in p.name]
    run_job(job, tmp_path / "ref", model, defaults=FAST, max_batch=4, warn=lambda m: None)
    assert outputs(tmp_path / "out") == outputs(tmp_path / "ref")      # CLI defaults == API defaults
    final = {r["id"]: r["status"] for r in records(tmp_path / "out")}
    assert final == {**{it["id"]: "done" for it in items}, "bad": "failed"}


def test_cli_usage_errors_are_one_line_exit_2(tmp_path, monkeypatch, capsys):
    from magnet_fast.cli import main
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.jsonl").write_text("\n")
    write_job(tmp_path / "job.jsonl", ITEMS[:1])
    (tmp_path / "file").write_text("x")
    cases = [
        (["batch", "empty.jsonl", "--out", "o"], "is empty"),
        (["batch", "nope.jsonl", "--out", "o"], "not readable"),
        (["batch", "job.jsonl", "--out", "file"], "is a file"),
        (["batch", "job.jsonl", "--out", "o", "--replicas", "2"], "need --ray"),
        (["batch", "job.jsonl", "--out", "o", "--max-batch", "0"], "--max-batch must be >= 1"),
        (["batch", "job.jsonl", "--out", "o", "--temperature", "-1"], "temperature must be >= 0"),
        (["batch", "job.jsonl", "--out", "o", "--model", "nowhere"], "nowhere"),
        (["batch", "job.jsonl"], "--out"),
    ]
    monkeypatch.setitem(sys.modules, "ray", None)                        # as if the extra were not installed
    cases.append((["batch", "job.jsonl", "--out", "o", "--ray"], 'pip install -e ".[ray]"'))
    for argv, match in cases:
        try:
            code = main(argv)
        except SystemExit as e:                                          # argparse errors
            code = e.code
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("magnet-fast: error:"), (argv, err)
        assert match in lines[0], (argv, err)
    assert not (tmp_path / "o").exists()                                 # nothing written before the checks


def test_cli_batch_on_a_musicgen_model_follows_the_config_kind(tmp_path):
    """The engine follows config.json's kind (MusicGen here): per-item duration and seed, MusicGen's --cfg,
    MAGNeT flags refused with one line."""
    mg = ROOT / "magnet_fast" / "demo" / "musicgen-tiny-demo"
    job = write_job(tmp_path / "job.jsonl", [{"id": "p", "text": "calm piano", "duration": 0.3, "seed": 3},
                                             {"id": "q", "text": "edm", "duration": 0.2}])
    def batch(*args):
        return run_main("batch", str(job), "--out", str(tmp_path / "out"), "--model", str(mg), "--quiet", *args,
                        cwd=tmp_path)
    proc = batch("--top-k", "50", "--cfg", "4")
    assert proc.returncode == 0, proc.stderr
    rows = {r["id"]: r for r in records(tmp_path / "out")}
    assert rows["p"]["status"] == rows["q"]["status"] == "done"
    import soundfile as sf
    assert sf.info(str(tmp_path / "out" / "p.wav")).frames == 15 * 640        # int(0.3 * 50) frames
    bad = batch("--steps", "2,1,1,1")
    assert bad.returncode == 2 and "--steps is for MAGNeT models" in bad.stderr and "Traceback" not in bad.stderr
