"""FUSE operations, latency, errors and bytes from the kernel's own tracepoints.

Source: the ``fuse:fuse_request_send`` and ``fuse:fuse_request_end``
tracepoints (Linux 6.12+, ``fs/fuse/fuse_trace.h``), read from a private
tracefs instance per mount, ``instances/obsctl-<obsctl pid>-<connection>``,
with both events filtered on ``connection == N`` (N = the minor of the
mount's ``0:N`` device in /proc/self/mountinfo, the N of
/sys/fs/fuse/connections/N). Works for every FUSE driver alike, with no
logging in the driver. Lines of ``trace_pipe`` as this kernel (6.18) prints
them (captured in tests/fixtures/fuse_trace/)::

    cat-17967 [001] ...2. 831.693997: fuse_request_send: connection 40 req 12 opcode 15 (FUSE_READ) len 80
    bindfs-17956 [001] ..... 831.694043: fuse_request_end: connection 40 req 12 len 22 error 0

What is taken from which line (print formats from the events' ``format``
files: ``connection %u req %llu opcode %u (%s) len %u`` and
``connection %u req %llu len %u error %d``):

* Kernel support is detected, never assumed (:func:`detect_support`):
  ``paired`` (6.18+: the send line carries the request id), ``unpaired``
  (6.12-6.17: every send line says ``req 0``; also chosen at run time the
  moment a ``req 0`` send line is seen), ``none`` (no tracepoints, no
  tracefs, or no permission: one warning per process, then the driver
  sources feed the metrics, see :mod:`obsctl.sources`).
* paired: send and end are paired by (connection, req). On the end line:
  ``record_fs_op(opcode, (end ts - send ts) * 1000)`` (ms, trace clock
  resolution 1 us); write bytes = send ``len`` - 80 (40-byte ``fuse_in_header``
  + 40-byte ``fuse_write_in``) of a WRITE whose end has error 0; read bytes =
  end ``len`` - 16 (``fuse_out_header``) of a READ with error 0. These are
  the bytes between the kernel and the daemon: reads are what the daemon
  delivered to the page cache (the kernel asks in pages and reads ahead, so
  a small read of a large file fetches up to the readahead window, and a
  re-read from the page cache sends nothing); writes are exact per write
  call without ``writeback_cache`` and page-granular with it.
* unpaired: the opcode is only on the send line and the latency needs both,
  so: ``record_fs_op(opcode)`` on each send line (no latency) and errors from
  end lines (no bytes). ENOENT / ENODATA / ENOSYS end lines are not counted
  there because the opcode needed to tell a lookup miss from a failure is
  unknown.
* Errors: end ``error`` < 0 -> ``add_error(errno name lower-case)``
  (``-2`` -> ``enoent``, ``-13`` -> ``eacces``), except the answers that are
  the FUSE protocol working, not a failure (:data:`NOT_FAILURES`): ENOENT of
  LOOKUP (the rule of :mod:`obsctl.collectors.rclone_log`: every stat of a
  missing name and every create starts with one), ENODATA / ERANGE of
  GETXATTR / LISTXATTR (no such attribute / size probe: the kernel asks
  ``security.capability`` before every write) and ENOSYS of any opcode
  (the daemon does not implement it; the kernel stops sending it).
* Opcode labels: :data:`OPCODES`, the vocabulary of the log collectors
  (lower-case: ``lookup``, ``getattr``, ``open``, ``read``, ``write``,
  ``create``, ``unlink``, ``readdir`` ...).
* FORGET and INTERRUPT fire no event; a request killed while queued has no
  end line: at most ``max_pending`` requests wait for their end, the oldest
  is dropped beyond that (:attr:`FuseTraceCollector.evicted`).

Keeping up: ``trace_pipe`` is read in a thread every 50 ms until empty
(a read returns at most ~8 KiB: one trace_seq buffer), with one
precompiled regex over each piece. A request is counted at its send line.
The kernel's ring buffer never blocks the FUSE request path: if the reader
falls behind, the kernel overwrites the oldest events and counts them in
``per_cpu/cpuN/stats`` (read into :attr:`FuseTraceCollector.lost`). The
collector degrades to counting (:attr:`FuseTraceCollector.degraded`: only
send lines are parsed, opcodes tallied per chunk, no latency, no pairing)
when a read cycle used more than :data:`DEGRADE_BUSY` of a core, hit
:data:`MAX_READS`, or the loss count grew; it returns to full mode after
``recover_after`` cycles below half the byte rate of the switch
(:meth:`FuseTraceCollector.note_cycle`). What could not be recorded is
exported as ``obsctl_kernel_events_lost_total{source="tracefs", part}``
(:meth:`FuseTraceCollector._account`): counted + ``part="count"`` = the
kernel's own count. bench/fuse_trace.py measures the rates.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import subprocess
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from obsctl import mounttable
from obsctl.collectors import NOT_FAILURES, PollingCollector, is_failure
from obsctl.instruments import Instruments

log = logging.getLogger(__name__)

#: Where tracefs is mounted on systemd hosts and where obsctl mounts it.
DEFAULT_TRACEFS = "/sys/kernel/tracing"
#: Both events of the ``fuse`` trace system.
EVENTS = ("fuse_request_send", "fuse_request_end")
#: Instance name prefix; the full name is ``obsctl-<pid>-<connection>``.
INSTANCE_PREFIX = "obsctl-"
_INSTANCE_NAME = re.compile(r"^obsctl-(\d+)-(\d+)$")

#: Size of ``fuse_in_header`` (40) + ``fuse_write_in`` (40), include/uapi/linux/fuse.h.
WRITE_OVERHEAD = 80
#: Size of ``fuse_out_header``, include/uapi/linux/fuse.h.
REPLY_HEADER = 16
#: Bytes asked from trace_pipe per read(); a full read means a backlog.
CHUNK = 1 << 20
#: Seconds between two reads of trace_pipe.
READ_INTERVAL = 0.05

#: FUSE opcode name (as the send line prints it) -> opcode label. Names not
#: listed: lower-cased without ``FUSE_``. Chosen to match the labels of the
#: log collectors (rclone_log's ``Attr`` -> ``getattr``, ``ReadDirAll`` ->
#: ``readdir``; s3fs_log's ``s3fs_unlink`` -> ``unlink``).
OPCODES: dict[str, str] = {
    "FUSE_READDIRPLUS": "readdir",
    "FUSE_RENAME2": "rename",
    "FUSE_BATCH_FORGET": "forget",
}


#: One regex for both events, anchored at the line start so the requesting
#: task comes with it (a separate task regex over the chunk cost as much as
#: all the rest of the parsing: bench/fuse_trace.py). Groups: comm, pid, ts
#: seconds, ts microseconds, then req, opcode name, len (send) or req, len,
#: error (end). ``comm`` may hold spaces and dashes: the lazy match stops at
#: the last ``-PID [CPU]`` (the kernel prints ``%16s-%-7d [%03d]``).
_LINE = re.compile(
    rb"(?m)^ *([^\n]*?)-(\d+) +\[\d+\] \S+ +(\d+)\.(\d{6}): fuse_request_(?:"
    rb"send: connection \d+ req (\d+) opcode \d+ \((\w+)\) len (\d+)"
    rb"|end: connection \d+ req (\d+) len (\d+) error (-?\d+))")
#: Counting mode: only send lines, only the opcode name.
_SEND_OPCODE = re.compile(rb"fuse_request_send: connection \d+ req \d+ opcode \d+ \((\w+)\)")
_END = b"fuse_request_end:"
#: What trace_pipe prints where the ring buffer lost events before the next
#: one: ``CPU:%d [LOST %lu EVENTS]`` (kernel/trace/trace.c, print_trace_line).
_LOST_MARK = b" [LOST "
#: errno names that are a failure for some opcodes only (unpaired mode cannot tell).
_AMBIGUOUS = frozenset(name for _op, name in NOT_FAILURES)
#: Lines of ``per_cpu/cpuN/stats`` that count events the reader never got:
#: ``overrun`` (overwritten, the default overwrite mode), ``commit overrun``
#: (lost while the writer wrapped the buffer during a nested write: seen here
#: with an 8 KiB buffer) and ``dropped events`` (refused, with
#: ``options/overwrite`` 0); kernel/trace/trace.c tracing_stats_read. Their sum
#: equalled the ``[LOST N EVENTS]`` markers of trace_pipe in the integration test.
_LOST_LINES = re.compile(r"^(?:overrun|commit overrun|dropped events): (\d+)$", re.M)
#: Reader CPU share (thread CPU s / wall s of a read cycle) above which the
#: collector degrades to counting mode: a quarter of one core.
DEGRADE_BUSY = 0.25
#: Reads of one cycle after which a backlog is assumed (8 KiB each: trace_pipe
#: returns at most one page per read(), kernel/trace/trace.c tracing_read_pipe).
MAX_READS = 256

_warned = False


def opcode_label(name: str) -> str:
    """``FUSE_GETATTR`` -> ``getattr`` (see :data:`OPCODES`)."""
    label = OPCODES.get(name)
    if label is None:
        label = name[5:].lower() if name.startswith("FUSE_") else name.lower()
        OPCODES[name] = label
    return label


def errno_label(error: int) -> str:
    """``-13`` -> ``eacces``; an unknown number -> ``errno_N``."""
    name = errno.errorcode.get(-error)
    return name.lower() if name else f"errno_{-error}"


@dataclass(frozen=True)
class KernelSupport:
    """What the running kernel's FUSE tracepoints can give.

    Attributes:
        level: ``paired`` (6.18+), ``unpaired`` (6.12-6.17) or ``none``.
        reason: one sentence for ``obsctl status`` and the warning.
        tracefs: the tracefs root used.
    """

    level: str
    reason: str
    tracefs: str

    @property
    def available(self) -> bool:
        return self.level != "none"


def kernel_pairs(release: str) -> bool:
    """True when kernel ``release`` (``6.18.44-...``) prints the request id on send (>= 6.18)."""
    match = re.match(r"(\d+)\.(\d+)", release)
    return bool(match) and (int(match.group(1)), int(match.group(2))) >= (6, 18)


def ensure_tracefs(tracefs: str = DEFAULT_TRACEFS) -> bool:
    """Mount tracefs at ``tracefs`` when it is the standard path and not mounted yet.

    Returns True when ``tracefs/events`` exists afterwards. Needs root; never raises.
    """
    if os.path.isdir(os.path.join(tracefs, "events")):
        return True
    if tracefs != DEFAULT_TRACEFS or not os.path.isdir(tracefs):
        return False
    try:
        subprocess.run(["mount", "-t", "tracefs", "nodev", tracefs], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return os.path.isdir(os.path.join(tracefs, "events"))


def detect_support(tracefs: str = DEFAULT_TRACEFS, release: str | None = None,
                   disabled: bool | None = None) -> KernelSupport:
    """Find out what the kernel source can give on this host (no side effect but mounting tracefs).

    Args:
        tracefs: tracefs root.
        release: kernel release (default ``os.uname().release``).
        disabled: force off (default: environment ``OBSCTL_FUSE_TRACE`` is
            ``0``/``off``/``false``/``no``).
    """
    if disabled is None:
        disabled = os.environ.get("OBSCTL_FUSE_TRACE", "").strip().lower() in ("0", "off", "false", "no")
    if disabled:
        return KernelSupport("none", "disabled by OBSCTL_FUSE_TRACE", tracefs)
    release = release or os.uname().release
    if os.path.isdir(tracefs) and not os.access(tracefs, os.R_OK | os.X_OK):
        return KernelSupport("none", f"no permission to read tracefs at {tracefs} (obsctl must run as root)",
                             tracefs)
    if not ensure_tracefs(tracefs):
        return KernelSupport("none", f"tracefs is not mounted at {tracefs} and could not be mounted "
                             "(needs root: mount -t tracefs nodev /sys/kernel/tracing)", tracefs)
    events = os.path.join(tracefs, "events", "fuse")
    if not all(os.path.isdir(os.path.join(events, ev)) for ev in EVENTS):
        return KernelSupport("none", f"kernel {release} has no fuse:fuse_request_send/_end tracepoints "
                             "(they came in 6.12)", tracefs)
    instances = os.path.join(tracefs, "instances")
    if not os.access(instances, os.W_OK):
        return KernelSupport("none", f"no permission to create tracefs instances in {instances} "
                             "(obsctl must run as root)", tracefs)
    if kernel_pairs(release):
        return KernelSupport("paired", f"kernel {release}: requests paired by id (6.18+)", tracefs)
    return KernelSupport("unpaired", f"kernel {release}: send events carry no request id before 6.18; "
                         "counts and errors only", tracefs)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_instances(tracefs: str = DEFAULT_TRACEFS) -> list[str]:
    """Remove ``instances/obsctl-<pid>-<conn>`` whose obsctl ``pid`` is gone (a crash).

    The kernel refuses (EBUSY) to remove an instance whose trace_pipe is
    open, so an instance of a live obsctl whose pid is not visible here (an
    obsctl in another pid namespace, e.g. a container) is never removed.
    Returns the names removed. Never raises.
    """
    removed = []
    root = os.path.join(tracefs, "instances")
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        match = _INSTANCE_NAME.match(name)
        if not match or _pid_alive(int(match.group(1))):
            continue
        try:
            os.rmdir(os.path.join(root, name))
            removed.append(name)
        except OSError as exc:
            log.debug("stale tracefs instance %s not removed: %s", name, exc)
    return removed


class FuseTraceCollector(PollingCollector):
    """Kernel FUSE request events of one mount (see module doc).

    Args:
        instruments: where to record.
        mountpoint: the mount's absolute path; its connection is looked up on
            every poll, so a driver restart (new connection) gets a new instance.
        tracefs: tracefs root.
        mountinfo_path: the mount table.
        support: the result of :func:`detect_support` (computed when None).
        max_pending: bound of requests waiting for their end line.
        recover_after: calm read cycles (each :data:`READ_INTERVAL` s apart,
            so 20 = 1 s) before leaving counting mode.
        degrade_busy: reader CPU share (of one core) that switches to counting mode.
        buffer_size_kb: the instance's per-CPU ring buffer size (``buffer_size_kb``),
            None for the kernel's default (1408 KiB on this kernel).
        warn: False when the caller already warned that ``support`` is ``none``
            (:func:`obsctl.sources.kernel_source`: one warning for eBPF and tracefs).

    Attributes:
        support: the :class:`KernelSupport` in force (``unpaired`` once a
            ``req 0`` send line was seen).
        connection: the FUSE connection traced, or None.
        instance: path of the tracefs instance, or None.
        events: event lines handled; ``sends`` / ``ends``: send and end lines
            read (``sends`` = requests counted in ``obsctl_fs_ops_total``);
            ``matched``: ends paired with their send (paired mode).
        lost: events the kernel never handed over (``overrun`` + ``commit
            overrun`` + ``dropped events`` of the instance's
            ``per_cpu/cpu*/stats``, summed, all instances of this collector);
        requests_lost: requests in no ``obsctl_fs_ops_total`` (see :meth:`_account`);
        details_lost: requests counted whose latency/bytes/errno are missing (paired mode);
        evicted: requests dropped from the pending table without an end;
        degraded: True while in counting mode; ``degraded_chunks``: chunks
        handled in counting mode; ``degradations``: switches to counting mode.
    """

    def __init__(self, instruments: Instruments, mountpoint: str, tracefs: str = DEFAULT_TRACEFS,
                 mountinfo_path: str = mounttable.MOUNTINFO_PATH, support: KernelSupport | None = None,
                 max_pending: int = 4096, recover_after: int = 20,
                 driver_answers: frozenset[tuple[str, str]] = frozenset(),
                 degrade_busy: float = DEGRADE_BUSY, buffer_size_kb: int | None = None,
                 warn: bool = True) -> None:
        super().__init__(instruments)
        self.buffer_size_kb = buffer_size_kb
        #: The driver's own protocol answers (:attr:`obsctl.drivers.Driver.protocol_answers`),
        #: not counted as errors in paired mode.
        self.driver_answers = driver_answers
        self.mountpoint = mountpoint
        self.tracefs = tracefs
        self.mountinfo_path = mountinfo_path
        self.support = support if support is not None else detect_support(tracefs)
        self.max_pending = max_pending
        self.recover_after = recover_after
        self.degrade_busy = degrade_busy
        self.connection: str | None = None
        self.instance: str | None = None
        self.events = 0
        self.sends = 0
        self.ends = 0
        self.matched = 0
        self.lost = 0
        self.requests_lost = 0
        self.details_lost = 0
        self.evicted = 0
        self.unmatched = 0
        self.degraded = False
        self.degraded_chunks = 0
        self.degradations = 0
        self._calm = 0
        self._trigger_rate = 0.0
        self._cycle_start: float | None = None
        self._rest = b""
        self._pending: OrderedDict[bytes, tuple[str, int, int]] = OrderedDict()
        self._labels: dict[str, dict[str, str]] = {}
        # per instance (reset when the connection changes): see _account
        self._inst_lost = 0
        self._inst_sends = 0
        self._inst_ends = 0
        self._first_req: int | None = None
        self._early_ends = 0
        self._early_until: int | None = None
        self._base_requests_lost = 0
        self._exported = {"count": 0, "detail": 0}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fd: int | None = None
        if self.support.available:
            remove_stale_instances(tracefs)
        elif warn:
            self._warn_once(self.support.reason)

    @staticmethod
    def _warn_once(reason: str) -> None:
        global _warned
        if not _warned:
            _warned = True
            log.warning("kernel FUSE events unavailable (%s): driver sources are used instead", reason)

    # -- instance ------------------------------------------------------------
    def _poll(self) -> None:
        """(Re)start tracing the mount's current connection; read the loss counters."""
        if not self.support.available:
            return
        conn = mounttable.fuse_connection_at(self.mountpoint, path=self.mountinfo_path)
        if conn != self.connection:
            self._stop_instance()
            if conn is not None:
                try:
                    self._start_instance(conn)
                except OSError as exc:
                    self._stop_instance()
                    self.support = KernelSupport("none", f"cannot set up a tracefs instance: {exc}",
                                                 self.tracefs)
                    self._warn_once(self.support.reason)
                    return
        self._read_lost()

    def _start_instance(self, conn: str) -> None:
        path = os.path.join(self.tracefs, "instances", f"{INSTANCE_PREFIX}{os.getpid()}-{conn}")
        if not os.path.isdir(path):
            os.mkdir(path)
        self.instance, self.connection = path, conn
        self.instruments.declare_kernel_lost("tracefs")
        with self._lock:
            self._inst_lost = self._inst_sends = self._inst_ends = self._early_ends = 0
            self._first_req = None
            self._early_until = None
            self._base_requests_lost = self.requests_lost
        if self.buffer_size_kb is not None:
            with open(os.path.join(path, "buffer_size_kb"), "w", encoding="ascii") as handle:
                handle.write(f"{int(self.buffer_size_kb)}\n")
        for event in EVENTS:
            base = os.path.join(path, "events", "fuse", event)
            with open(os.path.join(base, "filter"), "w", encoding="ascii") as handle:
                handle.write(f"connection == {int(conn)}\n")
            with open(os.path.join(base, "enable"), "w", encoding="ascii") as handle:
                handle.write("1\n")
        self._fd = os.open(os.path.join(path, "trace_pipe"), os.O_RDONLY | os.O_NONBLOCK)
        self._stop.clear()
        self._cycle_start = None
        self._thread = threading.Thread(target=self._run, name=f"fuse-trace-{conn}", daemon=True)
        self._thread.start()

    def _stop_instance(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(5)
        if self._fd is not None:
            try:
                self._drain()
                self._read_lost()
            finally:
                os.close(self._fd)
                self._fd = None
        path, self.instance, self.connection = self.instance, None, None
        if path is None:
            return
        for event in EVENTS:
            try:
                with open(os.path.join(path, "events", "fuse", event, "enable"), "w", encoding="ascii") as h:
                    h.write("0\n")
            except OSError:
                pass
        try:
            os.rmdir(path)
        except OSError as exc:
            log.warning("tracefs instance %s not removed: %s", path, exc)
        with self._lock:
            self._pending.clear()
            self._rest = b""

    def read_lost(self) -> int | None:
        """Events the kernel never handed to the reader of the current instance:
        ``overrun`` + ``commit overrun`` + ``dropped events`` of
        ``per_cpu/cpu*/stats`` (:data:`_LOST_LINES`), summed; None
        when there is no instance or the files cannot be read."""
        if self.instance is None:
            return None
        total = 0
        per_cpu = os.path.join(self.instance, "per_cpu")
        try:
            for cpu in os.listdir(per_cpu):
                with open(os.path.join(per_cpu, cpu, "stats"), encoding="ascii") as handle:
                    total += sum(int(n) for n in _LOST_LINES.findall(handle.read()))
        except OSError:
            return None
        return total

    def _read_lost(self) -> None:
        """Read the instance's loss counters; degrade on a new loss; export what is lost."""
        total = self.read_lost()
        if total is not None:
            with self._lock:
                if total > self._inst_lost:
                    self.lost += total - self._inst_lost
                    self._inst_lost = total
                    if not self.degraded:
                        self._degrade(self._trigger_rate)
                    self._calm = 0
        self._account()

    def _account(self) -> None:
        """Update :attr:`requests_lost` / :attr:`details_lost` and add their growth to
        ``obsctl_kernel_events_lost_total{source="tracefs", part}``.

        ``count``: every request has one send and one end event (FORGET and
        INTERRUPT have none), and ``trace_pipe`` hands events over in time
        order across CPUs, so for one instance, with L events lost (:meth:`read_lost`), S sends and E ends read (ends of requests sent before the
        instance existed left out), the sends lost are ``(L + E - S) / 2``
        exactly once no request is in flight and everything written was
        read; while requests are in flight the formula is lower by half of
        them, never higher. Counted requests (S) plus this equal the
        kernel's own count of the instance's requests; the counter keeps
        the highest value seen, so it never goes down and never overstates.
        ``detail`` (paired kernels): sends read whose end was not paired
        with them (end lost, read in counting mode, or evicted from the
        pending table) = S - paired ends - pending.
        """
        with self._lock:
            estimate = (self._inst_lost + self._inst_ends - self._early_ends - self._inst_sends) // 2
            self.requests_lost = max(self.requests_lost, self._base_requests_lost + max(0, estimate))
            if self.support.level == "paired":
                self.details_lost = max(self.details_lost, self.sends - self.matched - len(self._pending))
            count, detail = self.requests_lost, self.details_lost
        ins = self.instruments
        ins.add_kernel_lost(count - self._exported["count"], "tracefs", "count")
        ins.add_kernel_lost(detail - self._exported["detail"], "tracefs", "detail")
        self._exported = {"count": count, "detail": detail}

    def _close(self) -> None:
        """Stop the reader, disable the events, remove the instance."""
        self._stop_instance()

    # -- reading -------------------------------------------------------------
    def _run(self) -> None:
        """Every :data:`READ_INTERVAL` s, read what trace_pipe holds.

        Not poll(): trace_pipe wakes a waiting reader for every event, which in
        a request storm costs a context switch per few events on the cores the
        driver needs. The per-CPU ring buffer (1408 KiB by default, ~35000
        events) holds far more than arrives in one interval.
        """
        while not self._stop.wait(READ_INTERVAL):
            if not self._drain():
                return

    def _drain(self) -> bool:
        """Read trace_pipe until it is empty (non-blocking), at most :data:`MAX_READS`
        reads; then judge the cycle (:meth:`note_cycle`). False when it failed for good."""
        cpu0 = time.thread_time()
        nbytes, capped, ok = 0, True, True
        for _read in range(MAX_READS):
            try:
                data = os.read(self._fd, CHUNK)
            except BlockingIOError:
                capped = False
                break
            except OSError as exc:
                log.debug("trace_pipe read failed: %s", exc)
                capped, ok = False, False
                break
            if not data:
                capped = False
                break
            nbytes += len(data)
            self.feed_chunk(data)
        now = time.monotonic()
        if self._cycle_start is not None:
            self.note_cycle(nbytes, time.thread_time() - cpu0, now - self._cycle_start, capped)
        self._cycle_start = now
        return ok

    def note_cycle(self, nbytes: int, cpu_s: float, wall_s: float, capped: bool = False) -> None:
        """Judge one read cycle: ``nbytes`` read from trace_pipe, ``cpu_s`` of the
        reader thread's CPU spent on it, ``wall_s`` since the previous cycle,
        ``capped``: it stopped at :data:`MAX_READS` with data left.

        Full mode -> counting mode when the reader used more than
        ``degrade_busy`` of a core (``cpu_s / wall_s``) or was capped: a
        backlog that would otherwise grow until the kernel overwrites events.
        The byte rate at that moment is remembered; counting mode -> full
        mode after ``recover_after`` consecutive cycles below half of it.
        """
        rate = nbytes / wall_s if wall_s > 0 else 0.0
        with self._lock:
            if not self.degraded:
                if capped or (wall_s > 0 and cpu_s / wall_s > self.degrade_busy):
                    self._degrade(rate)
                return
            if rate <= self._trigger_rate / 2:
                self._calm += 1
                if self._calm >= self.recover_after:
                    self.degraded = False
                    self._pending.clear()
                    log.info("kernel FUSE events of %s: back to full mode", self.mountpoint)
            else:
                self._calm = 0

    def _degrade(self, rate: float) -> None:
        """Switch to counting mode (lock held)."""
        self.degraded, self._calm = True, 0
        self._trigger_rate = rate
        self.degradations += 1
        self._pending.clear()
        log.info("kernel FUSE events of %s: counting mode (backlog at %.0f bytes/s of trace_pipe)",
                 self.mountpoint, rate)

    def feed_chunk(self, data: bytes, full: bool = False) -> None:
        """Parse a piece of trace_pipe output (may split lines anywhere) and record it.

        ``full``: a backlog is known: switch to counting mode first (tests and
        benches; the reader decides in :meth:`note_cycle`). Never raises.
        """
        with self._lock:
            data = self._rest + data
            cut = data.rfind(b"\n") + 1
            self._rest = data[cut:][-4096:]
            data = data[:cut]
            if full and not self.degraded:
                self._degrade(0.0)
            self.guard("trace chunk", self._count_only if self.degraded else self._full, data)

    def _count_only(self, data: bytes) -> None:
        self.degraded_chunks += 1
        if _LOST_MARK in data:
            self._early_until = -1
        tally: dict[bytes, int] = {}
        for match in _SEND_OPCODE.finditer(data):
            name = match.group(1)
            tally[name] = tally.get(name, 0) + 1
        ends = data.count(_END)
        sends = sum(tally.values())
        self.events += sends + ends
        self.sends += sends
        self.ends += ends
        self._inst_sends += sends
        self._inst_ends += ends
        ins = self.instruments
        for name, n in tally.items():
            ins.record_fs_op(opcode_label(name.decode()), n=n)

    def _full(self, data: bytes) -> None:
        """Parse every line. A request is counted at its send line (the opcode is
        there; so a lost end loses its latency, not its count); counts, bytes,
        errors and requesters are summed per chunk and added once per label
        set (one SDK call instead of one per event); each latency is one
        histogram record."""
        pending = self._pending
        paired = self.support.level == "paired"
        # An end without its send is a request sent before the instance existed
        # only until the first loss: then its send may have been overwritten.
        early_until = len(data)
        if self._inst_lost or self._early_until is not None:
            early_until = -1
        else:
            mark = data.find(_LOST_MARK)
            if mark >= 0:
                early_until, self._early_until = mark, -1
        ops: dict[str, int] = {}
        errors: dict[str, int] = {}
        tasks: dict[tuple[bytes, bytes], int] = {}
        read_bytes = write_bytes = 0
        sends = ends = matched = 0
        record = self.instruments.record_fs_latency
        labels = self._labels
        for m in _LINE.finditer(data):
            name = m.group(6)
            if name is not None:  # send
                sends += 1
                opcode = opcode_label(name.decode())
                ops[opcode] = ops.get(opcode, 0) + 1
                task = m.group(1, 2)
                tasks[task] = tasks.get(task, 0) + 1
                req = m.group(5)
                if paired and req == b"0":
                    paired = self._unpair()
                if not paired:
                    continue
                if self._first_req is None:
                    self._first_req = int(req)
                pending[req] = (opcode, int(m.group(3)) * 1_000_000 + int(m.group(4)), int(m.group(7)))
                if len(pending) > self.max_pending:
                    pending.popitem(last=False)
                    self.evicted += 1
                continue
            ends += 1
            error = int(m.group(10))
            if not paired:
                if self._inst_sends + sends == 0 and m.start() < early_until:
                    self._early_ends += 1  # an end before any send: a request sent before the instance
                if error < 0:
                    label = errno_label(error)
                    if label not in _AMBIGUOUS:
                        errors[label] = errors.get(label, 0) + 1
                continue
            req = m.group(8)
            sent = pending.pop(req, None)
            if sent is None:
                self.unmatched += 1
                if m.start() < early_until and (self._first_req is None or int(req) < self._first_req):
                    self._early_ends += 1  # sent before the instance existed: not ours to count
                continue
            matched += 1
            opcode, t_send, send_len = sent
            attrs = labels.get(opcode)
            if attrs is None:
                attrs = labels[opcode] = {"opcode": opcode, **self.instruments.attrs.base()}
            record(opcode, (int(m.group(3)) * 1_000_000 + int(m.group(4)) - t_send) / 1000.0, attrs)
            if error < 0:
                label = errno_label(error)
                if is_failure(opcode, label, self.driver_answers):
                    errors[label] = errors.get(label, 0) + 1
            elif opcode == "read":
                read_bytes += int(m.group(9)) - REPLY_HEADER
            elif opcode == "write":
                write_bytes += send_len - WRITE_OVERHEAD
        self.events += sends + ends
        self.sends += sends
        self.ends += ends
        self.matched += matched
        self._inst_sends += sends
        self._inst_ends += ends
        ins = self.instruments
        if tasks:
            ins.count_requesters({f"{comm.decode(errors='replace')}[{pid.decode()}]": n
                                  for (comm, pid), n in tasks.items()})
        for opcode, n in ops.items():
            ins.record_fs_op(opcode, n=n)
        for label, n in errors.items():
            ins.add_error(label, n)
        ins.add_read_bytes(read_bytes)
        ins.add_write_bytes(write_bytes)

    def _unpair(self) -> bool:
        if self.support.level == "paired":
            self.support = KernelSupport(
                "unpaired", "send events carry request id 0 (kernel before 6.18): counts and errors only",
                self.tracefs)
            log.warning("kernel FUSE events cannot be paired on this kernel: no latency or bytes from them")
            self._pending.clear()
        return False

    @property
    def pending(self) -> int:
        """Requests waiting for their end line."""
        return len(self._pending)

    def stats(self) -> dict:
        """Counters for ``obsctl status --json``."""
        return {"support": self.support.level, "reason": self.support.reason, "connection": self.connection,
                "instance": os.path.basename(self.instance) if self.instance else None,
                "events": self.events, "sends": self.sends, "ends": self.ends, "lost": self.lost,
                "requests_lost": self.requests_lost, "details_lost": self.details_lost,
                "evicted": self.evicted, "pending": self.pending, "degraded": self.degraded,
                "degradations": self.degradations, "degraded_chunks": self.degraded_chunks}
