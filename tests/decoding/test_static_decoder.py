"""Static-buffer decoding and the graph protocol, on CPU.

``Decoder`` allocates every buffer once and, with graphs, records each (stage, step) on its first run and
replays the recording afterwards. A CUDA graph freezes everything Python decided at record time (shapes,
scalars, which buffers are read), so a recording is only correct if nothing it froze depends on the call.
``graphs="fx"`` runs the same protocol with ``make_fx`` traces (the recorded aten ops, replayed on the same
buffers), which checks exactly that on CPU: a second call with other texts, seeds and prompt contents,
replayed from recordings made by the first, must give the tokens of a fresh eager decode.
The CUDA-graph version of these checks is in test_gpu_runtime.py (GPU tier).
"""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from magnet_fast.decoding.magnet import Decoder, decode
from magnet_fast.errors import ParameterError
from magnet_fast.params import resolve_params

SHORT = (2, 2, 1, 1)


def _inputs(model, texts, seed, n_prompt, batch_invariant=False):
    cond, lengths = model.conditioning(texts, batch_invariant)
    with torch.inference_mode():
        kv = model.lm.cross_kv(cond)
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, model.config.card, (len(texts), 4, n_prompt), generator=g) if n_prompt else None
    return kv, lengths, prompt, torch.Generator().manual_seed(seed + 1)


@pytest.mark.parametrize("overrides, backend, sampler, n_prompt, invariant", [
    pytest.param({}, "exact", "torch", 0, False, id="defaults-exact"),
    pytest.param({"span_arrangement": "stride1", "span_scoring": "prod"}, "windowed", "torch", 7, False,
                 id="stride1-prompt-windowed"),
    pytest.param({"top_p": 0.0, "top_k": 30}, "sdpa", "torch", 20, True, id="top-k-prompt-invariant"),
    pytest.param({"use_sampling": False}, "exact", "torch", 0, False, id="greedy"),
    pytest.param({"top_p": 0.0}, "exact", "fused", 0, False, id="fused-sampler"),
])
def test_fx_replay_matches_eager(model10, overrides, backend, sampler, n_prompt, invariant):
    lm = model10.lm
    params = resolve_params(model10.config.generation, 4, decoding_steps=SHORT, **overrides)
    cache: OrderedDict = OrderedDict()
    # same words, other orders: one text length (so one key) except where batch_invariant keeps per-row lengths
    calls = [(["calm piano", None], 5), (["piano calm", "calm piano"], 11), (["piano calm", None], 12)]
    replayed = 0
    for n, (texts, seed) in enumerate(calls):
        kv, lengths, prompt, gen = _inputs(model10, texts, seed, n_prompt, invariant)
        kv2, _, _, gen2 = _inputs(model10, texts, seed, n_prompt, invariant)
        kw = {"prompt": prompt, "cross_lengths": lengths, "sampler": sampler}
        known = dict(cache)
        lm.set_attention(backend)
        try:
            got = decode(lm, kv, 2, 500, params, generator=gen, graphs="fx", cache=cache, **kw)
            want = decode(lm, kv2, 2, 500, params, generator=gen2, **kw)
        finally:
            lm.set_attention("exact")
        assert torch.equal(got, want), f"call {n}"
        assert torch.equal(gen.get_state(), gen2.get_state()), "the RNG must advance exactly as in eager decoding"
        if prompt is not None:
            assert torch.equal(got[..., :n_prompt], prompt)
        key, decoder = next(reversed(cache.items()))
        assert len(decoder.recorded) == sum(SHORT)                     # every step recorded once
        replayed += key in known
    assert replayed >= 1 + (not invariant)              # call 3 (and call 2 unless invariant) were replays
    assert (got != lm.mask_id).all()
    for decoder in cache.values():
        _assert_recordings_read_only_long_lived_tensors(decoder)


def _assert_recordings_read_only_long_lived_tensors(decoder):
    """What fx cannot show by replaying: a tensor made inside the step from host data (a host->device copy,
    illegal while a CUDA graph records) becomes a baked constant of the trace. Every constant a recording
    reads must be a buffer, weight or long-lived cache that exists outside the step."""
    lm = decoder.lm
    known = [*decoder.buffers(), *lm.parameters(), *lm.buffers(), *lm.caches.tensors()]
    storages = {t.untyped_storage().data_ptr() for t in known}
    for (stage, i), traced in decoder.recorded.items():
        for name in dir(traced):
            if name.startswith("_tensor_constant"):
                const = getattr(traced, name)
                assert const.untyped_storage().data_ptr() in storages, \
                    f"step ({stage}, {i}) reads {name} {tuple(const.shape)} {const.dtype} made inside the step"


