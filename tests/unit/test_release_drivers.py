"""goofys, geesefs and mountpoint-s3: launch plans (argv, environment, no
secret on the command line), refused options, log handling, geesefs stats,
mount-s3's own OTLP export, and the message for a missing binary.

Flags and formats are those of each project's source (cited in the driver
modules); these tests pin obsctl's use of them."""

from __future__ import annotations

import pytest

from obsctl.collectors.geesefs_log import GeesefsStatsCollector, window_counts
from obsctl.config import ConfigError, parse_telemetry
from obsctl.mountspec import build_mount_spec
from obsctl.credentials import Credentials
from obsctl.drivers import PlanContext, get_driver
from obsctl.drivers.geesefs import STATS_SECONDS
from obsctl.instruments import MountAttributes
from support.metrics import in_memory
from support.metrics import points as metric_points

KEY_ID = "AKIAOBSCTLTEST000001"
SECRET = "Sup3r/Secret+Value0123456789abcdefghijkl"
TOKEN = "SessionTokenValue-xyz"
CREDS = Credentials(KEY_ID, SECRET, TOKEN)
RELEASE = ("goofys", "geesefs", "mountpoint-s3")


def spec(impl: str, **kw):
    data = {"source": "s3://my-bucket/some/prefix", "mountpoint": "/mnt/b", "impl": impl}
    data.update(kw)
    return build_mount_spec(data, "test")


def plan(impl: str, telemetry=None, **kw):
    driver = get_driver(impl)
    return driver, driver.plan(spec(impl, **kw), CREDS, PlanContext(telemetry=telemetry))


@pytest.mark.parametrize("impl", RELEASE)
def test_credentials_only_in_the_environment(impl):
    _driver, p = plan(impl, endpoint="http://127.0.0.1:9000", region="eu-west-1")
    assert p.env["AWS_ACCESS_KEY_ID"] == KEY_ID
    assert p.env["AWS_SECRET_ACCESS_KEY"] == SECRET
    assert p.env["AWS_SESSION_TOKEN"] == TOKEN
    joined = "\0".join(p.argv)
    for value in (KEY_ID, SECRET, TOKEN):
        assert value not in joined
    assert SECRET in p.secrets and TOKEN in p.secrets  # redacted from every forwarded log line


@pytest.mark.parametrize("impl", RELEASE)
def test_no_inherited_systemd_or_key_variables(impl, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "inherited-not-this-one")
    driver = get_driver(impl)
    p = driver.plan(spec(impl), None, PlanContext())
    assert "NOTIFY_SOCKET" not in p.env and "AWS_SECRET_ACCESS_KEY" not in p.env


def test_goofys_argv():
    _d, p = plan("goofys", endpoint="http://127.0.0.1:9000", region="us-east-1", read_only=True,
                 allow_other=True, options=["stat-cache-ttl=1m", "--cheap"])
    assert p.argv == ["goofys", "-f", "--endpoint=http://127.0.0.1:9000", "--region=us-east-1",
                      "-o", "ro", "-o", "allow_other", "--stat-cache-ttl=1m", "--cheap",
                      "my-bucket:some/prefix", "/mnt/b"]
    assert p.fstype == "fuse.goofys"


def test_goofys_argv_minimal():
    _d, p = plan("goofys", source="s3://my-bucket")
    assert p.argv == ["goofys", "-f", "my-bucket", "/mnt/b"]


def test_geesefs_argv():
    _d, p = plan("geesefs", endpoint="http://127.0.0.1:9000", region="us-east-1", read_only=True)
    assert p.argv == ["geesefs", "-f", "--endpoint=http://127.0.0.1:9000", "--region=us-east-1",
                      "-o", "ro", f"--print-stats={STATS_SECONDS}s", "my-bucket:some/prefix", "/mnt/b"]
    assert p.fstype == "fuse.geesefs"


def test_geesefs_defaults_to_aws_not_yandex():
    """geesefs's --endpoint defaults to storage.yandexcloud.net: a spec without an
    endpoint means AWS, so obsctl passes the AWS endpoint geesefs's usage names."""
    _d, p = plan("geesefs", source="s3://my-bucket")
    assert p.argv == ["geesefs", "-f", "--endpoint=https://s3.amazonaws.com",
                      f"--print-stats={STATS_SECONDS}s", "my-bucket", "/mnt/b"]


def test_mountpoint_s3_argv():
    _d, p = plan("mountpoint-s3", endpoint="http://127.0.0.1:9000", region="us-east-1", read_only=True,
                 allow_other=True, options=["allow-delete", "--metadata-ttl=60"])
    assert p.argv == ["mount-s3", "--foreground", "--region=us-east-1", "--endpoint-url=http://127.0.0.1:9000",
                      "--force-path-style", "--prefix=some/prefix/", "--read-only", "--allow-other",
                      "--allow-delete", "--metadata-ttl=60", "my-bucket", "/mnt/b"]
    assert p.fstype == "fuse"  # FSName mountpoint-s3, no subtype
    assert p.extras["otlp_endpoint"] is None


