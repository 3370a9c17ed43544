"""What README.md and docs/ say about running obsctl is what the code does (issue 17, the README bullets):
commands that work in a Debian root shell without sudo, the pull-only rule, ``service.instance.id``."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from obsctl.config import ConfigError, parse_telemetry
from obsctl.instruments import MountAttributes
from obsctl.telemetry import Telemetry

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
OBSERVABILITY = (ROOT / "docs" / "observability.md").read_text()
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()


def _paragraph(text: str, needle: str) -> str:
    """The blank-line separated paragraph (or list item) of ``text`` that contains ``needle``."""
    for block in re.split(r"\n\s*\n", text):
        if needle in block:
            return " ".join(block.split())
    raise AssertionError(f"no paragraph mentions {needle!r}")


def test_readme_commands_run_in_a_root_shell_without_sudo():
    """A fresh Debian 12 root shell has no sudo: no command line of the README may start with it,
    and the scripts it names must not call sudo themselves."""
    commands = [line.strip() for line in README.splitlines() if line.startswith("    ") and line.strip()]
    assert not [c for c in commands if c.startswith("sudo ")], "README command lines that need sudo"
    for script in ("scripts/demo", "scripts/test", "scripts/dev-setup", "install.sh"):
        code = [line for line in (ROOT / script).read_text().splitlines() if not line.lstrip().startswith("#")]
        assert not [line for line in code if re.search(r"(^|[;&|(]\s*)sudo\s", line)], script
    assert "calls no `sudo`" in README


def test_pull_only_rule_is_what_the_docs_say(monkeypatch):
    for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    said = _paragraph(CONFIGURATION, "pull-only")
    assert "[telemetry.traces] enabled = false" in said, said
    pull = {"telemetry": {"mode": "remote", "metrics": {"bind_address": "127.0.0.1:9464"},
                          "traces": {"enabled": False}}}
    cfg = parse_telemetry(pull)
    assert cfg.exports_metrics and not cfg.pushes_metrics and not cfg.exports_traces
    del pull["telemetry"]["traces"]
    with pytest.raises(ConfigError, match=r"\[telemetry.traces\] otlp_endpoint .*enabled = false"):
        parse_telemetry(pull)


def test_service_instance_id_is_what_the_docs_say():
    cfg = parse_telemetry({"telemetry": {"mode": "none"}})
    telemetry = Telemetry(cfg, MountAttributes("b", "rclone", "/mnt/data"))
    try:
        assert telemetry.resource.attributes["service.instance.id"] == f"{socket.gethostname()}:/mnt/data"
    finally:
        telemetry.shutdown()
    said = _paragraph(OBSERVABILITY, "says; obsctl")
    assert "obsctl sets it to `HOST:MOUNTPOINT`" in said, said
    assert "does not set" not in said
