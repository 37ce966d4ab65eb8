"""GPU tier for the runtime (marked `gpu`, skipped without CUDA): bf16 generation, backends vs fp32."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import magnet_fast as mf

T5_TINY = Path(__file__).resolve().parents[1] / "fixtures" / "ac_ref" / "t5_tiny"
pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda_models(ref10, tmp_path_factory):
    out = mf.convert(ref10.checkpoint, tmp_path_factory.mktemp("gpu") / "m")
    t5 = ref10.folder / "t5_tiny"
    # eager baselines: graphs only where a test switches them on (the CUDA default is "auto")
    return (mf.MagnetFast.from_pretrained(out, device="cuda", t5=t5, cuda_graphs=False),
            mf.MagnetFast.from_pretrained(out, device="cuda", dtype="float32", t5=t5, cuda_graphs=False))


@pytest.mark.parametrize("backend", ["sdpa", "triton", "windowed"])
def test_cuda_logits_close_to_fp32_exact(cuda_models, ref10, backend):
    bf16, fp32 = cuda_models
    t = ref10.tensors
    with torch.inference_mode():
        for stage in (0, 1):
            cond = t["cond.description_embeds"].cuda()
            exact = fp32.lm(t["tf.input"].cuda(), fp32.lm.cross_kv(cond), stage, "exact")
            assert torch.allclose(exact.cpu(), t[f"tf.stage{stage}.logits"][:, stage], rtol=1e-4, atol=1e-4)
            fast = bf16.lm(t["tf.input"].cuda(), bf16.lm.cross_kv(cond.bfloat16()), stage, backend, None, 2)
            assert ((fast.float() - exact).norm() / exact.norm()).item() < 2e-2


@pytest.mark.parametrize("backend", ["sdpa", "triton"])
def test_cuda_generation(cuda_models, backend):
    bf16, _ = cuda_models
    bf16.set_attention(backend)
    a = bf16.generate_tokens(["calm piano", None, "edm"], seed=1, decoding_steps=[6, 3, 3, 3])
    b = bf16.generate_tokens(["calm piano", None, "edm"], seed=1, decoding_steps=[6, 3, 3, 3])
    assert a.shape == (3, 4, 498) and a.is_cuda and torch.equal(a, b)
    assert int(a.min()) >= 0 and int(a.max()) < 512


@pytest.mark.parametrize("backend, sampler", [("sdpa", "torch"), ("triton", "fused"), ("windowed", "torch")])
def test_cuda_graph_replay_equals_eager(cuda_models, backend, sampler):
    """First call: eager steps + recording; later calls: replays. Same seeds -> the eager tokens, and other
    seeds/texts of the same shape replay correctly (the buffers are refilled, the RNG advances)."""
    bf16, _ = cuda_models
    bf16.set_attention(backend)
    bf16.set_sampler(sampler)
    steps = {"decoding_steps": [4, 2, 2, 2]}
    calls = [(["calm piano", None], 1), (["piano calm", "calm piano"], 2), (["calm piano", None], 1)]
    try:
        want = [bf16.generate_tokens(t, seed=s, **steps) for t, s in calls]
        bf16.set_cuda_graphs(True)
        got = [bf16.generate_tokens(t, seed=s, **steps) for t, s in calls]
        replay = bf16.generate_tokens(calls[0][0], seed=calls[0][1], **steps)
        assert len(bf16.decoders) == 1 and len(next(iter(bf16.decoders.values())).recorded) == 10
    finally:
        bf16.set_cuda_graphs(False)
        bf16.clear_cuda_graphs()
        bf16.set_sampler("torch")
        bf16.set_attention("sdpa")
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)
    assert torch.equal(replay, want[0]) and not torch.equal(want[0], want[1])



def test_cuda_tokens_statistically_match_cpu_fp32(cuda_models, model10, token_tv_distance):
    """bf16 CUDA generation vs the CPU fp32 exact engine: greedy tokens mostly agree, and sampled token
    histograms are as close as two CPU seeds are (tests/decoding/test_static_decoder.py calibrates this)."""
    bf16, _ = cuda_models
    bf16.set_attention("sdpa")
    texts = ["calm piano", "fast techno"] * 3
    steps = {"decoding_steps": [4, 2, 2, 2]}
    greedy_gpu = bf16.generate_tokens(texts, use_sampling=False, **steps).cpu()
    greedy_cpu = model10.generate_tokens(texts, use_sampling=False, **steps)
    assert (greedy_gpu == greedy_cpu).float().mean().item() > 0.9
    cpu_a = model10.generate_tokens(texts, seed=10, **steps)
    cpu_b = model10.generate_tokens(texts, seed=11, **steps)
    gpu = bf16.generate_tokens(texts, seed=12, **steps).cpu()
    assert token_tv_distance(gpu, cpu_a, 512) < 1.5 * token_tv_distance(cpu_a, cpu_b, 512) + 0.02


def test_cuda_graphs_with_prompt_invariant_rows_and_a_short_last_chunk(cuda_models):
    """Prompt tokens, batch-invariant cross lengths and max_batch's smaller last chunk under graphs."""
    bf16, _ = cuda_models
    prompt = torch.randint(0, 512, (3, 4, 20), generator=torch.Generator().manual_seed(0)).cuda()
    kw = {"decoding_steps": [4, 2, 2, 2], "seed": 5, "prompt": prompt, "batch_invariant": True, "max_batch": 2}
    texts = ["calm piano", None, "fast techno with drums"]
    want = bf16.generate_tokens(texts, **kw)
    bf16.set_cuda_graphs(True)
    try:
        got = [bf16.generate_tokens(texts, **kw) for _ in range(2)]          # record, then replay
        assert len(bf16.decoders) == 2                                       # chunks of 2 and 1
    finally:
        bf16.set_cuda_graphs(False)
        bf16.clear_cuda_graphs()
    assert all(torch.equal(g, want) for g in got)
    assert torch.equal(want[..., :20], prompt)