def telemetry(protocol=None, endpoint="http://127.0.0.1:4318", mode="remote", interval=15):
    metrics = {"otlp_endpoint": endpoint, "export_interval_seconds": interval}
    if protocol:
        metrics["otlp_protocol"] = protocol
    return parse_telemetry({"telemetry": {"mode": mode, "metrics": metrics,
                                          "traces": {"enabled": False}}}, "test")


def test_mountpoint_s3_exports_its_own_metrics_over_http_protobuf():
    driver, p = plan("mountpoint-s3", telemetry=telemetry("http/protobuf"), source="s3://my-bucket")
    assert p.argv == ["mount-s3", "--foreground", "--otlp-endpoint=http://127.0.0.1:4318",
                      "--otlp-export-interval=15", "my-bucket", "/mnt/b"]
    assert p.extras["otlp_endpoint"] == "http://127.0.0.1:4318"


@pytest.mark.parametrize("cfg", [
    telemetry(None, "http://127.0.0.1:4317"),  # gRPC (the default): mount-s3 speaks http/protobuf only
    telemetry("http/protobuf", mode="none"),  # mode none: nothing leaves the host
])
def test_mountpoint_s3_no_own_export(cfg):
    _d, p = plan("mountpoint-s3", telemetry=cfg)
    assert not any(a.startswith("--otlp") for a in p.argv)


def test_mountpoint_s3_no_own_export_without_listening():
    context = PlanContext(telemetry=telemetry("http/protobuf"), listen=False)
    assert get_driver("mountpoint-s3").otlp_endpoint(context) is None
    _d, p = plan("mountpoint-s3", telemetry=telemetry("http/protobuf"))
    assert p.extras["otlp_endpoint"]  # the same config with a listener allowed does export


# (option, words of the message): from each project's flag definitions
REFUSED = {
    "goofys": [
        (f"--sse-c={SECRET}", "/proc/PID/cmdline"),
        ("--profile=prod", 'credentials_from = "profile"'),
        ("--endpoint=http://evil.example", "mount spec"),
        ("region=us-west-2", "mount spec"),
        ("--cache=/tmp/c", "catfs"),
        ("--f", "-f"),
        ("-d", "long form"),
        (f"--my-secret-thing={SECRET}", "credential"),
    ],
    "geesefs": [
        (f"--sse-c={SECRET}", "/proc/PID/cmdline"),
        ("--shared-config=/root/.aws/credentials", "profile"),
        ("--iam", "metadata-service"),
        ("--iam-url=http://169.254.169.254", "metadata-service"),
        ("--endpoint=http://evil.example", "mount spec"),
        ("--no-verify-ssl", "TLS"),
        ("--log-file=/tmp/g.log", "stderr"),
        ("--print-stats=0", "stats"),
        ("--pprof=0.0.0.0:6060", "listener"),
        ("--cluster", "listener"),
        ("-f", "long form"),
    ],
    "mountpoint-s3": [
        ("--profile=prod", 'credentials_from = "profile"'),
        ("--endpoint-url=http://evil.example", "mount spec"),
        ("--prefix=x/", "mount spec"),
        ("--otlp-endpoint=http://evil.example:4318", "otlp_protocol"),
        ("--log-directory=/tmp/l", "stdout"),
        ("--no-log", "stdout"),
        ("--foreground", "remove it"),
        ("-l", "long form"),
        (f"--password={SECRET}", "credential"),
    ],
}


@pytest.mark.parametrize("impl, option, words",
                         [(impl, o, w) for impl, cases in REFUSED.items() for o, w in cases])
def test_refused_options(impl, option, words):
    with pytest.raises(ConfigError) as info:
        spec(impl, options=[option])
    message = str(info.value)
    assert words in message, message
    assert SECRET not in message and "evil.example" not in message


@pytest.mark.parametrize("impl, option", [
    ("goofys", "--stat-cache-ttl=1m"), ("goofys", "o=allow_root"), ("goofys", "--sse-kms=key-id"),
    ("geesefs", "--memory-limit=1000"), ("geesefs", "--cache=/var/cache/geesefs"),
    ("mountpoint-s3", "--allow-delete"), ("mountpoint-s3", "--cache=/var/cache/ms3"),
    ("mountpoint-s3", "--sse-kms-key-id=arn:aws:kms:us-east-1:1:key/x"),
])
def test_ordinary_options_pass(impl, option):
    assert spec(impl, options=[option]).options == [option]


def test_all_refused_options_reported_at_once():
    with pytest.raises(ConfigError) as info:
        spec("geesefs", options=["--iam", "--pprof=:6060", "--memory-limit=100"])
    message = str(info.value)
    assert "--iam" in message and "--pprof" in message and "--memory-limit" not in message


