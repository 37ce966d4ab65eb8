"""MusicGen on the engine: conversion of an audiocraft MusicGen export, token-exact parity with audiocraft
1.3.0 (tests/fixtures/ac_musicgen, made by audiocraft itself with gen_musicgen_reference.py), the fast
paths against the parity path, graph safety of the static step, and bad input."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import magnet_fast as mf
from magnet_fast.decoding.ar import (
    ARDecoder,
    KVCache,
    build_pattern,
    first_step,
    pattern_length,
    revert_pattern,
)
from magnet_fast.errors import CheckpointError, ConfigError, ParameterError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MG = FIXTURES / "ac_musicgen"
T5_TINY = FIXTURES / "ac_ref" / "t5_tiny"
META = json.loads((MG / "reference.json").read_text())
RUNS = META["runs"]


@pytest.fixture(scope="module")
def tensors():
    return load_file(str(MG / "reference.safetensors"))


@pytest.fixture(scope="module")
def folder(musicgen_folder):
    return musicgen_folder


@pytest.fixture(scope="module")
def exact(folder):
    return mf.MusicGenFast.from_pretrained(folder, t5=T5_TINY, attention="exact")


@pytest.fixture(scope="module")
def fast(folder):
    return mf.MusicGenFast.from_pretrained(folder, t5=T5_TINY)


def _kwargs(run: dict) -> dict:
    kw = dict(run["generate_kwargs"])
    kw["temperature"] = kw.pop("temp")
    return kw


def _descriptions(run: dict):
    return run["descriptions"] if run["descriptions"] is not None else [None] * run["num_samples"]


# ------------------------------------------------------------------------------------------ conversion
def test_convert_records_the_musicgen_geometry(folder):
    cfg = mf.MagnetConfig.load(folder)
    assert cfg.kind == "musicgen" and cfg.delays == (0, 1, 2, 3) and cfg.lm_cfg_coef == META["loaded"]["cfg_coef"]
    assert (cfg.n_q, cfg.card, cfg.dim, cfg.num_layers, cfg.segment_duration) == (4, 512, 64, 2, 30.0)
    g = cfg.generation       # audiocraft's MusicGen.set_generation_params defaults; 15 s as its constructor sets
    assert (g.use_sampling, g.top_k, g.top_p, g.temperature, g.cfg_coef, g.two_step_cfg, g.duration) == \
        (True, 250, 0.0, 1.0, 3.0, False, 15.0)


def test_wrong_engine_for_the_kind_names_the_right_class(folder, tmp_path):
    with pytest.raises(ConfigError, match="MusicGenFast"):
        mf.MagnetFast.from_pretrained(folder, t5=T5_TINY)
    magnet = tmp_path / "magnet"
    mf.convert(FIXTURES / "ac_ref" / "magnet_tiny", magnet)
    with pytest.raises(ConfigError, match="MagnetFast"):
        mf.MusicGenFast.from_pretrained(magnet, t5=T5_TINY)


def _variant(tmp_path: Path, edit) -> Path:
    pkg = torch.load(MG / "musicgen_tiny" / "state_dict.bin", weights_only=True)
    pkg["xp.cfg"] = edit(pkg["xp.cfg"])
    out = tmp_path / "variant"
    out.mkdir(parents=True)
    buf = io.BytesIO()
    torch.save(pkg, buf)
    (out / "state_dict.bin").write_bytes(buf.getvalue())
    return out


def test_melody_and_stereo_exports_are_refused_with_what_is_missing(tmp_path):
    import yaml

    def melody(text):
        d = yaml.safe_load(text)
        d["conditioners"]["self_wav"] = {"model": "chroma_stem", "chroma_stem": {"sample_rate": 32000}}
        return yaml.safe_dump(d)

    def stereo(text):
        d = yaml.safe_load(text)
        d["channels"] = 2
        return yaml.safe_dump(d)
    with pytest.raises(CheckpointError, match="melody"):
        mf.convert(_variant(tmp_path / "m", melody), tmp_path / "out_m")
    with pytest.raises(CheckpointError, match="stereo"):
        mf.convert(_variant(tmp_path / "s", stereo), tmp_path / "out_s")
    assert not (tmp_path / "out_m").exists() and not (tmp_path / "out_s").exists()


# ------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("name", sorted(RUNS))
def test_tokens_identical_to_audiocraft(exact, tensors, name):
    """seed=s is torch.manual_seed(s) before audiocraft's lm.generate: the same tokens, bit for bit."""
    run = RUNS[name]
    prompt = tensors[run["prompt"]] if run["prompt"] else None
    out = exact.generate_tokens(_descriptions(run), seed=run["seed_before_generate"], prompt=prompt,
                                duration=run["max_gen_len"] / exact.frame_rate, **_kwargs(run))
    ref = tensors[f"run/{name}/tokens"]
    assert out.dtype == torch.long and out.shape == ref.shape
    assert torch.equal(out, ref), f"{(out != ref).sum().item()} tokens differ"
    if prompt is not None:
        assert torch.equal(out[..., : prompt.shape[-1]], prompt)


