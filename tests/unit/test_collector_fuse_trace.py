"""FuseTraceCollector over real trace_pipe captures (tests/fixtures/fuse_trace/).

bindfs-6.18.txt was captured on this machine's kernel by
tests/fixtures/fuse_trace/capture.sh: stat of a missing name, cat of a 6-byte
file, a 300000-byte write and read, chmod 000, an EACCES open, rm, ls.
bindfs-6.12-unpaired.txt is the same with ``req 0`` on every send line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from obsctl.collectors import fuse_trace
from obsctl.collectors.fuse_trace import (FuseTraceCollector, KernelSupport, detect_support, errno_label,
                                          kernel_pairs, opcode_label, remove_stale_instances)
from obsctl.instruments import MountAttributes
from support.metrics import data_points, in_memory
from support.metrics import points as metric_points

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fuse_trace"
DEFAULT_TRACEFS_EVENTS = os.path.join(fuse_trace.DEFAULT_TRACEFS, "events")
ATTRS = MountAttributes(bucket="", impl="generic", mountpoint="/mnt/fixture")
PAIRED = KernelSupport("paired", "test", "/nonexistent")
UNPAIRED = KernelSupport("unpaired", "test", "/nonexistent")
#: Opcodes of the capture, counted with grep -o '(FUSE_[A-Z]*)' | sort | uniq -c.
OPS = {"create": 1, "flush": 1, "getattr": 6, "getxattr": 73, "lookup": 3, "open": 3, "opendir": 1,
       "read": 4, "readdir": 2, "release": 3, "releasedir": 1, "setattr": 1, "unlink": 1, "write": 74}
#: Send events by task, counted with
#: grep fuse_request_send | sed -E 's/^ *(.+)-([0-9]+) +\[.*/\1[\2]/' | sort | uniq -c.
REQUESTERS = {"capture.sh[20325]": 2, "cat[20324]": 5, "cat[20338]": 7, "cat[20345]": 1, "chmod[20343]": 2,
              "head[20325]": 148, "ls[20347]": 5, "rm[20346]": 2, "stat[20322]": 2}
#: 6 bytes of "hello\n" + 300000 bytes.
READ_BYTES = 300006
WRITE_BYTES = 300000


def collector(support, **kwargs):
    reader, ins = in_memory(ATTRS)
    return reader, FuseTraceCollector(ins, "/mnt/fixture", tracefs="/nonexistent", support=support, **kwargs)


def summary(reader):
    pts = metric_points(reader, ATTRS)
    ops = {dict(k[1])["opcode"]: v for k, v in pts.items() if k[0] == "obsctl_fs_ops"}
    lat = {dict(k[1])["opcode"]: v for k, v in pts.items() if k[0] == "obsctl_fs_latency_ms"}
    errors = {dict(k[1])["error_type"]: v for k, v in pts.items() if k[0] == "obsctl_errors"}
    read = pts.get(("obsctl_fs_read_bytes", frozenset()), 0)
    write = pts.get(("obsctl_fs_write_bytes", frozenset()), 0)
    return ops, lat, errors, read, write


def test_paired_capture_gives_ops_latency_bytes_errors():
    reader, col = collector(PAIRED)
    col.feed_chunk((FIXTURES / "bindfs-6.18.txt").read_bytes())
    ops, lat, errors, read, write = summary(reader)
    assert ops == OPS
    assert {op: count for op, (count, _sum) in lat.items()} == OPS
    assert all(total > 0 for _count, total in lat.values())
    # ENOENT of LOOKUP, ENOSYS of FLUSH and ENODATA of GETXATTR are protocol answers
    assert errors == {"eacces": 1}
    assert (read, write) == (READ_BYTES, WRITE_BYTES)
    assert col.pending == 0 and col.unmatched == 0 and col.events == 348


def test_latency_is_end_minus_send_in_ms():
    reader, col = collector(PAIRED)
    col.feed_chunk(b"  stat-1 [000] ...1.   10.000100: fuse_request_send: connection 40 req 4 opcode 3 "
                   b"(FUSE_GETATTR) len 56 \n"
                   b"  bindfs-2 [001] .....   10.002600: fuse_request_end: connection 40 req 4 len 120 error 0\n")
    _ops, lat, *_rest = summary(reader)
    assert lat == {"getattr": (1, pytest.approx(2.5))}


@pytest.mark.parametrize("size", [1, 7, 100, 4096])
def test_lines_split_across_chunks(size):
    data = (FIXTURES / "bindfs-6.18.txt").read_bytes()
    reader, col = collector(PAIRED)
    for i in range(0, len(data), size):
        col.feed_chunk(data[i:i + size])
    assert summary(reader)[0] == OPS
    assert summary(reader)[3:] == (READ_BYTES, WRITE_BYTES)


def test_unpaired_kernel_counts_and_errors_only():
    reader, col = collector(UNPAIRED)
    col.feed_chunk((FIXTURES / "bindfs-6.12-unpaired.txt").read_bytes())
    ops, lat, errors, read, write = summary(reader)
    assert ops == OPS and lat == {}
    assert errors == {"eacces": 1}
    assert (read, write) == (0, 0)


def test_req_0_seen_at_run_time_switches_to_unpaired():
    reader, col = collector(PAIRED)
    col.feed_chunk((FIXTURES / "bindfs-6.12-unpaired.txt").read_bytes())
    assert col.support.level == "unpaired"
    ops, lat, errors, *_rest = summary(reader)
    assert ops == OPS and lat == {} and errors == {"eacces": 1}


def test_pending_requests_are_bounded():
    reader, col = collector(PAIRED, max_pending=100)
    sends = b"".join(b"x-1 [000] ...1. 1.000000: fuse_request_send: connection 40 req %d opcode 15 "
                     b"(FUSE_READ) len 80\n" % (2 * i) for i in range(1, 10001))
    col.feed_chunk(sends)
    assert col.pending == 100 and col.evicted == 9900


def test_unknown_lines_are_tolerated():
    reader, col = collector(PAIRED)
    col.feed_chunk(b"garbage\n\x00\xff\n# tracer: nop\n"
                   b"x-1 [000] ...1. 1.000000: fuse_request_send: connection 40 req 2 opcode 99 (99) len 40\n"
                   b"x-1 [000] ...1. 1.000000: other_event: connection 40 req 2\n"
                   b"y-2 [000] ..... 1.000010: fuse_request_end: connection 40 req 2 len 16 error -999\n")
    ops, _lat, errors, *_rest = summary(reader)
    assert ops == {"99": 1} and errors == {"errno_999": 1}


def test_backlog_degrades_to_counting_then_recovers():
    data = (FIXTURES / "bindfs-6.18.txt").read_bytes()
    reader, col = collector(PAIRED, recover_after=2)
    col.feed_chunk(data, full=True)
    assert col.degraded and col.degraded_chunks == 1
    ops, lat, errors, read, write = summary(reader)
    assert ops == OPS and lat == {} and errors == {} and (read, write) == (0, 0)
    # every request is still counted (at its send), and the ends were read
    assert (col.sends, col.ends) == (174, 174)
    col.note_cycle(0, 0.0, 0.05)
    col.note_cycle(0, 0.0, 0.05)
    assert not col.degraded


def test_busy_reader_degrades_and_recovers_below_half_the_trigger_rate():
    """The trigger is the reader's own CPU share of a read cycle (a real
    backlog), not the size of one read (trace_pipe returns at most ~8 KiB)."""
    _reader, col = collector(PAIRED, recover_after=3)
    col.note_cycle(8192 * 40, 0.010, 0.05)  # 20 % of a core: keeps up
    assert not col.degraded
    col.note_cycle(8192 * 200, 0.030, 0.05)  # 60 %: falling behind
    assert col.degraded and col.degradations == 1
    trigger = 8192 * 200 / 0.05
    for _cycle in range(10):  # still the same rate: stays in counting mode
        col.note_cycle(int(trigger * 0.05 * 0.9), 0.002, 0.05)
    assert col.degraded
    for _cycle in range(2):
        col.note_cycle(int(trigger * 0.05 * 0.4), 0.001, 0.05)
    assert col.degraded  # two calm cycles of three
    col.note_cycle(int(trigger * 0.05 * 0.4), 0.001, 0.05)
    assert not col.degraded


def test_capped_read_cycle_degrades():
    _reader, col = collector(PAIRED)
    col.note_cycle(8192 * fuse_trace.MAX_READS, 0.001, 0.05, capped=True)
    assert col.degraded


def _overwrite(lines, start, n):
    """The capture with ``n`` lines from ``start`` gone, as the kernel's ring buffer overwrites a run of events."""
    return b"".join(lines[:start] + lines[start + n:])


