"""The test tree collects as one pytest session: no two test modules share a basename.

tests/ has no ``__init__.py`` files (rootdir-relative imports), so pytest imports
every test module by its basename; two files named alike in tests/unit and
tests/integration make the whole run stop at collection ("import file mismatch").
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_modules_share_a_basename():
    seen: dict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("test_*.py"):
        if "__pycache__" in path.parts:
            continue
        seen[path.name].append(str(path.relative_to(TESTS)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, f"rename one of each: {clashes}"
