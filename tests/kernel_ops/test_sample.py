"""Fused step sampler: Triton kernel (interpreter on CPU, real on GPU), magnet_fast::sample_step, selection."""
import pytest
import torch

from magnet_fast.kernels.sample import naive
from magnet_fast.kernels.sample import triton as st
from tests.sample_refs import next_mask_nonoverlap, next_mask_stride1, select_stride1_loop

MODES = {  # top_p, top_k, greedy
    "top_p0.9": (0.9, 0, False),
    "top_p0.3": (0.3, 0, False),
    "top_k5": (0.0, 5, False),
    "plain": (0.0, 0, False),
    "greedy": (0.9, 0, True),
    "top_k-greedy": (0.0, 5, True),
}


def make_step(B, T, V, span_len, seed=0, device="cpu", logits_dtype=torch.float32, quantize=False):
    g = torch.Generator().manual_seed(seed)
    cond, uncond = (torch.randn(B, T, V, generator=g) * 3 for _ in range(2))
    if quantize:                                            # many exactly tied logits (top-k ties)
        cond, uncond = cond.round(), uncond.round()
    tokens = torch.randint(0, V + 1, (B, T), generator=g)
    tokens[:, ::2] = V                                      # mask id = card
    noise = torch.empty(B, T, V).exponential_(1, generator=g)
    masked = torch.rand(B, T // span_len, generator=g) > 0.3
    to = {"device": device}
    return (cond.to(dtype=logits_dtype, **to), uncond.to(dtype=logits_dtype, **to), tokens.to(**to),
            noise.to(**to), masked.to(**to))


def scalars(mode, coef=3.0, temp=2.0, device="cpu"):
    top_p, top_k, greedy = MODES[mode]
    return (torch.tensor(coef, device=device), torch.tensor(temp, device=device),
            torch.tensor(top_p, device=device), torch.tensor(top_k, device=device),
            torch.tensor(greedy, device=device))


CASES = [  # B, T, V, span_len, scoring
    pytest.param(2, 39, 97, 3, "max", id="B2-T39-V97-span3-max"),
    pytest.param(1, 37, 64, 1, "prod", id="B1-T37-V64-stride1-prod"),
    pytest.param(1, 21, 128, 3, "prod", id="B1-T21-V128-span3-prod"),
]


@pytest.mark.interp
@pytest.mark.parametrize("B,T,V,span_len,scoring", CASES)
@pytest.mark.parametrize("mode", list(MODES))
def test_kernel_equals_naive(B, T, V, span_len, scoring, mode):
    step = make_step(B, T, V, span_len, seed=hash(mode) % 1000)
    args = (*step, *scalars(mode), span_len, scoring)
    tok, prob, score = st.sample_step_fwd(*args)
    r_tok, r_prob, r_score = st.sample_step_ref(*args, pairing="vocab")
    assert torch.equal(tok, r_tok)
    torch.testing.assert_close(prob, r_prob, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(score, r_score, atol=1e-5, rtol=1e-5)
    kept = step[2] != V
    assert torch.equal(tok[kept], step[2][kept])           # only mask-id positions are written
    assert (score[~step[4]] == naive.DONT_REMASK).all()


@pytest.mark.interp
@pytest.mark.parametrize("top_k", [1, 3, 7, 97])
def test_kernel_top_k_ties_and_fp16_strided_logits(top_k):
    B, T, V = 2, 12, 97
    cond, uncond, tokens, noise, masked = make_step(B, T, V, 3, seed=top_k, quantize=True)
    both = torch.stack([cond, uncond], 1).half()            # [B, 2, T, V]: strided cond/uncond views
    args = (both[:, 0], both[:, 1], tokens, noise, masked, torch.tensor(1.5), torch.tensor(0.5),
            torch.tensor(0.0), torch.tensor(top_k), torch.tensor(False), 3, "max")
    tok, prob, score = st.sample_step_fwd(*args)
    r_tok, r_prob, r_score = st.sample_step_ref(*args, pairing="vocab")
    assert torch.equal(tok, r_tok)
    torch.testing.assert_close(prob, r_prob, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(score, r_score, atol=1e-6, rtol=1e-5)


@pytest.mark.interp
@pytest.mark.parametrize("temp", [0.0, 0.004, 0.3])
def test_kernel_temperature_floor(temp):
    step = make_step(1, 12, 64, 3, seed=5)
    sc = list(scalars("top_p0.9", coef=1.0, temp=temp))
    step[0].mul_(0.01)                                      # logits spaced ~0.01 so the floor matters
    args = (*step, *sc, 3, "prod")
    tok, prob, score = st.sample_step_fwd(*args)
    r_tok, r_prob, r_score = st.sample_step_ref(*args, pairing="vocab")
    assert torch.equal(tok, r_tok)
    torch.testing.assert_close(prob, r_prob, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(score, r_score, atol=1e-5, rtol=1e-5)


def exact_distribution(logits, temp, top_p=0.0, top_k=0):
    """Independent float64 truncated distribution of one row (the keep rules in docs/DESIGN.md, Decoding algorithm)."""
    p = torch.softmax(logits.double() / max(temp, 0.01), -1)
    if top_p > 0:
        keep = torch.tensor([p[p > pj].sum() <= top_p for pj in p])
    elif top_k > 0:
        keep = p >= p.sort(descending=True).values[top_k - 1]
    else:
        keep = torch.ones_like(p, dtype=torch.bool)
    q = torch.where(keep, p, 0.0)
    return q / q.sum()


def chi2_pvalue(counts, expected_probs):
    n = counts.sum()
    support = expected_probs > 0
    assert counts[~support].sum() == 0, "sampled a token outside the kept set"
    exp = expected_probs[support] * n
    chi2 = ((counts[support] - exp) ** 2 / exp).sum()
    df = int(support.sum()) - 1
    return torch.special.gammaincc(torch.tensor(df / 2.0, dtype=torch.float64), chi2 / 2).item()


ROW = torch.tensor([2.0, 1.5, 1.0, 0.7, 0.2, -0.5, -1.0, -3.0])


@pytest.mark.parametrize("pairing", ["sorted", "vocab"])
@pytest.mark.parametrize("top_p,top_k", [(0.8, 0), (0.0, 3), (0.0, 0)], ids=["top_p0.8", "top_k3", "plain"])
def test_naive_sampler_distribution_chi2(pairing, top_p, top_k):
    n, temp = 20000, 1.0
    g = torch.Generator().manual_seed(1234)
    probs = naive.step_probs(ROW.expand(n, -1), temp)
    noise = naive.draw_noise(probs, generator=g)
    tok, _ = naive.sample(probs, probs.log(), noise, top_p=top_p, top_k=top_k, pairing=pairing)
    counts = torch.bincount(tok, minlength=len(ROW)).double()
    expected = exact_distribution(ROW, temp, top_p, top_k)
    assert chi2_pvalue(counts, expected) > 1e-4
    if top_p or top_k:                                      # the test has power: untruncated is rejected
        untruncated = exact_distribution(ROW, temp)
        assert counts[untruncated > expected].sum() == 0 or chi2_pvalue(counts, untruncated) < 1e-4


@pytest.mark.interp
def test_kernel_distribution_chi2_tiny():
    T, temp, top_p = 300, 1.0, 0.8
    g = torch.Generator().manual_seed(99)
    cond = ROW.expand(1, T, -1).contiguous()
    noise = torch.empty(1, T, len(ROW)).exponential_(1, generator=g)
    tokens = torch.full((1, T), len(ROW))
    tok, prob, _ = st.sample_step_fwd(cond, cond, tokens, noise, torch.ones(1, T, dtype=torch.bool),
                                      torch.tensor(1.0), torch.tensor(temp), torch.tensor(top_p),
                                      torch.tensor(0), torch.tensor(False), 1, "prod")
    expected = exact_distribution(ROW, temp, top_p)
    assert chi2_pvalue(torch.bincount(tok[0], minlength=len(ROW)).double(), expected) > 1e-4
    untruncated = exact_distribution(ROW, temp).float()
    torch.testing.assert_close(prob[0], untruncated[tok[0]])  # top-p scores the untruncated prob


def test_select_nonoverlap_ties_and_dont_remask():
    scores = torch.tensor([[0.5, 0.2, 0.5, 0.5, naive.DONT_REMASK, 0.1],
                           [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    mask = next_mask_nonoverlap(scores, 2, 3)
    assert mask.shape == (2, 18) and torch.equal(mask, naive.select_spans(scores, 2).repeat_interleave(3, -1))
    chunks = mask[:, ::3]
    assert (mask.view(2, 6, 3) == chunks[..., None]).all()
    assert (chunks.sum(-1) == 2).all()
    for b in range(2):                                      # every chosen chunk scores >= every other
        assert scores[b][chunks[b]].min() >= scores[b][~chunks[b]].max()
    assert not chunks[0, 4] and not chunks[0, 1] and not chunks[0, 5]


@pytest.mark.parametrize("T,num_masked", [(37, 1), (37, 12), (100, 50), (100, 99)])
def test_select_stride1_matches_loop(T, num_masked):
    g = torch.Generator().manual_seed(T + num_masked)
    scores = -torch.log(torch.rand(3, T, generator=g))
    scores[0] = 0.0                                         # step-0 ties
    scores[1, :5] = naive.DONT_REMASK                       # a prompt
    scores[2] = scores[2].round()                           # ties between windows
    mask = next_mask_stride1(scores, num_masked, 3)
    assert torch.equal(mask, select_stride1_loop(scores, num_masked, 3))


def test_op_cpu_is_naive_and_compiles():
    step = make_step(2, 39, 97, 3)
    sc = scalars("top_p0.9")
    out = st.sample_step_op(*step, coef=sc[0], temperature=sc[1], top_p=sc[2], top_k=sc[3], greedy=sc[4])
    ref = st.sample_step_ref(*step, *sc, 3, "max")
    for a, b in zip(out, ref, strict=True):
        assert torch.equal(a, b)
    out_sorted = st.sample_step_op(*step, coef=3.0, temperature=2.0, top_p=0.9, pairing="sorted")
    assert torch.equal(out_sorted[0], st.sample_step_ref(*step, *sc, 3, "max", pairing="sorted")[0])

    def decode(cond, uncond, tokens, noise, masked, coef, temp, top_p, top_k, greedy):
        tok, _prob, score = st.sample_step_op(cond, uncond, tokens, noise, masked, coef=coef,
                                             temperature=temp, top_p=top_p, top_k=top_k, greedy=greedy)
        return tok, next_mask_nonoverlap(score, 4, 3)

    fn = torch.compile(decode, fullgraph=True, backend="eager")
    tok, nxt = fn(*step, *sc)
    assert torch.equal(tok, ref[0]) and torch.equal(nxt, next_mask_nonoverlap(ref[2], 4, 3))
    torch.library.opcheck(torch.ops.magnet_fast.sample_step.default, (*step, *sc, 3, "max", "vocab"))


@pytest.mark.gpu
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gpu_kernel_full_shape(mode, dtype):
    B, T, V = 2, 1500, 2048
    step = make_step(B, T, V, 3, device="cuda", logits_dtype=dtype)
    sc = scalars(mode, device="cuda")
    tok, prob, _score = st.sample_step_op(*step, coef=sc[0], temperature=sc[1], top_p=sc[2], top_k=sc[3],
                                         greedy=sc[4])
    r_tok, r_prob, _r_score = st.sample_step_ref(*step, *sc, 3, "max")
    # Rows whose top-p boundary is an exact tie (bf16 logits are quantised) may keep other sets by design
    # (naive.top_p_boundary_tied); every other row must agree. exp/log differ by ulps between Triton and
    # torch on GPU: allow a rare flipped near-tie there.
    top_p, greedy = float(sc[2]), bool(sc[4])
    probs = naive.step_probs(naive.cfg_logits(step[0], step[1], float(sc[0])), float(sc[1]))
    tied = naive.top_p_boundary_tied(probs, top_p) if top_p > 0 and not greedy else torch.zeros_like(tok, dtype=torch.bool)
    if dtype == torch.float32:
        assert not tied.any()
    masked = step[2] == V                                  # positions whose sampled token is written
    free = masked & ~tied
    assert (tok[free] == r_tok[free]).float().mean() > 0.999
    assert tied.float().mean() < 0.05
    same = free & (tok == r_tok)                            # the scored prob belongs to the same token
    torch.testing.assert_close(prob[same], r_prob[same], atol=1e-5, rtol=1e-4)
