"""juicefs: the driver outside the S3 mould (metadata URL, META_PASSWORD, its own Prometheus endpoint).

The collector is fed the real exposition of a juicefs 1.4.2 mount around a cold
read of 3,000,000 bytes (tests/fixtures/juicefs/capture.sh made idle.metrics and
read.metrics); the mount itself is tests/integration/test_juicefs.py.
"""

from __future__ import annotations

import http.server
import io
import threading
from pathlib import Path

import pytest

from obsctl import credentials
from obsctl.collectors.juicefs_metrics import JuicefsMetricsCollector, parse_exposition
from obsctl.config import ConfigError
from obsctl.drivers import PlanContext, get_driver
from obsctl.drivers.juicefs import CREDENTIALS
from obsctl.instruments import MountAttributes
from obsctl.mountspec import build_mount_spec
from obsctl.sources import SourceTable
from support.metrics import data_points, in_memory

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "juicefs"
IDLE = (FIXTURES / "idle.metrics").read_text()
READ = (FIXTURES / "read.metrics").read_text()
PASSWORD = "meta-pass-5f1c"
SECRET = "s3-secret-9a7e"


def spec(**extra):
    return build_mount_spec({"source": "sqlite3:///var/lib/obsctl/vol.db", "mountpoint": "/mnt/jfs",
                             "impl": "juicefs", **extra})


def test_plan_secrets_only_in_the_environment():
    creds = credentials.Credentials("AKID", SECRET, extra={"META_PASSWORD": PASSWORD}, public=CREDENTIALS.public)
    plan = get_driver("juicefs").plan(spec(read_only=True, options=["--cache-dir=/var/cache/jfs"]), creds,
                                      PlanContext())
    assert plan.argv[:5] == ["juicefs", "--no-agent", "--no-color", "mount", "--no-usage-report"]
    assert plan.argv[-2:] == ["sqlite3:///var/lib/obsctl/vol.db", "/mnt/jfs"]
    assert "--read-only" in plan.argv and "--cache-dir=/var/cache/jfs" in plan.argv
    port = plan.extras["metrics_url"].split(":")[-1].split("/")[0]
    assert f"--metrics=127.0.0.1:{port}" in plan.argv
    assert not any(PASSWORD in a or SECRET in a for a in plan.argv)
    assert plan.env["META_PASSWORD"] == PASSWORD and plan.env["AWS_SECRET_ACCESS_KEY"] == SECRET
    assert plan.env["JFS_SUPERVISOR"] == "obsctl"
    assert set(plan.secrets) == {PASSWORD, SECRET} and plan.fstype == "fuse.juicefs"


@pytest.mark.parametrize("source, says", [
    ("s3://bucket", "must be a JuiceFS metadata URL"),
    ("redis://:pw@127.0.0.1:6379/1", "holds a password"),
    ("mysql://jfs:pw@(127.0.0.1:3306)/juicefs", "holds a password"),
])
def test_source_is_a_metadata_url_without_password(source, says):
    with pytest.raises(ConfigError) as info:
        build_mount_spec({"source": source, "mountpoint": "/mnt/jfs", "impl": "juicefs"})
    assert says in str(info.value) and "pw" not in str(info.value).replace("password", "")


def test_rules_of_the_driver():
    assert spec(source="mysql://jfs:@(127.0.0.1:3306)/juicefs").impl == "juicefs"
    with pytest.raises(ConfigError, match="juicefs has no cache mode"):
        spec(cache_mode="full")
    with pytest.raises(ConfigError, match="refused"):
        spec(options=["--metrics=0.0.0.0:9567"])
    with pytest.raises(ConfigError, match="secret"):
        spec(options=["--secret-key=x"])
    assert spec(credentials_from="profile", profile="p").profile == "p"  # the S3 keys from a profile
    assert get_driver("juicefs").bucket_label("mysql://jfs:@(127.0.0.1:3306)/juicefs") == "mysql://(127.0.0.1:3306)/juicefs"


