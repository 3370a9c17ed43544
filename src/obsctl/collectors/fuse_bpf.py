"""FUSE operations, latency, errors, bytes and requesters aggregated in the kernel by eBPF.

The first-choice kernel source (:func:`obsctl.sources.kernel_source`); the
tracefs one (:mod:`obsctl.collectors.fuse_trace`) is the second. The BPF
program (``src/obsctl/bpf/fuse_requests.bpf.c``, compiled into package data
by ``scripts/build-bpf``, never on the target) counts every request of the
FUSE connections obsctl watches in BPF maps; this collector reads the maps
once per poll and records the differences, so its CPU cost depends on the
number of (opcode, bucket, errno, requester) keys, not on the request rate
(except the latency histogram, see
:meth:`~obsctl.instruments.Instruments.record_fs_latency_buckets`).

Per connection N (the N of /sys/fs/fuse/connections/N and of ``0:N`` in
mountinfo, the kernel's ``fc->dev``) and opcode the kernel keeps:

* count of ``fuse_request_end`` -> ``record_fs_op(opcode, n=delta)``;
* latency from the start hook (request queued / sync or background request
  function entered) to ``fuse_request_end``, in the buckets of
  :data:`~obsctl.instruments.LATENCY_BUCKETS_MS` (the loader writes the
  bounds into the ``bounds`` map, so there is one list) with each bucket's
  sum -> ``record_fs_latency_buckets``;
* read bytes: a READ answered with error 0 adds ``out.h.len - 16`` (the reply
  payload) -> ``add_read_bytes``;
* write bytes, counted when the daemon says they are stored: a WRITE answered
  with error 0 adds its payload ``in.h.len - 80`` (header 40 + fuse_write_in
  40) to its file handle's *pending* bytes (the ``pending`` map, per
  connection and ``fh``); a FLUSH or FSYNC answered 0, or the RELEASE, commits
  them -> ``add_write_bytes``; a FLUSH / FSYNC (or RELEASE) answered with an
  error moves them to the refused bytes -> ``add_write_refused_bytes`` (the
  upload the bucket refused: a 403 at close). The tracefs source sees no file
  handle and counts at the WRITE (docs/metrics.md);
* errors by (opcode, errno) -> ``add_error(errno name)`` unless the answer is
  the protocol working (:data:`obsctl.collectors.NOT_FAILURES`, the driver's
  ``protocol_answers``);
* requesting thread (tid and comm at the start hook) -> ``count_requesters``
  (``"comm[tid]"``, as ``obsctl top`` shows them).

One probe per obsctl process, shared by all its collectors; every obsctl
process (one per mount: supervisor or side-car) loads its own. Not one
per host: obsctl has no host daemon to own a shared probe, and a probe
pinned in bpffs would need one (who loads it, who unpins it when the last
mount goes, what happens when two obsctl versions disagree on the map
layout). The programs return at their first map lookup for a connection
nobody in this process watches (the ``conns`` map), so each further mount
adds one early-return program run per FUSE request on the host
(bench/fuse_bpf.py measures the programs' run time with
``kernel.bpf_stats_enabled``).

Hooks (:data:`FAMILIES`, tried in order; the first that loads and attaches
wins): ``tracepoint`` (``tp_btf`` on ``fuse_request_send`` /
``fuse_request_end``, Linux 6.12+, no ftrace needed) and ``fentry``
(``fuse_simple_request`` or ``__fuse_simple_request``,
``fuse_simple_background``, ``fuse_request_end``: exported functions of
fs/fuse/dev.c present from 5.10 on; needs fentry, i.e. BTF and ftrace
direct calls). Without the object file, BTF, libbpf or the privilege to
load (CAP_BPF + CAP_PERFMON, or CAP_SYS_ADMIN): :func:`shared_probe`
returns the reason and the caller uses the tracefs source; one warning per
process.
"""

from __future__ import annotations

import errno as errno_mod
import logging
import os
import struct
import threading
from dataclasses import dataclass
from typing import Any

from obsctl import mounttable
from obsctl import bpf
from obsctl.bpf import libbpf
from obsctl.collectors import PollingCollector, is_failure
from obsctl.collectors.fuse_trace import errno_label, opcode_label
from obsctl.instruments import LATENCY_BUCKETS_MS, Instruments

log = logging.getLogger(__name__)

