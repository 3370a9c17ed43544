"""Requests waiting in the kernel for a FUSE mount, from fusectl.

Source: ``/sys/fs/fuse/connections/N/waiting`` (the fusectl file system,
``mount -t fusectl none /sys/fs/fuse/connections``; the supervisor mounts it
when it is not). ``waiting`` is the number of FUSE requests the kernel has
queued or sent to the driver and not yet got an answer for: a driver that is
slow (or hung) on the object store shows it growing. ``N`` is the FUSE
connection number, the minor of the mount's device in /proc/self/mountinfo
(``0:45`` -> 45, :func:`obsctl.mounttable.fuse_connection`). Real copies:
tests/fixtures/sys/fs/fuse/connections/{40,42,45}/waiting (all ``0``: idle
mounts) with tests/fixtures/mountinfo/live.txt.

Recorded as the observable gauge ``obsctl_fuse_requests_waiting`` with the
single label ``mountpoint`` (DESIGN section 4). :meth:`FuseConnCollector.poll`
reads the files, the callback returns the cached value. Nothing is reported
when the mount is not in the mount table, is not FUSE, or
/sys/fs/fuse/connections is not mounted (no fake 0).

Stalls (a backend that is down: rclone and s3fs retry an unreachable S3 for
minutes while the reader waits): ``waiting`` alone cannot say how old a
request is, so :attr:`FuseConnCollector.stalled_seconds` is the time, over
the polls, since requests began to wait with no other request answered
meanwhile: it restarts at 0 when ``waiting`` reads 0 and whenever a FUSE
operation other than ``statfs`` (the health probe's own) was counted since the
last poll (``Instruments.ops_by_opcode``, from the kernel source or the
driver's log). It is an upper bound of the oldest waiting request's age, within
one poll interval, and never grows while requests are being answered. Recorded
as ``obsctl_fuse_requests_stalled_seconds`` {mountpoint}; past the mount's
bound (``stall_seconds``: the spec's ``stall_timeout_seconds``, default
:data:`obsctl.config.DEFAULT_STALL_SECONDS`) the health probe says ``stalled``
(:class:`obsctl.collectors.probe.MountProbe`): ``obsctl_mount_up`` 0.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Observation

from obsctl import mounttable
from obsctl.collectors import PollingCollector
from obsctl.config import DEFAULT_STALL_SECONDS
from obsctl.instruments import Instruments

log = logging.getLogger(__name__)

#: Opcodes that never count as progress: the health probe's own statvfs.
_PROBE_OPCODES = frozenset({"statfs"})


class FuseConnCollector(PollingCollector):
    """``waiting`` of the mount's FUSE connection as an observable gauge.

    Args:
        instruments: where to register the gauge.
        mountpoint: absolute path of the mount.
        sys_path: the sysfs root (tests pass a fixture directory).
        mountinfo_path: the mount table (tests pass a fixture file).
        clock: monotonic seconds (tests pass a fake clock).
        stall_seconds: the mount's stall bound in seconds (> 0; the spec's
            ``stall_timeout_seconds``, validated by :class:`obsctl.config.MountSpec`).

    Attributes:
        connection: the connection number ``N`` found last, or None.
        waiting: the last value read, or None when there is nothing to report.
    """

    def __init__(
        self,
        instruments: Instruments,
        mountpoint: str,
        sys_path: str = "/sys",
        mountinfo_path: str = mounttable.MOUNTINFO_PATH,
        clock: Callable[[], float] = time.monotonic,
        stall_seconds: float = DEFAULT_STALL_SECONDS,
    ) -> None:
        super().__init__(instruments)
        self.stall_seconds = stall_seconds
        self.mountpoint = mountpoint
        self.sys_path = sys_path
        self.mountinfo_path = mountinfo_path
        self.clock = clock
        self.connection: str | None = None
        self.waiting: int | None = None
        #: When the current stall began (``clock()``), or None while nothing waits unanswered.
        self._stalled_since: float | None = None
        self._answered = self._answered_ops()
        instruments.observable_gauge("obsctl_fuse_requests_waiting", self._observe)
        instruments.observable_gauge("obsctl_fuse_requests_stalled_seconds", self._observe_stall)

    def _answered_ops(self) -> int:
        """FUSE operations counted so far, the probe's ``statfs`` left out."""
        counts = getattr(self.instruments, "ops_by_opcode", None) or {}
        return sum(n for opcode, n in list(counts.items()) if opcode not in _PROBE_OPCODES)

    @property
    def stalled_seconds(self) -> float:
        """Seconds requests have waited with none answered (0 when none waits); see the module docstring."""
        return 0.0 if self._stalled_since is None else max(0.0, self.clock() - self._stalled_since)

    @property
    def stalled(self) -> bool:
        """True once :attr:`stalled_seconds` is past the mount's bound (:attr:`stall_seconds`)."""
        return self.stalled_seconds > self.stall_seconds

    @property
    def connections_dir(self) -> str:
        return os.path.join(self.sys_path, "fs", "fuse", "connections")

    def _poll(self) -> None:
        """Find the mount's connection, read its ``waiting``, follow a stall."""
        self.waiting = None
        try:
            entry = mounttable.find_mount(self.mountpoint, path=self.mountinfo_path)
        except (OSError, ValueError) as exc:
            log.debug("mount table %s: %s", self.mountinfo_path, exc)
            self._stalled_since = None
            return
        if entry is None or not mounttable.is_fuse(entry):
            self.connection = None
            self._stalled_since = None
            return
        self.connection = mounttable.fuse_connection(entry)
        # None when fusectl is not mounted or the connection went away
        self.waiting = mounttable.fuse_waiting(entry, root=self.connections_dir)
        self._track_stall()

    def _track_stall(self) -> None:
        answered = self._answered_ops()
        progressed, self._answered = answered != self._answered, answered
        if not self.waiting:
            self._stalled_since = None
        elif progressed or self._stalled_since is None:
            self._stalled_since = self.clock()

    def _observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self.waiting is None:
            return []
        return [Observation(self.waiting, {"mountpoint": self.mountpoint})]

    def _observe_stall(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self.waiting is None:
            return []
        return [Observation(round(self.stalled_seconds, 3), {"mountpoint": self.mountpoint})]

    def status(self) -> dict[str, Any]:
        """``driver_stats.fuse``: ``waiting`` and ``stalled_seconds`` (for ``obsctl status --json``)."""
        if self.waiting is None:
            return {}
        return {"driver_stats": {"fuse": {"waiting": self.waiting,
                                          "stalled_seconds": round(self.stalled_seconds, 1)}}}
