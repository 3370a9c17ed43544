"""Collectors: one class per source of numbers about a mount (DESIGN section 4).

Two shapes, on one base (:class:`Collector`):

* :class:`LogCollector` receives the driver's log lines one at a time
  (``feed(line)``), from the supervisor's log pump thread, and records events
  on the synchronous instruments of :class:`obsctl.instruments.Instruments`.
* :class:`PollingCollector` reads a cumulative source (an HTTP API, a file in
  /proc or /sys) when ``poll()`` is called, records deltas on synchronous
  counters, and may register observable instruments in ``__init__``.
  The supervisor calls ``poll()`` on a timer and once more before the final
  export, so the last exported values equal the final counters.

Never raise: a side-car must never take a mount down. The guard exists
once, here: the public ``feed`` / ``poll`` / ``close`` are template methods
that call the subclass's ``_feed`` / ``_poll`` / ``_close`` inside
:meth:`Collector.guard`, which logs each distinct failure once (a warning
naming the collector, the exception type and where it was raised; never the
exception's text, which may quote a log line) and returns. A source that is
missing or malformed in an expected way is the subclass's business (skip,
debug log, a health word), not the guard's.

Each collector contributes its part of ``obsctl status`` through
:meth:`Collector.status`; :func:`collector_status` merges the parts into the
state file's collector keys (:data:`EMPTY_STATUS`).
"""

from __future__ import annotations

import copy
import logging
import traceback
from typing import TYPE_CHECKING, Any, Callable, Iterable, TypeVar

if TYPE_CHECKING:  # pragma: no cover - keeps this module free of OpenTelemetry imports
    from obsctl.instruments import Instruments

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Distinct failures remembered per collector (each logged once at warning); more are logged at debug only.
MAX_DISTINCT_FAILURES = 64

#: The state-file keys collectors fill (:mod:`obsctl.statefile`), as ``obsctl status`` shows them
#: before any collector ran: ``health`` (:class:`~obsctl.collectors.probe.MountProbe`), ``driver_io``
#: (:class:`~obsctl.collectors.proc_io.ProcIoCollector`, bytes), ``driver_stats`` (rclone's rc
#: ``core/stats`` and ``vfs/stats`` answers, :class:`~obsctl.collectors.rclone_rc.RcloneRcCollector`).
EMPTY_STATUS: dict[str, Any] = {
    "health": None,
    "driver_io": {"read_bytes": None, "write_bytes": None},
    "driver_stats": {},
}


class Collector:
    """Base of every collector: the instruments, the never-raise guard, the status part.

    Attributes:
        instruments: where the collector records.
        failures: how many calls the guard caught (all kinds together).
    """

    def __init__(self, instruments: Instruments) -> None:
        self.instruments = instruments
        self.failures = 0
        self._seen: set[tuple[str, str, int]] = set()

    def guard(self, what: str, call: Callable[..., T], *args: Any) -> T | None:
        """``call(*args)``; on an exception, log it (once per distinct kind) and return None.

        ``what`` names the step in the log line (``feed``, ``poll``, ``close``,
        ``status``, ``trace chunk``). A kind is the exception type and the
        file and line it was raised at; its first occurrence is a warning,
        later ones (and every traceback) are at debug level. Never raises an
        :class:`Exception` (KeyboardInterrupt / SystemExit pass through).
        """
        try:
            return call(*args)
        except Exception as exc:  # noqa: BLE001 - the one "never raise from a collector" guard
            self.failures += 1
            frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            where = (frame.filename.rsplit("/", 1)[-1], frame.lineno or 0) if frame else ("?", 0)
            kind = (type(exc).__name__, *where)
            name = type(self).__name__
            if kind not in self._seen and len(self._seen) < MAX_DISTINCT_FAILURES:
                self._seen.add(kind)
                log.warning("%s.%s failed: %s at %s:%d (skipped; the same failure again is logged at debug level)",
                            name, what, *kind)
            log.debug("%s.%s failed", name, what, exc_info=True)
            return None

    def status(self) -> dict[str, Any]:
        """This collector's part of ``obsctl status --json`` (keys of :data:`EMPTY_STATUS`). Default: nothing."""
        return {}

    def close(self) -> None:
        """Release what the collector holds (sessions, files, tracefs instances); never raises."""
        self.guard("close", self._close)

    def _close(self) -> None:
        """Subclass hook of :meth:`close`. Default: nothing."""


class LogCollector(Collector):
    """Base for collectors fed one driver log line at a time."""

    def feed(self, line: str) -> None:
        """Parse one log line (without its trailing newline) and record it; never raises."""
        self.guard("feed", self._feed, line)

    def _feed(self, line: str) -> None:
        """Subclass hook of :meth:`feed`."""
        raise NotImplementedError


class PollingCollector(Collector):
    """Base for collectors that read a cumulative source when polled."""

    def poll(self) -> None:
        """Read the source once and record what changed since the last poll; never raises."""
        self.guard("poll", self._poll)

    def _poll(self) -> None:
        """Subclass hook of :meth:`poll`."""
        raise NotImplementedError


def collector_status(collectors: Iterable[Collector]) -> dict[str, Any]:
    """The collectors' part of a state file: :data:`EMPTY_STATUS` updated with each :meth:`Collector.status`.

    A part's dict value is merged into the key's dict (two collectors may
    both add to ``driver_stats``); other values replace. A collector whose
    ``status`` raises contributes nothing (guarded).
    """
    out = copy.deepcopy(EMPTY_STATUS)
    for collector in collectors:
        for key, value in (collector.guard("status", collector.status) or {}).items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key].update(value)
            else:
                out[key] = value
    return out


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


def is_failure(opcode: str, error_name: str, driver_answers: frozenset[tuple[str, str]] = frozenset()) -> bool:
    """False for the protocol answers of :data:`NOT_FAILURES` and for ``driver_answers``
    (the driver's own, :attr:`obsctl.drivers.Driver.protocol_answers`); ``opcode``: the
    lower-case label, ``error_name``: the lower-case errno name."""
    return ((opcode, error_name) not in NOT_FAILURES and ("*", error_name) not in NOT_FAILURES
            and (opcode, error_name) not in driver_answers)
