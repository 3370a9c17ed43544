"""A mount's health: one vocabulary, one bounded probe, one "wait until healthy" loop.

Every reader of "does this mount answer" uses :class:`Probe` (or
:func:`probe`): the supervisor's and the side-car's ``obsctl_mount_up``
(:class:`obsctl.collectors.probe.MountProbe`), ``obsctl status`` for a dead
writer (:mod:`obsctl.statefile`), ``obsctl status --all`` and the
fuse_mount_info module (:mod:`obsctl.inventory`), the engine behind
fuse_mount and ``obsctl systemd install`` (:mod:`obsctl.engine`) and the
health-check unit (``obsctl systemd check``). So a driver stopped with
SIGSTOP reads :data:`HUNG` in all of them.

The words:

* :data:`OK`: in the mount table and ``statvfs(2)`` answered (any error but
  ENOTCONN / ECONNABORTED counts: the driver did answer);
* :data:`STALE`: in the mount table, the probe failed with ENOTCONN /
  ECONNABORTED: the driver is gone (:data:`obsctl.mounttable.STALE_ERRNOS`);
* :data:`HUNG`: in the mount table, the probe did not return within the
  timeout: the driver is alive but does not answer (stopped, deadlocked);
* :data:`STALLED`: in the mount table and ``statvfs`` answers, but FUSE
  requests have waited longer than
  :data:`obsctl.config.DEFAULT_STALL_SECONDS` with none answered (a
  backend that is down while the driver retries); only the supervisor's and
  the side-car's probe know it (it needs the connection's ``waiting`` over
  time, :class:`obsctl.collectors.fuse_conn.FuseConnCollector`);
* :data:`MISSING`: not in the mount table;
* :data:`ERROR`: the probe itself failed (unreadable mount table);
* the supervisor's own words for phases in which the mount cannot serve,
  set without probing (:meth:`obsctl.collectors.probe.MountProbe.mark`):
  :data:`DOWN` (the driver exited; through unmount, backoff and restart)
  and :data:`STOPPING` (shutdown);
* :data:`ORPHANED`: a mount that answers while the obsctl that ran it is
  dead (:func:`obsctl.statefile.read_states`).

The classification (mount table, then one ``statvfs``) is
:func:`obsctl.mounttable.probe_health`; this module bounds it in time.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from obsctl import mounttable

log = logging.getLogger(__name__)

OK = "ok"
STALE = "stale"
HUNG = "hung"
STALLED = "stalled"
MISSING = "missing"
ERROR = "error"
DOWN = "down"
STOPPING = "stopping"
ORPHANED = "orphaned"

#: In the mount table but not answering: the engine and the check unit unmount / restart these.
UNANSWERED = frozenset({STALE, HUNG})

#: Seconds between two probes of :func:`wait_until_ok`.
WAIT_INTERVAL = 0.5
#: Seconds a mount has, after ``systemctl start`` / ``restart`` returned, to answer
#: (the unit is Type=notify: READY=1 is sent after the mount answered, so this covers
#: only a lag; the engine and ``obsctl systemd check`` both wait this long).
SETTLE_SECONDS = 10.0


class Attempt:
    """One call of ``fn`` in a daemon thread: a hung FUSE request never blocks the caller or its exit.

    Attributes:
        result: what ``fn`` returned (once :meth:`done`).
        error: the exception ``fn`` raised, or None.
    """

    def __init__(self, fn: Callable[[], Any], name: str) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name=name, daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            self.error = exc

    def done(self, timeout: float | None = 0.0) -> bool:
        """Wait up to ``timeout`` seconds; True when ``fn`` has returned or raised."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


class Probe:
    """The bounded health probe of one mountpoint (:func:`obsctl.mounttable.probe_health` in an :class:`Attempt`).

    While an earlier probe is still blocked in the kernel, :meth:`check`
    starts no other one (they would block too and pile up threads) and
    answers :data:`HUNG` at once.

    Args:
        mountpoint: absolute path.
        timeout: seconds to wait for ``stat`` (callers' defaults: the
            supervisor 0.8 s, ``obsctl status`` for a dead writer 1 s, ``status --all``,
            the engine and the check unit 5 s).
        mountinfo_path: the mount table (tests pass a fixture file).
        stat: the probe call, default :data:`obsctl.mounttable.HEALTH_PROBE` (``statvfs``).
    """

    def __init__(self, mountpoint: str, timeout: float, mountinfo_path: str = mounttable.MOUNTINFO_PATH,
                 stat: Callable[[str], object] = mounttable.HEALTH_PROBE) -> None:
        self.mountpoint = mountpoint
        self.timeout = timeout
        self.mountinfo_path = mountinfo_path
        self.stat = stat
        self._attempt: Attempt | None = None

    def check(self, mounts: list[Any] | None = None) -> str:
        """:data:`OK`, :data:`STALE`, :data:`HUNG`, :data:`MISSING` or :data:`ERROR`, within ``timeout`` s.

        ``mounts``: an already parsed mount table (read once for many mounts).
        """
        if self._attempt is not None and not self._attempt.done():
            return HUNG
        try:
            table = mounts if mounts is not None else mounttable.read_mounts(self.mountinfo_path)
        except (OSError, ValueError):
            log.debug("mount table %s unreadable", self.mountinfo_path, exc_info=True)
            return ERROR
        if mounttable.find_mount(self.mountpoint, mounts=table) is None:
            return MISSING
        attempt = Attempt(lambda: mounttable.probe_health(self.mountpoint, path=self.mountinfo_path,
                                                          mounts=table, stat=self.stat), "obsctl-probe")
        self._attempt = attempt
        if not attempt.done(self.timeout):
            return HUNG
        self._attempt = None
        if attempt.error is not None:
            log.debug("probe of %s failed: %s", self.mountpoint, attempt.error)
            return ERROR
        return str(attempt.result)


def probe(mountpoint: str, timeout: float, mountinfo_path: str = mounttable.MOUNTINFO_PATH,
          mounts: list[Any] | None = None, stat: Callable[[str], object] = mounttable.HEALTH_PROBE) -> str:
    """One :meth:`Probe.check` of ``mountpoint`` (``timeout`` in seconds)."""
    return Probe(mountpoint, timeout, mountinfo_path, stat).check(mounts)


def wait_until_ok(check: Callable[[], str], settle_seconds: float = SETTLE_SECONDS,
                  sleep: Callable[[float], None] = time.sleep) -> str:
    """Call ``check`` until it says :data:`OK` or ``settle_seconds`` passed; returns its last word.

    The one "started, now wait until it answers" loop: the engine after
    ``systemctl start|restart`` and ``obsctl systemd check`` after a repair.
    ``check`` runs at least once, then every :data:`WAIT_INTERVAL` s.
    """
    deadline = time.monotonic() + settle_seconds
    while True:
        word = check()
        if word == OK or time.monotonic() >= deadline:
            return word
        sleep(WAIT_INTERVAL)
