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
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

from obsctl import mounttable
from obsctl.collectors import collector_status
from obsctl.config import ConfigError, TelemetryConfig
from obsctl.procutil import pid_running
from obsctl.sources import kernel_source
from obsctl.statefile import remove_state, state_file_path, write_state
from obsctl.supervisor import generic_collectors


class Sidecar:
    """Observe the FUSE daemon ``pid`` serving ``mountpoint``.

    Args:
        pid: the driver's process id (must exist).
        mountpoint: where it mounted (must be a FUSE mount now).
        impl: label for ``impl`` (rclone, s3fs, generic ...).
        source: label for ``bucket`` (``s3://bucket/prefix`` or any text).
        telemetry: validated telemetry config.
        runtime_dir: where the state file goes.
        rc_url: rclone's ``--rc-addr`` URL, when rclone runs with ``--rc``.
        poll_interval: seconds between collector polls.

    Raises:
        ConfigError: no such process, or no FUSE mount at ``mountpoint``.
    """

    def __init__(self, pid: int, mountpoint: str, impl: str, source: str, telemetry: TelemetryConfig,
                 runtime_dir: str, rc_url: str | None = None, poll_interval: float = 2.0) -> None:
        self.pid = pid
        self.mountpoint = os.path.normpath(os.path.abspath(mountpoint))
        if not pid_running(pid):
            raise ConfigError(f"--pid {pid}: no such process")
        entry = mounttable.find_mount(self.mountpoint)
        if entry is None or not mounttable.is_fuse(entry):
            raise ConfigError(f"{self.mountpoint} is not a FUSE mount ({entry.fstype if entry else 'nothing mounted'})")
        self.impl = impl
        self.source = source
        self.bucket = source[len("s3://"):].partition("/")[0] if source.startswith("s3://") else source
        self.telemetry_cfg = telemetry
        self.rc_url = rc_url
        self.poll_interval = poll_interval
        self.state_path = state_file_path(runtime_dir, self.mountpoint)
        self.stop_requested = threading.Event()
        self.started_at = time.time()

    def _pid(self) -> int | None:
        return self.pid if pid_running(self.pid) else None

    def run(self) -> int:
        """Observe until SIGTERM/SIGINT (returns 0) or the process exits (returns 1)."""
        from obsctl.instruments import MountAttributes
        from obsctl.telemetry import Telemetry

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_args: self.stop_requested.set())
        self.telemetry = Telemetry(self.telemetry_cfg, MountAttributes(self.bucket, self.impl, self.mountpoint),
                                   resource_attributes={"obsctl.mount.source": self.source,
                                                        "obsctl.mount.impl": self.impl,
                                                        "obsctl.sidecar": "true"})
        ins = self.telemetry.instruments
        self.proc_io, self.probe, collectors = generic_collectors(ins, self.mountpoint, self._pid)
        self.collectors = collectors
        kernel, self.sources = kernel_source(ins, self.impl, self.mountpoint, driver_log=False)
        collectors.append(kernel)
        if self.rc_url:
            from obsctl.collectors.rclone_rc import RcloneRcCollector

            user, password = os.environ.get("RCLONE_RC_USER"), os.environ.get("RCLONE_RC_PASS")
            collectors.append(RcloneRcCollector(ins, self.rc_url, auth=(user, password) if user and password else None))
        print(f"obsctl: observing {self.mountpoint} ({self.impl}, pid {self.pid})", file=sys.stderr, flush=True)
        code = 0
        first = True
        while True:
            for collector in collectors:
                collector.poll()
            self._write_state()
            if first:
                self.telemetry.flush()
                first = False
            if self._pid() is None:
                print(f"obsctl: pid {self.pid} exited; {self.mountpoint} is {self.probe.health}", file=sys.stderr)
                code = 1
                break
            if self.stop_requested.wait(self.poll_interval):
                break
        for collector in collectors:
            collector.close()
        remove_state(self.state_path)
        self.telemetry.shutdown()
        return code

    def _write_state(self) -> None:
        totals = self.telemetry.instruments.totals
        state: dict[str, Any] = {
            "name": None, "mountpoint": self.mountpoint, "source": self.source, "bucket": self.bucket,
            "impl": self.impl, "state": "observing", "pid": os.getpid(), "driver_pid": self._pid(),
            "driver_start": None,
            "started_at": self.started_at,
            "read_bytes": int(totals.get("obsctl_fs_read_bytes", 0)),
            "write_bytes": int(totals.get("obsctl_fs_write_bytes", 0)),
            "errors": int(totals.get("obsctl_errors", 0)),
            **collector_status(self.collectors),  # health, driver_io, driver_stats
            "telemetry_mode": self.telemetry_cfg.mode,
            "last_export": self.telemetry.export_status.as_dict(),
            "live": self.telemetry.instruments.live(),
            "sources": self.sources.as_dict(),
        }
        write_state(self.state_path, state)