#: FUSE opcode number -> name, include/uapi/linux/fuse.h ``enum fuse_opcode``
#: (checked against this kernel's BTF by tests/unit/test_collector_fuse_bpf.py).
OPCODE_NAMES: dict[int, str] = {
    1: "FUSE_LOOKUP", 2: "FUSE_FORGET", 3: "FUSE_GETATTR", 4: "FUSE_SETATTR", 5: "FUSE_READLINK",
    6: "FUSE_SYMLINK", 8: "FUSE_MKNOD", 9: "FUSE_MKDIR", 10: "FUSE_UNLINK", 11: "FUSE_RMDIR",
    12: "FUSE_RENAME", 13: "FUSE_LINK", 14: "FUSE_OPEN", 15: "FUSE_READ", 16: "FUSE_WRITE",
    17: "FUSE_STATFS", 18: "FUSE_RELEASE", 20: "FUSE_FSYNC", 21: "FUSE_SETXATTR", 22: "FUSE_GETXATTR",
    23: "FUSE_LISTXATTR", 24: "FUSE_REMOVEXATTR", 25: "FUSE_FLUSH", 26: "FUSE_INIT", 27: "FUSE_OPENDIR",
    28: "FUSE_READDIR", 29: "FUSE_RELEASEDIR", 30: "FUSE_FSYNCDIR", 31: "FUSE_GETLK", 32: "FUSE_SETLK",
    33: "FUSE_SETLKW", 34: "FUSE_ACCESS", 35: "FUSE_CREATE", 36: "FUSE_INTERRUPT", 37: "FUSE_BMAP",
    38: "FUSE_DESTROY", 39: "FUSE_IOCTL", 40: "FUSE_POLL", 41: "FUSE_NOTIFY_REPLY",
    42: "FUSE_BATCH_FORGET", 43: "FUSE_FALLOCATE", 44: "FUSE_READDIRPLUS", 45: "FUSE_RENAME2",
    46: "FUSE_LSEEK", 47: "FUSE_COPY_FILE_RANGE", 48: "FUSE_SETUPMAPPING", 49: "FUSE_REMOVEMAPPING",
    50: "FUSE_SYNCFS", 51: "FUSE_TMPFILE", 52: "FUSE_STATX", 53: "FUSE_COPY_FILE_RANGE_64",
    4096: "CUSE_INIT",
}

#: Map layouts: the structs of fuse_requests.bpf.c (checked against the object's
#: BTF sizes at load: :class:`Probe` refuses an object whose sizes differ).
NBUCKETS = len(LATENCY_BUCKETS_MS) + 1
OP_KEY = struct.Struct("<II")                                   # conn, opcode
OP_VAL = struct.Struct(f"<6Q{NBUCKETS}Q{NBUCKETS}Q")            # count, timed, lat_sum, rd, wr, refused, buckets, sums
ERR_KEY = struct.Struct("<IIiI")                                # conn, opcode, error, pad
WHO_KEY = struct.Struct("<II16s")                               # conn, tid, comm
PEND_KEY = struct.Struct("<IIQ")                                # conn, pad, fh (value: u64 bytes)
U64 = struct.Struct("<Q")
U32 = struct.Struct("<I")
BOUNDS = struct.Struct(f"<{len(LATENCY_BUCKETS_MS)}Q")
#: ``conns`` value of a connection the kernel program claimed at its FUSE_INIT (CLAIMED in the C source)
CLAIMED = 2
#: counters map indexes (enum in the C source)
COUNTERS = ("ends", "unstarted", "not_sent", "map_full", "pending_full")

#: Hook families: name -> (programs, functions that must be in the kernel's BTF).
#: The fentry family's sync start is whichever of the two request functions exists.
FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("tracepoint", ("tp_send", "tp_end")),
    ("fentry", ("sync_start", "sync_exit", "bg_start", "bg_exit", "request_end")),
)
ALL_PROGRAMS = ("sync_start2", "sync_exit2", "sync_start3", "sync_exit3", "bg_start", "bg_exit",
                "request_end", "tp_send", "tp_end")


