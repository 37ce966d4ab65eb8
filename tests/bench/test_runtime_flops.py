"""bench/runtime.py's FLOP count (the floor the runtime table divides by) against torch's own counter
(``torch.utils.flop_counter.FlopCounterMode``: every GEMM the forward really runs), on a small random LM
at odd sizes, with the null rows' cross-attention skipped (outside 'exact') and not ('exact')."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from runtime import flop_parts, flops_per_pass  # noqa: E402

from magnet_fast.config import MagnetConfig  # noqa: E402
from magnet_fast.nn.model import MagnetLM  # noqa: E402


def _count(backend: str):
    cfg = MagnetConfig(dim=48, num_heads=3, num_layers=3, card=37, t5_name="t5-base", t5_dim=40,
                       segment_duration=1.0)
    torch.manual_seed(0)
    lm = MagnetLM(cfg).eval()
    lm.set_attention(backend)
    batch, t, l_text = 3, 21, 7
    seq = torch.randint(0, cfg.card, (2 * batch, cfg.n_q, t))
    cond = torch.randn(2 * batch, l_text, cfg.dim)
    cond[batch:] = 0                                             # null rows
    with torch.inference_mode():
        kv = lm.cross_kv(cond)
        with FlopCounterMode(display=False) as counter:
            lm.guided_logits(seq, kv, 0)                         # stage 0: full self-attention (keys = t)
    by_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    return cfg, batch, t, l_text, by_op


def test_linear_flops_with_null_skip_match_torch_counter():
    cfg, batch, t, l_text, by_op = _count("sdpa")
    linear, _ = flop_parts(cfg, 2 * batch, t, 0, l_text, null_skip=True)
    assert by_op["aten.mm"] == linear                            # 13 d^2 per row and layer, + the head
    per_row_layer = (linear - 2 * 2 * batch * t * cfg.dim * cfg.card) / (2 * 2 * batch * t * cfg.num_layers)
    assert per_row_layer == 13 * cfg.dim ** 2


def test_exact_flops_match_torch_counter():
    """'exact' runs audiocraft's shapes (null rows' cross-attention too) with explicit matmuls, so the
    counter sees the attention as well: the whole count, 14 d^2 per row and layer."""
    cfg, batch, t, l_text, by_op = _count("exact")
    linear, attn = flop_parts(cfg, 2 * batch, t, 0, l_text, null_skip=False)
    assert by_op["aten.mm"] == linear
    assert sum(by_op.values()) == pytest.approx(linear + attn, rel=1e-9), by_op
    assert flops_per_pass(cfg, 2 * batch, t, 0, l_text, null_skip=False) == linear + attn
