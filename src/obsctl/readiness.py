"""Is the freshly spawned driver's mount ready? Wait for it, bounded by the ready timeout and by a stop request.

Ready = the mount is in /proc/self/mountinfo with the driver's mount type,
its root answers a stat and a directory read, and a driver with its own
start-up check (s3fs's bucket check) logged that it passed. Every wait in
here ends within :data:`STEP` s of a stop request (SIGTERM / SIGINT), of the
driver's exit, and of the deadline, so neither a signal nor the ready
timeout is overshot by more than a fraction of a second.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from obsctl import health, mounttable
from obsctl.config import MountSpec
from obsctl.drivers import Driver, LaunchPlan
from obsctl.logpump import LogPump
from obsctl.procutil import describe_exit

#: How often the mount table is read while waiting for the mount (s).
POLL = 0.005
#: The longest any single wait in here lasts before stop / exit / deadline are looked at again (s).
STEP = 0.05


class MountError(RuntimeError):
    """The mount could not be brought up; ``str()`` says why, with the driver's last error."""


class Interrupted(MountError):
    """A stop was requested (SIGTERM / SIGINT) before the mount was ready."""


class EndpointProbe:
    """One TCP connect to the S3 endpoint, in a thread, while the driver starts.

    Drivers retry a refused connection for a long time without saying so
    (rclone logs nothing for minutes); this turns "connection refused" or
    "no route" into an immediate, named failure. A connect that merely takes
    long is not an error (the ready timeout decides).

    Attributes:
        error: ``None``, or the OS error text (``Connection refused``).
    """

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        parts = urlsplit(url)
        self.address = (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
        self.timeout = timeout
        self.error: str | None = None
        threading.Thread(target=self._connect, name="endpoint-probe", daemon=True).start()

    def _connect(self) -> None:
        try:
            socket.create_connection(self.address, timeout=self.timeout).close()
        except socket.timeout:
            return
        except socket.gaierror as exc:
            self.error = f"cannot resolve {self.address[0]}: {exc.strerror}"
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL):
                self.error = os.strerror(exc.errno)


class ReadyWait:
    """Wait until one spawned driver's mount is ready.

    Args:
        spec: the mount spec (mountpoint, endpoint, ``ready_timeout_seconds``).
        driver: the driver (start-up verdict, :meth:`Driver.verify`).
        plan: its launch plan (the expected mount type).
        proc: the running driver.
        pump: its log pump (verdict, last error).
        stop: set when a stop was requested.
        mountinfo_path: the mount table (tests inject a file).
    """

    def __init__(self, spec: MountSpec, driver: Driver, plan: LaunchPlan, proc: subprocess.Popen[bytes],
                 pump: LogPump, stop: threading.Event, mountinfo_path: str = mounttable.MOUNTINFO_PATH) -> None:
        self.spec, self.driver, self.plan, self.proc, self.pump, self.stop = spec, driver, plan, proc, pump, stop
        self.mountinfo_path = mountinfo_path
        self.deadline = time.monotonic() + spec.ready_timeout_seconds
        self.endpoint = EndpointProbe(spec.endpoint) if spec.endpoint else None

    def failure(self, what: str) -> str:
        """``what`` followed by the driver's last error line."""
        last = self.pump.last_error()
        return f"{what}: {last}" if last else what

    def _check(self) -> None:
        """Raise at once on a stop request, a driver exit, a failed start-up check, a refused endpoint."""
        if self.stop.is_set():
            raise Interrupted("stop requested before the mount was ready")
        if self.pump.verdict == "failed":
            time.sleep(0.05)  # the lines that explain it follow the verdict line
            raise MountError(self.failure(f"{self.driver.name} failed its start-up check of the bucket"))
        if self.endpoint is not None and self.endpoint.error:
            raise MountError(self.failure(
                f"cannot connect to the S3 endpoint {self.spec.endpoint}: {self.endpoint.error}"))
        code = self.proc.poll()
        if code is not None:
            self.pump.join(1)
            raise MountError(self.failure(f"{self.driver.name} {describe_exit(code)} before the mount was ready"))

    def _timeout(self, what: str) -> MountError:
        hint = f" (is the endpoint {self.spec.endpoint} reachable?)" if self.spec.endpoint else ""
        return MountError(self.failure(
            f"{self.driver.name}: {what} within the ready timeout of {self.spec.ready_timeout_seconds:g} s{hint}"))

    def live_entry(self) -> Any:
        """The driver's mountinfo entry at the mountpoint, or None."""
        try:
            entry = mounttable.find_mount(self.spec.mountpoint, path=self.mountinfo_path)
        except (OSError, ValueError):
            return None
        if entry is None or not mounttable.is_fuse(entry):
            return None
        if self.plan.fstype and entry.fstype != self.plan.fstype:
            return None
        return entry

    def wait(self) -> None:
        """Block until ready.

        Raises:
            Interrupted: a stop was requested.
            MountError: the driver exited, failed its check, the root could
                not be read, or the deadline passed. The driver is left
                running: the caller stops it.
        """
        while self.live_entry() is None:
            self._check()
            if time.monotonic() > self.deadline:
                raise self._timeout(f"the mount did not appear at {self.spec.mountpoint}")
            time.sleep(POLL)
        self._check_answers()
        # Drivers that check the bucket after the mount appears (s3fs): wait for that check.
        while not self.pump.verdict_event.wait(STEP):
            self._check()
            if time.monotonic() > self.deadline:
                raise self._timeout("the bucket check did not finish")
        self._check()
        if self.pump.verdict != "ok":
            raise MountError(self.failure(f"{self.driver.name} exited before its bucket check finished"))

    def _check_answers(self) -> None:
        """Stat the mount root and read one directory entry (a :class:`obsctl.health.Attempt`), until the deadline."""
        def _probe() -> bool:
            os.stat(self.spec.mountpoint)
            with os.scandir(self.spec.mountpoint) as entries:
                return next(entries, None) is None

        attempt = health.Attempt(_probe, "ready-probe")
        while not attempt.done(STEP):
            self._check()
            if time.monotonic() > self.deadline:
                raise self._timeout("the mount root did not answer a directory read")
        if attempt.error is None:
            problem = self.driver.verify(self.plan, bool(attempt.result))
            if problem:
                raise MountError(problem)
            return
        exc = attempt.error
        time.sleep(0.2)  # let the driver log why before we quote it
        self._check()
        raise MountError(self.failure(
            "the mount appeared but reading its root failed: "
            f"{os.strerror(getattr(exc, 'errno', None) or errno.EIO)}"))
