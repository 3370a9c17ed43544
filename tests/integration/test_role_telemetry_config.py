"""Role obsctl.observability.telemetry_config run for real with ansible-playbook
against localhost (connection local), every path in a temporary directory:
telemetry.toml written by the TOML writer and accepted by `obsctl config check`;
a rust-dkg-engine config.toml exactly as the node's installer writes it
(tests/fixtures/node/rust-dkg-engine-config.toml, made by the installer's own
write_config_toml: tests/fixtures/node/installer-config.sh) merged with the
rust-dkg-engine profile (every byte outside [telemetry] kept, the result fits
the profile, check mode and diff, a second run changing nothing, what the node
cannot do refused with the file untouched, the restart's roll-back); and the
rollout plan's shape (tests/fixtures/node/config.toml, profile rollout-plan)
merged as before (other tables and comments kept, legacy keys removed and
reported, a backup kept, owner and mode kept).

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
INSTALLER_FIXTURE = REPO / "tests" / "fixtures" / "node" / "rust-dkg-engine-config.toml"
BIN = Path(sys.executable).parent

pytestmark = [
    pytest.mark.no_fuse,
    pytest.mark.ansible,
    pytest.mark.skipif(os.geteuid() != 0, reason="the role writes root-owned files: run as root"),
    pytest.mark.skipif(not (BIN / "ansible-playbook").exists(),
                       reason=f"no ansible-playbook in {BIN} (pip install -e '.[test]')"),
]


def _setup(tmp_path, fixture: Path, profile: str) -> Path:
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
    shutil.copyfile(fixture, node)
    node.chmod(0o600)
    os.chown(node, 0, 4)  # group adm: the role must keep owner and group
    (tmp_path / "profile").write_text(profile)
    return tmp_path


@pytest.fixture
def work(tmp_path):
    """The rollout plan's shape (profile rollout-plan)."""
    return _setup(tmp_path, FIXTURE, "rollout-plan")


@pytest.fixture
def node_work(tmp_path):
    """rust-dkg-engine's config.toml as its installer writes it (profile rust-dkg-engine, the default)."""
    return _setup(tmp_path, INSTALLER_FIXTURE, "rust-dkg-engine")


