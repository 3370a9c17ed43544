"""Run one FUSE driver: spawn, wait for the mount, observe, restart, shut down.

The sequence (DESIGN section 1):

1. preflight: the mountpoint is an existing, empty-of-mounts directory;
2. spawn the driver (credentials in its environment only), start the log
   pump, and only then import the OpenTelemetry SDK, in a thread, so the
   SDK's import time overlaps the driver's start instead of adding to it;
3. ready = the mount is in /proc/self/mountinfo with the driver's type and
   its root answers a stat and a directory read, within the ready timeout;
   then sd_notify READY=1 and a ``mount`` span; the first metric export
   follows about a second later rather than after a full interval;
4. steady state: collectors are polled every ``poll_interval`` seconds, the
   state file for ``obsctl status`` is rewritten atomically, the driver is
   watched every 50 ms; a driver that dies leaves a dead FUSE mount, which is
   lazily unmounted at once and the driver restarted with backoff;
5. SIGTERM / SIGINT: ``fusermount3 -u`` (lazy ``-u -z`` as a fallback), wait
   for the driver, drain its log, poll the collectors a last time, export the
   final values within the export timeout, exit 0.

Failure before ready (the driver exits, the timeout passes, the root cannot
be read) is fail-closed: the driver is stopped, nothing stays mounted, and
:class:`MountError` carries the driver's own last error line.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from typing import Any, Callable

from obsctl import mounttable
from obsctl.config import MountSpec, TelemetryConfig
from obsctl.credentials import Credentials
from obsctl.drivers import Driver, LaunchPlan
from obsctl.redact import redact
from obsctl.fileutil import atomic_write
from obsctl.sources import kernel_source

log = logging.getLogger("obsctl")

#: How often the driver process is checked (s); bounds the time a dead
#: driver's mount stays in the mount table.
WATCH_INTERVAL = 0.05
#: How often the mount table is read while waiting for ready (s).
READY_POLL_INTERVAL = 0.005
#: Seconds to wait for the driver to exit after unmount before SIGTERM / SIGKILL.
DRIVER_STOP_TIMEOUT = 10.0
#: Log lines kept for failure messages.
LOG_TAIL = 200


class MountError(RuntimeError):
    """The mount could not be brought up; ``str()`` says why, with the driver's last error."""


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


def pid_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (state ``Z`` in /proc/PID/stat)."""
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, ValueError, IndexError):
        return False


def describe_exit(returncode: int) -> str:
    """``exited with status 1`` / ``was killed by SIGKILL`` from a Popen returncode."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def state_file_path(runtime_dir: str, mountpoint: str) -> str:
    """``RUNTIME_DIR/mounts/<mountpoint with / as ->.json`` (systemd-escape-like, reversible enough to read)."""
    name = mountpoint.strip("/").replace("-", "\\x2d").replace("/", "-") or "-"
    return os.path.join(runtime_dir, "mounts", name + ".json")


def unmount(mountpoint: str) -> bool:
    """``fusermount3 -u MOUNTPOINT``, then ``-u -z`` (lazy) if that fails.

    Returns True when nothing is mounted at ``mountpoint`` afterwards.
    Falls back to ``umount`` / ``umount -l`` when fusermount3 is missing.
    """
    fusermount = shutil.which("fusermount3") or shutil.which("fusermount")
    commands = ([[fusermount, "-u", mountpoint], [fusermount, "-u", "-z", mountpoint]] if fusermount
                else [["umount", mountpoint], ["umount", "-l", mountpoint]])
    for argv in commands:
        if mounttable.find_mount(mountpoint) is None:
            return True
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
    return mounttable.find_mount(mountpoint) is None


