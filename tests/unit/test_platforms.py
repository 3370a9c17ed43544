"""One platform list: meta/platforms.yml. Every role's meta/main.yml, the README
and docs/install.md say exactly what it says (install.sh reads it itself; its
check runs against every entry in tests/integration/test_install_platforms.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PLATFORMS = yaml.safe_load((REPO / "meta" / "platforms.yml").read_text(encoding="utf-8"))["platforms"]
BEGIN = "<!-- platforms: generated from meta/platforms.yml, checked by tests/unit/test_platforms.py -->"
END = "<!-- /platforms -->"


def galaxy_platforms() -> list[dict]:
    """The accepted entries as galaxy_info.platforms: one item per name, codenames in list order."""
    out: dict[str, list[str]] = {}
    for entry in PLATFORMS:
        if entry["status"] != "refused":
            out.setdefault(entry["name"], []).append(entry["codename"])
    return [{"name": name, "versions": versions} for name, versions in out.items()]


def table() -> str:
    """The Markdown table the README and docs/install.md carry between BEGIN and END."""
    rows = [BEGIN, "| Platform | Codename | Python | Status |", "|---|---|---|---|"]
    for e in PLATFORMS:
        rows.append(f"| {e['name']} {e['version']} | {e['codename']} | {e['python']} | {e['status']}: {e['note']} |")
    rows.append(END)
    return "\n".join(rows)


@pytest.mark.parametrize("role", sorted(p.name for p in (REPO / "roles").iterdir() if (p / "meta" / "main.yml").exists()))
def test_role_meta_platforms(role):
    meta = yaml.safe_load((REPO / "roles" / role / "meta" / "main.yml").read_text(encoding="utf-8"))
    assert meta["galaxy_info"]["platforms"] == galaxy_platforms(), (
        f"roles/{role}/meta/main.yml: platforms must be {galaxy_platforms()} (meta/platforms.yml)")


@pytest.mark.parametrize("doc", ["README.md", "docs/install.md"])
def test_docs_table(doc):
    text = (REPO / doc).read_text(encoding="utf-8")
    assert text.count(BEGIN) == 1 and text.count(END) == 1, f"{doc}: one platform table between the markers"
    found = text[text.index(BEGIN):text.index(END) + len(END)]
    assert found == table(), f"{doc}: the platform table differs from meta/platforms.yml; expected:\n{table()}"


@pytest.mark.parametrize("doc", ["README.md", "docs/install.md"])
def test_no_other_platform_claims(doc):
    text = (REPO / doc).read_text(encoding="utf-8")
    for stale in ("Ubuntu 22.04/24.04", "Debian 12/13,", "22.04/24.04"):
        assert stale not in text, f"{doc}: {stale!r} is a platform claim outside meta/platforms.yml"
