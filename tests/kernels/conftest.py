"""The QEMU kernel boots (marker ``kernels``): what each kernel gave, in pytest's summary."""

from __future__ import annotations

import pytest

#: One line per booted kernel (the ``kernel_summary`` fixture appends).
_SUMMARY: list[str] = []


@pytest.fixture(scope="session")
def kernel_summary() -> list[str]:
    """Append one line per kernel: it is printed in the section
    ``kernels: which FUSE source each kernel gave`` at the end of the run."""
    return _SUMMARY


def pytest_terminal_summary(terminalreporter):
    if _SUMMARY:
        terminalreporter.section("kernels: which FUSE source each kernel gave")
        for line in _SUMMARY:
            terminalreporter.write_line(line)
