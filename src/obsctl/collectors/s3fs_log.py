"""Object-store requests, errors and FUSE operations from s3fs's log.

Source: the log of ``s3fs BUCKET MNT -f -o dbglevel=info -o curldbg``
(s3fs 1.90). In foreground mode s3fs writes its log to STDOUT, not stderr
(the capture has an empty stderr.txt): the supervisor must pump both. Every
line starts with a UTC timestamp in milliseconds and a level; real lines are
in tests/fixtures/s3fs/{ok,dbg,auth403}/s3fs.log::

    2026-11-21T07:58:05.458Z [CURL DBG] > GET /obsctl-fixture/data/read-1mib.bin HTTP/1.1
    2026-11-21T07:58:05.458Z [CURL DBG] > Range: bytes=0-1048575
    2026-11-21T07:58:05.460Z [CURL DBG] < HTTP/1.1 206 PARTIAL CONTENT
    2026-11-21T07:58:05.454Z [INF] s3fs.cpp:s3fs_open(2252): [path=/data/read-1mib.bin][flags=0x8000]
    2026-11-21T08:02:01.826Z [DBG] s3fs.cpp:s3fs_read(2325): [path=/data/read-1mib.bin][size=131072][offset=0][pseudo_fd=2]
    2026-11-21T08:02:02.905Z [ERR] curl.cpp:RequestPerform(2363): HTTP response code 403, returning EPERM. ...

What is taken from which line:

* Request: ``[CURL DBG] > METHOD PATH HTTP/x`` (libcurl's request line;
  the other ``> Header: value`` lines are ignored). Response: ``[CURL DBG]
  < HTTP/x CODE REASON``; ``1xx`` (``100 Continue`` before a PUT body) is not
  final and is skipped. curldbg lines carry no request or thread id and
  s3fs runs requests in parallel (``readdir_multi_head``: one HEAD per
  directory entry; parallel multipart parts), so lines of concurrent requests
  interleave. A response is paired with the OLDEST request still waiting
  (FIFO). Concurrent requests are of one kind (all HEAD, all PUT parts, all
  ranged GETs), so the method is right; which of the overlapping requests a
  latency belongs to may be swapped, the sum is exact.
  -> ``record_request(METHOD, response_time - request_time)`` in ms
  (resolution 1 ms: s3fs's timestamps are milliseconds).
* Status >= 400 -> ``add_error("http_CODE")``. Except ``404`` answering a
  ``HEAD``: that is how s3fs looks a name up (``HEAD name``, ``HEAD name/``,
  ``HEAD name_$folder$`` for every stat of a missing file, for every new
  file) and it turns into ENOENT, not a failure; counted only with
  ``count_head_404=True``. The auth403 fixture: one ``403`` (SigV4, wrong
  secret) then five ``500`` (moto's answer to s3fs's SigV2 fallback).
* ``[ERR] ... ### CURLE_NAME`` (s3fs's report of a libcurl failure, from
  s3fs's source; not in the captures) -> ``add_error("curl_name")``; for the
  failures that happen after the request was sent (timeout, empty reply,
  receive error, partial file) the oldest waiting request is dropped too.
  Requests that never get a response are dropped after ``max_age_s`` and
  beyond ``max_pending``.
* FUSE operations: s3fs logs each FUSE callback ONCE, at its entry, with no
  exit line, so there is no FUSE latency. At ``dbglevel=info`` the entry
  lines of getattr, open, opendir, readdir, flush, release, create, unlink,
  mkdir, rename, truncate, chmod, ... are ``[INF] s3fs.cpp:s3fs_OP(LINE):``
  with no indentation (nested internal calls are indented) -> ``record_fs_op(OP)``
  without latency. ``s3fs_init``/``s3fs_destroy``/``s3fs_check_service``
  are mount lifecycle, not counted.
* Reads and writes are logged only at ``dbglevel=dbg``:
  ``[DBG] s3fs.cpp:s3fs_read(..): [path=..][size=N][offset=..][pseudo_fd=..]``
  and ``s3fs_write`` alike -> ``record_fs_op("read"|"write")`` and
  ``add_read_bytes(N)`` / ``add_write_bytes(N)``. N is the size the kernel
  ASKED for (s3fs logs no result), so for reads it is an upper bound
  (page-rounded at end of file); for writes it is what was written unless
  the write failed. At ``info`` s3fs gives no FUSE read/write count or size
  at all: use :class:`obsctl.collectors.proc_io.ProcIoCollector` for bytes.
  ``dbg`` costs, measured on the capture (same operations): 1169 lines /
  117 kB instead of 709 lines / 64 kB. Per FUSE read 3 more lines
  (``s3fs_read``, ``GetExistFdEntity``, ``FdEntity::Read``), per FUSE write
  4 (``s3fs_write``, ``GetExistFdEntity``, ``Write``, ``WriteMixMultipart``),
  ~110 bytes each, plus permission-check lines per operation: ~3 MB of log
  per GiB read in 128 KiB FUSE reads, but ~100 MB per GiB written by an
  application that writes 4 KiB at a time, all of it parsed on the log pump.
"""