@pytest.mark.parametrize("start,n", [(1, 1), (2, 1), (10, 37), (100, 120), (200, 148), (3, 345)])
@pytest.mark.parametrize("support", [PAIRED, UNPAIRED])
def test_counted_plus_lost_is_the_kernel_count(tmp_path, start, n, support):
    """Events overwritten in the ring buffer (``overrun``): the requests whose
    send was lost are in ``obsctl_kernel_events_lost_total{part="count"}``, and
    counted + lost = the 174 requests of the capture, whatever run was lost.
    (Not the instance's very first send: its end would look like the end of a
    request sent before the instance existed; the buffer is empty then, so
    the kernel cannot overwrite it.)"""
    lines = (FIXTURES / ("bindfs-6.18.txt" if support is PAIRED else "bindfs-6.12-unpaired.txt")).read_bytes()
    lines = lines.splitlines(keepends=True)
    sends_gone = sum(1 for line in lines[start:start + n] if b"fuse_request_send:" in line)
    reader, col = collector(support)
    col.feed_chunk(_overwrite(lines, start, n))
    (tmp_path / "per_cpu" / "cpu0").mkdir(parents=True)
    (tmp_path / "per_cpu" / "cpu0" / "stats").write_text(
        f"entries: 0\noverrun: {n}\ncommit overrun: 0\nbytes: 0\n"
        "oldest event ts:     0.000000\nnow ts:   227.120668\ndropped events: 0\nread events: 10\n")
    col.instance = str(tmp_path)
    col._read_lost()  # a loss: counting mode, the pending sends will get no end
    assert col.degraded and col.lost == n
    ops = summary(reader)[0]
    assert sum(ops.values()) == col.sends == 174 - sends_gone
    assert col.requests_lost == sends_gone
    assert sum(ops.values()) + col.requests_lost == 174
    lost = {dict(k[1])["part"]: v for k, v in metric_points(reader, ATTRS).items()
            if k[0] == "obsctl_kernel_events_lost"}
    assert lost.get("count", 0) == sends_gone
    if support is PAIRED:
        # the requests whose end was lost are counted, without latency: "detail"
        def reqs(kind, part):
            return {re.search(rb"req (\d+)", line).group(1) for line in part if kind in line}
        gone = lines[start:start + n]
        ends_gone = reqs(b"_end:", gone) - reqs(b"_send:", gone)
        assert lost.get("detail", 0) == col.details_lost == col.sends - col.matched >= len(ends_gone)


