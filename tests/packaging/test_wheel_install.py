"""Install as users install: build the wheel, install it into a fresh venv, run ``magnet-fast generate``
from outside the checkout with the bundled demo model, which must come from the wheel (package data).

Isolation: the sources the build needs (pyproject.toml, the readme, the package-dir folders) are copied to a
temporary folder first, so a stale ``build/`` of the checkout cannot leak files into the wheel. The venv is
created with ``--system-site-packages`` (torch, transformers, ... come from the system) and the wheel is
installed with ``--no-deps --no-index --ignore-installed``. The system site may hold magnet_fast installed
editable from the checkout; that install is a meta-path finder appended *after* the path finder, and the
venv's site-packages precede the system's on sys.path, so the venv's own copy wins: the test asserts it
(every module and the demo folder resolve inside the venv, none inside the checkout). Commands run from a
folder outside the checkout with PYTHONPATH/PYTHONHOME unset, the user site off and no TRITON_* /
MAGNET_FAST_* variables (a user's shell has none of the test suite's settings).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

tomllib = pytest.importorskip("tomllib", reason="Python >= 3.11 reads pyproject.toml with tomllib")

ROOT = Path(__file__).resolve().parents[2]
DEMO_SRC = ROOT / "magnet_fast" / "demo" / "magnet-tiny-demo"
DEMO_IN_WHEEL = "magnet_fast/demo/magnet-tiny-demo"
PIP_ENV = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1", "PIP_NO_CACHE_DIR": "1"}


def user_env() -> dict[str, str]:
    """The current environment as a user's shell would have it: no path overrides, no suite settings."""
    drop = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PIP_TARGET", "PIP_PREFIX", "PIP_USER")
    env = {k: v for k, v in os.environ.items()
           if k not in drop and not k.startswith(("TRITON_", "MAGNET_FAST_", "PYTEST_"))}
    return {**env, **PIP_ENV, "PYTHONNOUSERSITE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def run(cmd: list, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=user_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{cmd} -> exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def inside(path: str | Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """A scratch folder outside the checkout (the commands' working directory)."""
    base = tmp_path_factory.mktemp("wheel_install")
    if inside(base, ROOT):
        pytest.skip(f"the temporary folder {base} is inside the checkout {ROOT}")
    return base


def copy_build_inputs(dest: Path) -> None:
    """pyproject.toml, the readme and every package-dir folder of the checkout, without build leftovers."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    readme = project["project"].get("readme")
    if isinstance(readme, str):
        shutil.copy2(ROOT / readme, dest / readme)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".demo-*", "build", "dist")
    for folder in sorted(set(project["tool"]["setuptools"]["package-dir"].values())):
        shutil.copytree(ROOT / folder, dest / folder, ignore=skip)


@pytest.fixture(scope="module")
def wheel(outside: Path) -> Path:
    src, dist = outside / "src", outside / "dist"
    src.mkdir()
    copy_build_inputs(src)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, src],
        cwd=outside)
    wheels = list(dist.glob("magnet_fast-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def venv(outside: Path, wheel: Path) -> Path:
    env_dir = outside / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", env_dir], cwd=outside)
    python = env_dir / "bin" / "python"
    # pip comes from the system site (the venv sees it); it installs into the venv it runs in
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", wheel], cwd=outside)
    return env_dir


def test_wheel_carries_demo_model_and_package(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    demo_files = sorted(p.relative_to(DEMO_SRC).as_posix() for p in DEMO_SRC.rglob("*") if p.is_file())
    assert {"config.json", "model.safetensors", "t5/config.json", "codec/config.json"} <= set(demo_files)
    missing = [f for f in demo_files if f"{DEMO_IN_WHEEL}/{f}" not in names]
    assert missing == [], f"demo model files missing from the wheel (package-data in pyproject.toml): {missing}"
    for module in ("magnet_fast/__init__.py", "magnet_fast/demo.py", "magnet_fast/cli.py",
                   "magnet_fast/kernels/__init__.py", "magnet_fast/kernels/constants.py",
                   "magnet_fast/kernels/sample/naive.py", "magnet_fast/kernels/banded_attn/naive.py"):
        assert module in names, module
    stray = sorted(n for n in names if n.split("/")[0] in ("kernels", "weights", "tests", "bench"))
    assert stray == [], stray


def test_wheel_install_generates_with_bundled_demo(venv: Path, outside: Path):
    python, script = venv / "bin" / "python", venv / "bin" / "magnet-fast"
    probe = ("import json, sysconfig, magnet_fast, magnet_fast.cli, magnet_fast.demo, magnet_fast.kernels, "
             "magnet_fast.kernels.constants; print(json.dumps({'site': sysconfig.get_path('purelib'), "
             "'modules': [m.__file__ for m in (magnet_fast, magnet_fast.cli, magnet_fast.demo, magnet_fast.kernels, "
             "magnet_fast.kernels.constants)], 'demo': str(magnet_fast.demo.DEMO_MODEL), "
             "'cli_demo': str(magnet_fast.cli.DEMO_MODEL)}))")
    where = json.loads(run([python, "-c", probe], cwd=outside).stdout.strip().splitlines()[-1])
    site = Path(where["site"])
    assert inside(site, venv), f"the venv's site-packages {site} is not inside {venv}"
    for path in (*where["modules"], where["demo"], where["cli_demo"]):
        assert inside(path, site) and not inside(path, ROOT), (
            f"{path} is not imported from the venv's site-packages {site} (the checkout's install won?)")
    assert Path(where["cli_demo"]) == Path(where["demo"]), "the CLI's default model is not magnet_fast.demo's"
    assert (Path(where["demo"]) / "config.json").is_file(), f"no demo model installed at {where['demo']}"

    out = outside / "songs"
    run([script, "generate", "test", "--steps", "2,1,1,1", "--quiet", "--out", out], cwd=outside)
    wavs = sorted(out.glob("*.wav"))
    assert len(wavs) == 1, sorted(out.iterdir()) if out.exists() else "no output folder"
    assert wavs[0].read_bytes()[:4] == b"RIFF" and wavs[0].stat().st_size > 44
