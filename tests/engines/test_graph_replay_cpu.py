"""CPU counterparts of the GPU tier's graph-vs-eager tests (tests/engines/test_gpu_runtime.py) for hybrid,
long-form windows and stride-1 spans, through the engine with the ``fx`` stand-in for CUDA graphs
(``decoding/runner.py``: make_fx traces recorded on a shape's first call and replayed on later ones). A
replay that froze something of the recording call (a prompt, the tail of a previous window, a span plan)
gives other tokens than eager decoding. Rescoring's counterpart: tests/decoding/test_rescoring.py."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import magnet_fast as mf

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
T5_TINY = FIXTURES / "ac_ref" / "t5_tiny"
FEW = {"decoding_steps": [2, 1, 1, 1]}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def magnet(tmp_path_factory):
    """The MAGNeT parity fixture with a 2 s window (100 frames, 99 with nonoverlap spans): tracing is cheap."""
    root = tmp_path_factory.mktemp("fx-magnet")
    mf.convert(FIXTURES / "ac_ref" / "magnet_tiny", root / "m")
    shutil.copytree(root / "m", root / "m2s")
    cfg = json.loads((root / "m2s" / "config.json").read_text())
    cfg["segment_duration"] = 2.0
    (root / "m2s" / "config.json").write_text(json.dumps(cfg))
    return mf.MagnetFast.from_pretrained(root / "m2s", t5=T5_TINY)


def _replays_equal_eager(model, call, shapes: int) -> None:
    want = call()
    model.cuda_graphs, model._graph_mode = True, "fx"          # the setter refuses CPU for real graphs
    try:
        got = [call(), call()]                                 # record, replay
        assert len(model.decoders) == shapes
        assert all(len(d.recorded) == sum(FEW["decoding_steps"]) for d in model.decoders.values())
    finally:
        model.cuda_graphs, model._graph_mode = False, "cuda"
        model.clear_cuda_graphs()
    for g in got:
        assert torch.equal(g, want)


def test_fx_replay_hybrid_equals_eager(magnet, musicgen_folder):
    musicgen = mf.MusicGenFast.from_pretrained(musicgen_folder, t5=T5_TINY)
    _replays_equal_eager(magnet, lambda: magnet.generate_tokens(
        ["calm piano", None], seed=6, hybrid=musicgen, hybrid_seconds=0.4, **FEW), shapes=1)


def test_fx_replay_long_form_equals_eager(magnet):
    """The first window and the prompted later windows are two recorded shapes; each later window's
    prompt (the previous tail) changes, so a replay that froze it would repeat the second window."""
    _replays_equal_eager(magnet, lambda: magnet.generate_tokens(
        ["calm piano", "edm"], seed=8, duration=3.2, extend_stride=1.0, **FEW), shapes=2)


def test_fx_replay_stride1_equals_eager(magnet):
    _replays_equal_eager(magnet, lambda: magnet.generate_tokens(
        ["calm piano", None], seed=9, span_arrangement="stride1", **FEW), shapes=1)
