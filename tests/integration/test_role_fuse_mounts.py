"""Role obsctl.observability.fuse_mounts run for real with ansible-playbook against this host
(connection local), through the fuse_mount module and ``obsctl systemd apply --json`` with
``fuse_mounts_service_manager: none`` (this host has no systemd as PID 1): real rclone mounts of
the test's S3 server (moto) on loopback, run by ``obsctl mount --config`` in the background.

* ``allow_non_empty`` (issue 17): an entry whose mountpoint has entries is refused without it
  (a clear error naming the entry and the option, in check mode too, nothing written, nothing
  mounted); with it the bucket is mounted over the directory, whose entries are hidden while it
  is up and back after ``state: unmounted``.
* ``stall_timeout`` reaches the spec (``stall_timeout_seconds``) that ``obsctl mount`` runs
  (what the bound does to a real mount: tests/integration/test_backend_outage.py).
* credentials of a driver whose shape is not AWS's (issue 16): a real JuiceFS volume whose
  ``META_PASSWORD`` goes in ``credentials.variables``; it reaches the driver's environment, and
  neither it nor the S3 secret is in the module's result (``-vvv``: with its invocation), its
  diff (``--diff``), the spec, the log, any command line, or ``obsctl systemd apply --json
  --diff``'s own answer (no Ansible masking in between).

The module has no root of its own (it is the real thing): the spec is the host's
``/etc/obsctl/mounts/NAME.toml`` and the log ``/var/log/obsctl-mount-NAME.log``, with a name of
this test run; teardown removes them (``state: absent``, then by hand if that failed). Mount
state files go to the test's OBSCTL_RUNTIME_DIR.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from obsctl import tomlio
from support.data import BUCKET_OBJECTS
from support.juicefs import format_volume, why_not_runs
from support.obsctl import (
    all_pids, force_cleanup, is_mounted, mount_entry, obsctl_command, obsctl_env, require_driver, status_entry,
)

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = [
    pytest.mark.ansible,
    pytest.mark.skipif(os.geteuid() != 0, reason="the module writes /etc/obsctl and mounts: run as root"),
    pytest.mark.skipif(not (BIN / "ansible-playbook").exists(),
                       reason=f"no ansible-playbook in {BIN} (pip install -e '.[test]')"),
]

SECRET = "role-test-secret-3b9f1c7e55"


class Role:
    """``ansible-playbook`` of the fuse_mounts role on localhost with one entry (``entry`` keys)."""

    def __init__(self, tmp_path: Path, runtime_dir: Path, name: str) -> None:
        self.work = tmp_path
        self.name = name
        self.spec = Path("/etc/obsctl/mounts") / f"{name}.toml"
        self.log = Path("/var/log") / f"obsctl-mount-{name}.log"
        collections = tmp_path / "collections" / "ansible_collections" / "obsctl"
        collections.mkdir(parents=True)
        (collections / "observability").symlink_to(REPO)
        (tmp_path / "playbook.yml").write_text(json.dumps([{
            "name": "fuse_mounts on localhost", "hosts": "localhost", "gather_facts": False,
            "roles": [{"role": "obsctl.observability.fuse_mounts"}],
        }]))
        self.env = dict(obsctl_env(runtime_dir), ANSIBLE_COLLECTIONS_PATH=str(tmp_path / "collections"),
                        ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="false",
                        ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_PYTHON_INTERPRETER=sys.executable,
                        ANSIBLE_RETRY_FILES_ENABLED="false", PATH=f"{BIN}:{os.environ['PATH']}")

    def play(self, entry: dict, *args: str) -> subprocess.CompletedProcess:
        variables = self.work / "vars.json"
        variables.write_text(json.dumps({
            "fuse_mounts_list": [dict(entry, name=self.name)],
            "fuse_mounts_service_manager": "none",
            "obsctl_venv": str(BIN.parent),  # the role's obsctl_path: this venv's obsctl
        }))
        return subprocess.run(
            [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", "-e", f"@{variables}", *args,
             str(self.work / "playbook.yml")],
            capture_output=True, text=True, env=self.env, timeout=300, check=False)


def recap(proc: subprocess.CompletedProcess) -> dict[str, int]:
    line = next(line for line in proc.stdout.splitlines() if line.startswith("localhost") and "ok=" in line)
    return {k: int(v) for k, v in (part.split("=") for part in line.split()[2:])}


@pytest.fixture
def role(tmp_path, runtime_dir, mountpoint):
    role = Role(tmp_path, runtime_dir, f"it-role-{os.getpid()}")
    made = [d for d in (role.spec.parent, role.spec.parent.parent) if not d.exists()]  # deepest first
    yield role
    role.play({"state": "absent", "path": str(mountpoint)})
    force_cleanup(mountpoint)
    for path in (role.spec, role.log):
        path.unlink(missing_ok=True)
    for directory in made:  # what this test created on the host, when nothing else is in it
        try:
            directory.rmdir()
        except OSError:
            pass


def _entry(bucket: str, s3_server, mountpoint: Path, tmp_path: Path, **keys) -> dict:
    telemetry = tmp_path / "telemetry.toml"
    telemetry.write_text(tomlio.render_telemetry({"mode": "none"}))
    return {"src": f"s3://{bucket}", "path": str(mountpoint), "impl": "rclone", "endpoint": s3_server.endpoint,
            "region": "us-east-1", "telemetry_config": str(telemetry),
            "credentials": {"access_key_id": s3_server.access_key, "secret_access_key": SECRET}, **keys}


def test_allow_non_empty_through_the_role(role, bucket, s3_server, mountpoint, tmp_path):
    require_driver("rclone")
    (mountpoint / "keep.txt").write_text("kept under the mount\n")
    entry = _entry(bucket, s3_server, mountpoint, tmp_path)

    # Without allow_non_empty: refused, in check mode and for real; nothing written or mounted.
    for args in (("--check",), ()):
        proc = role.play(entry, *args)
        assert proc.returncode != 0, proc.stdout
        out = proc.stdout
        assert f"mountpoint {mountpoint} is not empty (it has 'keep.txt'" in out, out
        assert "allow_non_empty: true" in out, out
        assert SECRET not in out + proc.stderr
        assert not is_mounted(mountpoint)
        assert not role.spec.exists()
        assert (mountpoint / "keep.txt").read_text() == "kept under the mount\n"

    # With it: mounted over the directory, whose entry is hidden while the bucket is there.
    proc = role.play(dict(entry, allow_non_empty=True, stall_timeout=3))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert recap(proc)["changed"] == 1, proc.stdout
    assert mount_entry(mountpoint)["fstype"] == "fuse.rclone"
    top = sorted({name.split("/")[0] for name in BUCKET_OBJECTS})
    assert sorted(p.name for p in mountpoint.iterdir()) == top
    assert (mountpoint / "hello.txt").read_bytes() == BUCKET_OBJECTS["hello.txt"]
    spec = role.spec.read_text()
    assert "allow_non_empty = true" in spec and SECRET not in spec
    assert "stall_timeout_seconds = 3\n" in spec

    # Idempotent: the same entry changes nothing.
    again = role.play(dict(entry, allow_non_empty=True, stall_timeout=3))
    assert again.returncode == 0 and recap(again)["changed"] == 0, again.stdout

    # Unmounted: the directory's own entry is back.
    proc = role.play(dict(entry, allow_non_empty=True, stall_timeout=3, state="unmounted"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not is_mounted(mountpoint)
    assert sorted(p.name for p in mountpoint.iterdir()) == ["keep.txt"]
    assert (mountpoint / "keep.txt").read_text() == "kept under the mount\n"


def test_juicefs_meta_password_through_the_role_never_shown(role, s3_auth_server, mountpoint, tmp_path):
    reason = why_not_runs()
    if reason:
        pytest.skip(reason)
    meta, _bucket = format_volume(s3_auth_server, tmp_path)
    meta_password = "meta-password-7d41c0a9e2"
    secrets = (meta_password, s3_auth_server.secret_key)
    telemetry = tmp_path / "telemetry.toml"
    telemetry.write_text(tomlio.render_telemetry({"mode": "none"}))
    entry = {"src": meta, "path": str(mountpoint), "impl": "juicefs", "telemetry_config": str(telemetry),
             "options": [f"cache-dir={tmp_path}/cache"],
             "credentials": {"access_key_id": s3_auth_server.access_key,
                             "secret_access_key": s3_auth_server.secret_key,
                             "variables": {"META_PASSWORD": meta_password}}}
    proc = role.play(entry, "--diff", "-vvv")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr
    assert mount_entry(mountpoint)["fstype"] == "fuse.juicefs"
    (mountpoint / "written.txt").write_text("through the volume\n")  # its S3 keys work
    shown = proc.stdout + proc.stderr
    assert '"config_path":' in shown and '"module_args":' in shown and "+++ after" in shown, shown[-4000:]
    for secret in secrets:
        assert secret not in shown

    # In the driver's environment, nowhere else obsctl writes.
    driver_pid = status_entry(role.env, mountpoint)["driver_pid"]
    with open(f"/proc/{driver_pid}/environ", "rb") as handle:
        environ = handle.read().split(b"\0")
    assert f"META_PASSWORD={meta_password}".encode() in environ
    assert f"AWS_SECRET_ACCESS_KEY={s3_auth_server.secret_key}".encode() in environ
    for pid in all_pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        assert not any(secret.encode() in cmdline for secret in secrets), pid
    for path in (role.spec, role.log):
        assert not any(secret in path.read_text() for secret in secrets), path

    # obsctl's own answer, which the module passes on: no secret before any masking.
    request = dict(entry, name=role.name, service_manager="none")
    raw = subprocess.run([*obsctl_command(), "systemd", "apply", "--json", "--check", "--diff"],
                         input=json.dumps(request), env=role.env, capture_output=True, text=True, timeout=60,
                         check=False)
    assert raw.returncode == 0, raw.stdout + raw.stderr
    answer = json.loads(raw.stdout)
    assert answer["changed"] is False and answer["diff"], answer
    for secret in secrets:
        assert secret not in raw.stdout + raw.stderr