GOOFYS_FATAL = ("2026/11/21 21:00:00.123456 main.FATAL Mounting file system: Mount: mount: "
                "running fusermount3: exit status 1")


@pytest.mark.parametrize("impl", ["goofys", "geesefs"])
def test_goofys_family_log_lines(impl):
    d = get_driver(impl)
    assert d.is_error(GOOFYS_FATAL) and d.is_critical(GOOFYS_FATAL)
    assert d.summary(GOOFYS_FATAL).startswith("Mounting file system: Mount:")
    err = "2026/11/21 21:00:00.123456 s3.ERROR code=AccessDenied msg=Access Denied"
    assert d.is_error(err) and not d.is_critical(err) and d.forward(err) == err
    debug = "2026/11/21 21:00:00.123456 fuse.DEBUG Op 0x00000002 connection.go:416] <- LookUpInode"
    assert not d.is_error(debug) and d.forward(debug) is None
    info = "2026/11/21 21:00:00.123456 main.INFO File system has been successfully mounted."
    assert not d.is_error(info) and d.forward(info) == info
    usage = "Incorrect Usage. flag provided but not defined: -bogus"
    assert d.is_error(usage) and d.forward(usage) == usage


STATS = ("2026/11/21 21:00:10.000123 main.INFO I/O: 12.30 read/s, 75.00 % hits, 0.50 write/s; "
         "metadata: 1.00 read/s, 0.00 write/s, 0.00 noop/s, 42 alive, 0.00 evict/s; 0.00 flush/s")


def test_geesefs_stats_lines_are_metrics_not_journal():
    assert get_driver("geesefs").forward(STATS) is None
    assert get_driver("goofys").forward(STATS) == STATS  # goofys has no such line; nothing special


def test_geesefs_window_counts():
    assert window_counts(STATS, 10) == (92, 31)  # 123 reads, 75 % of them hits (92.25 -> 92)
    assert window_counts(STATS.replace("12.30", "0.00"), 10) == (0, 0)
    assert window_counts("2026/11/21 21:00:10.000123 main.INFO File system has been successfully mounted.",
                         10) is None


def test_geesefs_stats_collector_feeds_cache_counters():
    attrs = MountAttributes(bucket="my-bucket", impl="geesefs", mountpoint="/mnt/b")
    reader, ins = in_memory(attrs)
    collector = GeesefsStatsCollector(ins, STATS_SECONDS)
    for line in (STATS, "2026/11/21 21:00:15.0 main.WARNING something", STATS.replace("75.00", "100.00")):
        collector.feed(line)
    pts = metric_points(reader, attrs)
    values = {k[0]: v for k, v in pts.items()}
    assert collector.lines == 2
    assert values["obsctl_cache_hits"] == 92 + 123
    assert values["obsctl_cache_misses"] == 31


MS3_ERROR = "Error: Failed to create S3 client"
MS3_WARN = "2026-11-21T21:00:00.123456Z  WARN ThreadId(01) mountpoint_s3::cli: something odd"
MS3_INFO = "2026-11-21T21:00:00.123456Z  INFO ThreadId(01) mountpoint_s3::cli: target network throughput 10 Gbps"


def test_mountpoint_s3_log_lines():
    d = get_driver("mountpoint-s3")
    assert d.is_error(MS3_ERROR) and d.is_critical(MS3_ERROR) and d.forward(MS3_ERROR) == MS3_ERROR
    assert d.forward(MS3_WARN) == MS3_WARN and not d.is_error(MS3_WARN)
    assert d.forward(MS3_INFO) is None
    err = MS3_WARN.replace(" WARN ", " ERROR ")
    assert d.is_error(err) and d.summary(err) == "mountpoint_s3::cli: something odd"
    mounted = "my-bucket is mounted at /mnt/b"
    assert d.forward(mounted) == mounted and not d.is_error(mounted)


@pytest.mark.parametrize("impl, binary, variable", [
    ("goofys", "goofys", "fuse_driver_release_drivers: [goofys]"),
    ("geesefs", "geesefs", "fuse_driver_release_drivers: [geesefs]"),
    ("mountpoint-s3", "mount-s3", "fuse_driver_release_drivers: [mountpoint-s3]"),
    ("rclone", "rclone", "fuse_driver_distro_drivers: [rclone]"),
    ("s3fs", "s3fs", "fuse_driver_distro_drivers: [s3fs]"),
])
def test_missing_binary_message(impl, binary, variable, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: nothing is found
    message = get_driver(impl).missing_binary(spec(impl))
    assert message.startswith(f"{binary}: not found on PATH ({tmp_path})"), message
    assert variable in message and "obsctl.observability.fuse_driver" in message


def test_present_binary_is_not_missing(tmp_path, monkeypatch):
    program = tmp_path / "goofys"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert get_driver("goofys").missing_binary(spec("goofys")) is None
