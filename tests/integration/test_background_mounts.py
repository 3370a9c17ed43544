"""Hosts without systemd: the engine's ``service_manager: none`` (obsctl.background).

The same request and spec as a systemd host, ``obsctl mount --config SPEC``
started in the background, against real rclone / s3fs mounts of a real S3
server (moto) on loopback. The engine runs in a temporary root (spec under
ROOT/etc/obsctl/mounts, log under ROOT/var/log), through ``obsctl systemd
apply --json`` would (engine.apply on the decoded request, the module's JSON).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.obsctl import require_driver

SECRET = "bg-secret-5d1f0c9a77"
TOKEN = "bg-session-token-0b8e2f6c41"


def _obsctl() -> str:
    return str(Path(sys.executable).with_name("obsctl"))


@pytest.fixture
def bg(tmp_path, monkeypatch):
    """Run ``obsctl systemd apply --json`` with ``service_manager: none`` in a temporary root;
    teardown unmounts whatever is left."""
    root = tmp_path / "root"
    root.mkdir()
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    env = dict(os.environ, OBSCTL_RUNTIME_DIR=str(run_dir))
    env.pop("AWS_CA_BUNDLE", None)  # rclone 1.60 and plain http (ENVIRONMENT.md)
    mountpoints: list[str] = []

    def apply(request: dict, check: bool = False) -> tuple[int, dict]:
        code = ("import sys; from pathlib import Path; from obsctl import engine, systemd_units\n"
                "import argparse\n"
                "req = engine.decode_request(sys.stdin.buffer.read())\n"
                "import json\n"
                "try:\n"
                "    res = systemd_units.apply_request(req, check_mode=%r, root=Path(sys.argv[1]))\n"
                "    res.pop('diff', None); print(json.dumps(res)); sys.exit(0)\n"
                "except engine.EngineError as exc:\n"
                "    print(json.dumps({'failed': True, 'msg': exc.msg, **exc.details})); sys.exit(1)\n"
                "except engine.ConfigError as exc:\n"
                "    print(json.dumps({'failed': True, 'msg': str(exc), 'invalid': True})); sys.exit(2)\n") % check
        req = dict(request, service_manager="none")
        if req.get("path"):
            mountpoints.append(req["path"])
        proc = subprocess.run([sys.executable, "-c", code, str(root)], input=json.dumps(req), env=env,
                              capture_output=True, text=True, timeout=180, check=False)
        assert proc.stdout.strip(), proc.stderr
        return proc.returncode, json.loads(proc.stdout)

    apply.root = root
    apply.env = env
    yield apply
    for mp in set(mountpoints):
        subprocess.run([_obsctl(), "unmount", mp], env=env, capture_output=True, check=False, timeout=60)
        subprocess.run(["umount", "-l", mp], capture_output=True, check=False)


def _supervisor_pid(mountpoint: str, env: dict) -> int:
    out = subprocess.run([_obsctl(), "status", "--json"], env=env, capture_output=True, text=True,
                         check=True).stdout
    for state in json.loads(out):
        if state.get("mountpoint") == mountpoint:
            return int(state["pid"])
    raise AssertionError(f"no obsctl mount at {mountpoint}: {out}")


def _all_cmdlines() -> bytes:
    data = b""
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                data += Path(f"/proc/{pid}/cmdline").read_bytes() + b"\n"
            except OSError:
                pass
    return data


@pytest.mark.parametrize("impl", ["rclone", "s3fs"])
def test_every_key_honoured_session_token_in_env_only(bg, s3_server, bucket, tmp_path, impl):
    require_driver(impl)
    mp = str(tmp_path / f"mnt-{impl}")
    request = {
        "name": f"bg-{impl}", "src": f"s3://{bucket}", "path": mp, "impl": impl,
        "endpoint": s3_server.endpoint, "region": "us-east-1", "read_only": True,
        "options": ["--dir-cache-time=5s"] if impl == "rclone" else ["stat_cache_expire=5"],
        "credentials": {"access_key_id": "bg-key-id", "secret_access_key": SECRET, "session_token": TOKEN},
    }
    if impl == "rclone":
        request["cache_mode"] = "writes"
    rc, result = bg(request)
    assert rc == 0, result
    assert result["changed"] and result["mount"]["health"] == "ok", result
    assert any("survive a reboot" in w for w in result["warnings"])
    assert (Path(mp) / "hello.txt").read_bytes() == b"hello from obsctl tests\n"

    # read_only reaches the driver: a write is refused by the mount.
    with pytest.raises(OSError) as exc:
        (Path(mp) / "new.txt").write_bytes(b"x")
    assert exc.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM)

    # The spec is the engine's (every key), credentials from the environment, no secret in it.
    spec = (bg.root / "etc/obsctl/mounts" / f"bg-{impl}.toml").read_text()
    assert "read_only = true" in spec and 'credentials_from = "env"' in spec
    assert request["options"][0] in spec
    if impl == "rclone":
        assert 'cache_mode = "writes"' in spec
    assert SECRET not in spec and TOKEN not in spec
    assert not (bg.root / "etc/obsctl/credentials").exists()

    # The session token (and secret) are in the supervisor's environment, never in any argv or the log.
    pid = _supervisor_pid(mp, bg.env)
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"AWS_SESSION_TOKEN={TOKEN}".encode() in environ
    assert f"AWS_SECRET_ACCESS_KEY={SECRET}".encode() in environ
    cmdlines = _all_cmdlines()
    assert SECRET.encode() not in cmdlines and TOKEN.encode() not in cmdlines
    log = (bg.root / "var/log" / f"obsctl-mount-bg-{impl}.log").read_text()
    assert SECRET not in log and TOKEN not in log

    # Idempotent: the same request changes nothing and keeps the supervisor.
    rc, again = bg(request)
    assert rc == 0 and not again["changed"], again
    assert _supervisor_pid(mp, bg.env) == pid

    # A changed key restarts the mount with the new spec.
    rc, changed = bg(dict(request, read_only=False))
    assert rc == 0 and changed["changed"], changed
    assert _supervisor_pid(mp, bg.env) != pid
    (Path(mp) / "written.txt").write_bytes(b"now writable\n")

    # unmounted: stopped, spec kept; absent: spec removed.
    rc, stopped = bg({"name": f"bg-{impl}", "state": "unmounted"})
    assert rc == 0 and stopped["changed"] and stopped["mount"]["health"] == "missing", stopped
    assert (bg.root / "etc/obsctl/mounts" / f"bg-{impl}.toml").exists()
    rc, gone = bg({"name": f"bg-{impl}", "state": "absent"})
    assert rc == 0 and gone["changed"], gone
    assert not (bg.root / "etc/obsctl/mounts" / f"bg-{impl}.toml").exists()


def test_present_writes_the_spec_only_and_remounted_restarts(bg, s3_server, bucket, tmp_path):
    require_driver("rclone")
    mp = str(tmp_path / "mnt")
    request = {"name": "bg-present", "src": f"s3://{bucket}", "path": mp, "impl": "rclone",
               "endpoint": s3_server.endpoint, "region": "us-east-1",
               "credentials": {"access_key_id": "k", "secret_access_key": SECRET}}
    rc, result = bg(dict(request, state="present"))
    assert rc == 0 and result["changed"] and result["mount"]["health"] == "missing", result
    assert (bg.root / "etc/obsctl/mounts/bg-present.toml").exists()
    rc, result = bg(dict(request, state="mounted"))
    assert rc == 0 and result["mount"]["health"] == "ok", result
    pid = _supervisor_pid(mp, bg.env)
    rc, result = bg(dict(request, state="remounted"))
    assert rc == 0 and result["changed"], result
    assert _supervisor_pid(mp, bg.env) != pid


def test_a_failed_start_restores_the_files_and_shows_the_log(bg, s3_server, tmp_path):
    require_driver("s3fs")
    mp = str(tmp_path / "mnt")
    request = {"name": "bg-bad", "src": "s3://no-such-bucket-bg", "path": mp, "impl": "s3fs",
               "endpoint": s3_server.endpoint, "region": "us-east-1", "ready_timeout": 5,
               "credentials": {"access_key_id": "k", "secret_access_key": SECRET}}
    started = time.monotonic()
    rc, result = bg(request)
    assert rc == 1 and result["failed"] and result["rolled_back"], result
    assert time.monotonic() - started < 60
    assert "Last lines of /var/log/obsctl-mount-bg-bad.log" in result["msg"]
    assert result["journal"], result
    assert not (bg.root / "etc/obsctl/mounts/bg-bad.toml").exists()
    assert SECRET not in json.dumps(result)


def test_unknown_state_and_service_manager_are_refused(bg, tmp_path):
    rc, result = bg({"name": "bg-x", "state": "started", "src": "s3://b", "path": str(tmp_path / "m")})
    assert rc == 2 and "state 'started': use one of mounted, unmounted, present, absent, remounted" in result["msg"]
    code = ("import sys; from obsctl import engine, systemd_units\n"
            "try:\n    systemd_units.apply_request(engine.Request(name='x', service_manager='upstart'))\n"
            "except engine.ConfigError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "service_manager 'upstart': use one of systemd, none" in out


def test_the_cli_call_of_the_module_in_check_mode(tmp_path):
    """``obsctl systemd apply --json --check`` (the fuse_mount module's call) with service_manager
    none on this host: predicts the spec and the background start, writes nothing, no secret out."""
    name = f"bg-check-{os.getpid()}"
    request = {"name": name, "src": "s3://some-bucket", "path": str(tmp_path / "mnt"), "impl": "rclone",
               "service_manager": "none",
               "credentials": {"access_key_id": "k", "secret_access_key": SECRET, "session_token": TOKEN}}
    proc = subprocess.run([_obsctl(), "systemd", "apply", "--json", "--check", "--diff"], input=json.dumps(request),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["changed"] and result["unit"] is None
    assert f"write /etc/obsctl/mounts/{name}.toml" in result["actions"]
    assert f"start obsctl mount --config /etc/obsctl/mounts/{name}.toml in the background" in result["actions"]
    assert not Path(f"/etc/obsctl/mounts/{name}.toml").exists() and not (tmp_path / "mnt").exists()
    assert SECRET not in proc.stdout and TOKEN not in proc.stdout
