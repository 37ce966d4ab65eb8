"""Banded attention backward: the Triton dQ/dK/dV kernels (interpreter on CPU, real on GPU), the plain-PyTorch
reference backward, and autograd through the magnet_fast::banded_attn / banded_attn_lse ops.

The independent reference is autograd through a float64 dense banded attention written here (explicit
-inf band, softmax, matmul), not the code under test."""
import math

import pytest
import torch

from magnet_fast.kernels.banded_attn import banded_attention_op, naive
from magnet_fast.kernels.banded_attn import triton as bt
from magnet_fast.kernels.banded_attn import triton_bwd as tb

# interpreter fp32 vs the fp64 reference: measured max-abs error ~1e-6 on gradients of size ~1-5
GRAD_TOL = {"atol": 1e-5, "rtol": 1e-5}


def dense_attention64(q, k, v, window, scale=None):
    """(out, lse) in float64, differentiable: the independent reference for gradients."""
    T, D = q.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    s = (q.double() @ k.double().transpose(-2, -1)) * scale
    if window is not None:
        idx = torch.arange(T)
        s = s.masked_fill((idx[:, None] - idx[None, :]).abs() > window, float("-inf"))
    return s.softmax(-1) @ v.double(), s.logsumexp(-1)


def reference_grads(q, k, v, do, window, scale=None, glse=None):
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    out, lse = dense_attention64(q64, k64, v64, window, scale)
    loss = (out * do.double()).sum()
    if glse is not None:
        loss = loss + (lse * glse.double()).sum()
    return torch.autograd.grad(loss, (q64, k64, v64))


def inputs(B, H, T, D, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g).to(device=device, dtype=dtype) for _ in range(4)]


def triton_grads(q, k, v, do, window, scale=None, tiles=None, glse=None):
    o, lse = bt.banded_attn_fwd(q, k, v, window, scale, return_lse=True)
    return tb.banded_attn_bwd(do, q, k, v, o, lse, window, scale, tiles=tiles, glse=glse)


def check_grads(got, want, assert_close, tol=GRAD_TOL, label=""):
    for name, g, w in zip(("dq", "dk", "dv"), got, want, strict=True):
        assert g.is_contiguous()
        assert_close(g, w, **tol, name=f"{label}{name}")


# ------------------------------------------------------------------ Triton kernels, interpreter fp32
ODD = [  # B, H, T, D, window
    *[pytest.param(1, 2, 97, d, w, id=f"T97-D{d}-W{w}") for d in (16, 64, 80) for w in (0, 5, 96)],
    pytest.param(1, 1, 97, 16, None, id="T97-D16-None"),
    pytest.param(1, 1, 500, 80, 5, id="T500-D80-W5"),
]


@pytest.mark.interp
@pytest.mark.parametrize("B,H,T,D,window", ODD)
def test_triton_grads_match_fp64_reference(B, H, T, D, window, assert_close):
    q, k, v, do = inputs(B, H, T, D)
    got = triton_grads(q, k, v, do, window)
    check_grads(got, reference_grads(q, k, v, do, window), assert_close)
    if window == 0:                      # each query sees only itself: out = v, so dq = dk = 0 and dv = do
        assert_close(got[2], do, atol=1e-6, rtol=0, name="dv=do")


@pytest.mark.interp
@pytest.mark.parametrize("D,window", [(64, 5), (80, None)], ids=["D64-W5", "D80-full"])
def test_triton_fp16_path(D, window, tolerance, assert_close):
    """The 16-bit code path (P and dS rounded to fp16 before their dots, no upcast): fp16 runs correctly in
    the interpreter (bf16 does not, so bf16 is left to the GPU tests). Measured max-abs error 1.4e-3."""
    q, k, v, do = inputs(1, 2, 97, D, dtype=torch.float16)
    got = triton_grads(q, k, v, do, window)
    assert all(g.dtype == torch.float16 for g in got)
    check_grads(got, reference_grads(q, k, v, do, window), assert_close, tol=tolerance("interp", torch.float16))