@dataclass
class OpStats:
    """One (connection, opcode) entry summed over CPUs."""

    count: int
    timed: int
    lat_sum_ns: int
    read_bytes: int
    #: bytes this opcode committed (FLUSH, FSYNC, RELEASE answered 0): WRITE payloads the daemon stored
    write_bytes: int
    buckets: list[int]
    bucket_sum_ns: list[int]
    #: bytes this opcode refused (FLUSH, FSYNC, RELEASE answered with an error)
    refused_bytes: int = 0


def decode_op_values(values: list[bytes]) -> OpStats:
    """Sum the per-CPU ``struct op_val`` values of one ``ops`` entry."""
    total = [0] * (6 + 2 * NBUCKETS)
    for raw in values:
        for i, v in enumerate(OP_VAL.unpack(raw)):
            total[i] += v
    return OpStats(total[0], total[1], total[2], total[3], total[4],
                   total[6:6 + NBUCKETS], total[6 + NBUCKETS:], refused_bytes=total[5])


def decode_u64_sum(values: list[bytes]) -> int:
    """Sum per-CPU (or one shared) u64 values."""
    return sum(U64.unpack(raw)[0] for raw in values)


def decode_comm(raw: bytes) -> str:
    """``task->comm``: NUL-terminated, at most 15 characters."""
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def opcode_name(opcode: int) -> str:
    """Opcode number -> the label every source uses (``15`` -> ``read``, ``44`` -> ``readdir``)."""
    name = OPCODE_NAMES.get(opcode)
    return opcode_label(name) if name else f"opcode_{opcode}"


@dataclass
class Snapshot:
    """The maps' cumulative values for one connection."""

    ops: dict[int, OpStats]
    errors: dict[tuple[int, int], int]
    requesters: dict[tuple[int, str], int]


