"""FuseConnCollector over real mountinfo and fusectl copies.

Fixtures: tests/fixtures/mountinfo/live.txt (rclone, s3fs and bindfs mounted
at the paths in mountpoints.txt) and tests/fixtures/sys/fs/fuse/connections/
N/waiting for those three mounts (tests/fixtures/capture.sh).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from obsctl.collectors.fuse_conn import FuseConnCollector
from obsctl.instruments import MountAttributes
from support.metrics import data_points, in_memory

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LIVE = str(FIXTURES / "mountinfo" / "live.txt")
MOUNTPOINTS = dict(line.split(" ", 1) for line in
                   (FIXTURES / "mountinfo" / "mountpoints.txt").read_text().splitlines())


def make(mountpoint):
    return in_memory(MountAttributes("obsctl-fixture", "x", mountpoint))


def observed(reader):
    return [(labels, value) for _m, labels, value in data_points(reader, "obsctl_fuse_requests_waiting")]


@pytest.mark.parametrize("driver,connection", [("rclone", "45"), ("s3fs", "40"), ("bindfs", "42")])
def test_live_mounts(driver, connection):
    mountpoint = MOUNTPOINTS[driver]
    reader, ins = make(mountpoint)
    collector = FuseConnCollector(ins, mountpoint, sys_path=str(FIXTURES / "sys"),
                                  mountinfo_path=LIVE)
    collector.poll()
    assert collector.connection == connection
    assert collector.waiting == 0  # idle mounts in the capture
    assert observed(reader) == [({"mountpoint": mountpoint}, 0)]


def test_waiting_value_is_read(tmp_path):
    mountpoint = MOUNTPOINTS["rclone"]
    shutil.copytree(FIXTURES / "sys", tmp_path / "sys")
    (tmp_path / "sys/fs/fuse/connections/45/waiting").write_text("7\n")
    reader, ins = make(mountpoint)
    collector = FuseConnCollector(ins, mountpoint, sys_path=str(tmp_path / "sys"),
                                  mountinfo_path=LIVE)
    collector.poll()
    assert observed(reader) == [({"mountpoint": mountpoint}, 7)]


@pytest.mark.parametrize("case", ["fusectl_not_mounted", "not_in_table", "not_fuse",
                                  "no_mountinfo"])
def test_nothing_to_report(tmp_path, case):
    mountpoint = MOUNTPOINTS["rclone"]
    sys_path, mountinfo = str(FIXTURES / "sys"), LIVE
    if case == "fusectl_not_mounted":
        (tmp_path / "fs/fuse/connections").mkdir(parents=True)  # empty, as before mount
        sys_path = str(tmp_path)
    elif case == "not_in_table":
        mountpoint = "/nowhere"
    elif case == "not_fuse":
        mountpoint = "/sys/fs/fuse/connections"  # fusectl, not a FUSE mount
    else:
        mountinfo = str(tmp_path / "missing")
    reader, ins = make(mountpoint)
    collector = FuseConnCollector(ins, mountpoint, sys_path=sys_path, mountinfo_path=mountinfo)
    collector.poll()
    assert collector.waiting is None
    assert observed(reader) == []


def test_stall_grows_only_while_requests_wait_unanswered(tmp_path):
    """Over a fake clock: waiting > 0 with no FUSE operation but statfs counted -> the stall grows
    and passes STALL_SECONDS; an answered operation or waiting 0 restarts it."""
    from obsctl.config import DEFAULT_STALL_SECONDS as STALL_SECONDS

    mountpoint = MOUNTPOINTS["rclone"]
    shutil.copytree(FIXTURES / "sys", tmp_path / "sys")
    waiting = tmp_path / "sys/fs/fuse/connections/45/waiting"
    now = [1000.0]
    reader, ins = make(mountpoint)
    collector = FuseConnCollector(ins, mountpoint, sys_path=str(tmp_path / "sys"), mountinfo_path=LIVE,
                                  clock=lambda: now[0])

    def poll(waiting_now: int, advance: float) -> float:
        now[0] += advance
        waiting.write_text(f"{waiting_now}\n")
        collector.poll()
        return collector.stalled_seconds

    assert poll(0, 0) == 0 and not collector.stalled
    assert poll(1, 2) == 0  # the stall starts
    ins.record_fs_op("statfs")  # the health probe's own answer is no progress
    assert poll(1, 30) == 30
    assert poll(2, STALL_SECONDS - 29) == STALL_SECONDS + 1 and collector.stalled
    assert [v for _m, _l, v in data_points(reader, "obsctl_fuse_requests_stalled_seconds")] == [STALL_SECONDS + 1]
    assert collector.status() == {"driver_stats": {"fuse": {"waiting": 2, "stalled_seconds": STALL_SECONDS + 1}}}
    ins.record_fs_op("read")  # a request answered: the connection moves
    assert poll(1, 5) == 0 and not collector.stalled
    assert poll(1, 10) == 10
    assert poll(0, 1) == 0  # nothing waits


def test_the_stall_bound_is_the_mounts(tmp_path):
    """``stall_seconds`` (the spec's stall_timeout_seconds) replaces the 60 s default: 3 s of
    requests waiting unanswered is a stall for a mount bound at 3 s, not for the default."""
    from obsctl.config import DEFAULT_STALL_SECONDS as STALL_SECONDS

    mountpoint = MOUNTPOINTS["rclone"]
    shutil.copytree(FIXTURES / "sys", tmp_path / "sys")
    waiting = tmp_path / "sys/fs/fuse/connections/45/waiting"
    now = [1000.0]
    collectors = {}
    for bound in (3.0, STALL_SECONDS):
        _reader, ins = make(mountpoint)
        collectors[bound] = FuseConnCollector(ins, mountpoint, sys_path=str(tmp_path / "sys"), mountinfo_path=LIVE,
                                              clock=lambda: now[0], stall_seconds=bound)
    waiting.write_text("1\n")
    for collector in collectors.values():
        collector.poll()  # the stall starts
    now[0] += 3.0
    assert not any(c.stalled for c in collectors.values())  # 3 s is not past 3 s
    now[0] += 0.5
    assert collectors[3.0].stalled and not collectors[STALL_SECONDS].stalled
