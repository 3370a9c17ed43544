"""Self-checks of the test harness (no FUSE needed): the auth-enforcing moto
server, the Prometheus wrapper, and the helpers the mount tests rely on. If
one of these fails, the mount tests' verdicts cannot be trusted."""

from __future__ import annotations

import math
import time

import botocore.exceptions
import pytest

from support.net import closed_port, free_port
from support.obsctl import _is_ready_line, _unescape, find_secret, obsctl_command
from support.prometheus import Prometheus, prometheus_binary
from support.s3server import AUTH_SETUP_ACTIONS, S3Server

pytestmark = pytest.mark.no_fuse


def _code(exc: botocore.exceptions.ClientError) -> str:
    return exc.response["Error"]["Code"]


def test_auth_server_enforces_signatures(s3_auth_server):
    """The IAM key works; a wrong secret gets SignatureDoesNotMatch; an unknown
    key InvalidAccessKeyId; and INITIAL_NO_AUTH_ACTION_COUNT was exact: one
    more unauthenticated set-up call is refused."""
    assert AUTH_SETUP_ACTIONS == 4
    s3_auth_server.create_bucket("harness-auth-check", {"k": b"v"})
    assert s3_auth_server.get_object("harness-auth-check", "k") == b"v"

    secret = s3_auth_server.secret_key
    # a different first character (moto's secret is random: "x" + secret[1:] was the secret itself
    # whenever it began with "x", CI on ce7c669)
    wrong = s3_auth_server.client(secret_key=("y" if secret[0] == "x" else "x") + secret[1:])
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        wrong.list_objects_v2(Bucket="harness-auth-check")
    assert _code(exc.value) == "SignatureDoesNotMatch"

    unknown = s3_auth_server.client(access_key="AKIAUNKNOWN000000000", secret_key="x")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        unknown.list_objects_v2(Bucket="harness-auth-check")
    assert _code(exc.value) == "InvalidAccessKeyId"

    iam = s3_auth_server.client("iam", access_key="setup", secret_key="setup")
    with pytest.raises(botocore.exceptions.ClientError):
        iam.create_user(UserName="one-too-many")


def test_plain_server_accepts_any_key(s3_server):
    s3_server.create_bucket("harness-plain-check", {"k": b"v"})
    anyone = s3_server.client(access_key="whoever", secret_key="whatever")
    assert anyone.list_objects_v2(Bucket="harness-plain-check")["KeyCount"] == 1


def test_s3_server_stops(tmp_path):
    server = S3Server().start()
    port, proc = server.port, server.proc
    server.stop()
    assert proc.poll() is not None
    import socket
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.skipif(prometheus_binary() is None, reason="prometheus not installed")
def test_prometheus_wrapper_scrapes_and_answers():
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import start_http_server
    from prometheus_client.registry import REGISTRY

    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1")
    provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
    try:
        meter = provider.get_meter("harness")
        counter = meter.create_counter("harness_bytes", unit="By")
        hist = meter.create_histogram("harness_latency_ms")
        with Prometheus(f"127.0.0.1:{port}") as prom:
            counter.add(100, {"bucket": "hb"})
            hist.record(2.0, {"opcode": "read"})
            prom.wait_for_query('harness_bytes_total{bucket="hb"}', timeout=15)
            time.sleep(1.5)
            counter.add(100, {"bucket": "hb"})
            hist.record(4.0, {"opcode": "read"})
            res = prom.wait_for_query(
                "sum by (bucket) (rate(harness_bytes_total[5m]))",
                lambda r: r and Prometheus.values(r)[0] > 0, timeout=15)
            assert res[0]["metric"] == {"bucket": "hb"}
            prom.wait_for_query(
                'histogram_quantile(0.95, rate(harness_latency_ms_bucket{opcode="read"}[5m]))',
                lambda r: r and not math.isnan(Prometheus.values(r)[0]), timeout=15)
            with pytest.raises(AssertionError, match="did not satisfy"):
                prom.wait_for_query("nonexistent_metric", timeout=1)
    finally:
        provider.shutdown()
        server.shutdown()
        # PrometheusMetricReader registers on the global registry; unregister
        for collector in list(getattr(REGISTRY, "_collector_to_names", {})):
            if type(collector).__name__ == "_CustomCollector":
                REGISTRY.unregister(collector)


def test_ready_line_detection():
    assert _is_ready_line("obsctl: mounted s3://b on /mnt/x (rclone, driver pid 1) in 0.2 s")
    assert not _is_ready_line("obsctl: nothing is mounted at /mnt/x")
    assert not _is_ready_line("obsctl: mount failed: the mount appeared but ...")
    assert not _is_ready_line("obsctl: unmounted /mnt/x")
    assert not _is_ready_line("obsctl: /mnt/x is not mounted")


def test_mountinfo_unescape():
    assert _unescape(r"/tmp/a\040b") == "/tmp/a b"
    assert _unescape(r"/tmp/back\134slash") == "/tmp/back\\slash"
    assert _unescape("/plain") == "/plain"


def test_find_secret_finds_files_and_cmdlines(tmp_path):
    import subprocess
    secret = "harness-secret-" + str(time.time_ns())
    since = time.time() - 1
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "leak.log").write_text(f"token={secret}\n")
    (tmp_path / "clean.log").write_text("nothing\n")
    proc = subprocess.Popen(["sh", "-c", "sleep 30", secret])
    try:
        deadline = time.monotonic() + 5
        while secret.encode() not in open(f"/proc/{proc.pid}/cmdline", "rb").read():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        hits = find_secret(secret, since=since, roots=[tmp_path])
    finally:
        proc.kill()
        proc.wait()
    assert str(tmp_path / "a" / "leak.log") in hits
    assert any(h.startswith(f"/proc/{proc.pid}/cmdline") for h in hits)
    assert all(secret not in h for h in hits)
    assert find_secret(secret, since=time.time() + 60, roots=[tmp_path]) == []


def test_closed_port_is_closed():
    import socket
    port = closed_port()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_obsctl_console_script_runs():
    import subprocess
    res = subprocess.run([*obsctl_command(), "--version"], capture_output=True, text=True, timeout=30, check=False)
    assert res.returncode == 0 and "obsctl" in res.stdout + res.stderr, res
