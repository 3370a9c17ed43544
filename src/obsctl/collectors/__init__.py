"""Collectors: one class per source of numbers about a mount (DESIGN section 4).

Two shapes:

* :class:`LogCollector` receives the driver's log lines one at a time
  (``feed(line)``), from the supervisor's log pump thread, and records events
  on the synchronous instruments of :class:`obsctl.instruments.Instruments`.
* :class:`PollingCollector` reads a cumulative source (an HTTP API, a file in
  /proc or /sys) when ``poll()`` is called, records deltas on synchronous
  counters, and may register observable instruments in ``__init__``.
  The supervisor calls ``poll()`` on a timer and once more before the final
  export, so the last exported values equal the final counters.

Collectors never raise out of ``feed``/``poll`` for a source that is missing
or malformed: they log at debug level and skip, because a side-car must never
take a mount down.
"""

from __future__ import annotations

import logging

from obsctl.instruments import Instruments

log = logging.getLogger(__name__)


class LogCollector:
    """Base for collectors fed one driver log line at a time."""

    def __init__(self, instruments: Instruments) -> None:
        self.instruments = instruments

    def feed(self, line: str) -> None:
        """Parse one log line (without its trailing newline) and record it."""
        raise NotImplementedError


class PollingCollector:
    """Base for collectors that read a cumulative source when polled."""

    def __init__(self, instruments: Instruments) -> None:
        self.instruments = instruments

    def poll(self) -> None:
        """Read the source once and record what changed since the last poll."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the collector holds (sessions, files). Default: nothing."""


#: (opcode label or "*", errno name): answers that are the FUSE protocol
#: working, not a failure, for every source of FUSE errors (the kernel's
#: fuse_request_end, rclone's log): ENOENT of LOOKUP (every stat of a missing
#: name and every create starts with one), ENODATA / ERANGE of GETXATTR /
#: LISTXATTR (no such attribute / size probe: the kernel asks
#: ``security.capability`` before every write), ENOTSUP of the xattr opcodes
#: (a daemon without extended attributes: ``ls -l`` asks for
#: ``security.selinux`` and ignores the answer) and ENOSYS of any opcode (the
#: daemon does not implement it; the kernel stops sending it).
NOT_FAILURES = frozenset({
    ("lookup", "enoent"),
    ("getxattr", "enodata"), ("listxattr", "enodata"),
    ("getxattr", "erange"), ("listxattr", "erange"),
    ("getxattr", "enotsup"), ("listxattr", "enotsup"),
    ("setxattr", "enotsup"), ("removexattr", "enotsup"),
    ("*", "enosys"),
})


def is_failure(opcode: str, error_name: str) -> bool:
    """False for the protocol answers of :data:`NOT_FAILURES` (``opcode``: the
    lower-case label, ``error_name``: the lower-case errno name)."""
    return (opcode, error_name) not in NOT_FAILURES and ("*", error_name) not in NOT_FAILURES
