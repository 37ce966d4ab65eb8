"""Fixtures for the editing tests: the bundled demo MAGNeT (with its codec) and the MusicGen demo (rescorer)."""
from __future__ import annotations

import warnings

import pytest
import torch

import magnet_fast as mf
from magnet_fast.demo import DEMO_MODEL, MUSICGEN_DEMO_MODEL

FAST = {"decoding_steps": [2, 1, 1, 1]}           # few steps: the mechanics, not the music


@pytest.fixture(scope="session")
def demo():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return mf.MagnetFast.from_pretrained(DEMO_MODEL)


@pytest.fixture(scope="session")
def musicgen_demo():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return mf.MusicGenFast.from_pretrained(MUSICGEN_DEMO_MODEL)


def random_tokens(batch: int, frames: int, seed: int = 0, card: int = 2048) -> torch.Tensor:
    """Input tokens independent of the model (so a kept frame cannot match by being likely)."""
    return torch.randint(0, card, (batch, 4, frames), generator=torch.Generator().manual_seed(seed))
