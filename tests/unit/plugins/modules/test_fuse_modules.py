"""The two modules end to end through AnsibleModule (argument spec, results)."""

import json
import os

import pytest

pytest.importorskip("ansible")

from ansible.module_utils.testing import patch_module_args  # noqa: E402

from ansible_collections.obsctl.observability.plugins.modules import fuse_mount, fuse_mount_info  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "module_utils", "fixtures")


def call(module, args, capsys):
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            module.main()
    return json.loads(capsys.readouterr().out)


def test_info_over_fixture(capsys):
    result = call(fuse_mount_info, {"mountinfo_path": os.path.join(FIXTURES, "mixed.txt"), "stat_timeout": 1,
                                    "ignore_missing": True}, capsys)
    assert result["changed"] is False
    assert [m["mountpoint"] for m in result["mounts"]] == [
        "/tmp/cap/mnt/rclone", "/tmp/cap/mnt/s3fs", "/tmp/cap/mnt/bind fs", "/tmp/cap/mnt/stale"]


def test_info_bad_table(tmp_path, capsys):
    bad = tmp_path / "mountinfo"
    bad.write_text("not a mount table\n")
    result = call(fuse_mount_info, {"mountinfo_path": str(bad)}, capsys)
    assert result["failed"] is True
    assert "cannot read the mount table" in result["msg"]


def test_mount_requires_src_and_path(capsys):
    result = call(fuse_mount, {"name": "data", "state": "mounted"}, capsys)
    assert result["failed"] is True
    assert "src, path" in result["msg"]


@pytest.mark.skipif(os.path.isdir("/run/systemd/system"), reason="this host runs systemd")
def test_mount_without_systemd(capsys):
    secret = "do-not-print-this-secret-0123456789"
    result = call(fuse_mount, {"name": "data", "src": "s3://b", "path": "/mnt/x",
                               "credentials": {"access_key_id": "AKIAX", "secret_access_key": secret}}, capsys)
    assert result["failed"] is True
    assert "systemd is not running" in result["msg"]
    assert secret not in json.dumps(result)


def test_credentials_are_no_log():
    spec = fuse_mount.argument_spec()
    assert spec["credentials"]["no_log"] is True
    for option in spec["credentials"]["options"].values():
        assert option["no_log"] is True
