"""The engine's files: the spec (obsctl.tomlio, the one TOML writer) keeps the bytes the
fuse_mount module always wrote; the result is valid TOML that obsctl mount loads back;
credential and drop-in texts; redaction; the unit template."""

import os
import tomllib

import jinja2
import msgspec
import pytest

from obsctl import engine, tomlio
from obsctl.mountspec import load_mount_spec

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def desired(params):
    req = msgspec.convert({k: v for k, v in params.items() if v is not None}, engine.Request)
    return engine.desired_spec(req, engine.Layout(req.name))


BASE = dict(name="data", src="s3://bucket/prefix", path="/mnt/data", impl="rclone", endpoint=None, region=None,
            profile=None, options=[], cache_mode=None, credentials=None, read_only=False, allow_other=False,
            ready_timeout=30, telemetry_config=None)

SPECS = [
    dict(BASE),
    dict(BASE, endpoint="http://127.0.0.1:9000", region="us-east-1", read_only=True, allow_other=True,
         cache_mode="writes", options=["--vfs-read-chunk-size=8M", "--dir-cache-time", "5s"],
         credentials={"access_key_id": "a", "secret_access_key": "b"}, telemetry_config="/etc/obsctl/t.toml"),
    dict(BASE, impl="s3fs", profile="reader", path='/mnt/with "quotes" and \\ back slash',
         options=['x="y"'], ready_timeout=120),
    dict(BASE, name="d.ata-1_x", path="/mnt/ünïcode", options=[]),
]


# Bytes the module wrote before the TOML writer moved to tomlkit (module_utils/_toml.py):
# the same, so hosts converged by an older release see no change.
EXPECTED_SPEC_1 = (
    "# Managed by obsctl.observability: changes here are overwritten.\n"
    'allow_other = true\n'
    'cache_mode = "writes"\n'
    'credentials_from = "systemd"\n'
    'endpoint = "http://127.0.0.1:9000"\n'
    'impl = "rclone"\n'
    'mountpoint = "/mnt/data"\n'
    'name = "data"\n'
    'options = ["--vfs-read-chunk-size=8M", "--dir-cache-time", "5s"]\n'
    'read_only = true\n'
    'ready_timeout_seconds = 30\n'
    'region = "us-east-1"\n'
    'source = "s3://bucket/prefix"\n'
    'telemetry_config = "/etc/obsctl/t.toml"\n'
)


def test_same_bytes_as_before():
    assert tomlio.render_mount_spec(desired(SPECS[1])) == EXPECTED_SPEC_1
    text = tomlio.render_mount_spec(desired(SPECS[2]))
    assert 'mountpoint = "/mnt/with \\"quotes\\" and \\\\ back slash"\n' in text
    assert 'options = ["x=\\"y\\""]\n' in text
    assert 'mountpoint = "/mnt/ünïcode"\n' in tomlio.render_mount_spec(desired(SPECS[3]))


@pytest.mark.parametrize("params", SPECS)
def test_valid_toml_and_read_back(params, tmp_path):
    """What the engine writes, obsctl mount reads back to the same spec."""
    spec = desired(params)
    text = tomlio.render_mount_spec(spec)
    expected = {k: v for k, v in spec.items() if v is not None}
    assert tomllib.loads(text) == expected
    (tmp_path / "m.toml").write_text(text)
    assert engine.spec_dict(load_mount_spec(tmp_path / "m.toml")) == spec


def test_sorted_and_stable():
    spec = desired(SPECS[1])
    lines = tomlio.render_mount_spec(spec).splitlines()
    assert lines[0].startswith("# Managed by obsctl.observability")
    keys = [line.split(" = ")[0] for line in lines[1:]]
    assert keys == sorted(keys)
    assert tomlio.render_mount_spec(dict(reversed(list(spec.items())))) == tomlio.render_mount_spec(spec)


def test_credentials_from():
    assert desired(SPECS[1])["credentials_from"] == "systemd"
    assert desired(SPECS[2])["credentials_from"] == "profile"
    assert desired(SPECS[0])["credentials_from"] == "env"


def test_render_credentials():
    """The credential's clear text is what obsctl mount reads back (obsctl.credentials)."""
    from obsctl.credentials import parse_env_lines

    creds = engine.Credentials(access_key_id="AK", secret_access_key="S/K+").as_credentials()
    assert creds.env_text() == "AWS_ACCESS_KEY_ID=AK\nAWS_SECRET_ACCESS_KEY=S/K+\n"
    assert parse_env_lines(creds.env_text(), "x") == creds
    creds = engine.Credentials(access_key_id="AK", secret_access_key="SK", session_token="T==").as_credentials()
    assert creds.env_text().endswith("AWS_SESSION_TOKEN=T==\n")
    assert parse_env_lines(creds.env_text(), "x").session_token == "T=="


def test_redaction():
    before = {"AWS_ACCESS_KEY_ID": "AKID1", "AWS_SECRET_ACCESS_KEY": "SECRET1"}
    after = {"AWS_ACCESS_KEY_ID": "AKID1", "AWS_SECRET_ACCESS_KEY": "SECRET2"}
    b, a = engine.redacted_credentials(before, after)
    for value in ("AKID1", "SECRET1", "SECRET2"):
        assert value not in b + a
    assert b != a
    assert engine.redacted_credentials(None, after)[0] == ""
    assert engine.redacted_credentials(after, after) == (
        "AWS_ACCESS_KEY_ID=<redacted>\nAWS_SECRET_ACCESS_KEY=<redacted>\n",) * 2


def test_unit_template_renders():
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.join(REPO, "templates")),
                             keep_trailing_newline=True)
    env.filters["comment"] = lambda text: "# " + text
    text = env.get_template("obsctl-mount@.service.j2").render(ansible_managed="Ansible managed")
    assert text.startswith("# Ansible managed\n")
    assert "ExecStart=/opt/obsctl/bin/obsctl mount --config /etc/obsctl/mounts/%i.toml" in text
    assert "Type=notify" in text and "KillMode=mixed" in text
    stop = int(text.split("TimeoutStopSec=")[1].split()[0])
    assert stop > 10 + 5, "TimeoutStopSec must cover unmount + driver wait 10 s + final export 5 s"
    for namespaced in ("ProtectSystem=", "PrivateTmp=", "ProtectHome=", "PrivateDevices=", "ReadWritePaths="):
        assert "\n" + namespaced not in text, "a private mount namespace hides the FUSE mount"
