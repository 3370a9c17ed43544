"""--impl generic: obsctl supervises any FUSE daemon given after ``--``
(bindfs here): mount_up 1, status, unmount on SIGTERM."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from support.obsctl import (
    force_cleanup, is_mounted, mount_entry, obsctl_command, obsctl_env, pid_alive,
    processes_mentioning, require_driver, run_obsctl, status_json,
)


@pytest.fixture
def bindfs_source(tmp_path):
    require_driver("generic")
    src = tmp_path / "src"
    src.mkdir()
    (src / "one.txt").write_text("one\n")
    (src / "two.bin").write_bytes(os.urandom(32 * 1024))
    return src


def test_generic_bindfs(bindfs_source, mountpoint, runtime_dir, otlp, telemetry_toml,
                        start_mount):
    env = obsctl_env(runtime_dir)
    tel = telemetry_toml(export_interval_seconds=1)
    m = start_mount([str(bindfs_source), str(mountpoint), "--impl", "generic",
                     "--telemetry-config", str(tel), "--ready-timeout", "20",
                     "--", "bindfs", "-f", str(bindfs_source), str(mountpoint)], env)
    m.wait_ready(30)

    entry = mount_entry(mountpoint)
    assert entry is not None and entry["fstype"] == "fuse", entry
    assert sorted(os.listdir(mountpoint)) == ["one.txt", "two.bin"]
    assert (mountpoint / "two.bin").read_bytes() == (bindfs_source / "two.bin").read_bytes()

    otlp.wait_for(
        lambda: otlp.latest("obsctl_mount_up", impl="generic", mountpoint=str(mountpoint)) == 1,
        15, "obsctl_mount_up{impl=generic} == 1")

    st = [e for e in status_json(env) if e.get("mountpoint") == str(mountpoint)]
    assert len(st) == 1 and st[0]["state"] == "ready" and st[0]["impl"] == "generic", st
    driver_pid = st[0]["driver_pid"]
    assert pid_alive(driver_pid) and "bindfs" in open(f"/proc/{driver_pid}/cmdline").read()

    rc = m.stop(30)
    assert rc == 0, f"obsctl exited {rc} after SIGTERM\n{m.output()}"
    assert not is_mounted(mountpoint)
    deadline = time.monotonic() + 1
    while pid_alive(driver_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(driver_pid), "bindfs still running after obsctl exited"
    assert not processes_mentioning(str(mountpoint))
    # the source is untouched
    assert (bindfs_source / "one.txt").read_text() == "one\n"


def test_sidecar_observes_a_mount_it_did_not_start(bindfs_source, mountpoint, runtime_dir, otlp):
    """obsctl sidecar: bindfs started by someone else, observed over OTLP;
    `obsctl unmount` refuses (not obsctl's mount); the sidecar exits 1 with a
    final export when the daemon goes away, and never unmounts anything."""
    env = obsctl_env(runtime_dir)
    bindfs = subprocess.Popen(["bindfs", "-f", str(bindfs_source), str(mountpoint)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sidecar = None
    try:
        deadline = time.monotonic() + 10
        while not is_mounted(mountpoint) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert is_mounted(mountpoint)
        sidecar = subprocess.Popen(
            [*obsctl_command(), "sidecar", "--pid", str(bindfs.pid), "--mountpoint", str(mountpoint),
             "--impl", "bindfs", "--source", "local-src", "--otel-endpoint", otlp.grpc_endpoint],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert (mountpoint / "two.bin").read_bytes() == (bindfs_source / "two.bin").read_bytes()
        otlp.wait_for(lambda: otlp.latest("obsctl_mount_up", impl="bindfs", mountpoint=str(mountpoint)) == 1,
                      15, "obsctl_mount_up{impl=bindfs} == 1 from the sidecar")
        otlp.wait_for(lambda: (otlp.latest_sum("obsctl_driver_io_bytes", direction="write", impl="bindfs") or 0)
                      >= 32 * 1024, 15, "the bytes bindfs wrote to /dev/fuse (the read) in /proc/PID/io")
        st = [e for e in status_json(env) if e.get("mountpoint") == str(mountpoint)]
        assert len(st) == 1 and st[0]["state"] == "observing" and st[0]["driver_pid"] == bindfs.pid, st
        # one state-file schema (obsctl.observer.MountObserver.status), the same as obsctl mount's
        assert st[0]["restarts"] == 0 and st[0]["ready_at"] >= st[0]["started_at"] and st[0]["fs_ops"] >= 0, st
        assert st[0]["driver_start"] is not None and st[0]["health"] == "ok", st
        refused = run_obsctl("unmount", str(mountpoint), env=env)
        assert refused.returncode == 1 and "only observed" in refused.stderr
        assert is_mounted(mountpoint)

        bindfs.kill()
        bindfs.wait(10)
        out, err = sidecar.communicate(timeout=15)
        assert sidecar.returncode == 1, err
        assert f"pid {bindfs.pid} exited" in err
        assert otlp.latest("obsctl_mount_up", impl="bindfs", mountpoint=str(mountpoint)) == 0
    finally:
        for proc in (sidecar, bindfs):
            if proc is not None and proc.poll() is None:
                proc.kill()
        force_cleanup(mountpoint)
