"""RcloneLogCollector over real rclone 1.60 ``-vv --use-json-log`` captures.

Fixtures: tests/fixtures/rclone/{ok,write400,auth403}/rclone.log, made by
tests/fixtures/capture.sh: ls, read of a 1048576-byte file, write of a
200000-byte file, stat of a missing file.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from obsctl.collectors.logtime import parse_time
from obsctl.collectors.rclone_log import RcloneLogCollector, error_type
from obsctl.instruments import MountAttributes
from support.metrics import in_memory
from support.metrics import points as metric_points

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rclone"
READ_SIZE = 1048576
WRITE_SIZE = 200000
ATTRS = MountAttributes(bucket="obsctl-fixture", impl="rclone", mountpoint="/mnt/fixture")


def make():
    return in_memory(ATTRS)


def points(reader):
    return metric_points(reader, ATTRS)


def feed_file(collector, path):
    with open(path) as handle:
        for line in handle:
            collector.feed(line.rstrip("\n"))


def ops(pts):
    return {dict(k[1])["opcode"]: v for k, v in pts.items() if k[0] == "obsctl_fs_ops"}


def errors(pts):
    return {dict(k[1])["error_type"]: v for k, v in pts.items() if k[0] == "obsctl_errors"}


# scenario -> (ops by opcode, errors by type, read bytes, write bytes)
CASES = {
    "ok": (
        {"getattr": 5, "create": 1, "lookup": 5, "readdir": 2, "open": 1, "flush": 3,
         "read": 8, "release": 2, "write": 48},
        {}, READ_SIZE, WRITE_SIZE),
    # the written bytes reached rclone; the upload failed at Flush (EIO)
    "write400": (
        {"getattr": 5, "create": 1, "lookup": 5, "readdir": 2, "open": 1, "flush": 3,
         "read": 8, "release": 2, "write": 48},
        {"eio": 1}, READ_SIZE, WRITE_SIZE),
    # 4 Lookup + 1 ReadDirAll answered SignatureDoesNotMatch (403) -> EIO
    "auth403": ({"getattr": 2, "lookup": 4, "readdir": 1}, {"eio": 5}, None, None),
}


@pytest.mark.parametrize("scenario", sorted(CASES))
def test_capture(scenario):
    want_ops, want_errors, want_read, want_write = CASES[scenario]
    reader, ins = make()
    collector = RcloneLogCollector(ins)
    feed_file(collector, FIXTURES / scenario / "rclone.log")
    pts = points(reader)
    assert ops(pts) == want_ops
    assert errors(pts) == want_errors  # ENOENT of the 2 lookups is not an error
    assert pts.get(("obsctl_fs_read_bytes", frozenset())) == want_read
    assert pts.get(("obsctl_fs_write_bytes", frozenset())) == want_write
    # every operation got a latency from its entry/exit pair
    for opcode, count in want_ops.items():
        hist = pts[("obsctl_fs_latency_ms", frozenset({("opcode", opcode)}))]
        assert hist[0] == count
    assert collector.pending == 0 and collector.unmatched_exits == 0


def _exact_latency_sum(path, op):
    """Sum of (exit - entry) over one op, computed independently of the collector."""
    entries, exits = [], []
    for line in open(path):
        rec = json.loads(line)
        if not rec.get("source", "").startswith("mount/"):
            continue
        if rec["msg"].startswith(op + ":"):
            entries.append(datetime.fromisoformat(rec["time"]))
        elif rec["msg"].startswith(">" + op + ":"):
            exits.append(datetime.fromisoformat(rec["time"]))
    assert len(entries) == len(exits)
    total = sum((b - a for a, b in zip(entries, exits)), timedelta())  # exact microseconds
    return total / timedelta(milliseconds=1)


def test_read_latency_sum_is_exact_despite_interleaving():
    """The capture has concurrent Reads on one handle (readahead): FIFO pairing keeps the sum."""
    path = FIXTURES / "ok" / "rclone.log"
    reader, ins = make()
    feed_file(RcloneLogCollector(ins), path)
    count, total = points(reader)[("obsctl_fs_latency_ms", frozenset({("opcode", "read")}))]
    assert count == 8
    assert total == pytest.approx(_exact_latency_sum(path, "Read"), abs=1e-6)


def test_first_read_pair_of_capture():
    """Read offset=131072 entered at .395422, offset=0 at .400024; exits .4007 and .401068."""
    lines = [line for line in open(FIXTURES / "ok" / "rclone.log") if "mount/handle.go" in line
             and ("Read: " in line)][:4]
    reader, ins = make()
    collector = RcloneLogCollector(ins)
    for line in lines:
        collector.feed(line.rstrip("\n"))
    count, total = points(reader)[("obsctl_fs_latency_ms", frozenset({("opcode", "read")}))]
    assert count == 2
    assert total == pytest.approx((0.4007 - 0.395422 + 0.401068 - 0.400024) * 1000, abs=1e-6)
    assert points(reader)[("obsctl_fs_read_bytes", frozenset())] == 2 * 131072


def test_stats_lines_only_with_use_stats():
    path = FIXTURES / "write400" / "rclone.log"
    reader, ins = make()
    collector = RcloneLogCollector(ins)
    feed_file(collector, path)
    assert "rclone_error" not in errors(points(reader))
    assert collector.last_stats["errors"] == 1

    reader, ins = make()
    feed_file(RcloneLogCollector(ins, use_stats=True), path)
    assert errors(points(reader)) == {"eio": 1, "rclone_error": 1}


def test_stats_errors_delta_and_restart():
    reader, ins = make()
    collector = RcloneLogCollector(ins, use_stats=True)
    for n in (1, 1, 3, 0, 2):  # 0: the driver restarted
        collector.feed(json.dumps({"level": "info", "msg": "x", "stats": {"errors": n}}))
    assert errors(points(reader)) == {"rclone_error": 1 + 2 + 2}


def test_pending_map_is_bounded():
    template = ('{"level":"debug","msg":"Lookup: name=\\"x\\"","object":"dir%d/",'
                '"objectType":"*mount.Dir","source":"mount/dir.go:76",'
                '"time":"2026-11-21T08:01:55.293998+00:00"}')
    reader, ins = make()
    collector = RcloneLogCollector(ins, max_pending=100)
    for i in range(1000):
        collector.feed(template % i)
    assert collector.pending == 100
    assert collector.evicted == 900


def test_garbage_and_other_lines_are_ignored():
    reader, ins = make()
    collector = RcloneLogCollector(ins)
    for line in ("", "not json", "[1,2]", '{"msg": 3, "source": "mount/x.go"}',
                 '{"level":"debug","msg":"Mounting on \\"/m\\"","source":"mount/mount.go:86"}',
                 '{"level":"error","msg":"IO error: x","source":"mount/fs.go:105"}'):
        collector.feed(line)
    assert points(reader) == {}


@pytest.mark.parametrize("text,name", [
    ("<nil>", "eio"),  # never called for <nil>; shown for completeness of the default
    ("no such file or directory", "enoent"),
    ("permission denied", "eacces"),
    ("directory not empty", "enotempty"),
    ("SignatureDoesNotMatch: The request signature ...\n\tstatus code: 403", "eio"),
])
def test_error_type(text, name):
    assert error_type(text) == name


@pytest.mark.parametrize("value,expected", [
    ("2026-11-21T08:01:55.4007+00:00", 1795248115.4007),
    ("2026-11-21T08:01:55+00:00", 1795248115.0),
    ("2026-11-21T09:01:55.5+01:00", 1795248115.5),
    ("2026-11-21T08:01:55.458Z", 1795248115.458),
    ("garbage", None),
])
def test_parse_time(value, expected):
    got = parse_time(value)
    assert got == (None if expected is None else pytest.approx(expected, abs=1e-6))


def test_a_1gib_read_counts_every_byte():
    """1 GiB in 131072-byte FUSE reads = 8192 entry/exit pairs, each counted once.

    How fast the log pump does this is bench/live_counters.py's job (a ratio in
    the same run), not a timed test's."""
    entry = [line for line in open(FIXTURES / "ok" / "rclone.log") if '"msg":"Read: len=' in line][0]
    exit_ = [line for line in open(FIXTURES / "ok" / "rclone.log")
             if '"msg":"\\u003eRead: read=' in line][0]
    reader, ins = make()
    collector = RcloneLogCollector(ins)
    for _i in range(8192):
        collector.feed(entry)
        collector.feed(exit_)
    assert points(reader)[("obsctl_fs_read_bytes", frozenset())] == 8192 * 131072
