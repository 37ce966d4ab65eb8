"""Rescoring MAGNeT with a MusicGen LM (issue #14; magnet_fast/decoding/rescoring.py).

(a) The rescorer's teacher-forced predictions against audiocraft's own ``lm.compute_predictions(codes,
    conditions, keep_only_valid_steps=False)`` (fixture tests/fixtures/ac_musicgen): bitwise on CPU fp32,
    every frame of every codebook, no NaN.
(b) The MAGNeT side is untouched: audiocraft's tokens and RNG consumption with a rescorer whose weight is
    0 (or non-zero only at the last step of each stage, whose scores nothing reads: skipped); with a
    rescorer that runs, a step's samples and the stream are those of the plain step, only the scores move.
(c) Mixing and span selection, against direct computations: the candidate and the pattern built by hand,
    the rescorer's logits from ar.py's prefill (another code path), spans chosen with torch.topk / the
    per-row stride1 reference; w = 1 chooses by the rescorer alone, a per-step w mixes with its own value.
Plus typed errors, the Decoder key, and graph safety (fx replay, torch.compile fullgraph).
"""
from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

import magnet_fast as mf
from magnet_fast.decoding.ar import KVCache
from magnet_fast.decoding.magnet import Decoder, DecodeState, decode, decode_step
from magnet_fast.decoding.rescoring import Rescorer, RescoreRequest, teacher_forced_logits
from magnet_fast.decoding.sampling import make_sampler
from magnet_fast.decoding.schedule import Step, stage_steps
from magnet_fast.decoding.scoring import make_scorer
from magnet_fast.decoding.spans import make_arrangement
from magnet_fast.engines.pairing import Rescoring
from magnet_fast.errors import ConfigError, ParameterError
from magnet_fast.kernels.sample import naive as S
from magnet_fast.nn.conditioning import encode_condition_apart
from magnet_fast.nn.pattern import pattern_sequence
from magnet_fast.params import resolve_params
from tests.sample_refs import select_stride1_loop

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MUSICGEN = FIXTURES / "ac_musicgen"
T5_TINY = FIXTURES / "ac_ref" / "t5_tiny"
TEXTS = ["energetic edm with drums and bass", "calm piano"]      # unequal lengths: padding matters


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def musicgen(musicgen_folder):
    return mf.MusicGenFast.from_pretrained(musicgen_folder, t5=T5_TINY, attention="exact")       # the parity mode


@pytest.fixture(scope="module")
def mg_ref():
    from safetensors.torch import load_file
    return load_file(str(MUSICGEN / "reference.safetensors"))


def _rescorer_kv(musicgen, texts):
    """The B texts through the rescorer's own T5, as their own padded batch (compute_predictions' call)."""
    cond, _ = encode_condition_apart(musicgen.text, musicgen.lm, texts)
    with torch.inference_mode():
        return musicgen.lm.cross_kv(cond)


