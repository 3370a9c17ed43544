"""The OTLP receiver of the test harness, checked against the real OTel SDK
exporters (gRPC and http/protobuf): if these pass, what the integration tests
read from the receiver is what an exporter put on the wire."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetricExporter,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from support.otlp_receiver import OtlpReceiver


@pytest.fixture
def receiver():
    rx = OtlpReceiver().start()
    yield rx
    rx.stop()


def _metric_exporter(rx: OtlpReceiver, protocol: str):
    if protocol == "grpc":
        return GrpcMetricExporter(endpoint=rx.grpc_endpoint, insecure=True, timeout=5)
    return HttpMetricExporter(endpoint=rx.http_metrics_url, timeout=5)


def _span_exporter(rx: OtlpReceiver, protocol: str):
    if protocol == "grpc":
        return GrpcSpanExporter(endpoint=rx.grpc_endpoint, insecure=True, timeout=5)
    return HttpSpanExporter(endpoint=rx.http_traces_url, timeout=5)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_metrics_roundtrip(receiver: OtlpReceiver, protocol: str) -> None:
    reader = PeriodicExportingMetricReader(
        _metric_exporter(receiver, protocol), export_interval_millis=200
    )
    provider = MeterProvider(
        metric_readers=[reader],
        resource=Resource.create({"service.name": "obsctl-test", "host.name": "h1"}),
    )
    meter = provider.get_meter("obsctl.test")
    counter = meter.create_counter("obsctl_fs_read_bytes", unit="By")
    hist = meter.create_histogram("obsctl_fs_latency_ms")
    up = {"value": 1}
    meter.create_observable_gauge(
        "obsctl_mount_up",
        callbacks=[lambda _o: [Observation(up["value"], {"bucket": "b1", "impl": "rclone"})]],
    )
    t0 = time.time()
    try:
        counter.add(100, {"bucket": "b1", "impl": "rclone", "mountpoint": "/mnt/x"})
        counter.add(7, {"bucket": "b2", "impl": "s3fs", "mountpoint": "/mnt/y"})
        for v in (0.3, 2.0, 40.0):
            hist.record(v, {"opcode": "read", "bucket": "b1", "impl": "rclone"})

        receiver.wait_for(
            lambda: receiver.latest("obsctl_fs_read_bytes", bucket="b1") == 100, 10
        )
        counter.add(50, {"bucket": "b1", "impl": "rclone", "mountpoint": "/mnt/x"})
        up["value"] = 0
        receiver.wait_for(
            lambda: receiver.latest("obsctl_fs_read_bytes", bucket="b1", impl="rclone") == 150
            and receiver.latest("obsctl_mount_up", bucket="b1") == 0,
            10,
        )
    finally:
        provider.shutdown()

    # points carry arrival times, are filtered by attribute subsets
    pts = receiver.metric_points("obsctl_fs_read_bytes", bucket="b1")
    assert pts and all(t0 <= t <= time.time() for t, _v in pts)
    values = [v for _ignored, v in pts]
    assert values == sorted(values) and values[-1] == 150  # cumulative
    assert receiver.latest("obsctl_fs_read_bytes", bucket="b2", impl="s3fs") == 7
    assert receiver.latest("obsctl_fs_read_bytes", bucket="nope") is None
    assert receiver.latest("obsctl_fs_read_bytes", bucket="b1", impl="s3fs") is None
    assert receiver.latest_sum("obsctl_fs_read_bytes") == 157

    p = receiver.points("obsctl_fs_read_bytes", bucket="b1")[-1]
    assert p.kind == "sum" and p.is_monotonic and p.unit == "By"
    assert p.attributes == {"bucket": "b1", "impl": "rclone", "mountpoint": "/mnt/x"}
    assert 1 in receiver.metric_points("obsctl_mount_up", bucket="b1")[0]

    h = receiver.histogram_points("obsctl_fs_latency_ms", opcode="read")
    assert h and h[-1].count == 3 and h[-1].sum == pytest.approx(42.3)
    assert sum(h[-1].bucket_counts) == 3 and h[-1].explicit_bounds

    assert receiver.resource_attributes()["service.name"] == "obsctl-test"
    assert receiver.resource_attributes()["host.name"] == "h1"
    assert {"obsctl_fs_read_bytes", "obsctl_fs_latency_ms", "obsctl_mount_up"} <= receiver.metric_names()
    want_transport = "grpc" if protocol == "grpc" else "http"
    assert {r.transport for r in receiver.requests()} == {want_transport}
    assert receiver.decode_errors == []
    assert "obsctl_fs_read_bytes" in receiver.summary()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_spans_roundtrip(receiver: OtlpReceiver, protocol: str) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "obsctl-test"}))
    provider.add_span_processor(SimpleSpanProcessor(_span_exporter(receiver, protocol)))
    tracer = provider.get_tracer("obsctl.test")
    with tracer.start_as_current_span("mount", attributes={"bucket": "b1", "impl": "rclone"}):
        pass
    with tracer.start_as_current_span("unmount", attributes={"bucket": "b1"}):
        pass
    provider.shutdown()
    receiver.wait_for(lambda: len(receiver.spans()) == 2, 10)
    spans = receiver.spans()
    assert [s.name for s in spans] == ["mount", "unmount"]
    assert spans[0].attributes == {"bucket": "b1", "impl": "rclone"}
    assert receiver.spans("mount", impl="rclone")
    assert not receiver.spans("mount", impl="s3fs")
    assert spans[0].end_time_unix_nano >= spans[0].start_time_unix_nano > 0
    assert receiver.resource_attributes("traces")["service.name"] == "obsctl-test"


def test_wait_for_times_out_with_summary(receiver: OtlpReceiver) -> None:
    t0 = time.monotonic()
    with pytest.raises(AssertionError, match="0 request"):
        receiver.wait_for(lambda: receiver.latest("nothing") is not None, 0.5)
    assert 0.4 < time.monotonic() - t0 < 3


def test_wait_for_wakes_on_arrival(receiver: OtlpReceiver) -> None:
    exporter = GrpcMetricExporter(endpoint=receiver.grpc_endpoint, insecure=True, timeout=5)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=60_000)
    provider = MeterProvider(metric_readers=[reader])
    provider.get_meter("t").create_counter("c").add(1)
    threading.Timer(0.3, reader.force_flush).start()
    try:
        t0 = time.monotonic()
        assert receiver.wait_for(lambda: receiver.latest("c"), 10) == 1
        assert time.monotonic() - t0 < 5
    finally:
        provider.shutdown()


def test_injected_failure_is_seen_by_exporter(receiver: OtlpReceiver) -> None:
    receiver.fail_with(grpc_status=grpc.StatusCode.PERMISSION_DENIED, http_status=500)
    exporter = HttpMetricExporter(endpoint=receiver.http_metrics_url, timeout=2)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=60_000)
    provider = MeterProvider(metric_readers=[reader])
    provider.get_meter("t").create_counter("c").add(1)
    try:
        reader.force_flush(timeout_millis=3000)
        assert receiver.requests() == []
        receiver.fail_with(None, None)
        reader.force_flush(timeout_millis=3000)
        receiver.wait_for(lambda: receiver.latest("c") == 1, 5)
    finally:
        provider.shutdown()


def test_many_concurrent_exporters(receiver: OtlpReceiver) -> None:
    providers = []
    for i in range(4):
        proto = "grpc" if i % 2 else "http/protobuf"
        reader = PeriodicExportingMetricReader(
            _metric_exporter(receiver, proto), export_interval_millis=100
        )
        mp = MeterProvider(metric_readers=[reader])
        mp.get_meter("t").create_counter("obsctl_fs_ops").add(i + 1, {"opcode": f"op{i}"})
        providers.append(mp)
    try:
        receiver.wait_for(lambda: receiver.latest_sum("obsctl_fs_ops") == 10, 10)
    finally:
        for mp in providers:
            mp.shutdown()
