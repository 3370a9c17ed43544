"""Which source feeds which metric of a mount: one source per metric (DESIGN section 4).

The FUSE-level numbers can come from the kernel (first choice: eBPF,
:mod:`obsctl.collectors.fuse_bpf`; second: the tracepoints through tracefs,
:mod:`obsctl.collectors.fuse_trace`) or from a driver's log (:mod:`obsctl.collectors.rclone_log`,
:mod:`obsctl.collectors.s3fs_log`). Both recording the same operation would
count it twice, so each *quantity* below has one owner per mount, chosen in
this order of preference: the kernel when it can give the quantity, else the
driver's own source when it has it (the driver says which:
:attr:`obsctl.drivers.Driver.log_source` / ``log_gives``), else nothing.

Quantities (metric names as Prometheus shows them):

* ``fs_ops``: ``obsctl_fs_ops_total``
* ``fs_latency``: ``obsctl_fs_latency_ms``
* ``fs_bytes``: ``obsctl_fs_read_bytes_total`` and ``obsctl_fs_write_bytes_total``
* ``fs_errors``: ``obsctl_errors_total`` with an errno ``error_type``
  (``enoent``, ``eacces``, ``eio`` ...): what a FUSE request answered

What the kernel gives by level: ``ebpf`` (the eBPF source loaded: 5.15+ with
fentry, 6.12+ with the tracepoints' BTF hooks) all four; then by
:class:`~obsctl.collectors.fuse_trace.KernelSupport` level: ``paired`` (6.18+) all four; ``unpaired`` (6.12-6.17) ``fs_ops`` and
``fs_errors``; ``none`` nothing. The level is read at every decision, so a
kernel found unpaired at run time hands latency and bytes back to the driver
log at once.

Other error types (``http_403`` from s3fs's curl log or rclone's /metrics,
``rclone_error``, ``driver_exit`` ...) are another layer's view of a failure
and always come from their own source. The table (with the kernel collector's
own counters) is in ``obsctl status --json`` under ``sources``.
"""

from __future__ import annotations

import errno
from typing import Any, Callable

#: Quantity -> the metrics it covers (for status and docs).
QUANTITIES: dict[str, tuple[str, ...]] = {
    "fs_ops": ("obsctl_fs_ops_total",),
    "fs_latency": ("obsctl_fs_latency_ms",),
    "fs_bytes": ("obsctl_fs_read_bytes_total", "obsctl_fs_write_bytes_total"),
    "fs_errors": ("obsctl_errors_total{error_type=<errno>}",),
}

#: Kernel support level -> the quantities the kernel source gives.
KERNEL_GIVES: dict[str, frozenset[str]] = {
    "ebpf": frozenset(QUANTITIES),
    "paired": frozenset(QUANTITIES),
    "unpaired": frozenset({"fs_ops", "fs_errors"}),
    "none": frozenset(),
}

#: A driver's own source: (its name, the quantities it gives), from the driver's
#: :attr:`~obsctl.drivers.Driver.log_source` and :attr:`~obsctl.drivers.Driver.log_gives`.
NO_DRIVER_SOURCE: tuple[str, frozenset[str]] = ("", frozenset())

#: Lower-case errno names: an ``error_type`` among them is a FUSE answer (``fs_errors``).
ERRNO_NAMES = frozenset(name.lower() for name in errno.errorcode.values())

KERNEL = "kernel"


def kernel_complete() -> bool:
    """True when the kernel source gives every FUSE quantity on this host: the
    eBPF source loads (its probe is loaded here and kept for the mount's
    collector), or the tracepoints pair (6.18+).

    Used by drivers to drop the debug logging they need only for FUSE numbers.
    """
    # start-up cost: the collectors import the OpenTelemetry API; this module is imported before the spawn
    from obsctl.collectors.fuse_bpf import release_probe, shared_probe
    # start-up cost: as above
    from obsctl.collectors.fuse_trace import detect_support

    probe, _reason = shared_probe()
    if probe is not None:
        release_probe(keep=True)  # the mount's kernel_source() takes it over
        return True
    return detect_support().level == "paired"


