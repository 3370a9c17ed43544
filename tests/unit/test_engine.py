"""The desired-state engine (obsctl.engine) against a fake host (engine_fake_system):
what the fuse_mount module, ``obsctl systemd install`` and install.sh all run.

For every state, the six steps of the issue: check, apply, idempotent check,
idempotent apply, changed check, changed apply. Then the special cases:
credentials compared by decryption, stale mount repair, rollback of a failed
start, absent leaving nothing behind, diff redaction, check mode acting on
nothing.
"""

import os
import stat

import pytest

import msgspec

from obsctl import engine
from obsctl.config import ConfigError
from engine_fake_system import FakeSystem

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
SECRET2 = "another-secret-value-0123456789abcdefgh"


@pytest.fixture
def host(tmp_path):
    return FakeSystem(tmp_path / "root")


def params(tmp_path, **overrides):
    base = dict(
        name="data",
        src="s3://bucket/prefix",
        path=str(tmp_path / "mnt" / "data"),
        impl="rclone",
        endpoint="http://127.0.0.1:9000",
        region="us-east-1",
        profile=None,
        options=[],
        cache_mode=None,
        credentials={"access_key_id": "AKIAEXAMPLE0001", "secret_access_key": SECRET, "session_token": None},
        read_only=False,
        allow_other=False,
        ready_timeout=30,
        telemetry_config=None,
        state="mounted",
    )
    base.update(overrides)
    return base


def make(host, p, check=False):
    req = msgspec.convert({k: v for k, v in p.items() if v is not None}, engine.Request)
    return engine.Engine(req, run=host, check_mode=check, root=host.root, mountinfo_path=host.mountinfo,
                         sleep=lambda _s: None, stat_fn=host.stat, settle_seconds=0)


def run(host, p, check=False):
    eng = make(host, p, check)
    return eng.apply(), eng


def snapshot(host):
    """Every file under root/etc with its bytes and mode, plus the live state."""
    files = {}
    for dirpath, _dirs, names in os.walk(os.path.join(host.root, "etc")):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as handle:
                files[path] = (handle.read(), stat.S_IMODE(os.stat(path).st_mode))
    default = {"enabled": False, "active": "inactive", "sub": "dead"}
    units = {k: dict(v) for k, v in host.units.items() if v != default}
    return files, units, dict(host.mounts), set(host.dead)


def layout(host):
    return engine.Layout("data", root=host.root)


# -- six steps per state ----------------------------------------------------


def six_steps(host, first, second, expect_changed_first=True):
    """check, apply, idempotent check, idempotent apply, changed check, changed apply."""
    before = snapshot(host)
    result = run(host, first, check=True)[0]
    assert result["changed"] is expect_changed_first
    assert snapshot(host) == before, "check mode acted"
    result = run(host, first)[0]
    assert result["changed"] is expect_changed_first
    result = run(host, first, check=True)[0]
    assert result["changed"] is False, result["actions"]
    before = snapshot(host)
    result = run(host, first)[0]
    assert result["changed"] is False, result["actions"]
    assert snapshot(host) == before
    before = snapshot(host)
    result = run(host, second, check=True)[0]
    assert result["changed"] is True
    assert snapshot(host) == before, "check mode acted"
    checked_actions = result["actions"]
    result = run(host, second)[0]
    assert result["changed"] is True
    assert result["actions"] == checked_actions, "check mode predicted other actions"
    return result


def test_mounted_six_steps(host, tmp_path):
    result = six_steps(host, params(tmp_path), params(tmp_path, read_only=True))
    assert result["mount"]["health"] == "ok"
    assert result["unit_state"] == {"active_state": "active", "sub_state": "running", "enabled": True}
    assert "restart obsctl-mount@data.service" in result["actions"]
    with open(layout(host).spec) as handle:
        assert "read_only = true" in handle.read()


def test_present_six_steps(host, tmp_path):
    p = params(tmp_path, state="present")
    result = six_steps(host, p, params(tmp_path, state="present", region="eu-west-1"))
    assert host.unit("data")["enabled"] is True
    assert host.unit("data")["active"] == "inactive", "present must not start the mount"
    assert result["mount"]["health"] == "missing"
    assert not host.commands("systemctl", "start")