# ------------------------------------------------------------------------------------------ (a) vs audiocraft
@pytest.mark.parametrize("case", ["random", "partial_special"])
def test_teacher_forced_logits_equal_audiocraft_compute_predictions(musicgen, mg_ref, case):
    codes, want = mg_ref[f"tf/{case}/codes"], mg_ref[f"tf/{case}/logits"]
    delays = musicgen.config.delays
    assert torch.equal(pattern_sequence(codes, delays, musicgen.config.card), mg_ref[f"tf/{case}/sequence"])
    with torch.inference_mode():
        got = teacher_forced_logits(musicgen.lm, codes, _rescorer_kv(musicgen, TEXTS), delays)
    assert got.shape == want.shape == (2, 4, 50, 512)
    assert not torch.isnan(got).any()
    assert torch.equal(got, want)                                     # bitwise, CPU fp32
    # the frames keep_only_valid_steps=True leaves NaN (last k frames of codebook k) are predicted too
    nan_true = mg_ref[f"tf/{case}/nan_mask_valid_steps"].bool()
    assert nan_true[:, 1:, -1].all() and nan_true[:, 3, -3:].all()
    assert torch.equal(got[nan_true], want[nan_true]) and torch.isfinite(got[nan_true]).all()
    # one head at a time (what a rescoring step evaluates) is the same bits
    with torch.inference_mode():
        for k in (2, 3):
            one = teacher_forced_logits(musicgen.lm, codes, _rescorer_kv(musicgen, TEXTS), delays, codebooks=(k,))
            assert torch.equal(one[:, 0], want[:, k])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_rescorer_token_probabilities_equal_audiocraft(musicgen, mg_ref, temperature):
    """The per-token probabilities a rescoring step of the last stage uses (nothing after codebook 3 to
    blank), from audiocraft's logits: softmax(logits / temperature) at the candidate's tokens, bitwise,
    including the last three frames of codebook 3."""
    codes, logits = mg_ref["tf/random/codes"], mg_ref["tf/random/logits"]
    kv = _rescorer_kv(musicgen, TEXTS)
    rescoring = Rescoring(_FakeMagnet(musicgen), musicgen, 1.0, temperature, (1, 1, 1, 1))
    request = RescoreRequest(musicgen.lm, rescoring.weights, rescoring.temperature, kv, None)
    rescorer = Rescorer(request, 2, 50, graphs=False)
    rescorer.load(kv)
    seq = torch.cat([codes, torch.full_like(codes, 512)])           # MAGNeT's CFG batch: null half unused
    with torch.inference_mode():
        got = rescorer.probs(seq, 3, codes[:, 3])
    want = torch.softmax(logits[:, 3] / temperature, dim=-1).gather(-1, codes[:, 3].unsqueeze(-1))[..., 0]
    assert got.shape == (2, 50) and torch.isfinite(got).all()
    assert torch.equal(got, want)


class _FakeMagnet:
    """Stands in for a MagnetFast where only the token space and device are read."""

    def __init__(self, like):
        self.config, self.device = like.config, like.device


# ------------------------------------------------------------------------------------------ (b) MAGNeT unchanged
def _run_kwargs(run: dict) -> dict:
    kw = dict(run["generate_kwargs"])
    kw["temperature"] = kw.pop("temp")
    return kw


def _last_step_only(steps) -> list[float]:
    """w = 1 at the last step of each stage, 0 elsewhere: the scores it would change are never read (the
    next stage starts from fresh scores), so the rescorer does not even run."""
    return [float(i == n - 1) for n in steps for i in range(n)]


@pytest.mark.parametrize("name, weight", [
    pytest.param("prod", 0.0, id="prod-w0"),
    pytest.param("stride1_prompt", "zeros", id="stride1-prompt-w0-list"),
    pytest.param("mixed_batch", "last", id="mixed-batch-last-steps-only"),
    pytest.param("prompt", 0.0, id="prompt-w0"),
])
def test_weight_zero_gives_audiocraft_tokens(model10, ref10, musicgen, name, weight):
    run = ref10.meta["runs"][name]
    kw = _run_kwargs(run)
    steps = kw["decoding_steps"]
    weight = {"zeros": [0.0] * sum(steps), "last": _last_step_only(steps)}.get(weight, weight)
    prompt = ref10.tensors["prompt_tokens"] if run["prompt"] else None
    calls = []
    hooks = [head.register_forward_hook(lambda *a: calls.append(0)) for head in musicgen.lm.heads]
    try:
        gen = torch.Generator().manual_seed(run["seed_before_generate"])
        tokens = model10.generate_tokens(run["descriptions"], prompt=prompt, generator=gen, rescorer=musicgen,
                                         rescore_weight=weight, **kw)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == []                                               # nothing to rescore: no forward
    assert torch.equal(tokens, ref10.tensors[f"run.{name}.tokens"].long())
    assert torch.rand(1, generator=gen).item() == run["rng_probe_after"]


