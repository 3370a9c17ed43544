"""obsctl.telemetry against real peers on loopback: the OTLP receiver (gRPC and
http/protobuf) and the Prometheus endpoint's text, with the names of DESIGN
section 4 exactly as Prometheus shows them."""

from __future__ import annotations

import re
import socket
import time
import urllib.request

import pytest
from opentelemetry.metrics import Observation

from obsctl.config import parse_telemetry
from obsctl.instruments import MountAttributes
from obsctl.telemetry import Telemetry
from support.otlp_receiver import OtlpReceiver

ATTRS = MountAttributes("data", "rclone", "/mnt/data")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def record_everything(telemetry: Telemetry) -> None:
    ins = telemetry.instruments
    ins.add_read_bytes(4096)
    ins.add_write_bytes(100)
    ins.record_fs_op("read", 1.5)
    ins.record_request("get", 12.0)
    ins.add_error("http_403")
    ins.add_cache(hits=2, misses=1)
    ins.add_restart()
    ins.observable_gauge("obsctl_mount_up", lambda _options: [Observation(1, ATTRS.with_mountpoint())])


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_otlp_export_names_resource_and_final_values(protocol):
    with OtlpReceiver() as receiver:
        endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
        cfg = parse_telemetry({"telemetry": {
            "mode": "remote",
            "resource": {"service_name": "obsctl-test", "attributes": {"deployment.environment": "ci"}},
            "traces": {"otlp_endpoint": endpoint, "otlp_protocol": protocol},
            "metrics": {"otlp_endpoint": endpoint, "otlp_protocol": protocol, "export_interval_seconds": 60}}})
        telemetry = Telemetry(cfg, ATTRS, resource_attributes={"obsctl.mount.impl": "rclone"})
        record_everything(telemetry)
        assert telemetry.flush()  # the first export, long before the 60 s interval
        assert receiver.wait_for(lambda: receiver.latest_sum("obsctl_fs_read_bytes", bucket="data") == 4096, 10)
        telemetry.instruments.add_read_bytes(904)
        telemetry.tracer.start_span("mount").end()
        started = time.monotonic()
        telemetry.shutdown()
        assert time.monotonic() - started < 4
        assert receiver.wait_for(lambda: receiver.latest_sum("obsctl_fs_read_bytes", bucket="data") == 5000, 10)
        assert receiver.latest("obsctl_mount_up", mountpoint="/mnt/data") == 1
        assert receiver.latest_sum("obsctl_errors", error_type="http_403") == 1
        resource = receiver.resource_attributes("metrics")
        assert resource["service.name"] == "obsctl-test"
        assert resource["deployment.environment"] == "ci"
        assert resource["obsctl.mount.impl"] == "rclone"
        assert [s.name for s in receiver.spans("mount")] == ["mount"]
        assert telemetry.export_status.as_dict()["result"] == "success"


def test_unreachable_collector_bounds_shutdown():
    port = free_port()  # nothing listens there
    cfg = parse_telemetry({"telemetry": {
        "mode": "remote",
        "traces": {"otlp_endpoint": f"http://127.0.0.1:{port}", "export_timeout_seconds": 1},
        "metrics": {"otlp_endpoint": f"http://127.0.0.1:{port}", "export_timeout_seconds": 1}}})
    telemetry = Telemetry(cfg, ATTRS)
    record_everything(telemetry)
    telemetry.tracer.start_span("unmount").end()
    started = time.monotonic()
    telemetry.shutdown()
    assert time.monotonic() - started < 2.5


def test_prometheus_endpoint_shows_design_names():
    port = free_port()
    cfg = parse_telemetry({"telemetry": {"mode": "remote", "traces": {"enabled": False},
                                         "metrics": {"bind_address": f"127.0.0.1:{port}"}}})
    telemetry = Telemetry(cfg, ATTRS)
    try:
        record_everything(telemetry)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        telemetry.shutdown()
    names = {line.split("{", 1)[0].split(" ", 1)[0] for line in text.splitlines() if line.startswith("obsctl_")}
    assert {
        "obsctl_fs_read_bytes_total", "obsctl_fs_write_bytes_total", "obsctl_fs_ops_total",
        "obsctl_fs_latency_ms_bucket", "obsctl_operation_duration_ms_bucket", "obsctl_errors_total",
        "obsctl_cache_hits_total", "obsctl_cache_misses_total", "obsctl_driver_restarts_total",
        "obsctl_mount_up",
    } <= names
    assert 'obsctl_fs_read_bytes_total{bucket="data",impl="rclone",mountpoint="/mnt/data"' in text
    assert re.search(r'obsctl_operation_duration_ms_bucket{bucket="data",impl="rclone",le="25.0",mountpoint="/mnt/data",opcode="GET"[,}].* 1.0', text)
    # one copy of each family, even after a flush (force_flush must not queue a second)
    assert text.count("# TYPE obsctl_fs_read_bytes_total counter") == 1


def test_mode_none_creates_no_exporter_and_no_listener():
    cfg = parse_telemetry({"telemetry": {"mode": "none", "metrics": {"bind_address": "127.0.0.1:1"}}})
    telemetry = Telemetry(cfg, ATTRS)
    record_everything(telemetry)
    assert telemetry.flush()
    assert telemetry.endpoint is None and telemetry._push_reader is None
    assert telemetry.instruments.totals["obsctl_fs_read_bytes"] == 4096
    telemetry.shutdown()