def preflight(spec: MountSpec) -> None:
    """Check the mountpoint before anything is spawned.

    Raises:
        MountError: missing, not a directory, or already a mount point.
    """
    path = spec.mountpoint
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MountError(f"mountpoint {path} does not exist; create it first (mkdir -p {path})") from None
    except OSError as exc:
        if exc.errno in mounttable.STALE_ERRNOS:
            raise MountError(
                f"mountpoint {path} is a dead FUSE mount (Transport endpoint is not connected); "
                f"clear it with: fusermount3 -u -z {path}") from None
        raise MountError(f"mountpoint {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"mountpoint {path} is not a directory; a FUSE mount needs an empty directory")
    existing = mounttable.find_mount(path)
    if existing is not None:
        raise MountError(
            f"{path} is already a mount point ({existing.fstype} from {existing.source}); "
            f"unmount it first (obsctl unmount {path})")


def ensure_fusectl(sys_path: str = "/sys") -> None:
    """Mount fusectl on /sys/fs/fuse/connections if it is not (needs root); never raises."""
    target = os.path.join(sys_path, "fs/fuse/connections")
    if not os.path.isdir(target) or os.listdir(target):
        return
    if mounttable.find_mount(target) is not None:
        return
    subprocess.run(["mount", "-t", "fusectl", "none", target], stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


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
        from urllib.parse import urlsplit

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


class LogPump(threading.Thread):
    """Reads the driver's merged stdout/stderr line by line.

    Each line is kept in a tail buffer (for failure messages), handed to the
    log collectors (buffered until telemetry is up, so nothing before ready
    is lost), and, when the driver says it is worth it, copied redacted to
    obsctl's stderr.
    """

    def __init__(self, stream: Any, driver: Driver, secrets: list[str]) -> None:
        super().__init__(name="driver-log", daemon=True)
        self.stream = stream
        self.driver = driver
        self.secrets = secrets
        self.tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL)
        self.errors: collections.deque[str] = collections.deque(maxlen=20)
        self._lock = threading.Lock()
        self._pending: list[str] | None = []
        self._sinks: list[Callable[[str], None]] = []
        #: The driver's start-up verdict (``ok`` / ``failed``) and the line that gave it.
        self.verdict: str | None = None if driver.has_startup_check else "ok"
        self.verdict_line = ""
        self.verdict_event = threading.Event()
        if self.verdict is not None:
            self.verdict_event.set()

    def attach(self, sinks: list[Callable[[str], None]]) -> None:
        """Start feeding ``sinks``; replay the lines read before."""
        with self._lock:
            pending, self._pending = self._pending or [], None
            self._sinks = sinks
            for line in pending:
                self._feed(line)

    def _feed(self, line: str) -> None:
        for sink in self._sinks:
            try:
                sink(line)
            except Exception:  # a collector bug must not stop the pump
                log.debug("log collector failed on a line", exc_info=True)

    def run(self) -> None:
        for raw in iter(self.stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not line:
                continue
            self.tail.append(line)
            if self.driver.is_error(line):
                self.errors.append(line)
            if self.verdict is None:
                verdict = self.driver.startup_verdict(line)
                if verdict is not None:
                    self.verdict, self.verdict_line = verdict, line
                    self.verdict_event.set()
            forwarded = self.driver.forward(line)
            if forwarded is not None:
                sys.stderr.write(f"{self.driver.name}: {redact(forwarded, self.secrets)}\n")
            with self._lock:
                if self._pending is not None:
                    if len(self._pending) < 100_000:
                        self._pending.append(line)
                else:
                    self._feed(line)
        self.stream.close()
        self.verdict_event.set()  # EOF: the driver is gone, nobody waits for a verdict

    def last_error(self) -> str:
        """The driver's last error line (human-readable, redacted), or ``""``."""
        if not self.errors:
            return f"{self.driver.name} logged no error"
        critical = [line for line in self.errors if self.driver.is_critical(line)]
        return redact(self.driver.summary((critical or self.errors)[-1]), self.secrets)


def generic_collectors(instruments: Any, mountpoint: str,
                       pid_getter: Callable[[], int | None]) -> tuple[Any, Any, list[Any]]:
    """The collectors that observe any FUSE driver: /proc/PID/io, the FUSE
    connection's ``waiting``, the bounded stat probe.

    Returns ``(proc_io, probe, [proc_io, fuse_conn, probe])``.
    """
    from obsctl.collectors.fuse_conn import FuseConnCollector
    from obsctl.collectors.probe import MountProbe
    from obsctl.collectors.proc_io import ProcIoCollector

    proc_io = ProcIoCollector(instruments, pid_getter)
    probe = MountProbe(instruments, mountpoint)
    return proc_io, probe, [proc_io, FuseConnCollector(instruments, mountpoint), probe]


class Supervisor:
    """Supervise one mount from spawn to final export.

    Args:
        spec: the validated mount spec.
        telemetry: the validated telemetry config.
        credentials: the S3 credentials, or None (generic driver).
        runtime_dir: where the state file lives (``/run/obsctl``).
        poll_interval: seconds between collector polls and state-file writes.
    """

    def __init__(self, spec: MountSpec, telemetry: TelemetryConfig, credentials: Credentials | None,
                 runtime_dir: str, driver: Driver, poll_interval: float = 2.0) -> None:
        self.spec = spec
        self.telemetry_cfg = telemetry
        self.credentials = credentials
        self.runtime_dir = runtime_dir
        self.driver = driver
        # Mode none opens no port at all, not even rclone's loopback rc API.
        self.driver.listen = telemetry.exports_metrics
        self.poll_interval = poll_interval
        self.bucket = spec.bucket_and_prefix()[0]
        self.stop_requested = threading.Event()
        self.proc: subprocess.Popen[bytes] | None = None
        self.plan: LaunchPlan | None = None
        self.pump: LogPump | None = None
        self.telemetry: Any = None
        self._telemetry_error: BaseException | None = None
        self._telemetry_ready = threading.Event()
        self.polling: list[Any] = []
        self.probe: Any = None
        self.proc_io: Any = None
        self.state = "starting"
        self.restarts = 0
        self.started_at = time.time()
        self.ready_at: float | None = None
        self.state_path = state_file_path(runtime_dir, spec.mountpoint)
        self._first_export: threading.Timer | None = None

    # -- signals ---------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """SIGTERM / SIGINT / SIGHUP request an orderly shutdown."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda *_args: self.stop_requested.set())

    # -- spawn / ready ---------------------------------------------------
    def _spawn(self) -> int:
        """Start the driver and its log pump; returns the spawn time (time_ns)."""
        self.plan = self.driver.plan(self.spec, self.credentials)
        spawned = time.time_ns()
        try:
            self.proc = subprocess.Popen(
                self.plan.argv, env=self.plan.env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                close_fds=True)
        except FileNotFoundError:
            raise MountError(
                f"{self.plan.argv[0]}: not found; install the {self.driver.name} driver "
                "(roles/fuse_driver, or apt-get install rclone s3fs)") from None
        except PermissionError:
            raise MountError(f"{self.plan.argv[0]}: permission denied (not executable)") from None
        self.pump = LogPump(self.proc.stdout, self.driver, self.plan.secrets)
        self.pump.start()
        if self.telemetry is not None:
            self._attach_collectors()
        return spawned

    def _wait_ready(self) -> None:
        """Block until the mount is live. Raises MountError (driver left running: caller stops it)."""
        assert self.proc is not None and self.plan is not None and self.pump is not None
        deadline = time.monotonic() + self.spec.ready_timeout_seconds
        endpoint = EndpointProbe(self.spec.endpoint) if self.spec.endpoint else None
        while True:
            if self.stop_requested.is_set():
                raise MountError("interrupted before the mount was ready")
            self._raise_on_early_failure(endpoint)
            code = self.proc.poll()
            if code is not None:
                self.pump.join(2)
                raise MountError(self._failure(f"{self.driver.name} {describe_exit(code)} before the mount was ready"))
            entry = self._live_entry()
            if entry is not None:
                break
            if time.monotonic() > deadline:
                raise MountError(self._failure(
                    f"{self.driver.name} did not mount {self.spec.mountpoint} within "
                    f"{self.spec.ready_timeout_seconds:g} s"))
            time.sleep(READY_POLL_INTERVAL)
        self._check_answers(max(0.5, deadline - time.monotonic()), endpoint)
        # Drivers that check the bucket after the mount appears (s3fs): wait for that check.
        while not self.pump.verdict_event.wait(READY_POLL_INTERVAL * 4):
            self._raise_on_early_failure(endpoint)
            if time.monotonic() > deadline:
                raise MountError(self._failure(
                    f"{self.driver.name} did not finish its bucket check within {self.spec.ready_timeout_seconds:g} s"))
        self._raise_on_early_failure(endpoint)
        if self.pump.verdict != "ok":
            raise MountError(self._failure(f"{self.driver.name} exited before its bucket check finished"))

    def _raise_on_early_failure(self, endpoint: "EndpointProbe | None") -> None:
        """Fail fast: the driver's own start-up check failed, or the endpoint refuses connections."""
        assert self.pump is not None
        if self.pump.verdict == "failed":
            time.sleep(0.05)  # the lines that explain it follow the verdict line
            raise MountError(self._failure(f"{self.driver.name} failed its start-up check of the bucket"))
        if endpoint is not None and endpoint.error:
            raise MountError(self._failure(f"cannot connect to the S3 endpoint {self.spec.endpoint}: {endpoint.error}"))

    def _live_entry(self) -> Any:
        try:
            entry = mounttable.find_mount(self.spec.mountpoint)
        except (OSError, ValueError):
            return None
        if entry is None or not mounttable.is_fuse(entry):
            return None
        if self.plan and self.plan.fstype and entry.fstype != self.plan.fstype:
            return None
        return entry

    def _check_answers(self, timeout: float, endpoint: "EndpointProbe | None" = None) -> None:
        """Stat the mount root and read one directory entry, bounded by ``timeout``."""
        outcome: dict[str, Any] = {}

        def _probe() -> None:
            try:
                os.stat(self.spec.mountpoint)
                with os.scandir(self.spec.mountpoint) as entries:
                    outcome["empty"] = next(entries, None) is None
                outcome["ok"] = True
            except OSError as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=_probe, name="ready-probe", daemon=True)
        worker.start()
        deadline = time.monotonic() + timeout
        while worker.is_alive() and time.monotonic() < deadline:
            worker.join(0.05)
            if self.proc is not None and self.proc.poll() is not None:
                break
            self._raise_on_early_failure(endpoint)
        if outcome.get("ok"):
            assert self.plan is not None
            problem = self.driver.verify(self.plan, outcome["empty"])
            if problem:
                raise MountError(problem)
            return
        if "error" in outcome:
            exc = outcome["error"]
            time.sleep(0.2)  # let the driver log why before we quote it
            raise MountError(self._failure(
                f"the mount appeared but reading its root failed: {os.strerror(exc.errno or errno.EIO)}"))
        if self.proc is not None and self.proc.poll() is not None:
            raise MountError(self._failure(f"{self.driver.name} exited while the mount was being checked"))
        hint = f" (is the endpoint {self.spec.endpoint} reachable?)" if self.spec.endpoint else ""
        raise MountError(self._failure(f"the mount root did not answer a directory read within {timeout:.1f} s{hint}"))

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
                self.telemetry.instruments, self.spec.mountpoint, self._driver_pid)
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

    def _poll_collectors(self) -> None:
        for collector in self.polling:
            try:
                collector.poll()
            except Exception:
                log.debug("collector %s failed", type(collector).__name__, exc_info=True)

    def _span(self, name: str, start_ns: int, attributes: dict[str, Any], error: str | None = None) -> None:
        if self.telemetry is None:
            return
        from opentelemetry.trace import Status, StatusCode

        span = self.telemetry.tracer.start_span(name, start_time=start_ns, attributes={
            "obsctl.mount.source": self.spec.source, "obsctl.mount.impl": self.driver.name,
            "obsctl.mount.mountpoint": self.spec.mountpoint, **attributes})
        if error:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()

    # -- state file ------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The JSON object ``obsctl status`` shows for this mount."""
        totals = self.telemetry.instruments.totals if self.telemetry else {}
        return {
            "name": self.spec.name,
            "mountpoint": self.spec.mountpoint,
            "source": self.spec.source,
            "bucket": self.bucket,
            "impl": self.driver.name,
            "state": self.state,
            "pid": os.getpid(),
            "driver_pid": self._driver_pid(),
            "started_at": self.started_at,
            "ready_at": self.ready_at,
            "restarts": self.restarts,
            "health": getattr(self.probe, "health", None),
            "read_bytes": int(totals.get("obsctl_fs_read_bytes", 0)),
            "write_bytes": int(totals.get("obsctl_fs_write_bytes", 0)),
            "fs_ops": int(totals.get("obsctl_fs_ops", 0)),
            "errors": int(totals.get("obsctl_errors", 0)),
            "driver_io": {"read_bytes": getattr(self.proc_io, "read_bytes", None),
                          "write_bytes": getattr(self.proc_io, "write_bytes", None)},
            "driver_stats": {name: value for c in self.polling
                             for name in ("last_core_stats", "last_vfs_stats")
                             if (value := getattr(c, name, None)) is not None},
            "telemetry_mode": self.telemetry_cfg.mode,
            "last_export": self.telemetry.export_status.as_dict() if self.telemetry else None,
            "live": self.telemetry.instruments.live() if self.telemetry else None,
            "sources": self.sources.as_dict() if getattr(self, "sources", None) else None,
        }

    def _write_state(self) -> None:
        try:
            os.makedirs(os.path.dirname(self.state_path), mode=0o750, exist_ok=True)
            atomic_write(self.state_path, json.dumps(self.status(), indent=1) + "\n", 0o640)
        except OSError as exc:
            log.warning("cannot write state file %s: %s", self.state_path, exc)

    def _remove_state(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.state_path)

    # -- stop --------------------------------------------------------------
    def _stop_driver(self, grace: float = DRIVER_STOP_TIMEOUT) -> None:
        """Unmount, then wait ``grace`` s for the driver; SIGTERM, then SIGKILL if it lingers.

        A driver that failed to start gets a short grace: it is usually stuck
        retrying (s3fs falls back to signature v2 and retries for a minute).
        """
        proc = self.proc
        if not unmount(self.spec.mountpoint):
            log.error("could not unmount %s", self.spec.mountpoint)
        if proc is None:
            return
        for sig, wait in ((None, grace), (signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            if sig is not None and proc.poll() is None:
                proc.send_signal(sig)
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        unmount(self.spec.mountpoint)
        if self.pump is not None:
            self.pump.join(2)

    # -- main --------------------------------------------------------------
    def run(self) -> int:
        """Mount, supervise until asked to stop, shut down. Returns the exit status.

        Raises:
            MountError: the mount did not come up (nothing is left mounted).
        """
        preflight(self.spec)
        spawned = time.time_ns()
        try:
            spawned = self._spawn()
            threading.Thread(target=self._init_telemetry, name="telemetry-init", daemon=True).start()
            self._wait_ready()
        except BaseException as exc:
            self.state = "failed"
            self._stop_driver(grace=0.2)
            if self._telemetry_ready.wait(10) and self.telemetry is not None:
                self._span("mount", spawned, {}, error=str(exc))
                self.telemetry.instruments.add_error("mount_failed")
                self.telemetry.shutdown()
            raise
        self.ready_at = time.time()
        self._telemetry_ready.wait()
        if self._telemetry_error is not None:
            self._stop_driver()
            raise MountError(f"telemetry could not start: {self._telemetry_error}")
        ensure_fusectl()
        self._attach_collectors()
        self.sources.kernel.poll()  # trace from the first request after READY
        self.state = "ready"
        ready_s = self.ready_at - spawned / 1e9
        self._span("mount", spawned, {"obsctl.mount.ready_seconds": ready_s})
        sd_notify(f"READY=1\nSTATUS=mounted {self.spec.source} on {self.spec.mountpoint}")
        print(f"obsctl: mounted {self.spec.source} on {self.spec.mountpoint} "
              f"({self.driver.name}, driver pid {self.proc.pid}) in {ready_s:.2f} s", file=sys.stderr, flush=True)
        self._poll_collectors()
        self._write_state()
        self._first_export = threading.Timer(1.0, self.telemetry.flush)
        self._first_export.daemon = True
        self._first_export.start()
        return self._supervise()

    def _supervise(self) -> int:
        next_poll = time.monotonic() + self.poll_interval
        exit_code = 0
        while not self.stop_requested.wait(WATCH_INTERVAL):
            if self.proc is not None and self.proc.poll() is not None:
                if not self._handle_driver_exit():
                    exit_code = 1
                    break
                next_poll = time.monotonic()
            if time.monotonic() >= next_poll:
                self._poll_collectors()
                self._write_state()
                next_poll = time.monotonic() + self.poll_interval
        return self._shutdown(exit_code)

    def _handle_driver_exit(self) -> bool:
        """The driver died under a live mount: clear the dead mount, restart with backoff.

        Returns False when the restart budget is spent or a restart failed.
        """
        assert self.proc is not None and self.pump is not None
        code = self.proc.returncode
        died_ns = time.time_ns()
        unmount(self.spec.mountpoint)  # lazy fallback clears "Transport endpoint is not connected"
        self.pump.join(2)
        reason = self._failure(f"{self.driver.name} {describe_exit(code)}")
        print(f"obsctl: {reason}", file=sys.stderr, flush=True)
        self.telemetry.instruments.add_error("driver_exit")
        self._span("driver.exit", died_ns, {"process.exit.code": code}, error=reason)
        if self.restarts >= self.spec.max_restarts:
            self.state = "failed"
            return False
        self.state = "restarting"
        self._write_state()
        backoff = min(30.0, 2.0 ** self.restarts)
        if self.stop_requested.wait(backoff):
            return True
        self.restarts += 1
        self.telemetry.instruments.add_restart()
        started = time.time_ns()
        try:
            self._spawn()
            self._wait_ready()
        except MountError as exc:
            self._span("restart", started, {"obsctl.restart.count": self.restarts}, error=str(exc))
            print(f"obsctl: restart failed: {exc}", file=sys.stderr, flush=True)
            self.state = "failed"
            self._stop_driver(grace=0.2)
            return False
        self._span("restart", started, {"obsctl.restart.count": self.restarts})
        self.state = "ready"
        print(f"obsctl: restarted {self.driver.name} (driver pid {self.proc.pid})", file=sys.stderr, flush=True)
        return True

    def _shutdown(self, exit_code: int) -> int:
        started = time.time_ns()
        if self._first_export is not None:
            self._first_export.cancel()
        self.state = "stopping"
        sd_notify("STOPPING=1")
        self._write_state()
        self._poll_collectors()
        self._stop_driver()
        # Every log line is in now (the pump hit EOF): the counters are final.
        for collector in self.polling:
            if collector is not self.proc_io:
                try:
                    collector.poll()
                except Exception:
                    log.debug("final poll failed", exc_info=True)
            collector.close()
        self._span("unmount", started, {})
        self._remove_state()
        self.telemetry.shutdown()
        print(f"obsctl: unmounted {self.spec.mountpoint}", file=sys.stderr, flush=True)
        return exit_code