def test_lost_count_never_overstates_while_requests_are_in_flight():
    lines = (FIXTURES / "bindfs-6.18.txt").read_bytes().splitlines(keepends=True)
    sends = [line for line in lines if b"fuse_request_send:" in line]
    _reader, col = collector(PAIRED)
    col.feed_chunk(b"".join(sends[:50]))  # 50 requests in flight, nothing lost
    col._account()
    assert col.requests_lost == 0


def test_ends_of_requests_sent_before_the_instance_are_not_losses():
    _reader, col = collector(PAIRED)
    col.feed_chunk(b"  bindfs-2 [001] .....   10.000000: fuse_request_end: connection 40 req 2 len 16 error 0\n"
                   b"  stat-1 [000] ...1.   10.000100: fuse_request_send: connection 40 req 4 opcode 3 "
                   b"(FUSE_GETATTR) len 56 \n"
                   b"  bindfs-2 [001] .....   10.002600: fuse_request_end: connection 40 req 4 len 120 error 0\n")
    col._account()
    assert col.requests_lost == 0 and col.sends == 1 and col.matched == 1


def test_requester_with_spaces_and_dashes_in_its_name():
    _reader, col = collector(PAIRED)
    col.feed_chunk(b"  my tool-2-x-31 [000] ...1.   10.000100: fuse_request_send: connection 40 req 4 opcode 3 "
                   b"(FUSE_GETATTR) len 56 \n")
    assert col.instruments.requesters == {"my tool-2-x[31]": 1}


