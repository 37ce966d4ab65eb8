"""Decoding pieces against independent references (hand-computed values, torch's own samplers)."""
from __future__ import annotations

import math

import pytest
import torch

from magnet_fast.decoding.schedule import stage_steps
from magnet_fast.kernels.sample import naive as S
from tests.sample_refs import select_stride1_loop


def test_noise_race_is_torch_multinomial():
    """argmax(p / E) with E drawn by draw_noise == torch.multinomial(p, 1), RNG consumption included."""
    p = torch.rand(97, 64) ** 6
    p[:, :5] = 0
    p = p / p.sum(-1, keepdim=True)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    expected = torch.multinomial(p, 1, generator=g1)[:, 0]
    tokens, _ = S.sample(p, p.log(), S.draw_noise(p, g2))
    assert torch.equal(tokens, expected)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))


def test_top_p_keep_rule_by_hand():
    # sorted: 0.5, 0.3, 0.15, 0.05 ; mass before: 0, 0.5, 0.8, 0.95
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    for top_p, allowed in [(0.5, {1, 3}), (0.49, {1}), (0.81, {0, 1, 3}), (0.96, {0, 1, 2, 3})]:
        seen = set()
        for seed in range(60):
            noise = S.draw_noise(probs, torch.Generator().manual_seed(seed))
            tok, scored = S.sample(probs, probs.log(), noise, top_p=top_p)
            seen.add(int(tok))
            assert scored.item() == probs[0, int(tok)].item()        # untruncated probability scored
        assert seen == allowed, (top_p, seen)


def test_top_k_keeps_ties_and_scores_truncated():
    probs = torch.tensor([[0.3, 0.2, 0.2, 0.2, 0.1]])
    seen = set()
    for seed in range(80):
        tok, scored = S.sample(probs, probs.log(), S.draw_noise(probs, torch.Generator().manual_seed(seed)),
                               top_k=2)
        seen.add(int(tok))
        assert scored.item() == pytest.approx(probs[0, int(tok)].item() / 0.9)
    assert seen == {0, 1, 2, 3}                                  # 2nd value tied 3 ways: all kept


def test_greedy_uses_guided_logits_and_temperature_probs():
    logits = torch.tensor([[[1.0, 3.0, 2.0]]])
    probs = S.step_probs(logits, 0.0)                           # floored at 0.01, not a division by 0
    tok, scored = S.sample(probs, logits, None, use_sampling=False)
    assert tok.item() == 1 and scored.item() == pytest.approx(1.0)
    assert torch.allclose(S.step_probs(logits, 2.0), torch.softmax(logits / 2.0, -1))


def test_cfg_formula():
    c, u = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 1.0])
    assert torch.equal(S.cfg_logits(c, u, 3.0), torch.tensor([4.0, -5.0]))


def test_schedule_float32_truncation():
    """166 chunks, 10 steps: step 6 masks 82 spans in float32 (83 in float64), as audiocraft does."""
    steps = stage_steps(0, 10, 166, temperature=3.0, anneal_temp=True, max_cfg_coef=10.0, min_cfg_coef=1.0)
    assert steps[6].num_masked == 82
    assert int(math.cos(6 / 9 * math.pi / 2) * 166) == 83
    assert steps[0].num_masked == 166 and steps[-1].num_masked == 1
    assert steps[0].cfg_coef == 10.0 and steps[-1].cfg_coef == pytest.approx(1.0)
    assert steps[0].temperature == pytest.approx(3.0 * 9 / 10) and steps[-1].temperature == 0.0
    flat = stage_steps(1, 3, 10, temperature=2.0, anneal_temp=False, max_cfg_coef=1.0, min_cfg_coef=1.0)
    assert [s.temperature for s in flat] == [2.0, 2.0, 2.0]


def test_span_scores_and_selection():
    sp = torch.tensor([[0.9, 0.2, 0.5, 0.1, 0.1, 0.1, 0.99, 0.98, 0.97]])
    masked = torch.tensor([[True, True, False]])
    mx = S.span_scores(sp, 3, "max", masked)
    assert torch.allclose(mx, torch.tensor([[1 - 0.9, 1 - 0.1, S.DONT_REMASK]]))
    prod = S.span_scores(sp, 3, "prod", masked)
    assert prod[0, 1].item() == pytest.approx(-3 * math.log(0.1), rel=1e-6)
    assert torch.equal(S.select_spans(mx, 1), torch.tensor([[False, True, False]]))
    with pytest.raises(ValueError, match="span scoring"):
        S.span_scores(sp, 3, "mean", masked)


@pytest.mark.parametrize("seed", range(6))
def test_stride1_vectorised_equals_binary_search(seed):
    g = torch.Generator().manual_seed(seed)
    T = [97, 500, 31, 64, 13, 200][seed]
    scores = torch.randn(3, T, generator=g)
    if seed % 2:
        scores = scores.round()                                  # many ties
    scores[:, : seed * 3] = S.DONT_REMASK                        # a prompt
    for num_masked in sorted({1, 2, 3, 4, 7, T // 3, T // 2, T - seed * 3 - 1}):
        if num_masked > 0:
            assert torch.equal(S.select_stride1(scores, num_masked, 3),
                               select_stride1_loop(scores, num_masked, 3)), num_masked
    zeros = torch.zeros(2, T)                                    # step 0: all-zero scores, torch tie order
    assert torch.equal(S.select_stride1(zeros, T, 3), select_stride1_loop(zeros, T, 3))