def test_global_rng_matches_manual_seed_and_advances_like_audiocraft(exact, tensors):
    run = RUNS["default"]
    torch.manual_seed(run["seed_before_generate"])
    out = exact.generate_tokens(_descriptions(run), duration=1.0, **_kwargs(run))
    assert torch.equal(out, tensors["run/default/tokens"])
    # the harness drew torch.rand(()) right after generate: the stream advanced by exactly as many draws
    assert torch.rand(()).item() == pytest.approx(run["rng_probe_after"], abs=0)


# ------------------------------------------------------------------------------------------ pattern
@pytest.mark.parametrize("frames, n_prompt, delays", [(7, 0, (0, 1, 2, 3)), (11, 4, (0, 1, 2, 3)),
                                                      (5, 2, (0, 0, 2))])
def test_pattern_by_index_arithmetic(frames, n_prompt, delays):
    k = len(delays)
    codes = torch.randint(0, 9, (2, k, frames))
    seq, writable = build_pattern(codes, frames, delays, special=99, n_known=frames)
    assert seq.shape[-1] == pattern_length(frames, delays) == frames + max(delays) + 1
    for q, d in enumerate(delays):                     # frame t of codebook q at position 1 + t + d
        for s in range(seq.shape[-1]):
            t = s - 1 - d
            assert seq[0, q, s] == (codes[0, q, t] if 0 <= t < frames else 99)
    assert not writable.any()
    assert torch.equal(revert_pattern(seq, frames, delays), codes)
    _, writable = build_pattern(codes, frames, delays, special=99, n_known=n_prompt)
    assert int(writable.sum()) == k * (frames - n_prompt)
    assert first_step(n_prompt, delays) == n_prompt + 1 + min(delays)


# ------------------------------------------------------------------------------------------ fast paths
def _teacher_forced(lm, seq, kv, static: bool, null_from=None):
    """Logits of every position of seq [N, K, L]: eager prefill (one causal call) or static steps."""
    n, _, length = seq.shape
    cfg = lm.cfg
    cache = KVCache(cfg.num_layers, n, cfg.num_heads, length, cfg.head_dim, lm.compute_dtype, seq.device)
    if not static:
        return lm.step_logits(seq, kv, cache, 0, null_from=null_from)
    table = lm.position_table(length)
    outs = [lm.step_logits(seq[..., i:i + 1], kv, cache, torch.tensor([i], device=seq.device),
                           null_from=null_from, static=True, table=table) for i in range(length)]
    return torch.cat(outs, dim=2)


