"""The kernel collector (collectors/fuse_trace) on this machine's kernel.

Real bindfs (``--impl generic``), s3fs and rclone mounts of a loopback S3
server under ``obsctl mount``; numbers checked on the real OTLP receiver and
in ``obsctl status --json``. Skips, with the reason, on a kernel without the
fuse tracepoints (before 6.12) or without request pairing (before 6.18).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from obsctl.collectors.fuse_trace import DEFAULT_TRACEFS, FuseTraceCollector, detect_support
from obsctl.instruments import MountAttributes
from support.bindfs import READ_SIZE, daemon_errors, start_bindfs, workload
from support.kernel_count import KernelCount
from support.metrics import in_memory
from support.metrics import points as metric_points
from support.obsctl import (
    force_cleanup, is_mounted, mount_entry, obsctl_command, obsctl_env, require_driver,
    s3_mount_args, status_entry, status_json,
)
from support.waiting import wait_until

INSTANCES = Path(DEFAULT_TRACEFS) / "instances"
#: FUSE operations every kernel-source test must see, with a latency histogram.
OPCODES = ("lookup", "getattr", "open", "read", "write", "create", "unlink")


@pytest.fixture(autouse=True)
def _kernel_pairs(monkeypatch):
    # these tests are about the tracefs source: keep obsctl off the eBPF one
    # (tests/integration/test_fuse_bpf.py tests that, and compares the two)
    monkeypatch.setenv("OBSCTL_FUSE_BPF", "off")
    support = detect_support(disabled=False)
    if support.level != "paired":
        pytest.skip(f"kernel FUSE events with request pairing needed: {support.reason}")


def connection_of(mountpoint):
    """The FUSE connection N (``0:N`` in mountinfo) of the mount."""
    return mount_entry(mountpoint)["line"].split()[2].split(":")[1]


def my_status(env, mountpoint):
    entry = status_entry(env, mountpoint)
    assert entry is not None, f"obsctl status --json has no entry for {mountpoint}"
    return entry


def ops(otlp, **attrs):
    """{opcode: latest cumulative count} of obsctl_fs_ops."""
    out = {}
    for p in otlp.points("obsctl_fs_ops", **attrs):
        out[p.attributes["opcode"]] = p.value
    return out


def latency(otlp, **attrs):
    """{opcode: (count, sum)} of the latest obsctl_fs_latency_ms point per opcode."""
    out = {}
    for h in otlp.histogram_points("obsctl_fs_latency_ms", **attrs):
        out[h.attributes["opcode"]] = (h.count, h.sum)
    return out


def errors(otlp, **attrs):
    return {p.attributes["error_type"]: p.value for p in otlp.points("obsctl_errors", **attrs)}


def test_bindfs_kernel_numbers(tmp_path, mountpoint, runtime_dir, otlp, telemetry_toml, start_mount):
    """bindfs under obsctl: per-opcode counts and latency histograms, exact
    read/write bytes, ENOENT and EACCES by name, the instance exists while
    mounted and is removed at shutdown; status says the kernel feeds it."""
    src, env, m = start_bindfs(tmp_path, mountpoint, runtime_dir, telemetry_toml, start_mount)
    conn = connection_of(mountpoint)
    instance = INSTANCES / f"obsctl-{m.pid}-{conn}"
    wait_until(lambda: my_status(env, mountpoint)["sources"]["kernel_trace"]["instance"], 10, "tracing")
    assert (instance / "events/fuse/fuse_request_send/filter").read_text().strip() == f"connection == {conn}"

    moved = workload(mountpoint, "read.bin", 300_000)
    daemon_errors(src, mountpoint)

    attrs = {"impl": "generic"}
    wait_until(lambda: (errors(otlp, **attrs).get("eacces", 0) >= 1
                        and errors(otlp, **attrs).get("enoent", 0) >= 1), 15, "eacces and enoent exported")
    wait_until(lambda: all(ops(otlp, **attrs).get(op, 0) >= 1 for op in OPCODES), 15,
               lambda: f"ops {OPCODES}: {ops(otlp, **attrs)}")
    lat = latency(otlp, **attrs)
    for op in OPCODES:
        assert lat[op][0] >= 1 and lat[op][1] > 0, (op, lat)
    # a read of the whole file fetches exactly its bytes (docs/metrics.md: page
    # rounding only for partial reads); writes without writeback cache are exact
    read = otlp.latest("obsctl_fs_read_bytes", **attrs)
    write = otlp.latest("obsctl_fs_write_bytes", **attrs)
    assert read == moved["read"] == READ_SIZE, read
    assert write == moved["write"], write
    # the rule of the log collectors: the missing name's LOOKUP is not an error
    assert set(errors(otlp, **attrs)) == {"eacces", "enoent"}

    st = my_status(env, mountpoint)
    src_table = st["sources"]
    assert src_table["kernel"] == "paired"
    assert {src_table[q] for q in ("fs_ops", "fs_latency", "fs_bytes", "fs_errors")} == {"kernel"}
    assert src_table["kernel_trace"]["instance"] == instance.name and src_table["kernel_trace"]["lost"] == 0

    assert m.stop(30) == 0, m.output()
    assert not instance.exists(), "tracefs instance left after shutdown"


def test_crashed_obsctl_instance_removed_at_next_start(tmp_path, mountpoint, runtime_dir, otlp, telemetry_toml,
                                                       start_mount):
    require_driver("generic")
    src = tmp_path / "src"
    src.mkdir()
    env = obsctl_env(runtime_dir)
    tel = telemetry_toml(export_interval_seconds=1)
    args = [str(src), str(mountpoint), "--impl", "generic", "--telemetry-config", str(tel), "--",
            "bindfs", "-f", str(src), str(mountpoint)]
    first = start_mount(args, env)
    first.wait_ready(30)
    conn = connection_of(mountpoint)
    stale = INSTANCES / f"obsctl-{first.pid}-{conn}"
    wait_until(stale.is_dir, 10, f"tracefs instance {stale}")
    first.kill()  # SIGKILL: no cleanup runs
    force_cleanup(mountpoint)
    assert stale.is_dir()
    second = start_mount(args, env)
    second.wait_ready(30)
    wait_until(lambda: not stale.exists(), 10, f"stale instance {stale} removed")
    assert second.stop(30) == 0


def test_s3fs_kernel_numbers(s3_server, bucket, mountpoint, env, otlp, telemetry_toml, start_mount):
    """s3fs: the kernel feeds FUSE ops (with latency, which s3fs's log cannot
    give) and bytes; s3fs's log still feeds request latency; no double count:
    one open(2) is one ``open``, although s3fs's log has a line for it too."""
    require_driver("s3fs")
    tel = telemetry_toml(export_interval_seconds=1)
    m = start_mount(s3_mount_args(bucket, mountpoint, "s3fs", s3_server.endpoint, tel), env)
    m.wait_ready(30)
    attrs = {"impl": "s3fs", "bucket": bucket}
    wait_until(lambda: my_status(env, mountpoint)["sources"]["kernel_trace"]["instance"], 10, "instance")
    time.sleep(2.5)
    before = ops(otlp, **attrs)
    moved = workload(mountpoint, "data-b.bin", 200_000)
    opens = 3  # new.bin (create counts as create), data-b.bin, + the reopen below
    for _open in range(2):
        with open(mountpoint / "hello.txt", "rb") as fh:
            fh.read()
    wait_until(lambda: all(ops(otlp, **attrs).get(op, 0) > before.get(op, 0) for op in OPCODES), 20,
               lambda: f"ops {OPCODES}: {ops(otlp, **attrs)}")
    time.sleep(2.5)
    after = ops(otlp, **attrs)
    assert after["open"] - before.get("open", 0) == opens, (before, after)
    lat = latency(otlp, **attrs)
    for op in OPCODES:
        assert lat[op][0] >= 1 and lat[op][1] > 0, (op, lat)
    read = otlp.latest("obsctl_fs_read_bytes", **attrs)
    write = otlp.latest("obsctl_fs_write_bytes", **attrs)
    # hello.txt (twice: s3fs opens with direct_io off, so the second read may
    # come from the page cache) + data-b.bin; the ready probe read nothing
    hello = 24
    assert moved["read"] + hello <= read <= moved["read"] + 2 * hello, read
    assert write == moved["write"], write
    assert otlp.histogram_points("obsctl_operation_duration_ms", **attrs), "s3fs_log request latency"
    table = my_status(env, mountpoint)["sources"]
    assert table["fs_ops"] == table["fs_latency"] == table["fs_bytes"] == "kernel"
    # the kernel feeds every FUSE number: s3fs runs without its debug level,
    # and its curldbg lines still give request latency (asserted above)
    driver_cmd = open(f"/proc/{my_status(env, mountpoint)['driver_pid']}/cmdline").read().split("\0")
    assert "dbglevel=warn" in driver_cmd and "curldbg" in driver_cmd, driver_cmd
    assert m.stop(30) == 0


