"""persistence: the mounts come back without Ansible."""

import os
import subprocess
import sys
import time


sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "_shared"))
from obsctl_checks import mount_fstype  # noqa: E402

CONTAINER = "obsctl-molecule-persistence"
MOUNTS = [
    ("persist-rclone", "/mnt/persist-rclone", "fuse.rclone"),
    ("persist-s3fs", "/mnt/persist-s3fs", "fuse.s3fs"),
]


def _wait_mounted(host, timeout=90):
    deadline = time.monotonic() + timeout
    while True:
        state = {m: mount_fstype(host, m) for _name, m, _fstype in MOUNTS}
        if all(state[m] == t for _name, m, t in MOUNTS):
            return
        if time.monotonic() > deadline:
            units = host.run("systemctl list-units --all --plain --no-legend 'obsctl*'").stdout
            raise AssertionError(f"mounts not back within {timeout} s: {state}\n{units}")
        time.sleep(1)


def _listed(host):
    for _name, mountpoint, _fstype in MOUNTS:
        assert "hello.txt" in host.check_output(f"ls -1 {mountpoint}").split()


def test_mounted_after_converge(host):
    _wait_mounted(host)
    _listed(host)


def test_restart_every_unit(host):
    host.check_output("systemctl restart 'obsctl-mount@*.service'")
    _wait_mounted(host)
    _listed(host)


def test_restart_the_container(host):
    subprocess.run(["docker", "restart", "-t", "60", CONTAINER], check=True, capture_output=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = host.run("systemctl is-system-running").stdout.strip()
        if state in ("running", "degraded"):
            break
        time.sleep(1)
    _wait_mounted(host)
    _listed(host)
    for name, _mountpoint, _fstype in MOUNTS:
        assert host.service(f"obsctl-mount@{name}.service").is_running
        assert host.run(f"systemctl is-active obsctl-mount@{name}.timer").stdout.strip() == "active"


def test_health_check_remounts_a_hung_mount(host):
    name, mountpoint, fstype = MOUNTS[0]
    unit = f"obsctl-mount@{name}.service"
    rclone = host.check_output(f"pgrep -f '^rclone mount .* {mountpoint} '").split()
    assert rclone, f"no rclone process for {mountpoint}"
    before = host.check_output(f"systemctl show -p MainPID --value {unit}")
    host.check_output(f"kill -STOP {rclone[0]}")  # the driver hangs: the mount stops answering
    run = host.run(f"systemctl start obsctl-mount-check@{name}.service")
    log = host.run(f"journalctl -u obsctl-mount-check@{name}.service -o cat --no-pager").stdout
    assert run.rc == 0, log
    assert "remounting" in log and "mounted again" in log, log
    assert host.check_output(f"systemctl show -p MainPID --value {unit}") != before
    assert mount_fstype(host, mountpoint) == fstype
    assert "hello.txt" in host.check_output(f"ls -1 {mountpoint}").split()
