"""A malformed /proc/self/mountinfo line is skipped with one log line, never a traceback:
the parser (obsctl.mounttable) and ``obsctl status``
over tests/fixtures/mountinfo/malformed.mountinfo (real lines of live.txt, a truncated
line and a line without the " - " separator)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from obsctl import mounttable, statefile
from obsctl.cli import main

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "mountinfo" / "malformed.mountinfo"
FIXTURE_MOUNTPOINT = "/tmp/obsctl-malformed/mnt"
TRUNCATED = "50 27 0:46 / /tmp/obsctl-malf"
NO_SEPARATOR = FIXTURE.read_text().splitlines()[7]


@pytest.mark.parametrize("line,why", [
    (TRUNCATED, "no ' - ' separator after 6 fields"),
    (NO_SEPARATOR, "no ' - ' separator after 6 fields"),
    ("52 27 0:48 / /m rw - fuse.rclone", "no file system type and source after ' - '"),
    ("5x 27 0:48 / /m rw - fuse.rclone src rw", "mount ids are not numbers"),
    ("52 27 048 / /m rw - fuse.rclone src rw", "device is not MAJOR:MINOR"),
])
def test_parse_line_says_what_is_wrong(line, why):
    with pytest.raises(ValueError) as err:
        mounttable.parse_line(line)
    assert why in str(err.value) and repr(line) in str(err.value)


def test_parse_skips_bad_lines_once_logged(caplog):
    mounttable._REPORTED.clear()
    with caplog.at_level(logging.WARNING, logger="obsctl.mounttable"):
        mounts = mounttable.read_mounts(str(FIXTURE))
        again = mounttable.read_mounts(str(FIXTURE))
    assert mounts == again
    assert [m.mountpoint for m in mounts] == [
        "/proc", "/sys", "/dev", "/dev/shm", "/dev/pts", "/", FIXTURE_MOUNTPOINT, "/sys/fs/fuse/connections"]
    assert NO_SEPARATOR.split(" ")[4] not in [m.mountpoint for m in mounts]
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2, warned  # one per distinct bad line, not one per read
    assert any(TRUNCATED in w for w in warned) and any("/tmp/obsctl-nosep" in w for w in warned)
    entry = mounttable.find_mount(FIXTURE_MOUNTPOINT, path=str(FIXTURE))
    assert entry is not None and mounttable.fuse_connection(entry) == "48"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_obsctl_status_with_a_malformed_mount_table(tmp_path, monkeypatch, capsys):
    """A dead supervisor's mount, listed in a mount table with bad lines: status shows what the
    mount is (orphaned: in the table and answering), not ``error``, and prints no traceback."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    table = tmp_path / "mountinfo"
    table.write_text(FIXTURE.read_text().replace(FIXTURE_MOUNTPOINT, str(mountpoint)))
    runtime = tmp_path / "run"
    state = {"name": "m", "mountpoint": str(mountpoint), "source": "s3://bucket-one", "impl": "rclone",
             "state": "ready", "pid": _dead_pid(), "health": "ok"}
    statefile.write_state(statefile.state_file_path(str(runtime), str(mountpoint)), state)
    monkeypatch.setenv("OBSCTL_RUNTIME_DIR", str(runtime))
    monkeypatch.setattr(mounttable, "MOUNTINFO_PATH", str(table))  # the injected mount table
    assert main(["status", "--json"]) == 0
    out, err = capsys.readouterr()
    (listed,) = json.loads(out)
    assert listed["state"] == "dead" and listed["health"] == "orphaned"
    assert main(["status"]) == 0
    out, err2 = capsys.readouterr()
    assert "orphaned" in out
    assert "Traceback" not in err + err2
    assert statefile.current_health(str(tmp_path / "elsewhere"), str(table)) == "missing"


def test_a_file_with_no_mountinfo_line_is_not_a_mount_table(tmp_path):
    bad = tmp_path / "mountinfo"
    bad.write_text("not a mount table\n\n")
    with pytest.raises(ValueError, match="not a mount table: no line has the mountinfo shape"):
        mounttable.read_mounts(str(bad))
    assert mounttable.parse("\n \n") == []
