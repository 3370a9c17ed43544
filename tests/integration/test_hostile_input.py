"""Hostile input against real components: refused driver options leave
nothing behind, and the Prometheus endpoint stays bounded under idle
half-open connections while scrapes are still answered."""

from __future__ import annotations

import os
import socket
import time

import pytest
import requests

from support.net import free_port
from support.obsctl import is_mounted, processes_mentioning, require_driver, run_obsctl, s3_mount_args

REFUSED = {
    "rclone": [("--rc-addr=0.0.0.0:5572", "beyond loopback"),
               ("--s3-sse-customer-key=c2VjcmV0LWtleS0zMi1ieXRlcy1sb25nLi4uLi4=", "RCLONE_S3_SSE_CUSTOMER_KEY"),
               ("--config=/etc/passwd", 'obsctl\'s --config ""')],
    "s3fs": [("passwd_file=/etc/passwd-s3fs", "credentials_from"), ("logfile=/var/log/s3fs-debug.log", "redacts")],
}


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


@pytest.mark.parametrize("impl_name,option,words", [(i, o, w) for i, cases in REFUSED.items() for o, w in cases])
def test_refused_option_mounts_nothing_and_names_the_option(impl_name, option, words, bucket, s3_server,
                                                            mountpoint, env):
    require_driver(impl_name)
    impl = impl_name
    # attached -oVALUE: the value may start with a dash
    args = s3_mount_args(bucket, mountpoint, impl, s3_server.endpoint) + [f"-o{option}"]
    res = run_obsctl("mount", *args, env=env, timeout=30)
    assert res.returncode == 2, (res.returncode, res.stderr)
    shown = option.split("=", 1)[0]
    assert shown in res.stderr and words in res.stderr, res.stderr
    assert option.split("=", 1)[1] not in res.stderr  # the value may be a secret
    assert "Traceback" not in res.stderr
    assert not is_mounted(mountpoint)
    assert not processes_mentioning(str(mountpoint))


def test_prometheus_endpoint_bounded_under_idle_half_open_connections(bucket, s3_server, mountpoint, env,
                                                                      telemetry_toml, start_mount):
    port = free_port()
    tel = telemetry_toml(export_interval_seconds=5, bind_address=f"127.0.0.1:{port}")
    m = start_mount(s3_mount_args(bucket, mountpoint, "rclone", s3_server.endpoint, tel), env)
    m.wait_ready(30)
    url = f"http://127.0.0.1:{port}/metrics"
    no_proxy = {"http": None, "https": None}
    deadline = time.monotonic() + 15  # the collectors attach just after ready
    while "obsctl_mount_up" not in requests.get(url, timeout=5, proxies=no_proxy).text:
        assert time.monotonic() < deadline, "obsctl_mount_up never appeared on the endpoint"
        time.sleep(0.2)
    time.sleep(1)
    before = _threads(m.pid)

    idle: list[socket.socket] = []
    try:
        for i in range(48):  # 48 > what a thread-per-connection server would survive unnoticed
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i % 2:
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # half a request, never finished
            idle.append(sock)
        time.sleep(1.0)
        during = _threads(m.pid)
        started = time.monotonic()
        text = requests.get(url, timeout=5, proxies=no_proxy).text
        scrape_seconds = time.monotonic() - started
    finally:
        for sock in idle:
            sock.close()
    assert "obsctl_mount_up" in text
    assert scrape_seconds < 2.0, scrape_seconds
    # the endpoint's threads are a fixed pool: idle connections add none
    assert during <= before + 1, (before, during)
    print(f"obsctl threads: {before} before, {during} with 48 idle connections; scrape {scrape_seconds:.3f} s")
    assert m.stop(30) == 0
    assert "Traceback" not in m.output()


def _environ(pid: int) -> bytes:
    with open(f"/proc/{pid}/environ", "rb") as fh:
        return fh.read()


@pytest.mark.parametrize("source", ["env", "stdin"])
def test_where_the_secret_really_is(source, bucket, s3_server, mountpoint, runtime_dir, start_mount):
    """docs/security.md: the driver's environment always holds the secret; the
    supervisor's /proc/PID/environ holds it too with credentials_from env
    (Linux keeps the initial environment), never with stdin."""
    from support.obsctl import children_of, obsctl_env

    secret = f"WhereIsIt{os.getpid()}x{source}abcdefghijklmnop"
    if source == "env":
        env = obsctl_env(runtime_dir, s3_server.access_key, secret)
        m = start_mount(s3_mount_args(bucket, mountpoint, "rclone", s3_server.endpoint), env)
    else:
        env = obsctl_env(runtime_dir)
        m = start_mount(s3_mount_args(bucket, mountpoint, "rclone", s3_server.endpoint)
                        + ["--credentials-from", "stdin"], env,
                        stdin_text=f"AWS_ACCESS_KEY_ID={s3_server.access_key}\nAWS_SECRET_ACCESS_KEY={secret}\n")
    m.wait_ready(30)
    driver = [p for p in children_of(m.pid) if b"rclone" in open(f"/proc/{p}/cmdline", "rb").read()][0]
    assert secret.encode() in _environ(driver)
    assert secret.encode() not in open(f"/proc/{driver}/cmdline", "rb").read()
    assert (secret.encode() in _environ(m.pid)) == (source == "env")
    assert m.stop(30) == 0


def test_unreachable_collector_logs_one_line_not_three_per_interval(bucket, s3_server, mountpoint, env, tmp_path,
                                                                    start_mount):
    """A real obsctl mount exporting every 1 s to a loopback port where nothing
    listens: after 8 intervals its stderr holds one export failure line with
    the reason, none of the exporter's per-attempt lines."""
    from support.net import closed_port
    from support.obsctl import write_telemetry_toml

    port = closed_port()
    tel = write_telemetry_toml(tmp_path / "telemetry.toml", metrics_endpoint=f"http://127.0.0.1:{port}",
                               export_interval_seconds=1)
    m = start_mount(s3_mount_args(bucket, mountpoint, "rclone", s3_server.endpoint, tel), env)
    m.wait_ready(30)
    time.sleep(8)
    assert m.stop(30) == 0
    stderr = m.stderr
    failed = [line for line in stderr.splitlines() if "metric export" in line and " failed: " in line]
    assert len(failed) == 1, stderr
    assert f"127.0.0.1:{port}" in failed[0] and "UNAVAILABLE" in failed[0], failed
    exporting = [line for line in stderr.splitlines() if "export" in line.lower()]
    assert exporting == failed, f"other export lines: {exporting}"
    assert "Traceback" not in stderr
