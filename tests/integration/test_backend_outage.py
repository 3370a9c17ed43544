"""The S3 server goes away under a real rclone mount with an uncached read in flight (issue 17,
"Honest numbers when the backend is down"): the mount must not stay reported healthy while the
read waits. What obsctl reports and why: docs/operations.md, "Backend outage"."""

from __future__ import annotations

import subprocess
import time
import urllib.request

from support.net import free_port
from support.obsctl import require_driver, s3_mount_args, status_entry
from support.s3server import S3Server
from support.waiting import wait_until
from obsctl.collectors.fuse_conn import STALL_SECONDS


def scrape(port: int) -> dict[str, float]:
    """obsctl's series by name (first sample of each) from its Prometheus endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("obsctl_") and "{" in line:
            out.setdefault(line.split("{", 1)[0], float(line.rsplit(" ", 1)[1]))
    return out


def test_stalled_reads_with_the_server_down_are_not_healthy(mountpoint, env, telemetry_toml, start_mount):
    require_driver("rclone")
    server = S3Server().start()
    try:
        server.create_bucket("outage", {"hello.txt": b"hello\n", "big.bin": b"\1" * (8 << 20)})
        port = free_port()
        tel = telemetry_toml(export_interval_seconds=30, bind_address=f"127.0.0.1:{port}")
        m = start_mount(s3_mount_args("outage", mountpoint, "rclone", server.endpoint, tel), env)
        m.wait_ready(30)
        assert sorted(p.name for p in mountpoint.iterdir()) == ["big.bin", "hello.txt"]  # listing cached
        wait_until(lambda: scrape(port).get("obsctl_mount_up") == 1.0, 10, "obsctl_mount_up 1")
        server.stop()  # the backend is gone
        reader = subprocess.Popen(["cat", str(mountpoint / "big.bin")], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE)
        started = time.monotonic()
        try:
            entry = wait_until(lambda: (e := status_entry(env, mountpoint)) and e["health"] == "stalled" and e,
                               STALL_SECONDS + 20, lambda: f"health 'stalled'; now {status_entry(env, mountpoint)}")
            took = time.monotonic() - started
            assert reader.poll() is None, "the read ended: nothing stalled to detect"
            assert STALL_SECONDS - 1 <= took <= STALL_SECONDS + 8, took
            fuse = entry["driver_stats"]["fuse"]
            assert fuse["waiting"] >= 1 and fuse["stalled_seconds"] > STALL_SECONDS, fuse
            series = wait_until(lambda: (s := scrape(port)).get("obsctl_mount_up") == 0.0 and s, 5,
                                "obsctl_mount_up 0")
            stalled = [v for k, v in series.items() if k.startswith("obsctl_fuse_requests_stalled")]
            assert stalled and stalled[0] > STALL_SECONDS, series
            print(f"stalled after {took:.1f} s: {fuse}; reader still waiting")
        finally:
            reader.kill()
        assert m.stop(60) == 0, m.output()
    finally:
        server.stop()
