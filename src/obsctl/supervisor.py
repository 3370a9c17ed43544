"""Run one FUSE driver: spawn, wait for the mount, observe, restart with backoff, shut down.

The lifecycle (DESIGN section 1; what happens on each fault: docs/operations.md):

1. recovery and preflight: a mount that obsctl's own state file says a
   now-dead supervisor started at this mountpoint is recovered
   (:func:`obsctl.unmount.recover_orphan`); then the mountpoint must be an
   existing directory with nothing mounted on it
   (:func:`obsctl.unmount.preflight`, exit status 2 otherwise);
2. spawn the driver (credentials in its environment only, its own session,
   ``PR_SET_PDEATHSIG`` = SIGTERM so it unmounts and exits if obsctl is
   killed), start the log pump (:mod:`obsctl.logpump`), and only then import
   the OpenTelemetry SDK, in a thread, so its import time overlaps the
   driver's start;
3. ready (:mod:`obsctl.readiness`), then sd_notify READY=1 and a ``mount``
   span; the first metric export follows about a second later;
4. steady state: the main thread watches the driver every
   :data:`WATCH_INTERVAL` s; a poller thread polls the collectors and
   rewrites the state file (:mod:`obsctl.statefile`) every ``poll_interval``
   s, so a collector blocked on a hung driver never delays a stop. A driver that dies: the mount's
   health (:class:`obsctl.collectors.probe.MountProbe`, the one owner of
   ``obsctl_mount_up``) becomes ``down`` at once and stays so through the
   unmount of the dead mount, the backoff and the restart's ready wait;
5. SIGTERM / SIGINT / SIGHUP, in any phase, within :data:`WATCH_INTERVAL`
   s (ready wait: :data:`obsctl.readiness.STEP` s): unmount
   (:func:`obsctl.unmount.unmount`: a busy mount is retried for
   :data:`obsctl.unmount.BUSY_WAIT` s, naming what holds it, then detached
   lazily), stop the driver, drain its log, poll the collectors a last
   time, export the final values within the export timeout, exit 0.

Failure before ready is fail-closed: the driver is stopped, nothing stays
mounted, and :class:`MountError` carries the driver's own last error line.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable

from obsctl import mounttable, statefile
from obsctl.config import MountSpec, TelemetryConfig
from obsctl.credentials import Credentials
from obsctl.drivers import Driver, LaunchPlan, PlanContext
from obsctl.logpump import LogPump
from obsctl.procutil import describe_exit, pid_running, start_time
from obsctl.readiness import Interrupted, MountError, ReadyWait
from obsctl.sources import kernel_source
from obsctl.statefile import state_file_path
from obsctl.unmount import (
    DETACHED, FAILED, MountpointError, abort, ensure_fusectl, preflight, recover_orphan, stop_process,
    unmount, unmount_once, warn,
)

__all__ = ["MountError", "Interrupted", "Supervisor", "generic_collectors", "pid_running", "state_file_path",
           "sd_notify"]

log = logging.getLogger("obsctl")

#: How often the driver process and a stop request are checked (s).
WATCH_INTERVAL = 0.05
#: How long the steady-state stat probe may block on a hung driver (s): a
#: poll never delays a stop by more than this.
PROBE_TIMEOUT = 0.8
#: How long a failed start waits for the telemetry import to finish, to
#: record the failed ``mount`` span (s). Spawn errors do not wait at all.
FAILED_SPAN_WAIT = 2.0
#: Longest restart backoff (s); the n-th restart waits min(2**(n-1), this).
MAX_BACKOFF = 30.0

#: prctl(2) PR_SET_PDEATHSIG, from <linux/prctl.h>.
_PR_SET_PDEATHSIG = 1
try:
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - not Linux/glibc
    _PRCTL = None


def _die_with_parent(parent: int) -> Callable[[], None]:
    """The ``preexec_fn`` that makes the driver get SIGTERM when obsctl (pid ``parent``) dies, even by SIGKILL.

    prctl(PR_SET_PDEATHSIG) survives execve(2) and fires when the thread that
    forked the child exits; the supervisor spawns only from its main thread.
    If obsctl died between the fork and the prctl, the child is already
    reparented (getppid differs) and exits at once. Costs about 8 ms per
    spawn (fork instead of vfork; measured in a process of obsctl's size).
    """
    def preexec() -> None:
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
            if os.getppid() != parent:
                os._exit(1)
    return preexec


def sd_notify(message: str) -> bool:
    """Send ``message`` (``READY=1``, ``STOPPING=1``, ``STATUS=...``) to systemd.

    Implements the sd_notify(3) datagram protocol on ``$NOTIFY_SOCKET`` (a path,
    or ``@name`` for the abstract namespace). Returns False when not run by
    systemd (no NOTIFY_SOCKET) or the send failed.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)
        return True
    except OSError as exc:
        log.warning("sd_notify(%s) failed: %s", message.split("=")[0], exc)
        return False


