"""``obsctl top`` in a real terminal (tmux) against real mounts under load.

Two mounts run under ``obsctl mount``: rclone on the loopback moto server
(whose debug log gives FUSE operations and bytes) and bindfs through
``--impl generic``. A reader thread keeps reading a 4 MiB object through
the rclone mount (``--vfs-cache-mode off``: every read goes to rclone) and
a file through bindfs. tmux runs ``obsctl top`` in a 300x60 pane;
``capture-pane`` must show both mount names, non-zero read MiB/s and
operations/s on the rclone row, and a header clock that moves (the frame
refreshes). ``obsctl top --once`` and ``--json`` are run without a terminal.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from obsctl.sources import kernel_complete

from support.obsctl import (
    force_cleanup, obsctl_command, obsctl_env, require_driver, s3_mount_args, write_telemetry_toml,
)

BIG = os.urandom(4 * 1024 * 1024)
CLOCK = re.compile(r"obsctl top\s+(\d\d:\d\d:\d\d)")


def _row(text: str, name: str) -> list[str] | None:
    """The whitespace-split table line that starts with the mount name."""
    for line in text.splitlines():
        tokens = line.split()
        if tokens and tokens[0] == name:
            return tokens
    return None


def _loaded(tokens: list[str] | None) -> bool:
    """READ MiB/s (column 5) and OPS/s (column 7) both numbers > 0."""
    if not tokens or len(tokens) < 7:
        return False
    try:
        return float(tokens[4]) > 0 and float(tokens[6]) > 0
    except ValueError:
        return False


class Tmux:
    """A private tmux server (its own -L socket) running one command."""

    def __init__(self, env: dict[str, str]) -> None:
        self.socket = f"top-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.env = env

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", "-L", self.socket, *args], env=self.env, capture_output=True,
                              text=True, timeout=30, check=False, stdin=subprocess.DEVNULL)

    def start(self, command: list[str], status_file: Path) -> None:
        """Run ``command`` in a new session; its exit status goes to ``status_file``.

        tmux 3.3a sometimes marks the pane dead on the pty's EOF before it
        reaps the process and then never fills in #{pane_dead_status}, so the
        status is recorded by a shell around the command. The shell traps
        SIGINT (a handler, reset to the default in the child at exec) so
        Ctrl-C reaches obsctl and the shell still writes the status.
        """
        script = f"trap : INT; {' '.join(shlex.quote(c) for c in command)}; echo $? > {shlex.quote(str(status_file))}"
        res = self.run("-f", "/dev/null", "new-session", "-d", "-s", "top", "-x", "300", "-y", "60",
                       f"sh -c {shlex.quote(script)}")
        assert res.returncode == 0, res.stderr
        res = self.run("set-option", "-t", "top", "remain-on-exit", "on")
        assert res.returncode == 0, res.stderr

    def capture(self) -> str:
        res = self.run("capture-pane", "-p", "-t", "top")
        assert res.returncode == 0, res.stderr
        return res.stdout

    def kill(self) -> None:
        self.run("kill-server")


@pytest.fixture
def two_mounts(tmp_path, s3_server, bucket, start_mount):
    """rclone (moto) + bindfs (generic) under obsctl, mount names top-rclone
    and top-bindfs, with a reader thread loading both; yields (env, mp_rclone,
    mp_bindfs)."""
    require_driver("rclone")
    require_driver("generic")
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install tmux)")
    s3_server.client().put_object(Bucket=bucket, Key="big.bin", Body=BIG)
    runtime = tmp_path / "run"
    runtime.mkdir(exist_ok=True)
    env = obsctl_env(runtime, s3_server.access_key, s3_server.secret_key)
    tel = write_telemetry_toml(tmp_path / "telemetry.toml", mode="none")
    mp_rclone = tmp_path / "mnt"  # the start_mount fixture's cleanup covers this one
    mp_rclone.mkdir(exist_ok=True)
    mp_bindfs, src = tmp_path / "mnt-bindfs", tmp_path / "src"
    mp_bindfs.mkdir()
    src.mkdir()
    (src / "file.bin").write_bytes(BIG)
    stop = threading.Event()
    try:
        start_mount(s3_mount_args(bucket, mp_rclone, "rclone", s3_server.endpoint, tel,
                                  "--name", "top-rclone", "--cache-mode", "off"), env).wait_ready(30)
        start_mount(["local-src", str(mp_bindfs), "--impl", "generic", "--name", "top-bindfs",
                     "--telemetry-config", str(tel), "--ready-timeout", "20",
                     "--", "bindfs", "-f", str(src), str(mp_bindfs)], env).wait_ready(30)

        def load() -> None:
            while not stop.is_set():
                for path in (mp_rclone / "big.bin", mp_bindfs / "file.bin"):
                    with open(path, "rb") as handle:
                        while handle.read(1 << 20) and not stop.is_set():
                            pass
                    os.stat(path)
                time.sleep(0.05)

        threading.Thread(target=load, name="top-load", daemon=True).start()
        yield env, mp_rclone, mp_bindfs
    finally:
        stop.set()
        time.sleep(0.2)
        force_cleanup(mp_bindfs)


#: This kernel pairs fuse_request_send/_end (6.18+) and tracefs is usable:
#: the mounts' kernel source then also names the requesting processes.
KERNEL_PAIRED = kernel_complete()


def test_top_live_in_tmux(two_mounts, tmp_path):
    env, mp_rclone, mp_bindfs = two_mounts
    tmux = Tmux({**env, "TERM": "xterm-256color"})
    status_file = tmp_path / "top.status"
    tmux.start([*obsctl_command(), "top"], status_file)
    try:
        deadline = time.monotonic() + 30
        screen = ""
        while time.monotonic() < deadline:
            screen = tmux.capture()
            if _loaded(_row(screen, "top-rclone")) and _row(screen, "top-bindfs"):
                break
            time.sleep(0.5)
        rclone, bindfs = _row(screen, "top-rclone"), _row(screen, "top-bindfs")
        assert _loaded(rclone), f"no read MiB/s and ops/s > 0 for top-rclone within 30 s:\n{screen}"
        assert rclone[1] == str(mp_rclone) and rclone[2] == "rclone" and rclone[3] == "ready/ok", rclone
        assert bindfs and bindfs[1] == str(mp_bindfs) and bindfs[2] == "generic", screen
        assert "\x1b" not in screen  # capture-pane -p without -e: the text as seen
        assert re.search(r"\bread \d+ [\d.]+/[\d.]+", screen), f"no busiest-opcode line for read:\n{screen}"
        if KERNEL_PAIRED:
            # The kernel source names the requesting task: this test's load thread.
            assert re.search(r"\[\d+\] \d+", " ".join(rclone)), f"no requester on the rclone row:\n{screen}"
        else:
            assert rclone[-4:] == ["n/a", "(kernel", "source", "off)"], rclone  # no requesters key

        first = CLOCK.search(screen)
        assert first, screen
        time.sleep(2.2)
        again = tmux.capture()
        second = CLOCK.search(again)
        assert second and second.group(1) != first.group(1), f"the frame did not refresh:\n{again}"
        assert _row(again, "top-rclone"), again

        tmux.run("send-keys", "-t", "top", "C-c")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not status_file.exists():
            time.sleep(0.2)
        time.sleep(0.2)  # the shell's echo may still be writing
        status = status_file.read_text().strip() if status_file.exists() else None
        assert status == "0", f"obsctl top did not exit 0 on Ctrl-C within 10 s (exit status: {status!r})"
    finally:
        tmux.kill()


def test_top_once_and_json_without_terminal(two_mounts):
    env, mp_rclone, _mp_bindfs = two_mounts
    command = [*obsctl_command(), "top"]
    deadline = time.monotonic() + 30
    rows: list[dict] = []
    while time.monotonic() < deadline:
        res = subprocess.run([*command, "--json"], env=env, capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL, check=False)
        assert res.returncode == 0, res.stderr
        rows = json.loads(res.stdout)
        rclone = [r for r in rows if r["name"] == "top-rclone"]
        if rclone and (rclone[0]["read_mib_s"] or 0) > 0:
            break
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == {"top-rclone", "top-bindfs"}, rows
    rclone = by_name["top-rclone"]
    assert rclone["mountpoint"] == str(mp_rclone) and rclone["state"] == "ready"
    assert rclone["read_mib_s"] > 0 and rclone["ops_per_s"] > 0 and rclone["interval_s"] > 0, rclone
    read = [o for o in rclone["opcodes"] if o["opcode"] == "read"]
    assert read and read[0]["ops_per_s"] > 0, rclone["opcodes"]
    assert read[0]["p50_ms"] is not None and 0 < read[0]["p50_ms"] <= read[0]["p99_ms"], read
    if KERNEL_PAIRED:
        # The busiest requester of the rclone mount is this process's load
        # thread (the kernel's send event names the requesting task: comm[tid]).
        assert rclone["requesters"], rclone
        assert any(r["requester"].startswith(("python", "pytest")) and r["requests_per_s"] > 0
                   for r in rclone["requesters"]), rclone["requesters"]
    else:
        assert rclone["requesters"] is None  # no kernel source in this state
    bindfs = by_name["top-bindfs"]
    assert bindfs["driver_read_mib_s"] is not None and bindfs["driver_read_mib_s"] > 0, bindfs

    res = subprocess.run([*command, "--once"], env=env, capture_output=True, text=True, timeout=30,
                         stdin=subprocess.DEVNULL, check=False)
    assert res.returncode == 0, res.stderr
    assert "\x1b" not in res.stdout, repr(res.stdout)
    assert _row(res.stdout, "top-bindfs"), res.stdout
    assert _loaded(_row(res.stdout, "top-rclone")), res.stdout
    assert all(line == line.rstrip() for line in res.stdout.splitlines()), "trailing blanks in --once"
    assert ("n/a (kernel source off)" in res.stdout) != KERNEL_PAIRED, res.stdout
