"""A real OTLP receiver for tests: gRPC and http/protobuf, metrics and traces.

It decodes what an exporter really put on the wire with the official
``opentelemetry-proto`` messages and keeps every request with its arrival
time, so a test can ask "what was the last value of obsctl_fs_read_bytes for
bucket=b, impl=rclone, and when did it arrive?".

Usage::

    with OtlpReceiver() as rx:
        exporter = OTLPMetricExporter(endpoint=rx.grpc_endpoint, insecure=True)
        ...
        rx.wait_for(lambda: rx.latest("obsctl_mount_up", bucket="b") == 1, 15)

Everything is thread-safe: the gRPC and HTTP servers record from their own
threads, queries take a snapshot under a lock.
"""

from __future__ import annotations

import gzip
import http.server
import threading
import time
import zlib
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import grpc
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)
from opentelemetry.proto.common.v1 import common_pb2

__all__ = [
    "OtlpReceiver",
    "Request",
    "Point",
    "HistogramPoint",
    "SpanRecord",
    "any_value",
    "attributes_to_dict",
]


# --------------------------------------------------------------------------
# decoding helpers


def any_value(value: common_pb2.AnyValue) -> Any:
    """Convert an OTLP AnyValue into the matching Python value."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes_to_dict(value.kvlist_value.values)
    return getattr(value, kind)


def attributes_to_dict(attrs: Iterable[common_pb2.KeyValue]) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in attrs}


@dataclass(frozen=True)
class Request:
    """One Export call as it arrived."""

    time: float  # time.time() at arrival
    signal: str  # "metrics" | "traces"
    transport: str  # "grpc" | "http"
    message: Any  # Export{Metrics,Trace}ServiceRequest
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Point:
    """One Sum or Gauge data point, flattened."""

    time: float  # arrival time of the request that carried it
    name: str
    kind: str  # "sum" | "gauge"
    value: float | int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    unit: str
    is_monotonic: bool | None  # None for gauges
    temporality: int | None  # AggregationTemporality enum value, None for gauges
    start_time_unix_nano: int
    time_unix_nano: int


@dataclass(frozen=True)
class HistogramPoint:
    """One (explicit-bucket) Histogram data point, flattened."""

    time: float
    name: str
    count: int
    sum: float
    bucket_counts: tuple[int, ...]
    explicit_bounds: tuple[float, ...]
    attributes: dict[str, Any]
    resource: dict[str, Any]
    unit: str
    temporality: int
    min: float | None
    max: float | None


@dataclass(frozen=True)
class SpanRecord:
    time: float
    name: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    status_code: int  # 0 unset, 1 ok, 2 error
    status_message: str
    start_time_unix_nano: int
    end_time_unix_nano: int
    events: tuple[str, ...]


def _matches(attributes: dict[str, Any], wanted: dict[str, Any]) -> bool:
    for key, want in wanted.items():
        if key not in attributes:
            return False
        have = attributes[key]
        if have != want and str(have) != str(want):
            return False
    return True


# --------------------------------------------------------------------------
# servicers


class _MetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: "OtlpReceiver") -> None:
        self._rx = receiver

    def Export(self, request, context):  # noqa: N802 (grpc naming)
        status = self._rx._injected_grpc_status()
        if status is not None:
            context.abort(status, "injected failure")
        headers = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        self._rx._record("metrics", "grpc", request, headers)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class _TraceServicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: "OtlpReceiver") -> None:
        self._rx = receiver

    def Export(self, request, context):  # noqa: N802
        status = self._rx._injected_grpc_status()
        if status is not None:
            context.abort(status, "injected failure")
        headers = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        self._rx._record("traces", "grpc", request, headers)
        return trace_service_pb2.ExportTraceServiceResponse()


def _make_http_handler(receiver: "OtlpReceiver"):
    routes = {
        "/v1/metrics": (
            "metrics",
            metrics_service_pb2.ExportMetricsServiceRequest,
            metrics_service_pb2.ExportMetricsServiceResponse,
        ),
        "/v1/traces": (
            "traces",
            trace_service_pb2.ExportTraceServiceRequest,
            trace_service_pb2.ExportTraceServiceResponse,
        ),
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _reply(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if path not in routes:
                self._reply(404, b"not found", "text/plain")
                return
            injected = receiver._injected_http_status()
            if injected is not None:
                self._reply(injected, b"injected failure", "text/plain")
                return
            signal, req_cls, resp_cls = routes[path]
            encoding = (self.headers.get("Content-Encoding") or "").lower()
            try:
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                ctype = (self.headers.get("Content-Type") or "").lower()
                message = req_cls()
                if ctype.startswith("application/json"):
                    json_format.Parse(body.decode("utf-8"), message)
                else:
                    message.ParseFromString(body)
            except Exception as exc:  # a malformed body is a test failure
                receiver._record_error(f"{path}: cannot decode body: {exc!r}")
                self._reply(400, str(exc).encode(), "text/plain")
                return
            receiver._record(signal, "http", message, dict(self.headers.items()))
            self._reply(
                200, resp_cls().SerializeToString(), "application/x-protobuf"
            )

    return Handler


# --------------------------------------------------------------------------
# the receiver


class OtlpReceiver:
    """gRPC + http/protobuf OTLP receiver on 127.0.0.1, recording everything."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._lock = threading.Condition()
        self._requests: list[Request] = []
        self._errors: list[str] = []
        self._grpc_server: grpc.Server | None = None
        self._http_server: http.server.ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self.grpc_port: int | None = None
        self.http_port: int | None = None
        self._fail_grpc: grpc.StatusCode | None = None
        self._fail_http: int | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> "OtlpReceiver":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
            _MetricsServicer(self), server
        )
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(
            _TraceServicer(self), server
        )
        # a restart after stop() binds the same ports again (a collector that flaps)
        port = server.add_insecure_port(f"{self.host}:{self.grpc_port or 0}")
        if not port:
            raise RuntimeError("gRPC server could not bind a port on " + self.host)
        server.start()
        self._grpc_server = server
        self.grpc_port = port

        httpd = http.server.ThreadingHTTPServer((self.host, self.http_port or 0), _make_http_handler(self))
        httpd.daemon_threads = True
        self._http_server = httpd
        self.http_port = httpd.server_address[1]
        self._http_thread = threading.Thread(
            target=httpd.serve_forever, name="otlp-http", daemon=True
        )
        self._http_thread.start()
        return self

    def stop(self) -> None:
        if self._grpc_server is not None:
            self._grpc_server.stop(grace=0.5).wait(5)
            self._grpc_server = None
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
            self._http_server = None

    def __enter__(self) -> "OtlpReceiver":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- endpoints ---------------------------------------------------------

    @property
    def grpc_endpoint(self) -> str:
        """``http://127.0.0.1:PORT`` for a gRPC exporter (insecure)."""
        return f"http://{self.host}:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        """Base URL for http/protobuf (``OTEL_EXPORTER_OTLP_ENDPOINT`` style)."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def http_metrics_url(self) -> str:
        return f"{self.http_endpoint}/v1/metrics"

    @property
    def http_traces_url(self) -> str:
        return f"{self.http_endpoint}/v1/traces"

    # -- failure injection -------------------------------------------------

    def fail_with(self, grpc_status: grpc.StatusCode | None = None,
                  http_status: int | None = None) -> None:
        """Answer every following export with this error (None: accept again)."""
        with self._lock:
            self._fail_grpc = grpc_status
            self._fail_http = http_status

    def _injected_grpc_status(self) -> grpc.StatusCode | None:
        with self._lock:
            return self._fail_grpc

    def _injected_http_status(self) -> int | None:
        with self._lock:
            return self._fail_http

    # -- recording ---------------------------------------------------------

    def _record(self, signal: str, transport: str, message: Any,
                headers: dict[str, str]) -> None:
        with self._lock:
            self._requests.append(Request(time.time(), signal, transport, message, headers))
            self._lock.notify_all()

    def _record_error(self, text: str) -> None:
        with self._lock:
            self._errors.append(text)
            self._lock.notify_all()

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._errors.clear()

    # -- queries -------------------------------------------------------------

    def requests(self, signal: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self._requests if signal is None or r.signal == signal]

    @property
    def decode_errors(self) -> list[str]:
        with self._lock:
            return list(self._errors)

    def first_arrival(self, signal: str = "metrics") -> float | None:
        reqs = self.requests(signal)
        return reqs[0].time if reqs else None

    def _iter_metrics(self, since: float | None = None):
        for req in self.requests("metrics"):
            if since is not None and req.time < since:
                continue
            for rm in req.message.resource_metrics:
                resource = attributes_to_dict(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        yield req, resource, sm.scope.name, metric

    def points(self, name: str | None = None, since: float | None = None,
               **attrs: Any) -> list[Point]:
        """All Sum/Gauge points (of ``name``) whose attributes include ``attrs``."""
        out: list[Point] = []
        for req, resource, scope, metric in self._iter_metrics(since):
            if name is not None and metric.name != name:
                continue
            kind = metric.WhichOneof("data")
            if kind not in ("sum", "gauge"):
                continue
            data = getattr(metric, kind)
            for dp in data.data_points:
                a = attributes_to_dict(dp.attributes)
                if not _matches(a, attrs):
                    continue
                which = dp.WhichOneof("value")
                value = getattr(dp, which) if which else 0
                out.append(Point(
                    time=req.time, name=metric.name, kind=kind, value=value,
                    attributes=a, resource=resource, scope=scope, unit=metric.unit,
                    is_monotonic=data.is_monotonic if kind == "sum" else None,
                    temporality=data.aggregation_temporality if kind == "sum" else None,
                    start_time_unix_nano=dp.start_time_unix_nano,
                    time_unix_nano=dp.time_unix_nano,
                ))
        return out

    def metric_points(self, name: str, **attrs: Any) -> list[tuple[float, float | int]]:
        """(arrival time, value) of every Sum/Gauge point of ``name`` matching ``attrs``."""
        return [(p.time, p.value) for p in self.points(name, **attrs)]

    def latest(self, name: str, **attrs: Any) -> float | int | None:
        """Value of the last received Sum/Gauge point of ``name`` matching ``attrs``."""
        pts = self.points(name, **attrs)
        return pts[-1].value if pts else None

    def latest_sum(self, name: str, **attrs: Any) -> float | int | None:
        """Sum, over the distinct attribute sets matching ``attrs``, of each set's
        last received value (e.g. all opcodes of obsctl_fs_ops for one bucket)."""
        last: dict[tuple, float | int] = {}
        for p in self.points(name, **attrs):
            last[tuple(sorted((k, str(v)) for k, v in p.attributes.items()))] = p.value
        return sum(last.values()) if last else None

    def histogram_points(self, name: str, since: float | None = None,
                         **attrs: Any) -> list[HistogramPoint]:
        out: list[HistogramPoint] = []
        for req, resource, _scope, metric in self._iter_metrics(since):
            if metric.name != name or metric.WhichOneof("data") != "histogram":
                continue
            hist = metric.histogram
            for dp in hist.data_points:
                a = attributes_to_dict(dp.attributes)
                if not _matches(a, attrs):
                    continue
                out.append(HistogramPoint(
                    time=req.time, name=metric.name, count=dp.count, sum=dp.sum,
                    bucket_counts=tuple(dp.bucket_counts),
                    explicit_bounds=tuple(dp.explicit_bounds),
                    attributes=a, resource=resource, unit=metric.unit,
                    temporality=hist.aggregation_temporality,
                    min=dp.min if dp.HasField("min") else None,
                    max=dp.max if dp.HasField("max") else None,
                ))
        return out

    def metric_names(self) -> set[str]:
        return {metric.name for _r, _res, _s, metric in self._iter_metrics()}

    def resource_attributes(self, signal: str | None = None) -> dict[str, Any]:
        """Attributes of the most recently received resource (merged over all
        resources of that request); {} when nothing arrived."""
        reqs = self.requests(signal)
        if not reqs:
            return {}
        msg = reqs[-1].message
        merged: dict[str, Any] = {}
        groups = (msg.resource_metrics if reqs[-1].signal == "metrics"
                  else msg.resource_spans)
        for group in groups:
            merged.update(attributes_to_dict(group.resource.attributes))
        return merged

    def all_resource_attributes(self) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        for req in self.requests():
            groups = (req.message.resource_metrics if req.signal == "metrics"
                      else req.message.resource_spans)
            for group in groups:
                d = attributes_to_dict(group.resource.attributes)
                if d not in seen:
                    seen.append(d)
        return seen

    def spans(self, name: str | None = None, **attrs: Any) -> list[SpanRecord]:
        out: list[SpanRecord] = []
        for req in self.requests("traces"):
            for rs in req.message.resource_spans:
                resource = attributes_to_dict(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        if name is not None and span.name != name:
                            continue
                        a = attributes_to_dict(span.attributes)
                        if not _matches(a, attrs):
                            continue
                        out.append(SpanRecord(
                            time=req.time, name=span.name, attributes=a,
                            resource=resource, scope=ss.scope.name,
                            trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(), kind=span.kind,
                            status_code=span.status.code,
                            status_message=span.status.message,
                            start_time_unix_nano=span.start_time_unix_nano,
                            end_time_unix_nano=span.end_time_unix_nano,
                            events=tuple(e.name for e in span.events),
                        ))
        return out

    def summary(self, limit: int = 60) -> str:
        """Short human-readable description of what arrived (for failure messages)."""
        reqs = self.requests()
        lines = [f"{len(reqs)} request(s) "
                 f"({sum(r.signal == 'metrics' for r in reqs)} metrics, "
                 f"{sum(r.signal == 'traces' for r in reqs)} traces)"]
        latest: dict[tuple, str] = {}
        for p in self.points():
            key = (p.name, tuple(sorted((k, str(v)) for k, v in p.attributes.items())))
            latest[key] = f"{p.value}"
        for h in self._all_histograms():
            key = (h.name, tuple(sorted((k, str(v)) for k, v in h.attributes.items())))
            latest[key] = f"hist count={h.count} sum={h.sum:.3f}"
        for (name, attrs), value in sorted(latest.items())[:limit]:
            lines.append(f"  {name}{{{', '.join(f'{k}={v}' for k, v in attrs)}}} = {value}")
        if len(latest) > limit:
            lines.append(f"  ... {len(latest) - limit} more series")
        span_names = [s.name for s in self.spans()]
        if span_names:
            lines.append(f"  spans: {span_names}")
        if self._errors:
            lines.append(f"  decode errors: {self._errors}")
        return "\n".join(lines)

    def _all_histograms(self) -> list[HistogramPoint]:
        out = []
        for name in self.metric_names():
            out.extend(self.histogram_points(name))
        return out

    # -- waiting -------------------------------------------------------------

    def wait_for(self, predicate: Callable[[], Any], timeout: float,
                 message: str = "") -> Any:
        """Wait until ``predicate()`` is truthy; return its value.

        Re-evaluated on every arrival and at least every 0.2 s. Raises
        AssertionError (with a summary of what arrived) on timeout.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"OTLP receiver: condition not met within {timeout:.1f}s"
                    f"{': ' + message if message else ''}\n{self.summary()}"
                )
            with self._lock:
                self._lock.wait(min(0.2, remaining))