def _vars(work: Path, **extra) -> dict:
    profile = (work / "profile").read_text()
    return {
        "telemetry_config_mode": "remote",
        "telemetry_config_otlp_endpoint": "http://127.0.0.1:4317",
        "telemetry_config_service_name": "node",
        "telemetry_config_resource_attributes": {"deployment.environment": "prod"},
        # obsctl's own endpoint; rust-dkg-engine's /metrics keeps the role's default 127.0.0.1:9464.
        "telemetry_config_prometheus_bind_address": "127.0.0.1:9464" if profile != "rust-dkg-engine" else "127.0.0.1:9463",
        "telemetry_config_path": str(work / "etc" / "obsctl" / "telemetry.toml"),
        "telemetry_config_node_config_path": str(work / "etc" / "node" / "config.toml"),
        "telemetry_config_obsctl_bin": str(BIN / "obsctl"),
        "telemetry_config_restart_mounts": False,
        # rust-dkg-engine is the role's default profile: the plan's tests name theirs, and give
        # the plan's node its own /metrics apart from obsctl's endpoint above.
        **({"telemetry_config_node_profile": profile, "telemetry_config_node_metrics_bind_address": "127.0.0.1:9465"}
           if profile != "rust-dkg-engine" else {}),
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
    # telemetry.toml is fine, the merged node file is refused on the host by
    # `obsctl config check --app-profile rollout-plan` (obsctl's parser, as the profile says).
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


# -- rust-dkg-engine: its config.toml as its installer writes it ---------------------------------

NODE_TELEMETRY = "[telemetry]\n"


def _outside_telemetry(text: str) -> str:
    """The installer writes [telemetry] last (install.sh lines 618-623): everything before it."""
    return text[:text.index(NODE_TELEMETRY)]


def _check_profile(path: Path, profile: str = "rust-dkg-engine") -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "obsctl"), "config", "check", "--app-profile", profile, str(path)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_rust_dkg_engine_config_from_its_installer(node_work):
    node = node_work / "etc" / "node" / "config.toml"
    before = node.read_bytes()
    assert b"enabled = false\nbind_address" in before  # the installer's default answer: metrics off

    # Check mode + diff: predicts the one changed line, writes nothing, says nothing is restarted.
    proc = play(node_work, "--check", "--diff")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "-enabled = false" in proc.stdout and "+enabled = true" in proc.stdout, proc.stdout
    assert node.read_bytes() == before and not backups(node_work)

    proc = play(node_work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rust-dkg-engine reads it only at start" in proc.stdout, proc.stdout
    after = node.read_bytes()
    # Every byte outside [telemetry] unchanged; inside, exactly the node's two keys.
    assert _outside_telemetry(after.decode()) == _outside_telemetry(before.decode())
    assert after == before.replace(b"enabled = false\nbind_address", b"enabled = true\nbind_address")
    data = tomllib.loads(after.decode())
    # The node's serde rule, independently of obsctl: [telemetry] is {metrics: {enabled, bind_address}}
    # and nothing else (rust-dkg-engine src/logger/config.rs lines 25-39, deny_unknown_fields).
    assert data["telemetry"] == {"metrics": {"enabled": True, "bind_address": "127.0.0.1:9464"}}
    proc_check = _check_profile(node)
    assert proc_check.returncode == 0, proc_check.stderr
    assert "fits profile rust-dkg-engine" in proc_check.stdout
    st = node.stat()
    assert (st.st_mode & 0o777) == 0o600 and (st.st_uid, st.st_gid) == (0, 4)
    [backup] = backups(node_work)
    assert backup.read_bytes() == before

    # Second run: nothing changes, nothing to restart.
    proc = play(node_work, "--diff")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert recap(proc)["changed"] == 0, proc.stdout
    assert node.read_bytes() == after and len(backups(node_work)) == 1
    assert "reads it only at start" not in proc.stdout


def _untouched(node: Path, before: bytes, mtime_ns: int, work: Path) -> None:
    assert node.read_bytes() == before
    assert node.stat().st_mtime_ns == mtime_ns
    assert not backups(work)


@pytest.mark.parametrize("extra, key", [
    ({"telemetry_config_node_settings": {"traces": {"enabled": True, "otlp_endpoint": "http://127.0.0.1:4317"}}},
     "telemetry.traces"),
    ({"telemetry_config_node_settings": {"metrics": {"otlp_endpoint": "http://127.0.0.1:4317"}}},
     "telemetry.metrics.otlp_endpoint"),
    ({"telemetry_config_node_settings": {"mode": "remote"}}, "telemetry.mode"),
    ({"telemetry_config_node_metrics_bind_address": "localhost:9464"}, "telemetry.metrics.bind_address"),
])
def test_what_rust_dkg_engine_cannot_do_is_refused(node_work, extra, key):
    node = node_work / "etc" / "node" / "config.toml"
    before, mtime_ns = node.read_bytes(), node.stat().st_mtime_ns
    proc = play(node_work, **extra)
    assert proc.returncode != 0
    assert key in proc.stdout and "profile rust-dkg-engine" in proc.stdout, proc.stdout
    _untouched(node, before, mtime_ns, node_work)


def test_the_plan_profile_on_the_node_file_is_a_mismatch(node_work):
    node = node_work / "etc" / "node" / "config.toml"
    before, mtime_ns = node.read_bytes(), node.stat().st_mtime_ns
    proc = play(node_work, telemetry_config_node_profile="rollout-plan",
                telemetry_config_node_metrics_bind_address="127.0.0.1:9464")
    assert proc.returncode != 0
    assert "is a rust-dkg-engine file" in proc.stdout and "profile rollout-plan" in proc.stdout, proc.stdout
    _untouched(node, before, mtime_ns, node_work)


def test_rust_dkg_engine_profile_on_a_plan_file_is_a_mismatch(work):
    node = work / "etc" / "node" / "config.toml"
    before, mtime_ns = node.read_bytes(), node.stat().st_mtime_ns
    proc = play(work, telemetry_config_node_profile="rust-dkg-engine")
    assert proc.returncode != 0
    assert "the file looks written for profile rollout-plan" in proc.stdout, proc.stdout
    _untouched(node, before, mtime_ns, work)


def test_restart_in_check_mode_says_what_it_would_do(node_work):
    node = node_work / "etc" / "node" / "config.toml"
    before = node.read_bytes()
    proc = play(node_work, "--check", telemetry_config_node_restart=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Would restart rust-dkg-engine" in proc.stdout and "http://127.0.0.1:9464/metrics" in proc.stdout
    assert node.read_bytes() == before and not backups(node_work)


def test_a_restart_that_fails_puts_the_old_file_back(node_work):
    """The roll-back, for real: the unit cannot be restarted here (no unit of that name on a
    host with systemd; no systemd as PID 1 on this test machine), so the handler must put the
    old file back and fail saying so. The success path (unit active, /metrics answering) and a
    roll-back under systemd run in the molecule scenario node_restart."""
    node = node_work / "etc" / "node" / "config.toml"
    before = node.read_bytes()
    proc = play(node_work, telemetry_config_node_restart=True,
                telemetry_config_node_service="obsctl-test-no-such-node")
    assert proc.returncode != 0
    assert "obsctl-test-no-such-node did not come back" in proc.stdout, proc.stdout
    assert "The old file was put back" in proc.stdout
    assert "reads it only at start" not in proc.stdout
    assert node.read_bytes() == before
    [backup] = backups(node_work)
    assert backup.read_bytes() == before
    st = node.stat()
    assert (st.st_mode & 0o777) == 0o600 and (st.st_uid, st.st_gid) == (0, 4)
