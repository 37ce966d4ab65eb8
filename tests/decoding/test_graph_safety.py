"""The decoding step is graph-safe: torch.compile(fullgraph=True) traces it with no graph break (a host
sync, .item() or data-dependent Python would break the graph and fail here), and the traced step gives
the same tokens as the eager one. This is what lets a CUDA-graph runtime replay it."""
from __future__ import annotations

import pytest
import torch

from magnet_fast.decoding.magnet import DecodeState, decode_step
from magnet_fast.decoding.sampling import make_sampler
from magnet_fast.decoding.schedule import Step
from magnet_fast.decoding.scoring import make_scorer
from magnet_fast.decoding.spans import make_arrangement
from magnet_fast.kernels.sample import naive as S
from magnet_fast.params import resolve_params


@pytest.mark.parametrize("overrides, stage, num_masked, sampler", [
    pytest.param({}, 0, 166, "torch", id="nonoverlap-top-p-stage0"),
    pytest.param({"top_p": 0.0, "top_k": 40}, 1, 41, "torch", id="top-k-banded"),
    pytest.param({"span_arrangement": "stride1", "span_scoring": "prod"}, 2, 123, "torch", id="stride1"),
    pytest.param({"use_sampling": False}, 3, 7, "torch", id="greedy"),
    pytest.param({}, 1, 50, "fused", id="fused-sampler-op"),
    pytest.param({}, 2, 40, "torch-windowed", id="masked-rows-only-windowed"),
])
def test_decode_step_compiles_without_graph_breaks(model10, overrides, stage, num_masked, sampler):
    sampler, _, backend = sampler.partition("-")
    torch._dynamo.reset()
    lm = model10.lm
    params = resolve_params(model10.config.generation, 4, **overrides)
    stride1 = params.span_arrangement == "stride1"
    t = 500 if stride1 else 498
    g = torch.Generator().manual_seed(stage)
    seq = torch.randint(0, 512, (2, 4, t), generator=g)
    seq[:, stage + 1:] = lm.mask_id
    row = seq[:, stage].clone()
    seq = seq.repeat(2, 1, 1)                                   # the CFG batch [2B, ...]
    scores = torch.rand(2, t if stride1 else t // 3, generator=g)
    noise = S.draw_noise(torch.empty(2, t, 512), g) if params.use_sampling else torch.ones(2, t, 512)
    prompt = torch.randint(0, 512, (2, 4, 20), generator=g)
    plans = [[Step(s, 0, 0.5, num_masked, 3.5, 1.7)] for s in range(4)]
    arrangement = make_arrangement(3, params.span_arrangement)
    parts = (plans[stage][0], arrangement, make_sampler(sampler, params, lm.mask_id, plans, "cpu"),
             make_scorer(params.span_scoring, arrangement))
    lm.set_attention(backend or "exact")
    try:
        with torch.no_grad():
            kv = lm.cross_kv(model10.condition(["calm piano", None]))
            prefix = lm.stage_prefix(seq, stage)

            def state(seq):
                return DecodeState(seq=seq, row=row.clone(), scores=scores.clone(), kv=kv, noise=noise.clone(),
                                   prompt=prompt, prefix=prefix)
            seq_eager, seq_traced = seq.clone(), seq.clone()
            eager = decode_step(lm, state(seq_eager), *parts)
            compiled = torch.compile(decode_step, fullgraph=True, backend="eager")
            traced = compiled(lm, state(seq_traced), *parts)
    finally:
        lm.set_attention("exact")
    for a, b in zip(eager, traced, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(seq_eager, seq_traced)
    assert torch.equal(seq_eager[:2, stage], eager[0]) and torch.equal(seq_eager[2:, stage], eager[0])
    assert not bool(traced[2])
