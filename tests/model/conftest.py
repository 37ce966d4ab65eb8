"""Fixtures for the model-level tests: audiocraft's reference outputs and the converted tiny models."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
T5_TINY = FIXTURES / "ac_ref" / "t5_tiny"
VARIANTS = {"10s": FIXTURES / "ac_ref", "30s": FIXTURES / "ac_ref_30s"}


class Reference:
    """One fixture folder: tensors, metadata, its audiocraft checkpoint folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.tensors = load_file(str(folder / "reference.safetensors"))
        self.meta = json.loads((folder / "reference.json").read_text())
        self.checkpoint = folder / "magnet_tiny"


@pytest.fixture(scope="session", params=list(VARIANTS))
def reference(request) -> Reference:
    return Reference(VARIANTS[request.param])


@pytest.fixture(scope="session")
def ref10() -> Reference:
    return Reference(VARIANTS["10s"])


_models: dict = {}


def converted_model(ref: Reference, tmp_root: Path):
    """Convert the fixture checkpoint with the project converter and load it (CPU, float32)."""
    import magnet_fast as mf
    key = str(ref.folder)
    if key not in _models:
        out = tmp_root / f"converted-{ref.folder.name}"
        mf.convert(ref.checkpoint, out)
        _models[key] = mf.MagnetFast.from_pretrained(out, t5=T5_TINY, attention="exact")   # the parity mode
    return _models[key]


@pytest.fixture(scope="session")
def model(reference, tmp_path_factory):
    return converted_model(reference, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def model10(ref10, tmp_path_factory):
    return converted_model(ref10, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def make_reference():
    """Callable: folder -> Reference (for fixtures produced during the test run)."""
    return Reference


@pytest.fixture(scope="session")
def load_converted(tmp_path_factory):
    """Callable: Reference -> converted, loaded MagnetFast (cached per fixture folder)."""
    root = tmp_path_factory.mktemp("models-extra")
    return lambda ref: converted_model(ref, root)


def _token_tv_distance(a, b, card: int) -> float:
    """Total-variation distance between the per-codebook token histograms of two [B, n_q, T] batches
    (the largest over codebooks)."""
    import torch
    tv = []
    for k in range(a.shape[1]):
        ha = torch.bincount(a[:, k].flatten().cpu(), minlength=card).double()
        hb = torch.bincount(b[:, k].flatten().cpu(), minlength=card).double()
        tv.append(0.5 * (ha / ha.sum() - hb / hb.sum()).abs().sum().item())
    return max(tv)


@pytest.fixture
def token_tv_distance():
    """Callable (a, b, card) -> histogram total-variation distance (statistical token checks)."""
    return _token_tv_distance