def _kernel_counts(mountpoint):
    """An in-process kernel collector on the mount (independent of obsctl's)."""
    attrs = MountAttributes("", "rclone", str(mountpoint))
    reader, ins = in_memory(attrs)
    col = FuseTraceCollector(ins, str(mountpoint), support=detect_support(disabled=False))
    col.poll()
    return reader, attrs, col


def test_rclone_kernel_counts_agree_with_log_counts(s3_server, bucket, mountpoint, env, otlp, telemetry_toml,
                                                    start_mount):
    """The fallback and the cross-check at once: with OBSCTL_FUSE_TRACE=off
    obsctl runs rclone at debug level and rclone_log feeds obsctl_fs_ops
    (status says so); an independent kernel collector in this test counts the
    same workload. Equal per opcode for lookup/open/create/read/write/flush/
    release/unlink (rclone logs each of those once per request); getattr
    bounded as below (docs/metrics.md)."""
    require_driver("rclone")
    env = dict(env, OBSCTL_FUSE_TRACE="off")
    tel = telemetry_toml(export_interval_seconds=1)
    m = start_mount(s3_mount_args(bucket, mountpoint, "rclone", s3_server.endpoint, tel), env)
    m.wait_ready(30)
    st = my_status(env, mountpoint)
    assert st["sources"]["kernel"] == "none" and st["sources"]["fs_ops"] == "rclone_log", st["sources"]
    driver_cmd = open(f"/proc/{st['driver_pid']}/cmdline").read().split("\0")
    assert driver_cmd[driver_cmd.index("--log-level") + 1] == "DEBUG"
    attrs = {"impl": "rclone", "bucket": bucket}
    time.sleep(2.5)
    before = ops(otlp, **attrs)
    reader, mattrs, col = _kernel_counts(mountpoint)
    try:
        # under rclone's --streaming-upload-cutoff (100 KiB): one PutObject (see test_mount.py)
        workload(mountpoint, "data-b.bin", 50_000)
        for _stat in range(5):
            os.stat(mountpoint / "hello.txt")
            with open(mountpoint / "hello.txt", "rb") as fh:
                fh.read()
        time.sleep(2.5)
    finally:
        col.close()
    kernel = {dict(k[1])["opcode"]: v for k, v in metric_points(reader, mattrs).items() if k[0] == "obsctl_fs_ops"}
    after = ops(otlp, **attrs)
    log = {op: after.get(op, 0) - before.get(op, 0) for op in after}
    log["unlink"] = log.pop("remove", 0)  # rclone's Remove serves FUSE_UNLINK (and RMDIR)
    for op in ("lookup", "open", "create", "read", "write", "flush", "release", "unlink"):
        assert kernel.get(op, 0) == log.get(op, 0), (op, kernel, log)
    # rclone (bazil.org/fuse) logs an Attr for every GETATTR and also for the
    # attributes of each successful LOOKUP reply: kernel getattr <= log
    # getattr <= kernel getattr + kernel lookups (measured: 6, 9 = 6 + 3 hits)
    assert kernel["getattr"] <= log["getattr"] <= kernel["getattr"] + kernel["lookup"], (kernel, log)
    assert m.stop(30) == 0


