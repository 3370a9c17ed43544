"""The instruments of DESIGN section 4, created once per mount on one meter.

Every collector writes to these and to nothing else, so each metric has one
instrument and one name. Names are chosen so that OpenTelemetry's Prometheus
translation (``opentelemetry-exporter-prometheus`` and the Collector's
``prometheus`` exporter) shows them exactly as DESIGN section 4 lists them:

* a monotonic Sum named ``obsctl_fs_read_bytes`` becomes
  ``obsctl_fs_read_bytes_total`` (the ``_total`` suffix is added by the
  translation, the unit ``By`` maps to ``bytes`` which the name already ends
  with, so nothing else is appended);
* histograms in milliseconds carry ``ms`` in their name and an empty unit,
  because a unit ``ms`` would be appended again as ``_milliseconds``.

The two histograms are :class:`obsctl.histograms.BucketHistogram` s, not SDK
instruments: a source that counts in bulk (the eBPF source) adds whole bucket
arrays, which the OpenTelemetry API cannot take; their points reach every
reader through :class:`obsctl.telemetry.PreBucketedReader`.

Counters are synchronous: log collectors add one event at a time and polling
collectors add the delta between two reads of a cumulative source. Gauges are
observable: the collector that owns the source registers the callback.

This module imports only ``opentelemetry.metrics`` (the API, cheap to import);
the SDK is imported by :mod:`obsctl.telemetry`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Counter, Meter, Observation

from obsctl.histograms import DEFAULT_MAX_SERIES, BucketHistogram

#: Histogram bucket boundaries in milliseconds for both latency histograms.
#: From 50 us (a FUSE lookup answered from the kernel-side cache path of the
#: driver) to 30 s (a multi-part upload of a large object on a slow link).
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500,
    5000, 10000, 30000,
)

#: How many requesting processes :meth:`Instruments.count_requesters` keeps.
MAX_REQUESTERS = 256

#: OpenTelemetry instrument name -> (kind, unit, description). The name as
#: Prometheus shows it is in the comment. Kept in one table so docs, views and
#: tests read the same list.
METRICS: dict[str, tuple[str, str, str]] = {
    # obsctl_fs_read_bytes_total
    "obsctl_fs_read_bytes": ("counter", "By", "Bytes read through the mount"),
    # obsctl_fs_write_bytes_total
    "obsctl_fs_write_bytes": ("counter", "By", "Bytes written through the mount"),
    # obsctl_fs_write_refused_bytes_total (the eBPF kernel source only: docs/metrics.md)
    "obsctl_fs_write_refused_bytes": (
        "counter", "By", "Bytes written through the mount that the driver then failed to store "
        "(the FLUSH, FSYNC or RELEASE that should have uploaded them was answered with an error)"),
    # obsctl_fs_ops_total
    "obsctl_fs_ops": ("counter", "{operation}", "FUSE operations by opcode"),
    # obsctl_fs_latency_ms_{bucket,sum,count}
    "obsctl_fs_latency_ms": ("histogram", "", "FUSE operation latency in milliseconds"),
    # obsctl_operation_duration_ms_{bucket,sum,count}
    "obsctl_operation_duration_ms": (
        "histogram", "", "Object-store request latency in milliseconds, by HTTP method"),
    # obsctl_errors_total
    "obsctl_errors": ("counter", "{error}", "Failed operations by error_type"),
    # obsctl_cache_hits_total / obsctl_cache_misses_total
    "obsctl_cache_hits": ("counter", "{request}", "Reads the driver served from its cache"),
    "obsctl_cache_misses": ("counter", "{request}", "Reads the driver had to fetch"),
    # obsctl_driver_restarts_total
    "obsctl_driver_restarts": ("counter", "{restart}", "Driver restarts by the supervisor"),
    # obsctl_kernel_events_lost_total{source, part} (owned by the kernel sources, collectors.fuse_trace)
    "obsctl_kernel_events_lost": (
        "counter", "{request}",
        "FUSE requests the kernel made that the kernel source could not fully record: part=count (in no "
        "obsctl_fs_ops_total), part=detail (counted, but latency, bytes and errno missing)"),
    # obsctl_fuse_requests_waiting (observable, owned by collectors.fuse_conn)
    "obsctl_fuse_requests_waiting": (
        "gauge", "{request}", "FUSE requests waiting (/sys/fs/fuse/connections/N/waiting)"),
    # obsctl_fuse_requests_stalled_seconds (observable, owned by collectors.fuse_conn)
    "obsctl_fuse_requests_stalled_seconds": (
        "gauge", "s", "Seconds FUSE requests have waited with none answered (0: none waiting, or answers flowing)"),
    # obsctl_mount_up (observable, owned by collectors.probe)
    "obsctl_mount_up": ("gauge", "", "1 when mounted and answering a stat, 0 otherwise"),
    # obsctl_driver_io_bytes_total (observable, owned by collectors.proc_io)
    "obsctl_driver_io_bytes": (
        "observable_counter", "By",
        "Bytes the driver process moved through syscalls (/proc/PID/io rchar, wchar)"),
}


@dataclass(frozen=True)
class MountAttributes:
    """The attributes that identify one mount on every data point.

    Attributes:
        bucket: bucket name from the source ``s3://BUCKET/PREFIX`` (for the
            generic driver: the source as given, or ``""``).
        impl: driver name: ``rclone``, ``s3fs``, ``generic`` ...
        mountpoint: absolute path of the mountpoint.
    """

    bucket: str
    impl: str
    mountpoint: str

    def base(self) -> dict[str, str]:
        """``{"bucket", "impl"}``: the labels every metric carries."""
        return {"bucket": self.bucket, "impl": self.impl}

    def with_mountpoint(self) -> dict[str, str]:
        """``{"bucket", "impl", "mountpoint"}`` for the per-mount metrics."""
        return {"bucket": self.bucket, "impl": self.impl, "mountpoint": self.mountpoint}


@dataclass
class Instruments:
    """The synchronous instruments of one mount plus helpers that label them.

    Create with :func:`create_instruments`. Methods never raise on bad values
    from a source: a negative delta (a driver restart reset its counters) is
    dropped, because counters only go up.
    """

    meter: Meter
    attrs: MountAttributes
    fs_read_bytes: Counter
    fs_write_bytes: Counter
    fs_ops: Counter
    fs_latency_ms: BucketHistogram
    operation_duration_ms: BucketHistogram
    errors: Counter
    cache_hits: Counter
    cache_misses: Counter
    driver_restarts: Counter
    kernel_events_lost: Counter
    fs_write_refused_bytes: Counter
    #: Local running totals, for ``obsctl status`` and the final-value check:
    #: name as in :data:`METRICS` -> value. Updated by the helpers below.
    totals: dict[str, float] = field(default_factory=dict)
    #: Local cumulative FUSE operations by opcode (for ``obsctl top``).
    ops_by_opcode: dict[str, int] = field(default_factory=dict)
    #: Local cumulative errors by ``error_type``.
    errors_by_type: dict[str, int] = field(default_factory=dict)
    #: Local cumulative FUSE requests by requesting process ("comm[pid]"),
    #: from the kernel source only (collectors.fuse_trace); None until it
    #: counts one. Never an OTel attribute (a pid would be unbounded
    #: cardinality): ``obsctl top`` shows the busiest. Bounded to
    #: :data:`MAX_REQUESTERS` entries (the smallest are dropped).
    requesters: dict[str, int] | None = None
    _gauges: dict[str, Callable[[CallbackOptions], Iterable[Observation]]] = field(
        default_factory=dict, repr=False)
    _live_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _count(self, name: str, value: float) -> None:
        self.totals[name] = self.totals.get(name, 0.0) + value

    def add_read_bytes(self, n: int) -> None:
        """Add ``n`` bytes read through the mount (``n`` <= 0 is ignored)."""
        if n > 0:
            self.fs_read_bytes.add(n, self.attrs.with_mountpoint())
            self._count("obsctl_fs_read_bytes", n)

    def add_write_bytes(self, n: int) -> None:
        """Add ``n`` bytes written through the mount (``n`` <= 0 is ignored)."""
        if n > 0:
            self.fs_write_bytes.add(n, self.attrs.with_mountpoint())
            self._count("obsctl_fs_write_bytes", n)

    def add_write_refused_bytes(self, n: int) -> None:
        """Add ``n`` bytes the mount took in WRITEs but the driver then failed to store
        (``n`` < 0 is ignored; 0 makes the series exist at 0: a source that can tell
        refused bytes apart, so "none refused" is a 0, not a missing series on the Mount
        Overview's throughput panel); they are not in ``obsctl_fs_write_bytes``."""
        if n >= 0:
            self.fs_write_refused_bytes.add(n, self.attrs.with_mountpoint())
            self._count("obsctl_fs_write_refused_bytes", n)

    def record_fs_op(self, opcode: str, latency_ms: float | None = None, n: int = 1) -> None:
        """Count ``n`` FUSE operations (default one); record a latency when known.

        Args:
            opcode: lower-case FUSE operation: ``read``, ``write``, ``lookup``,
                ``open``, ``getattr``, ``readdir``, ``flush``, ``release`` ...
            latency_ms: time from the driver's entry to its exit log line (or
                from the kernel's send to end event), for one operation.
            n: operations counted at once (the kernel collector's counting mode).
        """
        labels = {"opcode": opcode, **self.attrs.base()}
        self.fs_ops.add(n, labels)
        self._count("obsctl_fs_ops", n)
        with self._live_lock:
            self.ops_by_opcode[opcode] = self.ops_by_opcode.get(opcode, 0) + n
        if latency_ms is not None:
            self.record_fs_latency(opcode, latency_ms, labels)

    def record_fs_latency(self, opcode: str, latency_ms: float,
                          labels: dict[str, str] | None = None) -> None:
        """Record one FUSE operation's latency (ms) without counting the
        operation (a source that counts in bulk, as collectors.fuse_trace does,
        calls :meth:`record_fs_op` with ``n`` once per chunk and this once per
        paired request). ``labels`` may be passed pre-built (hot path); a
        negative value (clock skew) is dropped."""
        if latency_ms < 0:
            return
        self.fs_latency_ms.record(opcode, labels or {"opcode": opcode, **self.attrs.base()}, latency_ms)

    def record_fs_latency_buckets(self, opcode: str, counts: list[int], sums_ms: list[float],
                                  labels: dict[str, str] | None = None) -> None:
        """Record latencies already sorted into the buckets of :data:`LATENCY_BUCKETS_MS`
        (a source that aggregates in the kernel, collectors.fuse_bpf), without counting
        the operations.

        ``counts[i]`` / ``sums_ms[i]``: how many latencies fell in bucket ``i``
        (``bounds[i-1] < ms <= bounds[i]``, the last one +Inf) and their sum
        (ms). Bucket counts, count and sum are exact; min/max are not known
        (not exported for this opcode from then on). O(buckets), whatever
        the number of latencies (:mod:`obsctl.histograms`).
        """
        self.fs_latency_ms.add_buckets(opcode, labels or {"opcode": opcode, **self.attrs.base()},
                                       counts, sum(sums_ms))

    def count_requesters(self, tally: dict[str, int]) -> None:
        """Add ``{"comm[pid]": requests}`` (one chunk of kernel send events)
        to :attr:`requesters`, keeping at most :data:`MAX_REQUESTERS`."""
        if not tally:
            return
        with self._live_lock:
            if self.requesters is None:
                self.requesters = {}
            for who, n in tally.items():
                self.requesters[who] = self.requesters.get(who, 0) + n
            if len(self.requesters) > MAX_REQUESTERS:
                keep = sorted(self.requesters.items(), key=lambda kv: kv[1], reverse=True)[:MAX_REQUESTERS // 2]
                self.requesters = dict(keep)

    def record_request(self, method: str, duration_ms: float | None) -> None:
        """Record one object-store request (``method`` = GET, PUT, HEAD ...)."""
        if duration_ms is not None and duration_ms >= 0:
            opcode = method.upper()
            self.operation_duration_ms.record(opcode, {"opcode": opcode, **self.attrs.base()}, duration_ms)

    def add_error(self, error_type: str, n: int = 1) -> None:
        """Count ``n`` failures of ``error_type`` (``http_403``, ``enoent`` ...)."""
        if n > 0:
            self.errors.add(n, {"error_type": error_type, **self.attrs.base()})
            self._count("obsctl_errors", n)
            with self._live_lock:
                self.errors_by_type[error_type] = self.errors_by_type.get(error_type, 0) + n

    def add_cache(self, hits: int = 0, misses: int = 0) -> None:
        """Count cache hits and misses as the driver reports them."""
        if hits > 0:
            self.cache_hits.add(hits, self.attrs.base())
            self._count("obsctl_cache_hits", hits)
        if misses > 0:
            self.cache_misses.add(misses, self.attrs.base())
            self._count("obsctl_cache_misses", misses)

    def add_restart(self) -> None:
        """Count one supervisor restart of the driver."""
        self.driver_restarts.add(1, self.attrs.base())
        self._count("obsctl_driver_restarts", 1)

    def add_kernel_lost(self, n: int, source: str, part: str) -> None:
        """Count ``n`` FUSE requests the kernel source ``source`` (``tracefs``, ``ebpf``) could not record.

        ``part``: ``count`` (the request is in no ``obsctl_fs_ops_total``: its
        event was overwritten in the kernel's ring buffer) or ``detail``
        (counted, but its latency, bytes and errno are missing). Labels: the
        mount's (``bucket``, ``impl``, ``mountpoint``) plus ``source`` and ``part``.
        """
        if n > 0:
            self.kernel_events_lost.add(n, {**self.attrs.with_mountpoint(), "source": source, "part": part})
            self._count(f"obsctl_kernel_events_lost:{part}", n)

    def declare_kernel_lost(self, source: str) -> None:
        """Make ``obsctl_kernel_events_lost_total{source, part}`` exist at 0 for a kernel
        source that is running (so "nothing lost" is a 0, not a missing series, on the
        Mount Overview's loss panel). Called once per attached connection."""
        for part in ("count", "detail"):
            self.kernel_events_lost.add(0, {**self.attrs.with_mountpoint(), "source": source, "part": part})

    def observable_gauge(
        self, name: str, callback: Callable[[CallbackOptions], Iterable[Observation]]
    ) -> None:
        """Register the observable gauge ``name`` (from :data:`METRICS`)."""
        _kind, unit, description = METRICS[name]
        self.meter.create_observable_gauge(
            name, callbacks=[callback], unit=unit, description=description)
        self._gauges[name] = callback

    def gauge_value(self, name: str) -> float | None:
        """The current value of the observable gauge ``name``, summed over its
        observations, or None when no collector registered it or it has
        nothing to report. Calls the owning collector's callback, which
        returns the value cached by its last ``poll()`` (no I/O)."""
        callback = self._gauges.get(name)
        if callback is None:
            return None
        try:
            observations = list(callback(CallbackOptions()))
        except Exception:  # noqa: BLE001 - a collector's bug must not break the state file
            return None
        if not observations:
            return None
        return sum(float(o.value) for o in observations)

    def live(self) -> dict[str, Any]:
        """Cumulative counters of this mount for ``obsctl top`` (JSON-ready).

        ``obsctl top`` computes rates and percentiles from the difference
        between two of these (:mod:`obsctl.topstats`). Shape::

            {"time": UNIX s (float) when taken,
             "read_bytes": int, "write_bytes": int, "write_refused_bytes": int,
             "ops": int, "errors": int,
             "ops_by_opcode": {opcode: int},
             "latency_bounds_ms": [LATENCY_BUCKETS_MS...],
             "latency_buckets": {opcode: [int] * (len(bounds) + 1)},  # last: +Inf
             "latency_sum_ms": {opcode: float},
             "errors_by_type": {error_type: int},
             "waiting": int | None,  # /sys/fs/fuse/connections/N/waiting now
             "requesters": {"comm[pid]": int} | None}  # kernel source only

        Every count is cumulative since the supervisor started (across driver
        restarts); ``waiting`` is the gauge of collectors.fuse_conn, None when
        fusectl is not mounted.
        """
        latency = self.fs_latency_ms.snapshot()
        buckets = {op: s.counts for op, s in latency.items()}
        sums = {op: s.sum for op, s in latency.items()}
        with self._live_lock:
            ops = dict(self.ops_by_opcode)
            errors = dict(self.errors_by_type)
            requesters = None if self.requesters is None else dict(self.requesters)
        waiting = self.gauge_value("obsctl_fuse_requests_waiting")
        return {
            "time": time.time(),
            "read_bytes": int(self.totals.get("obsctl_fs_read_bytes", 0)),
            "write_bytes": int(self.totals.get("obsctl_fs_write_bytes", 0)),
            "write_refused_bytes": int(self.totals.get("obsctl_fs_write_refused_bytes", 0)),
            "ops": int(self.totals.get("obsctl_fs_ops", 0)),
            "errors": int(self.totals.get("obsctl_errors", 0)),
            "ops_by_opcode": ops,
            "latency_bounds_ms": list(LATENCY_BUCKETS_MS),
            "latency_buckets": buckets,
            "latency_sum_ms": sums,
            "errors_by_type": errors,
            "waiting": None if waiting is None else int(waiting),
            "requesters": requesters,
        }

    def histograms(self) -> tuple[BucketHistogram, ...]:
        """The histograms obsctl keeps itself, for :class:`obsctl.telemetry.PreBucketedPoints`."""
        return (self.fs_latency_ms, self.operation_duration_ms)

    def observable_counter(
        self, name: str, callback: Callable[[CallbackOptions], Iterable[Observation]]
    ) -> None:
        """Register the observable (cumulative) counter ``name``."""
        _kind, unit, description = METRICS[name]
        self.meter.create_observable_counter(
            name, callbacks=[callback], unit=unit, description=description)


def create_instruments(meter: Meter, attrs: MountAttributes, max_series: int = DEFAULT_MAX_SERIES) -> Instruments:
    """Create the synchronous instruments of :data:`METRICS` on ``meter``.

    The counters are SDK instruments of ``meter``; the two histograms are
    :class:`~obsctl.histograms.BucketHistogram` s that a reader exports only
    once they are added to its :class:`obsctl.telemetry.PreBucketedPoints`
    (:meth:`Instruments.histograms`); ``max_series``: their cardinality limit (the
    telemetry config's ``cardinality_limit``, as the SDK's for the counters)."""

    def counter(name: str) -> Counter:
        _kind, unit, description = METRICS[name]
        return meter.create_counter(name, unit=unit, description=description)

    def histogram(name: str) -> BucketHistogram:
        _kind, unit, description = METRICS[name]
        return BucketHistogram(name, description, unit, LATENCY_BUCKETS_MS, max_series)

    return Instruments(
        meter=meter,
        attrs=attrs,
        fs_read_bytes=counter("obsctl_fs_read_bytes"),
        fs_write_bytes=counter("obsctl_fs_write_bytes"),
        fs_ops=counter("obsctl_fs_ops"),
        fs_latency_ms=histogram("obsctl_fs_latency_ms"),
        operation_duration_ms=histogram("obsctl_operation_duration_ms"),
        errors=counter("obsctl_errors"),
        cache_hits=counter("obsctl_cache_hits"),
        cache_misses=counter("obsctl_cache_misses"),
        driver_restarts=counter("obsctl_driver_restarts"),
        kernel_events_lost=counter("obsctl_kernel_events_lost"),
        fs_write_refused_bytes=counter("obsctl_fs_write_refused_bytes"),
    )
