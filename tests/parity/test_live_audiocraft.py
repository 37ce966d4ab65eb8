"""Live parity: run audiocraft 1.3.0 itself now (tests/fixtures/gen_reference.py) and compare bitwise.

Needs the oracle from tests/fixtures/setup_audiocraft.sh (or MAGNET_FAST_AUDIOCRAFT_PYTHON and
AUDIOCRAFT_CONFIG_DIR); skipped with the reason otherwise. Also proves the committed fixtures are
reproducible: the fresh checkpoint must be byte-identical to the one under tests/fixtures.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def live(run_oracle, tmp_path_factory, make_reference):
    out = tmp_path_factory.mktemp("live") / "ac_ref"
    run_oracle("gen_reference.py", "--out", str(out))
    return make_reference(out)


def test_fixture_checkpoint_reproduces(live):
    fresh = (live.checkpoint / "state_dict.bin").read_bytes()
    assert fresh == (FIXTURES / "ac_ref" / "magnet_tiny" / "state_dict.bin").read_bytes()


def test_live_logits_and_tokens_bitwise(live, load_converted):
    model = load_converted(live)
    t = live.tensors
    with torch.inference_mode():
        kv = model.lm.cross_kv(t["cond.description_embeds"])
        for stage in (0, 1):
            assert torch.equal(model.lm(t["tf.input"], kv, stage), t[f"tf.stage{stage}.logits"][:, stage])
    for name in ("default", "stride1", "topk", "mixed_batch"):
        run = live.meta["runs"][name]
        kw = dict(run["generate_kwargs"])
        kw["temperature"] = kw.pop("temp")
        tokens = model.generate_tokens(run["descriptions"], seed=run["seed_before_generate"], **kw)
        assert torch.equal(tokens, t[f"run.{name}.tokens"].long()), name
