"""Every relative link in README.md and docs/*.md resolves: the file exists and, for a `#fragment`, a heading of
that file has that anchor (GitHub's rule). Links inside code blocks and code spans are not links."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"(`+).*?\1")
_INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^()\s>]*(?:\([^()\s]*\)[^()\s>]*)*)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFDEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _prose_lines(text: str):
    """(line number, line) outside fenced code blocks."""
    fenced = None
    for n, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line)
        if m:
            if fenced is None:
                fenced = m.group(1)
            elif m.group(1) == fenced:
                fenced = None
            continue
        if fenced is None:
            yield n, line


def links(text: str) -> list[tuple[int, str]]:
    out = []
    for n, line in _prose_lines(text):
        bare = _CODE_SPAN.sub("", line)
        out += [(n, m.group(1)) for m in _INLINE.finditer(bare)]
        m = _REFDEF.match(bare)
        if m:
            out.append((n, m.group(1)))
    return out


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: the heading's text lower-cased, everything but letters, digits, '_', '-' and
    spaces dropped, spaces turned into '-'; a repeated anchor gets -1, -2, ..."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose_lines(text):
        m = _HEADING.match(line)
        if not m:
            continue
        title = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", m.group(2))      # a link's text only
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def broken_links(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    problems = []
    for n, target in links(text):
        if not target or _SCHEME.match(target) or target.startswith("//"):
            continue                                                   # external (http:, mailto:, ...)
        where = f"{page.name}:{n}: {target}"
        path, _, frag = target.partition("#")
        if path.startswith("/"):
            problems.append(f"{where} (absolute path; use a relative link)")
            continue
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            problems.append(f"{where} (no such file)")
        elif frag and dest.suffix == ".md" and frag not in anchors(dest.read_text(encoding="utf-8")):
            problems.append(f"{where} (no heading with anchor #{frag})")
    return problems


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    assert broken_links(page) == []


def test_readme_links_every_docs_page():
    readme = {(ROOT / t.partition("#")[0]).resolve() for _, t in links((ROOT / "README.md").read_text())
              if t and not _SCHEME.match(t)}
    missing = [p.name for p in PAGES[1:] if p.resolve() not in readme]
    assert missing == [], f"docs pages the README does not link: {missing}"


def test_checker_finds_what_is_broken(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title\n\n## Rescoring and Hybrid (a stand-in for Hybrid-MAGNeT)\n"
                                            "## GPU\n## GPU\n```\n## Not a heading\n```\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/a.md) [ok](docs/a.md#title) [ok](docs/a.md#rescoring-and-hybrid-a-stand-in-for-hybrid-magnet)\n"
        "[ok](docs/a.md#gpu-1) [ok](https://example.com/x.md) [ok](#local) ![img](docs/a.md)\n"
        "`[not a link](missing.md)`\n```\n[not a link](missing2.md)\n```\n"
        "## Local\n"
        "[bad](docs/b.md) [bad](docs/a.md#gpu-2) [bad](docs/a.md#not-a-heading) [bad](/etc/passwd)\n"
        "[bad](#nowhere)\n[ref]: docs/c.md\n")
    problems = broken_links(page)
    assert [p.split(": ", 1)[1].split(" (")[0] for p in problems] == [
        "docs/b.md", "docs/a.md#gpu-2", "docs/a.md#not-a-heading", "/etc/passwd", "#nowhere", "docs/c.md"], problems
