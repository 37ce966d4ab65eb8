"""The runtime's attention backends against the float64 banded reference (odd sizes, strided views)."""
from __future__ import annotations

import pytest
import torch

from magnet_fast.kernels.banded_attn.naive import banded_attention
from magnet_fast.nn.attention import AttentionCache, attention, windowed_attention


def _qkv(b, h, t, d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(b, t, 3, h, d, generator=g) * 2
    return [qkv[:, :, i].transpose(1, 2).to(dtype) for i in range(3)]        # strided views, like the LM


@pytest.mark.parametrize("t, window, d, block", [
    (97, 5, 64, None), (500, 5, 80, None), (13, 5, 64, None), (1, 5, 64, None), (6, 5, 64, None),
    (97, 0, 64, None), (97, 1, 64, 4), (200, 40, 64, None), (97, 5, 64, 97), (98, 5, 32, 7),
])
def test_windowed_matches_reference(t, window, d, block):
    q, k, v = _qkv(2, 3, t, d, torch.float32, t + window)
    want = banded_attention(q.double(), k.double(), v.double(), window)
    got = windowed_attention(q, k, v, window, block)
    assert got.shape == q.shape and got.dtype == q.dtype
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_windowed_low_precision_inputs():
    q, k, v = _qkv(1, 2, 97, 64, torch.bfloat16, 0)
    want = banded_attention(q.double(), k.double(), v.double(), 5)
    got = windowed_attention(q, k, v, 5)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), want, rtol=1.6e-2, atol=1.6e-2)   # output rounding to bf16


@pytest.mark.parametrize("backend", ["windowed", "sdpa"])
@pytest.mark.parametrize("window", [None, 5])
def test_backends_agree_with_exact(backend, window):
    q, k, v = _qkv(2, 4, 500, 64, torch.float32, 7)
    masks = AttentionCache()
    want = attention(q, k, v, window, backend="exact", masks=masks)
    torch.testing.assert_close(attention(q, k, v, window, backend=backend, masks=masks), want,
                               rtol=1e-5, atol=1e-5)
