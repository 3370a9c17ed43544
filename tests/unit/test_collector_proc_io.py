"""ProcIoCollector over real /proc/PID/io copies (tests/fixtures/{rclone,s3fs}/*/io)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from obsctl.collectors.proc_io import ProcIoCollector, read_proc_io
from obsctl.instruments import MountAttributes
from support.metrics import data_points, in_memory

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ATTRS = MountAttributes(bucket="obsctl-fixture", impl="rclone", mountpoint="/mnt/fixture")


def make():
    return in_memory(ATTRS)


def observed(reader):
    out = {}
    for metric, labels, value in data_points(reader, "obsctl_driver_io_bytes"):
        assert metric.data.is_monotonic
        assert labels == {"direction": labels["direction"], **ATTRS.base()}
        out[labels["direction"]] = value
    return out


def fake_proc(tmp_path, pid, fixture):
    (tmp_path / str(pid)).mkdir(exist_ok=True)
    shutil.copy(FIXTURES / fixture, tmp_path / str(pid) / "io")


@pytest.mark.parametrize("fixture,rchar,wchar", [
    ("rclone/ok/io", 1318877, 1301149),
    ("rclone/auth403/io", 59623, 16447),
    ("s3fs/ok/io", None, None),
])
def test_read_fixture(fixture, rchar, wchar):
    values = read_proc_io(str(FIXTURES / fixture))
    assert set(values) == {"rchar", "wchar", "syscr", "syscw", "read_bytes", "write_bytes",
                           "cancelled_write_bytes"}
    if rchar is not None:
        assert (values["rchar"], values["wchar"]) == (rchar, wchar)


def test_rclone_after_reading_1mib(tmp_path):
    """rclone read 1048576 bytes from S3 and wrote them to /dev/fuse: rchar, wchar > 1 MiB."""
    fake_proc(tmp_path, 4242, "rclone/ok/io")
    reader, ins = make()
    collector = ProcIoCollector(ins, lambda: 4242, proc=str(tmp_path))
    assert observed(reader) == {"read": 0, "write": 0}  # before the first poll
    collector.poll()
    assert (collector.read_bytes, collector.write_bytes) == (1318877, 1301149)
    assert observed(reader) == {"read": 1318877, "write": 1301149}
    assert collector.read_bytes > 1048576 and collector.write_bytes > 1048576


def test_cumulative_across_restarts(tmp_path):
    fake_proc(tmp_path, 100, "rclone/ok/io")
    fake_proc(tmp_path, 200, "rclone/auth403/io")
    pid = {"value": 100}
    reader, ins = make()
    collector = ProcIoCollector(ins, lambda: pid["value"], proc=str(tmp_path))
    collector.poll()
    pid["value"] = None  # driver down between restarts: keep the values
    collector.poll()
    assert observed(reader) == {"read": 1318877, "write": 1301149}
    pid["value"] = 200
    collector.poll()
    assert observed(reader) == {"read": 1318877 + 59623, "write": 1301149 + 16447}
    assert collector.pid == 200


def test_missing_or_broken_file_keeps_values(tmp_path):
    fake_proc(tmp_path, 100, "rclone/ok/io")
    reader, ins = make()
    collector = ProcIoCollector(ins, lambda: 100, proc=str(tmp_path))
    collector.poll()
    (tmp_path / "100" / "io").write_text("garbage\n")
    collector.poll()
    (tmp_path / "100" / "io").unlink()
    collector.poll()
    assert observed(reader) == {"read": 1318877, "write": 1301149}


def test_pid_getter_raising_is_swallowed(tmp_path):
    reader, ins = make()

    def boom():
        raise RuntimeError("no driver")

    collector = ProcIoCollector(ins, boom, proc=str(tmp_path))
    collector.poll()
    assert collector.read_bytes == 0


def test_real_proc_of_this_process():
    import os
    reader, ins = make()
    collector = ProcIoCollector(ins, os.getpid)
    collector.poll()
    assert collector.pid == os.getpid()
    assert collector.read_bytes > 0