def test_static_step_and_null_skip_logits_close_to_exact(exact):
    lm = exact.lm
    cond, _ = exact.conditioning(["a b c", None, "calm piano with strings"])
    with torch.inference_mode():
        kv = lm.cross_kv(cond)
        g = torch.Generator().manual_seed(3)
        seq = torch.randint(0, lm.cfg.card + 1, (6, 4, 37), generator=g)
        ref = _teacher_forced(lm, seq, kv, static=False)
        static = _teacher_forced(lm, seq, kv, static=True)
        # rows 3..5 are the null half: skipping their cross-attention changes only GEMM shapes
        skipped = _teacher_forced(lm, seq, kv, static=False, null_from=3)
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(static, ref, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(skipped, ref, atol=2e-5, rtol=1e-5)
    assert not torch.equal(ref[..., 1:, :], ref[..., :-1, :])       # positions matter (not a constant)


def test_default_attention_same_tokens_as_parity_mode_greedy(exact, fast):
    """The default ('sdpa': null rows' cross-attention skipped) is not bitwise; greedy tokens agree here."""
    assert fast.attention_backend == "sdpa" and exact.attention_backend == "exact"
    texts = ["energetic edm with drums and bass", "calm piano"]
    a = exact.generate_tokens(texts, use_sampling=False, duration=0.6)
    b = fast.generate_tokens(texts, use_sampling=False, duration=0.6)
    assert torch.equal(a, b)
    # with a prompt: the default's prefill computes the heads at its last position only
    prompt = a[..., :12]
    for two_step in (False, True):
        a = exact.generate_tokens(texts, use_sampling=False, duration=0.6, prompt=prompt, two_step_cfg=two_step)
        b = fast.generate_tokens(texts, use_sampling=False, duration=0.6, prompt=prompt, two_step_cfg=two_step)
        assert torch.equal(a, b) and torch.equal(b[..., :12], prompt)


@pytest.mark.parametrize("two_step", [False, True])
def test_static_step_compiles_fullgraph_and_replays_like_eager(exact, two_step):
    """The static step is graph-safe: Dynamo traces it whole (fullgraph; a host sync or data-dependent
    Python would fail), and the compiled step gives the tokens of the eager static step."""
    lm = exact.lm
    texts = ["x y", "a longer description here"]
    cond, _ = exact.conditioning(texts)
    params = exact.params(duration=0.3, top_k=20, two_step_cfg=two_step)
    prompt = torch.randint(0, 512, (2, 4, 3), generator=torch.Generator().manual_seed(0))
    kv_split = None
    with torch.inference_mode():
        kv = lm.cross_kv(cond)
        if two_step:
            from magnet_fast.nn.conditioning import encode_condition_apart
            c, n = encode_condition_apart(exact.text, lm, texts)
            kv_split = (lm.cross_kv(c), lm.cross_kv(n))
        outs = []
        for graphs in (None, "compile"):
            dec = ARDecoder(lm, 2, 15, params, n_prompt=3, static=True, graphs=graphs, two_step_coef=3.0)
            outs.append(dec.run(kv, prompt, torch.Generator().manual_seed(7), null_skip=True, kv_split=kv_split))
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0][..., :3], prompt)


def test_batch_invariant_rows_depend_only_on_text_and_seed(fast):
    texts = ["energetic edm", "calm piano with a long tail of words", None]
    both = fast.generate_tokens(texts, seed=11, batch_invariant=True, duration=0.4)
    alone = fast.generate_tokens(texts[1:2], seed=12, batch_invariant=True, duration=0.4)
    assert torch.equal(both[1:2], alone)
    listed = fast.generate_tokens(texts, seed=[5, 6, 7], duration=0.4)
    assert listed.shape == (3, 4, 20) and not torch.equal(listed[0], listed[1])


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs, match", [
    ({"duration": 4000.0}, "duration must be <= 3600"),         # over 30 s is long-form, up to an hour
    ({"duration": 0.0}, "duration must be >"),
    ({"duration": float("nan")}, "duration must be a finite"),
    ({"top_k": 513}, "top_k must be <= the codebook size 512"),
    ({"top_p": 1.5}, "top_p must be <="),
    ({"temperature": -1.0}, "temperature must be >="),
    ({"two_step_cfg": "yes"}, "two_step_cfg must be True or False"),
    ({"cfg_coef": float("inf")}, "cfg_coef must be a finite"),
    ({"duration": 0.2, "prompt": torch.zeros(1, 4, 10, dtype=torch.long)}, "prompt length 10 frames must be in"),
    ({"prompt": torch.zeros(1, 4, 3, dtype=torch.long) + 600}, r"prompt tokens must be in \[0, 512\)"),
    ({"decoding_steps": [2, 2, 2, 2]}, "unexpected keyword|decoding_steps"),
])
def test_bad_parameters_are_typed_errors(fast, kwargs, match):
    with pytest.raises((ParameterError, TypeError), match=match):
        fast.generate_tokens(["x"], **kwargs)


