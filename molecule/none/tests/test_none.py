"""none: mode none; the mounts work, nothing is exported, nothing listens."""

import json
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "_shared"))
from obsctl_checks import (  # noqa: E402
    assert_no_secret, is_loopback, listeners, mount_fstype, otlp_state,
)

MOUNTS = [
    ("none-rclone", "/mnt/none-rclone", "fuse.rclone", "molecule-none-rclone"),
    ("none-s3fs", "/mnt/none-s3fs", "fuse.s3fs", "molecule-none-s3fs"),
]


@pytest.mark.parametrize("name,mountpoint,fstype,bucket", MOUNTS)
def test_mount_works(host, name, mountpoint, fstype, bucket):
    assert host.service(f"obsctl-mount@{name}.service").is_running
    assert mount_fstype(host, mountpoint) == fstype
    assert "hello.txt" in host.check_output(f"ls -1 {mountpoint}").split()
    assert host.check_output(f"cat {mountpoint}/hello.txt").startswith("hello from")


def test_telemetry_file_says_none(host):
    out = host.check_output("/opt/obsctl/bin/obsctl config check /etc/obsctl/telemetry.toml")
    assert "mode none" in out
    content = host.file("/etc/obsctl/telemetry.toml").content_string
    assert "otlp_endpoint" not in content and "bind_address" not in content


def _ours(series):
    return [s for s in series
            if s["resource"].get("deployment.environment") == "molecule-none"
            or s["attributes"].get("bucket", "").startswith("molecule-none")]


def test_nothing_is_exported(host):
    for _name, mountpoint, _impl, _bucket in MOUNTS:
        host.check_output(f"cat {mountpoint}/hello.txt")
    # Well past the first export (about 1 s after ready) and two intervals (2 s).
    time.sleep(8)
    assert _ours(otlp_state()["series"]) == []


def test_nothing_listens(host):
    found = listeners(host)
    # obsctl itself (the Prometheus endpoint) and s3fs open no socket at all;
    # rclone's remote-control API, from which obsctl reads the driver's
    # counters, is bound to loopback only.
    ours = [entry for entry in found if entry[1] in ("obsctl", "python3", "s3fs", "rclone")]
    assert not [e for e in ours if e[1] in ("obsctl", "python3", "s3fs")], ours
    assert all(is_loopback(e[3]) for e in ours), ours


def test_no_secret_in_files_argv_or_journal(host):
    assert_no_secret(host)


def test_obsctl_systemd_install_and_uninstall(host):
    """`obsctl systemd install` (hosts without Ansible) next to the role's units:
    credentials from stdin are encrypted, the mount comes up, uninstall removes it.
    Runs after the secret scan: its own (different) key is on this test's command line."""
    endpoint = os.environ["OBSCTL_S3_ENDPOINT"]
    command = (
        "printf 'AWS_ACCESS_KEY_ID=cli-key\\nAWS_SECRET_ACCESS_KEY=cli-secret\\n' | "
        "/opt/obsctl/bin/obsctl systemd install --name cli-data --impl rclone "
        f"--endpoint {endpoint} --region us-east-1 --credentials-from stdin "
        "s3://molecule-none-rclone /mnt/cli-data")
    install = host.run(command)
    assert install.rc == 0, install.stderr + install.stdout
    # the same engine as the fuse_mount module: a second install changes nothing
    twice = host.run(command)
    assert twice.rc == 0, twice.stderr + twice.stdout
    assert "obsctl: restart" not in twice.stdout and "obsctl: write" not in twice.stdout, twice.stdout
    listed = json.loads(host.check_output("/opt/obsctl/bin/obsctl status --all --json"))
    entry = next(m for m in listed if m["mountpoint"] == "/mnt/cli-data")
    assert (entry["name"], entry["health"], entry["unit"], entry["driver"]) == (
        "cli-data", "ok", "obsctl-mount@cli-data.service", "rclone"), entry
    assert mount_fstype(host, "/mnt/cli-data") == "fuse.rclone"
    assert "hello.txt" in host.check_output("ls -1 /mnt/cli-data").split()
    assert host.file("/etc/obsctl/mounts/cli-data.toml").mode == 0o640
    assert host.file("/etc/obsctl/credentials/cli-data.cred").mode == 0o600
    assert "cli-secret" not in host.file("/etc/obsctl/mounts/cli-data.toml").content_string
    assert host.run("systemctl is-enabled obsctl-mount@cli-data.timer").stdout.strip() == "enabled"
    # the role's unit template was kept (not overwritten by the CLI)
    assert "Managed by obsctl systemd install" not in host.file(
        "/etc/systemd/system/obsctl-mount@.service").content_string
    again = host.run("/opt/obsctl/bin/obsctl systemd uninstall --name cli-data")
    assert again.rc == 0, again.stderr
    assert mount_fstype(host, "/mnt/cli-data") is None
    for path in ("/etc/obsctl/mounts/cli-data.toml", "/etc/obsctl/credentials/cli-data.cred",
                 "/etc/systemd/system/obsctl-mount@cli-data.service.d/credentials.conf"):
        assert not host.file(path).exists, path
    assert host.run("systemctl is-enabled obsctl-mount@cli-data.service").stdout.strip() != "enabled"
