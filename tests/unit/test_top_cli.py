"""obsctl top without a terminal, Instruments.live() and the lazy import of rich.

The state files are the real snapshots of tests/fixtures/top/ (see
test_topstats.py), written into a runtime directory the way the supervisor
writes them, and read back by the real ``read_states``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from obsctl import cli, top
from obsctl.collectors.fuse_conn import FuseConnCollector
from obsctl.fileutil import atomic_write
from obsctl.instruments import LATENCY_BUCKETS_MS, MountAttributes
from support.metrics import data_points, in_memory

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def state(name: str) -> dict:
    data = json.loads((FIXTURES / "top" / f"{name}.json").read_text())
    data["pid"] = os.getpid()  # a running pid, so read_states does not call it dead
    return data


def write(runtime: Path, data: dict) -> None:
    (runtime / "mounts").mkdir(parents=True, exist_ok=True)
    atomic_write(str(runtime / "mounts" / f"{data['name']}.json"), json.dumps(data), 0o640)


def later(runtime: Path, delay: float = 0.3) -> threading.Thread:
    """Write the b snapshots ``delay`` s from now (the supervisor's next poll)."""

    def run() -> None:
        time.sleep(delay)
        write(runtime, state("rclone-b"))
        write(runtime, state("bindfs-b"))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.fixture
def runtime(tmp_path) -> Path:
    for name in ("rclone-a", "bindfs-a"):
        write(tmp_path, state(name))
    return tmp_path


def test_once_waits_for_the_next_write_and_prints_plain_text(runtime, capsys):
    writer = later(runtime)
    assert top.run(once=True, wait=10, runtime_dir=str(runtime)) == 0
    writer.join()
    out = capsys.readouterr().out
    assert "\x1b" not in out and all(line == line.rstrip() for line in out.splitlines())
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("cap-")}
    rclone = lines["cap-rclone"]
    # NAME MOUNTPOINT IMPL STATE READ WRITE OPS ERR WAIT DRV OPCODE...
    assert rclone[2:9] == ["rclone", "ready/ok", "23.46", "0.14", "215", "0.5", "2"], rclone
    assert rclone[10:13] == ["read", "188", "0.80/47"], rclone  # ops/s p50/p99 (ms) of read
    assert rclone[-4:] == ["n/a", "(kernel", "source", "off)"]
    assert lines["cap-bindfs"][2:8] == ["generic", "ready/ok", "0.00", "0.00", "0", "0.0"]
    assert "2 mounts" in out.splitlines()[0]


def test_json_rows(runtime, capsys):
    writer = later(runtime)
    assert top.run(as_json=True, wait=10, runtime_dir=str(runtime)) == 0
    writer.join()
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["cap-rclone"]["ops_per_s"] == pytest.approx(432 / 2.0089244842529297)
    assert rows["cap-rclone"]["opcodes"][0]["opcode"] == "read"
    assert rows["cap-rclone"]["requesters"] is None
    assert rows["cap-bindfs"]["driver_read_mib_s"] > 0


def test_once_gives_up_waiting_and_shows_dashes(runtime, capsys):
    started = time.monotonic()
    assert top.run(once=True, wait=0.3, runtime_dir=str(runtime)) == 0
    assert time.monotonic() - started < 5
    rclone = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("cap-rclone")][0]
    assert rclone[4:8] == ["-", "-", "-", "-"], rclone


def test_dead_supervisor_and_no_mounts(tmp_path, capsys):
    assert top.run(once=True, wait=0.2, runtime_dir=str(tmp_path)) == 0
    assert "no mounts run by obsctl on this host" in capsys.readouterr().out
    dead = state("rclone-b")
    dead["pid"] = 2 ** 22 + 1  # above pid_max's ceiling: never a running process
    write(tmp_path, dead)
    assert top.run(once=True, wait=0.2, runtime_dir=str(tmp_path)) == 0
    row = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("cap-rclone")][0]
    assert row[3] == "dead/missing" and row[4] == "-"  # a dead supervisor never shows ok


