"""Live parity: run audiocraft 1.3.0 itself now (tests/fixtures/gen_reference.py) and compare bitwise.

Needs the oracle from tests/fixtures/setup_audiocraft.sh (or MAGNET_FAST_AUDIOCRAFT_PYTHON and
AUDIOCRAFT_CONFIG_DIR); skipped with the reason otherwise. Also proves the committed fixtures are
reproducible: the fresh checkpoint must be byte-identical to the one under tests/fixtures.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ROOT = FIXTURES.parents[1]
PYTHON = Path(os.environ.get("MAGNET_FAST_AUDIOCRAFT_PYTHON", ROOT / ".venv-audiocraft" / "bin" / "python"))
CONFIG = Path(os.environ.get("AUDIOCRAFT_CONFIG_DIR", ROOT / ".ac-dl" / "audiocraft-1.3.0" / "config"))

pytestmark = pytest.mark.live


def _oracle_missing() -> str | None:
    if not PYTHON.exists():
        return f"no audiocraft python at {PYTHON} (run tests/fixtures/setup_audiocraft.sh)"
    if not CONFIG.is_dir():
        return f"no audiocraft config folder at {CONFIG} (run tests/fixtures/setup_audiocraft.sh)"
    code = (f"import sys; sys.path.insert(0, {str(FIXTURES)!r}); import ac_stubs; ac_stubs.install(); "
            "import audiocraft.models.loaders")
    probe = subprocess.run([str(PYTHON), "-c", code], capture_output=True, text=True)
    if probe.returncode:
        return f"{PYTHON} cannot import audiocraft: {probe.stderr.strip().splitlines()[-1:]}"
    return None


@pytest.fixture(scope="module")
def live(tmp_path_factory, make_reference):
    reason = _oracle_missing()
    if reason:
        print(f"SKIP live audiocraft parity: {reason}")
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("live") / "ac_ref"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(PYTHON), str(FIXTURES / "gen_reference.py"), "--config-dir", str(CONFIG),
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
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
