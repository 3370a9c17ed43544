"""Every role documents exactly its defaults: meta/argument_specs.yml (entry
point ``main``) has one option per key of defaults/main.yml, with the same
default value, and every variable is prefixed with the role's name."""

from __future__ import annotations

import re
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


# -- one source of truth for the telemetry defaults: obsctl's own config -------------

def _code_defaults() -> dict:
    """The defaults obsctl applies when telemetry.toml leaves a key out
    (obsctl.config: SignalConfig, MetricsConfig, ResourceConfig)."""
    config = pytest.importorskip("obsctl.config")
    return {
        "export_timeout_seconds": config.SignalConfig().export_timeout_seconds,
        "export_interval_seconds": config.MetricsConfig().export_interval_seconds,
        "service_name": config.ResourceConfig().service_name,
    }


def test_telemetry_role_defaults_are_obsctl_defaults():
    """The role writes every key, so a differing role default silently replaces obsctl's."""
    defaults = _load(ROLES_DIR / "telemetry_config" / "defaults" / "main.yml")
    for key, value in _code_defaults().items():
        assert defaults[f"telemetry_config_{key}"] == value, (
            f"telemetry_config_{key} is {defaults[f'telemetry_config_{key}']!r}, obsctl's default is {value!r}")


def test_toml_writer_defaults_are_obsctl_defaults():
    """plugins/module_utils/_toml.py (= obsctl.tomlio) fills in left-out keys for
    callers other than the role (obsctl systemd install)."""
    tomlio = pytest.importorskip("obsctl.tomlio")
    for key, value in _code_defaults().items():
        assert tomlio.DEFAULTS[key] == value, f"tomlio.DEFAULTS[{key!r}] is {tomlio.DEFAULTS[key]!r}, obsctl's is {value!r}"


# "the export timeout, 3 s by default", "`export_timeout_seconds` (default 3 s)",
# "export_timeout_seconds = 3": what the docs, templates and roles say the default is.
_EXPORT_TIMEOUT_SAID = (
    re.compile(r"export[ _]timeout(?:_seconds)?`?[,:]? \(?(?:default )?(\d+(?:\.\d+)?) s\b", re.IGNORECASE),
    re.compile(r"^export_timeout_seconds\s*=\s*(\d+(?:\.\d+)?)", re.MULTILINE),
)


def test_docs_say_obsctls_export_timeout():
    repo = ROLES_DIR.parent
    files = [repo / "README.md", *sorted((repo / "docs").glob("*.md")), *sorted((repo / "templates").glob("*.j2")),
             *sorted(ROLES_DIR.glob("*/*/*.yml"))]
    expected = _code_defaults()["export_timeout_seconds"]
    found = []
    for path in files:
        text = re.sub(r"\s*\n\s*#?\s*", " ", path.read_text(encoding="utf-8"))  # unwrap lines and comments
        raw = path.read_text(encoding="utf-8")
        for pattern, haystack in ((_EXPORT_TIMEOUT_SAID[0], text), (_EXPORT_TIMEOUT_SAID[1], raw)):
            for match in pattern.finditer(haystack):
                found.append((str(path.relative_to(repo)), match.group(0), float(match.group(1))))
    wrong = [(where, said) for where, said, value in found if value != expected]
    assert not wrong, f"obsctl's export timeout default is {expected:g} s; these say otherwise: {wrong}"
    # README (prose and TOML example), benchmarks, operations, roles, the unit template, the obsctl role
    assert len({entry[0] for entry in found}) >= 6, found


# -- the internal role `common`: shared task files, no role dependencies -------------------

ALL_ROLES = sorted(p.name for p in ROLES_DIR.iterdir() if (p / "meta" / "main.yml").is_file())


@pytest.mark.parametrize("role", ALL_ROLES)
def test_no_role_dependencies(role):
    meta = _load(ROLES_DIR / role / "meta" / "main.yml")
    assert not meta.get("dependencies"), f"{role}: meta/main.yml declares dependencies"


def test_common_entry_points_are_its_task_files_and_defaults():
    """common has one argument_specs entry point per task file (tasks_from NAME.yml
    is validated against entry point NAME), documenting exactly its defaults."""
    common = ROLES_DIR / "common"
    specs = _load(common / "meta" / "argument_specs.yml")["argument_specs"]
    assert sorted(specs) == sorted(p.stem for p in (common / "tasks").glob("*.yml"))
    assert not (common / "tasks" / "main.yml").exists(), "common is internal: no main entry point"
    defaults = _load(common / "defaults" / "main.yml") or {}
    documented = {}
    for entry in specs.values():
        for name, option in (entry.get("options") or {}).items():
            assert option.get("description") and option.get("type"), f"common: {name}"
            documented[name] = option.get("default")
    assert documented == defaults
    assert all(name.startswith("common_") for name in defaults)


def _role_files():
    for path in sorted(ROLES_DIR.glob("*/*/*.yml")):
        yield path, path.read_text(encoding="utf-8")


def test_apt_prediction_and_mount_restart_exist_once():
    """The check-mode prediction of apt installs and the restart of the running
    mounts are written in roles/common only; the roles reach them from there."""
    simulate = [p for p, text in _role_files() if "'--simulate'" in text]
    assert simulate == [ROLES_DIR / "common" / "tasks" / "apt_packages.yml"], simulate
    restart = [p for p, text in _role_files() if "obsctl-mount@.+" in text and "state: restarted" in text]
    assert restart == [ROLES_DIR / "common" / "tasks" / "restart_mounts.yml"], restart
    reload = [p for p, text in _role_files() if "obsctl-mount@.+" in text and "state: reloaded" in text]
    assert reload == [ROLES_DIR / "common" / "tasks" / "reload_mounts.yml"], reload
    # the only other apt task: Docker's packages right after their repository is
    # added, which apt-get --simulate could not predict before it exists
    apt = [p for p, text in _role_files() if "ansible.builtin.apt:" in text]
    assert apt == [ROLES_DIR / "common" / "tasks" / "apt_packages.yml",
                   ROLES_DIR / "observability_stack" / "tasks" / "docker_repository.yml"], apt
    for handlers in ROLES_DIR.glob("*/handlers/main.yml"):
        for handler in _load(handlers) or []:
            include = handler.get("ansible.builtin.include_tasks", "")
            for task in ("restart_mounts.yml", "reload_mounts.yml"):
                if task in include:
                    assert include == "{{ role_path | dirname }}/common/tasks/" + task
                    assert (ROLES_DIR / "common" / "tasks" / task).is_file()
    # a changed telemetry file reloads the mounts; only an obsctl upgrade restarts them (opt-in)
    handler = _load(ROLES_DIR / "telemetry_config" / "handlers" / "main.yml")[0]
    assert handler["ansible.builtin.include_tasks"].endswith("/common/tasks/reload_mounts.yml")


def test_fuse_mounts_preflight_uses_the_engine_name_rule():
    """The role checks every name before the first mount is touched (nothing half-done across
    the list); its pattern is the engine's (obsctl.engine.NAME_RE), which the module applies."""
    from obsctl.engine import NAME_RE

    text = (ROLES_DIR / "fuse_mounts/tasks/preflight.yml").read_text()
    assert f"item.name is match('{NAME_RE.pattern}')" in text
