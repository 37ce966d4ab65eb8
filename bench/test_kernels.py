"""Kernel microbenchmarks as pytest-benchmark tests: one test per (op, shape, provider) of bench/registry.py.

    pytest bench/ --benchmark-only --kernel-device cuda --kernel-dtype bf16 --benchmark-json out.json
    python bench/run.py ...        (the same tests, then results.json / results.md / plots from the JSON)

Each test first runs its provider once (the warm-up; torch.compile and Triton compile here) and asserts the
parity gate against the op's reference provider on the same inputs (cases.py); only a provider that passed
is timed. A provider that cannot run here (Triton without CUDA or the interpreter, ...) is skipped with the
reason. CUDA: the timed call ends with torch.cuda.synchronize(), so a round is the op's latency, not its
launch; CPU calls are synchronous. Timer, rounds and the JSON are pytest-benchmark's (--benchmark-max-time,
--benchmark-min-rounds, --benchmark-json, which keeps every round's time).
"""
from __future__ import annotations

import pytest
import torch
from cases import DTYPES, find_shape, get_case, plan, providers_for
from common import sync
from registry import REGISTRY


def _options(config) -> dict:
    device = config.getoption("kernel_device") or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = config.getoption("kernel_dtype") or ("fp16" if device == "cuda" else "fp32")
    return {"device": device, "dtype": DTYPES[dtype], "ops": config.getoption("kernel_op") or list(REGISTRY),
            "shapes": config.getoption("kernel_shapes"), "cpu_all": config.getoption("kernel_cpu_all"),
            "tiny": config.getoption("kernel_tiny")}


def pytest_generate_tests(metafunc):
    if {"op", "shape", "provider"} <= set(metafunc.fixturenames):
        o = _options(metafunc.config)
        cases = plan(o["ops"], o["device"], o["tiny"], o["cpu_all"], o["shapes"])
        metafunc.parametrize(("op", "shape", "provider"), [(op, s.name, p) for op, s, p in cases],
                             ids=[f"{op}-{s.name}-{p}" for op, s, p in cases])


def synchronised(fn, device: str):
    """The timed call: the op, then (CUDA) a wait for it, so each round measures the op's completion."""
    if device != "cuda":
        return fn

    def call():
        out = fn()
        torch.cuda.synchronize()
        return out
    return call


def test_kernel(benchmark, record_property, request, op, shape, provider):
    o = _options(request.config)
    info = {"op": op, "shape": shape, "dims": find_shape(op, shape).dims, "provider": provider,
            "dtype": str(o["dtype"]).removeprefix("torch."), "device": o["device"],
            "reference": providers_for(op, o["device"], o["tiny"])[0], "gate": None, "max_abs_err": None}
    record_property("kernel_case", info)            # bench/run.py reads gates from here (also failed ones)
    try:
        case = get_case(op, shape, o["dtype"], o["device"], o["tiny"])
        if provider in case.unavailable:
            info["gate"] = "unavailable"
            pytest.skip(f"{provider}: {case.unavailable[provider]}")
        ok, err = case.check(provider)              # the warm-up (compiles) and the parity gate
    except Exception as e:                          # reported as the provider's gate, and the test fails
        info["gate"] = f"error: {type(e).__name__}: {str(e)[:120]}"
        raise
    info.update(gate="pass" if ok else "FAIL", max_abs_err=err)
    assert ok, (f"parity gate: {op} {shape} {provider} vs {case.reference}: max abs err {err:.3e} "
                f"(or non-finite output)")
    benchmark.group = f"{op} {shape} {info['dtype']}"
    benchmark.extra_info.update(info)
    sync(o["device"])
    benchmark(synchronised(case.fns[provider], o["device"]))
