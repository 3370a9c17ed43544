"""Every unit template starts with the managed header, from one place.

The templates under ``templates/`` are rendered two ways: by the obsctl role
(Ansible's ``template`` module: ``ansible_managed`` is Ansible's, "Ansible
managed" unless ansible.cfg or a variable says otherwise) and by ``obsctl
systemd install`` (``obsctl.engine.render``: ``ansible_managed`` is
``obsctl.engine.MANAGED_BY``). Their first line is ``{{ ansible_managed |
comment }}`` and nothing else, so:

* the role's units start with Ansible's own header and never carry
  ``MANAGED_BY``: ``obsctl systemd install`` keeps them;
* the CLI's units start with ``MANAGED_BY``: ``obsctl systemd install``
  recognises them as its own and refreshes them when the template changed
  (before, the timer and the check service started with a literal line, so the
  CLI took its own files for the role's and never refreshed them).

The role path is the real one: ansible-playbook runs the obsctl role's own
template task (read from roles/obsctl/tasks/configure.yml: its loop and vars)
with the role's defaults, into a temporary directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[2]
HEADER = "{{ ansible_managed | comment }}"
UNIT_TEMPLATES = sorted(p.name for p in (REPO / "templates").iterdir()
                        if p.name.endswith((".service.j2", ".timer.j2")))
ROLE_TEMPLATES = sorted((REPO / "roles").glob("*/templates/*.j2"))


def _load(path: Path):
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _header_text(rendered: str) -> list[str]:
    """The text lines of the leading comment block (bare ``#`` lines skipped).

    The block ends at the first line that is not a comment. Ansible's
    ``comment`` filter frames the text with bare ``#`` lines; obsctl's may not.
    """
    lines = []
    for line in rendered.splitlines():
        if not line.startswith("#"):
            break
        if line.strip() != "#":
            lines.append(line[2:] if line.startswith("# ") else line[1:])
    return lines


@pytest.mark.parametrize("path", sorted((REPO / "templates").glob("*.j2")) + ROLE_TEMPLATES,
                         ids=lambda p: str(p.relative_to(REPO)))
def test_every_template_starts_with_the_managed_header(path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first == HEADER, f"{path.relative_to(REPO)}: first line {first!r}, expected {HEADER!r}"


def test_obsctl_renders_the_same_unit_templates():
    su = pytest.importorskip("obsctl.engine")
    assert sorted(pair[1] for pair in su.UNIT_TEMPLATES) == UNIT_TEMPLATES


@pytest.mark.parametrize("template", UNIT_TEMPLATES)
def test_obsctl_systemd_install_path(template):
    """Rendered with the context install() gives: the header is MANAGED_BY,
    which is how `obsctl systemd install` knows the file is its own."""
    su = pytest.importorskip("obsctl.engine")
    pytest.importorskip("jinja2")
    text = su.render(template, obsctl_bin="/opt/obsctl/bin/obsctl")
    assert text.splitlines()[0].startswith("#"), text.splitlines()[0]
    assert su.MANAGED_BY in _header_text(text)[0]
    assert _header_text(text)[0].startswith(su.MANAGED_BY)


@pytest.fixture(scope="module")
def role_rendered(tmp_path_factory):
    """{file name: text} of the units as the roles write them, rendered by
    ansible-playbook (connection local) with the roles' own template tasks."""
    pytest.importorskip("ansible")
    playbook_bin = Path(sys.executable).with_name("ansible-playbook")
    if not playbook_bin.exists():
        pytest.skip(f"{playbook_bin} is missing (pip install -e '.[test]' installs ansible-core)")
    out = tmp_path_factory.mktemp("role-units")
    configure = _load(REPO / "roles" / "obsctl" / "tasks" / "configure.yml")
    units = [t for t in configure if "ansible.builtin.template" in t
             and "obsctl_unit_dir" in t["ansible.builtin.template"]["dest"]]
    assert len(units) == 1, "roles/obsctl/tasks/configure.yml: one template task writes the units"
    role_task = units[0]
    args = {k: v for k, v in role_task["ansible.builtin.template"].items() if k not in ("owner", "group")}
    play = [{
        "name": "Render the units as the roles do",
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "vars_files": [
            str(REPO / "roles" / "obsctl" / "defaults" / "main.yml"),
            str(REPO / "roles" / "observability_stack" / "defaults" / "main.yml"),
        ],
        "vars": {"role_path": str(REPO / "roles" / "obsctl")},
        "tasks": [
            {"name": "The obsctl role's unit task", "ansible.builtin.template": args,
             "loop": role_task["loop"], "vars": role_task.get("vars", {})},
            {"name": "The observability_stack unit",
             "ansible.builtin.template": {
                 "src": str(REPO / "roles" / "observability_stack" / "templates"
                            / "obsctl-observability-stack.service.j2"),
                 "dest": str(out / "obsctl-observability-stack.service"), "mode": "0644"}},
        ],
    }]
    playbook = out / "render.yml"
    playbook.write_text(yaml.safe_dump(play, sort_keys=False), encoding="utf-8")
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0",
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    proc = subprocess.run(
        [str(playbook_bin), "-i", "localhost,", str(playbook),
         "-e", json.dumps({"obsctl_unit_dir": str(out), "ansible_python_interpreter": sys.executable})],
        cwd=str(REPO), env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {p.name: p.read_text(encoding="utf-8") for p in out.iterdir() if p.suffix in (".service", ".timer")}


@pytest.mark.ansible
@pytest.mark.parametrize("unit", [t[:-len(".j2")] for t in UNIT_TEMPLATES] + ["obsctl-observability-stack.service"])
def test_role_path(role_rendered, unit):
    """Rendered by the role: Ansible's own header (its comment filter on its
    ansible_managed), and never obsctl's marker, so the CLI leaves it alone."""
    from ansible import constants
    from ansible.plugins.filter.core import comment

    managed = constants.config.get_config_value("DEFAULT_MANAGED_STR")
    text = role_rendered[unit]
    assert text.startswith(comment(managed) + "\n"), text[:200]
    su = pytest.importorskip("obsctl.engine")
    assert su.MANAGED_BY not in text
