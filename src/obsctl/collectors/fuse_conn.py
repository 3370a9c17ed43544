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
"""

from __future__ import annotations

import logging
import os
from typing import Iterable

from opentelemetry.metrics import CallbackOptions, Observation

from obsctl import mounttable
from obsctl.collectors import PollingCollector
from obsctl.instruments import Instruments

log = logging.getLogger(__name__)


class FuseConnCollector(PollingCollector):
    """``waiting`` of the mount's FUSE connection as an observable gauge.

    Args:
        instruments: where to register the gauge.
        mountpoint: absolute path of the mount.
        sys_path: the sysfs root (tests pass a fixture directory).
        mountinfo_path: the mount table (tests pass a fixture file).

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
    ) -> None:
        super().__init__(instruments)
        self.mountpoint = mountpoint
        self.sys_path = sys_path
        self.mountinfo_path = mountinfo_path
        self.connection: str | None = None
        self.waiting: int | None = None
        instruments.observable_gauge("obsctl_fuse_requests_waiting", self._observe)

    @property
    def connections_dir(self) -> str:
        return os.path.join(self.sys_path, "fs", "fuse", "connections")

    def _poll(self) -> None:
        """Find the mount's connection and read its ``waiting``."""
        self.waiting = None
        try:
            entry = mounttable.find_mount(self.mountpoint, path=self.mountinfo_path)
        except (OSError, ValueError) as exc:
            log.debug("mount table %s: %s", self.mountinfo_path, exc)
            return
        if entry is None or not mounttable.is_fuse(entry):
            self.connection = None
            return
        self.connection = mounttable.fuse_connection(entry)
        # None when fusectl is not mounted or the connection went away
        self.waiting = mounttable.fuse_waiting(entry, root=self.connections_dir)

    def _observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self.waiting is None:
            return []
        return [Observation(self.waiting, {"mountpoint": self.mountpoint})]