def test_unmounted_six_steps(host, tmp_path):
    run(host, params(tmp_path))
    other = params(tmp_path, name="other", path=str(tmp_path / "mnt" / "other"))
    run(host, other)
    result = six_steps(host, params(tmp_path, state="unmounted"), dict(other, state="unmounted"))
    assert host.mounts == {}
    assert host.unit("data")["enabled"] is True, "unmounted keeps the enablement"
    assert os.path.exists(layout(host).spec), "unmounted keeps the spec"
    assert result["unit_state"]["active_state"] == "inactive"


def test_absent_six_steps(host, tmp_path):
    run(host, params(tmp_path))
    other = params(tmp_path, name="other", path=str(tmp_path / "mnt" / "other"))
    run(host, other)
    six_steps(host, params(tmp_path, state="absent", src=None, path=None), dict(other, state="absent"))
    assert host.mounts == {}
    assert not os.listdir(os.path.join(host.root, "etc/obsctl/mounts"))
    assert not os.listdir(os.path.join(host.root, "etc/obsctl/credentials"))
    assert not os.listdir(os.path.join(host.root, "etc/systemd/system"))
    assert not any(unit["enabled"] for unit in host.units.values())


def test_remounted_always_changes(host, tmp_path):
    p = params(tmp_path, state="remounted")
    for check in (True, False, True, False):
        result = run(host, p, check=check)[0]
        assert result["changed"] is True
    assert result["mount"]["health"] == "ok"
    assert len(host.commands("systemctl", "restart")) == 1
    assert len(host.commands("systemctl", "start")) == 1


# -- credentials ------------------------------------------------------------------


def test_credentials_compared_by_decrypting(host, tmp_path):
    p = params(tmp_path)
    run(host, p)
    cred = layout(host).credential
    assert stat.S_IMODE(os.stat(cred).st_mode) == 0o600
    with open(cred, "rb") as handle:
        assert SECRET.encode() not in handle.read(), "clear text on disk"
    with open(layout(host).dropin) as handle:
        assert "LoadCredentialEncrypted=s3:/etc/obsctl/credentials/data.cred" in handle.read()
    encrypts = len(host.commands("systemd-creds", "encrypt"))
    result = run(host, p)[0]
    assert result["changed"] is False
    assert len(host.commands("systemd-creds", "encrypt")) == encrypts
    assert host.commands("systemd-creds", "decrypt")

    rotated = params(tmp_path, credentials={"access_key_id": "AKIAEXAMPLE0001", "secret_access_key": SECRET2})
    result = run(host, rotated)[0]
    assert result["changed"] is True
    assert result["actions"][0] == "encrypt credential /etc/obsctl/credentials/data.cred"
    assert "restart obsctl-mount@data.service" in result["actions"]


def test_no_secret_in_spec_or_result(host, tmp_path):
    p = params(tmp_path, credentials={"access_key_id": "AKIAEXAMPLE0001", "secret_access_key": SECRET,
                                      "session_token": "tok-" + SECRET2})
    result, manager = run(host, p)
    with open(layout(host).spec) as handle:
        spec = handle.read()
    for secret in (SECRET, SECRET2, "AKIAEXAMPLE0001"):
        assert secret not in spec
        assert secret not in repr(result)
        assert secret not in repr(manager.diff)
    for call in host.calls:
        assert not any(SECRET in arg for arg in call), "secret in a command line"
    assert 'credentials_from = "systemd"' in spec


def test_dropping_credentials_removes_them(host, tmp_path):
    run(host, params(tmp_path))
    result = run(host, params(tmp_path, credentials=None, profile="reader"))[0]
    assert result["changed"] is True
    assert not os.path.exists(layout(host).credential)
    assert not os.path.exists(layout(host).dropin.parent)
    assert "systemctl daemon-reload" in result["actions"]
    with open(layout(host).spec) as handle:
        assert 'credentials_from = "profile"' in handle.read()


def test_unreadable_credential_is_replaced(host, tmp_path):
    run(host, params(tmp_path))
    with open(layout(host).credential, "wb") as handle:
        handle.write(b"sealed with another host key")
    result = run(host, params(tmp_path))[0]
    assert result["changed"] is True
    assert "encrypt credential /etc/obsctl/credentials/data.cred" in result["actions"]