def test_cli_rejects_bad_intervals(capsys):
    for bad in ("0", "-1", "nan", "inf", "soon"):
        with pytest.raises(SystemExit) as exc:
            cli.main(["top", "--interval", bad])
        assert exc.value.code == 2
        assert "--interval" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["top", "--wait", "0"])
    assert "greater than 0" in capsys.readouterr().err


def test_cli_top_once(runtime, capsys, monkeypatch):
    monkeypatch.setenv("OBSCTL_RUNTIME_DIR", str(runtime))
    assert cli.main(["top", "--once", "--wait", "0.2"]) == 0
    assert "cap-rclone" in capsys.readouterr().out


def test_mount_and_status_do_not_import_rich():
    code = ("import sys; from obsctl import cli, supervisor, instruments, topstats, telemetry; "
            "cli.main(['status']); "
            "print(sorted(m for m in sys.modules if m == 'rich' or m.startswith('rich.')))")
    env = {**os.environ, "OBSCTL_RUNTIME_DIR": "/nonexistent-obsctl-top-test"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
                         check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[]"


def test_instruments_live_counts_buckets_errors_and_waiting(tmp_path):
    mountpoint = dict(line.split(" ", 1) for line in
                      (FIXTURES / "mountinfo" / "mountpoints.txt").read_text().splitlines())["bindfs"]
    sys_copy = tmp_path / "sys"
    shutil.copytree(FIXTURES / "sys", sys_copy)
    (sys_copy / "fs" / "fuse" / "connections" / "42" / "waiting").write_text("3\n")
    reader, ins = in_memory(MountAttributes("b", "generic", mountpoint))
    assert ins.live()["waiting"] is None  # no fuse_conn collector registered yet
    conn = FuseConnCollector(ins, mountpoint, sys_path=str(sys_copy),
                             mountinfo_path=str(FIXTURES / "mountinfo" / "live.txt"))
    conn.poll()
    before = time.time()
    # bucket bounds are upper-inclusive, as OpenTelemetry's explicit buckets
    for ms in (0.05, 0.051, 1, 30000, 30001):
        ins.record_fs_op("read", ms)
    ins.record_fs_op("lookup")  # no latency: counted, not in a bucket
    ins.add_read_bytes(4096)
    ins.add_error("enoent", 2)
    live = ins.live()
    assert before <= live["time"] <= time.time()
    assert live["latency_bounds_ms"] == list(LATENCY_BUCKETS_MS)
    buckets = live["latency_buckets"]["read"]
    assert len(buckets) == len(LATENCY_BUCKETS_MS) + 1
    expected = [0] * len(buckets)
    for index in (0, 1, LATENCY_BUCKETS_MS.index(1), len(LATENCY_BUCKETS_MS) - 1, len(LATENCY_BUCKETS_MS)):
        expected[index] += 1
    assert buckets == expected
    assert live["latency_sum_ms"]["read"] == pytest.approx(0.05 + 0.051 + 1 + 30000 + 30001)
    assert "lookup" not in live["latency_buckets"]
    assert live["ops_by_opcode"] == {"read": 5, "lookup": 1} and live["ops"] == 6
    assert live["read_bytes"] == 4096 and live["errors"] == 2 and live["errors_by_type"] == {"enoent": 2}
    assert live["waiting"] == 3
    json.dumps(live)  # JSON-ready
    # the OTel histogram saw the same values in the same buckets
    metric = [m for m, labels, _v in data_points(reader, "obsctl_fs_latency_ms") if labels["opcode"] == "read"][0]
    point = [p for p in metric.data.data_points if p.attributes["opcode"] == "read"][0]
    assert list(point.explicit_bounds) == list(LATENCY_BUCKETS_MS)
    assert list(point.bucket_counts) == expected


def test_unreadable_state_directory_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "mounts").write_text("not a directory\n")
    assert top.run(once=True, wait=0.1, runtime_dir=str(tmp_path)) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"cannot read the mount states in {tmp_path}/mounts: Not a directory" in captured.err
    assert "OBSCTL_RUNTIME_DIR" in captured.err
