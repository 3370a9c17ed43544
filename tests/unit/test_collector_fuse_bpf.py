"""collectors.fuse_bpf: map decoding against the real object's layout, the opcode
table against the kernel's BTF, delta recording, and the fall-back path."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

import pytest

from obsctl import sources as sources_mod
from obsctl.bpf import FUSE_REQUESTS_OBJECT
from obsctl.collectors import fuse_bpf
from obsctl.collectors.fuse_bpf import (
    ERR_KEY, NBUCKETS, OP_KEY, OP_VAL, OPCODE_NAMES, PEND_KEY, WHO_KEY, FuseBpfCollector, OpStats, Snapshot,
    decode_comm, decode_op_values, decode_u64_sum, opcode_name,
)
from obsctl.instruments import LATENCY_BUCKETS_MS, MountAttributes
from support.metrics import in_memory
from support.metrics import points as metric_points

needs_object = pytest.mark.skipif(not FUSE_REQUESTS_OBJECT.exists(),
                                  reason="scripts/build-bpf has not built the BPF object")


def test_decode_sums_per_cpu_values():
    a = [1, 1, 500, 10, 0, 3] + [1] + [0] * (NBUCKETS - 1) + [500] + [0] * (NBUCKETS - 1)
    b = [2, 1, 70_000, 0, 7, 4] + [0, 1] + [0] * (NBUCKETS - 2) + [0, 70_000] + [0] * (NBUCKETS - 2)
    got = decode_op_values([OP_VAL.pack(*a), OP_VAL.pack(*b)])
    assert (got.count, got.timed, got.lat_sum_ns, got.read_bytes, got.write_bytes) == (3, 2, 70_500, 10, 7)
    assert got.refused_bytes == 7
    assert got.buckets[:3] == [1, 1, 0] and got.bucket_sum_ns[:2] == [500, 70_000]
    assert decode_u64_sum([(5).to_bytes(8, "little"), (6).to_bytes(8, "little")]) == 11
    assert decode_comm(b"cat\0\0garbage\0\0\0\0") == "cat"
    assert decode_comm(b"fifteen-chars-x\0") == "fifteen-chars-x"


def test_opcode_labels_match_the_tracefs_source():
    assert opcode_name(15) == "read" and opcode_name(44) == "readdir" and opcode_name(45) == "rename"
    assert opcode_name(1) == "lookup" and opcode_name(35) == "create" and opcode_name(9999) == "opcode_9999"


@pytest.mark.skipif(not shutil.which("bpftool") or not os.path.exists("/sys/kernel/btf/vmlinux"),
                    reason="bpftool or kernel BTF missing")
def test_opcode_table_equals_the_kernels_enum():
    """OPCODE_NAMES equals ``enum fuse_opcode`` of the running kernel's BTF (minus the byte-swap markers)."""
    out = subprocess.run(["bpftool", "btf", "dump", "file", "/sys/kernel/btf/vmlinux", "format", "c"],
                         capture_output=True, text=True, check=True).stdout
    if "enum fuse_opcode {" not in out:
        pytest.skip("FUSE is a module here: its enum is not in vmlinux BTF")
    body = out.split("enum fuse_opcode {", 1)[1].split("};", 1)[0]
    kernel = {}
    for line in body.strip().splitlines():
        name, value = line.strip().rstrip(",").split(" = ")
        if "BSWAP" not in name:
            kernel[int(value)] = name
    assert {k: v for k, v in OPCODE_NAMES.items() if k in kernel} == kernel
    assert set(kernel) <= set(OPCODE_NAMES)


@needs_object
def test_python_layouts_equal_the_objects_maps():
    """The struct formats of the decoder equal the compiled object's map sizes (open only: no privilege)."""
    from obsctl.bpf import libbpf

    obj = libbpf.BpfObject(str(FUSE_REQUESTS_OBJECT))
    try:
        fuse_bpf.Probe._check_layout(obj)
        assert (obj.map("ops").key_size, obj.map("ops").value_size) == (OP_KEY.size, OP_VAL.size)
        assert obj.map("errs").key_size == ERR_KEY.size and obj.map("who").key_size == WHO_KEY.size
        assert (obj.map("pending").key_size, obj.map("pending").value_size) == (PEND_KEY.size, 8)
        assert obj.map("bounds").value_size == 8 * len(LATENCY_BUCKETS_MS)
    finally:
        obj.close()


class FakeProbe:
    """A probe whose maps are given snapshots (the collector's arithmetic, not the kernel)."""

    family = "tracepoint"
    programs = ["tp_send", "tp_end"]

    def __init__(self):
        self.snaps: list[Snapshot] = []
        self.watched: list[int] = []

    def watch(self, conn):
        self.watched.append(conn)

    def unwatch(self, conn):
        self.watched.remove(conn)

    def claimed(self, conn):
        return False  # watched from the collector's first poll (the claim is tested for real in integration)

    def drop_other_claims(self, keep):
        pass

    def snapshot(self, conn):
        return self.snaps.pop(0)

    def counters(self):
        return dict(self.counter_values)

    counter_values = {"ends": 0}


