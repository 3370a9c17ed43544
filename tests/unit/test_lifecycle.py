"""Lifecycle pieces without root or FUSE: a small script stands in for the driver,
an injected mount table for /proc/self/mountinfo."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from obsctl import statefile
from obsctl.mountspec import build_mount_spec
from obsctl.drivers import PlanContext
from obsctl.drivers.generic import GenericDriver
from obsctl.logpump import LogPump
from obsctl.procutil import describe_exit, holders, pid_running, same_process, start_time
from obsctl.readiness import Interrupted, MountError, ReadyWait
from obsctl.supervisor import FAILED_SPAN_WAIT
from obsctl.unmount import MountpointError, preflight, stop_process


def spawn(tmp_path: Path, code: str, mountpoint: Path | None = None, timeout: float = 5.0,
          mountinfo: Path | None = None):
    """A python -c CODE "driver" run like the supervisor runs one, with its ReadyWait."""
    mp = mountpoint or tmp_path / "mnt"
    mp.mkdir(exist_ok=True)
    spec = build_mount_spec({"source": "label", "mountpoint": str(mp), "impl": "generic",
                             "command": [sys.executable, "-c", code], "ready_timeout_seconds": timeout})
    driver = GenericDriver()
    plan = driver.plan(spec, None, PlanContext())
    proc = subprocess.Popen(plan.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    pump = LogPump(proc.stdout, driver, [])
    pump.start()
    stop = threading.Event()
    kw = {"mountinfo_path": str(mountinfo)} if mountinfo else {"mountinfo_path": str(tmp_path / "empty")}
    if not mountinfo:
        (tmp_path / "empty").write_text("")
    return ReadyWait(spec, driver, plan, proc, pump, stop, **kw), proc, stop


@contextlib.contextmanager
def running(tmp_path: Path, code: str, *args, **kw):
    """:func:`spawn` whose stand-in driver is always stopped afterwards; yields ``(wait, stop)``."""
    wait, proc, stop = spawn(tmp_path, code, *args, **kw)
    try:
        yield wait, stop
    finally:
        stop_process(proc, exit_wait=0, term_wait=1)


def timed_wait(wait: ReadyWait, raises: type[BaseException] | None = None, match: str | None = None) -> float:
    """Seconds ``wait.wait()`` took; it must raise ``raises`` (matching ``match``), or return when None."""
    t0 = time.monotonic()
    if raises is None:
        wait.wait()
    else:
        with pytest.raises(raises, match=match):
            wait.wait()
    return time.monotonic() - t0


def test_ready_when_the_mount_table_shows_it(tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    (mp / "file").write_text("x")
    table = tmp_path / "mountinfo"
    table.write_text(f"36 35 0:63 / {mp} rw,nosuid,nodev - fuse.bindfs src rw,user_id=0\n")
    with running(tmp_path, "import time; time.sleep(30)", mp, mountinfo=table) as (wait, _stop):
        assert timed_wait(wait) < 2


def test_early_exit_is_reported_at_once_with_the_drivers_error(tmp_path):
    wait, proc, _stop = spawn(tmp_path, "import sys; print('fuse: bad mount option'); sys.exit(3)", timeout=30)
    t0 = time.monotonic()
    with pytest.raises(MountError) as err:
        wait.wait()
    assert time.monotonic() - t0 < 2
    assert "exited with status 3" in str(err.value) and "bad mount option" in str(err.value)


def test_timeout_does_not_overshoot(tmp_path):
    with running(tmp_path, "import time; time.sleep(30)", timeout=0.5) as (wait, _stop):
        assert timed_wait(wait, MountError, match="ready timeout of 0.5 s") < 0.8


def test_stop_request_ends_the_ready_wait_within_a_step(tmp_path):
    with running(tmp_path, "import time; time.sleep(30)", timeout=60) as (wait, stop):
        threading.Timer(0.3, stop.set).start()
        assert timed_wait(wait, Interrupted) < 0.6


def test_stop_request_ends_a_hung_root_check(tmp_path):
    """The mount is in the table but its root never answers (a FIFO stands in for the blocked read)."""
    mp = tmp_path / "mnt"
    mp.mkdir()
    table = tmp_path / "mountinfo"
    table.write_text(f"36 35 0:63 / {mp} rw - fuse.x src rw\n")
    gate = threading.Event()
    from obsctl import readiness

    real_scandir = readiness.os.scandir

    def blocked(path):
        gate.wait(10)
        return real_scandir(path)

    with running(tmp_path, "import time; time.sleep(30)", mp, timeout=60, mountinfo=table) as (wait, stop):
        readiness.os.scandir = blocked
        try:
            threading.Timer(0.3, stop.set).start()
            assert timed_wait(wait, Interrupted) < 0.6
        finally:
            readiness.os.scandir = real_scandir
            gate.set()


def test_stop_process_escalates_to_sigkill(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c",
                             "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                             "print('ready', flush=True); time.sleep(30)"], stdout=subprocess.PIPE)
    proc.stdout.readline()
    t0 = time.monotonic()
    stop_process(proc, exit_wait=0.1, term_wait=0.3)
    assert proc.returncode == -signal.SIGKILL
    assert time.monotonic() - t0 < 2
    assert describe_exit(proc.returncode) == "was killed by SIGKILL"


def test_holders_name_cwd_and_open_files(tmp_path):
    inside = tmp_path / "m"
    inside.mkdir()
    (inside / "f").write_text("x")
    by_cwd = subprocess.Popen(["sleep", "30"], cwd=inside)
    by_fd = subprocess.Popen([sys.executable, "-c", f"f = open({str(inside / 'f')!r}); import time; time.sleep(30)"])
    try:
        deadline = time.monotonic() + 5
        found = []
        while time.monotonic() < deadline:
            found = holders(str(inside))
            if {h.pid for h in found} >= {by_cwd.pid, by_fd.pid}:
                break
            time.sleep(0.05)
        by_pid = {h.pid: h for h in found}
        assert by_pid[by_cwd.pid].how == "cwd" and by_pid[by_cwd.pid].comm == "sleep"
        assert by_pid[by_fd.pid].how.startswith("fd ")
        assert str(by_pid[by_cwd.pid]) == f"sleep[{by_cwd.pid}] (cwd)"
        assert holders(str(tmp_path / "nothing-here")) == []
    finally:
        for p in (by_cwd, by_fd):
            p.kill()
            p.wait()


def test_same_process_rejects_a_recycled_pid():
    me = os.getpid()
    assert pid_running(me) and same_process(me, start_time(me))
    assert not same_process(me, (start_time(me) or 0) + 1)
    assert not same_process(None, None) and not same_process(-1, None)


def test_state_of_a_dead_writer_is_dead_and_never_ok(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    mp = tmp_path / "mnt"
    mp.mkdir()
    path = statefile.state_file_path(str(tmp_path), str(mp))
    statefile.write_state(path, {"name": "n1", "mountpoint": str(mp), "state": "ready", "health": "ok",
                                 "pid": dead.pid})
    (st,) = statefile.read_states(str(tmp_path))
    assert st["state"] == "dead" and st["health"] == "missing" and st["name"] == "n1"
    assert st["state_file"] == path
    assert statefile.state_for(str(tmp_path), str(mp) + "/")["pid"] == dead.pid
    statefile.write_state(path, {"mountpoint": str(mp), "state": "ready", "health": "ok", "pid": os.getpid()})
    assert statefile.read_states(str(tmp_path))[0]["health"] == "ok"
    assert json.loads(Path(path).read_text())["state"] == "ready"
    statefile.remove_state(path)
    assert statefile.read_states(str(tmp_path)) == []


def test_preflight_errors_are_usage_errors(tmp_path):
    with pytest.raises(MountpointError, match="does not exist; create it first"):
        preflight(str(tmp_path / "absent"))
    (tmp_path / "file").write_text("")
    with pytest.raises(MountpointError, match="not a directory"):
        preflight(str(tmp_path / "file"))
    with pytest.raises(MountpointError, match="already a mount point"):
        preflight("/proc")
    with pytest.raises(MountpointError, match="is not empty .*'file'.*--allow-non-empty"):
        preflight(str(tmp_path))
    preflight(str(tmp_path), allow_non_empty=True)
    (tmp_path / "empty").mkdir()
    preflight(str(tmp_path / "empty"))
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    with pytest.raises(MountpointError, match=f"goes through a symlink .*give the resolved path \\({tmp_path}/empty\\)"):
        preflight(str(tmp_path / "link"))
    with pytest.raises(MountpointError, match="goes through a symlink"):
        preflight(str(tmp_path / "link" / "."))


def test_cli_logging_prints_no_traceback(tmp_path):
    code = ("import logging, threading, obsctl.cli as c; c._setup_logging('WARNING');\n"
            "try:\n    1/0\nexcept Exception:\n    logging.getLogger('x').exception('export failed')\n"
            "t = threading.Thread(target=lambda: 1/0, name='worker'); t.start(); t.join()\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False)
    assert "Traceback" not in res.stderr, res.stderr
    assert "export failed (ZeroDivisionError: division by zero)" in res.stderr
    assert "thread worker failed: ZeroDivisionError" in res.stderr


# -- the whole Supervisor, with a stand-in driver and a stand-in fusermount3 ------

FAKE_DRIVER = r"""
import os, signal, sys, time
table, log, mp = os.environ["FAKE_MOUNTINFO"], os.environ["FAKE_LOG"], sys.argv[1]
def note(text):
    with open(log, "a") as fh:
        fh.write(text + "\n")
