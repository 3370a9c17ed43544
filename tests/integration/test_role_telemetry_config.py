"""Role obsctl.observability.telemetry_config run for real with ansible-playbook
against localhost (connection local), every path in a temporary directory:
telemetry.toml written by the TOML writer and accepted by `obsctl config check`,
a node's config.toml merged (other tables and comments kept, legacy keys
removed and reported, a backup kept, owner and mode kept), check mode and diff,
a second run changing nothing, and an invalid value leaving the file as it was.

Needs root (the role writes root-owned files) and ansible-playbook in this
venv (the `test` extra installs ansible-core); the controller's tomlkit is
obsctl's own dependency.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from obsctl.config import parse_telemetry

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "node" / "config.toml"
BIN = Path(sys.executable).parent

pytestmark = [
    pytest.mark.no_fuse,
    pytest.mark.ansible,
    pytest.mark.skipif(os.geteuid() != 0, reason="the role writes root-owned files: run as root"),
    pytest.mark.skipif(not (BIN / "ansible-playbook").exists(),
                       reason=f"no ansible-playbook in {BIN} (pip install -e '.[test]')"),
]


@pytest.fixture
def work(tmp_path):
    collections = tmp_path / "collections" / "ansible_collections" / "obsctl"
    collections.mkdir(parents=True)
    (collections / "observability").symlink_to(REPO)
    (tmp_path / "playbook.yml").write_text(json.dumps([{
        "name": "telemetry_config on localhost",
        "hosts": "localhost",
        "gather_facts": False,
        "roles": [{"role": "obsctl.observability.telemetry_config"}],
    }]))
    node = tmp_path / "etc" / "node" / "config.toml"
    node.parent.mkdir(parents=True)
    shutil.copyfile(FIXTURE, node)
    node.chmod(0o600)
    os.chown(node, 0, 4)  # group adm: the role must keep owner and group
    return tmp_path


def _vars(work: Path, **extra) -> dict:
    return {
        "telemetry_config_mode": "remote",
        "telemetry_config_otlp_endpoint": "http://127.0.0.1:4317",
        "telemetry_config_service_name": "node",
        "telemetry_config_resource_attributes": {"deployment.environment": "prod"},
        "telemetry_config_prometheus_bind_address": "127.0.0.1:9464",
        "telemetry_config_path": str(work / "etc" / "obsctl" / "telemetry.toml"),
        "telemetry_config_node_config_path": str(work / "etc" / "node" / "config.toml"),
        "telemetry_config_obsctl_bin": str(BIN / "obsctl"),
        "telemetry_config_restart_mounts": False,
        **extra,
    }


def play(work: Path, *args: str, **extra) -> subprocess.CompletedProcess:
    variables = work / "vars.json"
    variables.write_text(json.dumps(_vars(work, **extra)))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(work / "collections"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
               ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_RETRY_FILES_ENABLED="false",
               PATH=f"{BIN}:{os.environ['PATH']}")
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", "-e", f"@{variables}",
         *args, str(work / "playbook.yml")],
        capture_output=True, text=True, env=env, timeout=300, check=False)


def recap(proc: subprocess.CompletedProcess) -> dict[str, int]:
    line = next(line for line in proc.stdout.splitlines() if line.startswith("localhost") and "ok=" in line)
    return {k: int(v) for k, v in (part.split("=") for part in line.split()[2:])}


def backups(work: Path) -> list[Path]:
    return sorted(p for p in (work / "etc" / "node").iterdir() if p.name != "config.toml")


def test_role_writes_merges_and_is_idempotent(work):
    node = work / "etc" / "node" / "config.toml"
    before = node.read_text()

    # Check mode + diff: predicts the change, writes nothing.
    proc = play(work, "--check", "--diff")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert recap(proc)["changed"] >= 2
    assert node.read_text() == before and not backups(work)
    assert '+mode = "remote"' in proc.stdout and "-enabled = true" in proc.stdout

    proc = play(work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "removed the legacy flat keys telemetry.enabled, telemetry.otlp_endpoint, telemetry.service_name" \
        in proc.stdout
    # telemetry.toml: the writer's file, accepted by obsctl's parser.
    telemetry = work / "etc" / "obsctl" / "telemetry.toml"
    cfg = parse_telemetry(tomllib.loads(telemetry.read_text()))
    assert cfg.mode == "remote" and cfg.metrics.bind_address == "127.0.0.1:9464"
    assert (telemetry.stat().st_mode & 0o777) == 0o640
    # The node's file: merged, owner / group / mode kept, the old one backed up.
    after = node.read_text()
    data = tomllib.loads(after)
    assert {k: v for k, v in data.items() if k != "telemetry"} == {
        k: v for k, v in tomllib.loads(before).items() if k != "telemetry"}
    for line in ("title   =   \"pilot node\"   # odd spacing kept\n", "  \"alpha\",  # first\n",
                 "pool.size = 4  # dotted key\n", "# trailing comment at the end of the file\n"):
        assert line in after
    cfg = parse_telemetry({"telemetry": data["telemetry"]})
    assert cfg.mode == "remote" and cfg.resource.attributes == {"deployment.environment": "prod"}
    assert cfg.metrics.cardinality_limit == 500
    assert "enabled" not in data["telemetry"] and "service_name" not in data["telemetry"]
    st = node.stat()
    assert (st.st_mode & 0o777) == 0o600 and (st.st_uid, st.st_gid) == (0, 4)
    [backup] = backups(work)
    assert backup.read_text() == before

    # Second run: nothing changes, no new backup.
    proc = play(work, "--diff")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert recap(proc)["changed"] == 0, proc.stdout
    assert node.read_text() == after and len(backups(work)) == 1
    assert "removed the legacy flat keys" not in proc.stdout


def test_invalid_settings_leave_the_node_file_untouched(work):
    node = work / "etc" / "node" / "config.toml"
    # A key the role does not manage but obsctl's parser checks (cardinality_limit >= 10):
    # telemetry.toml is fine, the merged node file is refused by `python -m obsctl.tomlcheck`.
    node.write_text(FIXTURE.read_text().replace("cardinality_limit = 500", "cardinality_limit = 5"))
    before = node.read_text()
    proc = play(work)
    assert proc.returncode != 0
    assert "failed to validate" in proc.stdout and "cardinality_limit" in proc.stdout, proc.stdout
    assert node.read_text() == before
    # ansible.builtin.copy makes the backup before it validates: a copy of the same bytes.
    assert all(p.read_text() == before for p in backups(work))


def test_merge_filter_refuses_a_broken_application_file(work):
    node = work / "etc" / "node" / "config.toml"
    node.write_text("[server\nport = 1\n")
    proc = play(work)
    assert proc.returncode != 0
    assert "obsctl.observability.merge_telemetry_toml" in proc.stdout and "not valid TOML" in proc.stdout
    assert node.read_text() == "[server\nport = 1\n" and not backups(work)


def test_missing_application_file_is_a_clear_error(work):
    proc = play(work, telemetry_config_node_config_path=str(work / "etc" / "nope" / "config.toml"))
    assert proc.returncode != 0
    assert "is not an existing file" in proc.stdout