def test_a_running_rescorer_changes_only_the_scores(model10, musicgen):
    """Stage 0, step 0 with and without a rescorer at w = 1: the same samples and sequence (rescoring comes
    after the draw and writes nothing else), other scores; and the whole run consumes the same noise."""
    params = resolve_params(model10.config.generation, 4, decoding_steps=(3, 1, 1, 2))
    texts = ["calm piano", None, "funky disco groove with bass"]
    dec, kv, rkv = _decoder(model10, musicgen, texts, params, 1.0, 1.0)
    plain = Decoder(model10.lm, 3, model10.frames, params)
    seen = {}
    gens = {}
    for name, d, extra in (("rescored", dec, {"rescore_kv": rkv}), ("plain", plain, {})):
        gens[name] = torch.Generator().manual_seed(3)
        with torch.inference_mode():
            d.run(kv, None, gens[name], on_step=lambda st, i, s, name=name: seen.setdefault(
                name, (s.seq.clone(), s.scores.clone())), **extra)
    assert torch.equal(seen["rescored"][0], seen["plain"][0])
    real = seen["plain"][1] != S.DONT_REMASK
    assert (seen["rescored"][1] != S.DONT_REMASK).equal(real) and not torch.equal(seen["rescored"][1], seen["plain"][1])
    assert torch.equal(gens["rescored"].get_state(), gens["plain"].get_state())


# ------------------------------------------------------------------------------------------ (c) properties
def _reference_rescorer_probs(musicgen, kv, seq_b: torch.Tensor, stage: int, temperature: float) -> torch.Tensor:
    """p_rescorer [B, T] computed directly: the candidate and its delay pattern built frame by frame, the
    logits from ar.py's causal prefill (MusicGenLM.step_logits, all heads), the output before each code."""
    cfg = musicgen.config
    b, k, t = seq_b.shape
    cand = seq_b.clone()
    cand[:, stage + 1:] = cfg.card
    length = t + max(cfg.delays) + 1
    pattern = torch.full((b, k, length), cfg.card, dtype=torch.long)
    for q, d in enumerate(cfg.delays):
        for f in range(t):
            pattern[:, q, 1 + f + d] = cand[:, q, f]
    cache = KVCache(cfg.num_layers, b, cfg.num_heads, length, cfg.head_dim, torch.float32, "cpu")
    with torch.inference_mode():
        logits = musicgen.lm.step_logits(pattern, kv, cache, 0)[:, stage]          # [B, L, card]
    d = cfg.delays[stage]
    probs = torch.softmax(logits[:, d: d + t] / temperature, dim=-1)
    return probs.gather(-1, cand[:, stage].unsqueeze(-1))[..., 0]


def _decoder(model, musicgen, texts, params, weight, temperature, batch_invariant=False, n_prompt=0):
    rescoring = Rescoring(model, musicgen, weight, temperature, params.decoding_steps)
    cond, lengths = model.conditioning(texts, batch_invariant)
    with torch.inference_mode():
        kv = model.lm.cross_kv(cond)
    request = rescoring.prepare(texts, batch_invariant)
    dec = Decoder(model.lm, len(texts), model.frames, params, cross_lengths=lengths, n_prompt=n_prompt,
                  rescore=request)
    return dec, kv, request.kv