def generic_collectors(instruments: Any, mountpoint: str, pid_getter: Callable[[], int | None],
                       probe_timeout: float = 2.0,
                       mountinfo_path: str = mounttable.MOUNTINFO_PATH) -> tuple[Any, Any, list[Any]]:
    """The collectors that observe any FUSE driver: /proc/PID/io, the FUSE
    connection's ``waiting``, the bounded stat probe.

    The one list the supervisor and ``obsctl sidecar`` attach to every mount.
    ``probe_timeout`` (s) and ``mountinfo_path`` are the probe's
    (:class:`~obsctl.collectors.probe.MountProbe`).
    Returns ``(proc_io, probe, [proc_io, fuse_conn, probe])``.
    """
    from obsctl.collectors.fuse_conn import FuseConnCollector
    from obsctl.collectors.probe import MountProbe
    from obsctl.collectors.proc_io import ProcIoCollector

    proc_io = ProcIoCollector(instruments, pid_getter)
    probe = MountProbe(instruments, mountpoint, timeout=probe_timeout, mountinfo_path=mountinfo_path)
    return proc_io, probe, [proc_io, FuseConnCollector(instruments, mountpoint), probe]


class Supervisor:
    """Supervise one mount from spawn to final export.

    Args:
        spec: the validated mount spec.
        telemetry: the validated telemetry config.
        credentials: the S3 credentials, or None (generic driver).
        runtime_dir: where the state file lives (``/run/obsctl``).
        driver: the driver to run.
        poll_interval: seconds between collector polls and state-file writes.
        mountinfo_path: the mount table (unit tests inject a file that a
            stand-in driver and a stand-in fusermount3 edit).
    """

    def __init__(self, spec: MountSpec, telemetry: TelemetryConfig, credentials: Credentials | None,
                 runtime_dir: str, driver: Driver, poll_interval: float = 2.0,
                 mountinfo_path: str = mounttable.MOUNTINFO_PATH) -> None:
        self.mountinfo_path = mountinfo_path
        self.spec = spec
        self.telemetry_cfg = telemetry
        self.credentials = credentials
        self.runtime_dir = runtime_dir
        self.driver = driver
        self.poll_interval = poll_interval
        self.bucket = spec.bucket_and_prefix()[0]
        self.stop_requested = threading.Event()
        self.signals = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.driver_start: int | None = None
        self.plan: LaunchPlan | None = None
        self.pump: LogPump | None = None
        self.telemetry: Any = None
        self._telemetry_error: BaseException | None = None
        self._telemetry_ready = threading.Event()
        self.polling: list[Any] = []
        self.generic_polling: list[Any] = []
        self.probe: Any = None
        self.proc_io: Any = None
        self.sources: Any = None
        self.state = "starting"
        self.restarts = 0
        self.started_at = time.time()
        self.ready_at: float | None = None
        self.state_path = state_file_path(runtime_dir, spec.mountpoint)
        self._first_export: threading.Timer | None = None
        self._poll_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._poller_stop = threading.Event()
        self._poller: threading.Thread | None = None

    # -- signals ---------------------------------------------------------
    def request_stop(self, *_args: Any) -> None:
        """Ask for an orderly shutdown (signal handler); a second request shortens the busy-unmount wait."""
        self.signals += 1
        self.stop_requested.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM / SIGINT / SIGHUP request an orderly shutdown."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self.request_stop)

    # -- spawn / ready ---------------------------------------------------
    def _spawn(self) -> int:
        """Start the driver and its log pump; returns the spawn time (time_ns).

        Raises:
            MountError: the binary is missing or not executable (at once).
            ConfigError: the driver refused the spec's options.
        """
        # Mode none opens no port at all, not even rclone's loopback rc API (PlanContext.listen).
        self.plan = self.driver.plan(self.spec, self.credentials, PlanContext.for_mount(self.telemetry_cfg))
        spawned = time.time_ns()
        try:
            self.proc = subprocess.Popen(
                self.plan.argv, env=self.plan.env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                close_fds=True, preexec_fn=_die_with_parent(os.getpid()))
        except FileNotFoundError:
            raise MountError(self.driver.missing_binary(self.spec)
                             or f"{self.plan.argv[0]}: not found") from None
        except PermissionError:
            raise MountError(f"{self.plan.argv[0]}: permission denied (not executable)") from None
        self.driver_start = start_time(self.proc.pid)
        self.pump = LogPump(self.proc.stdout, self.driver, self.plan.secrets)
        self.pump.start()
        if self.telemetry is not None:
            self._attach_collectors()
        return spawned

    def _wait_ready(self) -> None:
        assert self.proc is not None and self.plan is not None and self.pump is not None
        ReadyWait(self.spec, self.driver, self.plan, self.proc, self.pump, self.stop_requested,
                  mountinfo_path=self.mountinfo_path).wait()

    def _failure(self, what: str) -> str:
        last = self.pump.last_error() if self.pump else ""
        return f"{what}: {last}" if last else what

    # -- telemetry -------------------------------------------------------
    def _init_telemetry(self) -> None:
        try:
            from obsctl.instruments import MountAttributes
            from obsctl.telemetry import Telemetry

            attrs = MountAttributes(self.bucket, self.driver.name, self.spec.mountpoint)
            extra = {"obsctl.mount.source": self.spec.source, "obsctl.mount.impl": self.driver.name}
            if self.spec.name:
                extra["obsctl.mount.name"] = self.spec.name
            self.telemetry = Telemetry(self.telemetry_cfg, attrs, resource_attributes=extra)
            self.proc_io, self.probe, self.generic_polling = generic_collectors(
                self.telemetry.instruments, self.spec.mountpoint, self._driver_pid,
                probe_timeout=PROBE_TIMEOUT, mountinfo_path=self.mountinfo_path)
            kernel, self.sources = kernel_source(self.telemetry.instruments, self.driver.name, self.spec.mountpoint)
            self.generic_polling.append(kernel)
        except BaseException as exc:  # reported by the main thread
            self._telemetry_error = exc
        finally:
            self._telemetry_ready.set()

    def _attach_collectors(self) -> None:
        assert self.plan is not None and self.pump is not None
        ins = self.telemetry.instruments
        for old in self.polling:
            if old not in self.generic_polling:
                old.close()
        self.polling = list(self.generic_polling) + self.driver.polling_collectors(ins, self.plan)
        self.pump.attach([c.feed for c in self.driver.log_collectors(self.sources.driver_view(ins), self.plan)])

    def _driver_pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def _poll_collectors(self, wait: float | None = None) -> bool:
        """Poll every collector once (one poller at a time); False when another poll held the lock past ``wait`` s.

        The state file is rewritten as soon as the probe's health changed,
        so ``obsctl status`` does not lag the gauge behind slower collectors.
        Collectors never raise (:class:`obsctl.collectors.Collector`).
        """
        if not self._poll_lock.acquire(timeout=-1 if wait is None else wait):
            return False
        try:
            for collector in self.polling:
                before = self.probe.health if collector is self.probe else None
                collector.poll()
                if collector is self.probe and self.probe.health != before:
                    self._write_state()
        finally:
            self._poll_lock.release()
        return True

    def _poll_loop(self) -> None:
        """The collector poller thread: every ``poll_interval`` s while ready, poll and write the state file.

        Polls run off the main thread, so a collector blocked on a hung
        driver (the probe's 0.8 s, rclone rc's 1 s per request) never delays
        the driver watch or a stop.
        """
        while not self._poller_stop.wait(self.poll_interval):
            if self.state == "ready":
                self._poll_collectors()
                if self.state == "ready":
                    self._write_state()

    def _stop_poller(self) -> None:
        self._poller_stop.set()
        if self._poller is not None:
            self._poller.join(2.0)

    def _span(self, name: str, start_ns: int, attributes: dict[str, Any], error: str | None = None) -> None:
        if self.telemetry is None:
            return
        try:
            from opentelemetry.trace import Status, StatusCode

            span = self.telemetry.tracer.start_span(name, start_time=start_ns, attributes={
                "obsctl.mount.source": self.spec.source, "obsctl.mount.impl": self.driver.name,
                "obsctl.mount.mountpoint": self.spec.mountpoint, **attributes})
            if error:
                span.set_status(Status(StatusCode.ERROR, error))
            span.end()
        except Exception:  # telemetry never takes the lifecycle down
            log.debug("span %s failed", name, exc_info=True)

    def _shutdown_telemetry(self) -> None:
        """Final export, bounded by the export timeout; a failure is one warning line, never a traceback."""
        if self.telemetry is None:
            return
        try:
            self.telemetry.shutdown()
        except Exception as exc:  # noqa: BLE001
            log.warning("final telemetry export failed: %s", exc)

    # -- health and state file ---------------------------------------------
    def _set_health(self, health: str, state: str | None = None) -> None:
        """Record that the mount cannot serve (``down``, ``stopping``) and write the state file at once."""
        if state is not None:
            self.state = state
        if self.probe is not None:
            self.probe.mark(health)
        self._write_state()

    def status(self) -> dict[str, Any]:
        """The JSON object ``obsctl status`` shows for this mount (format: :mod:`obsctl.statefile`).

        ``health``, ``driver_io`` and ``driver_stats`` are the collectors' own
        parts (:meth:`obsctl.collectors.Collector.status`).
        """
        from obsctl.collectors import collector_status  # cheap: no OpenTelemetry import

        totals = self.telemetry.instruments.totals if self.telemetry else {}
        collected = collector_status(self.polling)
        return {
            "name": self.spec.name,
            "mountpoint": self.spec.mountpoint,
            "source": self.spec.source,
            "bucket": self.bucket,
            "impl": self.driver.name,
            "state": self.state,
            "pid": os.getpid(),
            "driver_pid": self._driver_pid(),
            "driver_start": self.driver_start if self._driver_pid() else None,
            "started_at": self.started_at,
            "ready_at": self.ready_at,
            "restarts": self.restarts,
            "health": collected["health"],
            "read_bytes": int(totals.get("obsctl_fs_read_bytes", 0)),
            "write_bytes": int(totals.get("obsctl_fs_write_bytes", 0)),
            "fs_ops": int(totals.get("obsctl_fs_ops", 0)),
            "errors": int(totals.get("obsctl_errors", 0)),
            "driver_io": collected["driver_io"],
            "driver_stats": collected["driver_stats"],
            "telemetry_mode": self.telemetry_cfg.mode,
            "last_export": self.telemetry.export_status.as_dict() if self.telemetry else None,
            "live": self.telemetry.instruments.live() if self.telemetry else None,
            "sources": self.sources.as_dict() if self.sources is not None else None,
        }

    def _write_state(self) -> None:
        with self._state_lock:
            statefile.write_state(self.state_path, self.status())

    # -- main --------------------------------------------------------------
    def _recover(self) -> None:
        """Recover a mount a dead obsctl supervisor left at this mountpoint; refuse one a live one runs.

        Raises:
            MountpointError: another live obsctl process runs this mountpoint.
            MountError: the orphaned mount could not be cleared.
        """
        state = statefile.state_for(self.runtime_dir, self.spec.mountpoint)
        if state is None:
            return
        if state.get("state") == "dead" and state.get("last_state") == "observing":
            statefile.remove_state(str(state["state_file"]))  # a dead side-car's: not ours to recover
            return
        if state.get("state") != "dead":
            raise MountpointError(
                f"{self.spec.mountpoint} is already run by obsctl (pid {state.get('pid')}, state "
                f"{state.get('state')}); stop it first with: obsctl unmount {self.spec.mountpoint}")
        try:
            done = recover_orphan(state)
        except RuntimeError as exc:
            raise MountError(
                f"could not recover the mount a dead obsctl (pid {state.get('pid')}) left: {exc}") from None
        warn(f"recovered {self.spec.mountpoint} from a dead obsctl (pid {state.get('pid')}): {', '.join(done)}")

    def run(self) -> int:
        """Mount, supervise until asked to stop, shut down. Returns the exit status (0 or 1).

        Raises:
            MountpointError: the mountpoint is unusable (nothing was started).
            MountError: the mount did not come up (nothing is left mounted).
        """
        self._recover()
        preflight(self.spec.mountpoint, self.mountinfo_path)
        spawned = time.time_ns()
        telemetry_thread: threading.Thread | None = None
        try:
            spawned = self._spawn()
            telemetry_thread = threading.Thread(target=self._init_telemetry, name="telemetry-init", daemon=True)
            telemetry_thread.start()
            self._wait_ready()
        except Interrupted:
            self.state = "stopped"
            abort(self.proc, self.spec.mountpoint, self.mountinfo_path)
            print(f"obsctl: stopped before the mount was ready; nothing is mounted at {self.spec.mountpoint}",
                  file=sys.stderr, flush=True)
            return 0
        except BaseException as exc:
            self.state = "failed"
            abort(self.proc, self.spec.mountpoint, self.mountinfo_path)
            if telemetry_thread is not None and self._telemetry_ready.wait(FAILED_SPAN_WAIT) \
                    and self.telemetry is not None:
                self._span("mount", spawned, {}, error=str(exc))
                self.telemetry.instruments.add_error("mount_failed")
                self._shutdown_telemetry()
            raise
        self.ready_at = time.time()
        while not self._telemetry_ready.wait(WATCH_INTERVAL):
            if self.stop_requested.is_set() or self.proc is None or self.proc.poll() is not None:
                break
        if self._telemetry_error is not None or not self._telemetry_ready.is_set():
            error = self._telemetry_error
            self._stop_driver()
            if error is None:
                return 0
            raise MountError(f"telemetry could not start: {error}")
        ensure_fusectl()
        self._attach_collectors()
        self.sources.kernel.poll()  # trace from the first request after READY
        self.state = "ready"
        ready_s = self.ready_at - spawned / 1e9
        self._span("mount", spawned, {"obsctl.mount.ready_seconds": ready_s})
        # The state file says "ready" before systemd and the terminal hear it,
        # so `obsctl status` right after READY=1 already lists the mount.
        self._poll_collectors()
        self._write_state()
        sd_notify(f"READY=1\nSTATUS=mounted {self.spec.source} on {self.spec.mountpoint}")
        print(f"obsctl: mounted {self.spec.source} on {self.spec.mountpoint} "
              f"({self.driver.name}, driver pid {self.proc.pid}) in {ready_s:.2f} s", file=sys.stderr, flush=True)
        self._first_export = threading.Timer(1.0, self.telemetry.flush)
        self._first_export.daemon = True
        self._first_export.start()
        return self._supervise()

    def _supervise(self) -> int:
        exit_code = 0
        self._poller = threading.Thread(target=self._poll_loop, name="collector-poll", daemon=True)
        self._poller.start()
        while not self.stop_requested.wait(WATCH_INTERVAL):
            if self.proc is not None and self.proc.poll() is not None:
                if not self._handle_driver_exit():
                    exit_code = 1
                    break
        return self._shutdown(exit_code)

    def _handle_driver_exit(self) -> bool:
        """The driver died under a live mount: mark it down, clear the dead mount, restart with backoff.

        Returns False when the restart budget is spent or a restart failed
        (the caller shuts down with status 1); True after a restart or when
        a stop was requested meanwhile (the caller's loop sees it).
        """
        assert self.proc is not None and self.pump is not None
        code = self.proc.returncode
        died_ns = time.time_ns()
        self._set_health("down", "restarting" if self.restarts < self.spec.max_restarts else "failed")
        # A dead driver's mount answers ENOTCONN; nothing can be waiting on it: lazy at once.
        if not unmount_once(self.spec.mountpoint, path=self.mountinfo_path):
            unmount_once(self.spec.mountpoint, lazy=True, path=self.mountinfo_path)
        self.pump.join(1)
        reason = self._failure(f"{self.driver.name} {describe_exit(code)}")
        print(f"obsctl: {reason}", file=sys.stderr, flush=True)
        self.telemetry.instruments.add_error("driver_exit")
        self._span("driver.exit", died_ns, {"process.exit.code": code}, error=reason)
        if self.restarts >= self.spec.max_restarts:
            print(f"obsctl: giving up after {self.restarts} restart(s) (max_restarts)", file=sys.stderr, flush=True)
            return False
        backoff = min(MAX_BACKOFF, 2.0 ** self.restarts)
        if self.stop_requested.wait(backoff):
            return True
        self.restarts += 1
        self.telemetry.instruments.add_restart()
        started = time.time_ns()
        try:
            self._spawn()
            self._wait_ready()
        except Interrupted:
            abort(self.proc, self.spec.mountpoint, self.mountinfo_path)
            return True
        except Exception as exc:  # MountError, or ConfigError from the driver's plan
            self._span("restart", started, {"obsctl.restart.count": self.restarts}, error=str(exc))
            print(f"obsctl: restart failed: {exc}", file=sys.stderr, flush=True)
            self.state = "failed"
            abort(self.proc, self.spec.mountpoint, self.mountinfo_path)
            return False
        self._span("restart", started, {"obsctl.restart.count": self.restarts})
        self.state = "ready"
        # Announced before the probe can say "up" again: obsctl_mount_up stays 0 from the
        # driver's death until this line (tests/integration/test_lifecycle_faults.py).
        print(f"obsctl: restarted {self.driver.name} (driver pid {self.proc.pid})", file=sys.stderr, flush=True)
        # health from a real probe again; a poll stuck on the old driver is not waited for
        # (the poller's next round then sets it)
        self._poll_collectors(wait=0.5)
        self._write_state()
        return True

    def _stop_driver(self) -> None:
        """Unmount by the busy-mount policy of :func:`obsctl.unmount.unmount`, then stop the driver."""
        result = unmount(self.spec.mountpoint, should_hurry=lambda: self.signals > 1, path=self.mountinfo_path)
        if result == FAILED:
            log.error("could not unmount %s", self.spec.mountpoint)
        # After a normal unmount the driver exits by itself; after a lazy
        # detach it would keep serving the holders: ask it to stop at once.
        stop_process(self.proc, exit_wait=0.0 if result == DETACHED else 1.0)
        if not unmount_once(self.spec.mountpoint, path=self.mountinfo_path):
            unmount_once(self.spec.mountpoint, lazy=True, path=self.mountinfo_path)
        if self.pump is not None:
            self.pump.join(1)

    def _shutdown(self, exit_code: int) -> int:
        started = time.time_ns()
        if self._first_export is not None:
            self._first_export.cancel()
        sd_notify("STOPPING=1")
        self._set_health("stopping", "stopping" if exit_code == 0 else "failed")
        self._poller_stop.set()
        self._stop_driver()
        self._stop_poller()  # a poll blocked on the old driver ends once the driver is gone
        # Every log line is in now (the pump hit EOF): the counters are final.
        for collector in self.polling:
            if collector is not self.proc_io and collector is not self.probe:
                collector.poll()
            collector.close()
        self._span("unmount", started, {})
        statefile.remove_state(self.state_path)
        self._shutdown_telemetry()
        print(f"obsctl: unmounted {self.spec.mountpoint}", file=sys.stderr, flush=True)
        return exit_code
