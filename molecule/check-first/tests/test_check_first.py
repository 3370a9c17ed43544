"""check-first: the whole playbook ran in check mode on a fresh host
(molecule `check`); it did not fail, and here nothing it would do was done."""

import pytest


@pytest.mark.parametrize("path", [
    "/opt/obsctl",
    "/opt/obsctl-dist",
    "/etc/obsctl",
    "/etc/systemd/system/obsctl-mount@.service",
    "/etc/systemd/system/obsctl-mount@.timer",
    "/etc/systemd/system/obsctl-mount-check@.service",
    "/mnt/check-rclone",
])
def test_nothing_was_created(host, path):
    assert not host.file(path).exists


@pytest.mark.parametrize("package", ["rclone", "s3fs", "python3-apt"])
def test_nothing_was_installed(host, package):
    assert not host.package(package).is_installed


def test_no_unit_and_no_mount(host):
    assert "obsctl" not in host.check_output("systemctl list-units --all --plain --no-legend 'obsctl*'")
    assert "fuse." not in host.check_output("cat /proc/self/mountinfo")
