"""Host-side decoding schedule: everything per step that does not depend on sampled values.

Computed once per generation on the CPU with the same float32 tensor ops audiocraft uses (docs/DESIGN.md,
Decoding algorithm), so the device loop needs no ``.item()``: the mask count, CFG coefficient and temperature of
every step are known up front.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Step:
    stage: int
    index: int            # step within the stage
    mask_p: float         # float32 cosine masking rate, as a Python float
    num_masked: int       # spans (nonoverlap) or tokens (stride1) to mask
    cfg_coef: float
    temperature: float    # annealed, before the 0.01 floor


def stage_steps(stage: int, n_steps: int, n_units: int, *, temperature: float, anneal_temp: bool,
                max_cfg_coef: float, min_cfg_coef: float, start: float = 0.0) -> list[Step]:
    """The steps of one stage; n_units = spans (nonoverlap) or tokens (stride1) left to generate.
    start: the first timestep (0: MAGNeT's schedule; a variation starts later, at a lower masking rate)."""
    steps = []
    for i, timestep in enumerate(torch.linspace(start, 1, n_steps)):
        mask_p = torch.cos(timestep * math.pi * 0.5)                       # float32, as upstream
        num_masked = max(int((mask_p * n_units).item()), 1)
        p = float(mask_p)
        coef = p * max_cfg_coef + (1 - p) * min_cfg_coef
        steps_left = n_steps - 1 - i
        temp = temperature * (steps_left / n_steps) if anneal_temp else temperature
        steps.append(Step(stage, i, p, num_masked, coef, temp))
    return steps
