"""Faults in the mount lifecycle against real drivers and a real S3 server (issue 7):
obsctl_mount_up under a killed driver, prompt stops in every phase, a busy
mount at SIGTERM, a kill -9 of the supervisor, exit codes.

What happens on each fault and why: docs/operations.md.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from support.net import closed_port, free_port
from support.obsctl import (
    is_mounted, pid_alive, processes_mentioning, run_obsctl, s3_mount_args, status_entry,
)
from support.waiting import wait_until


def scrape_up(port: int) -> float | None:
    """obsctl_mount_up from obsctl's own Prometheus endpoint, or None when absent."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith("obsctl_mount_up{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def start_scraped(impl, bucket, s3_server, mountpoint, env, telemetry_toml, start_mount):
    """A ready mount with a Prometheus endpoint that says obsctl_mount_up 1; returns (mount, port, driver pid)."""
    port = free_port()
    tel = telemetry_toml(export_interval_seconds=30, bind_address=f"127.0.0.1:{port}")
    m = start_mount(s3_mount_args(bucket, mountpoint, impl, s3_server.endpoint, tel), env)
    m.wait_ready(30)
    wait_until(lambda: scrape_up(port) == 1.0, 10, "obsctl_mount_up == 1")
    return m, port, status_entry(env, mountpoint)["driver_pid"]


def no_traceback(m) -> None:
    assert "Traceback" not in m.stderr + m.stdout, m.output()


