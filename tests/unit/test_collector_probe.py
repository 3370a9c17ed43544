"""MountProbe over real mountinfo copies: live, stale (driver killed -9), missing, hung.

Fixtures: tests/fixtures/mountinfo/{live,stale}.txt and stale_stat.txt (what
stat(1) said on the stale rclone mount) from tests/fixtures/capture.sh.
"""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import pytest

from obsctl.collectors.probe import MountProbe
from obsctl.instruments import MountAttributes
from support.metrics import data_points, in_memory

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mountinfo"
MOUNTPOINTS = dict(line.split(" ", 1) for line in
                   (FIXTURES / "mountpoints.txt").read_text().splitlines())


def make(mountpoint):
    attrs = MountAttributes("obsctl-fixture", "rclone", mountpoint)
    return (*in_memory(attrs), attrs)


def observed(reader):
    return [(labels, value) for _m, labels, value in data_points(reader, "obsctl_mount_up")]


def stat_ok(path):
    return None


def stat_enotconn(path):
    # what the capture saw: "stat: cannot statx '...': Transport endpoint is not connected"
    assert "Transport endpoint is not connected" in (FIXTURES / "stale_stat.txt").read_text()
    raise OSError(errno.ENOTCONN, "Transport endpoint is not connected", path)


def stat_eacces(path):
    raise OSError(errno.EACCES, "Permission denied", path)


@pytest.mark.parametrize("driver,table,stat,health,up", [
    ("rclone", "live.txt", stat_ok, "ok", 1),
    ("s3fs", "live.txt", stat_ok, "ok", 1),
    ("bindfs", "live.txt", stat_ok, "ok", 1),
    ("rclone", "stale.txt", stat_enotconn, "stale", 0),
    ("rclone", "live.txt", stat_eacces, "ok", 1),  # the daemon answered
    ("/not/mounted", "live.txt", stat_ok, "missing", 0),
])
def test_health(driver, table, stat, health, up):
    mountpoint = MOUNTPOINTS.get(driver, driver)
    reader, ins, attrs = make(mountpoint)
    probe = MountProbe(ins, mountpoint, mountinfo_path=str(FIXTURES / table), stat=stat)
    assert observed(reader) == []  # nothing before the first poll
    probe.poll()
    assert probe.health == health
    assert probe.up is (up == 1)
    assert observed(reader) == [(attrs.with_mountpoint(), up)]


def test_hung_daemon_is_bounded():
    mountpoint = MOUNTPOINTS["rclone"]
    release = threading.Event()
    calls = []

    def stat_blocks(path):
        calls.append(path)
        release.wait(10)

    reader, ins, attrs = make(mountpoint)
    probe = MountProbe(ins, mountpoint, timeout=0.1,
                       mountinfo_path=str(FIXTURES / "live.txt"), stat=stat_blocks)
    probe.poll()
    assert probe.health == "hung"
    probe.poll()  # still blocked: no second thread
    assert probe.health == "hung" and len(calls) == 1
    assert observed(reader) == [(attrs.with_mountpoint(), 0)]
    release.set()
    probe._probe._attempt.done(2)
    probe.poll()
    assert len(calls) == 2
    assert probe.health == "ok"
    assert observed(reader) == [(attrs.with_mountpoint(), 1)]


def test_unreadable_mount_table():
    reader, ins, attrs = make("/m")
    probe = MountProbe(ins, "/m", mountinfo_path="/nonexistent/mountinfo", stat=stat_ok)
    probe.poll()
    assert probe.health == "error"
    assert observed(reader) == [(attrs.with_mountpoint(), 0)]


def test_mark_wins_over_a_poll_that_started_before_it(tmp_path):
    """The supervisor marks the mount down while a poll (from before the driver died) is running:
    the poll's ``ok`` must not overwrite ``down``; the next poll probes again."""
    reader, ins, _attrs = make(str(tmp_path))
    table = tmp_path / "mountinfo"
    table.write_text(f"36 35 0:63 / {tmp_path} rw - fuse.rclone r:b rw\n")
    entered, release = threading.Event(), threading.Event()

    def slow_ok(path):
        entered.set()
        release.wait(5)

    probe = MountProbe(ins, str(tmp_path), timeout=5, mountinfo_path=str(table), stat=slow_ok)
    poller = threading.Thread(target=probe.poll)
    poller.start()
    assert entered.wait(5)
    probe.mark("down")
    release.set()
    poller.join(5)
    assert probe.health == "down" and [v for _l, v in observed(reader)] == [0]
    probe.stat = stat_ok
    probe.poll()
    assert probe.health == "ok" and [v for _l, v in observed(reader)] == [1]