def test_diff_redacts_secrets(host, tmp_path):
    run(host, params(tmp_path))
    rotated = params(tmp_path, credentials={"access_key_id": "AKIAEXAMPLE0001", "secret_access_key": SECRET2},
                     read_only=True)
    manager = run(host, rotated, check=True)[1]
    config, cred, unit = manager.diff
    assert "read_only = false" in config["before"] and "read_only = true" in config["after"]
    assert cred["before"] == "AWS_ACCESS_KEY_ID=<redacted>\nAWS_SECRET_ACCESS_KEY=<redacted, old>\n"
    assert cred["after"] == "AWS_ACCESS_KEY_ID=<redacted>\nAWS_SECRET_ACCESS_KEY=<redacted, new>\n"
    assert unit["before_header"] == "obsctl-mount@data.service"


# -- live state -------------------------------------------------------------------


def test_stale_mount_is_repaired(host, tmp_path):
    p = params(tmp_path)
    run(host, p)
    host.kill_driver(p["path"])
    result = run(host, p, check=True)[0]
    assert result["changed"] is True
    assert result["mount"]["health"] == "stale"
    result = run(host, p)[0]
    assert result["changed"] is True
    assert result["actions"][0].startswith("lazy unmount of the stale mount at ")
    assert result["actions"][1] == "restart obsctl-mount@data.service"
    assert result["mount"]["health"] == "ok"
    assert host.commands("fusermount3", "-u", "-z", p["path"])
    result = run(host, p)[0]
    assert result["changed"] is False


def test_stale_mount_with_dead_unit_is_repaired(host, tmp_path):
    p = params(tmp_path)
    run(host, p)
    host.kill_driver(p["path"])
    host.unit("data").update(active="failed", sub="failed")
    result = run(host, p)[0]
    assert result["changed"] is True
    assert result["actions"][-1] == "start obsctl-mount@data.service"
    assert result["mount"]["health"] == "ok"


def test_unmounted_cleans_a_stale_mount(host, tmp_path):
    p = params(tmp_path)
    run(host, p)
    host.kill_driver(p["path"])
    result = run(host, params(tmp_path, state="unmounted", src=None, path=None))[0]
    assert result["changed"] is True
    assert host.mounts == {}


def test_foreign_mount_is_not_taken_over(host, tmp_path):
    p = params(tmp_path)
    os.makedirs(p["path"])
    host._mount(p["path"], "/srv/other")
    with pytest.raises(engine.EngineError) as err:
        run(host, p)
    assert "already mounted by something else" in err.value.msg


def test_failed_start_rolls_back(host, tmp_path):
    host.fail_start = True
    before = snapshot(host)
    with pytest.raises(engine.EngineError) as err:
        run(host, params(tmp_path))
    assert "rolled back" in err.value.msg
    assert "driver exited with status 1" in err.value.msg
    assert err.value.details["rolled_back"] is True
    files, units, mounts, dead = snapshot(host)
    assert files == before[0], "files of this run were not removed"
    assert "obsctl-mount@data.service" not in units, "unit left enabled or running"
    assert mounts == {}


def test_failed_change_restores_the_previous_mount(host, tmp_path):
    run(host, params(tmp_path))
    before = snapshot(host)
    host.fail_start = True
    with pytest.raises(engine.EngineError):
        run(host, params(tmp_path, read_only=True))
    host.fail_start = False
    files, units, mounts, _dead = snapshot(host)
    assert files == before[0]
    assert host.calls[-1] == ["systemctl", "restart", "obsctl-mount@data.service"] or \
        ["systemctl", "restart", "obsctl-mount@data.service"] in host.calls[-4:]


def test_template_missing(host, tmp_path):
    host.template_installed = False
    with pytest.raises(engine.EngineError) as err:
        run(host, params(tmp_path))
    assert "obsctl-mount@.service is not installed" in err.value.msg
    result = run(host, params(tmp_path), check=True)[0]
    assert result["changed"] is True
    assert any("is not installed" in w for w in result["warnings"])


