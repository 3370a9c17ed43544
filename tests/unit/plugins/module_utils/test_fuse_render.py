"""Rendering: _fuse.render_mount_toml is the one TOML writer (module_utils/_toml.py,
obsctl.tomlio) and writes the bytes it always wrote; the result is valid TOML that
reads back to the spec; credentials and drop-in texts."""

import os
import sys

import pytest

from ansible_collections.obsctl.observability.plugins.module_utils import _fuse

jinja2 = pytest.importorskip("jinja2")

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))

BASE = dict(name="data", src="s3://bucket/prefix", path="/mnt/data", impl="rclone", endpoint=None, region=None,
            profile=None, options=[], cache_mode=None, credentials=None, read_only=False, allow_other=False,
            ready_timeout=30, telemetry_config=None)

SPECS = [
    dict(BASE),
    dict(BASE, endpoint="http://127.0.0.1:9000", region="us-east-1", read_only=True, allow_other=True,
         cache_mode="writes", options=["--vfs-read-chunk-size=8M", "--dir-cache-time", "5s"],
         credentials={"access_key_id": "a", "secret_access_key": "b"}, telemetry_config="/etc/obsctl/t.toml"),
    dict(BASE, impl="s3fs", profile="reader", path='/mnt/with "quotes" and \\ back slash',
         options=['-o', 'x="y"'], ready_timeout=120),
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
    assert _fuse.render_mount_toml(_fuse.desired_spec(SPECS[1])) == EXPECTED_SPEC_1
    text = _fuse.render_mount_toml(_fuse.desired_spec(SPECS[2]))
    assert 'mountpoint = "/mnt/with \\"quotes\\" and \\\\ back slash"\n' in text
    assert 'options = ["-o", "x=\\"y\\""]\n' in text
    assert 'mountpoint = "/mnt/ünïcode"\n' in _fuse.render_mount_toml(_fuse.desired_spec(SPECS[3]))


def test_one_writer_for_module_and_obsctl():
    obsctl_tomlio = pytest.importorskip("obsctl.tomlio")
    for params in SPECS:
        spec = _fuse.desired_spec(params)
        assert _fuse.render_mount_toml(spec) == obsctl_tomlio.render_mount_spec(spec)


@pytest.mark.parametrize("params", SPECS)
def test_valid_toml_and_read_back(params):
    spec = _fuse.desired_spec(params)
    text = _fuse.render_mount_toml(spec)
    expected = {k: v for k, v in spec.items() if v is not None}
    assert _fuse.parse_mount_toml(text) == expected
    if sys.version_info >= (3, 11):
        import tomllib
        assert tomllib.loads(text) == expected


def test_sorted_and_stable():
    spec = _fuse.desired_spec(SPECS[1])
    lines = _fuse.render_mount_toml(spec).splitlines()
    assert lines[0].startswith("# Managed by obsctl.observability")
    keys = [line.split(" = ")[0] for line in lines[1:]]
    assert keys == sorted(keys)
    assert _fuse.render_mount_toml(dict(reversed(list(spec.items())))) == _fuse.render_mount_toml(spec)


def test_credentials_from():
    assert _fuse.desired_spec(SPECS[1])["credentials_from"] == "systemd"
    assert _fuse.desired_spec(SPECS[2])["credentials_from"] == "profile"
    assert _fuse.desired_spec(SPECS[0])["credentials_from"] == "env"


def test_render_credentials():
    text = _fuse.render_credentials({"access_key_id": "AK", "secret_access_key": "S/K+", "session_token": None})
    assert text == "AWS_ACCESS_KEY_ID=AK\nAWS_SECRET_ACCESS_KEY=S/K+\n"
    assert _fuse.parse_credentials(text) == {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "S/K+"}
    text = _fuse.render_credentials({"access_key_id": "AK", "secret_access_key": "SK", "session_token": "T=="})
    assert text.endswith("AWS_SESSION_TOKEN=T==\n")
    assert _fuse.parse_credentials(text)["AWS_SESSION_TOKEN"] == "T=="


def test_dropin():
    text = _fuse.render_dropin(_fuse.Layout("data", root="/tmp/x"))
    assert text.splitlines()[1:] == ["[Service]", "LoadCredentialEncrypted=s3:/etc/obsctl/credentials/data.cred"]


def test_redaction():
    before = {"AWS_ACCESS_KEY_ID": "AKID1", "AWS_SECRET_ACCESS_KEY": "SECRET1"}
    after = {"AWS_ACCESS_KEY_ID": "AKID1", "AWS_SECRET_ACCESS_KEY": "SECRET2"}
    b, a = _fuse.redacted_credentials(before, after)
    for value in ("AKID1", "SECRET1", "SECRET2"):
        assert value not in b + a
    assert b != a
    assert _fuse.redacted_credentials(None, after)[0] == ""
    assert _fuse.redacted_credentials(after, after) == (
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
