"""Run one FUSE driver: spawn, wait for the mount, observe, restart with backoff, shut down.

The lifecycle (DESIGN section 1; what happens on each fault: docs/operations.md):

0. the claim: the mountpoint is claimed (:class:`obsctl.statefile.MountClaim`,
   ``flock`` on a file keyed by the mountpoint) before anything else; a second
   obsctl on the same path is refused with exit status 2 and never touches
   the first's mount;
1. recovery and preflight: a mount that obsctl's own state file says a
   now-dead supervisor started at this mountpoint is recovered
   (:func:`obsctl.unmount.recover_orphan`); then the mountpoint must be an
   existing directory with nothing mounted on it
   (:func:`obsctl.unmount.preflight`, exit status 2 otherwise);
2. spawn the driver (credentials in its environment only, its own session,
   ``PR_SET_PDEATHSIG`` = SIGTERM so it unmounts and exits if obsctl is
   killed), start the log pump (:mod:`obsctl.logpump`), attach it to the
   mount's :class:`~obsctl.observer.MountObserver` and only then start the
   observer (the OpenTelemetry SDK) in a thread, so its import time overlaps
   the driver's start;
3. ready (:mod:`obsctl.readiness`), then sd_notify READY=1 and a ``mount``
   span; the first metric export follows about a second later;
4. steady state: the main thread watches the driver every
   :data:`WATCH_INTERVAL` s; the observer's poller thread polls the collectors and
   rewrites the state file (:mod:`obsctl.statefile`) every ``poll_interval``
   s, so a collector blocked on a hung driver never delays a stop. A driver that dies: the mount's
   health (:class:`obsctl.collectors.probe.MountProbe`, the one owner of
   ``obsctl_mount_up``) becomes ``down`` at once and stays so through the
   unmount of the dead mount, the backoff and the restart's ready wait;
5. SIGHUP (``systemctl reload``): :meth:`Supervisor.reload` re-reads the
   telemetry file and rebuilds exporters and collectors once the mount is
   ready; the driver and its open files are untouched;
6. SIGTERM / SIGINT, in any phase, within :data:`WATCH_INTERVAL`
   s (ready wait: :data:`obsctl.readiness.STEP` s): unmount
   (:func:`obsctl.unmount.unmount`: a busy mount is retried for
   :data:`obsctl.unmount.BUSY_WAIT` s, naming what holds it, then detached
   lazily), stop the driver, drain its log, poll the collectors a last
   time, export the final values within the export timeout, exit 0.

Everything about observing the mount (telemetry, collectors, polls, the
state file) is the observer's; this module keeps the lifecycle only.
Failure before ready is fail-closed: the driver is stopped, nothing stays
mounted, and :class:`MountError` carries the driver's own last error line.
That holds in every phase before the "mounted" line, also for a driver that
dies after its mount appeared while telemetry is still starting (exit 1,
never 0: systemd's Restart=on-failure ignores an exit 0). A stop request
with other mounts inside this one is refused once, naming them
(:func:`obsctl.unmount.nested_mounts`); a second one stops anyway.
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

from obsctl import health, mounttable, statefile
from obsctl.config import MountSpec, TelemetryConfig
from obsctl.statefile import MountClaim
from obsctl.credentials import Credentials
from obsctl.errors import EXIT_FAILED, EXIT_PERMANENT
from obsctl.drivers import Driver, LaunchPlan
from obsctl.logpump import LogPump
from obsctl.observer import DriverConnection, MountLabels, MountObserver, plan_context
from obsctl.procutil import describe_exit, start_time
from obsctl.readiness import Interrupted, MountError, ReadyWait
from obsctl.sources import arm_kernel_source
from obsctl.unmount import (
    DETACHED, FAILED, MountpointError, abort, ensure_fusectl, nested_mounts, preflight, recover_orphan,
    stop_process, unmount, unmount_once, warn,
)

__all__ = ["MountError", "Interrupted", "Supervisor", "sd_notify"]

log = logging.getLogger("obsctl")

#: How often the driver process and a stop request are checked (s).
WATCH_INTERVAL = 0.05
#: How long a failed start waits for the telemetry import to finish, to
#: record the failed ``mount`` span (s). Spawn errors do not wait at all.
FAILED_SPAN_WAIT = 2.0
#: Longest restart backoff (s); the n-th restart waits min(2**(n-1), this).
MAX_BACKOFF = 30.0

#: What marks a driver's error as permanent (retrying cannot help until someone fixes the
#: key or the bucket), as the drivers print it: rclone 1.60 logs the S3 error code with
#: "status code: 403" (tests/fixtures/rclone/auth403/rclone.log), s3fs 1.90 "HTTP response
#: code 403" (tests/fixtures/s3fs/auth403/s3fs.log); InvalidAccessKeyId, AccessDenied,
#: ExpiredToken and NoSuchBucket are the S3 API's error codes for a refused key or a missing
#: bucket (Amazon S3 API Reference, "Error responses"); rclone's own check says "does not
#: exist" (obsctl.drivers.rclone.RcloneDriver.verify), s3fs "bucket or key not found" (its
#: start-up check, obsctl.drivers.s3fs). Only a failed start is judged by them: a driver that
#: ran and died is restarted, and its next start tells whether the key or bucket is gone.
PERMANENT_MARKERS = ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "ExpiredToken", "NoSuchBucket",
                     "status code: 403", "HTTP response code 403", "bucket or key not found", "does not exist")


def permanent_error(text: str) -> str | None:
    """The marker of :data:`PERMANENT_MARKERS` found in ``text`` (a driver's error line, a
    :class:`MountError`'s message), or None for an error worth retrying."""
    return next((marker for marker in PERMANENT_MARKERS if marker in text), None)


def restart_owner() -> str:
    """Who restarts a driver that died: ``systemd`` when obsctl runs as a Type=notify unit
    (``$NOTIFY_SOCKET`` set; the unit's Restart=on-failure with StartLimitBurst= /
    StartLimitIntervalSec= is the budget, obsctl exits instead of restarting), else
    ``obsctl`` (its own backoff, at most the spec's ``max_restarts`` tries)."""
    return "systemd" if os.environ.get("NOTIFY_SOCKET") else "obsctl"


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
                 mountinfo_path: str = mounttable.MOUNTINFO_PATH,
                 telemetry_loader: Callable[[], TelemetryConfig] | None = None) -> None:
        self.mountinfo_path = mountinfo_path
        #: re-reads the telemetry config on SIGHUP (raises ConfigError); None: nothing to re-read
        self.telemetry_loader = telemetry_loader
        self.reload_requested = threading.Event()
        #: the exit status when supervision ends by itself (1, or EXIT_PERMANENT)
        self.exit_code = EXIT_FAILED
        self.spec = spec
        self.credentials = credentials
        self.runtime_dir = runtime_dir
        self.driver = driver
        self.stop_requested = threading.Event()
        self.signals = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.plan: LaunchPlan | None = None
        self.pump: LogPump | None = None
        #: This process's claim of the mountpoint (taken first in :meth:`run`).
        self.claim = MountClaim(runtime_dir, spec.mountpoint)
        labels = MountLabels(spec.mountpoint, spec.source, driver.bucket_label(spec.source), driver.name, spec.name)
        #: Telemetry, collectors, the state file: everything but the lifecycle.
        self.observer = MountObserver(labels, telemetry, runtime_dir, poll_interval=poll_interval,
                                      mountinfo_path=mountinfo_path, driver_answers=driver.protocol_answers,
                                      driver_source=(driver.log_source, driver.log_gives),
                                      stall_seconds=spec.stall_timeout_seconds)

    # -- signals ---------------------------------------------------------
    def request_stop(self, *_args: Any) -> None:
        """Ask for an orderly shutdown (signal handler); a second request shortens the busy-unmount wait."""
        self.signals += 1
        self.stop_requested.set()

    def request_reload(self, *_args: Any) -> None:
        """Ask for a telemetry reload (SIGHUP); done by the main loop once the mount is ready."""
        self.reload_requested.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM / SIGINT request an orderly shutdown; SIGHUP a telemetry reload (:meth:`reload`)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_reload)

    def reload(self) -> bool:
        """Re-read the telemetry config and rebuild exporters and collectors
        (:meth:`obsctl.observer.MountObserver.reload_from`, the side-car's too); the
        driver, its pid, its mount and every open file on it are untouched.

        What the driver was started with stays until its next start (rclone's
        rc API and log level come from the config at spawn time). Counters
        restart from zero (a counter reset). A new file that does not load
        (invalid, unreadable) or whose telemetry does not start keeps the old
        settings, and one line on stderr says why. Returns True when the new
        settings are in force (systemd's STATUS= then says so).
        """
        self.reload_requested.clear()
        if not self.observer.reload_from(self.telemetry_loader):
            return False
        sd_notify(f"STATUS=mounted {self.spec.source} on {self.spec.mountpoint} (telemetry reloaded)")
        return True

    # -- spawn / ready ---------------------------------------------------
    def _spawn(self) -> int:
        """Start the driver and its log pump; returns the spawn time (time_ns).

        Raises:
            MountError: the binary is missing or not executable (at once).
            ConfigError: the driver refused the spec's options.
        """
        # Mode none opens no port at all, not even rclone's loopback rc API (PlanContext.listen);
        # the observer's config is the current one (a reload changes it for the next spawn).
        self.plan = self.driver.plan(self.spec, self.credentials, plan_context(self.observer.telemetry_cfg))
        # before the spawn: the kernel source counts the new connection from its FUSE_INIT on
        # (obsctl.sources.arm_kernel_source: what each source can and cannot see before READY=1)
        arm_kernel_source(os.getpid())
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
        self.pump = LogPump(self.proc.stdout, self.driver, self.plan.secrets)
        self.pump.start()
        self.observer.attach(DriverConnection(self._driver_pid, start_time(self.proc.pid), self.driver,
                                              self.plan, self.pump))
        return spawned

    def _wait_ready(self) -> None:
        assert self.proc is not None and self.plan is not None and self.pump is not None
        ReadyWait(self.spec, self.driver, self.plan, self.proc, self.pump, self.stop_requested,
                  mountinfo_path=self.mountinfo_path).wait()

    def _failure(self, what: str) -> str:
        last = self.pump.last_error() if self.pump else ""
        return f"{what}: {last}" if last else what

    def _driver_pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

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
        self.claim.acquire()  # ClaimError (exit 2): another obsctl has it; nothing was started
        self._recover()
        preflight(self.spec.mountpoint, self.mountinfo_path, allow_non_empty=self.spec.allow_non_empty)
        observer = self.observer
        spawned = time.time_ns()
        telemetry_thread: threading.Thread | None = None
        try:
            spawned = self._spawn()
            telemetry_thread = observer.start_in_background()
            self._wait_ready()
        except Interrupted:
            observer.state = "stopped"
            abort(self.proc, self.spec.mountpoint, self.mountinfo_path)
            print(f"obsctl: stopped before the mount was ready; nothing is mounted at {self.spec.mountpoint}",
                  file=sys.stderr, flush=True)
            return 0
        except BaseException as exc:
            observer.state = "failed"
            abort(self.proc, self.spec.mountpoint, self.mountinfo_path)
            if isinstance(exc, MountError) and permanent_error(str(exc)):
                exc.permanent = True  # type: ignore[attr-defined]  # exit status 3: nobody retries it
            if telemetry_thread is not None and observer.started.wait(FAILED_SPAN_WAIT) \
                    and observer.telemetry is not None:
                observer.span("mount", spawned, {}, error=str(exc))
                observer.add_error("mount_failed")
                observer.close(final_poll=False, failed=True)
            raise
        observer.ready_at = time.time()
        while not observer.started.wait(WATCH_INTERVAL):
            if self.stop_requested.is_set() or self.proc is None or self.proc.poll() is not None:
                break
        if observer.start_error is not None or not observer.started.is_set():
            error = observer.start_error
            code = self.proc.poll() if self.proc is not None else None
            self._stop_driver()
            if error is not None:
                raise MountError(f"telemetry could not start: {error}")
            if code is not None:  # the driver died after its mount appeared, while telemetry started
                self._fail_after_ready(spawned, code)
            observer.state = "stopped"
            print(f"obsctl: stopped before the mount was ready; nothing is mounted at {self.spec.mountpoint}",
                  file=sys.stderr, flush=True)
            return 0
        ensure_fusectl()
        observer.sources.kernel.poll()  # trace from the first request after READY
        observer.state = "ready"
        ready_s = observer.ready_at - spawned / 1e9
        observer.span("mount", spawned, {"obsctl.mount.ready_seconds": ready_s})
        # The state file says "ready" before systemd and the terminal hear it,
        # so `obsctl status` right after READY=1 already lists the mount.
        observer.poll()
        code = self.proc.poll() if self.proc is not None else None
        if code is not None:  # died between ready and now: no "mounted" line for a dead driver
            self._stop_driver()
            self._fail_after_ready(spawned, code)
        observer.write_state()
        sd_notify(f"READY=1\nSTATUS=mounted {self.spec.source} on {self.spec.mountpoint}")
        print(f"obsctl: mounted {self.spec.source} on {self.spec.mountpoint} "
              f"({self.driver.name}, driver pid {self.proc.pid}) in {ready_s:.2f} s", file=sys.stderr, flush=True)
        return self._supervise()

    def _fail_after_ready(self, spawned: int, code: int) -> None:
        """The driver exited (``code``) after its mount appeared, before the "mounted" line:
        record it and raise (the caller already unmounted and stopped it).

        Raises:
            MountError: always, with the driver's last error line.
        """
        observer = self.observer
        observer.state = "failed"
        if self.pump is not None:
            self.pump.join(1)
        reason = self._failure(f"{self.driver.name} {describe_exit(code)} just after its mount appeared, "
                               "before it was ready")
        if observer.telemetry is not None:
            observer.span("mount", spawned, {}, error=reason)
            observer.add_error("mount_failed")
            observer.close(final_poll=False)
        raise MountError(reason)

    def _stop_refused(self) -> bool:
        """A first stop request with other mounts inside this one: refuse it, naming them (True).

        Unmounting the outer mount would need a lazy detach, which takes every
        mount inside it along; a second request (``signals`` > 1) stops anyway.
        """
        if self.signals > 1:
            return False
        inside = nested_mounts(self.spec.mountpoint, self.mountinfo_path)
        if not inside:
            return False
        warn(f"not stopping: {self.spec.mountpoint} has other mounts inside it ({', '.join(inside)}); "
             f"a stop now would detach them too. Stop those first (obsctl unmount PATH), or send the "
             f"stop signal again to stop anyway")
        self.stop_requested.clear()
        return True

    def _supervise(self) -> int:
        exit_code = 0
        self.observer.start_polling(lambda: self.observer.state == "ready")
        while True:
            while not self.stop_requested.wait(WATCH_INTERVAL):
                if self.proc is not None and self.proc.poll() is not None:
                    if not self._handle_driver_exit():
                        exit_code = self.exit_code
                        break
                elif self.reload_requested.is_set() and self.observer.state == "ready":
                    self.reload()
            if exit_code or not self._stop_refused():
                break
        return self._shutdown(exit_code)

    def _handle_driver_exit(self) -> bool:
        """The driver died under a live mount: mark it down, clear the dead mount, then restart
        it if obsctl owns restarts (:func:`restart_owner`).

        * under systemd: no restart here; :attr:`exit_code` 1 (the unit's
          Restart=on-failure restarts it within its StartLimitBurst=) or
          :data:`~obsctl.errors.EXIT_PERMANENT` for a permanent error (the
          unit's RestartPreventExitStatus= keeps it failed);
        * in the foreground: backoff min(2**(n-1), :data:`MAX_BACKOFF`) s, at
          most the spec's ``max_restarts`` tries, a failed try counting as one;
          a permanent error (:func:`permanent_error`) stops at once.

        Returns False when obsctl must shut down (state ``failed``, exit
        status in :attr:`exit_code`); True after a restart or when a stop was
        requested meanwhile (the caller's loop sees it).
        """
        assert self.proc is not None and self.pump is not None
        observer = self.observer
        code = self.proc.returncode
        died_ns = time.time_ns()
        owner = restart_owner()
        observer.mark(health.DOWN, "restarting" if owner == "obsctl" and observer.restarts < self.spec.max_restarts
                      else "failed")
        # A dead driver's mount answers ENOTCONN; nothing can be waiting on it: lazy at once.
        if not unmount_once(self.spec.mountpoint, path=self.mountinfo_path):
            unmount_once(self.spec.mountpoint, lazy=True, path=self.mountinfo_path)
        self.pump.join(1)
        reason = self._failure(f"{self.driver.name} {describe_exit(code)}")
        print(f"obsctl: {reason}", file=sys.stderr, flush=True)
        observer.add_error("driver_exit")
        observer.span("driver.exit", died_ns, {"process.exit.code": code}, error=reason)
        # a running driver that died is worth a start; only a start's failure is judged permanent
        permanent: str | None = None
        if owner == "systemd":
            self.exit_code, observer.state = EXIT_FAILED, "failed"
            print("obsctl: exiting; systemd restarts the unit (its Restart= and StartLimitBurst= are the restart "
                  "budget; a start that fails for a permanent reason exits 3 and is not restarted)",
                  file=sys.stderr, flush=True)
            return False
        while True:
            if permanent:
                self.exit_code, observer.state = EXIT_PERMANENT, "failed"
                print(f"obsctl: permanent error ({permanent}): not restarting; fix it and mount again",
                      file=sys.stderr, flush=True)
                return False
            if observer.restarts >= self.spec.max_restarts:
                self.exit_code, observer.state = EXIT_FAILED, "failed"
                print(f"obsctl: giving up after {observer.restarts} restart(s) (max_restarts)", file=sys.stderr,
                      flush=True)
                return False
            observer.state = "restarting"
            backoff = min(MAX_BACKOFF, 2.0 ** observer.restarts)
            if self.stop_requested.wait(backoff):
                return True
            observer.add_restart()
            started = time.time_ns()
            try:
                self._spawn()
                self._wait_ready()
            except Interrupted:
                abort(self.proc, self.spec.mountpoint, self.mountinfo_path)
                return True
            except Exception as exc:  # MountError, or ConfigError from the driver's plan
                observer.span("restart", started, {"obsctl.restart.count": observer.restarts}, error=str(exc))
                print(f"obsctl: restart {observer.restarts} of {self.spec.max_restarts} failed: {exc}",
                      file=sys.stderr, flush=True)
                abort(self.proc, self.spec.mountpoint, self.mountinfo_path)
                permanent = permanent_error(str(exc))
                if not isinstance(exc, MountError):
                    self.exit_code, observer.state = EXIT_FAILED, "failed"
                    return False
                continue
            break
        observer.span("restart", started, {"obsctl.restart.count": observer.restarts})
        observer.state = "ready"
        # Announced before the probe can say "up" again: obsctl_mount_up stays 0 from the
        # driver's death until this line (tests/integration/test_lifecycle_faults.py).
        print(f"obsctl: restarted {self.driver.name} (driver pid {self.proc.pid})", file=sys.stderr, flush=True)
        # health from a real probe again; a poll stuck on the old driver is not waited for
        # (the poller's next round then sets it)
        observer.poll(wait=0.5)
        observer.write_state()
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
        observer = self.observer
        sd_notify("STOPPING=1")
        observer.mark(health.STOPPING, "stopping" if exit_code == 0 else "failed")
        observer.stop_polling(join=False)
        self._stop_driver()
        observer.stop_polling()  # a poll blocked on the old driver ends once the driver is gone
        observer.span("unmount", started, {})
        # Every log line is in now (the pump hit EOF): the counters are final.
        observer.close(failed=exit_code != 0)
        print(f"obsctl: unmounted {self.spec.mountpoint}", file=sys.stderr, flush=True)
        return exit_code