@pytest.mark.interp
def test_triton_block_edges(assert_close):
    # every (window, tiles) pair whose band ends on a block's first/last row; both kernels' loop bounds
    q, k, v, do = inputs(1, 1, 53, 32)
    tiles_list = [{"dkdv": {"BM": 16, "BN": 32}, "dq": {"BM": 32, "BN": 16}},
                  {"dkdv": {"BM": 32, "BN": 16}, "dq": {"BM": 16, "BN": 32}}]
    for tiles in tiles_list:
        for window in (1, 15, 16, 17, 31, 33):
            check_grads(triton_grads(q, k, v, do, window, tiles=tiles),
                        reference_grads(q, k, v, do, window), assert_close, label=f"W={window} {tiles}: ")


@pytest.mark.interp
def test_triton_strided_views_and_scale(assert_close):
    # q, k, v: views of a packed [B, T, 3, H, D] projection; dO: a transposed view (strides differ again)
    B, T, H, D = 2, 37, 3, 64
    packed = torch.randn(B, T, 3, H, D)
    q, k, v = (packed[:, :, i].permute(0, 2, 1, 3) for i in range(3))
    do = torch.randn(B, T, H, D).permute(0, 2, 1, 3)
    assert not q.is_contiguous() and not do.is_contiguous()
    check_grads(triton_grads(q, k, v, do, 5, scale=0.3), reference_grads(q, k, v, do, 5, scale=0.3),
                assert_close)
    # an expanded gradient (stride 0 on B, H, T), as the backward of .sum() hands it over
    do0 = torch.randn(1, 1, 1, D).expand(B, H, T, D)
    check_grads(triton_grads(q, k, v, do0, 5), reference_grads(q, k, v, do0, 5), assert_close, label="expanded ")


@pytest.mark.interp
def test_triton_lse_gradient(assert_close):
    q, k, v, do = inputs(1, 2, 41, 16)
    glse = torch.randn(1, 2, 41)
    check_grads(triton_grads(q, k, v, do, 5, glse=glse), reference_grads(q, k, v, do, 5, glse=glse),
                assert_close)


@pytest.mark.interp
@pytest.mark.parametrize("window", [0, 5, None])
def test_forward_lse_output_leaves_out_unchanged(window, assert_close):
    q, k, v, _ = inputs(1, 2, 37, 80)
    o, lse = bt.banded_attn_fwd(q, k, v, window, return_lse=True)
    assert torch.equal(o, bt.banded_attn_fwd(q, k, v, window))
    assert lse.shape == (1, 2, 37) and lse.dtype == torch.float32
    assert_close(lse, dense_attention64(q, k, v, window)[1], atol=2e-6, rtol=2e-6, name="lse")


def test_poisoned_outputs_show_an_unwritten_gradient():
    """The gradients come from poisoned buffers: a launch that writes nothing leaves NaN everywhere (the
    autouse fixture in conftest.py), so a kernel that misses an element fails the comparisons above."""
    class Skip:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None
    q, k, v, do = inputs(1, 1, 20, 16)
    lse = torch.zeros(1, 1, 20)
    for g in tb.banded_attn_bwd(do, q, k, v, q, lse, 5, launcher=lambda fn: Skip()):
        assert g.isnan().all()


def test_launcher_rejects_bad_inputs():
    q, k, v, do = inputs(1, 1, 8, 40)
    with pytest.raises(AssertionError, match="head dim"):
        tb.banded_attn_bwd(do, q, k, v, q, torch.zeros(1, 1, 8), 5)
    q, k, v, do = inputs(1, 1, 8, 64)
    with pytest.raises(AssertionError, match="tiles"):
        tb.banded_attn_bwd(do, q, k, v, q, torch.zeros(1, 1, 8), 5, tiles={"dq": {"BM": 8}})
    with pytest.raises(AssertionError):
        tb.banded_attn_bwd(do, q, k, v, q, torch.zeros(1, 8), 5)


