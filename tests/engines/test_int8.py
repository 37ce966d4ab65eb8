"""The opt-in int8 path for CPU linears (issue #25): ``from_pretrained(..., quantize="int8")`` swaps the
LM's linears for torch's dynamically quantized ones. Not bitwise (a named deviation): greedy tokens mostly
agree with float32, and sampled token histograms are as close to float32's as two float32 seeds are (the
GPU tier's bf16 test, tests/engines/test_gpu_runtime.py, uses the same statistic)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import magnet_fast as mf
from magnet_fast.errors import ParameterError
from magnet_fast.nn.loading import Int8Linear

T5_TINY = Path(__file__).resolve().parents[1] / "fixtures" / "ac_ref" / "t5_tiny"
STEPS = {"decoding_steps": [4, 2, 2, 2]}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def int8(model10):
    return mf.MagnetFast.from_pretrained(model10.path, t5=T5_TINY, quantize="int8")


def test_linears_are_int8_and_logits_close(int8, model10):
    cfg = int8.config
    swapped = [m for m in int8.lm.modules() if isinstance(m, Int8Linear)]
    assert len(swapped) == cfg.num_layers * (2 + 4 + 2) + cfg.n_q            # self 2, cross 4, ffn 2, heads
    assert not any(type(m) is torch.nn.Linear for m in int8.lm.layers.modules())
    assert int8.lm.compute_dtype == torch.float32
    seq = torch.randint(0, cfg.card + 1, (4, cfg.n_q, 60), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        cond = model10.condition(["calm piano", "edm"])
        for stage in (0, 2):
            ref = model10.lm(seq, model10.lm.cross_kv(cond), stage, "windowed")
            got = int8.lm(seq, int8.lm.cross_kv(cond), stage, "windowed")
            err = ((got - ref).norm() / ref.norm()).item()
            assert 0 < err < 5e-2, (stage, err)                                # quantized, and close


def test_tokens_statistically_match_float32(int8, model10, token_tv_distance):
    texts = ["calm piano", "fast techno"] * 3
    backend = model10.attention_backend
    model10.set_attention(int8.attention_backend)                              # both 'windowed'
    try:
        greedy_ref = model10.generate_tokens(texts, use_sampling=False, **STEPS)
        ref_a = model10.generate_tokens(texts, seed=10, **STEPS)
        ref_b = model10.generate_tokens(texts, seed=11, **STEPS)
    finally:
        model10.set_attention(backend)
    greedy = int8.generate_tokens(texts, use_sampling=False, **STEPS)
    # greedy MAGNeT chains amplify a flip (each stage conditions on the earlier ones): 0.75 measured on this
    # random-weight fixture (codebook 0: 0.87); a broken quantization agrees on ~1/512
    assert (greedy == greedy_ref).float().mean().item() > 0.6
    assert (greedy[:, 0] == greedy_ref[:, 0]).float().mean().item() > 0.8
    got = int8.generate_tokens(texts, seed=12, **STEPS)
    assert token_tv_distance(got, ref_a, 512) < 1.5 * token_tv_distance(ref_a, ref_b, 512) + 0.02


def test_musicgen_int8_generates(musicgen_folder):
    mg = mf.MusicGenFast.from_pretrained(musicgen_folder, t5=T5_TINY, quantize="int8")
    out = mg.generate_tokens(["calm piano", None], seed=1, duration=0.3)
    assert out.shape == (2, mg.config.n_q, 15) and int(out.max()) < mg.config.card


@pytest.mark.parametrize("kw, match", [({"quantize": "int4"}, "None or 'int8'"),
                                       ({"quantize": "int8", "dtype": "bfloat16"}, "CPU float32")])
def test_bad_quantize_is_refused_before_loading(model10, kw, match):
    with pytest.raises(ParameterError, match=match):
        mf.MagnetFast.from_pretrained(model10.path, t5=T5_TINY, **kw)


def test_cli_int8(tmp_path, capsys):
    """`magnet-fast generate --int8` (in-process): tokens written; with a non-float32 dtype one line, exit 2."""
    from safetensors.torch import load_file

    from magnet_fast.cli import main
    demo = Path(mf.__file__).parent / "demo" / "magnet-tiny-demo"
    base = ["generate", "calm piano", "--model", str(demo), "--int8", "--steps", "2,1,1,1", "--seed", "1",
            "--tokens-only", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    tokens = load_file(str(tmp_path / "a" / "tokens.safetensors"))
    assert next(iter(tokens.values())).shape[:2] == (1, 4)
    capsys.readouterr()
    assert main([*base, "--dtype", "bfloat16", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("magnet-fast: error: quantize='int8' is for CPU float32") and "Traceback" not in err
    assert not (tmp_path / "b").exists()
