"""Layout guards: kernels/ is importable only as magnet_fast.kernels; no code reaches the team's shared
folder beside the checkout (users who clone the project do not have it)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_top_level_kernels_from_this_repo():
    spec = importlib.util.find_spec("kernels")                   # transformers probes this name
    root = ROOT
    places = [] if spec is None else [spec.origin, *(spec.submodule_search_locations or [])]
    assert not [p for p in places if p and Path(p).resolve().is_relative_to(root)], places


def test_kernels_subpackage_maps_to_repo_folder():
    import magnet_fast.kernels as k
    assert Path(k.__file__).resolve() == ROOT / "kernels" / "__init__.py"


def test_no_shared_paths_in_code():
    needles = (".." + "/shared", "/work" + "/shared")
    hits = [p for folder in ("magnet_fast", "kernels", "bench", "tests") for p in (ROOT / folder).rglob("*.py")
            if any(n in p.read_text() for n in needles)]
    assert hits == [], hits


def test_version_is_the_project_version():
    """magnet_fast.__version__ (also part of the converted-cache key) is pyproject.toml's version."""
    import re

    import magnet_fast
    declared = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert magnet_fast.__version__ == declared
