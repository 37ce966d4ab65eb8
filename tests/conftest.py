"""Test setup: Triton interpreter without CUDA, `gpu` skipping, poisoned kernel outputs, tolerances."""
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

CUDA = torch.cuda.is_available()
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2` on two cores: one intra-op thread per worker, and in the CLI / oracle / benchmark
    # subprocesses it starts (two threads each oversubscribe the cores: the suite took 18 min, not 9)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
if not CUDA:
    # read when @triton.jit decorates, so it must precede any import of kernels/*/triton.py
    os.environ.setdefault("TRITON_INTERPRET", "1")

# (backend, dtype) -> atol/rtol for kernel outputs vs an fp64 reference on the same inputs.
# interp fp32: ~1e-6 measured; fp16: output rounding (half ulp 9.8e-4 at |o| < 2); bf16: half ulp 7.8e-3
# at |o| < 4, plus P rounded to bf16 before the PV dot on GPU; cuda fp32 uses input_precision="ieee".
TOLERANCES = {
    ("interp", torch.float32): {"atol": 2e-6, "rtol": 2e-6},
    ("interp", torch.float16): {"atol": 2e-3, "rtol": 2e-3},
    ("interp", torch.bfloat16): {"atol": 1.6e-2, "rtol": 1e-2},
    ("cuda", torch.float32): {"atol": 1e-5, "rtol": 1e-5},
    ("cuda", torch.float16): {"atol": 2e-3, "rtol": 2e-3},
    ("cuda", torch.bfloat16): {"atol": 2e-2, "rtol": 1e-2},
}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`pytest -n 2` schedules by work stealing unless --dist says otherwise: the suite's test times range
    from milliseconds to two minutes, and an idle worker takes tests off the other one's queue."""
    if config.getoption("dist") != "load":
        return None
    from xdist.scheduler import WorkStealingScheduling
    return WorkStealingScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    if CUDA:
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    no_interp = pytest.mark.skip(reason="no CUDA and TRITON_INTERPRET != 1: Triton kernels cannot launch")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
        elif "interp" in item.keywords and os.environ.get("TRITON_INTERPRET") != "1":
            item.add_marker(no_interp)


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    """Kernel launchers NaN-fill fresh outputs, so an element the kernel never writes fails parity."""
    monkeypatch.setenv("MAGNET_FAST_POISON", "1")


@pytest.fixture
def tolerance():
    def lookup(backend: str, dtype: torch.dtype) -> dict:
        return TOLERANCES[(backend, dtype)]
    return lookup


def assert_close_verbose(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, name=""):
    """allclose with a report: NaN/inf counts, max-abs error, relative RMS error, first bad indices."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert a.shape == e.shape, f"{name}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    bad_a, bad_e = (~a.isfinite()).sum().item(), (~e.isfinite()).sum().item()
    assert bad_a == bad_e == 0, f"{name}: non-finite values: actual {bad_a}, expected {bad_e}"
    err = (a - e).abs()
    over = err > atol + rtol * e.abs()
    if over.any():
        rel_rms = (err.pow(2).mean().sqrt() / e.pow(2).mean().sqrt().clamp_min(1e-30)).item()
        idx = over.nonzero()[:5].tolist()
        raise AssertionError(f"{name}: {int(over.sum())}/{over.numel()} elements off; max-abs "
                             f"{err.max().item():.3e}, rel-RMS {rel_rms:.3e}, atol {atol}, rtol {rtol}; "
                             f"first at {idx}")


@pytest.fixture
def assert_close():
    return assert_close_verbose


# ------------------------------------------------------------------ the audiocraft 1.3.0 oracle (live tests)
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ORACLE_PYTHON = Path(os.environ.get("MAGNET_FAST_AUDIOCRAFT_PYTHON",
                                    FIXTURES.parents[1] / ".venv-audiocraft" / "bin" / "python"))
ORACLE_CONFIG = Path(os.environ.get("AUDIOCRAFT_CONFIG_DIR",
                                    FIXTURES.parents[1] / ".ac-dl" / "audiocraft-1.3.0" / "config"))


def oracle_missing() -> str | None:
    """Why audiocraft cannot be run here (None when it can)."""
    if not ORACLE_PYTHON.exists():
        return (f"no audiocraft python at {ORACLE_PYTHON} (run tests/fixtures/setup_audiocraft.sh or set "
                "MAGNET_FAST_AUDIOCRAFT_PYTHON)")
    if not ORACLE_CONFIG.is_dir():
        return f"no audiocraft config folder at {ORACLE_CONFIG} (set AUDIOCRAFT_CONFIG_DIR)"
    code = (f"import sys; sys.path.insert(0, {str(FIXTURES)!r}); import ac_stubs; ac_stubs.install(); "
            "import audiocraft.models.loaders, audiocraft.utils.export, julius")
    probe = subprocess.run([str(ORACLE_PYTHON), "-c", code], capture_output=True, text=True, check=False)
    if probe.returncode:
        return f"{ORACLE_PYTHON} cannot import audiocraft: {probe.stderr.strip().splitlines()[-1:]}"
    return None


@pytest.fixture(scope="session")
def run_oracle():
    """Callable: (script, *args) -> runs a fixture script with audiocraft's interpreter (asserts success);
    skips the test, saying why, when the oracle is not installed."""
    reason = oracle_missing()
    if reason:
        print(f"SKIP live audiocraft parity: {reason}")
        pytest.skip(reason)

    def run(script: str, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        proc = subprocess.run([str(ORACLE_PYTHON), str(FIXTURES / script), "--config-dir", str(ORACLE_CONFIG),
                               *args], capture_output=True, text=True, env=env, timeout=600, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
    run.python = ORACLE_PYTHON
    run.config = ORACLE_CONFIG
    return run


# ------------------------------------------------------------------ audiocraft's references, converted models
T5_TINY = FIXTURES / "ac_ref" / "t5_tiny"
VARIANTS = {"10s": FIXTURES / "ac_ref", "30s": FIXTURES / "ac_ref_30s"}


class Reference:
    """One fixture folder: tensors, metadata, its audiocraft checkpoint folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.tensors = load_file(str(folder / "reference.safetensors"))
        self.meta = json.loads((folder / "reference.json").read_text())
        self.checkpoint = folder / "magnet_tiny"


@pytest.fixture(scope="session", params=list(VARIANTS))
def reference(request) -> Reference:
    return Reference(VARIANTS[request.param])


@pytest.fixture(scope="session")
def ref10() -> Reference:
    return Reference(VARIANTS["10s"])


_models: dict = {}


def converted_model(ref: Reference, tmp_root: Path):
    """Convert the fixture checkpoint with the project converter and load it (CPU, float32)."""
    import magnet_fast as mf
    key = str(ref.folder)
    if key not in _models:
        out = tmp_root / f"converted-{ref.folder.name}"
        mf.convert(ref.checkpoint, out)
        _models[key] = mf.MagnetFast.from_pretrained(out, t5=T5_TINY, attention="exact")   # the parity mode
    return _models[key]


@pytest.fixture(scope="session")
def model(reference, tmp_path_factory):
    return converted_model(reference, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def model10(ref10, tmp_path_factory):
    return converted_model(ref10, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def make_reference():
    """Callable: folder -> Reference (for fixtures produced during the test run)."""
    return Reference


@pytest.fixture(scope="session")
def load_converted(tmp_path_factory):
    """Callable: Reference -> converted, loaded MagnetFast (cached per fixture folder)."""
    root = tmp_path_factory.mktemp("models-extra")
    return lambda ref: converted_model(ref, root)


def _token_tv_distance(a, b, card: int) -> float:
    """Total-variation distance between the per-codebook token histograms of two [B, n_q, T] batches
    (the largest over codebooks)."""
    import torch
    tv = []
    for k in range(a.shape[1]):
        ha = torch.bincount(a[:, k].flatten().cpu(), minlength=card).double()
        hb = torch.bincount(b[:, k].flatten().cpu(), minlength=card).double()
        tv.append(0.5 * (ha / ha.sum() - hb / hb.sum()).abs().sum().item())
    return max(tv)


@pytest.fixture
def token_tv_distance():
    """Callable (a, b, card) -> histogram total-variation distance (statistical token checks)."""
    return _token_tv_distance


@pytest.fixture(scope="session")
def musicgen_folder(tmp_path_factory) -> Path:
    """The audiocraft-made tiny MusicGen (tests/fixtures/ac_musicgen), converted once per session."""
    import magnet_fast as mf
    return mf.convert(FIXTURES / "ac_musicgen" / "musicgen_tiny", tmp_path_factory.mktemp("musicgen") / "musicgen_tiny")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): the CI machine's
    two cores are shared, and one thread is several times faster than two oversubscribed for tiny models."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
