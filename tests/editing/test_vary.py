"""vary_tokens: the fraction of regenerated spans follows strength, the rest is kept, strength=1 is a fresh
generation (the same tokens as generate_tokens with the same seed)."""
from __future__ import annotations

import pytest
import torch

from magnet_fast.engines.editing import variation_start, variation_steps
from magnet_fast.errors import ParameterError
from tests.editing.conftest import FAST, random_tokens


@pytest.mark.parametrize("arrangement", ["nonoverlap", "stride1"])
def test_strength_one_is_a_fresh_generation(demo, arrangement):
    kw = dict(FAST, span_arrangement=arrangement)
    want = demo.generate_tokens(["calm piano", "rock"], seed=21, **kw)
    got = demo.vary_tokens(random_tokens(2, want.shape[-1], seed=9), 1.0, ["calm piano", "rock"], seed=21, **kw)
    assert torch.equal(got, want)


def _changed_spans(a, b, span=3):
    """[B, spans]: spans (the last one may be partial) where any codebook's token differs."""
    diff = torch.nn.functional.pad(a != b, (0, (-a.shape[-1]) % span))
    return diff.reshape(a.shape[0], a.shape[1], -1, span).any(-1).any(1)


@pytest.mark.parametrize("strength", [0.3, 0.75])
def test_changed_fraction_follows_strength_on_100_seeds(demo, strength):
    clip = random_tokens(1, 120, seed=8)                                 # 40 spans
    fractions = []
    for seed in range(100):
        out = demo.vary_tokens(clip, strength, "jazz", seed=seed, decoding_steps=[1, 1, 1, 1])
        changed = _changed_spans(out, clip)
        unchanged = ~changed[0].repeat_interleave(3)[: clip.shape[-1]]
        assert torch.equal(out[..., unchanged], clip[..., unchanged])   # spans not chosen: bit for bit
        fractions.append(changed.float().mean().item())
    fractions = torch.tensor(fractions)
    assert ((fractions - strength).abs() <= 0.1 * strength).all(), fractions
    assert len({tuple(_changed_spans(demo.vary_tokens(clip, strength, seed=s, decoding_steps=[1, 1, 1, 1]), clip)
                      [0].tolist()) for s in (1, 2, 3)}) == 3          # the seed chooses the spans


def test_variation_schedule_starts_at_the_masking_rate():
    import math
    assert variation_start(1.0) == 0.0
    assert math.isclose(math.cos(variation_start(0.3) * math.pi / 2), 0.3, rel_tol=1e-12)
    assert variation_steps((20, 10, 10, 10), 0.0) == (20, 10, 10, 10)
    steps = variation_steps((20, 10, 10, 10), variation_start(0.3))
    assert all(1 <= s < n for s, n in zip(steps, (20, 10, 10, 10), strict=True))


def test_stride1_variation_keeps_unchosen_spans(demo):
    clip = random_tokens(2, 61, seed=6)
    out = demo.vary_tokens(clip, 0.5, seed=2, span_arrangement="stride1", **FAST)
    changed = _changed_spans(out, clip)
    assert (changed.sum(-1) == round(0.5 * 21)).all()                    # 61 frames: 21 spans, the last partial
    assert int(out.max()) < 2048


@pytest.mark.parametrize("strength", [0, 0.0, -0.5, 1.01, True, "0.5", float("nan")])
def test_bad_strength(demo, strength):
    with pytest.raises(ParameterError, match="strength must be a number in"):
        demo.vary_tokens(random_tokens(1, 30), strength)


def test_longer_than_the_window_is_refused(demo):
    with pytest.raises(ParameterError, match="at most the model's window"):
        demo.vary_tokens(random_tokens(1, 600), 0.5)
