"""Every role documents exactly its defaults: meta/argument_specs.yml (entry
point ``main``) has one option per key of defaults/main.yml, with the same
default value, and every variable is prefixed with the role's name."""

from __future__ import annotations

from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROLES_DIR = Path(__file__).resolve().parents[2] / "roles"
ROLES = sorted(p.name for p in ROLES_DIR.iterdir() if (p / "tasks" / "main.yml").is_file())


def _load(path: Path):
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def test_there_are_roles():
    assert {"fuse_driver", "obsctl", "telemetry_config", "fuse_mounts"} <= set(ROLES)


@pytest.mark.parametrize("role", ROLES)
def test_argument_specs_equal_defaults(role):
    defaults = _load(ROLES_DIR / role / "defaults" / "main.yml") or {}
    spec = _load(ROLES_DIR / role / "meta" / "argument_specs.yml")
    options = spec["argument_specs"]["main"]["options"]
    assert sorted(options) == sorted(defaults), (
        f"{role}: in defaults only: {sorted(set(defaults) - set(options))}; "
        f"in argument_specs only: {sorted(set(options) - set(defaults))}")
    for name, value in defaults.items():
        assert options[name].get("default") == value, f"{role}: {name}: argument_specs default differs from defaults/main.yml"
        assert options[name].get("description"), f"{role}: {name} has no description"
        assert options[name].get("type"), f"{role}: {name} has no type"


@pytest.mark.parametrize("role", ROLES)
def test_variables_are_role_prefixed(role):
    defaults = _load(ROLES_DIR / role / "defaults" / "main.yml") or {}
    bad = [name for name in defaults if not name.startswith(role + "_")]
    assert not bad, f"{role}: variables without the {role}_ prefix: {bad}"


@pytest.mark.parametrize("role", ROLES)
def test_role_layout(role):
    tasks = ROLES_DIR / role / "tasks"
    for name in ("main.yml", "preflight.yml", "install.yml", "configure.yml"):
        assert (tasks / name).is_file(), f"{role}: tasks/{name} is missing"
    assert (ROLES_DIR / role / "meta" / "main.yml").is_file()
