"""Guards that close gaps a mutation test of the suite found (non-finite check granularity, config-driven
positions, stride1 score sign, temperature floor). Each test names the mutation it catches.

Only stable public surfaces are used: the top-level API, ``magnet_fast.errors``, ``sin_embedding``,
``MagnetLM.heads`` / ``hidden`` / ``cross_kv``, and ``magnet_fast.kernels.sample`` (naive + sample_step_op).
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

import magnet_fast as mf
from magnet_fast.errors import NumericsError
from magnet_fast.kernels.sample import naive as S
from magnet_fast.nn.positions import sin_embedding

T5_TINY = Path(__file__).resolve().parents[1] / "fixtures" / "ac_ref" / "t5_tiny"
LM_FILE = "state_dict.bin"                    # audiocraft's export file name (fixed by audiocraft)
SHORT = {"decoding_steps": [1, 2, 1, 1]}     # stage 1 (the poisoned head) has 2 steps, the others 1


# --------------------------------------------------------------------------- 1. non-finite granularity
INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize(("poison", "sampler", "attention"), [
    pytest.param(INF, "torch", "exact", id="inf-torch-exact"),
    pytest.param(INF, "torch", "windowed", id="inf-torch-windowed"),      # head on gathered positions
    pytest.param(INF, "fused", "exact", id="inf-fused-exact"),
    pytest.param(INF, "fused", "windowed", id="inf-fused-windowed"),
    pytest.param(NAN, "torch", "windowed", id="nan-torch-windowed"),
    pytest.param(NAN, "fused", "exact", id="nan-fused-exact"),
])
def test_single_non_finite_logit_raises(model10, poison, sampler, attention):
    """ONE logit of ONE row (stage 1, first step only) is non-finite: that row's softmax is NaN, every
    other row of every step is finite, and decoding must still raise NumericsError.

    Catches: the flag test ``~isfinite(probs).all()`` (torch sampler) / ``~isfinite(scored).all()``
    (fused sampler) mutated to ``(~isfinite(...)).all()`` ("raise only when every probability is
    non-finite"), which the whole-head NaN test in test_reliability.py cannot see; also a per-step flag
    that is overwritten instead of OR-accumulated (the poisoned step is not the last step)."""
    lm = model10.lm
    fired = []

    def hook(module, inputs, output):
        if not fired:
            # [2B, T, card] (exact / fused) or [2B, M, card] at the gathered positions (windowed + torch):
            # index [0, 3, 7] exists in both (M = all 498 positions at the stage's first step)
            assert output.dim() == 3 and output.shape[1] > 3 and output.shape[2] > 7
            output[0, 3, 7] = poison
            fired.append(tuple(output.shape))
        return output

    handle = lm.heads[1].register_forward_hook(hook)
    try:
        model10.set_attention(attention)
        model10.set_sampler(sampler)
        with pytest.raises(NumericsError, match="non-finite"):
            model10.generate_tokens(["calm piano"], seed=1, **SHORT)
        assert len(fired) == 1
    finally:
        handle.remove()
        model10.set_sampler("torch")
        model10.set_attention("exact")


def test_single_non_finite_guard_restored_model_is_fine(model10):
    """Control for the guard above: without the poison the same call decodes normally (so the raise is
    the poison's doing), and the poisoned runs left no hook behind."""
    out = model10.generate_tokens(["calm piano"], seed=1, **SHORT)
    assert int(out.min()) >= 0 and int(out.max()) < model10.config.card


# --------------------------------------------------------------------------- 2. positions from the config
def _sin_reference(t: int, dim: int, max_period: float) -> torch.Tensor:
    """Hand formula, float64: phase = pos / P^(j / (half - 1)), output [1, t, dim] = cat(cos, sin)."""
    half = dim // 2
    rows = []
    for pos in range(t):
        phase = [pos / max_period ** (j / (half - 1)) for j in range(half)]
        rows.append([math.cos(p) for p in phase] + [math.sin(p) for p in phase])
    return torch.tensor(rows, dtype=torch.float64).unsqueeze(0)


@pytest.mark.parametrize("max_period", [500.0, 10000.0])
@pytest.mark.parametrize("dim", [64, 10])
def test_sin_embedding_matches_hand_formula(max_period, dim):
    """Catches: max_period ignored / hard-coded 10000 (the 500 case), exponent j/half instead of
    j/(half-1), sin before cos, positions starting at 1, an off-by-one length."""
    got = sin_embedding(37, dim, max_period, torch.float64, "cpu")
    want = _sin_reference(37, dim, max_period)
    assert got.shape == (1, 37, dim) and got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


POS_SCALE, POS_PERIOD = 0.5, 2000.0
T_PROBE = 37                                 # odd, < card: codebook 0 holds token id t at position t


@pytest.fixture(scope="module")
def position_models(ref10, tmp_path_factory):
    """(modified, compensated, plain) models, all float32, from the same fixture weights.

    modified:    xp.cfg transformer_lm.positional_scale 0.5, max_period 2000.
    compensated: defaults (1.0 / 10000), but embedding row t of codebook 0 carries
                 0.5 * PE_2000(t) - PE_10000(t) (hand formula), so with codebook 0 = [0, 1, ..., T-1] its
                 first residual input is exactly the one the modified model should build.
    plain:       defaults, unmodified weights.
    """
    root = tmp_path_factory.mktemp("positions")
    source = torch.load(ref10.checkpoint / LM_FILE, weights_only=True)
    state = {k: v.float() for k, v in source["best_state"].items()}

    xp = yaml.safe_load(source["xp.cfg"])
    lm_section = xp["transformer_lm"]
    assert "positional_scale" not in lm_section and "max_period" not in lm_section   # fixture uses defaults
    modified_xp = dict(xp, transformer_lm={**lm_section, "positional_scale": POS_SCALE,
                                           "max_period": POS_PERIOD})

    comp = dict(state)
    dim = comp["emb.0.weight"].shape[1]
    delta = (POS_SCALE * _sin_reference(T_PROBE, dim, POS_PERIOD) - _sin_reference(T_PROBE, dim, 10000.0))[0]
    emb0 = comp["emb.0.weight"].double().clone()
    emb0[:T_PROBE] += delta
    comp["emb.0.weight"] = emb0.float()

    models = {}
    for name, xp_text, best in (("modified", yaml.safe_dump(modified_xp), state),
                                ("compensated", source["xp.cfg"], comp),
                                ("plain", source["xp.cfg"], state)):
        src = root / f"src-{name}"
        src.mkdir()
        torch.save({**source, "xp.cfg": xp_text, "best_state": best}, src / LM_FILE)
        out = mf.convert(src, root / f"out-{name}", dtype="float32")
        models[name] = mf.MagnetFast.from_pretrained(out, t5=T5_TINY, dtype="float32")
    return models


def _hidden(model, seq, cond, stage):
    with torch.inference_mode():
        lm = model.lm
        return lm.hidden(seq, lm.cross_kv(cond), stage, "exact")


def test_positional_scale_and_max_period_come_from_xp_cfg(position_models):
    """Catches: the converter not reading transformer_lm.positional_scale / max_period (config check),
    and the model ignoring either value when adding positions (hidden-state check): if it ignored the
    scale, modified would add PE_2000 where compensated adds 0.5 * PE_2000; if it ignored max_period,
    0.5 * PE_10000 instead of 0.5 * PE_2000. Either differs from the compensated model by O(1) at the
    residual input, far beyond the tolerance (the plain-vs-modified gap asserts that scale)."""
    mod, comp, plain = (position_models[k] for k in ("modified", "compensated", "plain"))
    assert mod.config.positional_scale == POS_SCALE and mod.config.max_period == POS_PERIOD
    assert comp.config.positional_scale == 1.0 and comp.config.max_period == 10000.0

    g = torch.Generator().manual_seed(0)
    card, n_q, dim = mod.config.card, mod.config.n_q, mod.config.dim
    seq = torch.randint(0, card + 1, (2, n_q, T_PROBE), generator=g)    # mask id (= card) allowed
    seq[:, 0] = torch.arange(T_PROBE)                                   # unique codebook-0 token per position
    cond = torch.randn(2, 5, dim, generator=g)
    for stage in (0, 1):                                                # full attention, then banded
        h_mod, h_comp, h_plain = (_hidden(m, seq, cond, stage) for m in (mod, comp, plain))
        torch.testing.assert_close(h_mod, h_comp, rtol=1e-4, atol=1e-4)
        assert (h_mod - h_plain).abs().max() > 0.05                     # the positions do matter here


# --------------------------------------------------------------------------- 3. stride1 score sign
def _stride1_case():
    """T=12, all tokens masked; position 5 is very improbable, 6 then 4 are the next least probable."""
    p = torch.tensor([[0.90, 0.91, 0.89, 0.92, 0.30, 1e-6, 0.20, 0.93, 0.88, 0.94, 0.87, 0.95]])
    return p, torch.ones_like(p, dtype=torch.bool)


def test_token_scores_are_minus_log_p_and_dont_remask():
    """Catches: a flipped sign (log p), 1 - p or p as the score, and unmasked tokens not pinned to
    DONT_REMASK (or pinned to another value)."""
    p, masked = _stride1_case()
    masked = masked.clone()
    masked[0, [0, 9]] = False
    scores = S.token_scores(p, masked)
    want = -torch.log(p)
    want[0, [0, 9]] = -1e4
    assert S.DONT_REMASK == -1e4
    torch.testing.assert_close(scores, want, rtol=0, atol=1e-6)
    assert scores[0, 5] > scores[0, 6] > scores[0, 4] > scores[0, 1]    # higher = less probable


@pytest.mark.parametrize(("num_masked", "expected"), [
    (3, [4, 5, 6]),             # target 3: lo = hi = 1, the single best window (4, 5, 6)
    (6, [3, 4, 5, 6, 7]),       # target 6: mid 3 -> union of windows 4, 5, 3 = {3..7} (5 <= 6), stop
])
def test_stride1_remasks_around_least_probable_token(num_masked, expected):
    """Hand-computed masks. Window sums of -log p: (4,5,6) 16.62 > (5,6,7) 15.49 > (3,4,5) 15.11 > the
    rest (< 2). Catches: the score sign flipped (windows of the most probable tokens would be chosen,
    position 5 left unmasked), ascending instead of descending window order, and a broken union/search."""
    p, masked = _stride1_case()
    got = S.select_stride1(S.token_scores(p, masked), num_masked, 3)
    want = torch.zeros(1, 12, dtype=torch.bool)
    want[0, expected] = True
    assert torch.equal(got, want)


def test_stride1_never_remasks_a_fixed_token():
    """The improbable token was not masked this step (DONT_REMASK): no window through it is chosen."""
    p, masked = _stride1_case()
    masked = masked.clone()
    masked[0, 3:8] = False
    got = S.select_stride1(S.token_scores(p, masked), 3, 3)
    assert not got[0, 3:8].any() and int(got.sum()) == 3


# --------------------------------------------------------------------------- 4. temperature floor
def _flat_logits(seed: int, shape=(2, 6, 50)) -> torch.Tensor:
    # logit gaps ~0.02: softmax at /0.01 is spread out, and visibly different at /0.004 or /0.02
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.02


@pytest.mark.parametrize("temperature", [0.0, 0.004])
def test_step_probs_floors_temperature_at_0_01(temperature):
    """Catches: no floor (0.0 divides by zero -> NaN; 0.004 sharper), another floor value (0.004 then
    differs), ``temperature + 0.01`` instead of ``max(temperature, 0.01)`` (the 0.004 case)."""
    logits = _flat_logits(1)
    want = torch.softmax(logits / 0.01, dim=-1)
    got = S.step_probs(logits, temperature)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert S.TEMPERATURE_FLOOR == 0.01
    # above the floor the temperature is used as given, and the probe is sensitive to the temperature
    torch.testing.assert_close(S.step_probs(logits, 0.5), torch.softmax(logits / 0.5, dim=-1),
                               rtol=1e-6, atol=1e-7)
    assert (torch.softmax(logits / 0.004, dim=-1) - want).abs().max() > 0.05


def test_fused_sample_step_op_floors_temperature():
    """sample_step_op's scored probabilities at temperature 0.0 are those at 0.01 (and equal the hand
    formula softmax(cfg / 0.01) at the sampled token). Catches: the op (or its CPU reference) passing the
    raw temperature into the softmax (0.0 -> NaN scores), or flooring at another value."""
    from magnet_fast.kernels.sample import sample_step_op
    B, T, V, span = 2, 6, 50, 3
    cond, uncond = _flat_logits(2, (B, T, V)), _flat_logits(3, (B, T, V))
    noise = torch.empty(B, T, V).exponential_(1, generator=torch.Generator().manual_seed(4))
    tokens = torch.full((B, T), V, dtype=torch.long)                     # every position masked
    masked = torch.ones(B, T // span, dtype=torch.bool)
    out = {}
    for temp in (0.0, 0.01, 0.02):
        out[temp] = sample_step_op(cond, uncond, tokens, noise, masked, coef=3.0, temperature=temp,
                                   top_p=0.0, top_k=0, greedy=False, span_len=span, scoring="max")
    tok0, scored0, _ = out[0.0]
    tok1, scored1, _ = out[0.01]
    assert torch.isfinite(scored0).all()
    assert torch.equal(tok0, tok1)
    torch.testing.assert_close(scored0, scored1, rtol=1e-6, atol=1e-7)
    probs = torch.softmax((uncond + (cond - uncond) * 3.0) / 0.01, dim=-1)
    torch.testing.assert_close(scored0, probs.gather(-1, tok0.unsqueeze(-1))[..., 0], rtol=1e-5, atol=1e-6)
    assert (out[0.02][1] - scored1).abs().max() > 1e-3                  # the probe sees the temperature