def op(count, buckets=None, sums=None, rd=0, wr=0, refused=0):
    buckets = buckets or [0] * NBUCKETS
    sums = sums or [0] * NBUCKETS
    return OpStats(count, sum(buckets), sum(sums), rd, wr, buckets, sums, refused_bytes=refused)


def test_collector_records_differences_between_polls(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("36 25 0:77 / /mnt/x rw,relatime - fuse.bindfs src rw,user_id=0\n")
    attrs = MountAttributes("", "generic", "/mnt/x")
    reader, ins = in_memory(attrs)
    probe = FakeProbe()
    col = FuseBpfCollector(ins, "/mnt/x", probe, mountinfo_path=str(mountinfo))
    # baseline (a reused connection number's leftovers), then two polls
    b1 = [0] * NBUCKETS
    b1[0] = 5
    probe.snaps = [
        Snapshot({15: op(5, b1, [100_000] + [0] * (NBUCKETS - 1), rd=4096)}, {(14, -13): 1}, {(7, "old"): 5}),
        Snapshot({15: op(8, [6, 2] + [0] * (NBUCKETS - 2), [120_000, 150_000] + [0] * (NBUCKETS - 2), rd=10_000),
                  1: op(4, [4] + [0] * (NBUCKETS - 1), [80_000] + [0] * (NBUCKETS - 1))},
                 {(14, -13): 3, (1, -2): 2}, {(7, "old"): 5, (42, "cat"): 7}),
    ]
    col.poll()
    assert probe.watched == [77] and col.connection == "77"
    col.poll()
    live = ins.live()
    assert live["ops_by_opcode"] == {"read": 3, "lookup": 4}
    assert live["latency_buckets"]["read"][:2] == [1, 2] and live["latency_buckets"]["lookup"][0] == 4
    assert live["latency_sum_ms"]["read"] == pytest.approx(0.17)
    assert live["read_bytes"] == 10_000 - 4096
    assert live["errors_by_type"] == {"eacces": 2}  # lookup ENOENT is the protocol, not a failure
    assert live["requesters"] == {"cat[42]": 7}
    hist = {dict(k[1])["opcode"]: v for k, v in metric_points(reader, attrs).items() if k[0] == "obsctl_fs_latency_ms"}
    assert hist["read"] == (3, pytest.approx(0.17)) and hist["lookup"] == (4, pytest.approx(0.08))


@pytest.mark.parametrize("driver_source, instead", [
    (sources_mod.NO_DRIVER_SOURCE, "no FUSE operation numbers for this mount"),
    (("rclone_log", frozenset({"fs_ops"})), "FUSE numbers from rclone_log"),
])
def test_without_object_warns_once_and_falls_back_to_tracefs(monkeypatch, caplog, tmp_path, driver_source, instead):
    """kernel_source with no BPF object and no tracepoints (as on a kernel before 6.12
    without fuse BTF): ONE warning in all, naming why not eBPF, why not tracefs and
    what feeds the FUSE numbers; the tracefs collector (level none), status says so."""
    from obsctl.collectors.fuse_trace import FuseTraceCollector

    monkeypatch.setattr("obsctl.bpf.FUSE_REQUESTS_OBJECT", tmp_path / "missing.bpf.o")
    monkeypatch.setenv("OBSCTL_FUSE_TRACE", "off")  # keep tracefs untouched in a unit test
    monkeypatch.setattr("obsctl.collectors.fuse_trace._warned", False)
    fuse_bpf.reset_for_tests()
    attrs = MountAttributes("", "generic", "/mnt/none")
    _reader, ins = in_memory(attrs)
    with caplog.at_level(logging.WARNING):
        first, table = sources_mod.kernel_source(ins, "generic", "/mnt/none", driver_source=driver_source)
        second, _table = sources_mod.kernel_source(ins, "generic", "/mnt/none2", driver_source=driver_source)
        first.poll()
        second.poll()
    try:
        assert isinstance(first, FuseTraceCollector) and isinstance(second, FuseTraceCollector)
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, warnings
        assert warnings[0].startswith("eBPF FUSE source unavailable (") and "missing.bpf.o is missing" in warnings[0]
        assert "nor the tracefs source (disabled by OBSCTL_FUSE_TRACE)" in warnings[0] and instead in warnings[0]
        status = table.as_dict()
        assert status["kernel"] == "none"
        trace = status["kernel_trace"]
        assert trace["source"] == "tracefs" and "missing.bpf.o" in trace["ebpf_unavailable"]
        assert trace["support"] == "none" and trace["reason"] == "disabled by OBSCTL_FUSE_TRACE"
        owner = driver_source[0] if "fs_ops" in driver_source[1] else None
        assert status["fs_ops"] == owner and status["fs_latency"] is None
    finally:
        first.close()
        second.close()
        fuse_bpf.reset_for_tests()


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("OBSCTL_FUSE_BPF", "off")
    assert fuse_bpf.unavailable_reason() == "disabled by OBSCTL_FUSE_BPF"


@needs_object
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")
def test_without_privilege_the_load_fails_with_a_reason():
    """An unprivileged process (uid 65534, no capabilities) gets the permission reason, not an exception."""
    code = ("from obsctl.collectors import fuse_bpf; p, r = fuse_bpf.shared_probe(); "
            "print('PROBE' if p else r)")
    out = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--inh-caps=-all",
                          "--bounding-set=-all", os.path.join(os.path.dirname(os.sys.executable), "python"),
                          "-c", code], capture_output=True, text=True, timeout=60, check=False,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(os.sys.path)})
    assert out.returncode == 0, out.stderr
    assert "no permission to load BPF programs" in out.stdout, out.stdout