@pytest.fixture(scope="module")
def head_dim_64_models(tmp_path_factory):
    """A random-weight model at the released head dim (64) and card (2048): dim 256, 4 heads, 2 layers,
    10 s (500 frames). The fixture checkpoints are head dim 16; the kernels' tiles differ by head dim."""
    from safetensors.torch import save_file

    from magnet_fast.config import MagnetConfig
    from magnet_fast.nn.model import MagnetLM
    cfg = MagnetConfig(dim=256, num_heads=4, num_layers=2, card=2048, t5_name="t5-base", t5_dim=768,
                       segment_duration=10.0)
    with torch.device("meta"):
        lm = MagnetLM(cfg)
    g = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(v.shape, generator=g) * (0.05 if v.dim() == 2 else 1.0)).to(torch.float16)
             for k, v in lm.state_dict().items()}
    folder = tmp_path_factory.mktemp("d64") / "model"
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))
    cfg.save(folder)
    return (mf.MagnetFast.from_pretrained(folder, device="cuda", t5=T5_TINY, cuda_graphs=False),
            mf.MagnetFast.from_pretrained(folder, device="cuda", dtype="float32", t5=T5_TINY, cuda_graphs=False))


@pytest.mark.parametrize("backend", ["sdpa", "triton", "windowed"])
def test_cuda_head_dim_64_logits_close_to_fp32_exact(head_dim_64_models, backend):
    bf16, fp32 = head_dim_64_models
    t = bf16.config.frames - bf16.config.frames % bf16.config.span_len
    seq = torch.randint(0, 2049, (4, 4, t), generator=torch.Generator().manual_seed(1)).cuda()
    with torch.inference_mode():
        kv32 = fp32.lm.cross_kv(fp32.condition(["calm piano", "edm"]))
        kv16 = bf16.lm.cross_kv(bf16.condition(["calm piano", "edm"]))
        for stage in (0, 1, 3):
            exact = fp32.lm(seq, kv32, stage, "exact").float()
            fast = bf16.lm(seq, kv16, stage, backend).float()
            assert fast.isfinite().all()
            assert ((fast - exact).norm() / exact.norm()).item() < 2e-2, (backend, stage)


def test_cuda_head_dim_64_graphs_triton_fused_equal_eager(head_dim_64_models):
    bf16, _ = head_dim_64_models
    steps = {"decoding_steps": [4, 2, 2, 2]}
    bf16.set_attention("triton")
    bf16.set_sampler("fused")
    try:
        want = bf16.generate_tokens(["calm piano", "edm"], seed=3, **steps)
        bf16.set_cuda_graphs(True)
        got = [bf16.generate_tokens(["calm piano", "edm"], seed=3, **steps) for _ in range(2)]
    finally:
        bf16.set_cuda_graphs(False)
        bf16.clear_cuda_graphs()
        bf16.set_sampler("torch")
        bf16.set_attention("sdpa")
    assert want.shape[:2] == (2, 4) and want.shape[2] >= 498 and int(want.max()) < 2048
    assert all(torch.equal(g, want) for g in got)


def test_cuda_auto_graph_policy(cuda_models):
    """The CUDA default "auto": first call of a shape eager (nothing cached), second records, third replays;
    all equal the eager tokens. Run with the CUDA defaults (triton, torch sampler) set explicitly, not
    whatever backend an earlier test left."""
    bf16, _ = cuda_models
    bf16.set_attention(bf16._default_attention())
    bf16.set_sampler("torch")
    assert bf16.attention_backend == "triton"
    steps = {"decoding_steps": [4, 2, 2, 2], "seed": 7}
    want = bf16.generate_tokens(["calm piano", None], **steps)
    bf16.set_cuda_graphs("auto")
    try:
        got = [bf16.generate_tokens(["calm piano", None], **steps) for _ in range(3)]
        assert len(bf16.decoders) == 1 and bf16.decoders.recorded_steps() == 10 + 1
    finally:
        bf16.set_cuda_graphs(False)
        bf16.clear_cuda_graphs()
    assert all(torch.equal(g, want) for g in got)


