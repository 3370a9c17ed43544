"""The README and docs/*.md point only at what exists in the repository.

* every relative Markdown link ``[text](path)`` / ``[text](path#anchor)`` /
  ``[text](#anchor)`` names a file or directory of the checkout, and its
  anchor is a heading of that Markdown file, as GitHub spells heading ids;
* no link leaves the repository through ``..`` (the design notes are not part
  of it: what a reader needs is in the repository's own docs);
* docs/index.md links every page of docs/.

GitHub's heading ids (github/cmark-gfm's ``anchor`` extension, as rendered on
github.com): the heading text without Markdown markup, lower-cased, every
character that is not a letter, digit, space, ``-`` or ``_`` removed, each
space turned into ``-``; a repeated id gets ``-1``, ``-2`` ... appended.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
#: ``[text](target)`` and ``![alt](target)``, target without spaces; an optional "title" is dropped.
_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def _prose_lines(text: str) -> list[str]:
    """The lines of ``text`` outside fenced code blocks and indented code blocks."""
    out, fenced, previous_blank = [], False, True
    for line in text.splitlines():
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if fenced:
            continue
        if line.startswith("    ") and previous_blank:
            continue  # an indented code block (starts after a blank line)
        previous_blank = not line.strip() or (line.startswith("    ") and previous_blank)
        out.append(line)
    return out


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading whose text is ``heading`` (before de-duplication)."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)                     # code spans keep their text
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)         # links keep their text
    text = re.sub(r"(\*\*|__|\*|_)(?=\S)(.+?)(?<=\S)\1", r"\2", text)  # emphasis
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading id of the Markdown file ``path``."""
    seen: dict[str, int] = {}
    out = set()
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if not match:
            continue
        base = github_anchor(match.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    """The targets of every Markdown link of ``path`` outside code."""
    found = []
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        line = re.sub(r"`[^`]*`", "", line)  # not inside code spans
        found.extend(m.group(1) for m in _LINK.finditer(line))
    return found


def test_github_anchor_rules():
    assert github_anchor("The `obsctl` command line") == "the-obsctl-command-line"
    assert github_anchor("Driver options (`-o`, `options = [...]`)") == "driver-options--o-options--"
    assert github_anchor("Without Ansible: `obsctl systemd install`") == "without-ansible-obsctl-systemd-install"
    assert github_anchor("Telemetry in an application's own TOML") == "telemetry-in-an-applications-own-toml"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_and_anchors_resolve(page):
    broken = []
    for target in links(page):
        if _SCHEME.match(target):
            continue  # an absolute URL (https:, mailto:): not a file of the repository
        path_part, _sep, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        try:
            resolved.relative_to(REPO)
        except ValueError:
            broken.append(f"{target}: outside the repository")
            continue
        if not resolved.exists():
            broken.append(f"{target}: no such file")
            continue
        if anchor:
            if resolved.suffix != ".md" or resolved.is_dir():
                broken.append(f"{target}: an anchor into a file that is not Markdown")
            elif anchor not in anchors(resolved):
                broken.append(f"{target}: no heading with id {anchor!r} in {resolved.relative_to(REPO)} "
                              f"(ids: {sorted(anchors(resolved))})")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_path_outside_the_repository(page):
    """Also plain-text mentions: ``../shared/DESIGN.md`` style paths are not in a clone."""
    text = page.read_text(encoding="utf-8")
    assert not re.findall(r"\.\./[\w./-]*\.md", text), f"{page.relative_to(REPO)} names a file outside the repository"


def test_index_lists_every_page():
    index = DOCS / "index.md"
    listed = {(DOCS / target.partition("#")[0]).resolve() for target in links(index) if not _SCHEME.match(target)}
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p != index and p.resolve() not in listed]
    assert not missing, f"docs/index.md does not list: {missing}"


def test_readme_links_the_index():
    assert "docs/index.md" in links(REPO / "README.md")


#: A plain-text mention of a page, ``docs/NAME.md`` (README) or ``NAME.md`` (docs/),
#: optionally followed by a quoted section name: ``docs/drivers.md, "Adding a driver"``.
_MENTION = re.compile(r"(?<![\w/.-])(docs/)?([\w-]+\.md)(?:,|:)?\s+\"([^\"]+)\"|(?<![\w/.-])docs/([\w-]+\.md)")


def _headings(path: Path) -> set[str]:
    """Every heading text of ``path`` without Markdown code marks."""
    return {re.sub(r"`", "", m.group(2)) for line in _prose_lines(path.read_text(encoding="utf-8"))
            if (m := _HEADING.match(line))}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_plain_mentions_of_pages_and_sections_resolve(page):
    """``docs/operations.md`` in prose names a page that exists, and ``operations.md, "Reload"``
    a section of it (a heading whose text is, or starts with, the quoted name)."""
    text = re.sub(r"\s*\n\s*", " ", page.read_text(encoding="utf-8"))
    broken = []
    for match in _MENTION.finditer(text):
        prefixed = bool(match.group(1) or match.group(4))
        name = match.group(2) or match.group(4)
        target = DOCS / name
        if not target.exists():
            if prefixed:
                broken.append(f"{match.group(0)}: no such page")
            continue  # a bare NAME.md that is not a page: another project's file, README.md ...
        if not prefixed and page.parent != DOCS:
            continue
        section = match.group(3)
        if section and not any(h.startswith(section.replace("`", "")) for h in _headings(target)):
            broken.append(f"{match.group(0)}: no section {section!r} in docs/{name}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)