def test_load_fuse_module_opens_dev_fuse_only_when_the_module_is_missing(tmp_path, caplog):
    """A fifo stands in for /dev/fuse so the open is observable; a missing node shows
    whether an open was tried (debug log)."""
    import logging
    import select

    from obsctl.collectors.fuse_bpf import load_fuse_module

    caplog.set_level(logging.DEBUG, logger="obsctl.collectors.fuse_bpf")
    loaded, absent, missing_node = tmp_path / "module", tmp_path / "absent", tmp_path / "no-such-node"
    loaded.mkdir()
    load_fuse_module(str(loaded), str(missing_node))  # module there: no open tried
    assert not caplog.records
    load_fuse_module(str(absent), str(missing_node))  # module missing: tried, never raises
    assert [r.getMessage() for r in caplog.records] == [
        f"could not open {missing_node} to load the fuse module: [Errno 2] No such file or directory: "
        f"'{missing_node}'"]
    # a fifo whose read end is open: Linux's pipe_poll reports POLLHUP once a writer (an O_RDWR
    # open counts as one) came and went, and not before (fs/pipe.c: pipe->w_counter)
    node = tmp_path / "fuse"
    os.mkfifo(node)
    read_end = os.open(node, os.O_RDONLY | os.O_NONBLOCK)
    try:
        poller = select.poll()
        poller.register(read_end, select.POLLIN)
        assert not poller.poll(0)  # nobody opened it yet
        load_fuse_module(str(absent), str(node))  # opened and closed at once
        assert poller.poll(1000) == [(read_end, select.POLLHUP)]
    finally:
        os.close(read_end)


def test_written_bytes_are_the_committed_ones_and_refused_are_apart(tmp_path):
    """Write bytes come from the opcodes that commit them (flush 25, fsync 20, release 18,
    as the kernel program adds them), refused bytes go to obsctl_fs_write_refused_bytes
    and never to obsctl_fs_write_bytes; WRITE's own entry carries no bytes any more."""
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("36 25 0:78 / /mnt/y rw,relatime - fuse.s3fs s3fs rw,user_id=0\n")
    attrs = MountAttributes("b", "s3fs", "/mnt/y")
    reader, ins = in_memory(attrs)
    probe = FakeProbe()
    col = FuseBpfCollector(ins, "/mnt/y", probe, mountinfo_path=str(mountinfo))
    probe.snaps = [
        Snapshot({}, {}, {}),
        Snapshot({16: op(3), 25: op(1, wr=0, refused=3000)}, {(25, -1): 1}, {}),
        Snapshot({16: op(5), 25: op(2, wr=500, refused=3000), 18: op(2, wr=200)}, {(25, -1): 1}, {}),
    ]
    col.poll()
    col.poll()
    assert ins.totals.get("obsctl_fs_write_bytes", 0) == 0
    assert ins.totals["obsctl_fs_write_refused_bytes"] == 3000
    assert ins.live()["errors_by_type"] == {"eperm": 1}
    col.poll()
    assert ins.totals["obsctl_fs_write_bytes"] == 700 and ins.totals["obsctl_fs_write_refused_bytes"] == 3000
    got = {k[0]: v for k, v in metric_points(reader, attrs).items()
           if k[0] in ("obsctl_fs_write_bytes", "obsctl_fs_write_refused_bytes")}
    assert got == {"obsctl_fs_write_bytes": 700, "obsctl_fs_write_refused_bytes": 3000}, got


def test_pending_table_full_is_exported_as_detail_lost(tmp_path):
    """A WRITE the full pending table could not hold (probe counter ``pending_full``) is
    counted as an operation with its bytes missing: obsctl_kernel_events_lost_total{part="detail"}."""
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("36 25 0:79 / /mnt/z rw,relatime - fuse.s3fs s3fs rw,user_id=0\n")
    attrs = MountAttributes("b", "s3fs", "/mnt/z")
    _reader, ins = in_memory(attrs)
    probe = FakeProbe()
    probe.counter_values = {"ends": 0, "map_full": 0, "pending_full": 2}
    col = FuseBpfCollector(ins, "/mnt/z", probe, mountinfo_path=str(mountinfo))
    probe.snaps = [Snapshot({}, {}, {}), Snapshot({16: op(9)}, {}, {})]
    col.poll()
    probe.counter_values = {"ends": 0, "map_full": 0, "pending_full": 5}
    col.poll()
    assert ins.totals.get("obsctl_kernel_events_lost:detail") == 3
    assert ins.totals.get("obsctl_kernel_events_lost:count", 0) == 0
