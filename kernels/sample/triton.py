"""Fused post-processing of one MAGNeT decoding step in one Triton launch (semantics: naive.py, README.md).

Per (batch row b, group g of ``span_len`` consecutive positions) one program, for each position t:
CFG mix -> temperature softmax (fp32) -> top-p / top-k keep set by a sort-free bisection over the fp32
bit patterns -> argmax(p / E) race with caller-drawn noise (``pairing="vocab"``) or greedy argmax ->
token written where the row holds the mask id -> scored prob; then the group's span score ('max' or
'prod', DONT_REMASK for groups not masked this step). ``span_len=1`` + 'prod' gives stride1's token scores.
The temperature floor, DONT_REMASK and the mask id rule come from ``magnet_fast.kernels.constants``, shared
with naive.py.

Layers: ``sample_step_kernel`` (jit), ``sample_step_fwd`` (launcher), ``sample_step_op`` (the
``magnet_fast::sample_step`` custom op: Triton on CUDA, naive.py elsewhere). The next masked set is chosen
with naive.py's plain torch ops (``select_spans`` + ``spans_to_tokens``, ``select_stride1``; no host sync).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from magnet_fast.kernels import constants
from magnet_fast.kernels._alloc import empty
from magnet_fast.kernels.sample import naive

SCORINGS = {"max": 0, "prod": 1}
# Compiled Triton reads a module global only when it is a tl.constexpr (the interpreter reads any global).
ONE_BITS = tl.constexpr(0x3F800000)      # bit pattern of 1.0f: probabilities live in [0, ONE_BITS]


@triton.jit(do_not_specialize=["T", "G"])
def sample_step_kernel(
    cond, uncond, noise, tokens, masked,
    coef_p, temp_p, top_p_p, top_k_p, greedy_p,
    tok_out, prob_out, score_out,
    s_cb, s_ct, s_ub, s_ut,
    T, G, V,
    BV: tl.constexpr,
    SPAN: tl.constexpr,
    SCORING: tl.constexpr,
    TEMP_FLOOR: tl.constexpr,
    FIXED_SCORE: tl.constexpr,
):
    i_bg = tl.program_id(0).to(tl.int64)
    i_b, i_g = i_bg // G, i_bg % G
    o_v = tl.arange(0, BV)
    m_v = o_v < V
    coef = tl.load(coef_p).to(tl.float32)
    temp = tl.maximum(tl.load(temp_p).to(tl.float32), TEMP_FLOOR)
    top_p = tl.load(top_p_p).to(tl.float32)
    top_k = tl.load(top_k_p).to(tl.int32)
    greedy = tl.load(greedy_p) != 0
    use_p = (top_p > 0.0) & (~greedy)                                  # greedy needs no keep set ...
    use_k = (top_p <= 0.0) & (top_k > 0) & (top_k < V) & (~greedy)     # ... and scores the plain prob

    b_max = 0.0
    b_nll = 0.0
    for r in tl.static_range(SPAN):
        i_t = i_g * SPAN + r                                             # int64 position in the row
        b_c = tl.load(cond + i_b * s_cb + i_t * s_ct + o_v, mask=m_v, other=0.0).to(tl.float32)
        b_u = tl.load(uncond + i_b * s_ub + i_t * s_ut + o_v, mask=m_v, other=0.0).to(tl.float32)
        b_logit = b_u + (b_c - b_u) * coef                              # [BV]
        b_x = tl.where(m_v, b_logit / temp, float("-inf"))
        b_e = tl.exp(b_x - tl.max(b_x, 0))
        b_p = b_e / tl.sum(b_e, 0)                                       # padded lanes: exactly 0
        b_bits = b_p.to(tl.int32, bitcast=True)                          # monotone in p for p >= 0

        b_keep = m_v
        if use_p:
            # smallest bit pattern x with (mass strictly above x) <= top_p; keep p >= x
            lo = tl.full([], -1, tl.int32)
            hi = tl.full([], ONE_BITS, tl.int32)
            for _ in range(31):
                mid = lo + (hi - lo) // 2
                ok = tl.sum(tl.where(b_bits > mid, b_p, 0.0), 0) <= top_p
                hi = tl.where(ok, mid, hi)
                lo = tl.where(ok, lo, mid)
            b_keep = m_v & (b_bits >= hi)
        elif use_k:
            # largest bit pattern x with count(p >= x) >= k, i.e. the k-th largest p; ties kept
            lo = tl.full([], 0, tl.int32)
            hi = tl.full([], ONE_BITS + 1, tl.int32)
            for _ in range(31):
                mid = lo + (hi - lo) // 2
                ok = tl.sum((b_bits >= mid).to(tl.int32), 0) >= top_k
                lo = tl.where(ok, mid, lo)
                hi = tl.where(ok, hi, mid)
            b_keep = m_v & (b_bits >= lo)
        b_kept = tl.where(b_keep, b_p, 0.0)
        b_kept = b_kept / tl.sum(b_kept, 0)
        b_e = tl.load(noise + (i_b * T + i_t) * V + o_v, mask=m_v, other=1.0)
        b_race = tl.where(b_kept > 0.0, b_kept / b_e, -1.0)              # dropped lanes never win, even if E = 0
        if greedy:
            i_tok = tl.argmax(tl.where(m_v, b_logit, float("-inf")), 0)
        else:
            i_tok = tl.argmax(b_race, 0)
        b_scored = tl.where(use_k, b_kept, b_p)
        p_tok = tl.sum(tl.where(o_v == i_tok, b_scored, 0.0), 0)

        cur = tl.load(tokens + i_b * T + i_t)                           # mask id == V (constants.mask_id)
        tl.store(tok_out + i_b * T + i_t, tl.where(cur == V, i_tok.to(cur.dtype), cur))
        tl.store(prob_out + i_b * T + i_t, p_tok)
        b_max = tl.maximum(b_max, p_tok)
        b_nll = b_nll - tl.log(p_tok)
    if SCORING == 0:
        b_score = 1.0 - b_max
    else:
        b_score = b_nll
    is_masked = tl.load(masked + i_bg) != 0
    tl.store(score_out + i_bg, tl.where(is_masked, b_score, FIXED_SCORE))


def num_warps_for(bv: int) -> int:
    """Warps per program for a vocabulary block of ``bv`` lanes (one row of the card per program)."""
    return 4 if bv <= 1024 else 8


def sample_step_fwd(cond, uncond, tokens, noise, masked, coef, temperature, top_p, top_k, greedy,
                    span_len: int, scoring: str, launcher=None):
    """Launch the fused kernel. Shapes: cond/uncond [B, T, card] (unit stride on card), tokens [B, T]
    (int, mask id = constants.mask_id(card), i.e. card), noise [B, T, card] fp32 contiguous, masked
    [B, T // span_len] bool; the five scalars are 0-d device tensors. Returns (tokens [B, T], scored probs
    [B, T] fp32, scores [B, G] fp32).
    """
    B, T, V = cond.shape
    assert uncond.shape == cond.shape and noise.shape == cond.shape, (cond.shape, uncond.shape, noise.shape)
    assert cond.stride(-1) == 1 and uncond.stride(-1) == 1
    assert noise.dtype == torch.float32 and noise.is_contiguous()
    assert tokens.shape == (B, T) and not tokens.dtype.is_floating_point
    assert T % span_len == 0, f"T={T} is not a multiple of span_len={span_len} (trim the sequence)"
    G = T // span_len
    assert masked.shape == (B, G), (masked.shape, (B, G))
    assert scoring in SCORINGS, scoring
    for s in (coef, temperature, top_p, top_k, greedy):
        assert isinstance(s, torch.Tensor) and s.numel() == 1 and s.device == cond.device
    tokens, masked = tokens.contiguous(), masked.contiguous()
    tok_out = empty((B, T), tokens.dtype, cond.device)
    prob_out = empty((B, T), torch.float32, cond.device)
    score_out = empty((B, G), torch.float32, cond.device)
    BV = triton.next_power_of_2(V)
    kernel = sample_step_kernel if launcher is None else launcher(sample_step_kernel)
    kernel[(B * G,)](
        cond, uncond, noise, tokens, masked,
        coef, temperature, top_p, top_k, greedy,
        tok_out, prob_out, score_out,
        cond.stride(0), cond.stride(1), uncond.stride(0), uncond.stride(1),
        T, G, V,
        BV=BV,
        SPAN=span_len,
        SCORING=SCORINGS[scoring],
        TEMP_FLOOR=constants.TEMPERATURE_FLOOR,
        FIXED_SCORE=constants.DONT_REMASK,
        num_warps=num_warps_for(BV),
    )
    return tok_out, prob_out, score_out


def sample_step_ref(cond, uncond, tokens, noise, masked, coef, temperature, top_p, top_k, greedy,
                    span_len: int, scoring: str, pairing: str = "vocab"):
    """The same step composed from naive.py (reads the scalars on the host: CPU path only)."""
    V = cond.shape[-1]
    logits = naive.cfg_logits(cond, uncond, float(coef))
    probs = naive.step_probs(logits, float(temperature))
    tok, p_tok = naive.sample(probs, logits, noise, top_p=float(top_p), top_k=int(top_k),
                              use_sampling=not bool(greedy), pairing=pairing)
    new = torch.where(tokens == constants.mask_id(V), tok.to(tokens.dtype), tokens)
    return new, p_tok, naive.span_scores(p_tok, span_len, scoring, masked.bool())


@torch.library.custom_op("magnet_fast::sample_step_ref", mutates_args=())
def _sample_step_ref_op(cond: torch.Tensor, uncond: torch.Tensor, tokens: torch.Tensor, noise: torch.Tensor,
                        masked: torch.Tensor, coef: torch.Tensor, temperature: torch.Tensor,
                        top_p: torch.Tensor, top_k: torch.Tensor, greedy: torch.Tensor, span_len: int,
                        scoring: str, pairing: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(x.contiguous() for x in sample_step_ref(cond, uncond, tokens, noise, masked, coef,
                                                         temperature, top_p, top_k, greedy, span_len,
                                                         scoring, pairing))


@_sample_step_ref_op.register_fake
def _(cond, uncond, tokens, noise, masked, coef, temperature, top_p, top_k, greedy, span_len, scoring,
      pairing):
    B, T, _ = cond.shape
    return (tokens.new_empty((B, T)), cond.new_empty((B, T), dtype=torch.float32),
            cond.new_empty((B, T // span_len), dtype=torch.float32))


@triton_op("magnet_fast::sample_step", mutates_args=())
def _sample_step(cond: torch.Tensor, uncond: torch.Tensor, tokens: torch.Tensor, noise: torch.Tensor,
                 masked: torch.Tensor, coef: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
                 top_k: torch.Tensor, greedy: torch.Tensor, span_len: int, scoring: str,
                 pairing: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if cond.device.type != "cuda":
        return _sample_step_ref_op(cond, uncond, tokens, noise, masked, coef, temperature, top_p, top_k,
                                   greedy, span_len, scoring, pairing)
    if pairing != "vocab":
        raise ValueError("the fused CUDA sampler pairs noise with vocabulary ids (pairing='vocab')")
    return sample_step_fwd(cond, uncond, tokens, noise, masked, coef, temperature, top_p, top_k, greedy,
                           span_len, scoring, launcher=wrap_triton)


@_sample_step.register_kernel("cpu")
def _(cond, uncond, tokens, noise, masked, coef, temperature, top_p, top_k, greedy, span_len, scoring,
      pairing):
    return tuple(x.contiguous() for x in sample_step_ref(cond, uncond, tokens, noise, masked, coef,
                                                         temperature, top_p, top_k, greedy, span_len,
                                                         scoring, pairing))


def _scalar(x, dtype, device) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.tensor(x, dtype=dtype, device=device)


def sample_step_op(cond, uncond, tokens, noise, masked, *, coef, temperature, top_p=0.0, top_k=0,
                   greedy=False, span_len: int = 3, scoring: str = "max", pairing: str = "vocab"):
    """One step's sampling + span scores via ``magnet_fast::sample_step``. Scalars may be Python numbers
    (converted here, which copies to the device) or 0-d device tensors (no copy, graph-capturable).
    pairing='sorted' (audiocraft's RNG pairing for top-p) is CPU-only.
    """
    dev = cond.device
    return torch.ops.magnet_fast.sample_step(
        cond, uncond, tokens, noise, masked, _scalar(coef, torch.float32, dev),
        _scalar(temperature, torch.float32, dev), _scalar(top_p, torch.float32, dev),
        _scalar(top_k, torch.int64, dev), _scalar(greedy, torch.bool, dev), span_len, scoring, pairing)

