"""FUSE operations, bytes and errors from rclone's ``-vv --use-json-log`` log.

Source: the stderr of ``rclone mount ... -vv --use-json-log`` (rclone 1.60,
``cmd/mount``, the Linux default). Every line is one JSON object::

    {"level":"debug","msg":"Read: len=131072, offset=0",
     "object":"&{Handle:data/read-1mib.bin (r)}","objectType":"*mount.FileHandle",
     "source":"mount/handle.go:27","time":"2026-11-21T08:01:55.400024+00:00"}
    {"level":"debug","msg":">Read: read=131072, err=<nil>",
     "object":"&{Handle:data/read-1mib.bin (r)}","objectType":"*mount.FileHandle",
     "source":"mount/handle.go:36","time":"2026-11-21T08:01:55.4007+00:00"}

(``<``, ``>``, ``&`` are written as ``\\u003c``, ``\\u003e``, ``\\u0026`` in
the raw line; ``json.loads`` undoes that.) Lines captured for real are in
tests/fixtures/rclone/*/rclone.log (tests/fixtures/capture.sh).

What is taken from which line:

* A FUSE operation is a line whose ``source`` starts with ``mount/`` (or,
  without ``source``, whose ``objectType`` starts with ``*mount.``) and whose
  ``msg`` is ``OP: ...`` (entry) or ``>OP: ...`` (exit), ``OP`` one word
  (``Lookup``, ``Attr``, ``ReadDirAll``, ``Open``, ``Create``, ``Read``,
  ``Write``, ``Flush``, ``Release``, ``Setattr``, ``Remove``, ``Rename``,
  ``Mkdir``, ``Fsync`` ...). The ``vfs/`` layer logs its own ``Open:`` and
  ``>Open:`` lines for the same FUSE open: they are ignored, so one FUSE
  operation counts once.
* Entry and exit are paired by ``(object, objectType, OP)``. That key is NOT
  unique: the kernel sends concurrent reads on one handle (readahead) and two
  processes reading one file share the ``object`` text, so the capture has
  ``Read: offset=131072`` logged before ``Read: offset=0`` and both exits
  after. Each key holds a FIFO of entry times and an exit takes the oldest.
  For overlapping operations of one key this may swap which latency belongs
  to which operation, but every operation gets exactly one latency and their
  sum is exact.
* ``latency_ms`` = exit ``time`` - entry ``time`` (RFC 3339, microseconds,
  trailing zeros trimmed by rclone: ``08:01:55.4007+00:00``).
  -> ``record_fs_op(opcode, latency_ms)`` with ``opcode`` from
  :data:`OPCODES` (``Attr`` -> ``getattr``, ``ReadDirAll`` -> ``readdir``,
  otherwise the lower-cased name). An exit without an entry (the entry was
  lost, or evicted, or the collector started mid-operation) still counts the
  operation, without a latency.
* Bytes: ``>Read: read=N, err=...`` -> ``add_read_bytes(N)``;
  ``>Write: written=N, err=...`` -> ``add_write_bytes(N)``. N is what rclone
  returned to the kernel (the entry's ``len=`` is only what was asked).
* Errors: the ``err=`` part of an exit line. ``<nil>`` is success; a system
  error text (``no such file or directory`` ...) maps to its errno name
  (:data:`ERRNO_NAMES`, ``enoent`` ...); anything else (an S3 error such as
  ``SignatureDoesNotMatch: ... status code: 403``) is what rclone's mount
  returns to the kernel as EIO (it logs ``IO error: ...`` for it) -> ``eio``.
  ENOENT from ``Lookup`` is not an error (it is how every stat of a missing
  name and every create of a new file starts) -> not counted.
  -> ``add_error(name)``.
* ``Root`` (called once at mount time) is not a FUSE request: ignored.
* Lines with a ``stats`` member (printed every ``--stats`` interval):
  ``stats.errors`` is rclone's cumulative transfer error count. With
  ``use_stats=True`` its increase -> ``add_error("rclone_error", delta)``.
  Off by default: :class:`obsctl.collectors.rclone_rc.RcloneRcCollector`
  reads the same number from ``core/stats`` and both would count it.

Cost: one ``in`` test for lines that cannot matter, one ``json.loads`` for
the rest; a 1 GiB sequential read is ~8200 Read entry/exit pairs
(131072-byte FUSE reads), well under a second of CPU.

Memory: at most ``max_pending`` entries wait for their exit line; beyond
that the oldest key is dropped (and :attr:`RcloneLogCollector.evicted`
counts them), so a lost exit line cannot leak memory.
"""

from __future__ import annotations

import json
from collections import deque

from obsctl.collectors import LogCollector, is_failure
from obsctl.collectors.logtime import elapsed_ms, parse_time_parts
from obsctl.instruments import Instruments


#: rclone (bazil.org/fuse) method name -> opcode label. Others: lower-cased.
OPCODES: dict[str, str] = {
    "Attr": "getattr",
    "Setattr": "setattr",
    "ReadDirAll": "readdir",
    "Lookup": "lookup",
    "Open": "open",
    "Create": "create",
    "Read": "read",
    "Write": "write",
    "Flush": "flush",
    "Release": "release",
    "Fsync": "fsync",
    "Mkdir": "mkdir",
    "Remove": "remove",
    "Rename": "rename",
    "Link": "link",
    "Symlink": "symlink",
    "Readlink": "readlink",
    "Mknod": "mknod",
    "Getxattr": "getxattr",
    "Listxattr": "listxattr",
    "Setxattr": "setxattr",
    "Removexattr": "removexattr",
    "Statfs": "statfs",
}

#: Operations logged by rclone's mount that are not FUSE requests.
IGNORED_OPS = frozenset({"Root"})

