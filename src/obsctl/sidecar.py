"""``obsctl sidecar``: observe a FUSE mount that something else started.

For mounts from fstab, another tool or a hand-run driver (DESIGN section 1):
the same collectors and telemetry as ``obsctl mount``, without spawning,
restarting or unmounting anything. What it can see:

* every driver: /proc/PID/io (``obsctl_driver_io_bytes_total``), the FUSE
  connection's ``waiting`` and the bounded stat probe (``obsctl_mount_up``);
* rclone started with ``--rc``: core/stats, vfs/stats and /metrics through
  ``--rc-url`` (credentials from RCLONE_RC_USER / RCLONE_RC_PASS, as rclone
  itself reads them);
* every driver, from the kernel (Linux 6.18+, collectors/fuse_trace): FUSE
  operations, their latency, errors by errno and read/write bytes, as deep
  as for obsctl's own mounts;
* not the driver's log (it belongs to whoever started the driver), so on
  older kernels no per-operation FUSE latency or byte counts.

It runs until SIGTERM/SIGINT (exit 0) or until the observed process exits
(exit 1, after the final export); it writes a state file like ``obsctl
mount`` so ``obsctl status`` lists the mount with state ``observing``.
SIGHUP re-reads the telemetry config as ``obsctl mount`` does
(:meth:`obsctl.observer.MountObserver.reload_from`, the one implementation):
exporters and collectors rebuilt, the observed driver untouched, a file that
does not load keeping the settings in force.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Callable

from obsctl import mounttable
from obsctl.config import DEFAULT_STALL_SECONDS, TelemetryConfig
from obsctl.drivers import DRIVERS, LaunchPlan, get_driver
from obsctl.errors import ConfigError
from obsctl.observer import DriverConnection, MountLabels, MountObserver
from obsctl.procutil import pid_running, start_time

#: How often the observed process and a stop request are checked (s).
WATCH_INTERVAL = 0.1


class Sidecar:
    """Observe the FUSE daemon ``pid`` serving ``mountpoint``.

    Args:
        pid: the driver's process id (must exist).
        mountpoint: where it mounted (must be a FUSE mount now).
        impl: label for ``impl`` (rclone, s3fs, generic ...); a driver obsctl
            knows also brings its own polling collectors (rclone's rc API with
            ``rc_url``).
        source: label for ``bucket`` (``s3://bucket/prefix`` or any text).
        telemetry: validated telemetry config.
        runtime_dir: where the state file goes.
        rc_url: rclone's ``--rc-addr`` URL, when rclone runs with ``--rc``
            (user and password from RCLONE_RC_USER / RCLONE_RC_PASS, as rclone reads them).
        poll_interval: seconds between collector polls.
        stall_seconds: the mount's stall bound (s, > 0): requests waiting unanswered longer make
            its health ``stalled`` (``--stall-timeout``; default
            :data:`obsctl.config.DEFAULT_STALL_SECONDS`).
        telemetry_loader: re-reads the telemetry config on SIGHUP (raises ConfigError or
            OSError); None: nothing to re-read.

    Raises:
        ConfigError: no such process, or no FUSE mount at ``mountpoint``.
    """

    def __init__(self, pid: int, mountpoint: str, impl: str, source: str, telemetry: TelemetryConfig,
                 runtime_dir: str, rc_url: str | None = None, poll_interval: float = 2.0,
                 stall_seconds: float = DEFAULT_STALL_SECONDS,
                 telemetry_loader: Callable[[], TelemetryConfig] | None = None) -> None:
        self.pid = pid
        self.mountpoint = os.path.normpath(os.path.abspath(mountpoint))
        if not pid_running(pid):
            raise ConfigError(f"--pid {pid}: no such process")
        entry = mounttable.find_mount(self.mountpoint)
        if entry is None or not mounttable.is_fuse(entry):
            raise ConfigError(f"{self.mountpoint} is not a FUSE mount ({entry.fstype if entry else 'nothing mounted'})")
        if rc_url and impl != "rclone":
            raise ConfigError(f"--rc-url is rclone's remote control API: it needs --impl rclone, not {impl}")
        self.impl = impl
        self.driver = get_driver(impl) if impl in DRIVERS else None
        self.rc_url = rc_url
        try:  # the driver's own label (the S3 bucket, juicefs's volume); any other text as written
            bucket = self.driver.bucket_label(source) if self.driver else source
        except ValueError:
            bucket = source
        labels = MountLabels(self.mountpoint, source, bucket, impl, resource={"obsctl.sidecar": "true"})
        #: Telemetry, collectors and the state file (state ``observing``): the same as ``obsctl mount``'s.
        self.observer = MountObserver(
            labels, telemetry, runtime_dir, state="observing", poll_interval=poll_interval, driver_log=False,
            driver_answers=self.driver.protocol_answers if self.driver else frozenset(),
            stall_seconds=stall_seconds)
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self.telemetry_loader = telemetry_loader

    def _pid(self) -> int | None:
        return self.pid if pid_running(self.pid) else None

    def connection(self) -> DriverConnection:
        """The observed driver: its pid, and for rclone with ``rc_url`` the rc API (as
        :meth:`obsctl.drivers.rclone.RcloneDriver.polling_collectors` reads it from a plan)."""
        plan = LaunchPlan(argv=[], env={}, fstype=None)
        if self.rc_url:
            user, password = os.environ.get("RCLONE_RC_USER"), os.environ.get("RCLONE_RC_PASS")
            plan.extras.update(rc_url=self.rc_url, rc_auth=(user, password) if user and password else None)
        return DriverConnection(self._pid, start_time(self.pid), self.driver, plan)

    def run(self) -> int:
        """Observe until SIGTERM/SIGINT (returns 0) or the process exits (returns 1); SIGHUP reloads
        the telemetry config (:meth:`obsctl.observer.MountObserver.reload_from`)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_args: self.stop_requested.set())
        signal.signal(signal.SIGHUP, lambda *_args: self.reload_requested.set())
        observer = self.observer
        observer.attach(self.connection())
        observer.start()
        observer.ready_at = time.time()
        print(f"obsctl: observing {self.mountpoint} ({self.impl}, pid {self.pid})", file=sys.stderr, flush=True)
        observer.poll()
        observer.write_state()
        observer.start_polling(lambda: True)
        code = 0
        while not self.stop_requested.wait(WATCH_INTERVAL):
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                observer.reload_from(self.telemetry_loader)
            if self._pid() is None:
                observer.stop_polling()
                observer.poll()
                print(f"obsctl: pid {self.pid} exited; {self.mountpoint} is {observer.probe.health}",
                      file=sys.stderr)
                code = 1
                break
        observer.close()
        return code
