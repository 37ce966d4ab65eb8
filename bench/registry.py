"""Named benchmark shapes for the kernels (MAGNeT's first), and the providers compared on each.

Attention: q, k, v [2B, H, T, D] (the CFG batch: B prompts + B null rows), D = 64, band |q - k| <= 5
(docs/DESIGN.md, Model; stage 0 is full attention). small = 16 heads, medium = 24 heads (dim 1536).
Sampler: cond/uncond logits [B, T, 2048] (the two halves of the [2B, T, card] stage logits).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Shape:
    name: str
    dims: dict
    cpu: bool = False                      # part of the reduced CPU set


@dataclass
class OpConfig:
    name: str
    providers: tuple[str, ...]             # the first one is the parity reference
    cpu_providers: tuple[str, ...]
    shapes: list[Shape] = field(default_factory=list)


def _attn_shapes() -> list[Shape]:
    shapes = []
    for model, heads in (("small", 16), ("medium", 24)):
        for b in (1, 8):
            for t in (500, 1500):
                cpu = b == 1 and (model == "small" or t == 500)
                shapes.append(Shape(f"{model}-B{b}-T{t}-W5", {"B": 2 * b, "H": heads, "T": t, "D": 64,
                                                               "window": 5}, cpu=cpu))
    shapes.append(Shape("small-B1-T500-full", {"B": 2, "H": 16, "T": 500, "D": 64, "window": None}, cpu=True))
    shapes.append(Shape("small-B1-T1500-full", {"B": 2, "H": 16, "T": 1500, "D": 64, "window": None}))
    return shapes


def _sample_shapes() -> list[Shape]:
    shapes = []
    for b in (1, 8):
        for t in (498, 1500):
            for mode, top_p in (("top_p0.9", 0.9), ("greedy", 0.0)):
                shapes.append(Shape(f"B{b}-T{t}-card2048-{mode}",
                                    {"B": b, "T": t, "V": 2048, "top_p": top_p, "greedy": mode == "greedy"},
                                    cpu=b == 1 and mode == "top_p0.9"))
    return shapes


# The dry run of bench/gpu_check.sh: odd sizes the Triton interpreter runs in seconds.
TINY = {"banded_attn": [Shape("tiny-T97-W5", {"B": 2, "H": 2, "T": 97, "D": 64, "window": 5}),
                        Shape("tiny-T97-full", {"B": 2, "H": 2, "T": 97, "D": 16, "window": None})],
        "sample_step": [Shape("tiny-T39-card97-top_p0.9", {"B": 2, "T": 39, "V": 97, "top_p": 0.9,
                                                            "greedy": False})]}
TINY_PROVIDERS = {"banded_attn": ("naive", "sdpa", "windowed", "triton"), "sample_step": ("torch_ops", "fused")}

REGISTRY = {
    "banded_attn": OpConfig("banded_attn", providers=("naive", "sdpa", "windowed", "flex", "triton"),
                            cpu_providers=("naive", "sdpa", "windowed", "flex"), shapes=_attn_shapes()),
    "sample_step": OpConfig("sample_step", providers=("torch_ops", "fused"), cpu_providers=("torch_ops",),
                            shapes=_sample_shapes()),
}
