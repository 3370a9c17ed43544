"""obsctl.scrape: one scrape endpoint per host, real sockets and real exposition text.

Several :class:`obsctl.telemetry.Telemetry` objects in one process stand for
several mounts (each publishes under its own state key); the integration test
tests/integration/test_shared_endpoint.py does the same with three real mounts
and a real Prometheus.
"""

from __future__ import annotations

import logging
import os
import socket
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from obsctl import scrape
from obsctl.config import parse_telemetry
from obsctl.instruments import MountAttributes
from obsctl.telemetry import Telemetry


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make(tmp_path, port: int, mountpoint: str) -> Telemetry:
    cfg = parse_telemetry({"telemetry": {"mode": "remote", "traces": {"enabled": False},
                                         "metrics": {"bind_address": f"127.0.0.1:{port}"}}})
    telemetry = Telemetry(cfg, MountAttributes("data", "rclone", mountpoint),
                          publish_path=scrape.publish_path(str(tmp_path), mountpoint))
    telemetry.instruments.add_read_bytes(100)
    telemetry.instruments.record_fs_op("read", 1.0)
    return telemetry


def scrape_text(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def samples(text: str, name: str) -> dict[str, float]:
    """``mountpoint label -> value`` of sample ``name`` (fails on a duplicate series)."""
    out: dict[str, float] = {}
    seen = set()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            ident = (s.name, tuple(sorted(s.labels.items())))
            assert ident not in seen, f"duplicate series {ident}"
            seen.add(ident)
            if s.name == name:
                out[s.labels["mountpoint"]] = s.value
    return out


def test_two_mounts_one_port_both_scraped_then_the_other_takes_over(tmp_path, caplog):
    port = free_port()
    caplog.set_level(logging.INFO)
    first = make(tmp_path, port, "/mnt/a")
    second = make(tmp_path, port, "/mnt/b-c")  # EADDRINUSE: no exception, the mount lives
    try:
        assert first.endpoint.serving and not second.endpoint.serving
        assert "Address already in use" in second.endpoint.bind_error
        second.instruments.add_read_bytes(5)
        first.poll()
        second.poll()
        text = scrape_text(port)
        # every family once, every series of both mounts, told apart by mountpoint
        assert text.count("# TYPE obsctl_fs_read_bytes_total counter") == 1
        assert samples(text, "obsctl_fs_read_bytes_total") == {"/mnt/a": 100, "/mnt/b-c": 105}
        assert set(samples(text, "obsctl_fs_ops_total")) == {"/mnt/a", "/mnt/b-c"}
        assert set(samples(text, "target_info")) == {"/mnt/a", "/mnt/b-c"}
        # the second knows who serves: one INFO line, no warning
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "9464" not in r.getMessage()
                    and str(port) in r.getMessage()]
        # the holder leaves: its file goes, the other binds at its next poll and serves its own series
        first.shutdown()
        assert not os.path.exists(first.endpoint.path)
        second.poll()
        assert second.endpoint.serving
        assert samples(scrape_text(port), "obsctl_fs_read_bytes_total") == {"/mnt/b-c": 105}
    finally:
        first.shutdown()
        second.shutdown()
    assert not os.listdir(scrape.metrics_dir(str(tmp_path)))


def test_mounts_on_two_addresses_never_serve_each_other(tmp_path):
    """Two telemetry files naming two addresses: two endpoints, each with its own mount only
    (the holder of one address must not serve, and then drop, the other's series)."""
    one, two = free_port(), free_port()
    first = make(tmp_path, one, "/mnt/a")
    second = make(tmp_path, two, "/mnt/b")
    try:
        first.poll()
        second.poll()
        assert first.endpoint.serving and second.endpoint.serving
        assert set(samples(scrape_text(one), "obsctl_fs_read_bytes_total")) == {"/mnt/a"}
        assert set(samples(scrape_text(two), "obsctl_fs_read_bytes_total")) == {"/mnt/b"}
    finally:
        first.shutdown()
        second.shutdown()


def test_dead_publishers_file_is_dropped(tmp_path):
    port = free_port()
    holder = make(tmp_path, port, "/mnt/a")
    try:
        os.makedirs(scrape.metrics_dir(str(tmp_path)), exist_ok=True)
        dead = os.path.join(scrape.metrics_dir(str(tmp_path)), "mnt-gone.prom")
        with open(dead, "w", encoding="utf-8") as handle:  # pid 2**22+1 is above any pid_max
            handle.write("# obsctl-publisher pid=4194305 start=1 serving=0\n"
                         "# TYPE obsctl_fs_read_bytes_total counter\n"
                         'obsctl_fs_read_bytes_total{bucket="x",impl="s3fs",mountpoint="/mnt/gone"} 7.0\n')
        assert samples(scrape_text(port), "obsctl_fs_read_bytes_total") == {"/mnt/a": 100}
        assert not os.path.exists(dead)
    finally:
        holder.shutdown()


def test_port_held_by_a_stranger_warns_once_and_keeps_the_mount(tmp_path, caplog):
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        port = stranger.getsockname()[1]
        telemetry = make(tmp_path, port, "/mnt/a")
        try:
            for _round in range(scrape.FOREIGN_HOLDER_POLLS + 3):
                telemetry.poll()
            warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(warnings) == 1, warnings
            assert f"127.0.0.1:{port}" in warnings[0] and "no obsctl process serves it" in warnings[0]
            assert telemetry.instruments.totals["obsctl_fs_read_bytes"] == 100
        finally:
            telemetry.shutdown()
