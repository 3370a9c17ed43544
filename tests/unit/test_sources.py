"""sources: one source per FUSE quantity per mount, over the real log captures."""

from __future__ import annotations

from pathlib import Path

import pytest

from obsctl.collectors.rclone_log import RcloneLogCollector
from obsctl.collectors.s3fs_log import S3fsLogCollector
from obsctl.drivers import get_driver
from obsctl.instruments import MountAttributes
from obsctl.sources import SourceTable
from support.metrics import in_memory
from support.metrics import points as metric_points

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def run(impl, level, collector_cls, log_path):
    attrs = MountAttributes("obsctl-fixture", impl, "/mnt/fixture")
    reader, ins = in_memory(attrs)
    driver = get_driver(impl)
    table = SourceTable(impl, lambda: level, driver_source=(driver.log_source, driver.log_gives))
    collector = collector_cls(table.driver_view(ins))
    for line in log_path.read_text().splitlines():
        collector.feed(line)
    names = {}
    for (name, labels), value in metric_points(reader, attrs).items():
        key = name if name != "obsctl_errors" else f"errors:{dict(labels)['error_type']}"
        if isinstance(value, tuple):  # histogram: (count, sum)
            value = value[0]
        names[key] = names.get(key, 0) + value
    return table, names


def test_rclone_without_kernel_keeps_every_log_number():
    table, got = run("rclone", "none", RcloneLogCollector, FIXTURES / "rclone/write400/rclone.log")
    assert table.as_dict()["fs_ops"] == "rclone_log"
    assert got["obsctl_fs_ops"] > 0 and got["obsctl_fs_latency_ms"] > 0
    assert got["obsctl_fs_read_bytes"] > 0 and got["errors:eio"] == 1


def test_rclone_with_paired_kernel_records_nothing_from_the_log():
    table, got = run("rclone", "paired", RcloneLogCollector, FIXTURES / "rclone/write400/rclone.log")
    assert {table.owner(q) for q in ("fs_ops", "fs_latency", "fs_bytes", "fs_errors")} == {"kernel"}
    assert got == {}


def test_rclone_with_unpaired_kernel_keeps_latency_and_bytes_only():
    table, got = run("rclone", "unpaired", RcloneLogCollector, FIXTURES / "rclone/write400/rclone.log")
    assert table.owner("fs_ops") == "kernel" and table.owner("fs_latency") == "rclone_log"
    assert "obsctl_fs_ops" not in got and "errors:eio" not in got
    assert got["obsctl_fs_latency_ms"] > 0 and got["obsctl_fs_read_bytes"] > 0


def test_unpaired_kernel_latency_reaches_the_buckets_obsctl_top_reads():
    """6.12-6.17 (tracepoints, no pairing): the log owns latency, and ``obsctl top``'s live
    buckets (Instruments.live()["latency_buckets"]) get it as the OTel histogram does (issue 17)."""
    attrs = MountAttributes("obsctl-fixture", "rclone", "/mnt/fixture")
    _reader, ins = in_memory(attrs)
    driver = get_driver("rclone")
    table = SourceTable("rclone", lambda: "unpaired", driver_source=(driver.log_source, driver.log_gives))
    collector = RcloneLogCollector(table.driver_view(ins))
    for line in (FIXTURES / "rclone/write400/rclone.log").read_text().splitlines():
        collector.feed(line)
    buckets = ins.live()["latency_buckets"]
    assert buckets and sum(sum(b) for b in buckets.values()) > 0
    assert not ins.ops_by_opcode  # the kernel counts operations, not the log


@pytest.mark.parametrize("level", ["paired", "none"])
def test_s3fs_http_errors_and_request_latency_always_from_its_log(level):
    _table, got = run("s3fs", level, S3fsLogCollector, FIXTURES / "s3fs/auth403/s3fs.log")
    assert got["errors:http_403"] == 1 and got["obsctl_operation_duration_ms"] > 0
    _table, got = run("s3fs", level, S3fsLogCollector, FIXTURES / "s3fs/dbg/s3fs.log")
    assert got["obsctl_operation_duration_ms"] > 0
    assert ("obsctl_fs_ops" in got) == ("obsctl_fs_read_bytes" in got) == (level == "none")


