"""The decoding step is graph-safe: torch.compile(fullgraph=True) traces it with no graph break (a host
sync, .item() or data-dependent Python would break the graph and fail here), and the traced step gives
the same tokens as the eager one. This is what lets a CUDA-graph runtime replay it."""
from __future__ import annotations

import pytest
import torch

from magnet_fast.generate import decode_step, resolve_params
from magnet_fast.kernels.sample import naive as S


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
    noise = S.draw_noise(torch.empty(2, t, 512), g) if params.use_sampling else None
    prompt = torch.randint(0, 512, (2, 4, 20), generator=g)
    with torch.no_grad():
        kv = lm.cross_kv(model10.condition(["calm piano", None]))
        prefix = lm.stage_prefix(seq, stage)
        args = (lm, seq, row, scores, kv, noise, prompt)
        kw = {"stage": stage, "num_masked": num_masked, "cfg_coef": 3.5, "temperature": 1.7, "params": params,
              "sampler": sampler, "prefix": prefix, "backend": backend or "exact"}
        seq_eager, seq_traced = seq.clone(), seq.clone()
        eager = decode_step(lm, seq_eager, *(a.clone() if isinstance(a, torch.Tensor) else a for a in args[2:]),
                            **kw)
        compiled = torch.compile(decode_step, fullgraph=True, backend="eager")
        traced = compiled(lm, seq_traced, *(a.clone() if isinstance(a, torch.Tensor) else a for a in args[2:]),
                          **kw)
    for a, b in zip(eager, traced, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(seq_eager, seq_traced)
    assert torch.equal(seq_eager[:2, stage], eager[0]) and torch.equal(seq_eager[2:, stage], eager[0])
    assert not bool(traced[2])
