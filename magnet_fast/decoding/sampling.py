"""Step samplers: guidance + temperature + top-p/top-k + the draw, behind one interface.

``sampler(cond, uncond, row, noise, step, positions) -> (tokens [B, T], sampled probs [B, T], nonfinite)``
with cond/uncond the two halves of the CFG logits ([B, T, card], or [B, M, card] at ``positions``),
``row`` the stage's tokens (mask id where they are to be sampled), ``noise`` the step's Exp(1) draws
[B, T, card], ``step`` the schedule step (CFG coefficient, temperature). Built once per Decoder.

- ``TorchSampler``: audiocraft's ops and noise pairing (sorted positions for top-p); the parity path,
  bitwise on CPU. Accepts ``positions`` (the head and the sampler then run on the masked spans only).
- ``FusedSampler``: the ``magnet_fast::sample_step`` op (one Triton launch on CUDA, the torch reference
  elsewhere); noise paired with vocabulary ids, every token tied with the top-p boundary kept
  (docs/DESIGN.md, Parity contract and deviations). Its per-step scalars are device tensors made once
  (no host->device copy inside a recorded step).
"""
from __future__ import annotations

import torch

from magnet_fast.kernels.sample import naive as S
from magnet_fast.params import SamplingParams


class TorchSampler:
    gathers = True              # may be given the masked spans' positions only
    needs_noise = False         # greedy decoding draws no noise

    def __init__(self, params: SamplingParams, mask_id: int):
        self.top_p, self.top_k, self.use_sampling = params.top_p, params.top_k, params.use_sampling
        self.mask_id = mask_id

    def __call__(self, cond, uncond, row, noise, step, positions=None):
        guided = S.cfg_logits(cond, uncond, step.cfg_coef)
        probs = S.step_probs(guided, step.temperature)
        if not self.use_sampling:
            noise = None
        elif positions is not None:     # the noise rows the full computation would pair with these tokens
            noise = noise.gather(1, positions.unsqueeze(-1).expand(-1, -1, noise.shape[-1]))
        tokens, scored = S.sample(probs, guided, noise, top_p=self.top_p, top_k=self.top_k,
                                  use_sampling=self.use_sampling)
        if positions is not None:       # back to [B, T]; positions outside the masked spans are never read
            tokens = row.scatter(1, positions, tokens)
            scored = torch.ones(row.shape, dtype=scored.dtype, device=scored.device).scatter(1, positions, scored)
        return tokens, scored, ~torch.isfinite(probs).all()


class FusedSampler:
    gathers = False             # the kernel reads whole rows
    needs_noise = True          # it always takes a noise operand (all ones when greedy)

    def __init__(self, params: SamplingParams, mask_id: int, plans, device):
        from magnet_fast.kernels.sample import sample_step_op
        self.op, self.mask_id = sample_step_op, mask_id

        def dev(x):
            return torch.tensor(x, device=device)
        self.scalars = {"top_p": dev(params.top_p), "top_k": dev(params.top_k),
                        "greedy": dev(not params.use_sampling)}
        self.coefs = [dev([s.cfg_coef for s in plan]) for plan in plans]
        self.temps = [dev([max(s.temperature, S.TEMPERATURE_FLOOR) for s in plan]) for plan in plans]

    def device_tensors(self) -> list[torch.Tensor]:
        """Every tensor a recorded step may read from this sampler (long-lived, made once)."""
        return [*self.scalars.values(), *self.coefs, *self.temps]

    def __call__(self, cond, uncond, row, noise, step, positions=None):
        assert positions is None, "the fused sampler reads whole rows"
        # span scores are the scorer's job (scoring.py): the op is asked for token scores and they are dropped
        tokens, scored, _ = self.op(cond, uncond, row, noise, row == self.mask_id,
                                    coef=self.coefs[step.stage][step.index],
                                    temperature=self.temps[step.stage][step.index], span_len=1, scoring="prod",
                                    **self.scalars)
        return tokens, scored, ~torch.isfinite(scored).all()


SAMPLERS = ("torch", "fused")


def make_sampler(name: str, params: SamplingParams, mask_id: int, plans, device):
    if name == "torch":
        return TorchSampler(params, mask_id)
    if name == "fused":
        return FusedSampler(params, mask_id, plans, device)
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {name!r}")
