"""Fixtures for the fine-tuning tests: the tiny audiocraft checkpoints converted once per session."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
T5_TINY = FIXTURES / "ac_ref" / "t5_tiny"
TRAIN_REF = FIXTURES / "ac_train"
CHECKPOINTS = {"10s": FIXTURES / "ac_ref" / "magnet_tiny", "30s": FIXTURES / "ac_ref_30s" / "magnet_tiny"}


class TrainReference:
    def __init__(self, folder: Path):
        self.folder = folder
        self.tensors = load_file(str(folder / "reference.safetensors"))
        self.meta = json.loads((folder / "reference.json").read_text())


@pytest.fixture(scope="session")
def train_ref() -> TrainReference:
    return TrainReference(TRAIN_REF)


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """Callable: variant ('10s' / '30s') -> converted model folder (cached)."""
    import magnet_fast as mf
    root = tmp_path_factory.mktemp("train-models")
    cache: dict[str, Path] = {}

    def get(variant: str) -> Path:
        if variant not in cache:
            cache[variant] = mf.convert(CHECKPOINTS[variant], root / variant)
        return cache[variant]
    return get
