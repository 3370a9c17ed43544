"""Bytes the driver process moved, from ``/proc/PID/io`` (any driver).

Source: ``/proc/PID/io`` of the FUSE driver (proc(5)); a real copy taken
after the capture's operations is tests/fixtures/rclone/ok/io::

    rchar: 1318877
    wchar: 1301149
    syscr: 2125
    syscw: 364
    read_bytes: 0
    write_bytes: 49152
    cancelled_write_bytes: 0

``rchar`` / ``wchar``: bytes the process passed to read(2)/write(2)-like
syscalls (sockets, /dev/fuse, cache files alike), cumulative since the
process started. Each byte through the mount crosses two of them (S3 socket
and /dev/fuse; the fixture above is after a 1 MiB read plus a 200000-byte
write: rchar 1318877, wchar 1301149), plus HTTP and FUSE headers, so it is a
driver-activity measure, not "bytes read through the mount".

Recorded as the observable counter ``obsctl_driver_io_bytes`` (Prometheus:
``obsctl_driver_io_bytes_total``) with ``direction`` = ``read`` (rchar) |
``write`` (wchar) plus ``bucket``, ``impl``. It is cumulative across driver
restarts: when the PID changes, the last values of the previous PID are
added to a base, so the series never goes down.

:meth:`ProcIoCollector.poll` reads the file and caches the values; the
callback (run by the SDK at export time, on the exporter's thread) only
returns the cached values, so it never touches /proc. Reading needs the
same user as the driver or root (``ptrace`` access mode); a missing or
unreadable file keeps the last values.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Observation

from obsctl.collectors import PollingCollector
from obsctl.instruments import Instruments

log = logging.getLogger(__name__)


def read_proc_io(path: str) -> dict[str, int]:
    """Parse a ``/proc/PID/io`` file into ``{"rchar": N, ...}``."""
    out: dict[str, int] = {}
    with open(path, "r") as handle:
        for line in handle:
            key, _sep, value = line.partition(":")
            value = value.strip()
            if value.isdigit():
                out[key.strip()] = int(value)
    return out


class ProcIoCollector(PollingCollector):
    """``/proc/PID/io`` rchar/wchar of the driver as an observable counter.

    Args:
        instruments: where to register the observable counter.
        pid_getter: returns the current driver PID, or None when no driver runs.
        proc: the proc file system root (tests pass a fixture directory).

    Attributes:
        read_bytes: cumulative rchar over all driver PIDs seen.
        write_bytes: cumulative wchar over all driver PIDs seen.
        pid: the PID read last.
    """

    def __init__(
        self,
        instruments: Instruments,
        pid_getter: Callable[[], int | None],
        proc: str = "/proc",
    ) -> None:
        super().__init__(instruments)
        self.pid_getter = pid_getter
        self.proc = proc
        self.pid: int | None = None
        self._base_read = 0
        self._base_write = 0
        self._cur_read = 0
        self._cur_write = 0
        instruments.observable_counter("obsctl_driver_io_bytes", self._observe)

    @property
    def read_bytes(self) -> int:
        return self._base_read + self._cur_read

    @property
    def write_bytes(self) -> int:
        return self._base_write + self._cur_write

    def _poll(self) -> None:
        """Read ``/proc/PID/io`` of the current driver once."""
        pid = self.pid_getter()
        if pid is None:
            return
        try:
            values = read_proc_io(os.path.join(self.proc, str(pid), "io"))
        except OSError as exc:
            log.debug("/proc/%s/io: %s", pid, exc)
            return
        rchar = values.get("rchar")
        wchar = values.get("wchar")
        if rchar is None or wchar is None:
            return
        if pid != self.pid:
            # a new driver process: keep what the previous one did
            self._base_read += self._cur_read
            self._base_write += self._cur_write
            self._cur_read = self._cur_write = 0
            self.pid = pid
        # within one process the values only grow; never go down
        self._cur_read = max(self._cur_read, rchar)
        self._cur_write = max(self._cur_write, wchar)

    def status(self) -> dict[str, Any]:
        """``driver_io``: the driver's cumulative rchar / wchar (bytes, over every driver pid seen)."""
        return {"driver_io": {"read_bytes": self.read_bytes, "write_bytes": self.write_bytes}}

    def _observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        base = self.instruments.attrs.base()
        return [
            Observation(self.read_bytes, {"direction": "read", **base}),
            Observation(self.write_bytes, {"direction": "write", **base}),
        ]
