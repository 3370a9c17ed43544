"""Application profiles (plugins/module_utils/app_profiles, shipped as
obsctl/app_profiles): the one profile check of obsctl.tomlio, table-driven;
each profile equal to its source (rollout-plan = obsctl's own parser; the
rust-dkg-engine fixture = the node installer's own output); the merge writes
only what the profile allows; `obsctl config check --app-profile`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import msgspec
import pytest

from obsctl import config, tomlio

REPO = Path(__file__).resolve().parents[2]
NODE_FIXTURE = REPO / "tests" / "fixtures" / "node" / "rust-dkg-engine-config.toml"
PLAN_FIXTURE = REPO / "tests" / "fixtures" / "node" / "config.toml"
NODE = {"metrics_enabled": True, "bind_address": "127.0.0.1:9464"}
#: rust-dkg-engine's source, if mirrored on this machine (tests that read it skip otherwise).
NODE_REPO = Path(os.environ.get("RUST_DKG_ENGINE_GIT", "/work/.mirror/zeroxbt+rust-dkg-engine/repo"))
NODE_COMMIT = "2b3201c627b0d2375947289216ba95415dce29ab"


# -- the profile check, table-driven -------------------------------------------------------

OK_NODE = {"metrics": {"enabled": True, "bind_address": "127.0.0.1:9464"}}


@pytest.mark.parametrize("telemetry, problems", [
    (OK_NODE, []),
    ({"metrics": {"enabled": False, "bind_address": "[::1]:9464"}}, []),
    ({"metrics": {"enabled": True, "bind_address": "0.0.0.0:9464"}}, []),
    # unknown keys, at every level (serde deny_unknown_fields)
    ({**OK_NODE, "traces": {"enabled": True}}, ["telemetry.traces: not accepted by rust-dkg-engine"]),
    ({**OK_NODE, "mode": "remote"}, ["telemetry.mode: not accepted"]),
    ({"metrics": {**OK_NODE["metrics"], "otlp_endpoint": "http://127.0.0.1:4317"}},
     ["telemetry.metrics.otlp_endpoint: not accepted"]),
    # types
    ({"metrics": {"enabled": "true", "bind_address": "127.0.0.1:9464"}},
     ["telemetry.metrics.enabled: expected true or false"]),
    ({"metrics": {"enabled": 1, "bind_address": "127.0.0.1:9464"}}, ["telemetry.metrics.enabled: expected true"]),
    ({"metrics": {"enabled": True, "bind_address": 9464}}, ["telemetry.metrics.bind_address: expected a string"]),
    # bind_address is a Rust SocketAddr: an IP literal and a port
    ({"metrics": {"enabled": True, "bind_address": "localhost:9464"}}, ["no host name"]),
    ({"metrics": {"enabled": True, "bind_address": "127.0.0.1"}}, ["expected an IP address and a port"]),
    ({"metrics": {"enabled": True, "bind_address": "127.0.0.1:70000"}}, ["expected an IP address and a port"]),
    ({"metrics": {"enabled": True, "bind_address": "::1:9464"}}, ["expected an IP address and a port"]),
    ({"metrics": {"enabled": True, "bind_address": "127.0.0.01:9464"}}, ["expected an IP address and a port"]),
    # a table written as a value, a required key missing
    ({"metrics": True}, ["telemetry.metrics: expected a [telemetry.metrics] table",
                         "telemetry.metrics.enabled: required", "telemetry.metrics.bind_address: required"]),
    ({"metrics": {"enabled": True}}, ["telemetry.metrics.bind_address: required by rust-dkg-engine, missing"]),
    ({}, ["telemetry.metrics.enabled: required", "telemetry.metrics.bind_address: required"]),
])
def test_rust_dkg_engine_profile(telemetry, problems):
    found = tomlio.profile_problems("rust-dkg-engine", telemetry)
    assert len(found) == len(problems), found
    for want, got in zip(problems, found):
        assert want in got, found


@pytest.mark.parametrize("telemetry, problems", [
    ({"mode": "remote", "resource": {"service_name": "n", "attributes": {"a.b": "c"}},
      "traces": {"enabled": True, "otlp_endpoint": "http://127.0.0.1:4317", "otlp_protocol": "grpc",
                 "export_timeout_seconds": 3},
      "metrics": {"enabled": True, "export_interval_seconds": 2.5, "bind_address": "localhost:9464",
                  "expose_prometheus": False, "cardinality_limit": 500}}, []),
    ({"mode": "everywhere"}, ["telemetry.mode: expected one of none, remote, local"]),
    ({"enabled": True}, ["telemetry.enabled: a legacy key of rollout-plan; it moved to [telemetry.metrics] enabled"]),
    ({"resource": {"attributes": {"a": 1}}}, ["telemetry.resource.attributes: expected a table of strings"]),
    ({"traces": {"otlp_endpoint": "127.0.0.1:4317"}}, ["telemetry.traces.otlp_endpoint: expected an http://"]),
    ({"traces": {"export_timeout_seconds": True}}, ["telemetry.traces.export_timeout_seconds: expected a number"]),
    ({"metrics": {"cardinality_limit": 1.5}}, ["telemetry.metrics.cardinality_limit: expected an integer"]),
    ({"metrics": {"bind_address": "9464"}}, ["telemetry.metrics.bind_address: expected HOST:PORT"]),
    ({"traces": {"service_name": "x"}}, ["telemetry.traces.service_name: not accepted by rollout-plan"]),
    ({"logs": {"enabled": True}}, ["telemetry.logs: not accepted"]),
])
def test_rollout_plan_profile(telemetry, problems):
    found = tomlio.profile_problems("rollout-plan", telemetry)
    assert len(found) == len(problems), found
    for want, got in zip(problems, found):
        assert want in got, found


# -- each profile equals its source -----------------------------------------------------------


def test_profiles_are_shipped_in_the_package():
    collection = sorted(p.name for p in (REPO / "plugins" / "module_utils" / "app_profiles").glob("*.toml"))
    package = REPO / "src" / "obsctl" / "app_profiles"
    assert collection == sorted(p.name for p in package.glob("*.toml"))
    for name in collection:
        assert (package / name).is_symlink() and (package / name).read_bytes() == (
            REPO / "plugins" / "module_utils" / "app_profiles" / name).read_bytes()
    assert {"rust-dkg-engine", "rollout-plan"} <= set(tomlio.profile_names())
    assert "app_profiles/*.toml" in (REPO / "pyproject.toml").read_text()


def test_rollout_plan_is_obsctls_parser():
    """Exactly the fields of obsctl.config's [telemetry] structs, and its legacy keys."""
    profile = tomlio.load_profile("rollout-plan")
    want = {"mode"}
    for table, struct in (("resource", config.ResourceConfig), ("traces", config.TracesConfig),
                          ("metrics", config.MetricsConfig)):
        want |= {f"{table}.{f.name}" for f in msgspec.structs.fields(struct)}
    assert set(profile["keys"]) == want
    assert profile["legacy"] == config.LEGACY_TELEMETRY_KEYS
    tables = {f.name for f in msgspec.structs.fields(config.TelemetryConfig)}
    assert tables == {"mode", "resource", "traces", "metrics"}


