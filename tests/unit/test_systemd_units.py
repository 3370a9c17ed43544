"""``obsctl systemd install | uninstall | apply``: the command-line face of the engine
(obsctl.engine), against the engine's fake host (engine_fake_system)."""

from __future__ import annotations

import argparse
import io
import json
import tomllib
from pathlib import Path

import pytest

from engine_fake_system import FakeSystem
from obsctl import engine
from obsctl import systemd_units as su
from obsctl import tomlio
from obsctl.cli import _parser
from obsctl.config import ConfigError, parse_telemetry


@pytest.fixture
def host(tmp_path):
    return FakeSystem(tmp_path / "root")


def _args(*argv: str) -> argparse.Namespace:
    return _parser().parse_args(["systemd", "install", *argv])


def _apply(host, req, check=False):
    return engine.Engine(req, run=host, check_mode=check, root=host.root, mountinfo_path=host.mountinfo,
                         sleep=lambda _s: None, stat_fn=host.stat, settle_seconds=0).apply()


def _install(host, tmp_path, *extra):
    return su.request_from_args(_args("--name", "data", *extra, "s3://bucket/p", str(tmp_path / "mnt/data")), [])


def test_templates_ship_with_the_package():
    names = {p.name for p in engine.templates_dir().iterdir()}
    assert {"obsctl-mount@.service.j2", "obsctl-mount@.timer.j2", "obsctl-mount-check@.service.j2"} <= names
    assert not {"mount.toml.j2", "telemetry.toml.j2"} & names, "TOML is written by obsctl.tomlio, not Jinja"


@pytest.mark.parametrize("mode", ["none", "remote", "local"])
def test_telemetry_file_passes_config_check(mode):
    text = tomlio.render_telemetry({
        "mode": mode, "otlp_endpoint": "http://127.0.0.1:4317", "attributes": {"a.b": 'q"uote'}})
    cfg = parse_telemetry(tomllib.loads(text))
    assert cfg.mode == mode
    assert cfg.resource.attributes == ({"a.b": 'q"uote'})


def test_unit_templates_render():
    service = engine.render("obsctl-mount@.service.j2", obsctl_bin="/opt/obsctl/bin/obsctl")
    assert "Type=notify" in service and "ExecStart=/opt/obsctl/bin/obsctl mount" in service
    assert engine.MANAGED_BY in service
    timer = engine.render("obsctl-mount@.timer.j2")
    assert "OnUnitActiveSec=5min" in timer and "Unit=obsctl-mount-check@%i.service" in timer
    check = engine.render("obsctl-mount-check@.service.j2", obsctl_bin="/opt/obsctl/bin/obsctl")
    assert "ExecStart=/opt/obsctl/bin/obsctl systemd check --name %i" in check


