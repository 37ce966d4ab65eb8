"""Live: audiocraft 1.3.0 rewrites the training fixtures now (gen_train_reference.py) and our loss and
gradients meet the contract against them; the fresh losses equal the committed ones bit for bit."""
from __future__ import annotations

import pytest
import torch

from .conftest import TrainReference
from .test_parity import check_against

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def live_ref(run_oracle, tmp_path_factory) -> TrainReference:
    out = tmp_path_factory.mktemp("live-train") / "ac_train"
    run_oracle("gen_train_reference.py", "--out", str(out))
    return TrainReference(out)


def test_live_fixture_reproduces_committed(live_ref, train_ref):
    for key, t in train_ref.tensors.items():
        if key.endswith(".loss") or key.endswith(".tokens"):
            assert torch.equal(live_ref.tensors[key], t), key


@pytest.mark.parametrize("variant", ["10s", "30s"])
def test_live_loss_and_gradients(live_ref, converted, variant):
    check_against(live_ref, variant, converted(variant))