def test_no_systemd(tmp_path):
    host = FakeSystem(tmp_path / "root")
    os.rmdir(os.path.join(host.root, "run/systemd/system"))
    with pytest.raises(engine.EngineError) as err:
        run(host, params(tmp_path))
    assert "systemd is not running" in err.value.msg


def test_modes_are_repaired(host, tmp_path):
    run(host, params(tmp_path))
    os.chmod(layout(host).spec, 0o644)
    result = run(host, params(tmp_path))[0]
    assert result["actions"] == ["chmod 640 /etc/obsctl/mounts/data.toml"]
    assert stat.S_IMODE(os.stat(layout(host).spec).st_mode) == 0o640
    assert not host.commands("systemctl", "restart")


@pytest.mark.parametrize("overrides,message", [
    (dict(name="../x"), "name '../x'"),
    (dict(name="a b"), "name 'a b'"),
    (dict(src="http://bucket"), "must look like s3://BUCKET"),
    (dict(src="s3://My_Bucket"), "'My_Bucket' is not a valid S3 bucket name"),
    (dict(impl="geesefs2"), "impl 'geesefs2' is not a driver obsctl knows"),
    (dict(path="relative"), "absolute path"),
    (dict(path="/"), "absolute path"),
    (dict(endpoint="127.0.0.1:9000"), "endpoint"),
    (dict(options=["--x\n--y"]), "control characters"),
    (dict(credentials={"access_key_id": "AK", "secret_access_key": "has space"}), "credentials.secret_access_key"),
    (dict(src=None), "missing: src"),
])
def test_validation(host, tmp_path, overrides, message):
    """Invalid input: obsctl mount's own rules, a clear message, no secret in it, nothing done."""
    for check in (True, False):
        with pytest.raises(ConfigError) as err:
            run(host, params(tmp_path, **overrides), check=check)
        assert message in str(err.value)
        assert "has space" not in str(err.value)
    assert host.mutating_calls() == []
    assert not os.path.exists(os.path.join(host.root, "etc"))


# -- the health-check timer ----------------------------------------------------------


def test_health_timer_follows_the_state(host, tmp_path):
    timer = "obsctl-mount@data.timer"
    result = run(host, params(tmp_path, health_timer=True))[0]
    assert {"enable " + timer, "start " + timer} <= set(result["actions"])
    assert host.timers[timer] == {"enabled": True, "active": "active", "sub": "waiting"}
    assert run(host, params(tmp_path, health_timer=True))[0]["changed"] is False
    result = run(host, params(tmp_path, health_timer=True, state="unmounted"), check=True)[0]
    assert {"stop " + timer, "disable " + timer} <= set(result["actions"])
    assert host.timers[timer]["active"] == "active", "check mode acted"
    run(host, params(tmp_path, health_timer=True, state="unmounted"))
    assert host.timers[timer] == {"enabled": False, "active": "inactive", "sub": "dead"}
    run(host, params(tmp_path, health_timer=True))
    run(host, params(tmp_path, state="absent"))
    assert host.timers[timer] == {"enabled": False, "active": "inactive", "sub": "dead"}


def test_health_timer_left_alone_when_not_asked(host, tmp_path):
    run(host, params(tmp_path))
    assert not any(c[1:] and c[-1].endswith(".timer") for c in host.calls), "timer touched without health_timer"


# -- allow_non_empty: refused before anything is written, written to the spec when asked ----------


@pytest.mark.parametrize("state", ["mounted", "present", "remounted"])
def test_non_empty_mountpoint_is_refused_before_anything_is_written(host, tmp_path, state):
    mountpoint = tmp_path / "mnt" / "data"
    mountpoint.mkdir(parents=True)
    (mountpoint / "keep.txt").write_text("x")
    for check in (True, False):
        with pytest.raises(ConfigError) as err:
            run(host, params(tmp_path, state=state), check=check)
        assert f"mountpoint {mountpoint} is not empty (it has 'keep.txt'" in str(err.value)
        assert "allow_non_empty: true" in str(err.value)
    assert host.mutating_calls() == []
    assert not os.path.exists(os.path.join(host.root, "etc"))


