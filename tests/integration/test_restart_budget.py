"""The foreground restart budget against real drivers and moto (issue 17).

* wrong credentials (moto enforcing SigV4, a wrong secret): the mount fails
  at once with exit status 3 (permanent), one driver start, no retry;
* a bucket deleted under a running mount, then the driver killed: obsctl
  restarts it once, the restart fails for a permanent reason (no such
  bucket), obsctl stops with exit status 3 instead of spending its budget,
  and its last ``obsctl_mount_up 0`` stays published for the host's scrape
  endpoint (what the ObsctlMountDown alert keys on).

The systemd side (Restart=, StartLimitBurst=, RestartPreventExitStatus=, the
timer) is checked in tests/unit/test_restart_policy.py.
"""

from __future__ import annotations

import os
import signal
import time

from prometheus_client.parser import text_string_to_metric_families

from obsctl import scrape
from support.obsctl import obsctl_env, s3_mount_args, status_entry, write_telemetry_toml
from support.net import free_port
from support.waiting import wait_until

PERMANENT = 3


def test_wrong_credentials_fail_once_with_exit_3(impl, s3_auth_server, runtime_dir, mountpoint, start_mount):
    bucket = "budget-auth"
    if bucket not in [b["Name"] for b in s3_auth_server.client().list_buckets()["Buckets"]]:
        s3_auth_server.create_bucket(bucket, {"x.txt": b"x"})
    env = obsctl_env(runtime_dir, s3_auth_server.access_key, "not-the-secret")
    started = time.monotonic()
    m = start_mount(s3_mount_args(bucket, mountpoint, impl, s3_auth_server.endpoint, ready_timeout=30), env)
    rc = m.wait(60)
    assert rc == PERMANENT, f"exit {rc}\n{m.output()}"
    assert time.monotonic() - started < 30, "a refused key must not be retried"
    assert "permanent error" in m.stderr and m.stderr.count("mount failed") == 1, m.output()
    assert "SignatureDoesNotMatch" in m.stderr or "403" in m.stderr, m.output()


def test_deleted_bucket_stops_after_one_restart_with_mount_down_published(
        impl, s3_server, runtime_dir, mountpoint, tmp_path, start_mount):
    bucket = f"budget-gone-{impl}"
    s3_server.create_bucket(bucket, {"x.txt": b"x"})
    env = obsctl_env(runtime_dir, s3_server.access_key, s3_server.secret_key)
    tel = write_telemetry_toml(tmp_path / "telemetry.toml", mode="remote",
                               bind_address=f"127.0.0.1:{free_port()}")
    m = start_mount(s3_mount_args(bucket, mountpoint, impl, s3_server.endpoint, tel), env)
    m.wait_ready(30)
    driver_pid = status_entry(env, mountpoint)["driver_pid"]
    client = s3_server.client()
    client.delete_object(Bucket=bucket, Key="x.txt")
    client.delete_bucket(Bucket=bucket)
    os.kill(driver_pid, signal.SIGKILL)
    rc = m.wait(90)
    assert rc == PERMANENT, f"exit {rc}\n{m.output()}"
    assert m.stderr.count("failed:") >= 1 and "restart 2 of" not in m.stderr, m.output()
    # rclone's check: "bucket or prefix ... does not exist"; s3fs's: "bucket or key not found"
    assert "permanent error" in m.stderr, m.output()
    assert "does not exist" in m.stderr or "bucket or key not found" in m.stderr, m.output()
    # the last word stays published: obsctl_mount_up 0 for this mountpoint
    path = scrape.publish_path(str(runtime_dir), str(mountpoint))
    text = wait_until(lambda: os.path.exists(path) and open(path, encoding="utf-8").read(), 5, f"no {path}")
    assert "failed=1" in text.splitlines()[0]
    up = [s.value for f in text_string_to_metric_families(text) for s in f.samples
          if s.name == "obsctl_mount_up" and s.labels.get("mountpoint") == str(mountpoint)]
    assert up == [0.0], text
    assert status_entry(env, mountpoint) is None  # nothing runs it