def present():
    with open(table) as fh:
        return any(line.split()[4] == mp for line in fh if line.strip())
def bye(*_):
    note("driver: SIGTERM")
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
time.sleep(float(os.environ.get("FAKE_DELAY", "0.1")))
with open(table, "a") as fh:
    fh.write(f"36 35 0:99 / {mp} rw - fuse.fake fake rw\n")
note(f"driver {os.getpid()}: mounted")
while present():
    time.sleep(0.02)
note("driver: exit after unmount")
"""

FAKE_FUSERMOUNT = r"""
import os, sys
table, log, mp = os.environ["FAKE_MOUNTINFO"], os.environ["FAKE_LOG"], sys.argv[-1]
with open(table) as fh:
    lines = [line for line in fh if line.strip() and line.split()[4] != mp]
with open(table + ".tmp", "w") as fh:
    fh.writelines(lines)
os.replace(table + ".tmp", table)
with open(log, "a") as fh:
    fh.write("fusermount3 " + " ".join(sys.argv[1:-1]) + "\n")
"""


_RUNNING: list = []


@pytest.fixture
def fake_host(tmp_path, monkeypatch):
    """A mount table file, a fusermount3 on PATH that edits it, and a log of what happened, in order."""
    table, log, bin_dir = tmp_path / "mountinfo", tmp_path / "events.log", tmp_path / "bin"
    table.write_text("")
    log.write_text("")
    bin_dir.mkdir()
    tool = bin_dir / "fusermount3"
    tool.write_text(f"#!{sys.executable}\n{FAKE_FUSERMOUNT}")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_MOUNTINFO", str(table))
    monkeypatch.setenv("FAKE_LOG", str(log))
    yield table, log
    while _RUNNING:  # a failed test must not leave a supervisor running into the next one
        sup, thread = _RUNNING.pop()
        sup.request_stop()
        thread.join(10)


def make_supervisor(tmp_path, table, **spec):
    from obsctl.config import TelemetryConfig
    from obsctl.supervisor import Supervisor

    mp = tmp_path / "mnt"
    mp.mkdir(exist_ok=True)
    data = {"source": "fake", "mountpoint": str(mp), "impl": "generic", "ready_timeout_seconds": 5,
            "command": [sys.executable, "-c", FAKE_DRIVER, str(mp)], **spec}
    return Supervisor(build_mount_spec(data), TelemetryConfig(), None, str(tmp_path / "run"), GenericDriver(),
                      poll_interval=0.2, mountinfo_path=str(table))


def run_in_thread(sup):
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(code=sup.run()), daemon=True)
    thread.start()
    _RUNNING.append((sup, thread))
    return thread, result


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def test_supervisor_crash_restart_with_backoff_and_sigterm_order(tmp_path, fake_host):
    table, log = fake_host
    sup = make_supervisor(tmp_path, table, max_restarts=2)
    thread, result = run_in_thread(sup)
    # supervising: the poller runs once the "mounted" line is out (a death before it is a failed
    # start, exit 1, not a restart: tests/integration/test_operator_mistakes.py)
    wait_for(lambda: sup.observer.state == "ready" and sup.observer.probe is not None and sup.observer.probe.health == "ok"
             and Path(sup.observer.state_path).exists() and sup.observer._poller is not None)
    first = sup.proc.pid
    state = json.loads(Path(sup.observer.state_path).read_text())
    assert state["health"] == "ok" and state["driver_pid"] == first

    os.kill(first, signal.SIGKILL)  # crash: its mount line stays, like a dead FUSE mount
    wait_for(lambda: sup.observer.probe.health == "down", 1.0)
    died = time.monotonic()
    wait_for(lambda: json.loads(Path(sup.observer.state_path).read_text())["health"] == "down", 0.5)
    # "ready" is announced first, then the probe's round says "ok"
    wait_for(lambda: sup.observer.restarts == 1 and sup.observer.state == "ready" and sup.observer.probe.health == "ok")
    assert time.monotonic() - died >= 0.9, "restarted before the 1 s backoff"
    assert sup.proc.pid != first

    sup.request_stop()
    thread.join(10)
    assert result["code"] == 0
    events = log.read_text().splitlines()
    # SIGTERM order: unmount first, then the driver exits by itself; nothing is left mounted
    assert events[-2:] == ["fusermount3 -u", "driver: exit after unmount"], events
    assert table.read_text() == ""
    assert not Path(sup.observer.state_path).exists()


def test_supervisor_gives_up_when_restarts_are_spent(tmp_path, fake_host):
    table, log = fake_host
    sup = make_supervisor(tmp_path, table, max_restarts=0)
    thread, result = run_in_thread(sup)
    # supervising (the poller runs once the "mounted" line is out); a death before that line is a
    # failed start (MountError), tested in tests/integration/test_operator_mistakes.py
    wait_for(lambda: sup.observer._poller is not None)
    os.kill(sup.proc.pid, signal.SIGKILL)
    thread.join(10)
    assert result["code"] == 1 and table.read_text() == ""


def test_supervisor_stop_during_ready_wait(tmp_path, fake_host, monkeypatch):
    table, log = fake_host
    monkeypatch.setenv("FAKE_DELAY", "30")  # never mounts
    sup = make_supervisor(tmp_path, table, ready_timeout_seconds=60)
    thread, result = run_in_thread(sup)
    wait_for(lambda: sup.proc is not None)
    time.sleep(0.2)
    t0 = time.monotonic()
    sup.request_stop()
    thread.join(10)
    assert time.monotonic() - t0 < 1.0
    assert result["code"] == 0 and sup.proc.returncode is not None


def test_supervisor_early_exit_fails_without_waiting(tmp_path, fake_host):
    table, _log = fake_host
    sup = make_supervisor(tmp_path, table, command=[sys.executable, "-c", "print('no such option'); exit(2)"])
    t0 = time.monotonic()
    with pytest.raises(MountError, match="no such option"):
        sup.run()
    assert time.monotonic() - t0 < FAILED_SPAN_WAIT + 1.5


def test_supervisor_missing_binary_fails_at_once(tmp_path, fake_host):
    table, _log = fake_host
    sup = make_supervisor(tmp_path, table, command=[str(tmp_path / "no-such-driver")])
    t0 = time.monotonic()
    with pytest.raises(MountError, match="not found"):
        sup.run()
    assert time.monotonic() - t0 < 0.5


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_recover_orphan_stops_only_the_recorded_driver(tmp_path):
    from obsctl.unmount import recover_orphan

    mp = tmp_path / "mnt"
    mp.mkdir()
    driver = subprocess.Popen(["sleep", "30"])
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        path = statefile.state_file_path(str(tmp_path), str(mp))
        for pid, started in ((stranger.pid, (start_time(stranger.pid) or 0) + 1), (driver.pid, start_time(driver.pid))):
            statefile.write_state(path, {"mountpoint": str(mp), "state": "ready", "pid": _dead_pid(),
                                         "driver_pid": pid, "driver_start": started})
            (state,) = statefile.read_states(str(tmp_path))
            assert state["state"] == "dead" and state["health"] == "missing"
            done = recover_orphan(state)
            assert "removed its state file" in done and not Path(path).exists()
        assert stranger.poll() is None, "a process with another start time (a recycled pid) was signalled"
        assert driver.wait(5) == -signal.SIGTERM
    finally:
        for p in (driver, stranger):
            p.kill()
            p.wait()


def test_next_mount_forgets_a_dead_sidecar_state_without_touching_anything(tmp_path, fake_host):
    table, log = fake_host
    sup = make_supervisor(tmp_path, table)
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        statefile.write_state(sup.observer.state_path, {
            "mountpoint": sup.spec.mountpoint, "state": "observing", "pid": _dead_pid(),
            "driver_pid": bystander.pid, "driver_start": start_time(bystander.pid)})
        sup._recover()
        assert not Path(sup.observer.state_path).exists()
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_next_mount_refuses_a_mountpoint_a_live_obsctl_runs(tmp_path, fake_host):
    table, _log = fake_host
    sup = make_supervisor(tmp_path, table)
    statefile.write_state(sup.observer.state_path, {"mountpoint": sup.spec.mountpoint, "state": "ready", "pid": os.getpid()})
    with pytest.raises(MountpointError, match="already run by obsctl"):
        sup.run()
    assert sup.proc is None


def test_driver_gets_sigterm_when_its_supervisor_is_killed():
    """PR_SET_PDEATHSIG: kill -9 of the spawning process ends the "driver" (here: sleep)."""
    code = ("import os, subprocess, sys, time\n"
            "from obsctl.supervisor import _die_with_parent\n"
            "p = subprocess.Popen(['sleep', '30'], preexec_fn=_die_with_parent(os.getpid()), start_new_session=True)\n"
            "print(p.pid, flush=True)\n"
            "time.sleep(30)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert pid_running(child)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 3
    while pid_running(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not pid_running(child), "the driver outlived its killed supervisor"
