"""Every relative link and ``#anchor`` of the README and the pages under docs/ resolves, as
GitHub renders them; sections are referred to by links, not by their names in italics; and
every ``make`` target the docs name exists.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^( *)(```|~~~).*?^\1\2[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
HEADING = re.compile(r"^#{1,6}[ \t]+(?P<title>.+?)[ \t]*#*[ \t]*$", re.M)
LINK = re.compile(r"!?\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
ITALIC = re.compile(r"(?<![*\w])\*(?P<text>[^*\n]+?)\*(?![*\w])")
MAKE_TARGET = re.compile(r"\bmake (?P<target>[a-z][a-z-]*)\b")


def prose(markdown: str) -> str:
    """The text outside fenced code blocks (blank lines keep the line numbers)."""
    return FENCE.sub(lambda m: "\n" * m[0].count("\n"), markdown)


def slug(title: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lowercased, punctuation dropped,
    spaces to ``-``."""
    text = CODE_SPAN.sub(lambda m: m[0].strip("`"), title)
    text = LINK.sub(lambda m: m["text"], text)
    text = re.sub(r"[*]|(?<!\w)_+|_+(?!\w)", "", text).strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in ("L", "N", "M"))
    return kept.replace(" ", "-")


@cache
def anchors(page: Path) -> frozenset[str]:
    """Every anchor of a page: its headings' slugs, with GitHub's -1, -2 for repeats."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for match in HEADING.finditer(prose(page.read_text(encoding="utf-8"))):
        base = slug(match["title"])
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return frozenset(found)


def links(page: Path) -> list[tuple[int, str]]:
    """(line, target) of every link and image outside code."""
    text = CODE_SPAN.sub(lambda m: " " * len(m[0]), prose(page.read_text(encoding="utf-8")))
    return [(text.count("\n", 0, m.start()) + 1, m["target"]) for m in LINK.finditer(text)]


def broken(page: Path, target: str) -> str | None:
    """Why ``target``, linked from ``page``, does not resolve (None: it does)."""
    if re.match(r"\A[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not ours to check
        return None
    path, _, anchor = target.partition("#")
    resolved = (page.parent / path).resolve() if path else page
    if not resolved.exists():
        return f"{path} does not exist"
    if anchor:
        if resolved.suffix != ".md":
            return f"#{anchor} in a file that is not Markdown"
        if anchor not in anchors(resolved):
            return f"{resolved.name} has no heading #{anchor}"
    return None


def code_in(markdown: str) -> list[str]:
    """The fenced blocks and the code spans of a page: where commands are written."""
    return [m[0] for m in FENCE.finditer(markdown)] + [
        m[0] for m in CODE_SPAN.finditer(prose(markdown))
    ]


def page_name(page: Path) -> str:
    return str(page.relative_to(ROOT))


# --- the rules themselves ------------------------------------------------------------------


def test_anchors_follow_githubs_rules() -> None:
    assert slug("How it works") == "how-it-works"
    assert slug("What survives what (the chaos suite)") == "what-survives-what-the-chaos-suite"
    assert slug("Docker, Redis 8 and Redis Cloud") == "docker-redis-8-and-redis-cloud"
    assert slug("What a 5xx means to a client") == "what-a-5xx-means-to-a-client"
    assert slug("Measured: 1, 2 and 4 workers") == "measured-1-2-and-4-workers"
    assert slug("`make run` and **INGEST_ROLLUPS**") == "make-run-and-ingest_rollups"
    assert slug("Agents: InfluxDB line protocol, Prometheus remote-write, OTLP") == (
        "agents-influxdb-line-protocol-prometheus-remote-write-otlp"
    )


def test_a_broken_link_or_anchor_is_found(tmp_path: Path) -> None:
    page = tmp_path / "a.md"
    page.write_text(
        "# A page\n\n## Two words\n\n```\n## not a heading\n```\n\n"
        "[ok](#two-words) [ok](b.md#b) [no](#not-a-heading) [no](b.md#nothing) [no](c.md)\n"
        "`[code](nowhere.md)`\n"
    )
    (tmp_path / "b.md").write_text("# B\n")

    found = [(target, broken(page, target)) for _, target in links(page)]

    assert [(t, why is None) for t, why in found] == [
        ("#two-words", True),
        ("b.md#b", True),
        ("#not-a-heading", False),
        ("b.md#nothing", False),
        ("c.md", False),
    ]


# --- the docs ------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=page_name)
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    problems = [
        f"{page_name(page)}:{line}: ({target}) {why}"
        for line, target in links(page)
        if (why := broken(page, target)) is not None
    ]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=page_name)
def test_sections_are_referred_to_by_links_not_by_their_names_in_italics(page: Path) -> None:
    """``see *Scaling out*`` rots when the section moves; a link is checked above."""
    titles = {
        match["title"].strip().lower()
        for other in PAGES
        for match in HEADING.finditer(prose(other.read_text(encoding="utf-8")))
    }
    text = CODE_SPAN.sub("", prose(page.read_text(encoding="utf-8")))
    named = [m["text"] for m in ITALIC.finditer(text) if m["text"].strip().lower() in titles]
    assert named == [], f"{page_name(page)}: link these sections instead: {named}"


def test_every_make_target_the_docs_name_exists() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    named = {
        (page_name(page), m["target"])
        for page in PAGES
        for code in code_in(page.read_text(encoding="utf-8"))
        for m in MAKE_TARGET.finditer(code)
    }

    assert {(page, target) for page, target in named if target not in targets} == set()


def test_the_dashboard_screenshot_is_shown() -> None:
    shown = {
        (page.parent / target).resolve()
        for page in PAGES
        for _, target in links(page)
        if target.endswith(".png")
    }
    assert ROOT / "docs" / "dashboard.png" in shown
