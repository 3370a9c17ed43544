"""S3fsLogCollector over real s3fs 1.90 ``-f -o dbglevel=info|dbg -o curldbg`` logs.

Fixtures: tests/fixtures/s3fs/{ok,dbg,auth403}/s3fs.log (tests/fixtures/capture.sh):
ls, read of a 1048576-byte file, write of a 200000-byte file, stat of a
missing file; auth403 is a start with a wrong secret.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from obsctl.collectors.s3fs_log import S3fsLogCollector
from obsctl.instruments import MountAttributes
from support.metrics import in_memory
from support.metrics import points as metric_points

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "s3fs"
READ_SIZE = 1048576
WRITE_SIZE = 200000
ATTRS = MountAttributes(bucket="obsctl-fixture", impl="s3fs", mountpoint="/mnt/fixture")


def make():
    return in_memory(ATTRS)


def points(reader):
    return metric_points(reader, ATTRS)


def by(pts, metric, label):
    return {dict(k[1])[label]: v for k, v in pts.items() if k[0] == metric}


def run(scenario, **kwargs):
    reader, ins = make()
    collector = S3fsLogCollector(ins, **kwargs)
    with open(FIXTURES / scenario / "s3fs.log") as handle:
        for line in handle:
            collector.feed(line.rstrip("\n"))
    return collector, points(reader)


def grep_requests(scenario):
    """Requests per method, counted independently with a regex."""
    counts = {}
    for line in open(FIXTURES / scenario / "s3fs.log"):
        match = re.search(r"\[CURL DBG\] > ([A-Z]+) /\S* HTTP/1\.1$", line.rstrip("\n"))
        if match:
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return counts


INFO_OPS = {"getattr": 7, "opendir": 2, "readdir": 2, "open": 2, "flush": 3, "release": 2}

# scenario -> (requests per method, errors, fs ops, read bytes, write bytes)
CASES = {
    # at info: no s3fs_read/s3fs_write lines -> no bytes, no read/write ops
    "ok": ({"GET": 6, "HEAD": 13, "PUT": 2}, {}, INFO_OPS, None, None),
    "dbg": ({"GET": 6, "HEAD": 13, "PUT": 2}, {},
            {**INFO_OPS, "read": 8, "write": 48}, READ_SIZE, WRITE_SIZE),
    # SigV4 with a wrong secret: 403; then s3fs's SigV2 fallback: moto 500, 4 retries
    "auth403": ({"GET": 6}, {"http_403": 1, "http_500": 5}, {}, None, None),
}


@pytest.mark.parametrize("scenario", sorted(CASES))
def test_capture(scenario):
    want_requests, want_errors, want_ops, want_read, want_write = CASES[scenario]
    collector, pts = run(scenario)
    assert grep_requests(scenario) == want_requests
    durations = by(pts, "obsctl_operation_duration_ms", "opcode")
    assert {method: hist[0] for method, hist in durations.items()} == want_requests
    assert by(pts, "obsctl_errors", "error_type") == want_errors
    assert by(pts, "obsctl_fs_ops", "opcode") == want_ops
    assert pts.get(("obsctl_fs_read_bytes", frozenset())) == want_read
    assert pts.get(("obsctl_fs_write_bytes", frozenset())) == want_write
    assert collector.pending == 0 and collector.dropped == 0


def test_head_404_only_on_request():
    """The ok capture has HEAD 404s (name lookups); they count only with count_head_404."""
    n404 = sum(1 for line in open(FIXTURES / "ok" / "s3fs.log")
               if "[CURL DBG] < HTTP/1.1 404" in line)
    assert n404 > 0
    _ignored, pts = run("ok", count_head_404=True)
    assert by(pts, "obsctl_errors", "error_type") == {"http_404": n404}


def test_get_latency_of_the_1mib_read():
    """The ranged GET of data/read-1mib.bin in the ok capture, paired by hand."""
    lines = open(FIXTURES / "ok" / "s3fs.log").read().splitlines()
    start = next(i for i, line in enumerate(lines)
                 if "[CURL DBG] > GET /obsctl-fixture/data/read-1mib.bin" in line)
    end = next(i for i in range(start, len(lines)) if "[CURL DBG] < HTTP/1.1 206" in lines[i])
    sent = float(lines[start][17:23])
    answered = float(lines[end][17:23])
    reader, ins = make()
    collector = S3fsLogCollector(ins)
    for line in lines[start:end + 1]:
        collector.feed(line)
    hist = by(points(reader), "obsctl_operation_duration_ms", "opcode")["GET"]
    assert hist == (1, pytest.approx((answered - sent) * 1000, abs=1e-6))


def test_interim_100_continue_is_skipped():
    lines = [
        "2026-11-21T07:58:05.477Z [CURL DBG] > PUT /obsctl-fixture/written.bin HTTP/1.1",
        "2026-11-21T07:58:05.479Z [CURL DBG] < HTTP/1.1 100 Continue",
        "2026-11-21T07:58:05.479Z [CURL DBG] < HTTP/1.1 100 Continue",
        "2026-11-21T07:58:05.480Z [CURL DBG] < HTTP/1.1 200 OK",
    ]
    reader, ins = make()
    collector = S3fsLogCollector(ins)
    for line in lines:
        collector.feed(line)
    assert by(points(reader), "obsctl_operation_duration_ms", "opcode")["PUT"] == (
        1, pytest.approx(3.0, abs=1e-6))


def test_fifo_pairing_of_concurrent_heads():
    """readdir_multi_head: 3 HEADs sent, answers interleaved (lines from the ok capture shape)."""
    lines = [
        "2026-11-21T07:58:05.429Z [CURL DBG] > HEAD /obsctl-fixture/hello.txt HTTP/1.1",
        "2026-11-21T07:58:05.430Z [CURL DBG] > HEAD /obsctl-fixture/data/ HTTP/1.1",
        "2026-11-21T07:58:05.430Z [CURL DBG] > HEAD /obsctl-fixture/written.bin HTTP/1.1",
        "2026-11-21T07:58:05.431Z [CURL DBG] < HTTP/1.1 404 NOT FOUND",
        "2026-11-21T07:58:05.434Z [CURL DBG] < HTTP/1.1 200 OK",
        "2026-11-21T07:58:05.436Z [CURL DBG] < HTTP/1.1 200 OK",
    ]
    reader, ins = make()
    collector = S3fsLogCollector(ins)
    for line in lines:
        collector.feed(line)
    count, total = by(points(reader), "obsctl_operation_duration_ms", "opcode")["HEAD"]
    assert count == 3
    assert total == pytest.approx((0.431 + 0.434 + 0.436 - 0.429 - 0.430 - 0.430) * 1000, abs=1e-6)


def test_curl_failure_and_stale_requests_are_dropped():
    reader, ins = make()
    collector = S3fsLogCollector(ins, max_age_s=60)
    collector.feed("2026-11-21T08:00:00.000Z [CURL DBG] > GET /b/x HTTP/1.1")
    collector.feed("2026-11-21T08:00:30.000Z [ERR] curl.cpp:RequestPerform(2400): "
                   "### CURLE_OPERATION_TIMEDOUT")
    assert collector.pending == 0 and collector.dropped == 1
    collector.feed("2026-11-21T08:01:00.000Z [CURL DBG] > GET /b/y HTTP/1.1")
    collector.feed("2026-11-21T08:03:00.000Z [CURL DBG] > GET /b/z HTTP/1.1")  # y: 120 s old
    assert collector.pending == 1 and collector.dropped == 2
    assert by(points(reader), "obsctl_errors", "error_type") == {"curl_operation_timedout": 1}


def test_garbage_never_raises():
    reader, ins = make()
    collector = S3fsLogCollector(ins)
    for line in ("", "x", "[", " [] ", "bad [CURL DBG] < HTTP/1.1 500 X",
                 "2026 [INF] s3fs.cpp:s3fs_read(1): no size", "[DBG] s3fs.cpp:s3fs_"):
        collector.feed(line)
    # the timestamp-less 500 still counts as an error, with no latency
    assert by(points(reader), "obsctl_errors", "error_type") == {"http_500": 1}
