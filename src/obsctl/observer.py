"""One observer of one FUSE mount: telemetry, instruments, collectors, one poll, one ``status()``, the state file.

Used alike by ``obsctl mount`` (:class:`obsctl.supervisor.Supervisor`, which
keeps only the driver's lifecycle) and ``obsctl sidecar``
(:class:`obsctl.sidecar.Sidecar`, a driver someone else started). What it
observes:

* every driver (:func:`generic_collectors`): /proc/PID/io
  (:class:`~obsctl.collectors.proc_io.ProcIoCollector`), the FUSE
  connection's ``waiting`` (:class:`~obsctl.collectors.fuse_conn.FuseConnCollector`)
  and the bounded health probe (:class:`~obsctl.collectors.probe.MountProbe`,
  the one owner of ``obsctl_mount_up`` and of the state file's ``health``);
* the kernel's FUSE trace (:func:`obsctl.sources.kernel_source`), with the
  source table that decides which quantity the kernel or the driver's log owns;
* the driver's own collectors (:meth:`obsctl.drivers.Driver.polling_collectors`,
  :meth:`~obsctl.drivers.Driver.log_collectors`) for the
  :class:`DriverConnection` last attached: rclone's rc API, its log, s3fs's log ...

The steps, each explicit so a caller can order them as it needs:

1. :meth:`MountObserver.start` (or :meth:`~MountObserver.start_in_background`,
   so the OpenTelemetry SDK's import overlaps the driver's start): telemetry
   and the generic and kernel collectors;
2. :meth:`~MountObserver.attach` a :class:`DriverConnection`, before or after
   :meth:`~MountObserver.start` (the driver's collectors are built as soon as
   both happened), again after each restart (the old driver's are closed);
3. :meth:`~MountObserver.poll` / :meth:`~MountObserver.start_polling`, with
   :meth:`~MountObserver.write_state` (the one state-file schema,
   :mod:`obsctl.statefile`);
4. :meth:`~MountObserver.reload_from` (SIGHUP of ``obsctl mount`` and of
   ``obsctl sidecar`` alike) re-reads the telemetry config and
   applies it (:meth:`~MountObserver.reload`): exporters and collectors are rebuilt,
   the attached driver is untouched; a file that does not load or start keeps
   the settings in force;
5. :meth:`~MountObserver.close`: a last poll, every collector closed, the state
   file removed, the final export.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from obsctl import health, mounttable, scrape, statefile
from obsctl.collectors import collector_status
from obsctl.config import DEFAULT_STALL_SECONDS, TelemetryConfig
from obsctl.errors import ConfigError
from obsctl.drivers import Driver, LaunchPlan, PlanContext
from obsctl.sources import kernel_complete, kernel_source

log = logging.getLogger("obsctl")

#: How long the supervisor's steady-state health probe may block on a hung driver (s):
#: a poll never delays a stop by more than this.
PROBE_TIMEOUT = 0.8


def plan_context(telemetry: TelemetryConfig) -> PlanContext:
    """The :class:`~obsctl.drivers.PlanContext` of a mount run with ``telemetry`` on this host.

    ``listen`` is ``telemetry.exports_metrics`` (mode none opens no port, not
    even rclone's loopback rc API); ``kernel_complete`` is read from the running
    kernel's tracefs now (:func:`obsctl.sources.kernel_complete`).
    """
    return PlanContext(telemetry=telemetry, listen=telemetry.exports_metrics, kernel_complete=kernel_complete())


def generic_collectors(instruments: Any, mountpoint: str, pid_getter: Callable[[], int | None],
                       probe_timeout: float = 2.0,
                       mountinfo_path: str = mounttable.MOUNTINFO_PATH,
                       stall_seconds: float = DEFAULT_STALL_SECONDS) -> tuple[Any, Any, list[Any]]:
    """The collectors that observe any FUSE driver: /proc/PID/io, the FUSE
    connection's ``waiting``, the bounded health probe.

    ``probe_timeout`` (s) and ``mountinfo_path`` are the probe's
    (:class:`~obsctl.collectors.probe.MountProbe`); ``stall_seconds`` is the
    mount's stall bound (s, the spec's ``stall_timeout_seconds``:
    :class:`~obsctl.collectors.fuse_conn.FuseConnCollector`).
    Returns ``(proc_io, probe, [proc_io, fuse_conn, probe])``.
    """
    # start-up cost: the collectors import the OpenTelemetry API, after the driver was spawned
    from obsctl.collectors.fuse_conn import FuseConnCollector
    from obsctl.collectors.probe import MountProbe  # start-up cost: as above
    from obsctl.collectors.proc_io import ProcIoCollector  # start-up cost: as above

    proc_io = ProcIoCollector(instruments, pid_getter)
    fuse_conn = FuseConnCollector(instruments, mountpoint, stall_seconds=stall_seconds)
    # polled before the probe, which turns an answering mount whose requests stall into "stalled"
    probe = MountProbe(instruments, mountpoint, timeout=probe_timeout, mountinfo_path=mountinfo_path,
                       stalled=lambda: fuse_conn.stalled)
    return proc_io, probe, [proc_io, fuse_conn, probe]


@dataclass(frozen=True)
class MountLabels:
    """Who the mount is, as every metric, span and the state file name it.

    Attributes:
        mountpoint: absolute path.
        source: ``s3://bucket/prefix`` or the generic driver's / side-car's text.
        bucket: the ``bucket`` label.
        impl: the driver's name (``rclone``, ``generic`` ...).
        name: the obsctl mount name, or None.
        resource: extra OpenTelemetry resource attributes (``obsctl.sidecar``).
    """

    mountpoint: str
    source: str
    bucket: str
    impl: str
    name: str | None = None
    resource: dict[str, str] = field(default_factory=dict)

    def resource_attributes(self) -> dict[str, str]:
        """``obsctl.mount.source``, ``obsctl.mount.impl`` (and ``.name``), then :attr:`resource`."""
        attrs = {"obsctl.mount.source": self.source, "obsctl.mount.impl": self.impl}
        if self.name:
            attrs["obsctl.mount.name"] = self.name
        return {**attrs, **self.resource}


@dataclass
class DriverConnection:
    """One running driver process, as the observer sees it.

    Attributes:
        pid: returns the driver's pid while it runs, else None.
        start_time: the driver's start time in clock ticks (:func:`obsctl.procutil.start_time`),
            so a recycled pid is never taken for it; None when unknown.
        driver: whose collectors to attach (None: the generic ones only).
        plan: its launch plan (``extras``: rclone's rc URL and credentials ...).
        pump: its log pump, or None when nobody reads its log (``obsctl sidecar``).
    """

    pid: Callable[[], int | None]
    start_time: int | None = None
    driver: Driver | None = None
    plan: LaunchPlan = field(default_factory=lambda: LaunchPlan(argv=[], env={}, fstype=None))
    pump: Any = None


class MountObserver:
    """Observe one mount (see the module docstring for the steps).

    Args:
        labels: the mount's :class:`MountLabels`.
        telemetry: the validated telemetry config.
        runtime_dir: where the state file lives (``/run/obsctl``).
        state: the lifecycle word the state file starts with (``starting``,
            ``observing``); the owner sets :attr:`state` as it changes.
        poll_interval: seconds between polls of :meth:`start_polling` (default 2 s).
        probe_timeout: the health probe's bound (s), default :data:`PROBE_TIMEOUT`.
        mountinfo_path: the mount table (unit tests inject a file).
        driver_log: False when nobody reads the driver's log (the side-car):
            the source table then never gives a quantity to it.
        driver_answers: the driver's :attr:`~obsctl.drivers.Driver.protocol_answers`.
        driver_source: the driver's own source and the quantities it gives
            (:attr:`~obsctl.drivers.Driver.log_source`, ``log_gives``).
        stall_seconds: the mount's stall bound (s): requests waiting unanswered longer make
            its health ``stalled`` (the spec's ``stall_timeout_seconds``, default
            :data:`obsctl.config.DEFAULT_STALL_SECONDS`).
    """

    def __init__(self, labels: MountLabels, telemetry: TelemetryConfig, runtime_dir: str, state: str = "starting",
                 poll_interval: float = 2.0, probe_timeout: float = PROBE_TIMEOUT,
                 mountinfo_path: str = mounttable.MOUNTINFO_PATH, driver_log: bool = True,
                 driver_answers: frozenset[tuple[str, str]] = frozenset(),
                 driver_source: tuple[str, frozenset[str]] = ("", frozenset()),
                 stall_seconds: float = DEFAULT_STALL_SECONDS) -> None:
        self.labels = labels
        self.stall_seconds = stall_seconds
        self.telemetry_cfg = telemetry
        self.poll_interval = poll_interval
        self.probe_timeout = probe_timeout
        self.mountinfo_path = mountinfo_path
        self.driver_log = driver_log
        self.driver_answers = driver_answers
        self.driver_source = driver_source
        self.state_path = statefile.state_file_path(runtime_dir, labels.mountpoint)
        self.publish_path = scrape.publish_path(runtime_dir, labels.mountpoint)
        #: The lifecycle word of the state file (``ready``, ``restarting``, ``observing`` ...).
        self.state = state
        self.restarts = 0
        self.started_at = time.time()
        self.ready_at: float | None = None
        self.connection: DriverConnection | None = None
        self.telemetry: Any = None
        self.probe: Any = None
        self.proc_io: Any = None
        self.sources: Any = None
        #: Every polling collector: the generic and kernel ones, then the attached driver's.
        self.polling: list[Any] = []
        self._generic: list[Any] = []
        self._driver_collectors: list[Any] = []
        #: Set once :meth:`start` ended; :attr:`start_error` then says whether it failed.
        self.started = threading.Event()
        self.start_error: BaseException | None = None
        self._attach_lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._poller_stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._first_export: threading.Timer | None = None

    # -- start / attach / reload ----------------------------------------------
    def start(self) -> None:
        """Telemetry (the OpenTelemetry SDK is imported here), the generic and the kernel collectors.

        Raises:
            whatever :class:`obsctl.telemetry.Telemetry` raises (a port in use, a bad endpoint).
        """
        # start-up cost: the OpenTelemetry SDK (~0.25 s) loads after the driver was spawned
        from obsctl.instruments import MountAttributes
        from obsctl.telemetry import Telemetry  # start-up cost: as above

        labels = self.labels
        telemetry = Telemetry(self.telemetry_cfg, MountAttributes(labels.bucket, labels.impl, labels.mountpoint),
                              resource_attributes=labels.resource_attributes(), publish_path=self.publish_path)
        ins = telemetry.instruments
        proc_io, probe, generic = generic_collectors(ins, labels.mountpoint, self._pid, self.probe_timeout,
                                                     self.mountinfo_path, self.stall_seconds)
        kernel, sources = kernel_source(ins, labels.impl, labels.mountpoint, driver_log=self.driver_log,
                                        driver_answers=self.driver_answers, driver_source=self.driver_source)
        with self._attach_lock:
            self.telemetry, self.proc_io, self.probe, self.sources = telemetry, proc_io, probe, sources
            self._generic = [*generic, kernel]
            self._build_driver_collectors()

    def start_in_background(self) -> threading.Thread:
        """:meth:`start` in a daemon thread; :attr:`started` is set when it ended, :attr:`start_error` on failure."""
        def run() -> None:
            try:
                self.start()
            except BaseException as exc:  # noqa: BLE001 - reported by the owner
                self.start_error = exc
            finally:
                self.started.set()

        thread = threading.Thread(target=run, name="telemetry-init", daemon=True)
        thread.start()
        return thread

    def attach(self, connection: DriverConnection) -> None:
        """Observe ``connection`` from now on; the previous driver's own collectors are closed.

        Before :meth:`start` the connection is only kept (its collectors are
        built when telemetry is up); the driver's log lines are buffered by
        its pump until then (:meth:`obsctl.logpump.LogPump.attach`).
        """
        with self._attach_lock:
            self.connection = connection
            if self.telemetry is not None:
                self._build_driver_collectors()

    def _build_driver_collectors(self) -> None:
        """(Re)build the attached driver's collectors (caller holds the attach lock)."""
        for old in self._driver_collectors:
            old.close()
        self._driver_collectors = []
        connection = self.connection
        if connection is not None and connection.driver is not None:
            ins = self.telemetry.instruments
            # the driver's own numbers pass its source view too (a FUSE quantity the kernel owns is dropped)
            self._driver_collectors = connection.driver.polling_collectors(self.sources.driver_view(ins),
                                                                           connection.plan)
            if connection.pump is not None:
                logs = connection.driver.log_collectors(self.sources.driver_view(ins), connection.plan)
                connection.pump.attach([c.feed for c in logs])
        self.polling = [*self._generic, *self._driver_collectors]

    def reload(self, telemetry: TelemetryConfig) -> None:
        """Rebuild telemetry and collectors for a new config; the attached driver keeps running.

        The old exporters get their final export first; counters start again
        from zero (a counter reset, which Prometheus' ``rate()`` and OTLP
        cumulative temporality both handle).

        Raises:
            as :meth:`start`; the old telemetry is shut down already then.
        """
        with self._poll_lock:
            pump = self.connection.pump if self.connection is not None else None
            if pump is not None:
                pump.hold()  # the driver's log lines wait for the new collectors (replayed at attach)
            self._close_collectors(final_poll=False)
            self._shutdown_telemetry()
            self.telemetry_cfg = telemetry
            self.start()
            if self._poller is not None:  # running: the new exporter's first export a second later, too
                self._first_export = threading.Timer(1.0, self.telemetry.flush)
                self._first_export.daemon = True
                self._first_export.start()

    def reload_from(self, loader: Callable[[], TelemetryConfig] | None) -> bool:
        """Re-read the telemetry config with ``loader`` and :meth:`reload` it: what SIGHUP
        (``systemctl reload``) does to ``obsctl mount`` and ``obsctl sidecar`` alike.

        The driver, its pid, its mount and every open file on it are untouched.
        A new file that does not load (``loader`` raises ConfigError or OSError:
        invalid, unreadable) keeps the settings in force; one whose telemetry does
        not start (an exporter or a port refused) is replaced by the old settings
        again. Either way one line on stderr says why. On success one line says
        the new mode and that the driver kept running, and the state file is
        rewritten. ``loader`` None: nothing to re-read (one line says so).

        Returns:
            True when the new settings are in force.
        """
        if loader is None:
            print("obsctl: reload: no telemetry file to re-read; settings unchanged", file=sys.stderr, flush=True)
            return False
        try:
            new = loader()
        except (ConfigError, OSError) as exc:
            print(f"obsctl: reload refused, keeping the previous telemetry settings: {exc}", file=sys.stderr,
                  flush=True)
            return False
        old = self.telemetry_cfg
        try:
            self.reload(new)
        except Exception as exc:  # noqa: BLE001 - a new exporter that cannot start: back to the old one
            print(f"obsctl: reload failed, keeping the previous telemetry settings: telemetry did not start "
                  f"with the new file: {exc}", file=sys.stderr, flush=True)
            try:
                self.reload(old)
            except Exception as again:  # noqa: BLE001 - the mount goes on without telemetry
                print(f"obsctl: the previous telemetry settings did not start again either: {again}",
                      file=sys.stderr, flush=True)
            return False
        self.poll(wait=0.5)
        self.write_state()
        print(f"obsctl: reloaded telemetry (mode {new.mode}); driver pid {self._pid() or '-'} "
              "and the mount untouched", file=sys.stderr, flush=True)
        return True

    # -- polling and the state file ---------------------------------------------
    def _pid(self) -> int | None:
        return self.connection.pid() if self.connection is not None else None

    def poll(self, wait: float | None = None) -> bool:
        """Poll every collector once (one poller at a time); False when another poll held the lock past ``wait`` s.

        The state file is rewritten as soon as the probe's health changed,
        so ``obsctl status`` does not lag the gauge behind slower collectors.
        Collectors never raise (:class:`obsctl.collectors.Collector`).
        """
        if not self._poll_lock.acquire(timeout=-1 if wait is None else wait):
            return False
        try:
            for collector in list(self.polling):
                before = self.probe.health if collector is self.probe else None
                collector.poll()
                if collector is self.probe and self.probe.health != before:
                    self.write_state()
            if self.telemetry is not None:
                self.telemetry.poll()  # the host's scrape endpoint: take the port if free, publish
        finally:
            self._poll_lock.release()
        return True

    def start_polling(self, active: Callable[[], bool]) -> None:
        """Poll and write the state file every ``poll_interval`` s in a thread, while ``active()``.

        Polls run off the caller's thread, so a collector blocked on a hung
        driver (the probe's bound, rclone rc's 1 s per request) never delays
        the driver watch or a stop. The first export follows one second later.
        """
        def loop() -> None:
            while not self._poller_stop.wait(self.poll_interval):
                if active():
                    self.poll()
                    if active():
                        self.write_state()

        self._poller = threading.Thread(target=loop, name="collector-poll", daemon=True)
        self._poller.start()
        self._first_export = threading.Timer(1.0, self.telemetry.flush)
        self._first_export.daemon = True
        self._first_export.start()

    def stop_polling(self, join: bool = True) -> None:
        """End the poller (a poll blocked on a hung driver is waited for at most 2 s when ``join``)."""
        self._poller_stop.set()
        if self._first_export is not None:
            self._first_export.cancel()
        if join and self._poller is not None:
            self._poller.join(2.0)

    def mark(self, word: str, state: str | None = None) -> None:
        """The mount cannot serve (``down``, ``stopping``: :mod:`obsctl.health`): say so at once, in the
        gauge and the state file (and set :attr:`state` when given)."""
        if state is not None:
            self.state = state
        if self.probe is not None:
            self.probe.mark(word)
        self.write_state()

    def status(self) -> dict[str, Any]:
        """The JSON object ``obsctl status`` shows for this mount (the one format, :mod:`obsctl.statefile`).

        ``health``, ``driver_io`` and ``driver_stats`` are the collectors' own
        parts (:meth:`obsctl.collectors.Collector.status`).
        """
        totals = self.telemetry.instruments.totals if self.telemetry else {}
        collected = collector_status(self.polling)
        labels = self.labels
        driver_pid = self._pid()
        return {
            "name": labels.name,
            "mountpoint": labels.mountpoint,
            "source": labels.source,
            "bucket": labels.bucket,
            "impl": labels.impl,
            "state": self.state,
            "pid": os.getpid(),
            "driver_pid": driver_pid,
            "driver_start": self.connection.start_time if driver_pid and self.connection else None,
            "started_at": self.started_at,
            "ready_at": self.ready_at,
            "restarts": self.restarts,
            "health": collected["health"],
            "read_bytes": int(totals.get("obsctl_fs_read_bytes", 0)),
            "write_bytes": int(totals.get("obsctl_fs_write_bytes", 0)),
            "write_refused_bytes": int(totals.get("obsctl_fs_write_refused_bytes", 0)),
            "fs_ops": int(totals.get("obsctl_fs_ops", 0)),
            "errors": int(totals.get("obsctl_errors", 0)),
            "driver_io": collected["driver_io"],
            "driver_stats": collected["driver_stats"],
            "telemetry_mode": self.telemetry_cfg.mode,
            "last_export": self.telemetry.export_status.as_dict() if self.telemetry else None,
            "prometheus": self._endpoint_status(),
            "live": self.telemetry.instruments.live() if self.telemetry else None,
            "sources": self.sources.as_dict() if self.sources is not None else None,
        }

    def _endpoint_status(self) -> dict[str, Any] | None:
        """``{"bind_address", "serving", "error"}`` of the host's scrape endpoint
        (:mod:`obsctl.scrape`), None without a bind_address."""
        endpoint = self.telemetry.endpoint if self.telemetry is not None else None
        if endpoint is None:
            return None
        return {"bind_address": endpoint.bind_address, "serving": endpoint.serving, "error": endpoint.bind_error}

    def write_state(self) -> None:
        """Write :meth:`status` to the state file, atomically (:func:`obsctl.statefile.write_state`)."""
        with self._state_lock:
            statefile.write_state(self.state_path, self.status())

    # -- telemetry the owner reports -----------------------------------------------
    def span(self, name: str, start_ns: int, attributes: dict[str, Any], error: str | None = None) -> None:
        """Record a finished span ``name`` (``mount``, ``restart``, ``driver.exit``, ``unmount``); never raises."""
        if self.telemetry is None:
            return
        try:
            # start-up cost: the OpenTelemetry API's trace part, only once telemetry runs
            from opentelemetry.trace import Status, StatusCode

            span = self.telemetry.tracer.start_span(name, start_time=start_ns, attributes={
                "obsctl.mount.source": self.labels.source, "obsctl.mount.impl": self.labels.impl,
                "obsctl.mount.mountpoint": self.labels.mountpoint, **attributes})
            if error:
                span.set_status(Status(StatusCode.ERROR, error))
            span.end()
        except Exception:  # telemetry never takes the lifecycle down
            log.debug("span %s failed", name, exc_info=True)

    def add_error(self, error_type: str) -> None:
        """Count one ``obsctl_errors_total{error_type}`` (``driver_exit``, ``mount_failed``), if telemetry runs."""
        if self.telemetry is not None:
            self.telemetry.instruments.add_error(error_type)

    def add_restart(self) -> None:
        """Count one restart (:attr:`restarts` and ``obsctl_restarts_total``)."""
        self.restarts += 1
        if self.telemetry is not None:
            self.telemetry.instruments.add_restart()

    # -- close ---------------------------------------------------------------------
    def _close_collectors(self, final_poll: bool) -> None:
        for collector in self.polling:
            # the driver is gone by now: its log is read to the end, its counters are final;
            # /proc/PID/io and the probe would only see the missing process / mount
            if final_poll and collector is not self.proc_io and collector is not self.probe:
                collector.poll()
            collector.close()
        self.polling, self._generic, self._driver_collectors = [], [], []

    def _shutdown_telemetry(self, failed: bool = False) -> None:
        """Final export, bounded by the export timeout; a failure is one warning line, never a traceback."""
        if self.telemetry is None:
            return
        try:
            self.telemetry.shutdown(failed=failed)
        except Exception as exc:  # noqa: BLE001
            log.warning("final telemetry export failed: %s", exc)
        self.telemetry = None

    def close(self, final_poll: bool = True, failed: bool = False) -> None:
        """The end: a last poll (``final_poll``), every collector closed, the state file removed, the final export.

        ``failed``: the mount failed (a permanent error, the restart budget spent): its
        ``obsctl_mount_up`` is 0 in the final export and stays published for the host's
        scrape endpoint (:mod:`obsctl.scrape`), so the ObsctlMountDown alert sees it.
        """
        self.stop_polling()
        self._close_collectors(final_poll)
        if failed and self.probe is not None:
            self.probe.mark(health.DOWN)
        statefile.remove_state(self.state_path)
        self._shutdown_telemetry(failed)