def test_generic_has_no_driver_source():
    table = SourceTable("generic", lambda: "none")
    assert {table.owner(q) for q in ("fs_ops", "fs_latency", "fs_bytes", "fs_errors")} == {None}
    rclone = get_driver("rclone")
    sidecar = SourceTable("rclone", lambda: "none", driver_log=False,
                          driver_source=(rclone.log_source, rclone.log_gives))
    assert sidecar.owner("fs_ops") is None


def _rclone_log_level(context=None):
    from obsctl.config import parse_telemetry
    from obsctl.mountspec import build_mount_spec
    from obsctl.drivers import PlanContext
    from obsctl.drivers.rclone import RcloneDriver

    if context is None:  # what the supervisor passes: read from this host's kernel
        from obsctl.observer import plan_context

        context = plan_context(parse_telemetry({"telemetry": {"mode": "none"}}))
    plan = RcloneDriver().plan(build_mount_spec({"source": "s3://bucket", "mountpoint": "/mnt/x", "impl": "rclone"}),
                               None, context)
    return plan.argv[plan.argv.index("--log-level") + 1]


def test_rclone_debug_log_only_when_the_kernel_cannot_give_everything(monkeypatch):
    from obsctl.collectors.fuse_trace import detect_support
    from obsctl.drivers import PlanContext

    assert _rclone_log_level(PlanContext(kernel_complete=False, listen=False)) == "DEBUG"
    assert _rclone_log_level(PlanContext(kernel_complete=True, listen=False)) == "INFO"
    from obsctl.collectors import fuse_bpf

    monkeypatch.setenv("OBSCTL_FUSE_TRACE", "off")
    monkeypatch.setenv("OBSCTL_FUSE_BPF", "off")
    assert _rclone_log_level() == "DEBUG"
    monkeypatch.delenv("OBSCTL_FUSE_TRACE")
    monkeypatch.delenv("OBSCTL_FUSE_BPF")
    fuse_bpf.reset_for_tests()
    ebpf = fuse_bpf.unavailable_reason() is None and fuse_bpf.shared_probe()[0] is not None
    if ebpf:
        fuse_bpf.release_probe()
    expected = "INFO" if ebpf or detect_support().level == "paired" else "DEBUG"
    assert _rclone_log_level() == expected


def _s3fs_log_level(context):
    from obsctl.drivers.s3fs import S3fsDriver
    from obsctl.mountspec import build_mount_spec

    plan = S3fsDriver().plan(build_mount_spec({"source": "s3://bucket", "mountpoint": "/mnt/x", "impl": "s3fs"}),
                             None, context)
    levels = [a for a in plan.argv if a.startswith("dbglevel=")]
    assert len(levels) == 1 and "curldbg" in plan.argv, plan.argv
    return levels[0].split("=", 1)[1]


def test_s3fs_debug_log_only_when_the_kernel_cannot_give_everything():
    """s3fs's dbg level feeds FUSE ops and bytes; when the kernel owns them it
    runs at warn (curldbg lines print at every level: s3fs 1.90 src/s3fs_logger.h:170)."""
    from obsctl.drivers import PlanContext

    assert _s3fs_log_level(PlanContext(kernel_complete=False, listen=False)) == "dbg"
    assert _s3fs_log_level(PlanContext(kernel_complete=True, listen=False)) == "warn"


def test_plan_context_follows_the_telemetry_mode():
    """Mode none opens no port (no rclone rc API); a mode that exports lets rclone serve its rc on loopback."""
    from obsctl.config import parse_telemetry
    from obsctl.mountspec import build_mount_spec
    from obsctl.drivers.rclone import RcloneDriver
    from obsctl.observer import plan_context

    spec = build_mount_spec({"source": "s3://bucket", "mountpoint": "/mnt/x", "impl": "rclone"})
    none = plan_context(parse_telemetry({"telemetry": {"mode": "none"}}))
    local = plan_context(parse_telemetry({"telemetry": {"mode": "local"}}))
    assert not none.listen and local.listen and local.telemetry.mode == "local"
    quiet = RcloneDriver().plan(spec, None, none)
    assert "--rc" not in quiet.argv and "rc_url" not in quiet.extras and "RCLONE_RC_PASS" not in quiet.env
    served = RcloneDriver().plan(spec, None, local)
    assert served.argv[served.argv.index("--rc-addr") + 1].startswith("127.0.0.1:")
    assert served.env["RCLONE_RC_PASS"] in served.secrets and served.extras["rc_url"].startswith("http://127.0.0.1:")