class Probe:
    """The loaded, attached BPF object of this process (see module doc); thread-safe.

    Raises from ``__init__``: :class:`obsctl.bpf.libbpf.LibbpfError` / OSError with the reason.
    """

    def __init__(self, path: str) -> None:

        self.path = path
        self.family: str | None = None
        self.lock = threading.Lock()
        self.watchers: dict[int, int] = {}
        errors = []
        self._obj = None
        for family, programs in FAMILIES:
            try:
                names = self._programs(libbpf, family, programs)
            except LookupError as exc:
                errors.append(f"{family}: {exc}")
                continue
            obj = libbpf.BpfObject(path, {p: p in names for p in ALL_PROGRAMS})
            try:
                self._check_layout(obj)
                obj.load()
                obj.attach(names)
            except OSError as exc:
                obj.close()
                errors.append(f"{family}: {exc.strerror}")
                if exc.errno == errno_mod.EPERM and family == FAMILIES[-1][0]:
                    break
                continue
            self._obj, self.family, self.programs = obj, family, names
            break
        if self._obj is None:
            raise OSError(errno_mod.ENOTSUP, "; ".join(errors) or "no hook family")
        self.maps = {name: self._obj.map(name, percpu=name in ("ops", "errs", "counters"))
                     for name in ("conns", "ops", "errs", "who", "counters", "bounds", "claimer", "pending")}
        self.maps["bounds"].update(U32.pack(0), BOUNDS.pack(*(round(ms * 1_000_000) for ms in LATENCY_BUCKETS_MS)))

    @staticmethod
    def _programs(libbpf: Any, family: str, programs: tuple[str, ...]) -> list[str]:
        if family == "tracepoint":
            # the tracepoints' BTF types: btf_trace_<event> (include/linux/tracepoint.h, BPF raw tp)
            if not (libbpf.btf_has_function("fuse_request_end") and _btf_has_tracepoint("fuse_request_send")):
                raise LookupError("no fuse tracepoints (Linux 6.12+)")
            return list(programs)
        for fn in ("fuse_simple_background", "fuse_request_end"):
            if not libbpf.btf_has_function(fn):
                if os.path.exists("/sys/module/fuse/initstate") and not os.path.exists("/sys/kernel/btf/fuse"):
                    # a loaded module has /sys/module/NAME/initstate, a built-in one not (the rule of
                    # kmod, libkmod/libkmod-module.c kmod_module_get_initstate)
                    raise LookupError(f"{fn} not in the kernel's BTF: fuse.ko has no BTF (no /sys/kernel/btf/fuse; "
                                      "module BTF needs CONFIG_DEBUG_INFO_BTF_MODULES, Linux 5.11+)")
                raise LookupError(f"{fn} not in the kernel's BTF")
        if libbpf.btf_has_function("__fuse_simple_request"):
            sync = ["sync_start3", "sync_exit3"]
        elif libbpf.btf_has_function("fuse_simple_request"):
            sync = ["sync_start2", "sync_exit2"]
        else:
            raise LookupError("neither fuse_simple_request nor __fuse_simple_request in the kernel's BTF")
        return sync + ["bg_start", "bg_exit", "request_end"]

    @staticmethod
    def _check_layout(obj: Any) -> None:
        for name, key, value in (("ops", OP_KEY.size, OP_VAL.size), ("errs", ERR_KEY.size, 8),
                                 ("who", WHO_KEY.size, 8), ("conns", 4, 4), ("bounds", 4, BOUNDS.size),
                                 ("claimer", 4, 4), ("pending", PEND_KEY.size, 8)):
            m = obj.map(name)
            if (m.key_size, m.value_size) != (key, value):
                raise OSError(errno_mod.EINVAL, f"map {name} of the object is {m.key_size}/{m.value_size} bytes, "
                              f"obsctl expects {key}/{value}: rebuild it (scripts/build-bpf)")

    def claim(self, tgid: int) -> None:
        """Claim every FUSE connection whose FUSE_INIT a descendant of process ``tgid``
        queues (up to 4 generations: obsctl, the driver, fusermount3 ...): the kernel
        program starts counting it from that first request (see fuse_requests.bpf.c,
        ``claim_new``). Set before the driver is spawned; 0 stops claiming."""
        with self.lock:
            self.maps["claimer"].update(U32.pack(0), U32.pack(tgid))

    def claimed(self, conn: int) -> bool:
        """True when the kernel program claimed ``conn`` at its FUSE_INIT (counted since its first request)."""
        value = self.maps["conns"].lookup(U32.pack(conn))
        return bool(value) and U32.unpack(value[0][:4])[0] == CLAIMED

    def drop_other_claims(self, keep: int) -> None:
        """Forget connections claimed but never watched, other than ``keep`` (a previous
        driver of this process that died before a poll saw its connection)."""
        with self.lock:
            for key in list(self.maps["conns"].keys()):
                conn = U32.unpack(key)[0]
                if conn != keep and conn not in self.watchers:
                    self._forget(conn)

    def watch(self, conn: int) -> None:
        with self.lock:
            self.watchers[conn] = self.watchers.get(conn, 0) + 1
            self.maps["conns"].update(U32.pack(conn), U32.pack(1))

    def unwatch(self, conn: int) -> None:
        """Stop counting ``conn`` when nobody in this process watches it; drop its entries
        (connection numbers are reused after an unmount)."""
        with self.lock:
            left = self.watchers.get(conn, 0) - 1
            if left > 0:
                self.watchers[conn] = left
                return
            self.watchers.pop(conn, None)
            self._forget(conn)

    def _forget(self, conn: int) -> None:
        """Stop counting ``conn`` and drop its entries (caller holds the lock)."""
        self.maps["conns"].delete(U32.pack(conn))
        for name, fmt in (("ops", OP_KEY), ("errs", ERR_KEY), ("who", WHO_KEY), ("pending", PEND_KEY)):
            for key in list(self.maps[name].keys()):
                if fmt.unpack(key)[0] == conn:
                    self.maps[name].delete(key)

    def snapshot(self, conn: int) -> Snapshot:
        """Read the maps once: ``conn``'s cumulative values."""
        ops: dict[int, OpStats] = {}
        for key, values in self.maps["ops"].items():
            c, opcode = OP_KEY.unpack(key)
            if c == conn:
                ops[opcode] = decode_op_values(values)
        errors: dict[tuple[int, int], int] = {}
        for key, values in self.maps["errs"].items():
            c, opcode, error, _pad = ERR_KEY.unpack(key)
            if c == conn:
                errors[(opcode, error)] = decode_u64_sum(values)
        who: dict[tuple[int, str], int] = {}
        for key, values in self.maps["who"].items():
            c, tid, comm = WHO_KEY.unpack(key)
            if c == conn:
                who[(tid, decode_comm(comm))] = decode_u64_sum(values)
        return Snapshot(ops, errors, who)

    def pending_bytes(self, conn: int) -> int:
        """Bytes of WRITEs ``conn``'s daemon took that no FLUSH, FSYNC or RELEASE has
        committed or refused yet (all its file handles)."""
        total = 0
        for key, values in self.maps["pending"].items():
            if PEND_KEY.unpack(key)[0] == conn:
                total += decode_u64_sum(values)
        return total

    def counters(self) -> dict[str, int]:
        """The probe's own counters (all connections): ``ends``, ``unstarted`` (an end
        without a start: NOTIFY_REPLY, or started before attaching), ``not_sent`` (a start
        never answered), ``map_full`` (an entry the maps had no room for: not counted),
        ``pending_full`` (a WRITE whose bytes the full ``pending`` table could not hold:
        counted as an operation, its bytes neither written nor refused)."""
        m = self.maps["counters"]
        return {name: decode_u64_sum(m.lookup(U32.pack(i)) or []) for i, name in enumerate(COUNTERS)}

    def close(self) -> None:
        with self.lock:
            if self._obj is not None:
                self._obj.close()
                self._obj = None


