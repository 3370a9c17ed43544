"""One condition, one word (issue 16): a hung driver (SIGSTOP) reads ``hung`` everywhere.

A real rclone mount of the test S3 server under ``obsctl mount``; its driver
is stopped with SIGSTOP (alive, answers nothing). Then the same word comes from

* ``obsctl status --json`` (the supervisor's state file: its MountProbe),
* ``obsctl status --all --json`` (obsctl.inventory, the host-wide view),
* the fuse_mount_info module (run as Ansible runs a module: the module file
  with its arguments file, importing the collection; it calls the real
  ``obsctl status --all --json``),
* ``obsctl systemd check``'s health check (:func:`obsctl.systemd_units.check`,
  with the mount's spec under a temporary root; systemctl cannot run on this
  host, no systemd as PID 1, so a stand-in answers it: "active", and its
  ``restart`` continues the driver, which the check's wait-until-ok loop then sees).

All of them read :func:`obsctl.health.probe` / :class:`obsctl.health.Probe`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from obsctl import health, systemd_units, tomlio
from support.obsctl import obsctl_command, require_driver, run_obsctl, s3_mount_args, status_entry
from support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]


def status_all_entry(env: dict[str, str], mountpoint: Path) -> dict:
    """``obsctl status --all --json``'s entry for ``mountpoint``."""
    proc = run_obsctl("status", "--all", "--json", "--stat-timeout", "1", env=env)
    assert proc.returncode == 0, proc.stderr
    return next(m for m in json.loads(proc.stdout) if m["mountpoint"] == str(mountpoint))


def fuse_mount_info(tmp_path: Path, env: dict[str, str], mountpoint: Path) -> dict:
    """The fuse_mount_info module's entry for ``mountpoint``, the module run as Ansible runs it."""
    base = tmp_path / "collections"
    (base / "ansible_collections" / "obsctl").mkdir(parents=True, exist_ok=True)
    link = base / "ansible_collections" / "obsctl" / "observability"
    if not link.exists():
        link.symlink_to(REPO)
    args = tmp_path / "fuse_mount_info_args.json"
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {
        "obsctl_path": obsctl_command()[0], "stat_timeout": 1, "ignore_missing": True}}))
    proc = subprocess.run([sys.executable, str(REPO / "plugins/modules/fuse_mount_info.py"), str(args)],
                          env={**env, "PYTHONPATH": str(base)}, capture_output=True, text=True, timeout=60,
                          check=False)
    result = json.loads(proc.stdout)
    assert not result.get("failed"), result
    return next(m for m in result["mounts"] if m["mountpoint"] == str(mountpoint))


class Systemctl:
    """Stands in for systemctl (no systemd on this host): the unit is active; ``restart`` continues the driver."""

    def __init__(self, driver: int) -> None:
        self.driver = driver
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str], data: bytes | None = None) -> tuple[int, str, str]:
        self.calls.append(list(argv))
        if argv[:2] == ["systemctl", "show"]:
            return 0, "LoadState=loaded\nActiveState=active\nSubState=running\nMainPID=1\nResult=success\n", ""
        if argv[:2] == ["systemctl", "is-enabled"]:
            return 0, "enabled\n", ""
        if argv[:2] == ["systemctl", "restart"]:
            os.kill(self.driver, signal.SIGCONT)
            return 0, "", ""
        return 0, "", ""


def test_a_stopped_driver_reads_hung_everywhere(bucket, s3_server, mountpoint, env, tmp_path, start_mount):
    require_driver("rclone")
    m = start_mount(s3_mount_args(bucket, mountpoint, "rclone", s3_server.endpoint), env)
    m.wait_ready(30)
    driver = status_entry(env, mountpoint)["driver_pid"]
    assert status_entry(env, mountpoint)["health"] == health.OK
    assert status_all_entry(env, mountpoint)["health"] == health.OK

    name = "hungcheck"
    spec = tmp_path / "root" / "etc/obsctl/mounts" / f"{name}.toml"
    spec.parent.mkdir(parents=True)
    spec.write_text(tomlio.render_mount_spec({
        "name": name, "source": f"s3://{bucket}", "mountpoint": str(mountpoint), "impl": "rclone",
        "endpoint": s3_server.endpoint, "region": "us-east-1"}))

    os.kill(driver, signal.SIGSTOP)
    try:
        # the supervisor's poll (2 s) + its probe's bound (0.8 s)
        words = {"status": wait_until(lambda: (e := status_entry(env, mountpoint))["health"] != health.OK
                                      and e["health"], 6, "status --json leaves ok")}
        words["status --all"] = status_all_entry(env, mountpoint)["health"]
        words["fuse_mount_info"] = fuse_mount_info(tmp_path, env, mountpoint)["health"]
        said: list[str] = []
        systemctl = Systemctl(driver)
        code = systemd_units.check(name, root=tmp_path / "root", run=systemctl, out=said.append,
                                   probe_timeout=1, settle_seconds=10)
        words["systemd check"] = said[0].split(f"{mountpoint} is ", 1)[1].split(" ", 1)[0] if said else None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(driver, signal.SIGCONT)
    assert words == dict.fromkeys(words, health.HUNG), (words, said)
    # the check's repair: it restarted the unit, then waited until the mount answered again
    assert ["systemctl", "restart", f"obsctl-mount@{name}.service"] in systemctl.calls
    assert code == 0 and said[-1] == f"obsctl: {mountpoint} is mounted again", said
    wait_until(lambda: status_entry(env, mountpoint)["health"] == health.OK, 6, "status ok after SIGCONT")
    assert m.stop(30) == 0, m.output()


def test_the_check_command_line_is_the_units(tmp_path):
    """The check unit's command, ``obsctl systemd check --name NAME``, parses and answers 2 for a
    mount without a spec (exit status convention: 2 = invalid input, nothing changed)."""
    proc = run_obsctl("systemd", "check", "--name", "no-such-mount-" + tmp_path.name[-8:])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no such file" in proc.stdout + proc.stderr
