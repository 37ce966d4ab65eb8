"""The runtime's fused-sampler path (magnet_fast::sample_step op; Triton on CUDA, naive.py on CPU)."""
from __future__ import annotations

import pytest
import torch

from magnet_fast.errors import ParameterError

SHORT = {"decoding_steps": [3, 2, 2, 2]}


@pytest.mark.parametrize("settings", [
    pytest.param({"top_p": 0.0, "top_k": 20}, id="top-k"),
    pytest.param({"top_p": 0.0}, id="plain"),
    pytest.param({"use_sampling": False}, id="greedy"),
    pytest.param({"span_arrangement": "stride1", "top_p": 0.0, "top_k": 5}, id="stride1"),
    pytest.param({"span_scoring": "prod", "top_p": 0.0, "max_cfg_coef": 3.0}, id="prod"),
])
def test_fused_equals_torch_sampler_where_pairing_agrees(model10, settings):
    """Without top-p, noise column j pairs with vocabulary id j on both paths: identical tokens."""
    expected = model10.generate_tokens(["calm piano", None], seed=2, **SHORT, **settings)
    model10.set_sampler("fused")
    try:
        got = model10.generate_tokens(["calm piano", None], seed=2, **SHORT, **settings)
    finally:
        model10.set_sampler("torch")
    assert torch.equal(got, expected)


def test_fused_top_p_is_valid_but_not_audiocraft_draws(model10):
    model10.set_sampler("fused")
    try:
        got = model10.generate_tokens(["calm piano"], seed=2, **SHORT)
    finally:
        model10.set_sampler("torch")
    assert got.shape == (1, 4, 498) and int(got.min()) >= 0 and int(got.max()) < 512
    with pytest.raises(ParameterError, match="sampler"):
        model10.set_sampler("cuda-graph")