def _btf_has_tracepoint(event: str) -> bool:

    lib = libbpf.library()
    vmlinux = lib.btf__load_vmlinux_btf()
    if not vmlinux:
        return False
    try:
        # BTF_KIND_TYPEDEF = 8 (include/uapi/linux/btf.h); FUSE built in: in vmlinux
        if lib.btf__find_by_name_kind(vmlinux, f"btf_trace_{event}".encode(), 8) > 0:
            return True
        if os.path.exists("/sys/kernel/btf/fuse"):
            mod = lib.btf__load_module_btf(b"fuse", vmlinux)
            if mod:
                try:
                    return lib.btf__find_by_name_kind(mod, f"btf_trace_{event}".encode(), 8) > 0
                finally:
                    lib.btf__free(mod)
        return False
    finally:
        lib.btf__free(vmlinux)


_probe: Probe | None = None
_probe_users = 0
_probe_reason: str | None = None
_probe_lock = threading.Lock()
_warned = False


def unavailable_reason(object_path: str | None = None) -> str | None:
    """Why the eBPF source cannot run here, without loading anything; None when it may."""

    if os.environ.get("OBSCTL_FUSE_BPF", "").strip().lower() in ("0", "off", "false", "no"):
        return "disabled by OBSCTL_FUSE_BPF"
    path = object_path or str(bpf.FUSE_REQUESTS_OBJECT)
    if not os.path.exists(path):
        return f"the BPF object {path} is missing (built by scripts/build-bpf when the package is built)"
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return "the kernel has no BTF (/sys/kernel/btf/vmlinux; CONFIG_DEBUG_INFO_BTF)"
    try:

        libbpf.library()
    except OSError:
        return "libbpf.so.1 is not installed (apt-get install libbpf1)"
    return None


