"""custom_paths: the roles' path variables changed, obsctl from the collection's own
wheels with no package index reachable; the mount works and follows every variable."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "_shared"))
from obsctl_checks import assert_no_secret, mount_fstype, otlp_state, wait_for  # noqa: E402

VENV = "/opt/obsctl-custom"
UNIT_DIR = "/usr/local/lib/systemd/system"
TELEMETRY = "/etc/obsctl-alt/telemetry.toml"
NAME, MOUNTPOINT = "custom-rclone", "/mnt/molecule-custom"


def test_no_package_index_reachable(host):
    """The container's pip has no index: the install below cannot have used one."""
    assert host.check_output("printenv PIP_INDEX_URL") == "http://127.0.0.1:9/simple"
    probe = host.run(f"{VENV}/bin/pip download --no-deps -d /tmp/pip-probe tomlkit")
    assert probe.rc != 0, probe.stdout


def test_obsctl_from_the_collections_own_wheels(host):
    assert host.file(f"{VENV}/bin/obsctl").is_file
    assert not host.file("/opt/obsctl").exists
    wheels = host.check_output(f"ls {VENV}-dist").split()
    assert any(w.startswith("obsctl-") and w.endswith(".whl") for w in wheels), wheels
    assert any(w.startswith("msgspec-") for w in wheels), wheels  # dependencies came along
    assert host.check_output(f"{VENV}/bin/obsctl --version").startswith("obsctl ")


def test_units_in_the_chosen_directory_run_the_chosen_venv(host):
    for unit in ("obsctl-mount@.service", "obsctl-mount@.timer", "obsctl-mount-check@.service"):
        assert host.file(f"{UNIT_DIR}/{unit}").is_file, unit
        assert not host.file(f"/etc/systemd/system/{unit}").exists, unit
    service = host.file(f"{UNIT_DIR}/obsctl-mount@.service").content_string
    assert f"ExecStart={VENV}/bin/obsctl mount --config /etc/obsctl/mounts/%i.toml" in service
    check = host.file(f"{UNIT_DIR}/obsctl-mount-check@.service").content_string
    assert f"ExecStart={VENV}/bin/obsctl systemd check --name %i" in check
    assert host.service(f"obsctl-mount@{NAME}.timer").is_enabled


def test_mount_works_and_reads_the_moved_telemetry_file(host):
    assert host.service(f"obsctl-mount@{NAME}.service").is_running
    assert mount_fstype(host, MOUNTPOINT) == "fuse.rclone"
    assert host.check_output(f"cat {MOUNTPOINT}/hello.txt").startswith("hello from")
    spec = host.file(f"/etc/obsctl/mounts/{NAME}.toml").content_string
    assert f'telemetry_config = "{TELEMETRY}"' in spec
    assert host.file(TELEMETRY).is_file and not host.file("/etc/obsctl/telemetry.toml").exists
    # Only the moved file names this environment: its series prove the mount read it.
    wait_for(lambda: any(s["resource"].get("deployment.environment") == "molecule-custom"
                         and s["name"].startswith("obsctl_") for s in otlp_state()["series"]),
             60, "no series with deployment.environment=molecule-custom")


def test_health_check_runs_from_the_chosen_venv(host):
    run = host.run(f"systemctl start obsctl-mount-check@{NAME}.service")
    assert run.rc == 0, run.stderr
    log = host.check_output(f"journalctl -u obsctl-mount-check@{NAME}.service --no-pager -n 20")
    assert f"{MOUNTPOINT} is healthy" in log


def test_no_secret(host):
    assert_no_secret(host)