def test_rclone_runs_without_debug_log_when_the_kernel_feeds(s3_server, bucket, mountpoint, env, otlp,
                                                             telemetry_toml, start_mount):
    require_driver("rclone")
    tel = telemetry_toml(export_interval_seconds=1)
    m = start_mount(s3_mount_args(bucket, mountpoint, "rclone", s3_server.endpoint, tel), env)
    m.wait_ready(30)
    st = my_status(env, mountpoint)
    driver_cmd = open(f"/proc/{st['driver_pid']}/cmdline").read().split("\0")
    assert driver_cmd[driver_cmd.index("--log-level") + 1] == "INFO"
    moved = workload(mountpoint, "data-a.bin", 50_000)
    attrs = {"impl": "rclone", "bucket": bucket}
    wait_until(lambda: all(ops(otlp, **attrs).get(op, 0) >= 1 for op in OPCODES), 20,
               lambda: f"ops {OPCODES}: {ops(otlp, **attrs)}")
    wait_until(lambda: otlp.latest("obsctl_fs_write_bytes", **attrs) == moved["write"], 10, "write bytes")
    assert my_status(env, mountpoint)["sources"]["fs_latency"] == "kernel"
    assert m.stop(30) == 0


def test_sidecar_gets_the_kernel_collector(tmp_path, mountpoint, runtime_dir, otlp):
    require_driver("generic")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x" * 10000)
    env = obsctl_env(runtime_dir)
    bindfs = subprocess.Popen(["bindfs", "-f", str(src), str(mountpoint)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sidecar = None
    try:
        wait_until(lambda: is_mounted(mountpoint), 10, "bindfs mounted")
        sidecar = subprocess.Popen(
            [*obsctl_command(), "sidecar", "--pid", str(bindfs.pid), "--mountpoint", str(mountpoint),
             "--impl", "bindfs", "--source", "local", "--otel-endpoint", otlp.grpc_endpoint],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_until(lambda: [e for e in status_json(env) if e.get("mountpoint") == str(mountpoint)
                            and (e.get("sources") or {}).get("kernel_trace", {}).get("instance")], 15,
                   "sidecar traces the mount")
        assert (mountpoint / "f").read_bytes() == b"x" * 10000
        # the sidecar exports every 30 s by default; its state file has the totals
        wait_until(lambda: my_status(env, mountpoint)["read_bytes"] == 10000, 15,
                   lambda: f"read bytes in status: {my_status(env, mountpoint)}")
        sidecar.send_signal(signal.SIGTERM)
        sidecar.communicate(timeout=15)
        assert not [p for p in INSTANCES.iterdir() if p.name.startswith(f"obsctl-{sidecar.pid}-")]
    finally:
        for proc in (sidecar, bindfs):
            if proc is not None and proc.poll() is None:
                proc.kill()
        force_cleanup(mountpoint)


def _storm(mnt: Path, files: int) -> None:
    for i in range(files):
        p = mnt / f"f{i}"
        with open(p, "wb") as fh:
            fh.write(b"x" * 64)
        os.stat(p)
        os.unlink(p)


@pytest.mark.parametrize("buffer_kb", [8, None])
def test_requests_lost_are_exported_and_add_up_to_the_kernel_count(tmp_path, mountpoint, buffer_kb):
    """bindfs under a metadata storm, the tracefs source on it with a tiny
    per-CPU buffer (8 KiB: the kernel must overwrite events) or the default
    one: counted requests (obsctl_fs_ops_total) + obsctl_kernel_events_lost_total
    {part="count"} = the kernel's own count from a second instance; never less."""
    require_driver("generic")
    src = tmp_path / "src"
    src.mkdir()
    bindfs = subprocess.Popen(["bindfs", "-f", str(src), str(mountpoint)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    counter = col = None
    try:
        wait_until(lambda: is_mounted(mountpoint), 10, "bindfs mounted")
        os.stat(mountpoint)
        attrs = MountAttributes("", "generic", str(mountpoint))
        reader, ins = in_memory(attrs)
        col = FuseTraceCollector(ins, str(mountpoint), support=detect_support(disabled=False),
                                 buffer_size_kb=buffer_kb)
        col.poll()
        assert col.instance is not None
        counter = KernelCount(connection_of(mountpoint))
        for _round in range(4):
            _storm(mountpoint, 1500)
            col.poll()
        time.sleep(0.3)
        col.close()  # drains trace_pipe and reads the loss counters last
        kernel = counter.counts()
        sends, ends, kernel_lost = kernel["sends"], kernel["ends"], kernel["overrun"] + kernel["dropped"]
        assert kernel_lost == 0 and sends == ends, (sends, ends, kernel_lost)
        pts = metric_points(reader, attrs)
        counted = sum(v for k, v in pts.items() if k[0] == "obsctl_fs_ops")
        lost = {dict(k[1])["part"]: v for k, v in pts.items() if k[0] == "obsctl_kernel_events_lost"}
        st = col.stats()
        assert counted == st["sends"]
        assert lost.get("count", 0) == st["requests_lost"]
        print(f"buffer_kb={buffer_kb} kernel sends={sends} counted={counted} lost={lost} stats={st}")
        assert counted + lost.get("count", 0) == sends, (counted, lost, sends, st)
        if buffer_kb is not None:
            # the tiny buffer did overflow: the loss is visible, and counting mode engaged
            assert st["lost"] > 0 and lost.get("count", 0) > 0 and st["degradations"] >= 1, st
            assert lost.get("detail", 0) > 0, st
    finally:
        if col is not None:
            col.close()
        if counter is not None:
            counter.close()
        force_cleanup(mountpoint)
        if bindfs.poll() is None:
            bindfs.kill()
        bindfs.wait(10)