@pytest.mark.parametrize("arrangement, scoring, backend, n_prompt", [
    pytest.param("nonoverlap", "max", "exact", 21, id="nonoverlap-max-prompt"),
    pytest.param("stride1", "prod", "exact", 7, id="stride1-prod-prompt"),
    pytest.param("nonoverlap", "prod", "windowed", 0, id="nonoverlap-gathered-windowed"),
])
def test_weight_one_selects_by_the_rescorer_alone(model10, musicgen, arrangement, scoring, backend, n_prompt):
    """With a prompt, later stages hold prompt tokens in MAGNeT's sequence: the candidate must still show
    the rescorer the special token there (stages > k undecided), which this checks."""
    steps = (4, 3, 1, 2)
    params = resolve_params(model10.config.generation, 4, decoding_steps=steps, span_arrangement=arrangement,
                            span_scoring=scoring)
    texts = ["calm piano", "funky disco groove with bass"]
    dec, kv, rkv = _decoder(model10, musicgen, texts, params, 1.0, 1.0, n_prompt=n_prompt)
    prompt = torch.randint(0, 512, (2, 4, n_prompt), generator=torch.Generator().manual_seed(1)) if n_prompt else None
    seen = []
    model10.set_attention(backend)
    try:
        with torch.inference_mode():
            dec.run(kv, prompt, torch.Generator().manual_seed(5), rescore_kv=rkv,
                    on_step=lambda st, i, s: seen.append((st, i, s.seq[:2].clone(), s.scores.clone())))
    finally:
        model10.set_attention("exact")
    ref_kv = _rescorer_kv(musicgen, texts)
    unit = 3 if arrangement == "nonoverlap" else 1
    n_units = dec.state.scores.shape[-1]
    n_free = n_units - n_prompt // unit
    changed = 0
    for stage, n in enumerate(steps):
        plan = stage_steps(stage, n, n_free, temperature=3.0, anneal_temp=True, max_cfg_coef=10.0, min_cfg_coef=1.0)
        masked = seen[sum(steps[:stage])][3] != S.DONT_REMASK           # step 0: MAGNeT's own first mask
        assert int(masked.sum()) == 2 * n_free
        for i in range(n):
            _, _, seq_b, scores = seen[sum(steps[:stage]) + i]
            p_r = _reference_rescorer_probs(musicgen, ref_kv, seq_b, stage, 1.0)
            if unit == 3:
                want = (1 - p_r.view(2, -1, 3).max(-1).values) if scoring == "max" else -torch.log(p_r).view(2, -1, 3).sum(-1)
            else:
                want = -torch.log(p_r)
            want = want.masked_fill(~masked, S.DONT_REMASK)
            if i + 1 == n:                                            # the stage's last step: not rescored
                assert (scores != S.DONT_REMASK).equal(masked) and not torch.equal(scores, want)
                continue
            assert torch.equal(scores, want), (stage, i)
            if i + 1 < n:                                             # the next step's mask, directly
                m = plan[i + 1].num_masked
                if unit == 3:
                    nxt = torch.zeros_like(masked).scatter(-1, torch.topk(want, m, dim=-1).indices, True)
                else:
                    nxt = select_stride1_loop(want, m, 3)
                observed = seen[sum(steps[:stage]) + i + 1][3] != S.DONT_REMASK
                assert torch.equal(observed, nxt), (stage, i)
                masked = nxt
                changed += 1
    assert changed == sum(steps) - len(steps)


def test_per_step_weight_mixes_with_its_own_value(model10, musicgen, monkeypatch):
    """Every step's scored probability is w_i * p_rescorer + (1 - w_i) * p_magnet at the newly sampled
    positions (p_magnet the sampler's own, p_rescorer computed directly at rescore_temperature 0.8), and
    p_magnet elsewhere; all weights differ, so a step using another step's weight fails. The last step of
    each stage (its scores are never read) is not rescored: p_magnet as is."""
    steps = (3, 2, 2, 2)
    weights = [0.9, 0.25, 0.6, 1.0, 0.35, 0.5, 0.75, 0.15, 0.45]
    params = resolve_params(model10.config.generation, 4, decoding_steps=steps)
    texts = ["calm piano", "funky disco groove with bass"]
    dec, kv, rkv = _decoder(model10, musicgen, texts, params, weights, 0.8)
    assert dec.rescorer.weights == ((0.9, 0.25, 0.6), (1.0, 0.35), (0.5, 0.75), (0.15, 0.45))
    log = []
    sampler, scorer = dec.sampler, dec.scorer

    def spy_sampler(cond, uncond, row, noise, step, positions=None):
        out = sampler(cond, uncond, row, noise, step, positions)
        log.append({"step": step, "was_masked": row == model10.lm.mask_id, "p_magnet": out[1].clone()})
        return out

    def spy_scorer(probs, masked):
        log[-1]["mixed"] = probs.clone()
        return scorer(probs, masked)
    spy_sampler.gathers = sampler.gathers
    dec.sampler, dec.scorer = spy_sampler, spy_scorer
    seqs = []
    with torch.inference_mode():
        dec.run(kv, None, torch.Generator().manual_seed(9), rescore_kv=rkv,
                on_step=lambda st, i, s: seqs.append(s.seq[:2].clone()))
    ref_kv = _rescorer_kv(musicgen, texts)
    assert len(log) == len(seqs) == len(weights)
    far = 0.0
    for w, entry, seq_b in zip(weights, log, seqs, strict=True):
        step = entry["step"]
        if step.index == steps[step.stage] - 1:
            assert torch.equal(entry["mixed"], entry["p_magnet"])
            continue
        p_r = _reference_rescorer_probs(musicgen, ref_kv, seq_b, step.stage, 0.8)
        pm, got, new = entry["p_magnet"], entry["mixed"], entry["was_masked"]
        want = torch.where(new, w * p_r + (1 - w) * pm, pm)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
        far = max(far, float((p_r - pm)[new].abs().max()))
    assert far > 0.1                     # p_rescorer and p_magnet differ: the weights are visible