from __future__ import annotations

import re
from collections import deque

from obsctl.collectors import LogCollector
from obsctl.collectors.logtime import elapsed_ms, parse_time_parts
from obsctl.instruments import Instruments


_REQUEST = re.compile(r"> ([A-Z]+) \S+ HTTP/")
_RESPONSE = re.compile(r"< HTTP/[\d.]+ (\d{3})")
_CURLE = re.compile(r"### (CURLE_[A-Z_]+)")
_SIZE = re.compile(r"\[size=(\d+)\]")

#: FUSE callbacks logged by s3fs that are not file-system operations.
LIFECYCLE_OPS = frozenset({"init", "destroy", "check_service", "exit_fuseloop"})

#: libcurl failures after which the request that was sent gets no response.
_SENT_FAILURES = frozenset({
    "CURLE_OPERATION_TIMEDOUT", "CURLE_GOT_NOTHING", "CURLE_RECV_ERROR",
    "CURLE_PARTIAL_FILE", "CURLE_SEND_ERROR",
})


class S3fsLogCollector(LogCollector):
    """Parses s3fs's ``-f -o dbglevel=info|dbg -o curldbg`` log (see module doc).

    Args:
        instruments: where to record.
        count_head_404: count ``404`` answers to ``HEAD`` as ``http_404``.
        max_pending: bound of requests waiting for their response.
        max_age_s: a request waiting longer than this (by log time) is dropped.

    Attributes:
        pending: requests waiting for their response.
        dropped: requests dropped without a response.
    """

    def __init__(
        self,
        instruments: Instruments,
        count_head_404: bool = False,
        max_pending: int = 1000,
        max_age_s: float = 300.0,
    ) -> None:
        super().__init__(instruments)
        self.count_head_404 = count_head_404
        self.max_pending = max_pending
        self.max_age_s = max_age_s
        self._pending: deque[tuple[str, tuple[float, float] | None]] = deque()
        self.dropped = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _feed(self, line: str) -> None:
        # "2026-11-21T07:58:05.458Z [CURL DBG] > GET ..." ; the timestamp is
        # absent when s3fs logs to syslog.
        start = line.find(" [")
        if start < 0:
            return
        end = line.find("] ", start)
        if end < 0:
            return
        level = line[start + 2:end]
        rest = line[end + 2:]
        if level == "CURL DBG":
            first = rest[:1]
            if first == ">":
                match = _REQUEST.match(rest)
                if match:
                    self._on_request(match.group(1), parse_time_parts(line[:start]) if start else None)
            elif first == "<" and rest.startswith("< HTTP/"):
                match = _RESPONSE.match(rest)
                if match:
                    self._on_response(int(match.group(1)),
                                      parse_time_parts(line[:start]) if start else None)
            return
        if rest.startswith("s3fs.cpp:s3fs_"):
            paren = rest.find("(", 14)
            if paren < 0:
                return
            op = rest[14:paren]
            if op == "read" or op == "write":
                match = _SIZE.search(rest)
                if match is None:
                    return
                self.instruments.record_fs_op(op)
                if op == "read":
                    self.instruments.add_read_bytes(int(match.group(1)))
                else:
                    self.instruments.add_write_bytes(int(match.group(1)))
            elif level == "INF" and op not in LIFECYCLE_OPS:
                self.instruments.record_fs_op(op)
            return
        if level == "ERR" and "### CURLE_" in rest:
            match = _CURLE.search(rest)
            if match:
                name = match.group(1)
                self.instruments.add_error("curl_" + name[len("CURLE_"):].lower())
                if name in _SENT_FAILURES and self._pending:
                    self._pending.popleft()
                    self.dropped += 1

    def _on_request(self, method: str, when: tuple[float, float] | None) -> None:
        pending = self._pending
        if when is not None:
            while pending and pending[0][1] is not None and elapsed_ms(pending[0][1], when) > self.max_age_s * 1000.0:
                pending.popleft()
                self.dropped += 1
        pending.append((method, when))
        while len(pending) > self.max_pending:
            pending.popleft()
            self.dropped += 1

    def _on_response(self, status: int, when: tuple[float, float] | None) -> None:
        if status < 200:  # 100 Continue and other interim answers
            return
        method = ""
        if self._pending:
            method, started = self._pending.popleft()
            if started is not None and when is not None:
                self.instruments.record_request(method, elapsed_ms(started, when))
        if status >= 400:
            if status == 404 and method == "HEAD" and not self.count_head_404:
                return
            self.instruments.add_error("http_%d" % status)
