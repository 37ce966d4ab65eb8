"""T5 encodes only the rows with text (issue #25): the null rows of the CFG batch (and None descriptions)
are zero after the projection anyway. Outside the parity mode the conditions, and the tokens of a whole
generation, must be bit for bit those of the old path, which ran T5 over all 2B rows (the parity mode,
'exact', keeps that path: audiocraft's shapes by construction)."""
from __future__ import annotations

import pytest
import torch

from magnet_fast.nn.conditioning import TextEncoder, encode_condition

CASES = [["calm piano"], [None, "calm piano", None], ["energetic edm with drums and bass", None, "slow jazz"],
         [None, "a", "funky disco groove with a long long description of the bass line", "b", None], [None, None]]


@pytest.mark.parametrize("descriptions", CASES, ids=["one", "one-real-of-three", "three-with-null", "five-odd-lengths", "all-null"])
def test_real_rows_only_give_the_old_conditions_bitwise(model10, descriptions):
    text, lm = model10.text, model10.lm
    calls = []
    forward = text.model.forward

    def counting(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)
    text.model.forward = counting
    try:
        hidden, mask = text.encode(descriptions, null_rows=False)
    finally:
        del text.model.forward
    old_hidden, old_mask = text.encode(descriptions)                    # the default: every row, audiocraft's
    n_real = sum(d is not None for d in descriptions)
    assert calls == ([max(2, n_real)] if n_real else [])              # the real rows (a lone one: + a null)
    assert torch.equal(mask, old_mask) and hidden.shape == old_hidden.shape
    real = [i for i, d in enumerate(descriptions) if d is not None]
    assert torch.equal(hidden[real], old_hidden[real])                  # batch mates' count changes nothing
    with torch.inference_mode():
        new, old = lm.project_text(hidden, mask), lm.project_text(old_hidden, old_mask)
    assert torch.equal(new, old)
    assert not new[len(descriptions):].any()                            # null rows: exactly zero


@pytest.mark.parametrize("backend", ["windowed", "exact"])
def test_generation_is_unchanged(model10, monkeypatch, backend):
    """Tokens against the old path (T5 over every row) in the default and the parity mode, and the
    batch-invariant conditions (each text alone: one real row + its null)."""
    texts = ["calm piano", None, "fast techno with drums"]
    steps = {"decoding_steps": [2, 1, 1, 1]}
    before = model10.attention_backend
    model10.set_attention(backend)
    try:
        new = model10.generate_tokens(texts, seed=3, **steps)
        invariant = model10.generate_tokens(texts, seed=3, batch_invariant=True, **steps)
        monkeypatch.setattr(model10.text, "encode", lambda d, null_rows=False: TextEncoder.encode(
            model10.text, d, null_rows=True))
        assert torch.equal(new, model10.generate_tokens(texts, seed=3, **steps))
        assert torch.equal(invariant, model10.generate_tokens(texts, seed=3, batch_invariant=True, **steps))
        cond, lengths = encode_condition(model10.text, model10.lm, texts, True)
    finally:
        model10.set_attention(before)
    monkeypatch.undo()
    cond2, lengths2 = encode_condition(model10.text, model10.lm, texts, True)
    assert torch.equal(cond, cond2) and lengths == lengths2