@pytest.fixture
def black_hole():
    """A loopback TCP port that accepts connections (the kernel completes the
    handshake) and never answers: an S3 endpoint that hangs every request."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


# -- 1. the gauge goes to 0 in every phase -------------------------------------


def test_mount_up_is_zero_from_driver_death_until_restarted(impl, bucket, s3_server, mountpoint, env,
                                                            otlp, telemetry_toml, start_mount):
    m, port, driver = start_scraped(impl, bucket, s3_server, mountpoint, env, telemetry_toml, start_mount)

    os.kill(driver, signal.SIGKILL)
    killed = time.time()
    samples: list[tuple[float, float | None]] = []
    status_health = None
    while time.time() - killed < 30:
        samples.append((time.time() - killed, scrape_up(port)))
        if samples[-1][1] == 0.0 and status_health is None:
            status_health = status_entry(env, mountpoint)["health"]
        if "restarted" in m.stderr:
            break
        time.sleep(0.1)
    assert "restarted" in m.stderr, f"the driver was not restarted\n{m.output()}"
    restarted_at = next(l.time for l in m.stderr_lines if "restarted" in l.text) - killed
    zero_after = next((t for t, v in samples if v == 0.0), None)
    assert zero_after is not None and zero_after <= 0.6, f"gauge not 0 within one 100 ms scrape + watch: {samples}"
    # from the first 0 until the restart printed, every scrape says 0 (backoff and ready wait included)
    during = [(t, v) for t, v in samples if zero_after <= t < restarted_at - 0.05]
    assert during and all(v == 0.0 for _t, v in during), f"gauge went back to 1 before the restart: {samples}"
    assert status_health not in (None, "ok"), f"status health {status_health!r} while the gauge says 0"
    wait_until(lambda: scrape_up(port) == 1.0, 10, "obsctl_mount_up == 1 after the restart")
    # the state file is written right after the probe's round: allow it that moment
    st = wait_until(lambda: (e := status_entry(env, mountpoint))["health"] == "ok" and e, 5,
                    lambda: f"status after the restart: {status_entry(env, mountpoint)}")
    assert st["state"] == "ready" and st["restarts"] == 1, st
    assert m.stop(30) == 0, m.output()
    no_traceback(m)


def test_mount_up_is_zero_while_the_driver_hangs_and_stop_is_bounded(impl, bucket, s3_server, mountpoint, env,
                                                                     otlp, telemetry_toml, start_mount):
    m, port, driver = start_scraped(impl, bucket, s3_server, mountpoint, env, telemetry_toml, start_mount)
    os.kill(driver, signal.SIGSTOP)  # alive, answers nothing
    try:
        stopped = time.monotonic()
        # one poll (2 s) + the probe's 0.8 s bound + a scrape
        wait_until(lambda: scrape_up(port) == 0.0, 4.5, "obsctl_mount_up == 0 under a hung driver")
        hung_after = time.monotonic() - stopped
        assert status_entry(env, mountpoint)["health"] == "hung"
        sent = time.monotonic()
        m.signal(signal.SIGTERM)
        rc = m.wait(30)
        took = time.monotonic() - sent
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(driver, signal.SIGCONT)
    assert rc == 0, m.output()
    assert took < 6, f"stop with a hung driver took {took:.2f} s (gauge 0 after {hung_after:.2f} s)\n{m.output()}"
    assert not is_mounted(mountpoint)
    assert not pid_alive(driver)
    no_traceback(m)


# -- 2. stops that wait for nothing --------------------------------------------


def test_sigterm_during_restart_backoff_is_prompt(impl, bucket, s3_server, mountpoint, env, start_mount):
    m = start_mount(s3_mount_args(bucket, mountpoint, impl, s3_server.endpoint), env)
    m.wait_ready(30)
    driver = status_entry(env, mountpoint)["driver_pid"]
    os.kill(driver, signal.SIGKILL)
    wait_until(lambda: status_entry(env, mountpoint)["state"] == "restarting", 5, "state restarting")
    sent = time.monotonic()
    m.signal(signal.SIGTERM)  # inside the 1 s backoff before the first restart
    rc = m.wait(30)
    took = time.monotonic() - sent
    assert rc == 0, m.output()
    assert took < 3.0, f"obsctl took {took:.2f} s to stop during the backoff\n{m.output()}"
    assert "restarted" not in m.stderr, m.output()
    assert not is_mounted(mountpoint)
    wait_until(lambda: not processes_mentioning(str(mountpoint)), 2, "no driver left")
    no_traceback(m)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_ready_wait_is_prompt(sig, impl, black_hole, mountpoint, env, start_mount):
    m = start_mount(s3_mount_args("obsctl-hang", mountpoint, impl, black_hole, ready_timeout=60), env)
    time.sleep(2.5)  # the driver is up and waiting on the endpoint
    assert m.proc.poll() is None, m.output()
    sent = time.monotonic()
    m.signal(sig)
    rc = m.wait(30)
    took = time.monotonic() - sent
    assert took < 3.0, f"obsctl took {took:.2f} s to stop during the ready wait\n{m.output()}"
    assert rc == 0, m.output()
    assert not is_mounted(mountpoint)
    wait_until(lambda: not processes_mentioning(str(mountpoint)), 2, "no driver left")
    no_traceback(m)


def test_ready_timeout_does_not_overshoot(impl, black_hole, mountpoint, env, start_mount):
    m = start_mount(s3_mount_args("obsctl-hang", mountpoint, impl, black_hole, ready_timeout=4), env)
    # the ready timeout runs from the driver's spawn: take the moment its process appears
    wait_until(lambda: processes_mentioning(str(mountpoint), exclude=[m.pid]), 20, "the driver to start", interval=0.01)
    spawned = time.time()
    rc = m.wait(30)
    took = m.exited_at - spawned
    assert rc == 1, m.output()
    assert "ready timeout of 4 s" in m.stderr, m.output()
    # 4 s timeout + stopping the stuck driver (SIGTERM, SIGKILL 0.5 s later) + exit
    assert took < 4 + 1.2, f"gave up {took:.2f} s after the spawn with a 4 s ready timeout\n{m.output()}"
    assert not is_mounted(mountpoint)
    wait_until(lambda: not processes_mentioning(str(mountpoint)), 2, "no driver left")


def test_refused_driver_option_fails_at_once(impl, bucket, s3_server, mountpoint, env, start_mount):
    m = start_mount(s3_mount_args(bucket, mountpoint, impl, s3_server.endpoint, None,
                                  "-o", "obsctl_no_such_option=1"), env)
    rc = m.wait(30)
    took = m.exited_at - m.started_at
    assert rc == 1, m.output()
    assert took < 3.0, f"took {took:.2f} s to report a refused option\n{m.output()}"
    assert not is_mounted(mountpoint)
    no_traceback(m)


def test_missing_driver_binary_fails_at_once(impl, bucket, s3_server, mountpoint, env, tmp_path, start_mount):
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("fusermount3", "fusermount", "umount", "mount"):
        path = subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True, text=True,
                              check=False).stdout.strip()
        if path:
            os.symlink(path, bare / tool)
    m = start_mount(s3_mount_args(bucket, mountpoint, impl, s3_server.endpoint), {**env, "PATH": str(bare)})
    rc = m.wait(30)
    took = m.exited_at - m.started_at
    assert rc == 1, m.output()
    # the message names the program and how to install it (the role variable)
    assert re.search(rf"{impl}: not found on PATH .*install it with role obsctl\.observability\.fuse_driver "
                     rf"\(fuse_driver_distro_drivers: \[{impl}\]\)", m.stderr), m.output()
    assert took < 3.0, f"took {took:.2f} s to report a missing binary\n{m.output()}"
    no_traceback(m)


# -- 3. SIGTERM with the mount busy, collector down ----------------------------


def test_sigterm_with_busy_mount_names_the_holders(impl, bucket, s3_server, mountpoint, env,
                                                   telemetry_toml, start_mount):
    down = f"http://127.0.0.1:{closed_port()}"
    tel = telemetry_toml(export_interval_seconds=30, metrics_endpoint=down, traces_endpoint=down)
    m = start_mount(s3_mount_args(bucket, mountpoint, impl, s3_server.endpoint, tel), env)
    m.wait_ready(30)
    holder = subprocess.Popen(["sleep", "60"], cwd=mountpoint)
    reader = open(mountpoint / "hello.txt", "rb")
    try:
        driver = status_entry(env, mountpoint)["driver_pid"]
        sent = time.monotonic()
        m.signal(signal.SIGTERM)
        rc = m.wait(30)
        took = time.monotonic() - sent
        assert rc == 0, m.output()
        # BUSY_WAIT (3 s) + SIGTERM to the driver + final export against a dead collector (3 s)
        assert took < 9, f"stop with a busy mount took {took:.2f} s\n{m.output()}"
        busy = [l.text for l in m.stderr_lines if "is busy, held by" in l.text]
        assert busy, m.output()
        assert f"sleep[{holder.pid}] (cwd)" in busy[0], busy
        assert re.search(rf"\[{os.getpid()}\] \(fd \d+\)", busy[0]), busy
        assert "detached lazily" in m.stderr, m.output()
        assert not is_mounted(mountpoint)
        assert not pid_alive(driver)
        no_traceback(m)
    finally:
        with contextlib.suppress(OSError):  # ENOTCONN: documented, the driver is gone
            reader.close()
        holder.kill()
        holder.wait()


# -- 4. kill -9 of the supervisor ------------------------------------------------


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
def test_supervisor_kill9_then_unmount_recovers(busy, impl, bucket, s3_server, mountpoint, env, start_mount):
    m = start_mount(s3_mount_args(bucket, mountpoint, impl, s3_server.endpoint, None, "--name", "k9"), env)
    m.wait_ready(30)
    holder = subprocess.Popen(["sleep", "60"], cwd=mountpoint) if busy else None
    try:
        driver = status_entry(env, mountpoint)["driver_pid"]
        m.kill()  # SIGKILL: no cleanup code of obsctl runs
        # the driver gets SIGTERM from the kernel (PR_SET_PDEATHSIG); it unmounts itself unless busy
        wait_until(lambda: not pid_alive(driver), 10, f"driver {driver} to exit after its supervisor")
        st = status_entry(env, mountpoint)
        assert st is not None and st["state"] == "dead" and st["health"] != "ok", st
        assert st["name"] == "k9"
        table = run_obsctl("status", env=env)
        assert re.search(rf"^k9\s+{re.escape(str(mountpoint))}\s.*\bdead\b", table.stdout, re.M), table.stdout
        res = run_obsctl("unmount", str(mountpoint), env=env, timeout=60)
        assert res.returncode == 0, res
        assert "Traceback" not in res.stderr
        if busy and "busy" in res.stderr:  # s3fs (libfuse) detaches itself lazily on SIGTERM; rclone does not
            assert f"sleep[{holder.pid}] (cwd)" in res.stderr, res
            assert "retrying for 0 s" in res.stderr, res  # a dead mount: nothing to wait for
        assert not is_mounted(mountpoint)
        assert status_entry(env, mountpoint) is None
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()


def test_supervisor_and_driver_kill9_dead_mount_recovered_by_next_mount(impl, bucket, s3_server, mountpoint,
                                                                        env, start_mount):
    m = start_mount(s3_mount_args(bucket, mountpoint, impl, s3_server.endpoint), env)
    m.wait_ready(30)
    driver = status_entry(env, mountpoint)["driver_pid"]
    os.kill(m.pid, signal.SIGSTOP)  # freeze obsctl so it cannot restart the driver
    os.kill(driver, signal.SIGKILL)
    m.kill()
    wait_until(lambda: not pid_alive(driver), 10, "driver gone")
    assert is_mounted(mountpoint), "expected the dead FUSE mount to stay"
    st = status_entry(env, mountpoint)
    assert st["state"] == "dead" and st["health"] == "stale", st
    again = start_mount(s3_mount_args(bucket, mountpoint, impl, s3_server.endpoint), env)
    again.wait_ready(30)
    assert "recovered" in again.stderr, again.output()
    assert (mountpoint / "hello.txt").read_bytes()
    assert status_entry(env, mountpoint)["health"] == "ok"
    assert again.stop(30) == 0, again.output()
    assert not is_mounted(mountpoint)


# -- 5. exit codes ---------------------------------------------------------------


def test_unusable_mountpoint_is_usage_error(impl, bucket, s3_server, tmp_path, mountpoint, env, start_mount):
    res = run_obsctl("mount", *s3_mount_args(bucket, tmp_path / "absent", impl, s3_server.endpoint), env=env)
    assert res.returncode == 2 and "does not exist" in res.stderr, res
    m = start_mount(s3_mount_args(bucket, mountpoint, impl, s3_server.endpoint), env)
    m.wait_ready(30)
    res = run_obsctl("mount", *s3_mount_args(bucket, mountpoint, impl, s3_server.endpoint), env=env)
    assert res.returncode == 2 and f"is claimed by another obsctl (pid {m.pid})" in res.stderr, res
    assert m.stop(30) == 0
