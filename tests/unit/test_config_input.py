"""Hostile or careless telemetry / mount spec input: every unknown key is
reported at once, and a Prometheus endpoint off loopback needs
``expose_prometheus = true`` (then obsctl warns at start)."""

import logging
import socket
import tomllib

import pytest

from obsctl.config import ConfigError, load_telemetry, parse_telemetry
from obsctl.mountspec import build_mount_spec
from obsctl.instruments import MountAttributes
from obsctl.telemetry import Telemetry


def test_every_unknown_key_is_reported_with_its_table(tmp_path):
    path = tmp_path / "telemetry.toml"
    path.write_text('[telemetry]\nmode = "local"\nmdoe = "x"\n[telemetry.metrics]\nbind_adress = "1"\n'
                    'export_intervall = 3\n[telemetry.traces]\nenabeld = false\n[telemtry]\nx = 1\n')
    with pytest.raises(ConfigError) as err:
        load_telemetry(path)
    message = str(err.value)
    for where in ("[telemetry] mdoe", "[telemetry.metrics] bind_adress", "[telemetry.metrics] export_intervall",
                  "[telemetry.traces] enabeld", "telemtry: unknown key"):
        assert where in message, message
    assert str(path) in message


def test_every_unknown_mount_spec_key_is_reported_and_no_value_is_echoed():
    with pytest.raises(ConfigError) as err:
        build_mount_spec({"source": "s3://data", "mountpoint": "/m", "secret_access_key": "TOPSECRET",
                          "mountpiont": "/x", "reead_only": True})
    message = str(err.value)
    assert all(k in message for k in ("secret_access_key", "mountpiont", "reead_only"))
    assert "TOPSECRET" not in message


def test_attributes_table_is_free_form():
    cfg = parse_telemetry({"telemetry": {"resource": {"attributes": {"anything.goes": "v"}}}})
    assert cfg.resource.attributes == {"anything.goes": "v"}


@pytest.mark.parametrize("address", ["127.0.0.1:9464", "127.0.0.53:9464", "localhost:9464", "[::1]:9464"])
def test_loopback_bind_address_needs_nothing(address):
    cfg = parse_telemetry({"telemetry": {"mode": "local", "metrics": {"bind_address": address}}})
    assert cfg.metrics.bind_is_loopback and not cfg.metrics.expose_prometheus


@pytest.mark.parametrize("address", ["0.0.0.0:9464", "[::]:9464", "192.0.2.10:9464", "metrics.example:9464"])
def test_bind_address_off_loopback_needs_expose_prometheus(address):
    data = {"telemetry": {"mode": "local", "metrics": {"bind_address": address}}}
    with pytest.raises(ConfigError) as err:
        parse_telemetry(data)
    message = str(err.value)
    assert "[telemetry.metrics]" in message and "bind_address" in message
    assert "expose_prometheus = true" in message and "telemetry_config_expose_prometheus" in message
    assert "other hosts" in message  # the risk
    data["telemetry"]["metrics"]["expose_prometheus"] = True
    assert not parse_telemetry(data).metrics.bind_is_loopback


def test_expose_prometheus_is_a_toml_bool(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('[telemetry]\nmode = "local"\n[telemetry.metrics]\nexpose_prometheus = "yes"\n')
    with pytest.raises(ConfigError, match=r"\[telemetry.metrics\] expose_prometheus: Expected `bool`"):
        load_telemetry(path)


def test_exposed_endpoint_logs_the_risk_at_start(caplog):
    """Binds the wildcard address for real (expose_prometheus = true): a warning names the risk.
    Only loopback is ever connected to."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = parse_telemetry({"telemetry": {"mode": "remote", "metrics": {
        "bind_address": f"0.0.0.0:{port}", "expose_prometheus": True}, "traces": {"enabled": False}}})
    with caplog.at_level(logging.WARNING, logger="obsctl.telemetry"):
        tel = Telemetry(cfg, MountAttributes(bucket="b", impl="rclone", mountpoint="/m"))
    try:
        assert any("expose_prometheus = true" in r.getMessage() and "unauthenticated" in r.getMessage()
                   for r in caplog.records)
    finally:
        tel.shutdown(1)


def test_documented_telemetry_block_is_valid_and_documents_expose_prometheus():
    doc = open("docs/configuration.md", encoding="utf-8").read()
    block = doc.split("```toml\n[telemetry]", 1)[1].split("```", 1)[0]
    data = tomllib.loads("[telemetry]" + block)
    assert "expose_prometheus" in data["telemetry"]["metrics"]
    parse_telemetry(data)
