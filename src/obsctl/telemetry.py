"""OpenTelemetry SDK set-up for one mount: MeterProvider, TracerProvider, shutdown.

Imported lazily by the supervisor, after the driver has been spawned, because
importing the SDK and the gRPC exporter costs about 0.25 s that must not be
added to the time to ready.

What is created (DESIGN section 3):

* ``mode = "none"``: a MeterProvider with no reader at all (instruments are
  no-ops except for obsctl's own running totals), no TracerProvider exporter,
  nothing listens;
* ``remote`` / ``local``: a PeriodicExportingMetricReader over an OTLP metric
  exporter (gRPC or http/protobuf), a BatchSpanProcessor over an OTLP span
  exporter, and optionally a PrometheusMetricReader whose series the host's
  one scrape endpoint on ``[telemetry.metrics] bind_address`` serves
  (:mod:`obsctl.scrape`: shared by every mount of the host).

Every reader gets the SDK's cardinality limit (``cardinality_limit`` per
instrument class) and is a :class:`PreBucketedReader`, so it also exports the
histograms obsctl keeps itself (:mod:`obsctl.histograms`). Export results are
recorded for ``obsctl status``.
"""

from __future__ import annotations

import importlib
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.metrics.export import Histogram as HistogramData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Tracer

from obsctl import __version__
from obsctl.config import TelemetryConfig
from obsctl.histograms import BucketHistogram, Series
from obsctl.instruments import Instruments, MountAttributes, create_instruments
from obsctl.redact import redact

log = logging.getLogger(__name__)

METER_NAME = "obsctl"


@dataclass
class ExportStatus:
    """The outcome of the last metric export, for ``obsctl status``.

    Attributes:
        time: UNIX time (s) of the last export attempt, None before the first.
        result: ``"success"``, ``"failure"`` or ``"none"`` (no exporter).
        exports: attempts so far; failures: failed attempts so far.
        last_error: the reason of the last failed export (the exporter's own
            words, redacted), ``""`` when the last export succeeded.
    """

    time: float | None = None
    result: str = "none"
    exports: int = 0
    failures: int = 0
    last_error: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        with self.lock:
            return {"time": self.time, "result": self.result, "exports": self.exports,
                    "failures": self.failures, "last_error": self.last_error}


#: Loggers of the OTLP exporters whose per-attempt lines ("Transient error ...
#: retrying", "Failed to export ...") are folded into obsctl's own export log
#: while a metric export runs (module loggers of opentelemetry-exporter-otlp 1.45).
EXPORTER_LOGGERS = ("opentelemetry.exporter.otlp.proto.grpc.exporter",
                    "opentelemetry.exporter.otlp.proto.http.metric_exporter")

_exporting = threading.local()


class _FoldExporterLogs(logging.Filter):
    """Drops the OTLP exporter's log records emitted during a metric export
    (in the exporting thread only) and keeps their text as the failure reason."""

    def filter(self, record: logging.LogRecord) -> bool:
        reasons = getattr(_exporting, "reasons", None)
        if reasons is None:
            return True  # not inside a metric export (span export, shutdown): let it through
        reasons.append((record.levelno, record.getMessage()))
        return False


_FOLD_FILTER = _FoldExporterLogs()


