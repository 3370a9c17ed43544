"""One driver registry: obsctl.drivers.DRIVERS is what config validation, the
CLI's --impl, the Ansible module, the fuse_mounts role and docs/drivers.md offer."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Callable

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
    if impl == "generic":
        data["command"] = ["bindfs", "-f", "/a", "/m"]
    assert build_mount_spec(data).impl == impl


def test_config_refuses_other_names_listing_the_registry():
    with pytest.raises(ConfigError) as info:
        build_mount_spec({"source": "s3://ok-bucket", "mountpoint": "/m", "impl": "riofs"})
    assert "'riofs' is not a driver obsctl knows: use one of " + ", ".join(DRIVERS) in str(info.value)


@pytest.mark.parametrize("impl, cls", list(DRIVERS.items()))
def test_registry_entries(impl, cls):
    driver = get_driver(impl)
    assert isinstance(driver, Driver) and isinstance(driver, cls) and driver.name == impl
    if impl != "generic":
        assert driver.binary and "obsctl.observability.fuse_driver" in driver.install_hint


def _module_doc_drivers() -> list[str]:
    """The drivers the fuse_mount module's documentation names (its impl has no choices of
    its own: obsctl validates, with its own message)."""
    tree = ast.parse((ROOT / "plugins/modules/fuse_mount.py").read_text())
    doc = next(n.value.value for n in tree.body if isinstance(n, ast.Assign)
               and getattr(n.targets[0], "id", "") == "DOCUMENTATION")
    impl = yaml.safe_load(doc)["options"]["impl"]
    assert "choices" not in impl, "the module must not refuse what obsctl accepts (or the reverse)"
    return re.findall(r"V\(([a-z0-9-]+)\)", impl["description"][0])


def _role_option(role: str, *path: str) -> dict:
    """The option at ``path`` (``fuse_mounts_list``, ``impl``) of ``roles/ROLE/meta/argument_specs.yml`` main."""
    spec = yaml.safe_load((ROOT / "roles" / role / "meta/argument_specs.yml").read_text())
    option = spec["argument_specs"]["main"]
    for name in path:
        option = option["options"][name]
    return option


def _docs_drivers_table() -> list[str]:
    """The ``impl`` column of the first table of docs/drivers.md (the one headed ``| impl |``)."""
    lines = (ROOT / "docs/drivers.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| impl |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line.split("|")[1].strip())
    return rows


def registry(installed_by: str | None = None) -> list[str]:
    """The registry's names in order; with ``installed_by``, those the fuse_driver role installs with that variable."""
    return [name for name, cls in DRIVERS.items() if installed_by is None or cls.installed_by == installed_by]


#: Every place outside obsctl.drivers that spells a list of drivers: (where, how to read it, what it must equal).
#: A new place is one more row.
DRIVER_LISTS: list[tuple[str, Callable[[], list[str]], Callable[[], list[str]]]] = [
    ("obsctl mount --impl choices", cli_impl_choices, registry),
    ("plugins/modules/fuse_mount.py DOCUMENTATION impl (no choices: obsctl validates)", _module_doc_drivers, registry),
    ("roles/fuse_mounts/meta/argument_specs.yml fuse_mounts_list[].impl choices",
     lambda: _role_option("fuse_mounts", "fuse_mounts_list", "impl")["choices"], registry),
    (f"roles/fuse_driver/meta/argument_specs.yml {DISTRO_DRIVERS} choices",
     lambda: _role_option("fuse_driver", DISTRO_DRIVERS)["choices"], lambda: registry(DISTRO_DRIVERS)),
    (f"roles/fuse_driver/meta/argument_specs.yml {RELEASE_DRIVERS} choices",
     lambda: _role_option("fuse_driver", RELEASE_DRIVERS)["choices"], lambda: registry(RELEASE_DRIVERS)),
    ("roles/fuse_driver/meta/argument_specs.yml fuse_driver_releases default (one pinned release per driver)",
     lambda: list(_role_option("fuse_driver", "fuse_driver_releases")["default"]), lambda: registry(RELEASE_DRIVERS)),
    ("roles/fuse_driver/defaults/main.yml fuse_driver_releases",
     lambda: list(yaml.safe_load((ROOT / "roles/fuse_driver/defaults/main.yml").read_text())["fuse_driver_releases"]),
     lambda: registry(RELEASE_DRIVERS)),
    ("docs/drivers.md driver table", _docs_drivers_table, registry),
]


@pytest.mark.parametrize("where, read, expected", DRIVER_LISTS, ids=[row[0] for row in DRIVER_LISTS])
def test_driver_lists_agree_with_the_registry(where, read, expected):
    assert read() == expected(), f"{where} differs from obsctl.drivers.DRIVERS"


def test_every_driver_but_generic_is_installed_by_the_role():
    """installed_by names a fuse_driver variable, so the role lists above cover every driver with a binary."""
    assert registry(DISTRO_DRIVERS) + registry(RELEASE_DRIVERS) == [n for n in DRIVERS if n != "generic"]
