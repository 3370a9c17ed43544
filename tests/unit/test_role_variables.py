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


def test_obsctl_config_dir_is_not_an_option():
    """The removed variable is no option any more (preflight refuses it: tests below)."""
    specs = _load(REPO / "roles" / "obsctl" / "meta" / "argument_specs.yml")
    assert "obsctl_config_dir" not in specs["argument_specs"]["main"]["options"]
    assert _load(REPO / "roles" / "obsctl" / "vars" / "main.yml")["obsctl__config_dir"] == "/etc/obsctl"


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


def _run_role(tmp_path: Path, tasks_from: str, extra: dict) -> "subprocess.CompletedProcess[str]":
    """Run ``obsctl.observability.obsctl`` ``tasks_from`` on localhost with ansible-playbook."""
    import json
    import subprocess
    import sys

    import pytest

    playbook_bin = Path(sys.executable).with_name("ansible-playbook")
    if not playbook_bin.exists():
        pytest.skip(f"{playbook_bin} is missing (pip install -e '.[test]' installs ansible-core)")
    collections = tmp_path / "collections" / "ansible_collections" / "obsctl"
    collections.mkdir(parents=True)
    (collections / "observability").symlink_to(REPO)
    play = [{"name": "obsctl role", "hosts": "localhost", "connection": "local", "gather_facts": False,
             "tasks": [{"name": "The role", "ansible.builtin.include_role": {
                 "name": "obsctl.observability.obsctl", "tasks_from": tasks_from}}]}]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play), encoding="utf-8")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(tmp_path / "collections"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    return subprocess.run([str(playbook_bin), "-i", "localhost,", str(tmp_path / "play.yml"),
                           "-e", json.dumps(dict(extra, ansible_python_interpreter=sys.executable))],
                          env=env, capture_output=True, text=True, timeout=300, check=False)


def test_preflight_refuses_another_config_dir(tmp_path):
    proc = _run_role(tmp_path, "preflight.yml", {"obsctl_config_dir": "/srv/obsctl"})
    assert proc.returncode != 0
    assert "obsctl_config_dir is no longer a variable" in proc.stdout, proc.stdout[-2000:]
    assert "read /etc/obsctl (fixed)" in proc.stdout


def test_preflight_accepts_the_fixed_config_dir(tmp_path):
    """Setting it to /etc/obsctl passes that check (this host has no systemd: the next one stops)."""
    proc = _run_role(tmp_path, "preflight.yml", {"obsctl_config_dir": "/etc/obsctl"})
    assert "obsctl_config_dir is no longer a variable" not in proc.stdout
    assert "Refuse the removed variable obsctl_config_dir" in proc.stdout
