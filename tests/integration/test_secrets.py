"""No credential in clear text anywhere a local user or a log could see it.

A unique secret is planted in AWS_SECRET_ACCESS_KEY (the plain moto server
accepts any key). While mounted and after SIGTERM it must appear in no
/proc/*/cmdline, in no file written during the test under the runtime dir,
the test's tmp dirs, /tmp, /var/tmp, /dev/shm, /run or the drivers' config and
cache dirs, in no line of obsctl's stdout/stderr, in `obsctl status --json`,
in the telemetry sent over OTLP, or on the Prometheus endpoint.
(/proc/PID/environ of the driver holds it by design: DESIGN section 3.)
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import requests

from support.net import free_port
from support.obsctl import (
    find_secret, is_mounted, obsctl_env, run_obsctl, s3_mount_args,
)


def scan_roots(tmp_path: Path, runtime_dir: Path) -> list[Path]:
    home = Path(os.environ.get("HOME", "/root"))
    roots = [runtime_dir, tmp_path, Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"),
             Path("/run"), home / ".config" / "rclone", home / ".cache" / "rclone",
             home / ".passwd-s3fs", Path("/etc/passwd-s3fs")]
    # /tmp and tmp_path overlap on most hosts; find_secret de-duplicates files
    return roots


def test_secret_never_leaks(impl, bucket, s3_server, tmp_path, mountpoint, runtime_dir,
                            otlp, telemetry_toml, start_mount, test_started_at):
    secret = f"oBsCtLsEcReT{uuid.uuid4().hex}+/Zz"
    env = obsctl_env(runtime_dir, s3_server.access_key, secret)
    prom_port = free_port()
    tel = telemetry_toml(export_interval_seconds=1, bind_address=f"127.0.0.1:{prom_port}")
    m = start_mount(s3_mount_args(bucket, mountpoint, impl, s3_server.endpoint, tel), env)
    m.wait_ready(30)

    # exercise the mount so that logs, state files and metrics get written
    assert "hello.txt" in os.listdir(mountpoint)
    (mountpoint / "data-a.bin").read_bytes()
    with open(mountpoint / "secret-test.txt", "wb") as fh:
        fh.write(b"x" * 4096)
    otlp.wait_for(lambda: otlp.latest("obsctl_mount_up", bucket=bucket, impl=impl) == 1, 15)

    leaks: list[str] = []
    leaks += [f"while mounted: {h}" for h in
              find_secret(secret, since=test_started_at, roots=scan_roots(tmp_path, runtime_dir))]
    status = run_obsctl("status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    if secret in status.stdout or secret in status.stderr:
        leaks.append("obsctl status --json output")
    metrics_text = requests.get(f"http://127.0.0.1:{prom_port}/metrics", timeout=5,
                                proxies={"http": None, "https": None}).text
    if secret in metrics_text:
        leaks.append(f"Prometheus endpoint 127.0.0.1:{prom_port}/metrics")

    rc = m.stop(30)
    assert rc == 0, "obsctl did not exit 0 after SIGTERM (output withheld: may hold the secret)"
    assert not is_mounted(mountpoint)
    time.sleep(0.2)

    leaks += [f"after exit: {h}" for h in
              find_secret(secret, since=test_started_at, roots=scan_roots(tmp_path, runtime_dir))]
    for n, line in enumerate(m.stdout_lines):
        if secret in line.text:
            leaks.append(f"obsctl stdout line {n + 1}")
    for n, line in enumerate(m.stderr_lines):
        if secret in line.text:
            leaks.append(f"obsctl stderr line {n + 1}")
    for req in otlp.requests():
        if secret.encode() in req.message.SerializeToString():
            leaks.append(f"OTLP {req.signal} export over {req.transport}")
            break
    assert not leaks, f"the planted secret was found in: {leaks}"
    assert otlp.requests("metrics"), "no telemetry arrived: the scan above proves little"