def test_labels():
    assert opcode_label("FUSE_READDIRPLUS") == "readdir"
    assert opcode_label("FUSE_UNLINK") == "unlink"
    assert errno_label(-13) == "eacces" and errno_label(-2) == "enoent"
    assert kernel_pairs("6.18.44-fc") and kernel_pairs("7.0.1") and not kernel_pairs("6.12.1")


def _fake_tracefs(root, with_events=True):
    (root / "instances").mkdir(parents=True)
    (root / "events").mkdir()
    if with_events:
        for ev in fuse_trace.EVENTS:
            (root / "events" / "fuse" / ev).mkdir(parents=True)
    return str(root)


def test_detect_support(tmp_path, monkeypatch):
    monkeypatch.delenv("OBSCTL_FUSE_TRACE", raising=False)
    full = _fake_tracefs(tmp_path / "a")
    assert detect_support(full, release="6.18.44").level == "paired"
    assert detect_support(full, release="6.12.3").level == "unpaired"
    none = detect_support(_fake_tracefs(tmp_path / "b", with_events=False), release="6.1.0")
    assert none.level == "none" and "6.12" in none.reason
    missing = detect_support(str(tmp_path / "c"), release="6.18.0")
    assert missing.level == "none" and "tracefs is not mounted" in missing.reason
    monkeypatch.setenv("OBSCTL_FUSE_TRACE", "off")
    assert detect_support(full, release="6.18.44").level == "none"


def test_unavailable_kernel_warns_once(caplog, monkeypatch):
    monkeypatch.setattr(fuse_trace, "_warned", False)
    none = KernelSupport("none", "no tracepoints", "/nonexistent")
    for _i in range(3):
        reader, col = collector(none)
        col.poll()
        col.close()
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "no tracepoints" in warnings[0].getMessage()


def test_stale_instances_of_dead_obsctl_are_removed(tmp_path):
    root = _fake_tracefs(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    for name in (f"obsctl-{dead_pid}-40", f"obsctl-{os.getpid()}-41", "someone-else", "obsctl-capture-1"):
        os.mkdir(os.path.join(root, "instances", name))
    assert remove_stale_instances(root) == [f"obsctl-{dead_pid}-40"]
    assert sorted(os.listdir(os.path.join(root, "instances"))) == sorted(
        [f"obsctl-{os.getpid()}-41", "someone-else", "obsctl-capture-1"])


def test_histogram_buckets_are_the_shared_ones():
    reader, col = collector(PAIRED)
    col.feed_chunk((FIXTURES / "bindfs-6.18.txt").read_bytes())
    hist = [m for m, _l, _v in data_points(reader, "obsctl_fs_latency_ms")]
    assert hist


def test_kernel_overrun_is_counted_as_lost_and_degrades(tmp_path):
    """The per_cpu/cpuN/stats format of this kernel's instances (``overrun: N``)."""
    reader, col = collector(PAIRED)
    for cpu, overrun in (("cpu0", 7), ("cpu1", 5)):
        (tmp_path / "per_cpu" / cpu).mkdir(parents=True)
        (tmp_path / "per_cpu" / cpu / "stats").write_text(
            f"entries: 0\noverrun: {overrun}\ncommit overrun: 0\nbytes: 0\n"
            "oldest event ts:     0.000000\nnow ts:   227.120668\ndropped events: 0\nread events: 10\n")
    (tmp_path / "per_cpu" / "cpu1" / "stats").write_text(
        "entries: 0\noverrun: 5\ncommit overrun: 0\nbytes: 0\n"
        "oldest event ts:     0.000000\nnow ts:   227.120668\ndropped events: 3\nread events: 10\n")
    col.instance = str(tmp_path)
    col._read_lost()
    assert col.lost == 15 and col.degraded


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.isdir(DEFAULT_TRACEFS_EVENTS),
                    reason="needs root and a mounted tracefs to drop to an unprivileged user")
