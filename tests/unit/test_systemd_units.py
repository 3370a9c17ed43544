"""obsctl.systemd_units: the files `obsctl systemd install` writes, with a fake systemctl."""

from __future__ import annotations

import argparse
import subprocess
import tomllib
from pathlib import Path

import pytest

from obsctl import systemd_units as su
from obsctl import tomlio
from obsctl.cli import _parser
from obsctl.config import parse_telemetry


class FakeSystem:
    """Records commands; systemd-creds "encrypts" by writing a marker file."""

    def __init__(self, fail_start: bool = False):
        self.calls: list[list[str]] = []
        self.fail_start = fail_start
        self.active: set[str] = set()
        self.enabled: set[str] = set()

    def __call__(self, argv, input=None, check=False):
        argv = list(argv)
        self.calls.append(argv)
        out, rc = b"", 0
        if argv[:2] == ["systemd-creds", "encrypt"]:
            Path(argv[-1]).write_bytes(b"ENCRYPTED:" + str(len(input)).encode())
        elif argv[:2] == ["systemd-creds", "decrypt"]:
            rc = 1
        elif argv[:2] == ["systemctl", "show"]:
            unit = argv[2]
            out = (f"LoadState=loaded\nActiveState={'active' if unit in self.active else 'inactive'}\n"
                   f"SubState=x\nUnitFileState={'enabled' if unit in self.enabled else 'disabled'}\n").encode()
        elif argv[:2] == ["systemctl", "enable"]:
            self.enabled.update(argv[2:])
        elif argv[:2] == ["systemctl", "disable"]:
            self.enabled.difference_update(argv[2:])
        elif argv[:2] in (["systemctl", "start"], ["systemctl", "restart"]):
            if self.fail_start and argv[2].endswith(".service"):
                rc = 1
            else:
                self.active.add(argv[2])
        elif argv[:2] == ["systemctl", "stop"]:
            self.active.discard(argv[2])
        proc = subprocess.CompletedProcess(argv, rc, out, b"boom" if rc else b"")
        if check and rc:
            raise su.InstallError(f"{argv} failed")
        return proc


@pytest.fixture
def root(tmp_path):
    (tmp_path / "run/systemd/system").mkdir(parents=True)
    return tmp_path


def _args(*argv: str) -> argparse.Namespace:
    return _parser().parse_args(["systemd", "install", *argv])


def test_templates_ship_with_the_package():
    names = {p.name for p in su.templates_dir().iterdir()}
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
    service = su.render("obsctl-mount@.service.j2", obsctl_bin="/opt/obsctl/bin/obsctl")
    assert "Type=notify" in service and "ExecStart=/opt/obsctl/bin/obsctl mount" in service
    assert su.MANAGED_BY in service
    timer = su.render("obsctl-mount@.timer.j2")
    assert "OnUnitActiveSec=5min" in timer and "Unit=obsctl-mount-check@%i.service" in timer
    check = su.render("obsctl-mount-check@.service.j2", obsctl_venv_python="/opt/obsctl/bin/python")
    assert "ExecStart=/opt/obsctl/bin/python -m obsctl.systemd_units check %i" in check


def test_install_writes_everything_and_starts(root, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret")
    spec, creds, telemetry = su.plan_install(
        _args("--name", "data", "--endpoint", "http://127.0.0.1:9000", "--otel-endpoint",
              "http://127.0.0.1:4317", "s3://bucket/p", "/mnt/data"), [])
    assert spec["credentials_from"] == "systemd" and creds.secret_access_key == "very-secret"
    fake = FakeSystem()
    su.install("data", spec, creds, telemetry, root=root, run=fake, out=lambda _m: None)
    layout = su.Layout("data", root)
    text = layout.spec.read_text()
    assert 'source = "s3://bucket/p"' in text and "very-secret" not in text
    assert (layout.spec.stat().st_mode & 0o777) == 0o640
    assert (layout.credential.stat().st_mode & 0o777) == 0o600
    assert (layout.credential.parent.stat().st_mode & 0o777) == 0o700
    assert layout.dropin.read_text().endswith("LoadCredentialEncrypted=s3:/etc/obsctl/credentials/data.cred\n")
    assert 'telemetry_config = "/etc/obsctl/telemetry.d/data.toml"' in text
    assert parse_telemetry(tomllib.loads(layout.telemetry.read_text())).mode == "remote"
    for unit in ("obsctl-mount@.service", "obsctl-mount@.timer", "obsctl-mount-check@.service"):
        assert (layout.unit_dir / unit).is_file()
    assert ["systemctl", "enable", "obsctl-mount@data.service", "obsctl-mount@data.timer"] in fake.calls
    assert "obsctl-mount@data.service" in fake.active and "obsctl-mount@data.timer" in fake.active
    encrypt = [c for c in fake.calls if c[:2] == ["systemd-creds", "encrypt"]]
    assert encrypt and all("very-secret" not in " ".join(c) for c in fake.calls)


def test_failed_start_rolls_everything_back(root, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret")
    spec, creds, telemetry = su.plan_install(_args("--name", "data", "s3://bucket", "/mnt/data"), [])
    fake = FakeSystem(fail_start=True)
    with pytest.raises(su.InstallError, match="rolled back"):
        su.install("data", spec, creds, telemetry, root=root, run=fake, out=lambda _m: None)
    layout = su.Layout("data", root)
    assert not layout.spec.exists() and not layout.credential.exists() and not layout.dropin.exists()
    assert not (layout.unit_dir / "obsctl-mount@.service").exists()
    assert not fake.enabled


def test_unit_templates_of_the_role_are_kept(root, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    unit = root / "etc/systemd/system/obsctl-mount@.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("# Ansible managed\n[Service]\n")
    spec, creds, telemetry = su.plan_install(_args("--name", "data", "s3://bucket", "/mnt/data"), [])
    su.install("data", spec, creds, telemetry, root=root, run=FakeSystem(), out=lambda _m: None)
    assert unit.read_text() == "# Ansible managed\n[Service]\n"


def test_no_credentials_is_a_usage_error(monkeypatch):
    from obsctl.config import ConfigError
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    with pytest.raises(ConfigError, match="no S3 credentials"):
        su.plan_install(_args("--name", "data", "s3://bucket", "/mnt/data"), [])


def test_bad_name_is_a_usage_error():
    from obsctl.config import ConfigError
    with pytest.raises(ConfigError, match="--name"):
        su.plan_install(_args("--name", "../x", "s3://bucket", "/mnt/data"), [])


def test_uninstall_removes_files(root, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    spec, creds, telemetry = su.plan_install(_args("--name", "data", "s3://bucket", "/mnt/data"), [])
    fake = FakeSystem()
    su.install("data", spec, creds, telemetry, root=root, run=fake, out=lambda _m: None)
    monkeypatch.setattr("obsctl.mounttable.find_mount", lambda *_a, **_k: None)
    assert su.uninstall("data", root=root, run=fake, out=lambda _m: None)
    layout = su.Layout("data", root)
    assert not layout.spec.exists() and not layout.credential.exists() and not layout.dropin.exists()
    assert not fake.enabled and not fake.active
    assert (layout.unit_dir / "obsctl-mount@.service").exists()  # shared templates stay