def test_every_config_has_dot_sized_tiles():
    for interpret in (True, False):
        for fp32 in (True, False):
            for d in (16, 64, 80, 128):
                for banded, w in ((True, 5), (True, 100), (False, 10_000)):
                    cfg = tb.bwd_block_config(d, banded, w, interpret=interpret, fp32=fp32)
                    assert all(cfg[n][t] >= 16 for n in ("dkdv", "dq") for t in ("BM", "BN")), cfg


# ------------------------------------------------------------------ the reference backward and the ops (CPU)
@pytest.mark.parametrize("window", [0, 5, 36, None])
def test_naive_backward_matches_fp64_autograd(window, assert_close):
    q, k, v, do = inputs(2, 2, 37, 16)
    glse = torch.randn(2, 2, 37)
    o, lse = naive.banded_attention_lse(q, k, v, window)
    got = naive.banded_attention_bwd(do, q, k, v, o, lse, window, glse=glse)
    check_grads(got, reference_grads(q, k, v, do, window, glse=glse), assert_close)


def test_naive_lse_output_is_bitwise_the_forward():
    q, k, v, _ = inputs(2, 2, 37, 64)
    for w in (0, 5, 36, None):
        o, lse = naive.banded_attention_lse(q, k, v, w)
        assert torch.equal(o, naive.banded_attention(q, k, v, w))
        torch.testing.assert_close(lse.double(), dense_attention64(q, k, v, w)[1], atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize("window", [0, 3, None])
def test_gradcheck_op_fp64(window):
    """Numerical vs registered analytical gradients of the op (CPU: the reference backward), float64."""
    q, k, v = (torch.randn(1, 1, 9, 16, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda q, k, v: banded_attention_op(q, k, v, window), (q, k, v))


def test_gradcheck_raw_ops_fp64():
    """banded_attn (lse recomputed in its backward) and banded_attn_lse, with a gradient through lse too."""
    q, k, v = (torch.randn(1, 2, 11, 16, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda q, k, v: torch.ops.magnet_fast.banded_attn(q, k, v, 2, 0.3),
                                    (q, k, v), fast_mode=True)
    assert torch.autograd.gradcheck(lambda q, k, v: torch.ops.magnet_fast.banded_attn_lse(q, k, v, 2, 0.3),
                                    (q, k, v), fast_mode=True)


def test_gradcheck_fails_on_a_wrong_backward(monkeypatch):
    """The gradchecks above can fail: a backward that forgets the delta term is caught."""
    right = naive.banded_attention_bwd

    def wrong(do, q, k, v, o, lse, window, scale=None, glse=None):
        return right(do, q, k, v, torch.zeros_like(o), lse, window, scale, glse=glse)
    monkeypatch.setattr(naive, "banded_attention_bwd", wrong)
    q, k, v = (torch.randn(1, 1, 9, 16, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert not torch.autograd.gradcheck(lambda q, k, v: banded_attention_op(q, k, v, 3), (q, k, v),
                                        raise_exception=False, fast_mode=True)


def test_op_cpu_backward_is_the_reference(assert_close):
    """On CPU the op trains through autograd: forward bitwise naive, backward bitwise the reference."""
    q, k, v, do = inputs(2, 3, 37, 64)
    for w in (5, None):
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        out = banded_attention_op(*leaves, w)
        assert torch.equal(out, naive.banded_attention(q, k, v, w))
        out.backward(do)
        o, lse = naive.banded_attention_lse(q, k, v, w)
        for got, want in zip([x.grad for x in leaves], naive.banded_attention_bwd(do, q, k, v, o, lse, w),
                             strict=True):
            assert torch.equal(got, want)
        check_grads([x.grad.contiguous() for x in leaves], reference_grads(q, k, v, do, w), assert_close)


def test_op_without_grad_runs_the_inference_op():
    q, k, v, _ = inputs(1, 1, 20, 16)
    with torch.no_grad():
        out = banded_attention_op(q.requires_grad_(), k, v, 3)
    assert out.grad_fn is None and torch.equal(out, naive.banded_attention(q, k, v, 3))


def test_ops_opcheck():
    q, k, v, do = inputs(1, 2, 37, 16)
    o, lse = naive.banded_attention_lse(q, k, v, 5)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    torch.library.opcheck(torch.ops.magnet_fast.banded_attn.default, (*leaves, 5, 0.25))
    torch.library.opcheck(torch.ops.magnet_fast.banded_attn_lse.default, (*leaves, 5, 0.25))
    torch.library.opcheck(torch.ops.magnet_fast.banded_attn_bwd.default, (do, q, k, v, o, lse, None, 5, 0.25))
    torch.library.opcheck(torch.ops.magnet_fast.banded_attn_bwd.default,
                          (do, q, k, v, o, lse, torch.randn_like(lse), None, 0.25))


def test_compiled_training_step_cpu(assert_close):
    """AOTAutograd traces the registered backward (the path torch.compile training takes)."""
    q, k, v, do = inputs(1, 2, 37, 16)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    fn = torch.compile(lambda q, k, v: banded_attention_op(q, k, v, 5).mul(2).sum(), backend="aot_eager",
                       fullgraph=True)
    fn(*leaves).backward()
    want = reference_grads(q, k, v, torch.full_like(q, 2.0), 5)
    check_grads([x.grad for x in leaves], want, assert_close)


# ------------------------------------------------------------------ GPU
GPU_SHAPES = [  # B, H, T, D, window
    pytest.param(2, 16, 1500, 64, 5, id="small-T1500-W5"),
    pytest.param(2, 16, 500, 64, None, id="small-T500-full"),
    pytest.param(2, 4, 97, 80, 5, id="odd-T97-D80"),
    pytest.param(1, 2, 500, 128, 40, id="T500-D128-W40"),
    pytest.param(3, 4, 498, 16, 5, id="tiny-model-T498-D16"),
    pytest.param(1, 2, 1, 64, 5, id="T1"),
]
# vs fp32 math on the same (rounded) inputs; 16-bit: P and dS are rounded before their dots, and the
# gradients themselves are stored in the input dtype
GPU_GRAD_TOL = {torch.float32: {"atol": 1e-4, "rtol": 1e-4}, torch.float16: {"atol": 1e-2, "rtol": 1e-2},
                torch.bfloat16: {"atol": 6e-2, "rtol": 3e-2}}


@pytest.mark.gpu
@pytest.mark.parametrize("B,H,T,D,window", GPU_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_gpu_grads_match_reference(B, H, T, D, window, dtype, assert_close):
    q, k, v, do = inputs(B, H, T, D, dtype=dtype, device="cuda")
    o, lse = naive.banded_attention_lse(q.float(), k.float(), v.float(), window)
    want = naive.banded_attention_bwd(do.float(), q.float(), k.float(), v.float(), o, lse, window)
    got = triton_grads(q, k, v, do, window)
    check_grads(got, want, assert_close, tol=GPU_GRAD_TOL[dtype])
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]               # through autograd and the op
    banded_attention_op(*leaves, window).backward(do)
    check_grads([x.grad for x in leaves], want, assert_close, tol=GPU_GRAD_TOL[dtype], label="op ")


@pytest.mark.gpu
def test_gpu_backward_deterministic_and_compiled():
    q, k, v, do = inputs(2, 16, 500, 64, dtype=torch.bfloat16, device="cuda")
    first = triton_grads(q, k, v, do, 5)
    assert all(torch.equal(a, b) for a, b in zip(first, triton_grads(q, k, v, do, 5), strict=True))
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    fn = torch.compile(lambda q, k, v: banded_attention_op(q, k, v, 5), fullgraph=True)
    fn(*leaves).backward(do)
    for got, want in zip([x.grad for x in leaves], first, strict=True):
        torch.testing.assert_close(got, want, atol=2e-2, rtol=1e-2)
