"""LoRA (our own parametrization adapter): only the adapters train, the adapted model starts as the base
model, and the export merges them into weights that give the trained model's logits."""
from __future__ import annotations

import random

import torch

import magnet_fast as mf
from magnet_fast.train import Trainer

from .conftest import CLIP_TEXTS, clips, write_tiny_model


def test_lora_trains_adapters_only_and_exports_merged(tmp_path):
    model = write_tiny_model(tmp_path / "m", dim=32, heads=2, layers=2, card=64, seconds=0.2)
    full = Trainer.from_pretrained(model)
    lora = Trainer.from_pretrained(model, lora_rank=4, lr=1e-2)
    names = {n for n, p in lora.model.named_parameters() if p.requires_grad}
    assert names and all(n.endswith((".A", ".B")) for n in names)
    assert len(names) == 2 * 8 * 2                  # A and B on 8 linears in each of 2 layers
    tokens = clips()
    for t in (full, lora):
        random.seed(3)
        torch.manual_seed(3)
        t.loss_value = float(t.loss(tokens, CLIP_TEXTS).detach())
    assert lora.loss_value == full.loss_value       # B = 0: the adapted model is the base model
    base = {k: v.clone() for k, v in lora.state_dict().items()}
    for _ in range(5):
        lora.step(tokens, CLIP_TEXTS)
    merged = lora.state_dict()
    assert not torch.equal(merged["layers.0.linear1.weight"], base["layers.0.linear1.weight"])
    assert torch.equal(merged["emb.0.weight"], base["emb.0.weight"])          # not adapted, frozen
    out = lora.export(tmp_path / "exported")
    engine = mf.MagnetFast.from_pretrained(out, attention="exact")
    lora.model.eval()
    seq = tokens.clone()
    seq[:, 1:] = lora.model.mask_id
    hidden, mask = engine.text.encode(CLIP_TEXTS)
    with torch.no_grad():
        want = lora.model(seq.repeat(2, 1, 1), lora.model.cross_kv(lora.model.project_text(hidden.clone(), mask.clone())), 0,
                          backend="exact")
    with torch.inference_mode():
        got = engine.lm(seq.repeat(2, 1, 1), engine.lm.cross_kv(engine.lm.project_text(hidden, mask)), 0)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
