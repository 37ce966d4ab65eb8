"""A small LoRA adapter of our own (not peft): W' = W + (alpha / r) * B @ A on the transformer's linear layers.

It is a ``torch.nn.utils.parametrize`` parametrization of each ``nn.Linear``'s ``weight``, so the model's
modules, forward and ``.weight`` reads (the compute dtype) stay as they are, and merging is
``remove_parametrizations(..., leave_parametrized=True)``: exactly the weight the forward used. peft would
need its own module wrappers (and accelerate) for the same ~40 lines; see docs/finetuning.md.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

TARGETS = ("self_attn.in_proj", "self_attn.out_proj", "cross_attn.q_proj", "cross_attn.k_proj",
           "cross_attn.v_proj", "cross_attn.out_proj", "linear1", "linear2")


class LoRA(nn.Module):
    """weight -> weight + scale * B @ A; B starts at zero, so the adapted model starts as the base model."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float, device=None):
        super().__init__()
        self.scale = alpha / rank
        self.A = nn.Parameter(torch.empty(rank, in_features, device=device))
        self.B = nn.Parameter(torch.zeros(out_features, rank, device=device))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (self.scale * (self.B @ self.A)).to(weight.dtype)


def add_lora(lm: nn.Module, rank: int, alpha: float | None = None) -> list[nn.Parameter]:
    """Freeze ``lm`` and put a rank-``rank`` adapter on every targeted linear; returns the adapter parameters."""
    lm.requires_grad_(False)
    params: list[nn.Parameter] = []
    for name, module in lm.named_modules():
        if isinstance(module, nn.Linear) and name.split(".", 2)[-1] in TARGETS and name.startswith("layers."):
            w = module.weight
            p = LoRA(w.shape[0], w.shape[1], rank, float(alpha if alpha is not None else rank), device=w.device)
            parametrize.register_parametrization(module, "weight", p)
            params += [p.A, p.B]
    return params


def merge_lora(lm: nn.Module) -> None:
    """Fold every adapter into its base weight (in place; the model then has no adapters)."""
    for module in lm.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def plain_state_dict(lm: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights under the converted folder's keys, adapters merged (``lm`` left untouched)."""
    out = {}
    for name, module in lm.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            out[f"{name}.{pname}" if name else pname] = p.detach()
        if parametrize.is_parametrized(module, "weight"):
            with torch.no_grad():
                out[f"{name}.weight"] = module.weight.detach()       # base + B @ A, as the forward sees it
    for k in [k for k in out if ".parametrizations." in k]:
        del out[k]
    for name, b in lm.named_buffers():
        out.setdefault(name, b.detach())
    return out
