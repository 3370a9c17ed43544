"""Telemetry TOML and mount spec validation: every bad input gets a clear ConfigError."""

from __future__ import annotations

import io
import os

import pytest

from obsctl import credentials
from obsctl.cli import main
from obsctl.config import ConfigError, load_telemetry, parse_telemetry
from obsctl.mountspec import build_mount_spec, check_file
from obsctl.drivers import DRIVERS, PlanContext, get_driver, redact

VALID = """
[telemetry]
mode = "remote"
[telemetry.resource]
service_name = "svc"
attributes = { "deployment.environment" = "test" }
[telemetry.traces]
otlp_endpoint = "http://127.0.0.1:4317"
[telemetry.metrics]
otlp_endpoint = "http://127.0.0.1:4318"
otlp_protocol = "http/protobuf"
export_interval_seconds = 10
bind_address = "127.0.0.1:9464"
"""


def write(tmp_path, text, name="t.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_valid_file_round_trips(tmp_path):
    cfg = load_telemetry(write(tmp_path, VALID))
    assert cfg.mode == "remote"
    assert cfg.resource.attributes == {"deployment.environment": "test"}
    assert cfg.metrics.export_interval_seconds == 10
    assert cfg.protocol(cfg.metrics, "metrics") == "http/protobuf"
    assert cfg.protocol(cfg.traces, "traces") == "grpc"
    assert cfg.pushes_metrics and cfg.exports_traces


@pytest.mark.parametrize("text, expected", [
    ('[telemetry]\nenabled = true\n', "[telemetry.metrics] enabled"),
    ('[telemetry]\notlp_endpoint = "http://x:4317"\n', "[telemetry.metrics] otlp_endpoint"),
    ('[telemetry]\nservice_name = "a"\n', "[telemetry.resource] service_name"),
    ('[telemetry]\nmode = "loud"\n', "mode"),
    ('[telemetry]\nmode = "remote"\n', 'needs [telemetry.traces] otlp_endpoint'),
    ('[telemetry]\nmode = "local"\n[telemetry.metrics]\nexport_interval_seconds = 0\n',
     "[telemetry.metrics] export_interval_seconds: Expected `float` > 0.0"),
    ('[telemetry]\nmode = "local"\n[telemetry.metrics]\nbind_address = "9464"\n', "is not HOST:PORT"),
    ('[telemetry]\nmode = "local"\n[telemetry.metrics]\notlp_endpoint = "127.0.0.1:4317"\n',
     "is not an http:// or https:// URL"),
    ('[telemetry]\nmode = "local"\n[telemetry.metrics]\nexport_intervall = 3\n',
     "[telemetry.metrics] export_intervall: unknown key"),
    ('[telemetry\nmode = "none"\n', "not valid TOML"),
])
def test_invalid_telemetry_is_named(tmp_path, monkeypatch, text, expected):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_telemetry(path)
    assert expected in str(err.value)
    assert str(path) in str(err.value)


def test_remote_with_only_bind_address_is_pull_only():
    cfg = parse_telemetry({"telemetry": {"mode": "remote", "traces": {"enabled": False},
                                         "metrics": {"bind_address": "127.0.0.1:9464"}}})
    assert cfg.exports_metrics and not cfg.pushes_metrics


def test_none_mode_exports_nothing():
    cfg = parse_telemetry({"telemetry": {"mode": "none", "metrics": {"bind_address": "127.0.0.1:9464"}}})
    assert not cfg.exports_metrics and not cfg.pushes_metrics and not cfg.exports_traces


def test_config_check_exit_codes(tmp_path, capsys):
    assert main(["config", "check", str(write(tmp_path, VALID))]) == 0
    assert "valid telemetry config (mode remote)" in capsys.readouterr().out
    assert main(["config", "check", str(write(tmp_path, "[telemetry]\nenabled = true\n", "bad.toml"))]) == 2
    assert "legacy flat keys" in capsys.readouterr().err
    assert main(["config", "check", str(tmp_path / "missing.toml")]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize("data, expected", [
    ({"source": "bucket", "mountpoint": "/m"}, "must look like s3://BUCKET"),
    ({"source": "s3://Upper", "mountpoint": "/m"}, "not a valid S3 bucket name"),
    ({"source": "s3://ok-bucket", "mountpoint": "/m", "impl": "ftp"}, "impl"),
    ({"source": "s3://ok-bucket", "mountpoint": "/m", "impl": "ftp"},
     "not a driver obsctl knows: use one of " + ", ".join(DRIVERS)),
    ({"source": "s3://ok-bucket", "mountpoint": "/m", "impl": "generic"}, "needs the FUSE daemon's command"),
    ({"source": "s3://ok-bucket", "mountpoint": "/m", "credentials_from": "profile"}, "needs profile"),
    ({"source": "s3://ok-bucket", "mountpoint": "/m", "impl": "s3fs", "cache_mode": "full"}, "rclone option"),
    ({"source": "s3://ok-bucket", "mountpoint": "/m", "secret_access_key": "x"}, "unknown key"),
])
def test_invalid_mount_spec(data, expected):
    with pytest.raises(ConfigError) as err:
        build_mount_spec(data)
    assert expected in str(err.value)


@pytest.mark.parametrize("value, expected", [
    (0, "stall_timeout_seconds 0.0: expected a finite number of seconds greater than 0"),
    (-5, "stall_timeout_seconds -5.0: expected a finite number of seconds greater than 0"),
    (float("nan"), "stall_timeout_seconds nan: expected a finite number"),
    (float("inf"), "stall_timeout_seconds inf: expected a finite number"),
    ("3", "stall_timeout_seconds: Expected `float`, got `str`"),
])
def test_stall_timeout_must_be_positive(value, expected):
    with pytest.raises(ConfigError) as err:
        build_mount_spec({"source": "s3://ok-bucket", "mountpoint": "/m", "stall_timeout_seconds": value}, "m.toml")
    assert str(err.value).startswith("m.toml: invalid configuration:")
    assert expected in str(err.value)


def test_stall_timeout_default_and_value(tmp_path):
    from obsctl.config import DEFAULT_STALL_SECONDS

    assert build_mount_spec({"source": "s3://ok-bucket", "mountpoint": "/m"}).stall_timeout_seconds == 60.0
    assert DEFAULT_STALL_SECONDS == 60.0
    path = write(tmp_path, 'source = "s3://ok-bucket"\nmountpoint = "/mnt/ok"\nstall_timeout_seconds = 3\n', "m.toml")
    assert "valid mount spec" in check_file(path)
    assert build_mount_spec({"source": "s3://ok-bucket", "mountpoint": "/m", "stall_timeout_seconds": 2.5}).stall_timeout_seconds == 2.5


def test_mount_spec_file_check(tmp_path):
    path = write(tmp_path, 'source = "s3://data/x/"\nmountpoint = "/mnt/data"\nimpl = "s3fs"\n', "m.toml")
    assert "valid mount spec (s3://data/x/ on /mnt/data, s3fs)" in check_file(path)
    spec = build_mount_spec({"source": "s3://data/x/", "mountpoint": "/mnt/data/"})
    assert spec.bucket_and_prefix() == ("data", "x")
    assert spec.mountpoint == "/mnt/data"


SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize("impl", ["rclone", "s3fs"])
def test_secret_never_in_argv(impl):
    spec = build_mount_spec({"source": "s3://data/p", "mountpoint": "/mnt/d", "impl": impl,
                             "endpoint": "http://127.0.0.1:9000", "read_only": True})
    creds = credentials.Credentials("AKIDEXAMPLE", SECRET, "token-xyz")
    plan = get_driver(impl).plan(spec, creds, PlanContext())
    assert not any(SECRET in a or "token-xyz" in a for a in plan.argv)
    assert SECRET in plan.env.values()
    assert "AWS_CA_BUNDLE" not in plan.env  # http endpoint: rclone 1.60 breaks with it
    assert SECRET in plan.secrets


@pytest.mark.parametrize("option", ["secret_access_key=abc", "--s3-secret-access-key=abc", "passwd=x"])
def test_credential_options_refused(option):
    with pytest.raises(ConfigError, match="/proc/PID/cmdline"):
        build_mount_spec({"source": "s3://data", "mountpoint": "/mnt/d", "options": [option]})


def test_redact_removes_secrets_and_auth_headers():
    line = f'Setting secret_access_key="{SECRET}" from environment'
    assert SECRET not in redact(line, [SECRET])
    header = "[CURL DBG] > Authorization: AWS4-HMAC-SHA256 Credential=AKID/20261121/us-east-1/s3/aws4_request"
    assert "AKID" not in redact(header, [])


def test_credentials_sources(tmp_path, monkeypatch):
    creds = credentials.from_stdin(io.StringIO(f"# comment\nexport AWS_ACCESS_KEY_ID=AK\nAWS_SECRET_ACCESS_KEY='{SECRET}'\n"))
    assert (creds.access_key_id, creds.secret_access_key) == ("AK", SECRET)
    assert SECRET not in repr(creds)
    with pytest.raises(ConfigError, match="line 1 is not KEY=VALUE") as err:
        credentials.parse_env_lines(SECRET, "stdin")
    assert SECRET not in str(err.value)
    shared = write(tmp_path, f"[prod]\naws_access_key_id = AK2\naws_secret_access_key = {SECRET}\n", "credentials")
    assert credentials.from_profile("prod", str(shared)).access_key_id == "AK2"
    with pytest.raises(ConfigError, match=r"no \[dev\] section"):
        credentials.from_profile("dev", str(shared))
    (tmp_path / "s3").write_text(f"AWS_ACCESS_KEY_ID=AK3\nAWS_SECRET_ACCESS_KEY={SECRET}\n")
    assert credentials.from_systemd(str(tmp_path)).access_key_id == "AK3"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY is not set"):
        credentials.from_systemd()
    env = {"AWS_ACCESS_KEY_ID": "AK4", "AWS_SECRET_ACCESS_KEY": SECRET}
    assert credentials.from_env(env).access_key_id == "AK4"
    assert env == {}  # scrubbed: no other child inherits them
    with pytest.raises(ConfigError, match="AWS_SECRET_ACCESS_KEY missing"):
        credentials.from_env({"AWS_ACCESS_KEY_ID": "x"})
    assert os.environ.get("AWS_SECRET_ACCESS_KEY") != SECRET


@pytest.mark.parametrize("fixture, verdict", [
    ("tests/fixtures/s3fs/ok/s3fs.log", "ok"),
    ("tests/fixtures/s3fs/auth403/s3fs.log", "failed"),
])
def test_s3fs_startup_verdict_from_real_logs(fixture, verdict):
    driver = get_driver("s3fs")
    with open(fixture, encoding="utf-8") as handle:
        verdicts = [v for v in map(driver.startup_verdict, handle.read().splitlines()) if v]
    assert verdicts and verdicts[0] == verdict


#: What s3fs 1.90 prints at ``dbglevel=warn -o curldbg``: curldbg lines (no
#: level check, src/s3fs_logger.h:170-179), CRT/ERR/WAN lines and ``s3fs:`` exits.
_AT_WARN = ("[CURL DBG]", "[CRT]", "[ERR]", "[WAN]", "s3fs:")


@pytest.mark.parametrize("fixture, verdict", [
    ("tests/fixtures/s3fs/ok/s3fs.log", "ok"),
    ("tests/fixtures/s3fs/auth403/s3fs.log", "failed"),
])
def test_s3fs_startup_verdict_at_warn_level(fixture, verdict):
    """At dbglevel=warn the INFO line ``HTTP response code 200`` is gone: the
    curl response line gives the same verdict, and the collector still gets
    every request and response."""
    from obsctl.collectors.s3fs_log import S3fsLogCollector
    from obsctl.instruments import MountAttributes
    from support.metrics import in_memory

    driver = get_driver("s3fs")
    with open(fixture, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    warn = [line for line in lines if any(marker in line for marker in _AT_WARN)]
    assert not any("RequestPerform(2316)" in line for line in warn)
    verdicts = [v for v in map(driver.startup_verdict, warn) if v]
    assert verdicts and verdicts[0] == verdict
    totals = []
    for kept in (lines, warn):
        _reader, ins = in_memory(MountAttributes("b", "s3fs", "/m"))
        col = S3fsLogCollector(ins)
        for line in kept:
            col.feed(line)
        totals.append((dict(ins.errors_by_type), col.pending, col.dropped))
    assert totals[0] == totals[1]


def test_package_ships_every_template():
    """templates/ exists once; src/obsctl/templates holds one file symlink per template."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    shipped = {p.name for p in (root / "src/obsctl/templates").iterdir() if p.resolve().is_file()}
    assert shipped == {p.name for p in (root / "templates").glob("*.j2")}
    assert all((root / "src/obsctl/templates" / name).is_symlink() for name in shipped)
