"""obsctl mount end to end: real rclone / s3fs mounts of a loopback S3 server,
telemetry checked on a real OTLP receiver and a real Prometheus.

Every test here runs once per driver (the ``impl`` fixture) and fails (never
skips) when obsctl does not do what the CLI contract says.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest

from support.data import BUCKET_OBJECTS
from support.net import free_port
from support.obsctl import (
    is_mounted, mount_entry, pid_alive, processes_mentioning, run_obsctl,
    require_driver, s3_mount_args, status_entry, status_json,
)
from support.prometheus import Prometheus, prometheus_binary
from support.waiting import wait_until

READ_FILE = "data-a.bin"
READ_FILE_2 = "data-b.bin"


def read_file(path: Path) -> int:
    with open(path, "rb") as fh:
        data = fh.read()
    return len(data)


def my_status(env, mountpoint: Path) -> dict:
    entry = status_entry(env, mountpoint)
    assert entry is not None, f"obsctl status --json has no entry for {mountpoint}"
    return entry


# --------------------------------------------------------------------------


def test_mount_read_write_exports(impl, bucket, s3_server, mountpoint, env, otlp,
                                  telemetry_toml, start_mount):
    """ls shows the objects; bytes read and written reach the OTLP receiver
    with the bucket and impl attributes; the write lands in S3; mount_up is 1;
    a "mount" span reaches the traces endpoint."""
    tel = telemetry_toml(export_interval_seconds=2)
    m = start_mount(s3_mount_args(bucket, mountpoint, impl, s3_server.endpoint, tel), env)
    m.wait_ready(30)

    entry = mount_entry(mountpoint)
    assert entry is not None, f"obsctl said mounted but {mountpoint} is not in mountinfo\n{m.output()}"
    assert entry["fstype"] == f"fuse.{impl}", entry

    names = set(os.listdir(mountpoint))
    assert {"hello.txt", "data-a.bin", "data-b.bin", "dir"} <= names, names
    assert (mountpoint / "hello.txt").read_bytes() == BUCKET_OBJECTS["hello.txt"]

    n_read = read_file(mountpoint / READ_FILE)
    assert n_read == len(BUCKET_OBJECTS[READ_FILE])
    otlp.wait_for(
        lambda: (otlp.latest("obsctl_fs_read_bytes", bucket=bucket, impl=impl) or 0) >= n_read,
        20, f"obsctl_fs_read_bytes{{bucket={bucket}, impl={impl}}} >= {n_read}")

    # under rclone's --streaming-upload-cutoff (100 KiB): one PutObject. Above
    # it rclone 1.60 finishes a multipart upload with HEAD ?versionId=null,
    # which moto answers 400 (real S3 accepts it), so the write would fail
    # for a reason that is neither obsctl's nor the driver's.
    payload = os.urandom(64 * 1024 + 17)
    with open(mountpoint / "written-by-test.bin", "wb") as fh:
        fh.write(payload)
    # the driver uploads on close; the object must be in S3 with the same bytes
    wait_until(lambda: "written-by-test.bin" in s3_server.list_keys(bucket), 20,
               "written-by-test.bin never appeared in S3")
    assert s3_server.get_object(bucket, "written-by-test.bin") == payload
    otlp.wait_for(
        lambda: (otlp.latest("obsctl_fs_write_bytes", bucket=bucket, impl=impl) or 0) >= len(payload),
        20, f"obsctl_fs_write_bytes{{bucket={bucket}, impl={impl}}} >= {len(payload)}")

    otlp.wait_for(lambda: otlp.latest("obsctl_mount_up", bucket=bucket, impl=impl) == 1, 10,
                  "obsctl_mount_up == 1")
    up = otlp.points("obsctl_mount_up", bucket=bucket, impl=impl)[-1]
    assert os.path.realpath(str(up.attributes.get("mountpoint"))) == str(mountpoint.resolve()), up.attributes

    # counters are cumulative monotonic sums (what Prometheus needs)
    rb = otlp.points("obsctl_fs_read_bytes", bucket=bucket, impl=impl)[-1]
    assert rb.kind == "sum" and rb.is_monotonic, rb
    assert rb.temporality == 2, f"expected CUMULATIVE temporality, got {rb.temporality}"

    # operations are counted by opcode
    otlp.wait_for(lambda: (otlp.latest_sum("obsctl_fs_ops", bucket=bucket, impl=impl) or 0) > 0,
                  10, "obsctl_fs_ops > 0")
    assert all("opcode" in p.attributes for p in otlp.points("obsctl_fs_ops", bucket=bucket))
    # the FUSE waiting-requests gauge needs fusectl (scripts/dev-setup mounts it)
    if is_mounted("/sys/fs/fuse/connections"):
        otlp.wait_for(
            lambda: otlp.latest("obsctl_fuse_requests_waiting",
                                mountpoint=str(mountpoint.resolve())) is not None,
            10, "obsctl_fuse_requests_waiting for this mountpoint")

    otlp.wait_for(lambda: otlp.spans("mount"), 15, 'a span named "mount"')

    rc = m.stop(30)
    assert rc == 0, f"obsctl exited {rc} after SIGTERM\n{m.output()}"
    assert not is_mounted(mountpoint)
    otlp.wait_for(lambda: otlp.spans("unmount"), 10, 'a span named "unmount"')


def test_first_export_within_15s(impl, bucket, s3_server, mountpoint, env, otlp,
                                 telemetry_toml, start_mount):
    """With export_interval_seconds=30 the first export still arrives within
    15 s of "mounted" and already says obsctl_mount_up 1 (http/protobuf here,
    so both protocols are covered)."""
    tel = telemetry_toml(export_interval_seconds=30, protocol="http/protobuf")
    m = start_mount(s3_mount_args(bucket, mountpoint, impl, s3_server.endpoint, tel), env)
    ready = m.wait_ready(30)
    otlp.wait_for(lambda: otlp.requests("metrics"), 16, "a first metrics export")
    first = otlp.requests("metrics")[0]
    assert first.transport == "http"
    assert first.time - ready <= 15.0, f"first export {first.time - ready:.1f}s after ready"
    otlp.wait_for(lambda: otlp.latest("obsctl_mount_up", bucket=bucket, impl=impl) == 1,
                  max(0.5, ready + 15.5 - time.time()), "obsctl_mount_up == 1 within 15 s of ready")
    assert m.stop(30) == 0, m.output()


@pytest.mark.skipif(prometheus_binary() is None, reason="prometheus not installed (apt-get install prometheus)")
def test_prometheus_scrape(impl, bucket, s3_server, mountpoint, env, otlp, telemetry_toml,
                           start_mount):
    """A real Prometheus scraping bind_address answers the dashboard queries."""
    port = free_port()
    tel = telemetry_toml(export_interval_seconds=2, bind_address=f"127.0.0.1:{port}")
    m = start_mount(s3_mount_args(bucket, mountpoint, impl, s3_server.endpoint, tel), env)
    m.wait_ready(30)
    with Prometheus(f"127.0.0.1:{port}") as prom:
        # round 1: the series appear; round 2 (another object, no cache hit):
        # the counters and buckets increase between two scrapes, so rate() > 0
        read_file(mountpoint / READ_FILE)
        prom.wait_for_query(f'obsctl_fs_read_bytes_total{{bucket="{bucket}"}}', timeout=20)
        time.sleep(2.5)
        read_file(mountpoint / READ_FILE_2)

        q = "sum by (bucket) (rate(obsctl_fs_read_bytes_total[5m]))"
        res = prom.wait_for_query(
            q, lambda r: any(s["metric"].get("bucket") == bucket and float(s["value"][1]) > 0 for s in r),
            timeout=20)
        assert any(s["metric"]["bucket"] == bucket for s in res)

        if impl == "rclone":
            q = 'histogram_quantile(0.95, rate(obsctl_fs_latency_ms_bucket{opcode="read"}[5m]))'
        else:
            # s3fs: no per-FUSE-op latency by default; the object-store request
            # latency histogram must be there instead
            prom.wait_for_query(f'obsctl_operation_duration_ms_bucket{{bucket="{bucket}"}}', timeout=20)
            q = "histogram_quantile(0.95, sum by (le) (rate(obsctl_operation_duration_ms_bucket[5m])))"
        res = prom.wait_for_query(
            q, lambda r: any(not math.isnan(v) for v in Prometheus.values(r)), timeout=20)
        assert res

        up = prom.wait_for_query(f'obsctl_mount_up{{bucket="{bucket}"}}', timeout=10)
        assert Prometheus.values(up) == [1.0], up
        errors = prom.query(f'obsctl_errors_total{{bucket="{bucket}"}}')
        assert all(v == 0 for v in Prometheus.values(errors)), f"unexpected errors: {errors}"
    assert m.stop(30) == 0, m.output()


def test_sigterm_unmounts_and_flushes(impl, bucket, s3_server, mountpoint, env, otlp,
                                      telemetry_toml, start_mount):
    """SIGTERM: the mount is gone within 1 s of the driver exiting, obsctl
    exits 0, and the final export carries the final counters.

    export_interval_seconds=30, so whatever the receiver holds after SIGTERM
    beyond the first export came from the final export on shutdown. What is
    provable: (a) read_bytes in `obsctl status --json`, once stable, is the
    final counter (nothing reads after it); (b) the last exported
    obsctl_fs_read_bytes equals it and is >= the bytes the test read; (c) that
    last export arrived after SIGTERM."""
    tel = telemetry_toml(export_interval_seconds=30)
    m = start_mount(s3_mount_args(bucket, mountpoint, impl, s3_server.endpoint, tel), env)
    m.wait_ready(30)
    n_read = read_file(mountpoint / READ_FILE) + read_file(mountpoint / "hello.txt")

    st = my_status(env, mountpoint)
    driver_pid = st.get("driver_pid")
    assert isinstance(driver_pid, int) and pid_alive(driver_pid), st

    # wait until the status counter has caught up with what was read and has
    # not moved for 4.5 s (the state file is rewritten every couple of seconds)
    samples: list[tuple[float, int]] = []

    def stable() -> bool:
        samples.append((time.monotonic(), int(my_status(env, mountpoint).get("read_bytes") or 0)))
        now, value = samples[-1]
        if value < n_read:
            return False
        same_since = now
        for t, v in reversed(samples):
            if v != value:
                break
            same_since = t
        return now - same_since >= 4.5

    wait_until(stable, 30, lambda: f"status read_bytes never stable >= {n_read}: {samples[-5:]}", interval=0.3)
    final = samples[-1][1]

    sigterm_at = m.signal()
    driver_gone = mount_gone = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (driver_gone is None or mount_gone is None):
        now = time.time()
        if driver_gone is None and not pid_alive(driver_pid):
            driver_gone = now
        if mount_gone is None and not is_mounted(mountpoint):
            mount_gone = now
        time.sleep(0.01)
    assert driver_gone is not None, f"driver {driver_pid} still running 30 s after SIGTERM\n{m.output()}"
    assert mount_gone is not None, f"{mountpoint} still mounted 30 s after SIGTERM\n{m.output()}"
    assert mount_gone - driver_gone <= 1.0, (
        f"mount gone {mount_gone - driver_gone:.2f}s after the driver exited")

    rc = m.wait(30)
    assert rc == 0, f"obsctl exited {rc} after SIGTERM\n{m.output()}"
    assert "unmounted" in m.stderr or "Unmounted" in m.stderr, m.output()
    assert not processes_mentioning(str(mountpoint))

    pts = otlp.points("obsctl_fs_read_bytes", bucket=bucket, impl=impl)
    assert pts, f"no obsctl_fs_read_bytes exported\n{otlp.summary()}"
    last = pts[-1]
    assert last.time >= sigterm_at, (
        f"last export at {last.time - sigterm_at:+.2f}s relative to SIGTERM: no final export\n{otlp.summary()}")
    assert last.value == final, f"last exported {last.value} != final status counter {final}"
    assert last.value >= n_read


def test_status_json_and_unmount(impl, bucket, s3_server, mountpoint, env, otlp,
                                 telemetry_toml, start_mount):
    """`obsctl status --json` shows the mount ready with its pids; `obsctl
    unmount MOUNTPOINT` ends it (obsctl exits 0, driver gone, nothing mounted)."""
    tel = telemetry_toml(export_interval_seconds=2)
    m = start_mount(s3_mount_args(bucket, mountpoint, impl, s3_server.endpoint, tel), env)
    m.wait_ready(30)
    n = read_file(mountpoint / "hello.txt")

    st = my_status(env, mountpoint)
    for key in ("mountpoint", "source", "bucket", "impl", "state", "pid", "driver_pid",
                "read_bytes", "write_bytes", "errors", "last_export"):
        assert key in st, f"status entry has no {key!r}: {sorted(st)}"
    assert st["state"] == "ready", st
    assert st["bucket"] == bucket and st["impl"] == impl, st
    assert st["source"] == f"s3://{bucket}", st
    assert st["pid"] == m.pid, st
    assert isinstance(st["driver_pid"], int) and pid_alive(st["driver_pid"]), st
    assert st["driver_pid"] in _descendants(m.pid), "driver_pid is not a child of the supervisor"
    wait_until(lambda: my_status(env, mountpoint)["read_bytes"] >= n, 15,
               "status read_bytes never counted the read")
    # last_export is filled once an export happened
    otlp.wait_for(lambda: otlp.requests("metrics"), 15)
    wait_until(lambda: my_status(env, mountpoint)["last_export"], 10,
               "status last_export stays empty after an export")

    driver_pid = st["driver_pid"]
    res = run_obsctl("unmount", str(mountpoint), env=env, timeout=60)
    assert res.returncode == 0, f"obsctl unmount exited {res.returncode}: {res.stderr}"
    assert not is_mounted(mountpoint)
    assert m.wait(20) == 0, m.output()
    assert not pid_alive(driver_pid)
    assert not processes_mentioning(str(mountpoint))
    assert [e for e in status_json(env) if e.get("state") == "ready"
            and os.path.realpath(e["mountpoint"]) == str(mountpoint.resolve())] == []


def test_unmount_of_unknown_mountpoint_fails(tmp_path, env):
    res = run_obsctl("unmount", str(tmp_path / "never-mounted"), env=env, timeout=30)
    assert res.returncode != 0
    assert res.stderr.strip(), "no message on stderr"
    assert "Traceback" not in res.stderr


def _descendants(pid: int) -> set[int]:
    from support.obsctl import children_of
    out, todo = set(), [pid]
    while todo:
        for c in children_of(todo.pop()):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def test_otel_endpoint_flag_without_config(bucket, s3_server, mountpoint, env, otlp, start_mount):
    """--otel-endpoint/--otel-protocol alone (no telemetry TOML) export too,
    with the default interval: the first export still comes within 15 s."""
    require_driver("rclone")
    args = s3_mount_args(bucket, mountpoint, "rclone", s3_server.endpoint)
    args += ["--otel-endpoint", otlp.http_endpoint, "--otel-protocol", "http/protobuf"]
    m = start_mount(args, env)
    ready = m.wait_ready(30)
    otlp.wait_for(lambda: otlp.latest("obsctl_mount_up", bucket=bucket, impl="rclone") == 1,
                  16, "obsctl_mount_up == 1 via --otel-endpoint")
    first = otlp.requests("metrics")[0]
    assert first.transport == "http" and first.time - ready <= 15.0
    assert m.stop(30) == 0, m.output()
    otlp.wait_for(lambda: otlp.spans("mount"), 5, 'a "mount" span via --otel-endpoint')
