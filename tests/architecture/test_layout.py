"""The package's architecture, checked from the source (docs/DESIGN.md, Layout): floors that import only
downwards, no import circle (module-level or inside functions), and each piece of machinery defined once."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# floor of each part; a module may import from its own floor or lower ones only
FLOORS = [("magnet_fast.kernels", 0), ("magnet_fast.errors", 0), ("magnet_fast.params", 1),
          ("magnet_fast.config", 1), ("magnet_fast.checks", 1), ("magnet_fast.io", 2), ("magnet_fast.nn", 3), ("magnet_fast.decoding", 4),
          ("magnet_fast.engines", 5)]
TOP = 6          # everything else: the public facade and the frontends (cli, compat, jobs, serve, train, ...)


def floor(module: str) -> int:
    for prefix, f in FLOORS:
        if module == prefix or module.startswith(prefix + "."):
            return f
    return TOP


def modules() -> dict[str, Path]:
    out = {}
    for base, pkg in ((ROOT / "magnet_fast", "magnet_fast"), (ROOT / "kernels", "magnet_fast.kernels")):
        for p in base.rglob("*.py"):
            rel = p.relative_to(base).with_suffix("")
            parts = [x for x in rel.parts if x != "__init__"]
            if "kernels" in rel.parts and pkg == "magnet_fast":
                continue                       # the symlink some checkouts have
            out[".".join([pkg, *parts])] = p
    return out


def imports(path: Path, name: str, known: dict) -> set[str]:
    """Every magnet_fast module ``path`` imports, at module level or inside functions."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rsplit(".", 1)[0] if "." in t else ""
            if t.startswith("magnet_fast") and t != name:
                out.add(t)
    return out


@pytest.fixture(scope="module")
def graph():
    known = modules()
    return {m: imports(p, m, known) for m, p in known.items()}


def test_subpackages_exist(graph):
    for part in ("magnet_fast.io", "magnet_fast.nn", "magnet_fast.decoding", "magnet_fast.engines"):
        assert any(m.startswith(part + ".") for m in graph), part


def test_imports_run_downwards_only(graph):
    upward = sorted(f"{m} (floor {floor(m)}) -> {t} (floor {floor(t)})" for m, ts in graph.items() for t in ts
                    if floor(t) > floor(m) and not t == "magnet_fast")
    facade = sorted(f"{m} -> magnet_fast" for m, ts in graph.items() for t in ts if t == "magnet_fast")
    assert not upward, "\n".join(upward)
    assert not facade, "package modules must not import the facade:\n" + "\n".join(facade)


def test_no_import_circles(graph):
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):                      # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))
    for v in list(graph):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_the_checker_sees_circles_and_upward_imports():
    """The checks above can fail: a made-up graph with a circle and an upward import trips both."""
    assert floor("magnet_fast.nn.model") == 3 and floor("magnet_fast.cli") == TOP
    g = {"magnet_fast.nn.a": {"magnet_fast.engines.b"}, "magnet_fast.engines.b": {"magnet_fast.nn.a"}}
    assert any(floor(t) > floor(m) for m, ts in g.items() for t in ts)
    with pytest.raises(AssertionError):
        test_no_import_circles(g)


# machinery that must exist exactly once (the one-forward design)
ONCE = {
    r"def sin_embedding\(": "the positions function",
    r"def build_pattern\(": "the delay pattern",
    r"class \w+Key\(NamedTuple\)": "the decoder cache key",
    r"torch\.cuda\.CUDAGraph\(\)": "the CUDA-graph recording",
    r"make_fx\(": "the fx stand-in for graphs",
    r"class Layer\(nn\.Module\)": "the transformer layer",
    r"def forward_hidden\(": "the transformer forward",
    r"def static_copy\(": "the static K/V copy",
}


@pytest.mark.parametrize("pattern", list(ONCE))
def test_machinery_exists_once(pattern):
    hits = [f"{p.relative_to(ROOT)}" for p in modules().values()
            for _ in re.finditer(pattern, p.read_text())]
    assert len(hits) == 1, f"{ONCE[pattern]} ({pattern}) defined {len(hits)} times: {hits}"


def test_attention_calls_live_in_nn():
    """SDPA is called only by the model's attention code, nowhere in decoding or the engines."""
    hits = [str(p.relative_to(ROOT)) for m, p in modules().items()
            if "scaled_dot_product_attention(" in p.read_text() and not m.startswith(("magnet_fast.nn.",
                                                                                    "magnet_fast.kernels"))]
    assert not hits, hits