def test_install_writes_everything_and_starts(host, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret")
    req = _install(host, tmp_path, "--endpoint", "http://127.0.0.1:9000", "--otel-endpoint", "http://127.0.0.1:4317")
    assert req.credentials.secret_access_key == "very-secret" and req.install_units and req.health_timer
    result = _apply(host, req)
    layout = engine.Layout("data", host.root)
    text = layout.spec.read_text()
    assert 'source = "s3://bucket/p"' in text and "very-secret" not in text
    assert 'credentials_from = "systemd"' in text
    assert (layout.spec.stat().st_mode & 0o777) == 0o640
    assert (layout.credential.stat().st_mode & 0o777) == 0o600
    assert (layout.credential.parent.stat().st_mode & 0o777) == 0o700
    assert layout.dropin.read_text().endswith("LoadCredentialEncrypted=s3:/etc/obsctl/credentials/data.cred\n")
    assert 'telemetry_config = "/etc/obsctl/telemetry.d/data.toml"' in text
    assert parse_telemetry(tomllib.loads(layout.telemetry.read_text())).mode == "remote"
    for unit in ("obsctl-mount@.service", "obsctl-mount@.timer", "obsctl-mount-check@.service"):
        assert (layout.unit_dir / unit).read_text().startswith("# ")
    assert host.unit("data") == {"enabled": True, "active": "active", "sub": "running"}
    assert host.timers["obsctl-mount@data.timer"]["enabled"] and host.timers["obsctl-mount@data.timer"]["active"] == "active"
    assert result["mount"]["health"] == "ok"
    assert all("very-secret" not in " ".join(c) for c in host.calls)
    assert _apply(host, req)["changed"] is False, "install twice: no change the second time"


def test_failed_start_rolls_everything_back(host, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret")
    host.fail_start = True
    with pytest.raises(engine.EngineError, match="rolled back"):
        _apply(host, _install(host, tmp_path))
    layout = engine.Layout("data", host.root)
    assert not layout.spec.exists() and not layout.credential.exists() and not layout.dropin.exists()
    assert not (layout.unit_dir / "obsctl-mount@.service").exists()
    assert not host.unit("data")["enabled"]
    assert not any(t["enabled"] for t in host.timers.values())


def test_unit_templates_of_the_role_are_kept(host, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    unit = Path(host.root, "etc/systemd/system/obsctl-mount@.service")
    unit.parent.mkdir(parents=True)
    unit.write_text("# Ansible managed\n[Service]\n")
    _apply(host, _install(host, tmp_path))
    assert unit.read_text() == "# Ansible managed\n[Service]\n"


def test_no_credentials_is_a_usage_error(host, tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    with pytest.raises(ConfigError, match="no S3 credentials"):
        _install(host, tmp_path)


def test_bad_name_is_a_usage_error():
    with pytest.raises(ConfigError, match="name '../x'"):
        su.request_from_args(_args("--name", "../x", "s3://bucket", "/mnt/data"), [])


def test_uninstall_removes_files(host, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    _apply(host, _install(host, tmp_path, "--otel-endpoint", "http://127.0.0.1:4317"))
    result = _apply(host, engine.Request(name="data", state="absent"))
    assert result["changed"]
    layout = engine.Layout("data", host.root)
    for path in (layout.spec, layout.credential, layout.dropin, layout.telemetry):
        assert not path.exists(), path
    assert host.mounts == {}
    assert not host.unit("data")["enabled"] and host.unit("data")["active"] == "inactive"
    assert host.timers["obsctl-mount@data.timer"] == {"enabled": False, "active": "inactive", "sub": "dead"}
    assert (layout.unit_dir / "obsctl-mount@.service").exists()  # shared templates stay
    assert _apply(host, engine.Request(name="data", state="absent"))["changed"] is False


def test_apply_json_answers_json_in_every_case(monkeypatch):
    """obsctl systemd apply --json: one JSON object on stdout, exit 2 for an invalid request,
    and obsctl mount's own message (the fuse_mount module shows it as it is)."""
    args = _parser().parse_args(["systemd", "apply", "--json", "--check"])
    for raw, needle in ((b'{"name": "d", "src": "s3://My_Bucket", "path": "/mnt/d"}', "not a valid S3 bucket name"),
                        (b'{"name": "d", "src": "s3://bkt", "path": "/mnt/d", "impl": "nope"}',
                         "impl 'nope' is not a driver obsctl knows"),
                        (b'{"name": "d", "colour": 1}', "unknown field `colour`"),
                        (b"not json", "expected one JSON object")):
        out = io.StringIO()
        assert su.cmd_apply(args, stdin=io.BytesIO(raw), stdout=out) == su.EXIT_USAGE
        result = json.loads(out.getvalue())
        assert result["failed"] is True and needle in result["msg"], result


def test_unit_templates_of_an_older_install_are_refreshed(host, tmp_path, monkeypatch):
    """A template an earlier obsctl systemd install wrote (its header says so) is rewritten
    when it differs; systemd reloads it and the running mount restarts to run the new unit."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    req = _install(host, tmp_path)
    _apply(host, req)
    unit = Path(host.root, "etc/systemd/system/obsctl-mount@.service")
    fresh = unit.read_text()
    unit.write_text(f"# {engine.MANAGED_BY}\n[Service]\nExecStart=/old/obsctl mount\n")
    result = _apply(host, req)
    assert unit.read_text() == fresh
    assert "systemctl daemon-reload" in result["actions"]
    assert "restart obsctl-mount@data.service" in result["actions"]
    assert _apply(host, req)["changed"] is False


def test_install_passes_allow_non_empty_to_the_spec(host, tmp_path, monkeypatch):
    """``obsctl systemd install --allow-non-empty`` over a directory with entries: the request and
    the spec say so; without the flag the same directory is refused before anything is written."""
    def keys():  # obsctl takes them out of its environment once read
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-value-0123")

    (tmp_path / "mnt/data").mkdir(parents=True)
    (tmp_path / "mnt/data/keep.txt").write_text("x")
    keys()
    with pytest.raises(ConfigError, match="is not empty .*--allow-non-empty"):
        _apply(host, _install(host, tmp_path))
    assert host.mutating_calls() == []
    keys()
    req = _install(host, tmp_path, "--allow-non-empty")
    assert req.allow_non_empty is True
    _apply(host, req)
    spec = tomllib.loads(engine.Layout("data", host.root).spec.read_text())
    assert spec["allow_non_empty"] is True