# ----------------------------------------------------------------------------------------- graph == eager
# for the paths a replay has not been checked on before: rescoring, hybrid, long-form windows and stride-1
# spans (their CPU counterparts with the fx stand-in: tests/engines/test_graph_replay_cpu.py)

@pytest.fixture(scope="module")
def cuda_musicgen(musicgen_folder):
    return mf.MusicGenFast.from_pretrained(musicgen_folder, device="cuda", t5=T5_TINY, cuda_graphs=False)


def _replays_equal_eager(models, call, recorded_shapes: int | None = None) -> None:
    """``call()`` eager, then with graphs on (policy True) twice: the recording call and a replay must both
    give the eager tokens bit for bit; ``recorded_shapes``: the MAGNeT decoders cached after them."""
    want = call()
    for m in models:
        m.set_cuda_graphs(True)
    try:
        got = [call(), call()]
        if recorded_shapes is not None:
            assert len(models[0].decoders) == recorded_shapes
        assert all(len(d.recorded) > 0 for d in models[0].decoders.values())
    finally:
        for m in models:
            m.set_cuda_graphs(False)
            m.clear_cuda_graphs()
    for g in got:
        assert torch.equal(g, want)


@pytest.mark.parametrize("backend, sampler", [("triton", "torch"), ("triton", "fused")])
def test_cuda_graphs_rescoring_equal_eager(cuda_models, cuda_musicgen, backend, sampler):
    bf16, _ = cuda_models
    bf16.set_attention(backend)
    bf16.set_sampler(sampler)
    try:
        _replays_equal_eager([bf16], lambda: bf16.generate_tokens(
            ["calm piano", "edm"], seed=4, decoding_steps=[4, 2, 2, 2], rescorer=cuda_musicgen,
            rescore_weight=0.5), recorded_shapes=1)
    finally:
        bf16.set_sampler("torch")


def test_cuda_graphs_hybrid_equal_eager(cuda_models, cuda_musicgen):
    """MusicGen's prefix (its static step recorded too) then MAGNeT continuing the stream."""
    bf16, _ = cuda_models
    bf16.set_attention("triton")
    _replays_equal_eager([bf16, cuda_musicgen], lambda: bf16.generate_tokens(
        ["calm piano", None], seed=6, decoding_steps=[4, 2, 2, 2], hybrid=cuda_musicgen, hybrid_seconds=0.5),
        recorded_shapes=1)


def test_cuda_graphs_long_form_equal_eager(cuda_models):
    """Two shapes: the first window, and the later windows with a prompt (the previous tail)."""
    bf16, _ = cuda_models
    bf16.set_attention("triton")
    _replays_equal_eager([bf16], lambda: bf16.generate_tokens(
        ["calm piano", "edm"], seed=8, decoding_steps=[4, 2, 2, 2], duration=16.0, extend_stride=5.0),
        recorded_shapes=2)


@pytest.mark.parametrize("sampler", ["torch", "fused"])
def test_cuda_graphs_stride1_equal_eager(cuda_models, sampler):
    bf16, _ = cuda_models
    bf16.set_attention("triton")
    bf16.set_sampler(sampler)
    try:
        _replays_equal_eager([bf16], lambda: bf16.generate_tokens(
            ["calm piano", None], seed=9, decoding_steps=[4, 2, 2, 2], span_arrangement="stride1"),
            recorded_shapes=1)
    finally:
        bf16.set_sampler("torch")


def test_cuda_musicgen_auto_records_on_the_first_call(cuda_musicgen):
    """Under the CUDA default 'auto', MusicGen records its static step on a shape's first call (one step of
    recording instead of every step's launches eagerly); the recording call and the replays give the eager
    tokens, and recording copies no KV cache (the capture runs nothing: the decoder holds one cache)."""
    m = cuda_musicgen
    kw = {"seed": 3, "duration": 0.5}
    want = m.generate_tokens(["calm piano", None], **kw)
    m.set_cuda_graphs("auto")
    try:
        first = m.generate_tokens(["calm piano", None], **kw)
        assert len(m.decoders) == 1
        decoder = next(iter(m.decoders.values()))
        assert list(decoder.recorded) == ["step"]
        again = m.generate_tokens(["calm piano", None], **kw)
        assert len(m.decoders) == 1 and list(decoder.recorded) == ["step"]
    finally:
        m.set_cuda_graphs(False)
        m.clear_cuda_graphs()
    assert torch.equal(first, want) and torch.equal(again, want)
