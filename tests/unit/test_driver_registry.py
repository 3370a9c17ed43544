"""One driver registry: obsctl.drivers.DRIVERS is what config validation, the
CLI's --impl, the Ansible module, the roles and the docs offer (the lists outside
the package are written by scripts/gen-driver-docs; --check is tested here)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from obsctl.cli import _parser
from obsctl.config import ConfigError
from obsctl.mountspec import build_mount_spec
from obsctl.drivers import DISTRO_DRIVERS, DRIVERS, RELEASE_DRIVERS, Driver, get_driver

ROOT = Path(__file__).resolve().parents[2]


def cli_impl_choices() -> list[str]:
    parser = _parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    mount = sub.choices["mount"]
    return list(next(a for a in mount._actions if "--impl" in a.option_strings).choices)


def test_cli_choices_are_the_registry():
    assert cli_impl_choices() == list(DRIVERS)


@pytest.mark.parametrize("impl", list(DRIVERS))
def test_config_accepts_every_registered_driver(impl):
    data = {"source": "s3://ok-bucket", "mountpoint": "/m", "impl": impl}
    if get_driver(impl).takes_command:
        data["command"] = ["bindfs", "-f", "/a", "/m"]
    if get_driver(impl).source_form.startswith("META-URL"):
        data["source"] = "sqlite3:///var/lib/obsctl/m.db"
    assert build_mount_spec(data).impl == impl


def test_config_refuses_other_names_listing_the_registry():
    with pytest.raises(ConfigError) as info:
        build_mount_spec({"source": "s3://ok-bucket", "mountpoint": "/m", "impl": "riofs"})
    assert "'riofs' is not a driver obsctl knows: use one of " + ", ".join(DRIVERS) in str(info.value)


@pytest.mark.parametrize("impl, cls", list(DRIVERS.items()))
def test_registry_entries(impl, cls):
    driver = get_driver(impl)
    assert isinstance(driver, Driver) and isinstance(driver, cls) and driver.name == impl
    if driver.binary:
        assert "obsctl.observability.fuse_driver" in driver.install_hint


def _module_impl() -> dict:
    tree = ast.parse((ROOT / "plugins/modules/fuse_mount.py").read_text())
    doc = next(n.value.value for n in tree.body if isinstance(n, ast.Assign)
               and getattr(n.targets[0], "id", "") == "DOCUMENTATION")
    return yaml.safe_load(doc)["options"]["impl"]


def test_module_impl_has_no_choices_of_its_own():
    """obsctl validates impl, with its own message: the module must not refuse what obsctl accepts (or the reverse)."""
    impl = _module_impl()
    assert "choices" not in impl
    assert re.findall(r"V\(([a-z0-9-]+)\)", impl["description"][0]) == list(DRIVERS)


GENERATOR = ROOT / "scripts/gen-driver-docs"


def _generator(*args: str, root: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(GENERATOR), "--root", str(root), *args],
                          capture_output=True, text=True, check=False)


def test_every_driver_list_is_generated_from_the_registry():
    """docs tables, the module's impl text, the roles' choices and release defaults: scripts/gen-driver-docs
    writes them from obsctl.drivers.DRIVERS; --check fails when one was edited by hand or the registry changed."""
    proc = _generator("--check")
    assert proc.returncode == 0, proc.stderr


def test_generator_check_names_a_stale_block_and_rewrites_it(tmp_path):
    """--check really compares: a hand-edited list is found (and named), the rewrite restores it."""
    for rel in ("docs", "plugins/modules", "roles/fuse_mounts/meta", "roles/fuse_driver/meta", "roles/fuse_driver/defaults"):
        shutil.copytree(ROOT / rel, tmp_path / rel)
    specs = tmp_path / "roles/fuse_mounts/meta/argument_specs.yml"
    original = specs.read_text()
    specs.write_text(original.replace(", generic]", ", generic, riofs]"))
    proc = _generator("--check", root=tmp_path)
    assert proc.returncode == 1
    assert "roles/fuse_mounts/meta/argument_specs.yml: block impl-choices" in proc.stderr
    assert _generator(root=tmp_path).returncode == 0
    assert specs.read_text() == original
    assert _generator("--check", root=tmp_path).returncode == 0


def _role_option(role: str, *path: str) -> dict:
    """The option at ``path`` (``fuse_mounts_list``, ``impl``) of ``roles/ROLE/meta/argument_specs.yml`` main."""
    spec = yaml.safe_load((ROOT / "roles" / role / "meta/argument_specs.yml").read_text())
    option = spec["argument_specs"]["main"]
    for name in path:
        option = option["options"][name]
    return option


def test_generated_role_lists_are_the_registry():
    """What the generator wrote parses to the registry's names (the YAML is real YAML, in the right place)."""
    assert _role_option("fuse_mounts", "fuse_mounts_list", "impl")["choices"] == list(DRIVERS)
    assert _role_option("fuse_driver", DISTRO_DRIVERS)["choices"] == registry(DISTRO_DRIVERS)
    assert _role_option("fuse_driver", RELEASE_DRIVERS)["choices"] == registry(RELEASE_DRIVERS)
    releases = yaml.safe_load((ROOT / "roles/fuse_driver/defaults/main.yml").read_text())["fuse_driver_releases"]
    assert releases == _role_option("fuse_driver", "fuse_driver_releases")["default"]
    assert list(releases) == registry(RELEASE_DRIVERS)
    for name, entry in releases.items():
        cls = DRIVERS[name]
        assert entry["program"] == cls.binary and str(entry["version"]) == cls.release.version
        assert entry.get("member") == cls.release.member and (entry["kind"] == "tar") == bool(cls.release.member)


def registry(installed_by: str | None = None) -> list[str]:
    """The registry's names in order; with ``installed_by``, those the fuse_driver role installs with that variable."""
    return [name for name, cls in DRIVERS.items() if installed_by is None or cls.installed_by == installed_by]


def test_every_driver_with_a_binary_is_installed_by_the_role():
    """installed_by names a fuse_driver variable, so the role lists above cover every driver with a binary;
    a release driver declares its release layout."""
    assert registry(DISTRO_DRIVERS) + registry(RELEASE_DRIVERS) == [n for n, c in DRIVERS.items() if c.binary]
    assert all(DRIVERS[n].release is not None for n in registry(RELEASE_DRIVERS))