def test_credential_shape_reads_the_meta_password_alone_or_with_keys():
    env = {"META_PASSWORD": PASSWORD, "OTHER": "x"}
    creds = credentials.from_env(env, shape=CREDENTIALS)
    assert creds.as_env() == {"META_PASSWORD": PASSWORD} and creds.secrets() == [PASSWORD] and env == {"OTHER": "x"}
    assert credentials.from_env({}, shape=CREDENTIALS).as_env() == {}  # sqlite, keys in the volume's format
    creds = credentials.from_stdin(io.StringIO(f"META_PASSWORD={PASSWORD}\nAWS_ACCESS_KEY_ID=AK\n"
                                               f"AWS_SECRET_ACCESS_KEY={SECRET}\n"), shape=CREDENTIALS)
    assert creds.as_env() == {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": SECRET, "META_PASSWORD": PASSWORD}
    with pytest.raises(ConfigError, match="AWS_SECRET_ACCESS_KEY missing"):
        credentials.from_env({"AWS_ACCESS_KEY_ID": "AK"}, shape=CREDENTIALS)
    assert PASSWORD not in repr(creds) and SECRET not in repr(creds)


def test_log_lines():
    driver = get_driver("juicefs")
    lines = (FIXTURES / "mount.log").read_text().splitlines()
    assert lines and all(driver.level(line) == "INFO" for line in lines)
    assert not any(driver.forward(line) for line in lines)
    fatal = "2026/12/06 05:43:43.612234 juicefs[1] <FATAL>: load setting: database is not formatted [main@mount.go:12]"
    assert driver.is_critical(fatal) and driver.summary(fatal) == "load setting: database is not formatted"
    assert driver.forward("panic: runtime error") and driver.is_error("panic: runtime error")
    assert not driver.forward("2026-12-06 05:42:57.542229 I | Unimplemented opcode POLL")


def test_parse_drops_juicefs_own_labels():
    values = parse_exposition(READ)
    assert values[("juicefs_fuse_read_size_bytes_sum", ())] == 3_000_000
    assert values[("juicefs_fuse_ops", (("method", "read"),))] == 23
    assert values[("juicefs_blockcache_miss", ())] == 2  # exposed without _total: the family name too


def _collect(level: str):
    attrs = MountAttributes("sqlite3:///vol.db", "juicefs", "/mnt/jfs")
    reader, ins = in_memory(attrs)
    driver = get_driver("juicefs")
    table = SourceTable("juicefs", lambda: level, driver_source=(driver.log_source, driver.log_gives))
    collector = JuicefsMetricsCollector(table.driver_view(ins), "http://127.0.0.1:1/metrics")
    collector.record(parse_exposition(READ), parse_exposition(IDLE))
    got: dict = {}
    for metric, labels, value in data_points(reader):
        key = (metric.name, labels.get("opcode") or labels.get("error_type"))
        got[key] = value
    return got


def test_collector_maps_the_read_when_the_kernel_gives_nothing():
    got = _collect("none")
    names = {name for name, _opcode in got}
    read_bytes = next(v for (n, _o), v in got.items() if "read" in n and "bytes" in n)
    assert read_bytes == 3_000_000, got
    ops = {o: v for (n, o), v in got.items() if n.endswith("ops")}
    assert ops["read"] == 23 and ops["lookup"] >= 1, ops
    latency = {o: v for (n, o), v in got.items() if "fs.latency" in n or "fs_latency" in n}
    assert latency["read"][0] == 23 and latency["read"][1] > 0
    requests = {o: v for (n, o), v in got.items() if "operation" in n}
    assert requests["GET"][0] == 1 and requests["GET"][1] == pytest.approx(8.840872, rel=1e-6)
    misses = next(v for (n, _o), v in got.items() if "miss" in n)
    assert misses == 2, names


def test_collector_leaves_fuse_numbers_to_the_kernel():
    got = _collect("ebpf")
    assert not any("fs" in n and ("bytes" in n or "ops" in n or "latency" in n) for n, _o in got), got
    requests = {o: v for (n, o), v in got.items() if "operation" in n}
    assert requests["GET"][0] == 1  # object requests are juicefs's own view: always recorded


class _Exposition(http.server.BaseHTTPRequestHandler):
    body = IDLE

    def do_GET(self):  # noqa: N802 (http.server's name)
        data = type(self).body.encode()
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_collector_polls_an_endpoint_and_counts_increases():
    """Over HTTP, as from juicefs: the first poll is the start (count_initial), the second adds only the increase."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Exposition)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        attrs = MountAttributes("v", "juicefs", "/mnt/jfs")
        reader, ins = in_memory(attrs)
        collector = JuicefsMetricsCollector(ins, f"http://127.0.0.1:{server.server_port}/metrics",
                                            count_initial=False)
        collector.poll()
        assert collector.reachable and ins.totals.get("obsctl_fs_read_bytes", 0) == 0
        _Exposition.body = READ
        collector.poll()
        assert ins.totals["obsctl_fs_read_bytes"] == 3_000_000
        assert collector.status()["driver_stats"]["juicefs"]["read_bytes"] == 3_000_000
    finally:
        server.shutdown()
        _Exposition.body = IDLE
    collector.poll()  # the endpoint is gone: skipped, never raised
    assert not collector.reachable and collector.failures == 0