def test_attention_backends_of_magnet_are_refused(fast):
    with pytest.raises(ParameterError, match="MAGNeT"):
        fast.set_attention("windowed")


# ------------------------------------------------------------------------------------------ live oracle
@pytest.mark.live
def test_live_audiocraft_musicgen_tokens(run_oracle, tmp_path):
    """Run audiocraft 1.3.0 now (gen_musicgen_reference.py): the checkpoint reproduces byte for byte and
    our parity path gives its tokens for every run."""
    out = tmp_path / "ac_musicgen"
    run_oracle("gen_musicgen_reference.py", "--out", str(out))
    assert (out / "musicgen_tiny" / "state_dict.bin").read_bytes() == \
        (MG / "musicgen_tiny" / "state_dict.bin").read_bytes()
    meta = json.loads((out / "reference.json").read_text())
    t = load_file(str(out / "reference.safetensors"))
    mf.convert(out / "musicgen_tiny", tmp_path / "converted")
    model = mf.MusicGenFast.from_pretrained(tmp_path / "converted", t5=T5_TINY, attention="exact")
    for name in ("default", "two_step_cfg", "prompt", "three_lengths"):
        run = meta["runs"][name]
        prompt = t[run["prompt"]] if run["prompt"] else None
        tokens = model.generate_tokens(_descriptions(run), seed=run["seed_before_generate"], prompt=prompt,
                                       duration=run["max_gen_len"] / 50, **_kwargs(run))
        assert torch.equal(tokens, t[f"run/{name}/tokens"]), name


# ------------------------------------------------------------------------------------------ GPU tier
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_graph_replay_equals_eager_static_step(folder, dtype):
    """On CUDA the default is the static step; a recorded graph replayed for every position gives the
    eager static step's tokens (same kernels, same noise), and a second call replays the recording."""
    texts = ["energetic edm with drums and bass", None, "calm piano"]
    eager = mf.MusicGenFast.from_pretrained(folder, t5=T5_TINY, device="cuda", dtype=dtype, cuda_graphs=False)
    graphs = mf.MusicGenFast.from_pretrained(folder, t5=T5_TINY, device="cuda", dtype=dtype, cuda_graphs=True)
    prompt = torch.randint(0, 512, (3, 4, 5), generator=torch.Generator().manual_seed(1))
    for kw in ({}, {"prompt": prompt}, {"two_step_cfg": True}, {"use_sampling": False}):
        a = eager.generate_tokens(texts, seed=3, duration=1.0, **kw)
        b = graphs.generate_tokens(texts, seed=3, duration=1.0, **kw)
        c = graphs.generate_tokens(texts, seed=3, duration=1.0, **kw)        # replay of the recording
        assert torch.equal(a, b) and torch.equal(b, c), kw
    assert graphs.decoders.recorded_steps() > 0


@pytest.mark.gpu
def test_cuda_bf16_logits_close_to_cpu_fp32(folder, exact):
    model = mf.MusicGenFast.from_pretrained(folder, t5=T5_TINY, device="cuda", dtype="bfloat16")
    cond, _ = exact.conditioning(["a b c", None])
    seq = torch.randint(0, 513, (4, 4, 23), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ref = _teacher_forced(exact.lm, seq, exact.lm.cross_kv(cond), static=False)
        got = _teacher_forced(model.lm, seq.cuda(), model.lm.cross_kv(cond.cuda()), static=True, null_from=2)
    err = ((got.float().cpu() - ref).norm() / ref.norm()).item()
    assert err < 2e-2, err


def test_callback_reports_every_autoregressive_step(fast):
    seen = []
    fast.generate_tokens(["x"], seed=1, duration=0.2, callback=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 13) for i in range(1, 14)]          # 10 frames + 3 delays; the first step is the prefill
    with pytest.raises(ParameterError, match="callback must be callable"):
        fast.generate_tokens(["x"], duration=0.2, callback="yes")