class RecordingMetricExporter(MetricExporter):
    """Delegates to a real OTLP exporter, records each export's result, and
    logs export trouble once instead of three lines per interval.

    Log lines (logger ``obsctl.telemetry``, level WARNING):

    * the first failure: ``metric export to ENDPOINT failed: REASON ...``;
    * while it keeps failing, at most one ``still failing (N failures since
      HH:MM:SS UTC): REASON`` every :attr:`still_failing_every` seconds;
    * the first success after failures: ``metric export to ENDPOINT
      recovered after N failures (since HH:MM:SS UTC)``.

    The exporter's own per-attempt lines are folded into REASON (the last
    error, else the last warning it logged, else the exception).
    """

    #: Seconds between two "still failing" lines (obsctl's choice: a few per
    #: hour is enough to see in the journal that the backend is still away).
    still_failing_every: float = 300.0

    def __init__(self, inner: MetricExporter, status: ExportStatus, endpoint: str = "the OTLP endpoint") -> None:
        super().__init__(preferred_temporality=inner._preferred_temporality,
                         preferred_aggregation=inner._preferred_aggregation)
        self._inner = inner
        self._status = status
        self._endpoint = endpoint
        self._failing_since: float | None = None
        self._failures_in_row = 0
        self._last_summary = 0.0
        for name in EXPORTER_LOGGERS:
            logger = logging.getLogger(name)
            if _FOLD_FILTER not in logger.filters:
                logger.addFilter(_FOLD_FILTER)

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        _exporting.reasons = reasons = []
        try:
            result = self._inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any exporter bug is an export failure, never a traceback
            reasons.append((logging.ERROR, f"{type(exc).__name__}: {exc}"))
            result = MetricExportResult.FAILURE
        finally:
            _exporting.reasons = None
        ok = result == MetricExportResult.SUCCESS
        reason = "" if ok else self._reason(reasons)
        with self._status.lock:
            self._status.time = time.time()
            self._status.exports += 1
            self._status.result = "success" if ok else "failure"
            self._status.failures += 0 if ok else 1
            self._status.last_error = reason
        self._log(ok, reason)
        return result

    @staticmethod
    def _reason(reasons: list[tuple[int, str]]) -> str:
        if not reasons:
            return "the exporter reported a failure without a reason"
        errors = [text for level, text in reasons if level >= logging.ERROR]
        text = (errors or [reasons[-1][1]])[-1]
        return redact(" ".join(text.split()))[:500]

    def _log(self, ok: bool, reason: str) -> None:
        now = time.time()
        if ok:
            if self._failing_since is not None:
                log.warning("metric export to %s recovered after %d failure(s) (failing since %s)",
                            self._endpoint, self._failures_in_row, _utc(self._failing_since))
            self._failing_since, self._failures_in_row = None, 0
            return
        self._failures_in_row += 1
        if self._failing_since is None:
            self._failing_since = self._last_summary = now
            log.warning("metric export to %s failed: %s (obsctl keeps collecting and retries at every "
                        "interval; the mount is unaffected)", self._endpoint, reason)
        elif now - self._last_summary >= self.still_failing_every:
            self._last_summary = now
            log.warning("metric export to %s still failing (%d failures since %s): %s", self._endpoint,
                        self._failures_in_row, _utc(self._failing_since), reason)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)


def _utc(timestamp: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(timestamp))


def _grpc_endpoint(url: str) -> tuple[str, bool]:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 4317}", parts.scheme == "http"


def _http_endpoint(url: str, path: str) -> str:
    parts = urlsplit(url)
    if parts.path in ("", "/"):
        return url.rstrip("/") + path
    return url


#: (signal, protocol) -> (module, class) of the OTLP exporter, imported on use
#: so only the configured transport (grpcio or requests) is loaded.
_EXPORTERS = {
    ("metrics", "grpc"): ("opentelemetry.exporter.otlp.proto.grpc.metric_exporter", "OTLPMetricExporter"),
    ("metrics", "http/protobuf"): ("opentelemetry.exporter.otlp.proto.http.metric_exporter", "OTLPMetricExporter"),
    ("traces", "grpc"): ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "OTLPSpanExporter"),
    ("traces", "http/protobuf"): ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "OTLPSpanExporter"),
}


def otlp_exporter(cfg: TelemetryConfig, signal_name: str) -> Any:
    """The OTLP exporter of ``signal_name`` (``metrics`` | ``traces``), gRPC or http/protobuf.

    The endpoint is ``[telemetry.<signal>] otlp_endpoint`` (``local`` mode:
    127.0.0.1:4317) or, when unset, the exporter's own OTEL_EXPORTER_OTLP_*
    environment handling. http/protobuf endpoints without a path get
    ``/v1/metrics`` or ``/v1/traces``. The timeout (seconds) is the signal's
    ``export_timeout_seconds``.
    """
    signal = getattr(cfg, signal_name)
    endpoint = cfg.endpoint(signal)
    protocol = cfg.protocol(signal, signal_name)
    module, name = _EXPORTERS[(signal_name, protocol)]
    exporter = getattr(importlib.import_module(module), name)
    timeout = signal.export_timeout_seconds
    if not endpoint:
        return exporter(timeout=timeout)
    if protocol == "http/protobuf":
        return exporter(endpoint=_http_endpoint(endpoint, f"/v1/{signal_name}"), timeout=timeout)
    target, insecure = _grpc_endpoint(endpoint)
    return exporter(endpoint=target, insecure=insecure, timeout=timeout)