def arm_kernel_source(pid: int) -> str:
    """Make the kernel source count the next mount of process ``pid``'s driver from its first request.

    Called by the supervisor before it spawns the driver (and before each
    restart's spawn), so nothing between the mount appearing and READY=1 is
    lost. Returns which source was armed (``ebpf`` or ``none``). Ordering per source:

    * **eBPF** (first choice): the probe is loaded here, and its ``claimer``
      is set to ``pid``: the kernel program claims the FUSE connection whose
      FUSE_INIT a descendant of ``pid`` queues (inside mount(2), before the
      mount is visible anywhere) and counts every request of it in its maps;
      the collector's first poll, before READY=1, finds the connection in
      mountinfo and records everything since FUSE_INIT
      (:meth:`obsctl.collectors.fuse_bpf.Probe.claim`).
    * **tracefs** (second choice): an instance is filtered on one connection
      number, which exists only once mount(2) ran; the collector creates it
      at its first poll that sees the mount, which the supervisor runs as
      soon as the mount is ready and before READY=1. Requests made between
      the mount appearing and that poll (milliseconds) are not counted by
      the kernel source; nothing gives the kernel's numbers for them later.
      A unit ordered ``After=`` the mount's unit starts after READY=1, so it
      loses nothing; a process polling mountinfo can.
    * **driver logs** (rclone, s3fs): the log pump reads the driver's output
      from its first line and buffers it until the collectors are attached
      (:class:`obsctl.logpump.LogPump`), so they count from the first request.
    * /proc/PID/io and the connection's ``waiting`` are cumulative or
      instantaneous: nothing to lose.
    """
    # start-up cost: the collectors import the OpenTelemetry API; this module is imported before the spawn
    from obsctl.collectors.fuse_bpf import release_probe, shared_probe

    probe, _reason = shared_probe()
    if probe is None:
        return "none"
    try:
        probe.claim(pid)
    except OSError as exc:
        release_probe(keep=True)
        return f"none ({exc})"
    release_probe(keep=True)  # the mount's kernel_source() takes it over
    return "ebpf"


class SourceTable:
    """The owner of each quantity for one mount.

    Args:
        impl: the driver name (``rclone``, ``s3fs``, ``generic`` ...).
        kernel_level: returns the kernel collector's current support level
            (``paired`` / ``unpaired`` / ``none``).
        kernel_stats: returns the kernel collector's counters for status, or None.
        driver_log: False when nobody reads the driver's own source (the side-car).
        driver_source: ``(name, quantities)`` of the driver's own source
            (``("rclone_log", {...})``), :data:`NO_DRIVER_SOURCE` for none.
    """

    def __init__(self, impl: str, kernel_level: Callable[[], str],
                 kernel_stats: Callable[[], dict | None] = lambda: None, driver_log: bool = True,
                 driver_source: tuple[str, frozenset[str]] = NO_DRIVER_SOURCE) -> None:
        self.impl = impl
        self.driver_source = driver_source
        self.kernel_level = kernel_level
        self.kernel_stats = kernel_stats
        self.driver_log = driver_log
        #: the kernel collector feeding this table (set by :func:`kernel_source`)
        self.kernel: Any = None

    def owner(self, quantity: str) -> str | None:
        """``kernel``, the driver log's name, or None (not available)."""
        if quantity in KERNEL_GIVES.get(self.kernel_level(), frozenset()):
            return KERNEL
        log_source, gives = self.driver_source
        return log_source if self.driver_log and quantity in gives else None

    def as_dict(self) -> dict[str, Any]:
        """``{"kernel": level, "fs_ops": owner, ..., "kernel_trace": counters}`` for ``obsctl status --json``."""
        out: dict[str, Any] = {"kernel": self.kernel_level()}
        out.update({quantity: self.owner(quantity) for quantity in QUANTITIES})
        out["kernel_trace"] = self.kernel_stats()
        return out

    def view(self, instruments: Any, source: str) -> "SourceView":
        """``instruments`` as seen by ``source``: records of quantities it does not own are dropped."""
        return SourceView(instruments, self, source)

    def driver_view(self, instruments: Any) -> Any:
        """The instruments for the driver's own collectors (:meth:`view` of its source)."""
        log_source = self.driver_source[0]
        return self.view(instruments, log_source) if log_source else instruments


