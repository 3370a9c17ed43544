"""obsctl.tomlio (= plugins/module_utils/_toml.py): the one TOML writer.

Round trips through obsctl's own parser (obsctl.config.parse_telemetry), the
merge into an application's TOML (tests/fixtures/node/config.toml) keeping
everything outside [telemetry] byte for byte, legacy keys removed and
reported, bad input refused, ``obsctl config check --app-profile rollout-plan``.
The application profiles themselves: tests/unit/test_app_profiles.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import msgspec
import pytest

from obsctl import config, mountspec, tomlio
from obsctl.config import parse_telemetry

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "node" / "config.toml"
REPO = Path(__file__).resolve().parents[2]

REMOTE = {
    "mode": "remote", "service_name": "node", "attributes": {"deployment.environment": "prod", "q": 'a"b\\c'},
    "otlp_endpoint": "http://127.0.0.1:4317", "otlp_protocol": "http/protobuf", "traces_enabled": True,
    "metrics_enabled": True, "export_interval_seconds": 15, "export_timeout_seconds": 4,
    "bind_address": "127.0.0.1:9464",
}

_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?")


def outside_telemetry(text: str) -> list[str]:
    """The lines of ``text`` that do not belong to a [telemetry...] table, in order."""
    kept, inside = [], False
    for line in text.splitlines(keepends=True):
        match = _HEADER.match(line)
        if match:
            inside = match.group(1).split(".")[0].strip('"') == "telemetry"
        if not inside:
            kept.append(line)
    return kept


# -- telemetry.toml ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["none", "remote", "local"])
def test_telemetry_round_trip_through_obsctl_parser(mode):
    text = tomlio.render_telemetry(dict(REMOTE, mode=mode))
    assert text.startswith("# " + tomlio.MANAGED_HEADER + "\n")
    cfg = parse_telemetry(tomllib.loads(text), "rendered")
    assert cfg.mode == mode
    assert cfg.resource.service_name == "node"
    assert cfg.resource.attributes == REMOTE["attributes"]
    if mode == "none":
        assert not cfg.traces.enabled and not cfg.metrics.enabled
        assert cfg.metrics.bind_address is None and cfg.metrics.otlp_endpoint is None
    else:
        assert cfg.traces.otlp_endpoint == cfg.metrics.otlp_endpoint == "http://127.0.0.1:4317"
        assert cfg.metrics.otlp_protocol == "http/protobuf"
        assert cfg.metrics.export_interval_seconds == 15 and cfg.traces.export_timeout_seconds == 4
        assert cfg.metrics.bind_address == "127.0.0.1:9464"


def test_telemetry_defaults_and_empty_strings():
    data = tomllib.loads(tomlio.render_telemetry({"mode": "local", "otlp_endpoint": "", "bind_address": "",
                                                  "service_name": "", "otlp_protocol": ""}))
    metrics = data["telemetry"]["metrics"]
    assert "otlp_endpoint" not in metrics and "bind_address" not in metrics
    assert metrics["otlp_protocol"] == "grpc" and metrics["export_interval_seconds"] == 30
    assert data["telemetry"]["resource"]["service_name"] == "obsctl-mount"
    assert parse_telemetry(data).endpoint(parse_telemetry(data).metrics) == config.LOCAL_OTLP_ENDPOINT


def test_expose_prometheus_written_only_when_true():
    off = tomllib.loads(tomlio.render_telemetry(dict(REMOTE, expose_prometheus=False)))
    assert "expose_prometheus" not in off["telemetry"]["metrics"]
    text = tomlio.render_telemetry(dict(REMOTE, bind_address="0.0.0.0:9464", expose_prometheus=True))
    assert tomllib.loads(text)["telemetry"]["metrics"]["expose_prometheus"] is True
    assert parse_telemetry(tomllib.loads(text)).metrics.expose_prometheus is True


@pytest.mark.parametrize("bad, key", [
    ({"traces_enabled": "yes"}, "telemetry.traces_enabled"),
    ({"export_interval_seconds": "30"}, "telemetry.export_interval_seconds"),
    ({"export_timeout_seconds": True}, "telemetry.export_timeout_seconds"),
    ({"attributes": {"env": 1}}, "telemetry.attributes.env"),
    ({"attributes": ["a"]}, "telemetry.attributes"),
    ({"expose_prometheus": "true"}, "telemetry.expose_prometheus"),
    ({"otlp_endpoit": "http://x"}, "otlp_endpoit"),
])
def test_bad_telemetry_input_is_refused_with_the_key(bad, key):
    with pytest.raises(tomlio.TomlWriteError, match=re.escape(key)):
        tomlio.render_telemetry(dict(REMOTE, **bad))


# -- mount spec -------------------------------------------------------------------


def test_mount_spec_round_trip_and_none_left_out():
    spec = {"name": "data", "source": "s3://bucket/p", "mountpoint": '/mnt/a "b" \\ ü', "impl": "rclone",
            "region": None, "read_only": True, "options": ["dir-cache-time=5s", 'vfs-read-chunk-size="1M"'], "ready_timeout_seconds": 30}
    text = tomlio.render_mount_spec(spec)
    assert text.splitlines()[0] == "# " + tomlio.MANAGED_HEADER
    assert tomllib.loads(text) == {k: v for k, v in spec.items() if v is not None}
    keys = [line.split(" = ")[0] for line in text.splitlines()[1:]]
    assert keys == sorted(keys)
    spec_obj = mountspec.build_mount_spec({k: v for k, v in spec.items() if v is not None})
    assert spec_obj.mountpoint == spec["mountpoint"]


def test_mount_spec_refuses_values_without_toml_form():
    with pytest.raises(tomlio.TomlWriteError, match="options"):
        tomlio.render_mount_spec({"name": "x", "options": [object()]})
    with pytest.raises(tomlio.TomlWriteError, match=r"options\[1\]"):
        tomlio.render_mount_spec({"name": "x", "options": ["a", None]})


def test_to_toml():
    assert tomllib.loads(tomlio.to_toml({"a": {"b": [1, 2], "c": "d"}, "e": 1.5})) == {
        "a": {"b": [1, 2], "c": "d"}, "e": 1.5}
    with pytest.raises(tomlio.TomlWriteError, match="None"):
        tomlio.to_toml({"a": None})


# -- merge into an application's TOML --------------------------------------------------


def test_merge_keeps_the_application_file_and_removes_legacy_keys():
    before = FIXTURE.read_text()
    after, removed = tomlio.merge_telemetry(before, REMOTE, validate=parse_telemetry)
    # Outside [telemetry]: every line, comment and odd spacing, in order.
    assert outside_telemetry(after) == outside_telemetry(before)
    assert "title   =   \"pilot node\"   # odd spacing kept\n" in after
    assert after.endswith("# trailing comment at the end of the file\n")
    # Legacy keys removed and reported, in config.LEGACY_TELEMETRY_KEYS order.
    assert removed == ["telemetry.enabled", "telemetry.otlp_endpoint", "telemetry.service_name"]
    data = tomllib.loads(after)
    assert {k: v for k, v in data.items() if k != "telemetry"} == {
        k: v for k, v in tomllib.loads(before).items() if k != "telemetry"}
    # The key obsctl does not manage stays, with its comment.
    assert data["telemetry"]["metrics"]["cardinality_limit"] == 500
    assert "# keys obsctl does not manage stay\ncardinality_limit = 500\n" in after
    cfg = parse_telemetry({"telemetry": data["telemetry"]})
    assert cfg.mode == "remote" and cfg.resource.service_name == "node"
    assert cfg.metrics.otlp_endpoint == "http://127.0.0.1:4317" and cfg.metrics.cardinality_limit == 500


def test_merge_is_idempotent():
    once, _removed = tomlio.merge_telemetry(FIXTURE.read_text(), REMOTE)
    twice, removed = tomlio.merge_telemetry(once, REMOTE)
    assert twice == once and removed == []


def test_merge_changes_only_what_changed():
    once, _removed = tomlio.merge_telemetry(FIXTURE.read_text(), REMOTE)
    changed, _removed = tomlio.merge_telemetry(once, dict(REMOTE, otlp_endpoint="http://127.0.0.1:14317"))
    diff = [(a, b) for a, b in zip(once.splitlines(), changed.splitlines()) if a != b]
    assert diff == [('otlp_endpoint = "http://127.0.0.1:4317"', 'otlp_endpoint = "http://127.0.0.1:14317"')] * 2
    # Going to mode none removes the managed keys that no longer apply.
    none, _removed = tomlio.merge_telemetry(once, {"mode": "none", "service_name": "node"})
    metrics = tomllib.loads(none)["telemetry"]["metrics"]
    assert metrics == {"cardinality_limit": 500, "enabled": False}
    assert outside_telemetry(none) == outside_telemetry(FIXTURE.read_text())


@pytest.mark.parametrize("text", ["", "# only a comment\n", "[server]\nport = 1", "a = 1\n"])
def test_merge_into_a_file_without_telemetry(text):
    after, removed = tomlio.merge_telemetry(text, REMOTE, validate=parse_telemetry)
    assert after.startswith(text) and removed == []
    assert parse_telemetry({"telemetry": tomllib.loads(after)["telemetry"]}).mode == "remote"


def test_merge_refuses_an_invalid_result_and_says_why():
    with pytest.raises(tomlio.TomlWriteError) as info:
        tomlio.merge_telemetry(FIXTURE.read_text(), dict(REMOTE, mode="everywhere"), validate=parse_telemetry)
    assert "nothing was changed" in str(info.value) and "mode" in str(info.value)
    with pytest.raises(tomlio.TomlWriteError, match="bind_address"):
        tomlio.merge_telemetry("", dict(REMOTE, bind_address="nowhere"), validate=parse_telemetry)


@pytest.mark.parametrize("text, what", [
    ("[server\nport = 1\n", "not valid TOML"),
    ("telemetry = 1\n", "not a [telemetry] table"),
    ("telemetry = { mode = \"none\" }\n", "inline table"),
    ("[telemetry]\nmetrics = 3\n", "telemetry.metrics is a int, not a [telemetry.metrics] table"),
    ("[[telemetry]]\nmode = \"none\"\n", "telemetry is an array of tables [[...]]"),
    ("[telemetry]\nresource = { service_name = \"x\" }\n", "telemetry.resource is an inline table"),
])
def test_merge_refuses_files_it_cannot_merge(text, what):
    with pytest.raises(tomlio.TomlWriteError, match=re.escape(what)):
        tomlio.merge_telemetry(text, REMOTE, origin="/etc/node/config.toml")


def test_legacy_keys_are_obsctl_configs():
    assert tomlio.load_profile("rollout-plan")["legacy"] == config.LEGACY_TELEMETRY_KEYS


def test_managed_keys_exist_in_obsctl_config():
    keys = tomlio.load_profile("rollout-plan")["keys"]
    managed = [k for k, spec in keys.items() if spec["managed"] and "." in k]
    for table, struct in (("traces", config.TracesConfig), ("metrics", config.MetricsConfig),
                          ("resource", config.ResourceConfig)):
        fields = {f.name for f in msgspec.structs.fields(struct)}
        mine = {k.split(".", 1)[1] for k in managed if k.startswith(table + ".")}
        assert mine and not mine - fields, f"[telemetry.{table}] keys the writer manages but obsctl does not read"


# -- obsctl config check --app-profile rollout-plan (the role's validate:) --------------------


def _check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "obsctl", "config", "check", "--app-profile", "rollout-plan",
                           str(path)], capture_output=True, text=True, timeout=60, check=False)


def test_check_accepts_an_application_file_with_telemetry(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(tomlio.merge_telemetry(FIXTURE.read_text(), REMOTE)[0])
    proc = _check(path)
    assert proc.returncode == 0, proc.stderr
    assert "[telemetry] fits profile rollout-plan" in proc.stdout


def test_check_refuses_legacy_keys_and_missing_tables(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(FIXTURE.read_text())
    proc = _check(path)
    assert proc.returncode == 2 and "telemetry.enabled: a legacy key" in proc.stderr
    assert "[telemetry.resource] service_name" in proc.stderr
    path.write_text("[server]\nport = 1\n")
    proc = _check(path)
    assert proc.returncode == 2 and "has no [telemetry] table" in proc.stderr
    proc = _check(tmp_path / "missing.toml")
    assert proc.returncode == 2 and "cannot read" in proc.stderr


def test_check_runs_obsctl_parser_for_the_plan(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(tomlio.merge_telemetry(FIXTURE.read_text(), REMOTE)[0].replace(
        "cardinality_limit = 500", "cardinality_limit = 5"))
    proc = _check(path)
    assert proc.returncode == 2 and "cardinality_limit" in proc.stderr, proc.stderr