def _node_source(path: str) -> str:
    if not (NODE_REPO / "HEAD").exists() or not shutil.which("git"):
        pytest.skip(f"rust-dkg-engine's source is not mirrored at {NODE_REPO} (set RUST_DKG_ENGINE_GIT)")
    return subprocess.run(["git", "-C", str(NODE_REPO), "show", f"{NODE_COMMIT}:{path}"], capture_output=True,
                          text=True, check=True).stdout


def test_rust_dkg_engine_profile_is_the_nodes_structs():
    source = _node_source("src/logger/config.rs")
    # The two telemetry structs, both deny_unknown_fields, and their fields (the profile's keys).
    assert "#[serde(deny_unknown_fields)]\npub(crate) struct TelemetryConfig {" in source
    assert "#[serde(deny_unknown_fields)]\npub(crate) struct TelemetryMetricsConfig {" in source
    body = source.split("pub(crate) struct TelemetryConfig {")[1].split("}")[0]
    assert [line.split(":")[0].split()[-1] for line in body.splitlines() if line.strip().startswith("pub ")] == [
        "metrics"]
    body = source.split("pub(crate) struct TelemetryMetricsConfig {")[1].split("}")[0]
    fields = [line.strip() for line in body.splitlines() if line.strip().startswith("pub ")]
    assert fields == ["pub enabled: bool,", "pub bind_address: String,"]
    profile = tomlio.load_profile("rust-dkg-engine")
    assert list(profile["keys"]) == ["metrics.enabled", "metrics.bind_address"]
    assert [profile["keys"][k]["type"] for k in profile["keys"]] == ["bool", "socket_addr"]


