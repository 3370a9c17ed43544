"""The two modules end to end through AnsibleModule, driving the real obsctl program
(the venv's ``obsctl``: ``obsctl systemd apply --json`` / ``obsctl status --all --json``)."""

import json
import os
import sys

import pytest

pytest.importorskip("ansible")

from ansible.module_utils.testing import patch_module_args  # noqa: E402

from ansible_collections.obsctl.observability.plugins.modules import fuse_mount, fuse_mount_info  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "fixtures", "mountinfo")
#: The obsctl program of this test environment (the obsctl role puts it in /opt/obsctl/bin).
OBSCTL = os.path.join(os.path.dirname(sys.executable), "obsctl")


def call(module, args, capsys, check_mode=False, obsctl=OBSCTL):
    """The module's result; its warnings as ``_warned`` (in the result, or on stderr once
    Ansible's controller display is loaded in this process by another test)."""
    args = dict(args, obsctl_path=obsctl)
    if check_mode:
        args["_ansible_check_mode"] = True
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            module.main()
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    result["_warned"] = json.dumps(result.get("warnings", [])) + captured.err
    return result


def test_info_over_fixture(capsys):
    result = call(fuse_mount_info, {"mountinfo_path": os.path.join(FIXTURES, "capture_mixed.txt"), "stat_timeout": 1,
                                    "ignore_missing": True}, capsys)
    assert result["changed"] is False
    assert [m["mountpoint"] for m in result["mounts"]] == [
        "/tmp/cap/mnt/rclone", "/tmp/cap/mnt/s3fs", "/tmp/cap/mnt/bind fs", "/tmp/cap/mnt/stale"]


def test_info_missing_table(tmp_path, capsys):
    result = call(fuse_mount_info, {"mountinfo_path": str(tmp_path / "nothing")}, capsys)
    assert result["failed"] is True
    assert "cannot read the mount table" in result["msg"]


@pytest.mark.parametrize("args,needle", [
    ({"src": "s3://My_Bucket"}, "'My_Bucket' is not a valid S3 bucket name"),
    ({"impl": "geesefs3"}, "impl 'geesefs3' is not a driver obsctl knows: use one of rclone, s3fs, goofys"),
    ({"impl": "rclone", "command": ["x"]}, "a command after -- is only for --impl generic"),
])
def test_check_mode_refuses_what_obsctl_refuses(capsys, args, needle):
    """The module has no rules of its own: obsctl's message, in check mode too."""
    result = call(fuse_mount, dict({"name": "data", "src": "s3://bucket", "path": "/mnt/x"}, **args),
                  capsys, check_mode=True)
    assert result["failed"] is True
    assert needle in result["msg"]


def test_check_mode_without_obsctl_predicts_a_change(tmp_path, capsys):
    missing = str(tmp_path / "no-obsctl")
    result = call(fuse_mount, {"name": "data", "src": "s3://bucket", "path": "/mnt/x"}, capsys,
                  check_mode=True, obsctl=missing)
    assert result["changed"] is True and not result.get("failed")
    warned = result["_warned"]
    assert "is not an executable file" in warned and "check mode predicts a change" in warned, warned
    result = call(fuse_mount, {"name": "data", "src": "s3://bucket", "path": "/mnt/x"}, capsys, obsctl=missing)
    assert result["failed"] is True and "obsctl_path" in result["msg"]


def test_mount_requires_src_and_path(capsys):
    result = call(fuse_mount, {"name": "data", "state": "mounted"}, capsys)
    assert result["failed"] is True
    assert "src, path" in result["msg"]


@pytest.mark.skipif(os.path.isdir("/run/systemd/system"), reason="this host runs systemd")
def test_mount_without_systemd(capsys):
    secret = "do-not-print-this-secret-0123456789"
    result = call(fuse_mount, {"name": "data", "src": "s3://bucket", "path": "/mnt/x",
                               "credentials": {"access_key_id": "AKIAX", "secret_access_key": secret}}, capsys)
    assert result["failed"] is True
    assert "systemd is not running" in result["msg"]
    assert secret not in json.dumps(result)


def test_credentials_are_no_log():
    spec = fuse_mount.argument_spec()
    assert spec["credentials"]["no_log"] is True
    for option in spec["credentials"]["options"].values():
        assert option["no_log"] is True


REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", ".."))
#: Options of the module that the fuse_mounts role sets from its own variables, not per entry.
ROLE_LEVEL_OPTIONS = {"health_timer", "service_manager", "obsctl_path"}


def _yaml(relative):
    yaml = pytest.importorskip("yaml")
    with open(os.path.join(REPO, relative), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def test_option_lists_agree_module_role_engine():
    """One list of mount options: every option of the module is documented and reaches the engine's
    request (obsctl's rules), and every key of a fuse_mounts entry is a module option that the
    role's task passes on, with the same credential keys everywhere."""
    yaml = pytest.importorskip("yaml")
    from obsctl import engine

    module_options = set(fuse_mount.argument_spec())
    doc = yaml.safe_load(fuse_mount.DOCUMENTATION)["options"]
    assert set(doc) == module_options
    assert module_options - {"obsctl_path"} <= set(engine.Request.__struct_fields__), (
        module_options - set(engine.Request.__struct_fields__))
    entry = _yaml("roles/fuse_mounts/meta/argument_specs.yml")["argument_specs"]["main"]["options"][
        "fuse_mounts_list"]["options"]
    assert set(entry) == module_options - ROLE_LEVEL_OPTIONS, set(entry) ^ (module_options - ROLE_LEVEL_OPTIONS)
    task = _yaml("roles/fuse_mounts/tasks/configure.yml")[0]["obsctl.observability.fuse_mount"]
    assert set(task) == module_options, set(task) ^ module_options
    credentials = set(engine.Credentials.__struct_fields__)
    assert set(doc["credentials"]["suboptions"]) == credentials
    assert set(fuse_mount.argument_spec()["credentials"]["options"]) == credentials
    assert set(entry["credentials"]["options"]) == credentials
    assert all(option.get("no_log") for option in entry["credentials"]["options"].values())


@pytest.mark.parametrize("impl, src, credentials", [
    ("juicefs", "sqlite3:///var/lib/obsctl-test/vol.db", {"variables": {"META_PASSWORD": "meta-secret-41c9d07e"}}),
    ("rclone", "s3://bucket", {"access_key_id": "AKIAX", "secret_access_key": "s3-secret-5be18a2f"}),
])
def test_credentials_of_any_shape_pass_through_check_mode(tmp_path, capsys, impl, src, credentials):
    """The module takes the driver's credential shape (the S3 pair, or juicefs's META_PASSWORD in
    variables; suboptions left out are not sent as null) and obsctl accepts it; no value comes back,
    diff included. (service_manager none: this host has no systemd; check mode writes nothing.)"""
    result = call(fuse_mount, {"name": "shape-%s" % impl, "src": src, "path": str(tmp_path / "mnt"), "impl": impl,
                               "credentials": credentials, "service_manager": "none", "_ansible_diff": True},
                  capsys, check_mode=True)
    assert not result.get("failed"), result
    assert result["changed"] is True and result["diff"], result
    for value in list(credentials.get("variables", {}).values()) + [v for v in credentials.values() if isinstance(v, str)]:
        if value != "AKIAX":
            assert value not in json.dumps(result)
