"""Class 1 of issue 24: data loss or overwrite. Symlinks at any file a job writes or repairs, files the
manifest does not know, id collisions (also case-folded, also after the disambiguation pass) and an
unwritable manifest are all refused before any work, with nothing outside the folder touched."""
from __future__ import annotations

import itertools
import os
import random

import pytest

from magnet_fast import jobs
from magnet_fast.errors import MagnetFastError
from magnet_fast.jobs import prepare, run_job

from .conftest import FAST, never_load, write_job


def _warn(_msg):
    pass


# ----------------------------------------------------------------------------------------- symlinks
@pytest.mark.parametrize("which", ["manifest", "manifest_dangling", "lock", "lock_dangling", "target",
                                   "target_dangling"])
def test_symlink_at_any_file_the_job_writes_is_refused(tmp_path, which):
    job = write_job(tmp_path / "job.jsonl", [{"id": "a", "text": "x"}])
    out = tmp_path / "out"
    out.mkdir()
    outside = tmp_path / "outside.txt"
    dangling = tmp_path / "created_outside"
    outside.write_bytes(b"precious line one\npartial")
    name = {"manifest": jobs.MANIFEST_NAME, "lock": jobs.LOCK_NAME, "target": "a.wav"}[which.split("_")[0]]
    (out / name).symlink_to(dangling if which.endswith("dangling") else outside)
    with pytest.raises(MagnetFastError, match="symbolic link"):
        run_job(job, out, never_load, defaults=FAST, warn=_warn)
    assert outside.read_bytes() == b"precious line one\npartial"       # not truncated, nothing appended
    assert not dangling.exists()                                      # no target created outside DIR


def test_cli_symlinked_manifest_is_one_line_exit_2(tmp_path, capsys):
    from magnet_fast.cli import main
    job = write_job(tmp_path / "job.jsonl", [{"id": "a", "text": "x"}])
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "victim").write_text("keep\n")
    (out / jobs.MANIFEST_NAME).symlink_to(tmp_path / "victim")
    assert main(["batch", str(job), "--out", str(out), "--steps", "1,1,1,1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "symbolic link" in err[0]
    assert (tmp_path / "victim").read_text() == "keep\n"


# ----------------------------------------------------------------------------------------- unknown files
def test_file_the_manifest_does_not_know_is_refused_without_force(tmp_path):
    job = write_job(tmp_path / "job.jsonl", [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}])
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.wav").write_bytes(b"the user's own recording")
    with pytest.raises(MagnetFastError, match="force"):
        run_job(job, out, never_load, defaults=FAST, warn=_warn)
    assert (out / "a.wav").read_bytes() == b"the user's own recording"
    plan = prepare(job, out, FAST, _warn, force=True)                 # --force: allowed to replace it
    try:
        assert [it.id for it in plan.pending] == ["a", "b"]
    finally:
        plan.close()


def test_files_written_by_an_interrupted_run_are_ours_not_unknown(tmp_path):
    """The job announces its files in the manifest before writing them, so a WAV left by a crash between
    its rename and its manifest line is recognised on resume (no --force needed)."""
    job = write_job(tmp_path / "job.jsonl", [{"id": "a", "text": "x"}])
    out = tmp_path / "out"
    plan = prepare(job, out, FAST, _warn)
    plan.close()
    (out / "a.wav").write_bytes(b"complete wav without its manifest line")
    plan = prepare(job, out, FAST, _warn)
    try:
        assert [it.id for it in plan.pending] == ["a"]
    finally:
        plan.close()


# ----------------------------------------------------------------------------------------- collisions
def _hash(i):
    from magnet_fast.jobs.items import _id_hash
    return _id_hash(i)


@pytest.mark.parametrize("ids", [
    ["a", "A", f"a-{_hash('a')}"],                    # the crafted pair
    ["A", f"a-{_hash('A')}", "a"],                    # differs only in case from a disambiguated name
    ["x y", "x_y", f"x_y-{_hash('x y')}", f"X_Y-{_hash('x_y')}"],
    ["a", "A", f"a-{_hash('a')}", f"A-{_hash('A')}", f"a-{_hash('a')}-{_hash(f'a-{_hash(chr(97))}')}"],
])
def test_file_names_unique_after_disambiguation_case_folded_and_stable(ids):
    names = jobs.file_names(ids)
    assert len({n.casefold() for n in names.values()}) == len(ids), names
    for perm in itertools.permutations(ids):
        assert jobs.file_names(list(perm)) == names                  # stable whatever the line order


def test_file_names_unique_for_random_crafted_sets():
    rng = random.Random(0)
    for _ in range(200):
        base = [rng.choice(["a", "A", "b b", "B_B", "ä", "."]) + rng.choice(["", "1", " "]) for _ in range(4)]
        ids = list(dict.fromkeys(base))
        crafted = [n[:-4] for n in jobs.file_names(ids).values()]    # names of one run used as ids
        ids = list(dict.fromkeys(ids + crafted + [c.upper() for c in crafted]))
        names = jobs.file_names(ids)
        assert len({n.casefold() for n in names.values()}) == len(ids), names


# ----------------------------------------------------------------------------------------- writability
def test_manifest_that_is_a_folder_is_refused_before_work(tmp_path):
    job = write_job(tmp_path / "job.jsonl", [{"id": "a", "text": "x"}])
    out = tmp_path / "out"
    (out / jobs.MANIFEST_NAME).mkdir(parents=True)
    with pytest.raises(MagnetFastError, match="manifest"):
        run_job(job, out, never_load, defaults=FAST, warn=_warn)
    assert not list(out.glob("*.wav"))


def test_read_only_manifest_is_refused_before_any_wav(tmp_path):
    """As an unprivileged user (root ignores file modes): fork, drop to 'nobody', run the job."""
    job = write_job(tmp_path / "job.jsonl", [{"id": "a", "text": "x"}])
    out = tmp_path / "out"
    out.mkdir()
    (out / jobs.MANIFEST_NAME).write_text("")
    os.chmod(out / jobs.MANIFEST_NAME, 0o444)
    for p in (tmp_path, out):
        os.chmod(p, 0o777)
    os.chmod(job, 0o644)
    parent = tmp_path
    while parent != parent.parent:                    # let 'nobody' traverse to tmp_path
        parent = parent.parent
        if os.getuid() == 0 and str(parent).startswith("/tmp/"):
            os.chmod(parent, os.stat(parent).st_mode | 0o011)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                      # child
        os.close(r)
        code = b"?"
        try:
            if os.getuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            try:
                run_job(job, out, never_load, defaults=FAST, warn=_warn)
                code = b"ran"
            except MagnetFastError as e:
                code = b"refused:" + str(e).encode()
            except BaseException as e:  # noqa: BLE001
                code = b"crash:" + repr(e).encode()
        finally:
            os.write(w, code)
            os._exit(0)
    os.close(w)
    got = os.read(r, 4096).decode()
    os.waitpid(pid, 0)
    assert got.startswith("refused:") and "manifest" in got, got
    assert not list(out.glob("*.wav"))
