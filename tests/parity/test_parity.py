"""Parity with audiocraft 1.3.0 on CPU fp32, against fixtures audiocraft itself produced.

Tokens and conditioning must be identical. Teacher-forced logits are bitwise equal when the fixtures were
made on the same CPU type (the live test checks that); across CPU types oneDNN may pick other GEMM
kernels, so the stored-fixture check allows a relative error of 1e-6.
"""
from __future__ import annotations

import pytest
import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def run_kwargs(run: dict) -> dict:
    kw = dict(run["generate_kwargs"])
    kw["temperature"] = kw.pop("temp")
    return kw


def test_conditioning_exact(model10, ref10):
    t = ref10.tensors
    descs = ref10.meta["conditions"]["descriptions"]
    hidden, mask = model10.text.encode(descs)
    batch = model10.text.tokenizer([*descs, "", ""], return_tensors="pt", padding=True)
    assert torch.equal(batch["input_ids"], t["cond.t5_input_ids"])
    assert torch.equal(mask, t["cond.t5_attention_mask"])
    assert torch.equal(hidden, t["cond.t5_last_hidden_state"])
    cond = model10.condition(descs)
    assert torch.equal(cond, t["cond.description_embeds"])
    assert (cond[2:] == 0).all()


@pytest.mark.parametrize("stage", [0, 1])
def test_teacher_forced_logits(model10, ref10, stage):
    t = ref10.tensors
    with torch.inference_mode():
        kv = model10.lm.cross_kv(t["cond.description_embeds"])
        logits = model10.lm(t["tf.input"], kv, stage)
    expected = t[f"tf.stage{stage}.logits"][:, stage]
    assert logits.shape == expected.shape
    assert rel_err(logits, expected) < 1e-6, rel_err(logits, expected)


def test_band_changes_stage1_logits(model10, ref10):
    """The test above can fail: with full attention at stage 1 (no band) the logits are far off."""
    t = ref10.tensors
    with torch.inference_mode():
        kv = model10.lm.cross_kv(t["cond.description_embeds"])
        no_band = model10.lm.heads[1](model10.lm.hidden(t["tf.input"], kv, stage=0))
    assert rel_err(no_band, t["tf.stage1.logits"][:, 1]) > 1e-3


def test_generated_tokens_exact(model, reference):
    """Every recorded audiocraft run: same seed -> identical tokens and identical RNG consumption."""
    t, meta = reference.tensors, reference.meta
    failures = []
    for name, run in meta["runs"].items():
        gen = torch.Generator().manual_seed(run["seed_before_generate"])
        prompt = t["prompt_tokens"] if run["prompt"] else None
        tokens = model.generate_tokens(run["descriptions"], prompt=prompt, generator=gen, **run_kwargs(run))
        expected = t[f"run.{name}.tokens"].long()
        probe = torch.rand(1, generator=gen).item()
        if tokens.shape != expected.shape or not torch.equal(tokens, expected):
            diff = (tokens != expected).float().mean().item() if tokens.shape == expected.shape else "shape"
            failures.append(f"{name}: tokens differ ({diff})")
        elif probe != run["rng_probe_after"]:
            failures.append(f"{name}: RNG consumption differs")
    assert not failures, failures


def test_seed_argument_equals_manual_seed(model10, ref10):
    run = ref10.meta["runs"]["prod"]
    tokens = model10.generate_tokens(run["descriptions"], seed=run["seed_before_generate"], **run_kwargs(run))
    assert torch.equal(tokens, ref10.tensors["run.prod.tokens"].long())
    # and a different seed gives different tokens (the comparison above can fail)
    other = model10.generate_tokens(run["descriptions"], seed=run["seed_before_generate"] + 1,
                                    **run_kwargs(run))
    assert not torch.equal(other, tokens)