def test_rescorer_condition_is_encoded_once_per_generation(model10, musicgen, monkeypatch):
    calls = {"t5": 0, "cross_kv": 0}
    encode, cross_kv = musicgen.text.model.forward, musicgen.lm.cross_kv

    def count(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapped
    monkeypatch.setattr(musicgen.text.model, "forward", count("t5", encode))
    monkeypatch.setattr(musicgen.lm, "cross_kv", count("cross_kv", cross_kv))
    model10.generate_tokens(["calm piano", None], seed=2, decoding_steps=[2, 2, 1, 1], rescorer=musicgen,
                            rescore_weight=0.5)
    assert calls == {"t5": 1, "cross_kv": 1}


def test_rescoring_changes_tokens_and_is_reproducible(model10, musicgen):
    kw = dict(seed=4, decoding_steps=[4, 2, 2, 1], rescorer=musicgen)
    a = model10.generate_tokens(["calm piano", None, "funky disco groove"], rescore_weight=1.0, **kw)
    b = model10.generate_tokens(["calm piano", None, "funky disco groove"], rescore_weight=1.0, **kw)
    plain = model10.generate_tokens(["calm piano", None, "funky disco groove"], seed=4, decoding_steps=[4, 2, 2, 1])
    assert torch.equal(a, b) and a.shape == plain.shape == (3, 4, 498)
    assert not torch.equal(a, plain)
    assert int(a.min()) >= 0 and int(a.max()) < 512


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("weight, match", [
    pytest.param(1.5, r"in \[0, 1\]", id="above-one"),
    pytest.param(-0.1, r"in \[0, 1\]", id="negative"),
    pytest.param(float("nan"), r"in \[0, 1\]", id="nan"),
    pytest.param("0.5", "a number", id="string"),
    pytest.param(True, "a number", id="bool"),
    pytest.param([0.5] * 5, "needs one per decoding step: 6", id="list-short"),
    pytest.param([0.5] * 7, "needs one per decoding step: 6", id="list-long"),
    pytest.param([0.5, 0.5, 2.0, 0.5, 0.5, 0.5], r"in \[0, 1\]", id="list-value"),
])
def test_bad_rescore_weight(model10, musicgen, weight, match):
    with pytest.raises(ParameterError, match=match):
        model10.generate_tokens(["x"], decoding_steps=[3, 1, 1, 1], rescorer=musicgen, rescore_weight=weight)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("inf"), "1"])
def test_bad_rescore_temperature(model10, musicgen, temperature):
    with pytest.raises(ParameterError, match="rescore_temperature"):
        model10.generate_tokens(["x"], rescorer=musicgen, rescore_temperature=temperature)


def test_rescorer_must_be_musicgen(model10):
    for wrong in (model10, "musicgen", 3):
        with pytest.raises(ParameterError, match="rescorer must be a MusicGenFast"):
            model10.generate_tokens(["x"], rescorer=wrong)


@pytest.mark.parametrize("field, value", [("n_q", 8), ("card", 2048), ("frame_rate", 25)])
def test_incompatible_rescorer_is_a_config_error(model10, musicgen, field, value):
    other = copy.copy(musicgen)
    other.config = dataclasses.replace(musicgen.config, **{field: value})
    with pytest.raises(ConfigError, match="same codec token space"):
        model10.generate_tokens(["x"], rescorer=other)


# ------------------------------------------------------------------------------------------ key and graphs
def test_decoder_key_separates_rescorer_settings(model10, musicgen):
    params = resolve_params(model10.config.generation, 4, decoding_steps=(2, 1, 1, 1))
    rkv = _rescorer_kv(musicgen, ["calm piano"])
    keys = set()
    for weight, temperature in ((0.5, 1.0), (0.7, 1.0), ([0.5, 0.7, 0.5, 0.5, 0.5], 1.0), (0.5, 0.9)):
        rescoring = Rescoring(model10, musicgen, weight, temperature, params.decoding_steps)
        rkey = RescoreRequest(musicgen.lm, rescoring.weights, rescoring.temperature, rkv, None).spec
        keys.add(Decoder.make_key(model10.lm, 1, 500, 3, params, 0, None, "torch", None, rkey))
    keys.add(Decoder.make_key(model10.lm, 1, 500, 3, params, 0, None, "torch", None))
    assert len(keys) == 5