def test_the_installer_fixture_is_what_the_installer_writes(tmp_path):
    """Regenerate the fixture with the node's own write_config_toml: the same bytes."""
    install_sh = tmp_path / "install.sh"
    install_sh.write_text(_node_source("tools/installer/install.sh"))
    out = tmp_path / "config.toml"
    subprocess.run(["bash", str(REPO / "tests" / "fixtures" / "node" / "installer-config.sh"), str(install_sh),
                    str(out)], check=True, timeout=60)
    assert out.read_bytes() == NODE_FIXTURE.read_bytes()


@pytest.mark.parametrize("name, broken, what", [
    ("x", "application = 'x'\nversions = '*'\ndescription = 'd'\nbuild = 'settings'\n", "[keys] must list"),
    ("x", "application = 'x'\nversions = '*'\ndescription = 'd'\nbuild = 'guess'\n[keys.a]\ntype = 'bool'\n",
     "build must be one of"),
    ("x", "application = 'x'\nversions = '*'\ndescription = 'd'\nbuild = 'settings'\n[keys.a]\ntype = 'uuid'\n",
     "keys.a: type must be one of"),
    ("x", "application = 'x'\nversions = '*'\ndescription = 'd'\nbuild = 'settings'\n"
          "[keys.a]\ntype = 'bool'\nmanaged = true\n", "needs setting = one of"),
    ("x", "application = 'x'\nversions = '*'\ndescription = 'd'\nbuild = 'settings'\nflavour = 1\n"
          "[keys.a]\ntype = 'bool'\n", "unknown field(s) flavour"),
])
def test_a_malformed_profile_is_refused_naming_the_field(tmp_path, monkeypatch, name, broken, what):
    (tmp_path / f"{name}.toml").write_text(broken)
    monkeypatch.setattr(tomlio, "PROFILE_DIR", str(tmp_path))
    with pytest.raises(tomlio.TomlWriteError, match=r"application profile x .*" + re.escape(what)):
        tomlio.load_profile(name)


def test_an_unknown_profile_lists_the_known_ones():
    known = "unknown application profile 'nope'; known profiles: rollout-plan, rust-dkg-engine"
    with pytest.raises(tomlio.TomlWriteError, match=known):
        tomlio.load_profile("nope")


# -- the merge with the rust-dkg-engine profile ---------------------------------------------------


def test_merge_into_the_installer_file_changes_one_line_and_is_idempotent():
    before = NODE_FIXTURE.read_text()
    after, removed = tomlio.merge_telemetry(before, NODE, profile="rust-dkg-engine")
    assert removed == []
    assert after == before.replace("enabled = false\nbind_address", "enabled = true\nbind_address")
    assert tomllib.loads(after)["telemetry"] == {"metrics": {"enabled": True, "bind_address": "127.0.0.1:9464"}}
    assert tomlio.merge_telemetry(after, NODE, profile="rust-dkg-engine")[0] == after
    # obsctl's own settings in the same dict are not the node's: only its two keys are read.
    full = dict(NODE, mode="remote", otlp_endpoint="http://127.0.0.1:4317", traces_enabled=True)
    assert tomlio.merge_telemetry(before, full, profile="rust-dkg-engine")[0] == after


