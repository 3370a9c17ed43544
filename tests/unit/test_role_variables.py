"""Role variables that other code must agree with (issue 17: variables that
silently did the wrong thing when changed)."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from obsctl import config

REPO = Path(__file__).resolve().parents[2]


def _load(path: Path):
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_fuse_mounts_knows_obsctls_default_telemetry_file(monkeypatch):
    """fuse_mounts names telemetry_config_path in a spec only when it is not obsctl's default."""
    monkeypatch.delenv("OBSCTL_TELEMETRY_CONFIG", raising=False)
    role_vars = _load(REPO / "roles" / "fuse_mounts" / "vars" / "main.yml")
    assert role_vars["fuse_mounts__default_telemetry_config"] == str(config.default_telemetry_path())
    defaults = _load(REPO / "roles" / "telemetry_config" / "defaults" / "main.yml")
    assert defaults["telemetry_config_path"] == str(config.default_telemetry_path())


def test_obsctl_config_dir_is_fixed_and_refused():
    """The removed variable is documented nowhere as an option, and preflight refuses it."""
    specs = _load(REPO / "roles" / "obsctl" / "meta" / "argument_specs.yml")
    assert "obsctl_config_dir" not in specs["argument_specs"]["main"]["options"]
    assert _load(REPO / "roles" / "obsctl" / "vars" / "main.yml")["obsctl__config_dir"] == "/etc/obsctl"
    preflight = (REPO / "roles" / "obsctl" / "tasks" / "preflight.yml").read_text(encoding="utf-8")
    assert "obsctl_config_dir is not defined or obsctl_config_dir == obsctl__config_dir" in preflight


def test_no_default_package_from_an_index():
    defaults = _load(REPO / "roles" / "obsctl" / "defaults" / "main.yml")
    assert defaults["obsctl_package"] == "" and defaults["obsctl_package_file"] == ""


def test_wheelhouse_script_builds_the_collections_package(tmp_path):
    """The controller-side build the obsctl role runs: obsctl and its dependencies as
    wheels, cached by source digest (a second run builds nothing)."""
    import json
    import subprocess
    import sys

    import pytest

    if os.environ.get("OBSCTL_SKIP_WHEEL_BUILD"):
        pytest.skip("OBSCTL_SKIP_WHEEL_BUILD set")
    script = REPO / "roles" / "obsctl" / "files" / "obsctl-wheelhouse.sh"
    argv = ["bash", str(script), sys.executable, str(REPO), str(tmp_path / "cache")]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert first.returncode == 0, first.stderr[-3000:]
    built = json.loads(first.stdout)
    assert built["built"] is True and Path(built["wheel"]).name.startswith("obsctl-")
    names = os.listdir(built["wheelhouse"])
    assert any(n.startswith("msgspec-") for n in names) and any(n.startswith("tomlkit-") for n in names)
    again = json.loads(subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True).stdout)
    assert again == dict(built, built=False)