def test_recordings_are_replayed_not_rerun(model10, monkeypatch):
    """After the first call no step goes through the Python step function again (a real replay)."""
    lm = model10.lm
    params = resolve_params(model10.config.generation, 4, decoding_steps=SHORT)
    cache: OrderedDict = OrderedDict()
    kv, _, _, gen = _inputs(model10, ["calm piano"], 1, 0)
    decode(lm, kv, 1, 500, params, generator=gen, graphs="fx", cache=cache)
    import magnet_fast.decoding.magnet as G
    calls = []
    monkeypatch.setattr(G, "decode_step", lambda *a, **k: calls.append(1) or pytest.fail("step re-run"))
    decode(lm, kv, 1, 500, params, generator=gen, graphs="fx", cache=cache)
    assert calls == []


def test_decoder_reuse_without_graphs(model10):
    """A cached Decoder's buffers are fully reset between calls (prompt length 0 after a prompt too)."""
    lm = model10.lm
    params = resolve_params(model10.config.generation, 4, decoding_steps=SHORT)
    cache: OrderedDict = OrderedDict()
    for texts, seed, n_prompt in [(["a", "b"], 1, 9), (["c", None], 2, 9), (["d", "e"], 3, 0), (["f", "g"], 4, 0)]:
        kv, _, prompt, gen = _inputs(model10, texts, seed, n_prompt)
        kv2, _, _, gen2 = _inputs(model10, texts, seed, n_prompt)
        got = decode(lm, kv, 2, 500, params, prompt=prompt, generator=gen, cache=cache)
        want = decode(lm, kv2, 2, 500, params, prompt=prompt, generator=gen2)
        assert torch.equal(got, want)
        if prompt is not None:
            assert torch.equal(got[..., :n_prompt], prompt)
    assert len(cache) == 2                                   # one per prompt length
    assert list(cache)[-1].n_prompt == 0                     # most recently used last


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_stage_prefix_is_bitwise_the_full_sum(model10, stage):
    lm = model10.lm
    g = torch.Generator().manual_seed(stage)
    seq = torch.randint(0, lm.mask_id + 1, (3, 4, 97), generator=g)
    with torch.inference_mode():
        kv = lm.cross_kv(torch.randn(3, 5, lm.cfg.dim, generator=g))
        out = torch.full((3, 97, lm.cfg.dim), float("nan"))
        prefix = lm.stage_prefix(seq, stage, out=out)
        assert prefix is out and not prefix.isnan().any()
        assert torch.equal(lm.embed(seq, prefix=prefix, start=stage), lm.embed(seq))
        assert torch.equal(lm(seq, kv, stage, "exact", prefix=prefix), lm(seq, kv, stage, "exact"))
    assert lm.stage_prefix(seq, 0) is None


def test_graph_options_are_checked(model10):
    params = resolve_params(model10.config.generation, 4)
    with pytest.raises(ParameterError, match="CUDA graphs need a CUDA device"):
        model10.set_cuda_graphs(True)
    with pytest.raises(ParameterError, match="True, False or 'auto'"):
        model10.set_cuda_graphs("yes")
    with pytest.raises(ParameterError, match="CUDA graphs need a CUDA device"):
        Decoder(model10.lm, 1, 500, params, graphs="cuda")
    with pytest.raises(ParameterError, match="graphs must be one of"):
        Decoder(model10.lm, 1, 500, params, graphs="torch")
    assert model10.cuda_graphs is False


@pytest.mark.parametrize("backend", ["sdpa", "windowed"])
@pytest.mark.parametrize("settings", [{"use_sampling": False}, {"top_p": 0.0, "top_k": 40}],
                         ids=["greedy", "top-k"])
def test_masked_rows_only_sampling_gives_exact_tokens(model10, backend, settings):
    """Outside 'exact', the head and the sampler run on the masked spans' positions only (gathered); with
    greedy / top-k decoding (no sort-order sensitivity) the tokens equal the full-row exact path's."""
    texts = ["calm piano", None, "fast techno"]
    want = model10.generate_tokens(texts, seed=4, decoding_steps=[5, 3, 3, 3], **settings)
    model10.set_attention(backend)
    try:
        got = model10.generate_tokens(texts, seed=4, decoding_steps=[5, 3, 3, 3], **settings)
    finally:
        model10.set_attention("exact")
    assert torch.equal(got, want)


