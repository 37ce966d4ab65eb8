"""The kept-frames Decoder under the graph protocol ("fx" on CPU): a Decoder recorded on one call's kept
frames (an edit's region, a loop's wrap-around) replays another call's with the same schedule exactly as a
fresh eager decode does, reading the kept tensors only from its long-lived buffers."""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from magnet_fast.decoding.magnet import decode
from magnet_fast.engines.editing import keep_source, region_units, wrap_source
from magnet_fast.params import resolve_params
from tests.decoding.test_static_decoder import _assert_recordings_read_only_long_lived_tensors


def _kv(model, texts):
    cond, _ = model.conditioning(texts)
    with torch.inference_mode():
        return model.lm.cross_kv(cond)


@pytest.mark.parametrize("arrangement", ["nonoverlap", pytest.param("stride1", marks=pytest.mark.slow)])
def test_fx_replay_of_kept_frames_matches_eager(demo, arrangement):
    lm, t = demo.lm, 60
    params = resolve_params(demo.config.generation, 4, decoding_steps=(2, 1, 1, 1), span_arrangement=arrangement)
    unit = 3 if arrangement == "nonoverlap" else 1
    g = torch.Generator().manual_seed(0)
    cache: OrderedDict = OrderedDict()
    edits = []
    for a in (6, 21, 33):                                   # same region size, other places and contents
        kept = torch.ones(2, t, dtype=torch.bool)
        kept[:, a: a + 15] = False
        edits.append((torch.randint(0, 2048, (2, 4, t), generator=g), keep_source(kept)))
    loop = wrap_source(24, 18, t).expand(2, t).contiguous()     # a loop's wrap-around, the same mechanism
    edits.append((torch.zeros(2, 4, t, dtype=torch.long), loop))
    for n, (known, source) in enumerate(edits):
        count = int(region_units(source, unit)[0])
        kv = _kv(demo, ["a", None] if n % 2 else ["b", "c"])
        kw = {"kept": (known, source), "schedule": (count, 0.0)}
        got = decode(lm, kv, 2, t, params, generator=torch.Generator().manual_seed(n), graphs="fx", cache=cache,
                     **kw)
        want = decode(lm, kv, 2, t, params, generator=torch.Generator().manual_seed(n), **kw)
        assert torch.equal(got, want), n
        keep = (source != torch.arange(t))[:, None].expand(-1, 4, -1)
        if n < 3:
            assert torch.equal(got[keep], known[keep])          # kept frames bit for bit
        else:
            assert torch.equal(got, got[..., loop[0]])          # the padding is the wrapped tile
    assert len(cache) == 2                                    # the three edits shared one recorded Decoder
    for decoder in cache.values():
        _assert_recordings_read_only_long_lived_tensors(decoder)


def test_schedule_runs_over_the_region_units(demo):
    """Each step re-masks the cosine schedule's count of the *region's* units (not the clip's), never a kept
    one; the first step masks the whole region."""
    from magnet_fast.decoding.schedule import stage_steps
    from magnet_fast.engines.editing import _Call
    from magnet_fast.kernels.sample.naive import DONT_REMASK
    t = 90
    kept = torch.ones(1, t, dtype=torch.bool)
    kept[:, 31:70] = False                                    # frames 31..69: units 10..23 (two partial)
    source = keep_source(kept)
    n = int(region_units(source, 3)[0])
    assert n == 14
    steps = (5, 3, 1, 1)
    want = [s.num_masked for stage, k in enumerate(steps)
            for s in stage_steps(stage, k, n, temperature=1.0, anneal_temp=False, max_cfg_coef=1.0, min_cfg_coef=1.0)]
    assert want[0] == n and want[1] < n
    region = torch.zeros(1, t // 3, dtype=torch.bool)
    region[:, 10:24] = True
    seen = []

    def on_step(stage, index, state):
        scored = state.scores != DONT_REMASK                   # the units sampled in this step
        assert not (scored & ~region).any()
        seen.append(int(scored.sum()))
    call = _Call(demo, ["a"], {"seed": 1, "decoding_steps": list(steps)})
    known = torch.randint(0, 2048, (1, 4, t), generator=torch.Generator().manual_seed(3))
    call.run([0], known, source, (n, 0.0), on_step=on_step)
    assert seen == want