@pytest.mark.parametrize("text", ["", "[server]\nport = 1\n", "environment = \"testnet\"\n[telemetry]\n"])
def test_merge_writes_both_keys_where_there_were_none(text):
    after, _removed = tomlio.merge_telemetry(text, dict(NODE, metrics_enabled=False), profile="rust-dkg-engine")
    assert after.startswith(text)
    assert tomllib.loads(after)["telemetry"] == {"metrics": {"enabled": False, "bind_address": "127.0.0.1:9464"}}
    assert tomlio.check_text(after, "rust-dkg-engine")


@pytest.mark.parametrize("kwargs, text, what", [
    ({"extra": {"traces": {"enabled": True}}}, None, "telemetry.traces: not accepted by rust-dkg-engine"),
    ({"extra": {"metrics": {"export_interval_seconds": 5}}}, None, "telemetry.metrics.export_interval_seconds"),
    ({"telemetry": dict(NODE, bind_address="")}, None,
     "telemetry.metrics.bind_address (setting bind_address) is required by profile rust-dkg-engine"),
    ({}, PLAN_FIXTURE.read_text(), "the file looks written for profile rollout-plan"),
    ({}, "[telemetry.traces]\nenabled = false\n", "telemetry.traces, telemetry.traces.enabled"),
    ({"profile": "rollout-plan", "telemetry": {"mode": "local"}}, NODE_FIXTURE.read_text(),
     "is a rust-dkg-engine file"),
    ({"profile": "no-such-app"}, None, "unknown application profile"),
])
def test_merge_refuses_what_the_application_cannot_do(kwargs, text, what):
    args = {"telemetry": NODE, "profile": "rust-dkg-engine", **kwargs}
    with pytest.raises(tomlio.TomlWriteError) as info:
        tomlio.merge_telemetry(NODE_FIXTURE.read_text() if text is None else text, args.pop("telemetry"),
                               origin="/etc/rust-dkg-engine/config.toml", **args)
    assert what in str(info.value)
    assert "/etc/rust-dkg-engine/config.toml" in str(info.value) or "unknown application profile" in str(info.value)


# -- obsctl config check --app-profile -----------------------------------------------------------


def _check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "obsctl", "config", "check", *args], capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.mark.parametrize("profile, text, code, what", [
    ("rust-dkg-engine", NODE_FIXTURE.read_text(), 0, "fits profile rust-dkg-engine (rust-dkg-engine >=0.1.9)"),
    ("rust-dkg-engine", NODE_FIXTURE.read_text() + "\n[telemetry.traces]\nenabled = true\n", 2,
     "telemetry.traces: not accepted by rust-dkg-engine"),
    ("rust-dkg-engine", NODE_FIXTURE.read_text().replace("enabled = false\nbind", "enabled = \"no\"\nbind"), 2,
     "telemetry.metrics.enabled: expected true or false"),
    ("rollout-plan", NODE_FIXTURE.read_text(), 2, "is a rust-dkg-engine file"),
    ("nope", NODE_FIXTURE.read_text(), 2, "unknown application profile 'nope'"),
    ("rust-dkg-engine", "[telemetry\n", 2, "is not valid TOML"),
])
def test_config_check_app_profile(tmp_path, profile, text, code, what):
    path = tmp_path / "config.toml"
    path.write_text(text)
    proc = _check("--app-profile", profile, str(path))
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert what in (proc.stdout if code == 0 else proc.stderr)


def test_config_check_without_profile_is_unchanged(tmp_path):
    path = tmp_path / "telemetry.toml"
    path.write_text(tomlio.render_telemetry({"mode": "local"}))
    proc = _check(str(path))
    assert proc.returncode == 0 and "valid telemetry config (mode local)" in proc.stdout
    proc = _check(str(NODE_FIXTURE))  # an application's file is not obsctl's telemetry.toml
    assert proc.returncode == 2
