"""The kernel benchmark cases: inputs, providers and parity gates per (op, shape), for bench/test_kernels.py.

A case builds one shape's inputs (seeded), a zero-argument callable per provider and a gate; the first
provider of the op (registry.py) is the reference every provider's output is gated against. Which shapes
and providers run on a device is ``plan``'s business: CUDA runs every shape with every provider, CPU the
reduced set (``cpu=True`` shapes, no Triton), ``tiny`` the dry run's odd sizes with the Triton kernels under
the interpreter (TRITON_INTERPRET=1). Kernel contracts and tolerances: docs/DESIGN.md, Kernels and
Parity contract and deviations.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from registry import REGISTRY, TINY, TINY_PROVIDERS, Shape

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ATTN_ATOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def interpreting() -> bool:
    """Triton kernels run on CPU under TRITON_INTERPRET=1 (the dry run's tiny shapes only)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_reason(device: str) -> str | None:
    return None if device == "cuda" or interpreting() else "Triton kernels need CUDA or TRITON_INTERPRET=1"


@dataclass
class Case:
    op: str
    shape: Shape
    providers: tuple[str, ...]                         # the first one is the parity reference
    fns: dict[str, Callable]                           # provider -> zero-argument call
    gate: Callable                                     # (out, ref) -> (ok, max abs err)
    unavailable: dict[str, str] = field(default_factory=dict)     # provider -> why it cannot run here
    _ref: object = None

    @property
    def reference(self) -> str:
        return self.providers[0]

    def check(self, provider: str) -> tuple[bool, float]:
        """Run ``provider`` once (compiling it if need be: the warm-up) and gate it against the reference."""
        if self._ref is None:
            self._ref = self.fns[self.reference]()
        return self.gate(self.fns[provider](), self._ref)


_FLEX = None


def attn_case(dims: dict, dtype, device, providers) -> tuple[dict, Callable, dict]:
    """-> ({provider: fn}, gate(out, ref) -> (ok, err), {provider: why unavailable})."""
    from magnet_fast.kernels.banded_attn import naive
    B, H, T, D, window = dims["B"], dims["H"], dims["T"], dims["D"], dims["window"]
    q, k, v = (torch.randn(B, H, T, D, device=device, dtype=dtype) for _ in range(3))
    bias_mask = None
    if window is not None:
        idx = torch.arange(T, device=device)
        bias_mask = (idx[:, None] - idx[None, :]).abs() <= window                 # True = attend
    fns = {"naive": lambda: naive.banded_attention(q, k, v, window),
           "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias_mask)}
    unavailable = {}
    if window is not None:                  # the runtime's 'windowed' backend (dense query blocks)
        from magnet_fast.nn.attention import windowed_attention
        fns["windowed"] = lambda: windowed_attention(q, k, v, window)
    else:
        unavailable["windowed"] = "the windowed backend is banded only"
    if "flex" in providers:
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        except ImportError as e:
            unavailable["flex"] = f"flex_attention: {e}"
        else:
            global _FLEX
            torch._dynamo.config.recompile_limit = 256          # one compile per shape
            _FLEX = _FLEX or torch.compile(flex_attention, dynamic=False)
            block_mask = None
            if window is not None:
                block_mask = create_block_mask(lambda b, h, i, j: (i - j).abs() <= window, None, None, T, T,
                                               device=device)
            fns["flex"] = lambda: _FLEX(q, k, v, block_mask=block_mask)
    if "triton" in providers:
        if triton_reason(device):
            unavailable["triton"] = triton_reason(device)
        else:
            from magnet_fast.kernels.banded_attn import triton as bt
            fns["triton"] = lambda: bt.banded_attn_fwd(q, k, v, window)

    def gate(out, ref):
        err = (out.float() - ref.float()).abs().max().item()
        return bool(err <= ATTN_ATOL[dtype] and out.isfinite().all().item()), err
    return fns, gate, unavailable


def sample_case(dims: dict, dtype, device, providers) -> tuple[dict, Callable, dict]:
    from magnet_fast.kernels.sample import naive
    from magnet_fast.kernels.sample import triton as st
    B, T, V = dims["B"], dims["T"], dims["V"]
    cond, uncond = (torch.randn(B, T, V, device=device).mul(3).to(dtype) for _ in range(2))
    tokens = torch.full((B, T), V, device=device)
    noise = torch.empty(B, T, V, device=device).exponential_(1)
    masked = torch.ones(B, T // 3, dtype=torch.bool, device=device)
    py = (3.0, 2.0, dims["top_p"], 0, dims["greedy"])
    dev = [torch.tensor(x, device=device) for x in py]
    fns = {"torch_ops": lambda: st.sample_step_ref(cond, uncond, tokens, noise, masked, *py, 3, "max",
                                                   pairing="vocab")}
    unavailable = {}
    if "fused" in providers:
        if triton_reason(device):
            unavailable["fused"] = triton_reason(device)
        else:
            fns["fused"] = lambda: st.sample_step_fwd(cond, uncond, tokens, noise, masked, *dev, 3, "max")

    tied = torch.zeros(B, T, dtype=torch.bool, device=device)
    if dims["top_p"] > 0 and not dims["greedy"]:            # exact ties at the top-p boundary: keep sets
        probs = naive.step_probs(naive.cfg_logits(cond, uncond, 3.0), 2.0)      # may differ by design
        tied = naive.top_p_boundary_tied(probs, dims["top_p"])

    def gate(out, ref):
        same = (out[0] == ref[0]) & ~tied
        err = (out[1][same] - ref[1][same]).abs().max().item() if same.any() else float("inf")
        return same.float().mean().item() >= 0.999 * (1 - tied.float().mean().item()) and err <= 1e-5, err
    return fns, gate, unavailable


BUILDERS = {"banded_attn": attn_case, "sample_step": sample_case}


def providers_for(op: str, device: str, tiny: bool = False) -> tuple[str, ...]:
    cfg = REGISTRY[op]
    if tiny:
        return TINY_PROVIDERS[op]
    return cfg.providers if device == "cuda" else cfg.cpu_providers


def shapes_for(op: str, device: str, tiny: bool = False, cpu_all: bool = False, shape_filter: str = ""):
    shapes = TINY[op] if tiny else REGISTRY[op].shapes
    return [s for s in shapes if (device == "cuda" or s.cpu or cpu_all or tiny)
            and (not shape_filter or shape_filter in s.name)]


def plan(ops, device: str, tiny: bool = False, cpu_all: bool = False, shape_filter: str = ""):
    """[(op, shape, provider)] in run order: per shape, its providers (reference first)."""
    return [(op, shape, p) for op in ops for shape in shapes_for(op, device, tiny, cpu_all, shape_filter)
            for p in providers_for(op, device, tiny)]


def find_shape(op: str, name: str) -> Shape:
    return next(s for s in [*REGISTRY[op].shapes, *TINY[op]] if s.name == name)


_current: dict = {}


def get_case(op: str, shape_name: str, dtype: torch.dtype, device: str, tiny: bool = False) -> Case:
    """The case of (op, shape), built once (seed 0) and kept until the next shape's is asked for, so a
    shape's providers share inputs and reference output and only one shape's tensors are alive."""
    key = (op, shape_name, dtype, device, tiny)
    if key not in _current:
        _current.clear()
        if device == "cuda":
            torch.cuda.empty_cache()
        torch.manual_seed(0)
        providers = providers_for(op, device, tiny)
        fns, gate, unavailable = BUILDERS[op](find_shape(op, shape_name).dims, dtype, device, providers)
        _current[key] = Case(op, find_shape(op, shape_name), providers, fns, gate,
                             {p: unavailable.get(p, f"{p} is not a provider of {op}") for p in providers
                              if p not in fns})
    return _current[key]
