"""local_stack: what the observability_stack role left on the host.

Without images (no archive: this machine reaches no registry) the role failed
in preflight (converge.yml asserted the message): nothing may have been
installed or written. With an archive (OBSCTL_STACK_IMAGES_ARCHIVE) the stack
runs on the host network, so its 127.0.0.1 ports are this machine's: a metric
sent over OTLP must come out of Prometheus under its DESIGN section 4 name, a
trace must reach Tempo and Grafana's health API must answer. Those tests skip,
saying why, when there are no images.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import urllib.parse
import urllib.request

import pytest

ARCHIVE = os.environ.get("OBSCTL_STACK_IMAGES_ARCHIVE", "")
NO_IMAGES = (
    "no images for the stack: this machine reaches no registry and "
    "OBSCTL_STACK_IMAGES_ARCHIVE (a `docker save` archive of the four images) is not set"
)

CREATED_BY_THE_ROLE = [
    "/etc/obsctl/observability-stack",
    "/var/lib/obsctl-observability-stack",
    "/etc/systemd/system/obsctl-observability-stack.service",
    "/etc/apt/keyrings/docker.asc",
    "/etc/apt/sources.list.d/docker.sources",
]


@pytest.mark.skipif(bool(ARCHIVE), reason="an images archive was given: the stack was deployed")
@pytest.mark.parametrize("path", CREATED_BY_THE_ROLE)
def test_failed_preflight_created_nothing(host, path):
    assert not host.file(path).exists


@pytest.mark.skipif(bool(ARCHIVE), reason="an images archive was given: the stack was deployed")
@pytest.mark.parametrize("package", ["docker.io", "docker-ce", "docker-compose-plugin"])
def test_failed_preflight_installed_nothing(host, package):
    assert not host.package(package).is_installed


def _get(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback only)
        return response.status, response.read()


def _wait(predicate, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 (the service may not answer yet)
            last = exc
        time.sleep(2)
    pytest.fail(f"{what} within {timeout:.0f} s (last error: {last})")


@pytest.fixture(scope="module")
def stack(host):
    if not ARCHIVE:
        pytest.skip(NO_IMAGES)
    assert host.service("obsctl-observability-stack.service").is_enabled
    return host


def test_grafana_health_answers(stack):
    status, body = _wait(lambda: _get("http://127.0.0.1:3000/api/health"), "Grafana's /api/health")
    assert status == 200 and json.loads(body)["database"] == "ok"


def test_grafana_password_file_is_private(stack):
    f = stack.file("/var/lib/obsctl-observability-stack/grafana-admin-password")
    assert f.mode == 0o600 and f.uid == 472


def test_metric_reaches_prometheus_through_the_collector(stack):
    grpc = pytest.importorskip("grpc")
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as ms
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as msg
    from opentelemetry.proto.common.v1 import common_pb2 as common
    from opentelemetry.proto.metrics.v1 import metrics_pb2 as metrics
    from opentelemetry.proto.resource.v1 import resource_pb2 as resource

    def kv(key, value):
        return common.KeyValue(key=key, value=common.AnyValue(string_value=value))

    now = time.time_ns()
    bucket = "molecule-" + secrets.token_hex(4)
    request = ms.ExportMetricsServiceRequest(resource_metrics=[metrics.ResourceMetrics(
        resource=resource.Resource(attributes=[kv("service.name", "obsctl-mount"), kv("host.name", "molecule")]),
        scope_metrics=[metrics.ScopeMetrics(metrics=[metrics.Metric(
            name="obsctl_fs_read_bytes", unit="By",
            sum=metrics.Sum(aggregation_temporality=metrics.AGGREGATION_TEMPORALITY_CUMULATIVE,
                            is_monotonic=True,
                            data_points=[metrics.NumberDataPoint(
                                start_time_unix_nano=now - 10**9, time_unix_nano=now, as_int=4096,
                                attributes=[kv("bucket", bucket), kv("impl", "rclone"),
                                            kv("mountpoint", "/mnt/molecule")])]))])])])
    with grpc.insecure_channel("127.0.0.1:4317") as channel:
        msg.MetricsServiceStub(channel).Export(request, timeout=10)
    query = urllib.parse.quote(f'obsctl_fs_read_bytes_total{{bucket="{bucket}"}}')

    def found():
        body = _get(f"http://127.0.0.1:9090/api/v1/query?query={query}")[1]
        return json.loads(body)["data"]["result"]

    result = _wait(found, "obsctl_fs_read_bytes_total in Prometheus")
    assert result[0]["value"][1] == "4096"
    assert result[0]["metric"]["host_name"] == "molecule"


def test_trace_reaches_tempo(stack):
    grpc = pytest.importorskip("grpc")
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as ts
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as tsg
    from opentelemetry.proto.common.v1 import common_pb2 as common
    from opentelemetry.proto.resource.v1 import resource_pb2 as resource
    from opentelemetry.proto.trace.v1 import trace_pb2 as trace

    trace_id = secrets.token_bytes(16)
    now = time.time_ns()
    request = ts.ExportTraceServiceRequest(resource_spans=[trace.ResourceSpans(
        resource=resource.Resource(attributes=[common.KeyValue(
            key="service.name", value=common.AnyValue(string_value="obsctl-mount"))]),
        scope_spans=[trace.ScopeSpans(spans=[trace.Span(
            trace_id=trace_id, span_id=secrets.token_bytes(8), name="mount",
            start_time_unix_nano=now - 10**8, end_time_unix_nano=now)])])])
    with grpc.insecure_channel("127.0.0.1:4317") as channel:
        tsg.TraceServiceStub(channel).Export(request, timeout=10)
    status = _wait(lambda: _get(f"http://127.0.0.1:3200/api/traces/{trace_id.hex()}"), "the trace in Tempo")[0]
    assert status == 200