def test_allow_non_empty_is_written_and_default_specs_keep_their_bytes(host, tmp_path):
    mountpoint = tmp_path / "mnt" / "data"
    mountpoint.mkdir(parents=True)
    result = run(host, params(tmp_path))[0]
    assert result["mount"]["health"] == "ok"
    with open(layout(host).spec) as handle:
        text = handle.read()
    # obsctl's defaults are left out, so specs written before these keys existed do not change
    assert "allow_non_empty =" not in text and "stall_timeout_seconds =" not in text
    run(host, params(tmp_path, state="absent"))
    (mountpoint / "keep.txt").write_text("x")
    result = run(host, params(tmp_path, allow_non_empty=True))[0]
    assert result["mount"]["health"] == "ok"
    with open(layout(host).spec) as handle:
        assert "allow_non_empty = true" in handle.read()
    # the mount is up over the directory: a second run is idempotent (its content is the mount's)
    assert run(host, params(tmp_path, allow_non_empty=True))[0]["changed"] is False


def test_stall_timeout_reaches_the_spec_and_is_validated(host, tmp_path):
    run(host, params(tmp_path, stall_timeout=3))
    with open(layout(host).spec) as handle:
        assert "stall_timeout_seconds = 3\n" in handle.read()
    assert run(host, params(tmp_path, stall_timeout=3.0))[0]["changed"] is False
    for bad in (0, -1):
        with pytest.raises(ConfigError, match=f"stall_timeout_seconds {float(bad)!r}: expected a finite number"):
            run(host, params(tmp_path, stall_timeout=bad, state="present"), check=True)


# -- credentials of a driver whose shape is not AWS's (juicefs: META_PASSWORD in variables) --------

META = "meta-password-0f3a9c17d2e4"


def juicefs_params(tmp_path, meta=META, **overrides):
    return params(tmp_path, impl="juicefs", src=f"sqlite3://{tmp_path}/vol.db", endpoint=None, region=None,
                  credentials={"access_key_id": "AKIAEXAMPLE0001", "secret_access_key": SECRET,
                               "variables": {"META_PASSWORD": meta}}, **overrides)


def test_variables_are_stored_compared_and_redacted(host, tmp_path):
    p = juicefs_params(tmp_path)
    result, manager = run(host, p)
    assert result["changed"] is True and result["mount"]["health"] == "ok"
    # what obsctl mount reads back from $CREDENTIALS_DIRECTORY/s3: the whole shape
    stored = engine.decrypt_credential(host, layout(host).credential)
    assert stored == {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE0001", "AWS_SECRET_ACCESS_KEY": SECRET, "META_PASSWORD": META}
    with open(layout(host).credential, "rb") as handle:
        assert META.encode() not in handle.read(), "clear text on disk"
    for shown in (repr(result), repr(manager.diff), open(layout(host).spec).read()):
        assert META not in shown and SECRET not in shown
    assert all(META not in arg for call in host.calls for arg in call), "secret in a command line"
    assert run(host, p)[0]["changed"] is False  # compared by decrypting, variables included

    manager = run(host, juicefs_params(tmp_path, meta="rotated-" + META), check=True)[1]
    cred = manager.diff[1]
    assert "META_PASSWORD=<redacted, old>\n" in cred["before"] and "META_PASSWORD=<redacted, new>\n" in cred["after"]
    assert "AWS_SECRET_ACCESS_KEY=<redacted>\n" in cred["after"]
    assert META not in repr(manager.diff) and "rotated-" not in repr(manager.diff)


@pytest.mark.parametrize("impl, variables, message", [
    ("rclone", {"META_PASSWORD": META}, "variables META_PASSWORD: not for this driver"),
    ("juicefs", {"AWS_SECRET_ACCESS_KEY": META}, "variables AWS_SECRET_ACCESS_KEY: not for this driver"),
    ("juicefs", {"OTHER": META}, "variables OTHER: not for this driver (it takes META_PASSWORD"),
])
def test_variables_outside_the_drivers_shape_are_refused(host, tmp_path, impl, variables, message):
    p = juicefs_params(tmp_path) if impl == "juicefs" else params(tmp_path)
    p["credentials"] = dict(p["credentials"], variables=variables)
    with pytest.raises(ConfigError) as err:
        run(host, p, check=True)
    assert message in str(err.value) and META not in str(err.value)
    assert host.mutating_calls() == []