def load_fuse_module(sys_module: str = "/sys/module/fuse", dev_fuse: str = "/dev/fuse") -> None:
    """Have the kernel load fuse.ko now if it is a module not loaded yet, so that its
    BTF (/sys/kernel/btf/fuse) and functions exist when the probe loads: obsctl
    arms the probe before the driver's first open of /dev/fuse would load it.

    Opening /dev/fuse does what the driver's own open does: the kernel loads the
    module by the node's ``char-major-10-229`` alias (the aliases of Debian's
    6.1.176 fuse.ko, read with ``strings``: ``devname:fuse``, ``char-major-10-229``,
    ``fs-fuse``); the descriptor is closed at once (no connection exists until
    mount(2)).
    Never raises: without /dev/fuse or the right to open it, the probe's own
    reason says what is missing.
    """
    if os.path.exists(sys_module):
        return
    try:
        os.close(os.open(dev_fuse, os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        log.debug("could not open %s to load the fuse module: %s", dev_fuse, exc)


def shared_probe(object_path: str | None = None) -> tuple[Probe | None, str]:
    """The process's probe (loaded on first use) and a reason; ``(None, reason)`` when it
    cannot run. A failure is remembered: later calls return it without retrying."""
    global _probe, _probe_reason, _probe_users

    disabled = unavailable_reason(object_path) if _probe is not None else None
    if disabled and disabled.startswith("disabled"):
        return None, disabled
    with _probe_lock:
        if _probe is not None:
            _probe_users += 1
            return _probe, f"eBPF {_probe.family} hooks ({', '.join(_probe.programs)})"
        if _probe_reason is not None:
            return None, _probe_reason
        load_fuse_module()
        reason = unavailable_reason(object_path)
        if reason is None:
            try:
                _probe = Probe(object_path or str(bpf.FUSE_REQUESTS_OBJECT))
            except OSError as exc:
                err = exc.errno
                text = exc.strerror or str(exc)
                if err == errno_mod.EPERM or "Operation not permitted" in text:
                    reason = ("no permission to load BPF programs (needs CAP_BPF and CAP_PERFMON, "
                              f"or root with CAP_SYS_ADMIN): {text}")
                else:
                    reason = f"the BPF probe did not load: {text}"
        if _probe is None:
            _probe_reason = reason
            return None, reason or "unknown"
        _probe_users = 1
        return _probe, f"eBPF {_probe.family} hooks ({', '.join(_probe.programs)})"


def release_probe(keep: bool = False) -> None:
    """One user less; the last one detaches and frees the probe unless ``keep``
    (a check that a collector will follow: the load is not paid twice; the
    kernel detaches it at the latest when the process exits)."""
    global _probe, _probe_users
    with _probe_lock:
        _probe_users -= 1
        if _probe_users <= 0 and _probe is not None and not keep:
            _probe.close()
            _probe = None
            _probe_users = 0


def reset_for_tests() -> None:
    """Forget a remembered failure and free a probe nobody uses (tests that change the environment)."""
    global _probe, _probe_reason, _warned
    with _probe_lock:
        _probe_reason = None
        _warned = False
        if _probe is not None and _probe_users <= 0:
            _probe.close()
            _probe = None


def warn_once(reason: str, instead: str = "using the tracefs source") -> None:
    """The one warning per process when the eBPF source cannot be used: ``reason``
    and what happens ``instead`` (:func:`obsctl.sources.kernel_source` says which)."""
    global _warned
    if not _warned:
        _warned = True
        log.warning("eBPF FUSE source unavailable (%s): %s", reason, instead)


@dataclass(frozen=True)
class BpfSupport:
    """What :class:`FuseBpfCollector` gives: ``level`` ``ebpf`` (everything), ``reason``."""

    level: str
    reason: str

    @property
    def available(self) -> bool:
        return self.level != "none"


class FuseBpfCollector(PollingCollector):
    """The eBPF kernel source of one mount (see module doc).

    Args:
        instruments: where to record.
        mountpoint: the mount's absolute path; its connection is looked up on
            every poll (a driver restart is a new connection).
        probe: the loaded :class:`Probe` (from :func:`shared_probe`; released at close).
        reason: the sentence for ``obsctl status`` (which hooks).
        mountinfo_path: the mount table.
        driver_answers: the driver's protocol answers, not counted as errors.

    Attributes:
        connection: the connection watched (str, as fuse_trace), or None.
        polls: polls that read the maps.
    """

    def __init__(self, instruments: Instruments, mountpoint: str, probe: Probe, reason: str = "",
                 mountinfo_path: str = mounttable.MOUNTINFO_PATH,
                 driver_answers: frozenset[tuple[str, str]] = frozenset()) -> None:
        super().__init__(instruments)
        self.mountpoint = mountpoint
        self.mountinfo_path = mountinfo_path
        self.driver_answers = driver_answers
        self.probe: Probe | None = probe
        self.support = BpfSupport("ebpf", reason or f"eBPF {probe.family} hooks")
        self.connection: str | None = None
        self.polls = 0
        self._last = Snapshot({}, {}, {})
        self._labels: dict[str, dict[str, str]] = {}
        #: the probe's map_full / pending_full counters at the last poll (their growth is exported as lost)
        counters = probe.counters() if probe is not None else {}
        self._map_full = counters.get("map_full", 0)
        self._pending_full = counters.get("pending_full", 0)

    def _poll(self) -> None:
        probe = self.probe
        if probe is None:
            return
        conn = mounttable.fuse_connection_at(self.mountpoint, path=self.mountinfo_path)
        if conn != self.connection:
            if self.connection is not None:
                self._record(probe.snapshot(int(self.connection)))  # what the old connection did last
                probe.unwatch(int(self.connection))
            self.connection = conn
            self._last = Snapshot({}, {}, {})
            if conn is not None:
                self.instruments.declare_kernel_lost("ebpf")
                self.instruments.add_write_refused_bytes(0)  # this source tells refused bytes apart
                claimed = probe.claimed(int(conn))
                probe.watch(int(conn))
                if claimed:
                    # counted by the kernel since its FUSE_INIT, before the mount was visible:
                    # everything in the maps is this mount's, from its first request on
                    probe.drop_other_claims(int(conn))
                    self._record(probe.snapshot(int(conn)))
                else:
                    self._last = probe.snapshot(int(conn))  # a reused number's leftovers are not ours
            return
        if conn is not None:
            self._record(probe.snapshot(int(conn)))
        # entries the maps had no room for (probe counter map_full: this process's probe, the
        # connections it watches): requests in no obsctl_fs_ops_total
        counters = probe.counters()
        full = counters.get("map_full", 0)
        if full > self._map_full:
            self.instruments.add_kernel_lost(full - self._map_full, "ebpf", "count")
        self._map_full = full
        # WRITEs counted whose bytes the pending table could not hold: part=detail
        pending_full = counters.get("pending_full", 0)
        if pending_full > self._pending_full:
            self.instruments.add_kernel_lost(pending_full - self._pending_full, "ebpf", "detail")
        self._pending_full = pending_full

    def _record(self, snap: Snapshot) -> None:
        """Record the differences between ``snap`` and the previous snapshot."""
        self.polls += 1
        ins = self.instruments
        last = self._last
        read_bytes = write_bytes = refused_bytes = 0
        for opcode, now in snap.ops.items():
            before = last.ops.get(opcode)
            label = opcode_name(opcode)
            if before is None or now.count < before.count:
                before = OpStats(0, 0, 0, 0, 0, [0] * NBUCKETS, [0] * NBUCKETS)
            n = now.count - before.count
            if n > 0:
                ins.record_fs_op(label, n=n)
            if now.timed > before.timed:
                attrs = self._labels.get(label)
                if attrs is None:
                    attrs = self._labels[label] = {"opcode": label, **ins.attrs.base()}
                ins.record_fs_latency_buckets(
                    label, [a - b for a, b in zip(now.buckets, before.buckets)],
                    [(a - b) / 1e6 for a, b in zip(now.bucket_sum_ns, before.bucket_sum_ns)], attrs)
            read_bytes += now.read_bytes - before.read_bytes
            write_bytes += now.write_bytes - before.write_bytes
            refused_bytes += now.refused_bytes - before.refused_bytes
        ins.add_read_bytes(read_bytes)
        ins.add_write_bytes(write_bytes)
        ins.add_write_refused_bytes(refused_bytes)
        for (opcode, error), n in snap.errors.items():
            d = n - last.errors.get((opcode, error), 0)
            if d < 0:
                d = n
            if d > 0 and error < 0:
                label = errno_label(error)
                if is_failure(opcode_name(opcode), label, self.driver_answers):
                    ins.add_error(label, d)
        tally: dict[str, int] = {}
        for (tid, comm), n in snap.requesters.items():
            d = n - last.requesters.get((tid, comm), 0)
            if d < 0:  # forgotten by the LRU table and counted again since
                d = n
            if d > 0:
                tally[f"{comm}[{tid}]"] = d
        ins.count_requesters(tally)
        self._last = snap

    def _close(self) -> None:
        """Record what is left, stop watching the connection, release the probe."""
        probe, self.probe = self.probe, None
        if probe is None:
            return
        if self.connection is not None:
            self._record(probe.snapshot(int(self.connection)))
            probe.unwatch(int(self.connection))
            self.connection = None
        release_probe()

    def stats(self) -> dict:
        """Counters for ``obsctl status --json`` (``sources.kernel_trace``): the probe's
        :meth:`Probe.counters` plus ``pending_write_bytes`` (this connection's bytes
        written but not yet flushed, fsynced or released: :meth:`Probe.pending_bytes`)."""
        probe = self.probe
        counters = probe.counters() if probe is not None else {}
        conn = self.connection
        pending = probe.pending_bytes(int(conn)) if probe is not None and conn is not None else 0
        return {"source": "ebpf", "support": self.support.level, "reason": self.support.reason,
                "hooks": probe.family if probe is not None else None,
                "connection": conn, "polls": self.polls, **counters, "pending_write_bytes": pending}
