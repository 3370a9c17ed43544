"""Is the mount up and answering? ``obsctl_mount_up`` from the one bounded health probe.

Source: :class:`obsctl.health.Probe` (the mount's line in
/proc/self/mountinfo, ``missing`` without one; a ``statvfs(2)`` of the
mountpoint, ``stale`` on ENOTCONN / ECONNABORTED; no answer within
``timeout`` s: ``hung``; answering, but requests waiting unanswered past
the mount's stall bound (``stall_timeout_seconds``, default
:data:`obsctl.config.DEFAULT_STALL_SECONDS`): ``stalled``; real
mount-table copies in tests/fixtures/mountinfo/).
The words are :mod:`obsctl.health`'s, the same ``obsctl status --all``, the
fuse_mount_info module and ``obsctl systemd check`` report.

Recorded as the observable gauge ``obsctl_mount_up`` {bucket, impl,
mountpoint}: 1 when :attr:`MountProbe.health` is ``ok``, 0 for any other
word. Nothing is reported before the first poll.

:class:`MountProbe` is the one owner of "is the mount up" for a running
mount: the gauge and the ``health`` of the state file (``obsctl status``)
both read :attr:`MountProbe.health`. Besides its own polls, the supervisor
reports the phases in which the mount cannot serve, the moment they begin,
through :meth:`MountProbe.mark` (``down`` once the driver has exited,
through the restart backoff and the restart's ready wait, ``stopping``
during shutdown), so the gauge says 0 from the next collection on.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Observation

from obsctl import health as health_words
from obsctl import mounttable
from obsctl.collectors import PollingCollector
from obsctl.instruments import Instruments

log = logging.getLogger(__name__)


class MountProbe(PollingCollector):
    """Health of one mount, bounded by a timeout.

    Args:
        instruments: where to register the gauge.
        mountpoint: absolute path of the mount.
        timeout: seconds to wait for the stat.
        mountinfo_path: the mount table (tests pass a fixture file).
        stat: the probe call (tests pass one that raises or blocks). Default
            :data:`obsctl.mounttable.HEALTH_PROBE` (``statvfs``).

    Attributes:
        health: ``ok`` | ``stalled`` | ``stale`` | ``missing`` | ``hung`` | ``error`` from
            a poll, ``down`` | ``stopping`` (or any other word) from
            :meth:`mark`, or None before the first poll.
    """

    def __init__(
        self,
        instruments: Instruments,
        mountpoint: str,
        timeout: float = 2.0,
        mountinfo_path: str = mounttable.MOUNTINFO_PATH,
        stat: Callable[[str], object] = mounttable.HEALTH_PROBE,
        stalled: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__(instruments)
        #: True while the mount's requests wait unanswered past the bound
        #: (:attr:`obsctl.collectors.fuse_conn.FuseConnCollector.stalled`): an ``ok`` probe is then ``stalled``.
        self.stalled = stalled
        self.mountpoint = mountpoint
        self.timeout = timeout
        self.mountinfo_path = mountinfo_path
        self.stat = stat
        self.health: str | None = None
        self._probe = health_words.Probe(mountpoint, timeout, mountinfo_path, stat)
        self._lock = threading.Lock()
        self._epoch = 0  # bumped by mark(); a poll that started before a mark is dropped
        instruments.observable_gauge("obsctl_mount_up", self._observe)

    @property
    def up(self) -> bool:
        """True when :attr:`health` is ``ok`` (the gauge's 1)."""
        return self.health == health_words.OK

    def mark(self, health: str) -> None:
        """Set :attr:`health` without probing: the supervisor knows the mount cannot serve (``down``, ``stopping``).

        The value stays until the next :meth:`poll`, which the supervisor
        runs only once the mount is ready again.
        """
        with self._lock:
            self._epoch += 1
            self.health = health

    def _poll(self) -> None:
        """Probe once (:meth:`obsctl.health.Probe.check`, at most ``timeout`` seconds).

        A :meth:`mark` made while this poll ran wins: the poll's result,
        which may predate it, is dropped.
        """
        epoch = self._epoch
        word = self._probe.check()
        if word == health_words.OK and self.stalled is not None and self.stalled():
            word = health_words.STALLED
        self._set(epoch, word)

    def _set(self, epoch: int, health: str) -> None:
        with self._lock:
            if epoch == self._epoch:
                self.health = health

    def status(self) -> dict[str, Any]:
        """``health``: :attr:`health` (what ``obsctl_mount_up`` is computed from)."""
        return {"health": self.health}

    def _observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self.health is None:
            return []
        return [Observation(1 if self.health == health_words.OK else 0,
                            self.instruments.attrs.with_mountpoint())]