def test_fx_replay_with_rescorer_matches_eager(model10, musicgen):
    """The graph protocol (fx stand-in for CUDA graphs): recordings made on a first call with rescoring
    replay on later calls with other texts and seeds and give the tokens of a fresh eager decode."""
    params = resolve_params(model10.config.generation, 4, decoding_steps=(2, 2, 1, 1))
    steps_w = [0.8, 0.0, 1.0, 0.4, 0.6, 0.3]
    cache: OrderedDict = OrderedDict()
    for n, (texts, seed) in enumerate([(["calm piano", None], 5), (["piano calm", "calm piano"], 11),
                                       (["piano calm", None], 12)]):
        rescoring = Rescoring(model10, musicgen, steps_w, 1.0, params.decoding_steps)
        outs = []
        for graphs, c in (("fx", cache), (None, None)):
            with torch.inference_mode():
                kv = model10.lm.cross_kv(model10.condition(texts))
            outs.append(decode(model10.lm, kv, 2, 500, params, generator=torch.Generator().manual_seed(seed),
                               graphs=graphs, cache=c, rescore=rescoring.prepare(texts, False)))
        assert torch.equal(outs[0], outs[1]), f"call {n}"
    (decoder,) = cache.values()
    assert len(decoder.recorded) == sum(params.decoding_steps)
    held = decoder.buffers()
    assert decoder.rescorer.kv is not None
    assert all(any(t is b for b in held) for t in decoder.rescorer.tensors())   # static: listed as buffers


def test_decode_step_with_rescorer_compiles_without_graph_breaks(model10, musicgen):
    torch._dynamo.reset()
    lm = model10.lm
    params = resolve_params(model10.config.generation, 4)
    t, stage = 498, 2
    g = torch.Generator().manual_seed(3)
    seq = torch.randint(0, 512, (2, 4, t), generator=g)
    seq[:, stage + 1:] = lm.mask_id
    row = seq[:, stage].clone()
    seq = seq.repeat(2, 1, 1)
    scores = torch.rand(2, t // 3, generator=g)
    noise = S.draw_noise(torch.empty(2, t, 512), g)
    plans = [[Step(s, 0, 0.5, 40, 3.5, 1.7)] for s in range(4)]
    arrangement = make_arrangement(3, "nonoverlap")
    parts = (plans[stage][0], arrangement, make_sampler("torch", params, lm.mask_id, plans, "cpu"),
             make_scorer("max", arrangement))
    texts = ["calm piano", None]
    rkv = _rescorer_kv(musicgen, texts)
    rescoring = Rescoring(model10, musicgen, 0.6, 1.0, (2, 2, 2, 2))                # step 0: not a stage's last
    rescorer = Rescorer(RescoreRequest(musicgen.lm, rescoring.weights, rescoring.temperature, rkv, None), 2, t,
                        graphs=False)
    rescorer.load(rkv)
    with torch.no_grad():
        kv = lm.cross_kv(model10.condition(texts))
        prefix = lm.stage_prefix(seq, stage)

        def state(s):
            return DecodeState(seq=s, row=row.clone(), scores=scores.clone(), kv=kv, noise=noise.clone(), prompt=None,
                               prefix=prefix)
        seq_eager, seq_traced = seq.clone(), seq.clone()
        eager = decode_step(lm, state(seq_eager), *parts, rescorer)
        plain = decode_step(lm, state(seq.clone()), *parts)
        traced = torch.compile(decode_step, fullgraph=True, backend="eager")(lm, state(seq_traced), *parts, rescorer)
    for a, b in zip(eager, traced, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(eager[0], plain[0]) and not torch.equal(eager[1], plain[1])   # same tokens, other scores
    assert not bool(traced[2])
