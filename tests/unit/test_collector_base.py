"""The collector base class: the one "never raise" guard (template methods feed / poll /
close around the subclass hooks, one warning per distinct failure) and each collector's
own part of ``obsctl status`` (collector_status)."""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

from obsctl.collectors import EMPTY_STATUS, LogCollector, PollingCollector, collector_status
from obsctl.collectors.probe import MountProbe
from obsctl.collectors.proc_io import ProcIoCollector
from obsctl.collectors.rclone_rc import RcloneRcCollector
from obsctl.drivers.generic import GenericDriver
from obsctl.instruments import MountAttributes
from obsctl.logpump import LogPump
from support.metrics import in_memory

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ATTRS = MountAttributes(bucket="b", impl="rclone", mountpoint="/mnt/b")
SECRET = "Sup3rSecretInTheLine"


class Exploding(PollingCollector):
    """Raises a KeyError on even polls and a ZeroDivisionError on odd ones, from two lines."""

    def __init__(self, instruments):
        super().__init__(instruments)
        self.polls = 0

    def _poll(self):
        self.polls += 1
        if self.polls % 2:
            raise KeyError(SECRET)
        self.ratio = 1 / 0

    def _close(self):
        raise OSError(f"cannot release {SECRET}")

    def status(self):
        raise RuntimeError("status broke")


class ExplodingLog(LogCollector):
    def __init__(self, instruments):
        super().__init__(instruments)
        self.lines: list[str] = []

    def _feed(self, line):
        self.lines.append(line)
        if "boom" in line:
            raise ValueError(line)


def warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_poll_never_raises_and_warns_once_per_distinct_failure(caplog):
    _reader, ins = in_memory(ATTRS)
    collector = Exploding(ins)
    with caplog.at_level(logging.DEBUG, logger="obsctl.collectors"):
        for _round in range(6):
            assert collector.poll() is None
        collector.close()
        collector.close()
    assert collector.polls == 6 and collector.failures == 8
    shown = warnings(caplog)
    assert len(shown) == 3, shown  # KeyError, ZeroDivisionError, OSError of close: once each
    assert any("Exploding.poll failed: KeyError at test_collector_base.py:" in w for w in shown)
    assert any("Exploding.poll failed: ZeroDivisionError" in w for w in shown)
    assert any("Exploding.close failed: OSError" in w for w in shown)
    assert all(SECRET not in w for w in shown)  # the exception's text may quote a log line: never shown


def test_status_that_raises_contributes_nothing(caplog):
    _reader, ins = in_memory(ATTRS)
    with caplog.at_level(logging.WARNING, logger="obsctl.collectors"):
        assert collector_status([Exploding(ins)]) == EMPTY_STATUS
    assert any("Exploding.status failed: RuntimeError" in w for w in warnings(caplog))


def test_a_raising_log_collector_does_not_stop_the_pump_or_the_others():
    """A real LogPump over a driver's output: the broken collector loses its line, nobody else does."""
    _reader, ins = in_memory(ATTRS)
    broken, other = ExplodingLog(ins), ExplodingLog(ins)
    stream = io.BytesIO(b"one\nboom two\nthree\n")
    pump = LogPump(stream, GenericDriver(), [])
    pump.attach([broken.feed, other.feed])
    pump.run()
    assert broken.lines == other.lines == ["one", "boom two", "three"]
    assert broken.failures == other.failures == 1


def test_each_collector_contributes_its_own_status(tmp_path):
    _reader, ins = in_memory(ATTRS)
    (tmp_path / "42").mkdir()
    shutil.copy(FIXTURES / "rclone/ok/io", tmp_path / "42" / "io")
    proc_io = ProcIoCollector(ins, lambda: 42, proc=str(tmp_path))
    proc_io.poll()
    probe = MountProbe(ins, "/mnt/b")
    probe.mark("down")
    rc = RcloneRcCollector(ins, "http://127.0.0.1:9")
    rc.last_vfs_stats = {"metadataCache": {"dirs": 1, "files": 2}}
    assert collector_status([]) == EMPTY_STATUS
    status = collector_status([proc_io, probe, rc])
    assert status == {
        "health": "down",
        "driver_io": {"read_bytes": 1318877, "write_bytes": 1301149},  # rchar / wchar of the fixture
        "driver_stats": {"last_vfs_stats": {"metadataCache": {"dirs": 1, "files": 2}}},
    }
    assert EMPTY_STATUS["driver_stats"] == {}  # merging never writes into the defaults


#: The keys of a mount's state file as ``obsctl mount`` wrote them before collectors had a
#: status() of their own (obsctl top, topstats and ``obsctl status`` read them).
STATE_KEYS = {"name", "mountpoint", "source", "bucket", "impl", "state", "pid", "driver_pid", "driver_start",
              "started_at", "ready_at", "restarts", "health", "read_bytes", "write_bytes", "write_refused_bytes",
              "fs_ops", "errors",
              "driver_io", "driver_stats", "telemetry_mode", "last_export", "prometheus", "live", "sources"}


def test_supervisor_status_keeps_the_state_file_shape(tmp_path):
    from obsctl.config import parse_telemetry
    from obsctl.mountspec import build_mount_spec
    from obsctl.drivers import get_driver
    from obsctl.supervisor import Supervisor

    spec = build_mount_spec({"source": "s3://bucket", "mountpoint": str(tmp_path / "m"), "impl": "rclone"})
    sup = Supervisor(spec, parse_telemetry({"telemetry": {"mode": "none"}}), None, str(tmp_path), get_driver("rclone"))
    status = sup.observer.status()  # before telemetry: no collector yet
    assert set(status) == STATE_KEYS
    assert {k: status[k] for k in EMPTY_STATUS} == EMPTY_STATUS
    _reader, ins = in_memory(ATTRS)
    probe = MountProbe(ins, str(tmp_path / "m"))
    probe.mark("stopping")
    sup.observer.polling = [probe]
    status = sup.observer.status()
    assert set(status) == STATE_KEYS and status["health"] == "stopping"
