"""A failing OTLP backend is logged once with the reason, then at most one
"still failing" summary per period, then one "recovered" line; tested with
the real gRPC and http/protobuf exporters against the real OTLP receiver of
tests/support, stopped and started again on the same port (gRPC) or
answering 503 for a while (http/protobuf)."""

import logging
import time

import pytest

from obsctl.config import parse_telemetry
from obsctl.instruments import MountAttributes
from obsctl.telemetry import RecordingMetricExporter, Telemetry
from support.otlp_receiver import OtlpReceiver

ATTRS = MountAttributes(bucket="data", impl="rclone", mountpoint="/mnt/data")


def lines(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_flapping_backend_gives_one_line_then_summary_then_recovered(protocol, caplog, monkeypatch):
    monkeypatch.setattr(RecordingMetricExporter, "still_failing_every", 2.0)
    receiver = OtlpReceiver().start()
    endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
    cfg = parse_telemetry({"telemetry": {"mode": "remote", "traces": {"enabled": False}, "metrics": {
        "otlp_endpoint": endpoint, "otlp_protocol": protocol,
        "export_interval_seconds": 0.3, "export_timeout_seconds": 0.5}}})
    caplog.set_level(logging.WARNING)
    tel = Telemetry(cfg, ATTRS)
    try:
        tel.instruments.add_read_bytes(1)
        deadline = time.monotonic() + 10
        while not receiver.requests("metrics") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert receiver.requests("metrics"), "no export reached the receiver"
        caplog.clear()

        if protocol == "grpc":
            receiver.stop()
        else:  # the receiver's HTTP handler threads outlive stop() on keep-alive connections
            receiver.fail_with(http_status=503)
        deadline = time.monotonic() + 20
        while tel.export_status.as_dict()["failures"] < 8 and time.monotonic() < deadline:
            time.sleep(0.1)
        status = tel.export_status.as_dict()
        assert status["failures"] >= 8, status
        assert status["result"] == "failure" and status["last_error"]
        down = lines(caplog)
        failed = [m for m in down if " failed: " in m]
        still = [m for m in down if "still failing" in m]
        assert len(failed) == 1, down
        assert endpoint in failed[0] or endpoint.split("//")[1] in failed[0]
        assert 1 <= len(still) <= status["failures"] // 2, down
        assert len(down) == len(failed) + len(still), f"exporter lines leaked through: {down}"
        assert not any("Traceback" in m for m in down)
        caplog.clear()

        if protocol == "grpc":
            receiver.start()  # same port
        else:
            receiver.fail_with(None)
        deadline = time.monotonic() + 20
        while tel.export_status.as_dict()["result"] != "success" and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        up = lines(caplog)
        assert [m for m in up if "recovered after" in m] == up and len(up) == 1, up
        assert tel.export_status.as_dict()["last_error"] == ""
        tel.instruments.add_read_bytes(41)
        deadline = time.monotonic() + 10
        while receiver.latest("obsctl_fs_read_bytes", bucket="data") != 42 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert receiver.latest("obsctl_fs_read_bytes", bucket="data") == 42  # nothing lost while it was down
    finally:
        tel.shutdown(1)
        receiver.stop()
