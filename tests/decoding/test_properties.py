"""Property tests (hypothesis): sampler and selection invariants, decoding-loop invariants, converter fuzz."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import magnet_fast as mf
from magnet_fast.decoding.magnet import Decoder
from magnet_fast.errors import CheckpointError
from magnet_fast.kernels.sample import naive as S
from magnet_fast.params import output_frames, resolve_params
from tests.sample_refs import select_stride1_loop

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(rows=st.integers(1, 3), card=st.integers(2, 40), seed=st.integers(0, 2**31 - 1),
       top_p=st.sampled_from([0.0, 0.05, 0.5, 0.9, 1.0]), top_k=st.integers(0, 6), peak=st.floats(0.1, 20.0))
def test_sampler_invariants(rows, card, seed, top_p, top_k, peak):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(rows, 7, card, generator=g) * peak, -1)
    tokens, scored = S.sample(probs, probs.log(), S.draw_noise(probs, g), top_p=top_p, top_k=min(top_k, card))
    assert tokens.shape == (rows, 7) and int(tokens.min()) >= 0 and int(tokens.max()) < card
    chosen = probs.gather(-1, tokens[..., None])[..., 0]
    assert (chosen > 0).all() and (scored > 0).all() and (scored <= 1 + 1e-6).all()
    if top_p > 0:      # every sampled token lies in the nucleus: the mass strictly above it is <= top_p
        above = (probs * (probs > chosen[..., None])).sum(-1)
        assert (above <= top_p + 1e-5).all()
    elif top_k > 0:    # ... or among the top-k values (ties included)
        kth = probs.topk(min(top_k, card), -1).values[..., -1]
        assert (chosen >= kth).all()
    greedy, _ = S.sample(probs, probs.log(), None, use_sampling=False)
    assert torch.equal(greedy, probs.argmax(-1))


@FAST
@given(n=st.integers(2, 60), fixed=st.integers(0, 10), seed=st.integers(0, 10_000), frac=st.floats(0, 1))
def test_span_selection_never_picks_fixed_spans(n, fixed, seed, frac):
    fixed = min(fixed, n - 1)
    scores = torch.rand(2, n, generator=torch.Generator().manual_seed(seed))
    scores[:, :fixed] = S.DONT_REMASK
    k = max(1, int(frac * (n - fixed)))
    chosen = S.select_spans(scores, k)
    assert (chosen.sum(-1) == k).all() and not chosen[:, :fixed].any()


@FAST
@given(t=st.integers(4, 120), seed=st.integers(0, 10_000), frac=st.floats(0, 1), ties=st.booleans())
def test_stride1_equals_reference_search(t, seed, frac, ties):
    scores = torch.randn(3, t, generator=torch.Generator().manual_seed(seed))
    if ties:
        scores = scores.round()
    k = max(1, int(frac * t))
    assert torch.equal(S.select_stride1(scores, k, 3), select_stride1_loop(scores, k, 3))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrangement=st.sampled_from(["nonoverlap", "stride1"]), n_prompt=st.sampled_from([0, 1, 20, 31]),
       steps=st.integers(1, 4), seed=st.integers(0, 1000))
def test_decoding_invariants(model10, arrangement, n_prompt, steps, seed):
    """Observed on the real Decoder, per step: nonoverlap re-masks exactly num_masked spans, none of them a
    prompt span, nested in the previous step's; stride1 re-masks at least min(num_masked, span) tokens; a
    step changes only re-masked positions; prompt frames always hold the prompt; no mask id survives."""
    lm = model10.lm
    params = resolve_params(model10.config.generation, 4, span_arrangement=arrangement,
                            decoding_steps=[steps, steps, 1, 1])
    t, mask = output_frames(500, 3, arrangement), lm.mask_id
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, 512, (1, 4, n_prompt), generator=g) if n_prompt else None
    decoder = Decoder(lm, 1, 500, params, n_prompt=n_prompt)
    inner, selections, rows = decoder.arrangement, [], []

    class Spy:                                       # records every selection the decoder makes
        def __getattr__(self, name):
            return getattr(inner, name)

        def select(self, scores, num_masked):
            out = inner.select(scores, num_masked)
            selections.append((num_masked, out[0].clone(), out[1].clone()))
            return out
    decoder.arrangement = Spy()
    with torch.no_grad():
        kv = lm.cross_kv(model10.condition(["calm piano"]))
        out = decoder.run(kv, prompt, generator=g, on_step=lambda stage, i, s: rows.append((stage, i, s.row.clone())))
    assert len(selections) == len(rows) == sum(params.decoding_steps)
    previous = before = None
    for (num_masked, units, masked), (stage, i, row) in zip(selections, rows, strict=True):
        if i == 0:
            previous, before = None, torch.full((1, t), mask)
        if arrangement == "nonoverlap":
            assert int(units.sum()) == num_masked and int(masked.sum()) == 3 * num_masked
            assert not units[:, : n_prompt // 3].any()                      # prompt spans never re-masked
            if previous is not None:
                assert not (units & ~previous).any()                      # nested: fixed spans stay fixed
            previous = units
        else:
            assert int(masked.sum()) >= min(num_masked, 3)
        if prompt is not None:
            assert torch.equal(row[:, :n_prompt], prompt[:, stage])
        changed = row != before
        free = masked.clone()
        free[:, :n_prompt] = True                                         # the prompt is written at step 0
        assert not (changed & ~free).any(), (stage, i)
        assert (row != mask).all()
        before = row
    assert (out != mask).all() and int(out.max()) < 512


KEYS = None


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_converter_fuzz(ref10, tmp_path_factory, data):
    """Random key drops, renames and shape changes: always a CheckpointError naming the key, no output."""
    global KEYS
    if KEYS is None:
        KEYS = torch.load(ref10.checkpoint / "state_dict.bin", weights_only=True)
    pkg = dict(KEYS)
    best = dict(pkg["best_state"])
    key = data.draw(st.sampled_from(sorted(best)))
    action = data.draw(st.sampled_from(["drop", "rename", "shape"]))
    if action == "drop":
        del best[key]
    elif action == "rename":
        best[key + "_renamed"] = best.pop(key)
    else:
        t = best[key]
        best[key] = torch.zeros(*t.shape[:-1], t.shape[-1] + data.draw(st.integers(1, 3)), dtype=t.dtype)
    pkg["best_state"] = best
    root = tmp_path_factory.mktemp("fuzz")
    (root / "src").mkdir()
    torch.save(pkg, root / "src" / "state_dict.bin")
    with pytest.raises(CheckpointError) as err:
        mf.convert(root / "src", root / "out")
    assert key.split(".")[-2] in str(err.value) or key in str(err.value)
    assert not (root / "out").exists()
