"""obsctl.observer.MountObserver: the steps (start, attach, poll, reload, close) on real collectors.

The mountpoint is a plain directory (nothing mounted): the probe says
``missing``; the driver is rclone with an rc URL on a closed loopback port, so
its polling collector (rclone rc) is built and polls for real (and fails to
connect, which collectors report, never raise).
"""

from __future__ import annotations

import json
from pathlib import Path

from obsctl import health
from obsctl.collectors.rclone_rc import RcloneRcCollector
from obsctl.config import parse_telemetry
from obsctl.drivers import LaunchPlan, get_driver
from obsctl.observer import DriverConnection, MountLabels, MountObserver
from support.net import closed_port

from test_collector_base import STATE_KEYS

NONE = parse_telemetry({"telemetry": {"mode": "none"}})


def observer(tmp_path: Path) -> MountObserver:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    labels = MountLabels(str(mountpoint), "s3://bucket", "bucket", "rclone", name="data")
    return MountObserver(labels, NONE, str(tmp_path / "run"), probe_timeout=0.5)


def rclone_connection() -> DriverConnection:
    plan = LaunchPlan(argv=[], env={}, fstype="fuse.rclone",
                      extras={"rc_url": f"http://127.0.0.1:{closed_port()}", "rc_auth": None})
    return DriverConnection(lambda: None, None, get_driver("rclone"), plan)


def test_attach_before_start_builds_the_driver_collectors_once_telemetry_runs(tmp_path):
    obs = observer(tmp_path)
    obs.attach(rclone_connection())
    assert obs.polling == [] and obs.telemetry is None  # nothing observed yet: READY=1 must wait
    obs.start()
    try:
        assert any(isinstance(c, RcloneRcCollector) for c in obs.polling)
        assert obs.probe in obs.polling and obs.sources.kernel in obs.polling
        assert obs.poll() is True
        assert obs.probe.health == health.MISSING
        obs.write_state()
        state = json.loads(Path(obs.state_path).read_text())
        assert set(state) == STATE_KEYS and state["health"] == health.MISSING and state["name"] == "data"
    finally:
        obs.close()
    assert not Path(obs.state_path).exists()


def test_reload_rebuilds_telemetry_and_collectors_and_keeps_the_driver(tmp_path):
    obs = observer(tmp_path)
    connection = rclone_connection()
    obs.start()
    obs.attach(connection)
    old_telemetry, old_rc = obs.telemetry, [c for c in obs.polling if isinstance(c, RcloneRcCollector)]
    try:
        obs.reload(parse_telemetry({"telemetry": {"mode": "none", "resource": {"service_name": "renamed"}}}))
        assert obs.telemetry is not old_telemetry and obs.connection is connection
        new_rc = [c for c in obs.polling if isinstance(c, RcloneRcCollector)]
        assert len(new_rc) == 1 and new_rc[0] is not old_rc[0]
        assert obs.telemetry_cfg.resource.service_name == "renamed"
        assert obs.poll() is True and obs.probe.health == health.MISSING
    finally:
        obs.close()


def test_mark_is_written_at_once_and_wins_over_the_state(tmp_path):
    obs = observer(tmp_path)
    obs.start()
    try:
        obs.mark(health.DOWN, "restarting")
        state = json.loads(Path(obs.state_path).read_text())
        assert (state["state"], state["health"]) == ("restarting", health.DOWN)
    finally:
        obs.close()
