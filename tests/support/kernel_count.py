"""The kernel's own count of one FUSE connection's requests, for checking a
kernel source against (tests/integration/test_fuse_trace.py, bench/fuse_bpf.py,
bench/fuse_trace.py --compare).

A second tracefs instance with a 64 MiB per-CPU buffer records both fuse
events (``fuse_request_send``, ``fuse_request_end``) of one connection; read
after the run from ``trace`` (not ``trace_pipe``: no reader competes during
the run), its lines counted, and the loss counters of
``per_cpu/cpu*/stats`` (``overrun``, ``dropped events``) summed.
"""

from __future__ import annotations

import os
from pathlib import Path

from obsctl.collectors.fuse_trace import DEFAULT_TRACEFS

EVENTS = ("fuse_request_send", "fuse_request_end")


class KernelCount:
    """A private tracefs instance ``obsctl-PREFIX-count-PID`` counting one connection.

    ``conn`` is the FUSE connection number (a string, as in mountinfo).
    Raises OSError where tracefs is not writable (not root) or the instance
    exists already.
    """

    def __init__(self, conn: str, prefix: str = "test", tracefs: str = DEFAULT_TRACEFS) -> None:
        self.path = Path(tracefs) / "instances" / f"obsctl-{prefix}-count-{os.getpid()}"
        self.path.mkdir()
        (self.path / "buffer_size_kb").write_text("65536\n")
        for event in EVENTS:
            (self.path / "events/fuse" / event / "filter").write_text(f"connection == {int(conn)}\n")
            (self.path / "events/fuse" / event / "enable").write_text("1\n")

    def counts(self) -> dict[str, int]:
        """``{"sends", "ends", "overrun", "dropped"}``: events recorded, and events the
        kernel lost in this instance (overwritten, dropped)."""
        out = {"sends": 0, "ends": 0, "overrun": 0, "dropped": 0}
        with open(self.path / "trace", "rb") as fh:
            for line in fh:
                if b"fuse_request_send:" in line:
                    out["sends"] += 1
                elif b"fuse_request_end:" in line:
                    out["ends"] += 1
        for stats in self.path.glob("per_cpu/cpu*/stats"):
            for line in stats.read_text().splitlines():
                if line.startswith("overrun:"):
                    out["overrun"] += int(line.split(":")[1])
                elif line.startswith("dropped events:"):
                    out["dropped"] += int(line.split(":")[1])
        return out

    def close(self) -> None:
        """Disable the events and remove the instance."""
        for event in EVENTS:
            (self.path / "events/fuse" / event / "enable").write_text("0\n")
        self.path.rmdir()