#: Error text (Go's syscall.Errno strings and rclone vfs/fs error values,
#: lower-cased) -> errno-ish error_type. Anything else -> "eio".
ERRNO_NAMES: dict[str, str] = {
    "no such file or directory": "enoent",
    "file does not exist": "enoent",
    "object not found": "enoent",
    "directory not found": "enoent",
    "permission denied": "eacces",
    "operation not permitted": "eperm",
    "file exists": "eexist",
    "file already exists": "eexist",
    "directory not empty": "enotempty",
    "is a directory": "eisdir",
    "not a directory": "enotdir",
    "input/output error": "eio",
    "bad file descriptor": "ebadf",
    "file already closed": "ebadf",
    "invalid argument": "einval",
    "no space left on device": "enospc",
    "read-only file system": "erofs",
    "function not implemented": "enosys",
    "operation not supported": "enotsup",
    "illegal seek": "espipe",
    "transport endpoint is not connected": "enotconn",
    "file name too long": "enametoolong",
    "interrupted system call": "eintr",
    "no data available": "enodata",
    "context canceled": "eintr",
}


def error_type(err: str) -> str:
    """errno-ish name for the ``err=`` text of an rclone exit line."""
    text = err.strip().lower()
    name = ERRNO_NAMES.get(text)
    if name is not None:
        return name
    for known, name in ERRNO_NAMES.items():
        if text.startswith(known):
            return name
    return "eio"


def _int_after(msg: str, marker: str) -> int:
    i = msg.find(marker)
    if i < 0:
        return 0
    i += len(marker)
    j = i
    while j < len(msg) and msg[j].isdigit():
        j += 1
    return int(msg[i:j]) if j > i else 0


class RcloneLogCollector(LogCollector):
    """Pairs rclone's FUSE entry/exit debug lines into operations (see module doc).

    Args:
        instruments: where to record.
        use_stats: count the increase of ``stats.errors`` of ``--stats`` lines
            as ``rclone_error`` (default False: the rc collector does it).
        max_pending: bound of entries waiting for their exit line.

    Attributes:
        pending: number of entries waiting for their exit line.
        evicted: entries dropped because ``max_pending`` was reached.
        unmatched_exits: exit lines without a waiting entry.
        last_stats: the last ``stats`` object seen (dict) or None.
    """

    def __init__(
        self, instruments: Instruments, use_stats: bool = False, max_pending: int = 10000
    ) -> None:
        super().__init__(instruments)
        self.use_stats = use_stats
        self.max_pending = max_pending
        self._pending: dict[tuple[str, str, str], deque[tuple[float, float] | None]] = {}
        self.pending = 0
        self.evicted = 0
        self.unmatched_exits = 0
        self.last_stats: dict | None = None
        self._last_errors: int | None = None

    def _feed(self, line: str) -> None:
        if "mount" not in line and '"stats"' not in line:
            return
        try:
            rec = json.loads(line)
        except ValueError:
            return
        if not isinstance(rec, dict):
            return
        stats = rec.get("stats")
        if isinstance(stats, dict):
            self._on_stats(stats)
            return
        source = rec.get("source")
        if source is not None:
            if not source.startswith("mount/"):
                return
        elif not str(rec.get("objectType", "")).startswith("*mount."):
            return
        self._on_op(rec)

    def _on_op(self, rec: dict) -> None:
        msg = rec.get("msg")
        if not isinstance(msg, str):
            return
        colon = msg.find(":")
        if colon <= 0:
            return
        exiting = msg[0] == ">"
        op = msg[1:colon] if exiting else msg[:colon]
        if not op.isalpha() or not op[0].isupper() or op in IGNORED_OPS:
            return
        key = (str(rec.get("object", "")), str(rec.get("objectType", "")), op)
        when = parse_time_parts(rec.get("time", ""))
        if not exiting:
            self._push(key, when)
            return
        started = self._pop(key)
        latency = None
        if started is not None and when is not None:
            latency = elapsed_ms(started, when)
        ins = self.instruments
        opcode = OPCODES.get(op, op.lower())
        ins.record_fs_op(opcode, latency)
        if op == "Read":
            ins.add_read_bytes(_int_after(msg, "read="))
        elif op == "Write":
            ins.add_write_bytes(_int_after(msg, "written="))
        i = msg.find("err=")
        if i >= 0:
            err = msg[i + 4:]
            if err != "<nil>":
                name = error_type(err)
                if is_failure(opcode, name):
                    ins.add_error(name)

    def _push(self, key: tuple[str, str, str], when: tuple[float, float] | None) -> None:
        queue = self._pending.get(key)
        if queue is None:
            queue = self._pending[key] = deque()
        queue.append(when)
        self.pending += 1
        while self.pending > self.max_pending and self._pending:
            oldest = next(iter(self._pending))
            dropped = self._pending.pop(oldest)
            self.pending -= len(dropped)
            self.evicted += len(dropped)

    def _pop(self, key: tuple[str, str, str]) -> tuple[float, float] | None:
        queue = self._pending.get(key)
        if not queue:
            self.unmatched_exits += 1
            return None
        started = queue.popleft()
        self.pending -= 1
        if not queue:
            del self._pending[key]
        return started

    def _on_stats(self, stats: dict) -> None:
        self.last_stats = stats
        errors = stats.get("errors")
        if not isinstance(errors, int) or isinstance(errors, bool):
            return
        previous = self._last_errors
        self._last_errors = errors
        if not self.use_stats:
            return
        if previous is None:
            delta = errors
        elif errors < previous:  # rclone restarted: its counters start again at 0
            delta = errors
        else:
            delta = errors - previous
        self.instruments.add_error("rclone_error", delta)
