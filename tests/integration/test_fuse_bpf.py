"""The eBPF kernel source (collectors/fuse_bpf) on this machine's kernel.

bindfs under ``obsctl mount`` with the eBPF source in use (status says so),
a known workload, numbers checked on the real OTLP receiver; the same
workload counted at the same time by an independent tracefs collector in
this test process, and the two compared. Skips, with the reason, where the
BPF probe cannot load (no object, no BTF, no privilege).
"""

from __future__ import annotations

import os
import subprocess
import threading

import pytest

from obsctl.collectors import fuse_bpf
from obsctl.collectors.fuse_trace import FuseTraceCollector, detect_support
from obsctl.instruments import MountAttributes
from support.bindfs import READ_SIZE, daemon_errors, start_bindfs, workload
from support.metrics import in_memory
from support.obsctl import require_driver, require_ebpf, status_entry
from support.waiting import wait_until

OPCODES = ("lookup", "getattr", "open", "read", "write", "create", "unlink", "flush", "release")


@pytest.fixture(autouse=True, scope="module")
def _probe_loads():
    require_ebpf()


def ops(otlp, **attrs):
    return {p.attributes["opcode"]: p.value for p in otlp.points("obsctl_fs_ops", **attrs)}


def errors(otlp, **attrs):
    return {p.attributes["error_type"]: p.value for p in otlp.points("obsctl_errors", **attrs)}


def latency(otlp, **attrs):
    return {h.attributes["opcode"]: (h.count, h.sum) for h in otlp.histogram_points("obsctl_fs_latency_ms", **attrs)}


def test_bindfs_numbers_from_ebpf_equal_tracefs(tmp_path, mountpoint, runtime_dir, otlp, telemetry_toml,
                                                start_mount):
    """Per-opcode counts with latency, ENOENT and EACCES by name, read/write
    bytes equal to what the workload moved; the tracefs source, counting the
    same requests independently, agrees on every count, byte and error."""
    src, env, m = start_bindfs(tmp_path, mountpoint, runtime_dir, telemetry_toml, start_mount)
    wait_until(lambda: (status_entry(env, mountpoint) or {}).get("sources", {}).get("kernel_trace", {})
               .get("connection"), 10, "eBPF source watching the connection")
    table = status_entry(env, mountpoint)["sources"]
    assert table["kernel"] == "ebpf" and table["kernel_trace"]["source"] == "ebpf", table
    assert {table[q] for q in ("fs_ops", "fs_latency", "fs_bytes", "fs_errors")} == {"kernel"}

    support = detect_support(disabled=False)
    tracefs = None
    if support.level == "paired":
        attrs_t = MountAttributes("", "generic", str(mountpoint))
        _reader, ins_t = in_memory(attrs_t)
        tracefs = FuseTraceCollector(ins_t, str(mountpoint), support=support)
        tracefs.poll()
    attrs = {"impl": "generic"}
    wait_until(lambda: sum(ops(otlp, **attrs).values()) > 0, 15, "first export after the ready probe")
    before = ops(otlp, **attrs)
    try:
        moved = workload(mountpoint, "read.bin", 300_000)
        daemon_errors(src, mountpoint)
        wait_until(lambda: errors(otlp, **attrs).get("eacces", 0) >= 1 and errors(otlp, **attrs).get("enoent", 0) >= 1,
                   15, lambda: f"eacces and enoent exported: {errors(otlp, **attrs)}")
        wait_until(lambda: all(ops(otlp, **attrs).get(op, 0) > before.get(op, 0) for op in OPCODES), 15,
                   lambda: f"ops {OPCODES}: {ops(otlp, **attrs)}")
        wait_until(lambda: otlp.latest("obsctl_fs_read_bytes", **attrs) == READ_SIZE, 10,
                   lambda: f"read bytes {otlp.latest('obsctl_fs_read_bytes', **attrs)}")
        assert moved["read"] == READ_SIZE
        assert otlp.latest("obsctl_fs_write_bytes", **attrs) == moved["write"]
        assert set(errors(otlp, **attrs)) == {"eacces", "enoent"}, errors(otlp, **attrs)
        lat = latency(otlp, **attrs)
        for op in OPCODES:
            assert lat[op][0] >= 1 and lat[op][1] > 0, (op, lat)
        st = status_entry(env, mountpoint)
        live_requesters = st["sources"]["kernel_trace"]
        assert live_requesters["map_full"] == 0, live_requesters
        if tracefs is not None:
            # the stat of the ready probe and exports run while tracefs was set up: compare what
            # both saw after `before` -- the tracefs collector started after the first poll
            tracefs.poll()
            tracefs.close()
            traced = ins_t.live()
            after = ops(otlp, **attrs)
            ebpf = {op: after.get(op, 0) - before.get(op, 0) for op in after}
            for op in OPCODES:
                assert ebpf.get(op, 0) == traced["ops_by_opcode"].get(op, 0), (op, ebpf, traced["ops_by_opcode"])
            assert traced["read_bytes"] == READ_SIZE and traced["write_bytes"] == moved["write"]
            assert traced["errors_by_type"] == {"eacces": 1, "enoent": 1}
            assert tracefs.lost == 0
            # obsctl top's requesters: this test process asked for every request of the workload
            tid = threading.get_native_id()
            comm = open(f"/proc/self/task/{tid}/comm", encoding="utf-8").read().strip()
            assert traced["requesters"].get(f"{comm}[{tid}]", 0) >= 10, traced["requesters"]
    finally:
        if tracefs is not None and tracefs.instance is not None:
            tracefs.close()
    assert m.stop(30) == 0, m.output()


def test_requesters_named_like_obsctl_top(tmp_path, mountpoint):
    """An in-process eBPF collector on a bare bindfs: the requesting threads are counted
    as ``comm[tid]`` (``cat[PID]`` for a cat reading through the mount)."""
    require_driver("generic")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"y" * 50_000)
    bindfs = subprocess.Popen(["bindfs", "-f", str(src), str(mountpoint)])
    col = None
    try:
        wait_until(lambda: os.path.ismount(mountpoint), 10, "bindfs mounted")
        probe, reason = fuse_bpf.shared_probe()
        _reader, ins = in_memory(MountAttributes("", "generic", str(mountpoint)))
        col = fuse_bpf.FuseBpfCollector(ins, str(mountpoint), probe, reason)
        col.poll()
        cat = subprocess.run(["cat", str(mountpoint / "f")], capture_output=True, check=True)
        assert len(cat.stdout) == 50_000
        col.poll()
        live = ins.live()
        cats = {who: n for who, n in (live["requesters"] or {}).items() if who.startswith("cat[")}
        assert len(cats) == 1 and sum(cats.values()) >= 3, live["requesters"]  # lookup, open, read, ...
        assert live["read_bytes"] == 50_000
    finally:
        if col is not None:
            col.close()
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False)
        bindfs.wait(10)