def test_positions_logits_are_the_gathered_full_logits(model10):
    lm = model10.lm
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(0, lm.mask_id + 1, (4, 4, 498), generator=g)
    positions = torch.stack([torch.randperm(498, generator=g)[:97] for _ in range(4)])
    with torch.inference_mode():
        kv = lm.cross_kv(torch.randn(4, 5, lm.cfg.dim, generator=g))
        full = lm(seq, kv, 1, "sdpa", None, 2)
        part = lm(seq, kv, 1, "sdpa", None, 2, None, positions)
    want = full.gather(1, positions.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
    assert part.shape == (4, 97, lm.cfg.card)
    torch.testing.assert_close(part, want, rtol=1e-5, atol=1e-5)


def test_token_statistics_of_a_fast_backend_match_exact(model10, token_tv_distance):
    """The statistical token check the GPU tier applies to CUDA vs CPU, here on CPU (windowed vs exact):
    the histogram distance between the two backends (different seeds) stays within what two seeds of
    the same backend give."""
    texts = ["calm piano", "fast techno"] * 3
    steps = {"decoding_steps": [4, 2, 2, 2]}
    exact_a = model10.generate_tokens(texts, seed=10, **steps)
    exact_b = model10.generate_tokens(texts, seed=11, **steps)
    model10.set_attention("windowed")
    try:
        fast = model10.generate_tokens(texts, seed=12, **steps)
    finally:
        model10.set_attention("exact")
    noise = token_tv_distance(exact_a, exact_b, 512)
    assert token_tv_distance(fast, exact_a, 512) < 1.5 * noise + 0.02
    shuffled = exact_b.clone()
    shuffled[:, 1:] = torch.randint(0, 512, shuffled[:, 1:].shape, generator=torch.Generator().manual_seed(0))
    assert token_tv_distance(shuffled, exact_a, 512) > 1.5 * noise + 0.02     # the check can fail


def test_api_graph_cache_eviction_and_rerecording(model10):
    """The API's LRU of recorded shapes (fx stand-in on CPU): a 5th shape evicts the oldest, which is then
    recorded again and still replays correctly; clear_cuda_graphs empties it."""
    steps = {"decoding_steps": [2, 1, 1, 1]}
    shapes = [["calm piano"], ["calm piano", None], ["a", "b", "c"], ["calm piano"] * 4, ["a"] * 5]
    want = [model10.generate_tokens(t, seed=1, **steps) for t in shapes]
    model10.cuda_graphs, model10._graph_mode = True, "fx"      # the setter refuses CPU for real graphs
    try:
        got = [model10.generate_tokens(t, seed=1, **steps) for t in shapes]
        assert len(model10.decoders) == model10.decoders.capacity == 4
        assert [k.batch for k in model10.decoders] == [2, 3, 4, 5]            # batch 1 was evicted
        again = model10.generate_tokens(shapes[0], seed=1, **steps)           # re-recorded
        assert [k.batch for k in model10.decoders] == [3, 4, 5, 1]
        replay = model10.generate_tokens(shapes[0], seed=1, **steps)          # replayed
    finally:
        model10.cuda_graphs, model10._graph_mode = False, "cuda"
        model10.clear_cuda_graphs()
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    assert torch.equal(again, want[0]) and torch.equal(replay, want[0])
    assert len(model10.decoders) == 0


def test_auto_graph_policy_records_a_shape_on_its_second_call(model10):
    """cuda_graphs='auto' (the CUDA default; fx stand-in here): a shape's first call runs eagerly and caches
    nothing, the second records, the third replays; every call gives the eager tokens."""
    steps = {"decoding_steps": [2, 1, 1, 1]}
    want = model10.generate_tokens(["calm piano", None], seed=3, **steps)
    model10.cuda_graphs, model10._graph_mode = "auto", "fx"
    try:
        first = model10.generate_tokens(["calm piano", None], seed=3, **steps)
        assert len(model10.decoders) == 0 and model10.decoders.recorded_steps() == 0
        second = model10.generate_tokens(["piano calm", None], seed=3, **steps)     # same shape: records
        assert len(model10.decoders) == 1 and model10.decoders.recorded_steps() == 5 + 1
        third = model10.generate_tokens(["calm piano", None], seed=3, **steps)      # replays
        other = model10.generate_tokens(["calm piano"], seed=3, **steps)            # a new shape: eager
        assert len(model10.decoders) == 1
    finally:
        model10.cuda_graphs, model10._graph_mode = False, "cuda"
        model10.clear_cuda_graphs()
    assert torch.equal(first, want) and torch.equal(third, want) and not torch.equal(second, want)
    assert other.shape[0] == 1