class PreBucketedPoints:
    """The points of the :class:`~obsctl.histograms.BucketHistogram` s of one mount,
    merged into what a reader collected from the SDK.

    Args:
        resource: the MeterProvider's resource (used when the SDK collected nothing).
        scope: the instrumentation scope the histograms belong to (the
            mount's meter); their metrics join that scope's ScopeMetrics.

    :attr:`histograms` is filled once the instruments exist
    (:meth:`obsctl.instruments.Instruments.histograms`). Cumulative points
    start at this object's creation; delta points cover the time since the
    reader's previous collection (state kept per reader).
    """

    def __init__(self, resource: Resource, scope: InstrumentationScope) -> None:
        self.resource = resource
        self.scope = scope
        self.histograms: list[BucketHistogram] = []
        self.start_ns = time.time_ns()

    def _metric(self, histogram: BucketHistogram, now_ns: int, temporality: AggregationTemporality,
                last: dict[tuple[str, str], tuple[Series, int]]) -> Metric | None:
        points = []
        for key, series in histogram.snapshot().items():
            start_ns, counts, total, before = self.start_ns, series.counts, series.sum, None
            if temporality is AggregationTemporality.DELTA:
                before = last.get((histogram.name, key))
                last[(histogram.name, key)] = (series, now_ns)
                if before is not None:
                    prev, start_ns = before
                    counts = [a - b for a, b in zip(series.counts, prev.counts)]
                    total = series.sum - prev.sum
                if not any(counts):
                    continue
            exact = series.exact and (temporality is AggregationTemporality.CUMULATIVE or before is None)
            points.append(HistogramDataPoint(
                attributes=series.attributes, start_time_unix_nano=start_ns, time_unix_nano=now_ns,
                count=sum(counts), sum=total, bucket_counts=counts, explicit_bounds=list(histogram.bounds),
                # None: not known (bucketed counts, or a delta of one): OTLP leaves the optional field unset
                min=series.min if exact else None, max=series.max if exact else None))  # type: ignore[arg-type]
        if not points:
            return None
        return Metric(name=histogram.name, description=histogram.description, unit=histogram.unit,
                      data=HistogramData(data_points=points, aggregation_temporality=temporality))

    def merge(self, metrics_data: MetricsData | None, temporality: AggregationTemporality,
              last: dict[tuple[str, str], tuple[Series, int]]) -> MetricsData | None:
        """``metrics_data`` (or None: the SDK had nothing) plus the histograms'
        points in :attr:`scope`; returned unchanged when no histogram has a point.
        ``last``: the calling reader's delta state (updated)."""
        now_ns = time.time_ns()
        metrics = [m for h in self.histograms if (m := self._metric(h, now_ns, temporality, last)) is not None]
        if not metrics:
            return metrics_data
        if metrics_data is None or not metrics_data.resource_metrics:
            return MetricsData(resource_metrics=[ResourceMetrics(
                resource=self.resource, schema_url=self.resource.schema_url,
                scope_metrics=[ScopeMetrics(scope=self.scope, metrics=metrics, schema_url=self.scope.schema_url or "")])])
        first, *rest = metrics_data.resource_metrics
        scopes = list(first.scope_metrics)
        for i, scope_metrics in enumerate(scopes):
            if scope_metrics.scope.name == self.scope.name:
                scopes[i] = ScopeMetrics(scope=scope_metrics.scope, metrics=[*scope_metrics.metrics, *metrics],
                                         schema_url=scope_metrics.schema_url)
                break
        else:
            scopes.append(ScopeMetrics(scope=self.scope, metrics=metrics, schema_url=self.scope.schema_url or ""))
        return MetricsData(resource_metrics=[
            ResourceMetrics(resource=first.resource, scope_metrics=scopes, schema_url=first.schema_url), *rest])


