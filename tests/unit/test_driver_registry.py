"""One driver registry: obsctl.drivers.DRIVERS is what config validation, the
CLI's --impl, the Ansible module, the fuse_mounts role and docs/drivers.md offer."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from obsctl.cli import _parser
from obsctl.config import ConfigError, build_mount_spec
from obsctl.drivers import DRIVERS, Driver, get_driver

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


def test_ansible_side_offers_the_same_drivers():
    """The module documents the registry; the fuse_mounts role's argument spec offers it."""
    assert _module_doc_drivers() == list(DRIVERS)
    spec = yaml.safe_load((ROOT / "roles/fuse_mounts/meta/argument_specs.yml").read_text())
    impl = spec["argument_specs"]["main"]["options"]["fuse_mounts_list"]["options"]["impl"]
    assert set(impl["choices"]) == set(DRIVERS)


def test_docs_drivers_table_has_every_driver():
    text = (ROOT / "docs/drivers.md").read_text()
    rows = re.findall(r"^\| ([a-z0-9-]+) \|", text, re.MULTILINE)
    assert [r for r in rows if r != "impl"][:len(DRIVERS)] == list(DRIVERS)
