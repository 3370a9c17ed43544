"""install.sh's OS check against meta/platforms.yml, the one platform list.

Each entry of the list is run through install.sh with a fake /etc/os-release
(OBSCTL_INSTALL_OS_RELEASE): tested and untested entries pass the check (the
run then stops at the next check, the package sources, pointed at a closed
loopback port: nothing is installed), refused entries and unknown systems stop
with exit 4 and the reason.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from support.net import closed_port

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "install.sh"
PLATFORMS = yaml.safe_load((REPO / "meta" / "platforms.yml").read_text(encoding="utf-8"))["platforms"]
E_OS, E_SOURCES = 4, 5  # install.sh --help, docs/install.md

pytestmark = pytest.mark.no_fuse


def _run(tmp_path: Path, os_id: str, version: str) -> subprocess.CompletedProcess:
    if os.geteuid() != 0:
        pytest.skip("the OS check comes after the root check: run as root")
    os_release = tmp_path / "os-release"
    os_release.write_text(f'PRETTY_NAME="test"\nID={os_id}\nVERSION_ID="{version}"\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PIP_INDEX_URL=f"http://127.0.0.1:{closed_port()}/simple", OBSCTL_INSTALL_OS_RELEASE=str(os_release))
    return subprocess.run([str(INSTALL), "--yes"], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=60, check=False)


def test_the_list_is_well_formed():
    keys = {"name", "id", "version", "codename", "python", "status", "note"}
    for entry in PLATFORMS:
        assert set(entry) == keys, entry
        assert entry["status"] in ("tested", "untested", "refused"), entry
        assert isinstance(entry["version"], str) and isinstance(entry["python"], str), entry
        major, minor = map(int, entry["python"].split("."))
        # obsctl and ansible-core 2.19 need 3.11 (pyproject.toml requires-python)
        assert ((major, minor) >= (3, 11)) == (entry["status"] != "refused"), entry
    assert any(e["status"] == "tested" for e in PLATFORMS)


@pytest.mark.parametrize("entry", PLATFORMS, ids=[f"{e['id']}-{e['version']}" for e in PLATFORMS])
def test_each_entry(tmp_path, entry):
    proc = _run(tmp_path, entry["id"], entry["version"])
    accepted = ", ".join(f"{e['id']} {e['version']}" for e in PLATFORMS if e["status"] != "refused")
    if entry["status"] == "refused":
        assert proc.returncode == E_OS, proc.stdout + proc.stderr
        assert f"unsupported OS '{entry['id']} {entry['version']}'" in proc.stderr
        assert entry["note"] in proc.stderr
        assert f"supported: {accepted}" in proc.stderr
        return
    # Past the OS check: the next one (package sources) stops the run.
    assert proc.returncode == E_SOURCES, proc.stdout + proc.stderr
    assert "unsupported OS" not in proc.stderr
    untested_note = f"note: {entry['id']} {entry['version']} is accepted but untested: {entry['note']}"
    assert (untested_note in proc.stdout) == (entry["status"] == "untested"), proc.stdout


def test_ubuntu_2204_is_refused_for_its_python(tmp_path):
    proc = _run(tmp_path, "ubuntu", "22.04")
    assert proc.returncode == E_OS
    assert "Python 3.10" in proc.stderr and "3.11 or later" in proc.stderr


@pytest.mark.parametrize("os_id,version", [("fedora", "40"), ("debian", "11"), ("", "")])
def test_unknown_systems_are_refused(tmp_path, os_id, version):
    proc = _run(tmp_path, os_id, version)
    assert proc.returncode == E_OS, proc.stdout + proc.stderr
    assert "unsupported OS" in proc.stderr and "supported: debian 12" in proc.stderr
