"""An unlucky or hostile operator against real mounts (issue 17, "Every exit tells the truth"):
a driver that dies just after its mount appears, two obsctl on one mountpoint,
non-empty, system and symlinked mountpoints, nested mounts, a state file that
cannot be written or would be shared, ``obsctl status | head``.

Each test failed on the code before the change (the commit message says how it
failed there). What obsctl does and why: docs/operations.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import tomlkit

from support.obsctl import (
    force_cleanup, is_mounted, obsctl_command, processes_mentioning, require_driver, run_obsctl,
    s3_mount_args, status_entry, status_json,
)
from support.waiting import wait_until


# -- a driver that dies just after its mount appears ------------------------------------

#: bindfs in the foreground, killed DELAY s after its mount appears in the mount table, after one
#: error line: a driver crashing at any moment of obsctl's start (ready check, telemetry start,
#: first poll, the "mounted" line).
DYING_DRIVER = r"""
bindfs -f "$1" "$2" & pid=$!
while ! grep -q " $2 " /proc/self/mountinfo; do sleep 0.005; done
sleep "$3"
echo "fatal: simulated crash $3 s after the mount appeared" >&2
kill -9 "$pid"
exit 3
"""


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.05, 0.1, 0.2, 0.4])
def test_driver_dying_just_after_its_mount_appears_exits_1_with_its_error(delay, tmp_path, mountpoint, env,
                                                                          telemetry_toml, start_mount):
    require_driver("generic")
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_text("x")
    spec = tmp_path / "dying.toml"
    spec.write_text(tomlkit.dumps({
        "source": "local", "mountpoint": str(mountpoint), "impl": "generic", "max_restarts": 0,
        "command": ["sh", "-c", DYING_DRIVER, "sh", str(src), str(mountpoint), str(delay)]}))
    # OTLP exporters: the OpenTelemetry SDK and gRPC load while the driver starts (the window in which
    # a crash used to end in exit 0 and no message)
    m = start_mount(["--config", str(spec), "--telemetry-config", str(telemetry_toml())], env)
    rc = m.wait(30)
    # whichever phase the crash hit: exit 1 (never 0, which systemd's Restart=on-failure ignores),
    # the driver's own last error line, nothing left mounted
    assert rc == 1, f"exit {rc} for a driver that crashed {delay} s after its mount appeared\n{m.output()}"
    assert f"simulated crash {delay} s after the mount appeared" in m.stderr, m.output()
    assert "Traceback" not in m.stderr, m.output()
    assert not is_mounted(mountpoint)
    assert not processes_mentioning(str(mountpoint))


# -- two obsctl on one mountpoint ---------------------------------------------------------


def test_second_mount_on_a_claimed_mountpoint_is_refused_before_spawning(
        bucket, s3_server, mountpoint, env, start_mount):
    """The first obsctl is still in its ready wait (its endpoint never answers, nothing is mounted
    yet, no state file): the second must still see the claim and spawn nothing."""
    require_driver("rclone")
    import socket

    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(8)
    try:
        endpoint = f"http://127.0.0.1:{hole.getsockname()[1]}"
        first = start_mount(s3_mount_args(bucket, mountpoint, "rclone", endpoint, ready_timeout=60), env)
        wait_until(lambda: processes_mentioning(str(mountpoint), exclude=[first.pid]), 10, "first driver spawned")
        drivers_before = processes_mentioning(str(mountpoint))
        res = run_obsctl("mount", *s3_mount_args(bucket, mountpoint, "rclone", s3_server.endpoint), env=env,
                         timeout=30)
        assert res.returncode == 2, res
        assert f"{mountpoint} is claimed by another obsctl (pid {first.pid})" in res.stderr, res.stderr
        assert processes_mentioning(str(mountpoint)) == drivers_before  # the second spawned nothing
        assert first.proc.poll() is None, first.output()
    finally:
        hole.close()


@pytest.mark.parametrize("attempt", range(3))
def test_two_mounts_started_together_one_wins_the_other_exits_2(
        attempt, impl, bucket, s3_server, mountpoint, env, start_mount):
    args = s3_mount_args(bucket, mountpoint, impl, s3_server.endpoint)
    racers = [start_mount(args, env), start_mount(args, env)]
    outcomes = [r.wait_exit_or_ready(40) for r in racers]
    assert sorted(outcomes) == ["exited", "ready"], [r.output() for r in racers]
    winner, loser = (racers[0], racers[1]) if outcomes[0] == "ready" else (racers[1], racers[0])
    assert loser.proc.returncode == 2, loser.output()
    assert "is claimed by another obsctl" in loser.stderr or "already run by obsctl" in loser.stderr, \
        loser.output()
    # the winner's mount is untouched by the loser's exit
    time.sleep(1.0)
    assert is_mounted(mountpoint)
    assert (mountpoint / "hello.txt").read_bytes()
    assert winner.proc.poll() is None, winner.output()
    assert winner.stop(30) == 0, winner.output()
    assert not is_mounted(mountpoint)


# -- non-empty, system and symlinked mountpoints -------------------------------------------


def test_non_empty_mountpoint_needs_allow_non_empty(impl, bucket, s3_server, mountpoint, env, start_mount):
    (mountpoint / "precious.txt").write_text("kept")
    res = run_obsctl("mount", *s3_mount_args(bucket, mountpoint, impl, s3_server.endpoint), env=env, timeout=30)
    assert res.returncode == 2, res
    assert "is not empty" in res.stderr and "--allow-non-empty" in res.stderr, res.stderr
    assert not is_mounted(mountpoint)
    assert not processes_mentioning(str(mountpoint))
    m = start_mount(s3_mount_args(bucket, mountpoint, impl, s3_server.endpoint, None, "--allow-non-empty"), env)
    m.wait_ready(30)
    assert (mountpoint / "hello.txt").read_bytes()
    assert not (mountpoint / "precious.txt").exists()  # hidden while mounted
    assert m.stop(30) == 0, m.output()
    assert (mountpoint / "precious.txt").read_text() == "kept"


@pytest.mark.parametrize("target", ["/proc/sys", "/etc/obsctl-bucket", "/", "/mnt"])
def test_system_directory_is_refused(target, bucket, s3_server, env, tmp_path):
    require_driver("rclone")
    before = set(open("/proc/self/mountinfo").read().splitlines())
    res = run_obsctl("mount", *s3_mount_args(bucket, Path(target), "rclone", s3_server.endpoint), env=env,
                     timeout=30)
    assert res.returncode == 2, res
    assert "is a system directory" in res.stderr, res.stderr
    assert not processes_mentioning(f"{bucket}")
    # only what this test could have mounted: the other CI groups (docker's overlays, other tests'
    # mounts) change the host's mount table meanwhile
    new = set(open("/proc/self/mountinfo").read().splitlines()) - before
    assert not [line for line in new if line.split()[4] == target or bucket in line], new
    spec = tmp_path / "system.toml"
    spec.write_text(tomlkit.dumps({"source": f"s3://{bucket}", "mountpoint": target}))
    checked = run_obsctl("config", "check", str(spec), env=env)
    assert checked.returncode == 2 and "is a system directory" in checked.stderr, checked


def test_symlinked_mountpoint_is_refused_naming_the_target(impl, bucket, s3_server, tmp_path, mountpoint, env):
    link = tmp_path / "link"
    link.symlink_to(mountpoint)
    res = run_obsctl("mount", *s3_mount_args(bucket, link, impl, s3_server.endpoint), env=env, timeout=30)
    assert res.returncode == 2, res
    assert f"resolves to {mountpoint}" in res.stderr and f"give the resolved path ({mountpoint})" in res.stderr, \
        res.stderr
    assert not is_mounted(mountpoint) and not is_mounted(link)
    assert not processes_mentioning(str(link)) and not processes_mentioning(str(mountpoint))


# -- nested mounts ----------------------------------------------------------------------------


def test_stopping_an_outer_mount_leaves_the_nested_one_alone(bucket, s3_server, tmp_path, mountpoint, env,
                                                             start_mount):
    require_driver("generic")
    require_driver("rclone")
    src = tmp_path / "src"
    (src / "inner").mkdir(parents=True)
    outer = start_mount(["local", str(mountpoint), "--impl", "generic", "--",
                         "bindfs", "-f", str(src), str(mountpoint)], env)
    outer.wait_ready(30)
    inner_mp = mountpoint / "inner"
    inner = start_mount(s3_mount_args(bucket, inner_mp, "rclone", s3_server.endpoint), env)
    try:
        inner.wait_ready(30)
        res = run_obsctl("unmount", str(mountpoint), env=env, timeout=60)
        assert res.returncode == 1, res
        assert f"other mounts are inside it ({inner_mp})" in res.stderr, res.stderr
        assert outer.proc.poll() is None and is_mounted(mountpoint)
        # a stop signal (systemctl stop) is refused once, naming the nested mount
        outer.signal(signal.SIGTERM)
        wait_until(lambda: "has other mounts inside it" in outer.stderr, 10, outer.output)
        time.sleep(1.0)
        assert outer.proc.poll() is None, outer.output()
        assert str(inner_mp) in outer.stderr
        assert is_mounted(inner_mp) and (inner_mp / "hello.txt").read_bytes()
        assert inner.proc.poll() is None
        # inner first, then outer: both clean
        assert run_obsctl("unmount", str(inner_mp), env=env, timeout=60).returncode == 0
        res = run_obsctl("unmount", str(mountpoint), env=env, timeout=60)
        assert res.returncode == 0, res
        assert not is_mounted(mountpoint)
    finally:
        force_cleanup(inner_mp)


# -- the state file ---------------------------------------------------------------------------


@pytest.fixture
def full_runtime_dir(tmp_path):
    """A runtime dir on a 64 KiB tmpfs filled to the last byte: no state file fits."""
    run = tmp_path / "fullrun"
    run.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(run)], check=True)
    filler = run / "filler"
    try:
        with open(filler, "wb") as handle:
            while True:
                handle.write(b"\0" * 4096)
                handle.flush()
    except OSError:
        pass
    yield run
    subprocess.run(["umount", "-l", str(run)], check=False)


def test_unwritable_state_file_warns_once_and_the_mount_stays_manageable(
        bucket, s3_server, mountpoint, full_runtime_dir, start_mount):
    require_driver("rclone")
    from support.obsctl import obsctl_env

    env = obsctl_env(full_runtime_dir, s3_server.access_key, s3_server.secret_key)
    m = start_mount(s3_mount_args(bucket, mountpoint, "rclone", s3_server.endpoint), env)
    m.wait_ready(30)
    time.sleep(7)  # three polls (every 2 s) that each fail to write
    assert m.stderr.count("cannot write state file") == 1, m.output()
    assert (mountpoint / "hello.txt").read_bytes()
    status = run_obsctl("status", env=env)
    assert f"obsctl (pid {m.pid}) runs a mount whose state file could not be written" in status.stderr, status
    # room again: the state file appears, and is said once
    (full_runtime_dir / "filler").unlink()
    wait_until(lambda: status_entry(env, mountpoint), 10, "the state file once there is room")
    assert m.stderr.count("written again") == 1, m.output()
    res = run_obsctl("unmount", str(mountpoint), env=env, timeout=60)
    assert res.returncode == 0, res
    assert not is_mounted(mountpoint)


def test_unmount_works_without_a_state_file(bucket, s3_server, mountpoint, full_runtime_dir, start_mount):
    require_driver("rclone")
    from support.obsctl import obsctl_env

    env = obsctl_env(full_runtime_dir, s3_server.access_key, s3_server.secret_key)
    m = start_mount(s3_mount_args(bucket, mountpoint, "rclone", s3_server.endpoint), env)
    m.wait_ready(30)
    assert status_json(env) == []
    res = run_obsctl("unmount", str(mountpoint), env=env, timeout=60)
    assert res.returncode == 0, res
    assert m.wait(30) == 0, m.output()
    assert not is_mounted(mountpoint)


def test_long_and_look_alike_mountpoints_each_have_their_own_state(bucket, s3_server, tmp_path, env,
                                                                   start_mount):
    require_driver("rclone")
    base = tmp_path / "x"
    long_mp = base / ("d" * 120) / ("e" * 140)  # the escaped name alone is over 255 bytes
    twins = [base / "a-b", base / "a\\x2db"]  # systemd-escape gives both x-a\x2db
    mounts = {}
    try:
        for mp in [long_mp, *twins]:
            mp.mkdir(parents=True)
            mounts[mp] = start_mount(s3_mount_args(bucket, mp, "rclone", s3_server.endpoint), env)
        for mp, m in mounts.items():
            m.wait_ready(30)
        time.sleep(2.5)
        for mp, m in mounts.items():
            entry = status_entry(env, mp)
            assert entry is not None and entry["pid"] == m.pid, (mp, status_json(env))
            assert "cannot write state file" not in m.stderr, m.output()
        for mp, m in mounts.items():
            res = run_obsctl("unmount", str(mp), env=env, timeout=60)
            assert res.returncode == 0, res
            assert not is_mounted(mp)
    finally:
        for mp in mounts:
            force_cleanup(mp)


# -- obsctl status into a closed pipe --------------------------------------------------------------


def test_status_json_into_a_closed_pipe_exits_quietly(runtime_dir, env):
    """``obsctl status --json | head -c 100``: more than a pipe buffer (64 KiB) of states."""
    mounts = runtime_dir / "mounts"
    mounts.mkdir()
    for i in range(40):
        state = {"mountpoint": f"/mnt/m{i}", "state": "ready", "health": "ok", "pid": os.getpid(),
                 "driver_stats": {"pad": "p" * 4000}}
        (mounts / f"m{i}.json").write_text(json.dumps(state))
    pipe = subprocess.run(" ".join([*obsctl_command(), "status", "--json"]) + " | head -c 100; "
                          "echo \"rc=${PIPESTATUS[0]}\" >&2",
                          shell=True, executable="/bin/bash", env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert len(pipe.stdout) == 100
    assert "Traceback" not in pipe.stderr and "BrokenPipeError" not in pipe.stderr, pipe.stderr
    assert pipe.stderr.strip() == "rc=1", pipe.stderr
