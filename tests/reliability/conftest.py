"""Shared helpers of the hostile-input tests (issue 24, docs/reliability.md)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest


def write_job(path: Path, items: list, extra: str = "") -> Path:
    path.write_text("".join(json.dumps(it) + "\n" for it in items) + extra, encoding="utf-8")
    return path


def never_load():
    raise AssertionError("the model was loaded although the job must be refused before any work")


@pytest.fixture(scope="session")
def demo_model():
    import warnings

    from magnet_fast import MagnetFast
    from magnet_fast.demo import DEMO_MODEL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return MagnetFast.from_pretrained(DEMO_MODEL)


FAST = {"decoding_steps": [1, 1, 1, 1]}