def test_unprivileged_obsctl_gets_one_warning_and_no_failure():
    """The real tracefs as user nobody: detection says why, the collector warns
    once and records nothing; nothing raises."""
    script = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.WARNING, stream=sys.stderr)\n"
        "from obsctl.collectors.fuse_trace import FuseTraceCollector\n"
        "from obsctl.instruments import MountAttributes\n"
        "from support.metrics import in_memory\n"
        "for _ in range(3):\n"
        "    reader, ins = in_memory(MountAttributes('', 'generic', '/'))\n"
        "    col = FuseTraceCollector(ins, '/')\n"
        "    col.poll(); col.close()\n"
        "print(col.support.level, col.support.reason)\n")
    tests_dir = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=tests_dir)
    env.pop("OBSCTL_FUSE_TRACE", None)
    proc = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                           sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("none no permission"), proc.stdout
    assert proc.stderr.count("kernel FUSE events unavailable") == 1, proc.stderr


def test_requesters_are_the_tasks_of_send_events():
    """The task of each send line (comm-tid before the CPU field) is counted,
    for ``obsctl top``; counts from grep over the capture."""
    _reader, col = collector(PAIRED)
    col.feed_chunk((FIXTURES / "bindfs-6.18.txt").read_bytes())
    requesters = col.instruments.requesters
    assert requesters is not None and sum(requesters.values()) == sum(OPS.values())
    assert requesters == REQUESTERS


def test_no_requesters_without_send_events():
    _reader, col = collector(PAIRED)
    col.feed_chunk(b"          bindfs-20272   [001] .....   871.731424: fuse_request_end: "
                   b"connection 61 req 4 len 120 error 0\n")
    assert col.instruments.requesters is None


@pytest.mark.parametrize("opcode, name, failure", [
    ("lookup", "enoent", False), ("open", "enoent", True), ("getattr", "enoent", True),
    ("getxattr", "enodata", False), ("getxattr", "enotsup", False), ("listxattr", "enotsup", False),
    ("read", "enotsup", True), ("flush", "enosys", False), ("write", "eio", True), ("open", "eacces", True),
])
def test_one_rule_for_protocol_answers(opcode, name, failure):
    """The rule the kernel collector and rclone's log collector share (obsctl.collectors)."""
    from obsctl.collectors import is_failure
    assert is_failure(opcode, name) is failure


@pytest.mark.parametrize("impl, errors", [("rclone", {}), ("s3fs", {"eio": 1})])
def test_driver_answers_are_not_errors(impl, errors):
    """rclone answers GETXATTR(security.capability), which the kernel sends before a write,
    with EIO (captured: a write through rclone 1.60.1 on kernel 6.18): its own protocol
    answer, not a failed operation. The same answer from another driver is an error."""
    from obsctl.drivers import DRIVERS

    reader, col = collector(PAIRED, driver_answers=DRIVERS[impl].protocol_answers)
    col.feed_chunk((FIXTURES / "rclone-write-getxattr-eio.txt").read_bytes())
    ops, _lat, counted, _read, write = summary(reader)
    assert ops == {"lookup": 1, "create": 1, "ioctl": 1, "getxattr": 1, "write": 1, "flush": 1}
    assert counted == errors
    assert write > 0