def kernel_source(instruments: Any, impl: str, mountpoint: str, driver_log: bool = True,
                  driver_answers: frozenset[tuple[str, str]] = frozenset(),
                  driver_source: tuple[str, frozenset[str]] = NO_DRIVER_SOURCE) -> tuple[Any, SourceTable]:
    """The kernel collector of a mount and its source table.

    Args:
        instruments: the mount's :class:`~obsctl.instruments.Instruments`.
        impl: driver name.
        driver_source: the driver's own source and what it gives (:class:`SourceTable`).
        mountpoint: the mount's absolute path.
        driver_log: False when nobody reads the driver's log (``obsctl sidecar``).
        driver_answers: the driver's :attr:`~obsctl.drivers.Driver.protocol_answers`
            (not counted as errors).

    Returns:
        ``(collector, SourceTable)``: a :class:`~obsctl.collectors.fuse_bpf.FuseBpfCollector`
        when the eBPF probe loads, else (one warning per process naming why) a
        :class:`~obsctl.collectors.fuse_trace.FuseTraceCollector`. Either is a
        polling collector (poll it with the others, close it at shutdown). On
        a host without any kernel support it records nothing, and that one
        warning also says why the tracepoints cannot be used and what feeds
        the FUSE numbers instead (the driver's own source, or nothing).
        ``obsctl status --json`` shows ``sources.kernel_trace.source``
        (``ebpf`` / ``tracefs``) and, for tracefs, ``ebpf_unavailable`` (why not eBPF).
    """
    # start-up cost: the collectors import the OpenTelemetry API; callers import this module before the spawn
    from obsctl.collectors import fuse_bpf
    # start-up cost: as above
    from obsctl.collectors.fuse_trace import FuseTraceCollector, detect_support

    probe, reason = fuse_bpf.shared_probe()
    collector: Any
    if probe is not None:
        collector = fuse_bpf.FuseBpfCollector(instruments, mountpoint, probe, reason, driver_answers=driver_answers)
        stats = collector.stats
    else:
        # ONE warning for the whole fall-back: why not eBPF, and what is used instead
        # (before 6.12 the tracepoints are missing too: then the driver's own source)
        support = detect_support()
        if support.available:
            instead = "using the tracefs source"
        elif driver_log and driver_source[0]:
            instead = f"nor the tracefs source ({support.reason}): FUSE numbers from {driver_source[0]}"
        else:
            instead = f"nor the tracefs source ({support.reason}): no FUSE operation numbers for this mount"
        fuse_bpf.warn_once(reason, instead)
        collector = FuseTraceCollector(instruments, mountpoint, driver_answers=driver_answers, support=support,
                                       warn=False)

        def stats() -> dict:
            return {"source": "tracefs", **collector.stats(), "ebpf_unavailable": reason}
    table = SourceTable(impl, lambda: collector.support.level, stats, driver_log=driver_log,
                        driver_source=driver_source)
    table.kernel = collector
    return collector, table


class SourceView:
    """An :class:`~obsctl.instruments.Instruments` that records only what its source owns.

    Everything but the FUSE-level recording methods is passed through.
    """

    def __init__(self, instruments: Any, table: SourceTable, source: str) -> None:
        self._ins = instruments
        self._table = table
        self._source = source

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ins, name)

    def _owns(self, quantity: str) -> bool:
        return self._table.owner(quantity) == self._source

    def record_fs_op(self, opcode: str, latency_ms: float | None = None, n: int = 1) -> None:
        """Count and/or time an operation, each only if this source owns it."""
        count = self._owns("fs_ops")
        timed = latency_ms is not None and self._owns("fs_latency")
        if count:
            self._ins.record_fs_op(opcode, latency_ms if timed else None, n=n)
        elif timed:
            # the OTel histogram and the live buckets obsctl top reads (Instruments.record_fs_latency)
            self._ins.record_fs_latency(opcode, latency_ms)

    def record_fs_latency_buckets(self, opcode: str, counts: list[int], sums_ms: list[float]) -> None:
        """Latencies sorted into buckets (juicefs's endpoint), only if this source owns ``fs_latency``."""
        if self._owns("fs_latency"):
            self._ins.record_fs_latency_buckets(opcode, counts, sums_ms)

    def add_read_bytes(self, n: int) -> None:
        if self._owns("fs_bytes"):
            self._ins.add_read_bytes(n)

    def add_write_bytes(self, n: int) -> None:
        if self._owns("fs_bytes"):
            self._ins.add_write_bytes(n)

    def add_error(self, error_type: str, n: int = 1) -> None:
        if error_type not in ERRNO_NAMES or self._owns("fs_errors"):
            self._ins.add_error(error_type, n)