class PreBucketedReader:
    """Mixin for a MetricReader class: every collection also carries the
    points of a :class:`PreBucketedPoints` (``points=`` keyword).

    Uses only the reader's documented extension points: ``collect()`` and the
    ``_receive_metrics`` every MetricReader subclass implements (opentelemetry-sdk
    ``MetricReader``: "intended to be overridden by subclass"). When the SDK
    collected nothing (``collect`` then skips ``_receive_metrics``), the
    histograms' points are delivered alone. The histograms' temporality is the
    one the reader asks for histograms (an OTLP exporter's
    ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE``).
    """

    def __init__(self, *args: Any, points: PreBucketedPoints, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        preferred = kwargs.get("preferred_temporality") or {}
        exporter = args[0] if args else kwargs.get("exporter")
        if isinstance(exporter, MetricExporter):  # PeriodicExportingMetricReader takes the exporter's choice
            preferred = exporter._preferred_temporality or {}  # pylint: disable=protected-access
        self._points_temporality: AggregationTemporality = preferred.get(Histogram, AggregationTemporality.CUMULATIVE)
        self._points = points
        self._points_last: dict[tuple[str, str], tuple[Series, int]] = {}
        self._points_lock = threading.Lock()
        self._points_delivered = False

    def collect(self, timeout_millis: float = 10_000) -> None:
        """The SDK's collection, with the histograms' points merged in."""
        with self._points_lock:
            self._points_delivered = False
            super().collect(timeout_millis=timeout_millis)  # type: ignore[misc]
            if not self._points_delivered:
                alone = self._points.merge(None, self._points_temporality, self._points_last)
                if alone is not None:
                    super()._receive_metrics(alone, timeout_millis=timeout_millis)  # type: ignore[misc]

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        self._points_delivered = True
        merged = self._points.merge(metrics_data, self._points_temporality, self._points_last)
        super()._receive_metrics(merged, timeout_millis=timeout_millis, **kwargs)  # type: ignore[misc]


class PushReader(PreBucketedReader, PeriodicExportingMetricReader):
    """The OTLP push reader, with obsctl's own histograms."""


class MemoryReader(PreBucketedReader, InMemoryMetricReader):
    """An in-memory reader with obsctl's own histograms (tests, benchmarks)."""


def in_memory_instruments(attrs: MountAttributes) -> tuple[MemoryReader, Instruments]:
    """The instruments of one mount on a fresh MeterProvider whose only reader
    is a :class:`MemoryReader` (``reader.get_metrics_data()`` collects what an
    exporter would see, obsctl's own histograms included). For tests and
    benchmarks of the collectors, which write to the real SDK."""
    points = PreBucketedPoints(Resource.get_empty(), InstrumentationScope(METER_NAME, __version__))
    reader = MemoryReader(points=points)
    instruments = create_instruments(MeterProvider(metric_readers=[reader]).get_meter(METER_NAME, __version__), attrs)
    points.histograms.extend(instruments.histograms())
    return reader, instruments


def _cardinality_limits(limit: int) -> dict[type, int]:
    return {cls: limit for cls in (Counter, UpDownCounter, Histogram, ObservableCounter,
                                   ObservableUpDownCounter, ObservableGauge)}


class Telemetry:
    """The SDK objects of one mount and their orderly shutdown.

    Args:
        cfg: validated telemetry config.
        attrs: the mount's bucket / impl / mountpoint.
        resource_attributes: extra resource attributes (obsctl.mount.* ...),
            merged over ``[telemetry.resource]`` and OTEL_RESOURCE_ATTRIBUTES.
        publish_path: where this mount publishes its series for the host's
            scrape endpoint (:func:`obsctl.scrape.publish_path`), or None.

    A ``bind_address`` that cannot be bound (in use by another mount, not a
    local address) never raises: see :class:`obsctl.scrape.HostEndpoint`.
    """

    def __init__(self, cfg: TelemetryConfig, attrs: MountAttributes,
                 resource_attributes: dict[str, str] | None = None,
                 publish_path: str | None = None) -> None:
        self.cfg = cfg
        self.export_status = ExportStatus()
        host_name = socket.gethostname()
        self.resource = Resource.create({
            "service.name": cfg.resource.service_name,
            "service.version": __version__,
            "host.name": host_name,
            # One instance per mount (Prometheus's OTLP receiver makes it the
            # `instance` label): HOST:MOUNTPOINT, stable across restarts.
            "service.instance.id": f"{host_name}:{attrs.mountpoint}",
            **cfg.resource.attributes,
            **(resource_attributes or {}),
        })
        limits = _cardinality_limits(cfg.metrics.cardinality_limit)
        #: the histograms obsctl keeps itself, handed to every reader (:class:`PreBucketedReader`)
        self.histogram_points = PreBucketedPoints(self.resource, InstrumentationScope(METER_NAME, __version__))
        readers: list[MetricReader] = []
        #: this mount's part of the host's scrape endpoint (:mod:`obsctl.scrape`), or None
        self.endpoint: Any = None
        self._push_reader: PeriodicExportingMetricReader | None = None
        if cfg.pushes_metrics:
            self._push_reader = PushReader(
                RecordingMetricExporter(otlp_exporter(cfg, "metrics"), self.export_status,
                                        cfg.endpoint(cfg.metrics) or "the OTEL_EXPORTER_OTLP_* endpoint"),
                export_interval_millis=cfg.metrics.export_interval_seconds * 1000,
                export_timeout_millis=cfg.metrics.export_timeout_seconds * 1000,
                cardinality_limits=limits, points=self.histogram_points)
            readers.append(self._push_reader)
        if cfg.exports_metrics and cfg.metrics.bind_address:
            readers.append(self._start_prometheus(cfg.metrics.bind_address, limits, attrs.mountpoint, publish_path))
        self.meter_provider = MeterProvider(resource=self.resource, metric_readers=readers,
                                            shutdown_on_exit=False)
        self.instruments: Instruments = create_instruments(
            self.meter_provider.get_meter(METER_NAME, __version__), attrs, cfg.metrics.cardinality_limit)
        self.histogram_points.histograms.extend(self.instruments.histograms())
        self.tracer_provider = TracerProvider(resource=self.resource, shutdown_on_exit=False)
        if cfg.exports_traces:
            self.tracer_provider.add_span_processor(BatchSpanProcessor(
                otlp_exporter(cfg, "traces"), export_timeout_millis=cfg.traces.export_timeout_seconds * 1000))
        self.tracer: Tracer = self.tracer_provider.get_tracer(METER_NAME, __version__)

    def _start_prometheus(self, bind_address: str, limits: dict[type, int], mountpoint: str,
                          publish_path: str | None) -> MetricReader:
        """This mount's part of the host's scrape endpoint on ``bind_address``
        (:class:`obsctl.scrape.HostEndpoint`): bound now when the port is free,
        else retried at every :meth:`poll`; never raises.

        The PrometheusMetricReader writes into a private registry; the endpoint
        serves it (with every other live mount's published series when this
        process holds the port) and publishes it to ``publish_path``.
        """
        # start-up cost: the Prometheus exporter and its server load only with a bind_address
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import CollectorRegistry  # start-up cost: as above

        from obsctl.scrape import HostEndpoint  # start-up cost: as above

        if not self.cfg.metrics.bind_is_loopback:  # expose_prometheus = true, or validation refused it
            log.warning("Prometheus endpoint exposed beyond loopback on %s ([telemetry.metrics] "
                        "expose_prometheus = true): anyone who can reach it reads this host's mount metrics "
                        "(bucket, mount point), unauthenticated and in clear text; restrict it with a "
                        "firewall", bind_address)
        registry = CollectorRegistry(auto_describe=False)

        class PrometheusReader(PreBucketedReader, PrometheusMetricReader):
            """The Prometheus reader, with obsctl's own histograms."""

        reader = PrometheusReader(registry=registry, cardinality_limits=limits, points=self.histogram_points)
        self.endpoint = HostEndpoint(bind_address, registry, mountpoint, publish_path)
        self.endpoint.try_bind()
        return reader

    def poll(self) -> None:
        """Once per observer poll: the scrape endpoint's round (take the port if free,
        publish this mount's series); nothing without a bind_address. Never raises."""
        if self.endpoint is not None:
            try:
                self.endpoint.poll()
            except Exception:  # noqa: BLE001 - the endpoint never takes the mount down
                log.debug("scrape endpoint poll failed", exc_info=True)

    def flush(self, timeout_seconds: float = 5.0) -> bool:
        """Collect and push over OTLP now (the first export after ready).

        Only the OTLP reader is flushed: flushing the PrometheusMetricReader
        would queue a second copy of every family for the next scrape.
        Returns True when there is no OTLP reader or its export succeeded.
        """
        if self._push_reader is None:
            return True
        return self._push_reader.force_flush(timeout_millis=timeout_seconds * 1000)

    def shutdown(self, timeout_seconds: float | None = None, failed: bool = False) -> None:
        """Export the final values and spans, then stop every exporter and server.

        Metrics and spans are flushed in parallel and the whole shutdown is
        bounded by ``timeout_seconds`` (default: the larger configured export
        timeout, 3 s unless set) plus half a second, so an unreachable
        collector cannot hold the exit for longer: what is still retrying
        then is abandoned (daemon threads), never waited for. ``failed``: the
        mount failed; its last series stay published for the host's scrape
        endpoint (:meth:`obsctl.scrape.HostEndpoint.close`).
        """
        if self.endpoint is not None and failed:
            self.endpoint.close(failed=True)  # before the providers stop: the last collect is this one
        if timeout_seconds is None:
            timeout_seconds = max(self.cfg.metrics.export_timeout_seconds, self.cfg.traces.export_timeout_seconds)
        workers = [
            threading.Thread(target=self.tracer_provider.shutdown, name="traces-shutdown", daemon=True),
            threading.Thread(target=self.meter_provider.shutdown, kwargs={"timeout_millis": timeout_seconds * 1000},
                             name="metrics-shutdown", daemon=True),
        ]
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + timeout_seconds + 0.5
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        if any(worker.is_alive() for worker in workers):
            log.warning("final telemetry export did not finish within %.1f s (collector unreachable?); "
                        "exiting without it", timeout_seconds)
        if self.endpoint is not None:
            self.endpoint.close()
