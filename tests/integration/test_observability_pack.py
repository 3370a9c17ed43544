"""The pack under observability/ against real components.

* `promtool check rules` and `promtool test rules` (Debian's promtool);
* the mounts: a real Prometheus (Debian's /usr/bin/prometheus, 1 s scrape
  and rule evaluation, the pack's rule files loaded) scraping two real
  obsctl mounts of a loopback moto S3 server (rclone and s3fs, pull-only:
  bind_address on 127.0.0.1, no OTLP). Every panel expression of the Mount
  overview, with the template variables replaced by the values Grafana would
  put there, returns data; every template variable query finds the real
  label values; every alert rule is loaded and evaluates without error, and
  each alert expression returns what the situation says: the s3fs driver
  that the test killed (restart), the rclone mount whose driver the test
  stopped (hung: mount down, stale or hung), the obsctl that the test
  stopped (exporter silent). These tests share one set-up (module fixture
  ``pack``) and run in file order: the last two change the world (SIGSTOP /
  SIGTERM).
* the node (no FUSE needed, module fixture ``node_pack``): another real
  Prometheus scraping four nodes of two shapes: what rust-dkg-engine serves
  (tests/support/real_node.py: metrics-exporter-prometheus summaries, its
  status values) and the rollout plan's (tests/support/synthetic_node.py:
  the OpenTelemetry SDK's histograms, status ok/error), one healthy and one
  degraded of each. Every Node overview expression returns data on both
  shapes, the error-ratio panel equals the fixture's rejected + expired
  share, and each node alert expression names the degraded nodes only.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from support.data import BUCKET_OBJECTS, unique_bucket_name
from support.net import free_port
from support.obsctl import (
    ObsctlMount, force_cleanup, obsctl_env, require_driver, s3_mount_args, status_json,
    write_telemetry_toml,
)
from support.pack import (
    RULE_TESTS_DIR, alert_rules, dashboards, panel_targets, regex_literal, render, rule_files,
)
from support import real_node, synthetic_node
from support.prometheus import Prometheus, prometheus_binary

HERE = Path(__file__).resolve().parent
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

#: panel -> why it has no data here. Only the cache panel: no driver that
#: runs here reports cache hits or misses (docs/metrics.md, the table row
#: obsctl_cache_hits_total: rclone 1.60 and s3fs 1.90 have no such counter).
NO_DATA_HERE = {
    ("mount-overview.json", "Cache hit ratio"):
        "rclone 1.60 and s3fs 1.90 report no cache hit/miss counter (docs/metrics.md)",
}

pytestmark = pytest.mark.skipif(
    prometheus_binary() is None or not os.access(PROMTOOL, os.X_OK),
    reason="prometheus/promtool not installed (apt-get install prometheus)")


# --------------------------------------------------------------------- promtool


@pytest.mark.no_fuse
def test_promtool_check_rules():
    files = [str(p) for p in rule_files()]
    res = subprocess.run([PROMTOOL, "check", "rules", *files], capture_output=True, text=True,
                         check=False, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("SUCCESS") == len(files), res.stdout


@pytest.mark.no_fuse
def test_promtool_test_rules():
    files = sorted(str(p) for p in RULE_TESTS_DIR.glob("*.yml"))
    assert files
    res = subprocess.run([PROMTOOL, "test", "rules", *files], capture_output=True, text=True,
                         check=False, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("SUCCESS") == len(files), res.stdout


@pytest.mark.no_fuse
def test_promtool_test_rules_fails_on_a_wrong_expectation(tmp_path):
    """The promtool tests can fail: the same cases with every firing case
    expecting silence make promtool exit non-zero."""
    import yaml

    for path in sorted(RULE_TESTS_DIR.glob("*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        doc["rule_files"] = [str((path.parent / f).resolve()) for f in doc["rule_files"]]
        for case in doc["tests"]:
            for check in case["alert_rule_test"]:
                check["exp_alerts"] = []
        broken = tmp_path / path.name
        broken.write_text(yaml.safe_dump(doc))
        res = subprocess.run([PROMTOOL, "test", "rules", str(broken)], capture_output=True,
                             text=True, check=False, timeout=120)
        assert res.returncode != 0, f"{path.name}: promtool accepted wrong expectations"


# --------------------------------------------------------------------- the set-up


@dataclass
class Mount:
    impl: str
    bucket: str
    mountpoint: Path
    target: str
    proc: ObsctlMount

    def values(self) -> dict[str, str]:
        """Template variable values Grafana would use with this mount selected."""
        return {"job": regex_literal("obsctl"), "instance": regex_literal(self.target),
                "bucket": regex_literal(self.bucket), "impl": regex_literal(self.impl),
                "mountpoint": regex_literal(str(self.mountpoint))}


@dataclass
class Pack:
    prom: Prometheus
    s3: Any
    env: dict[str, str]
    mounts: dict[str, Mount] = field(default_factory=dict)


def workload(pack: Pack, tag: str) -> None:
    """Reads, writes and one failing read on every mount.

    The failure is real: a file written through the mount is deleted from
    S3 behind the mount's back once uploaded, so the driver, which still
    lists it, gets 404 from the server when it reads it."""
    client = pack.s3.client()
    for m in pack.mounts.values():
        assert "data-a.bin" in os.listdir(m.mountpoint), m
        for name in ("hello.txt", "data-a.bin", "data-b.bin"):
            assert (m.mountpoint / name).read_bytes() == BUCKET_OBJECTS[name]
        # under rclone's streaming upload cutoff (see test_mount.py)
        for name in (f"written-{tag}.bin", f"gone-{tag}.bin"):
            with open(m.mountpoint / name, "wb") as fh:
                fh.write(os.urandom(64 * 1024 + 17))
    for m in pack.mounts.values():
        victim = f"gone-{tag}.bin"
        deadline = time.monotonic() + 20
        while victim not in pack.s3.list_keys(m.bucket):
            assert time.monotonic() < deadline, f"{m.impl}: {victim} never uploaded"
            time.sleep(0.3)
        client.delete_object(Bucket=m.bucket, Key=victim)
        try:
            (m.mountpoint / victim).read_bytes()
        except OSError:
            pass


@pytest.fixture(scope="module")
def pack(request, s3_server, tmp_path_factory) -> Iterator[Pack]:
    conftest = request.config.pluginmanager.getplugin(str(HERE / "conftest.py"))
    reason = conftest.fuse_unavailable_reason() if conftest else None
    if reason:
        pytest.skip(reason)
    for impl in ("rclone", "s3fs"):
        require_driver(impl)
    base = tmp_path_factory.mktemp("pack")
    runtime = base / "run"
    runtime.mkdir(mode=0o700)
    env = obsctl_env(runtime, s3_server.access_key, s3_server.secret_key)
    mounts: dict[str, Mount] = {}
    prom: Prometheus | None = None
    try:
        for impl in ("rclone", "s3fs"):
            bucket = unique_bucket_name(f"pack-{impl}")
            s3_server.create_bucket(bucket, BUCKET_OBJECTS)
            mnt = base / f"mnt-{impl}"
            mnt.mkdir()
            port = free_port()
            tel = write_telemetry_toml(base / f"telemetry-{impl}.toml",
                                       bind_address=f"127.0.0.1:{port}")
            proc = ObsctlMount(s3_mount_args(bucket, mnt, impl, s3_server.endpoint, tel), env,
                               base / f"logs-{impl}").start()
            mounts[impl] = Mount(impl, bucket, mnt.resolve(), f"127.0.0.1:{port}", proc)
        for m in mounts.values():
            m.proc.wait_ready(30)
        prom = Prometheus([m.target for m in mounts.values()], job="obsctl",
                          rule_files=rule_files()).start()
        p = Pack(prom, s3_server, env, mounts)
        for m in mounts.values():
            prom.wait_for_query(f'obsctl_mount_up{{bucket="{m.bucket}"}} == 1', timeout=20)
        workload(p, "setup")

        # a real driver restart: SIGKILL the s3fs driver; the supervisor
        # restarts it and counts it in obsctl_driver_restarts_total
        s3fs = mounts["s3fs"]
        entry = [e for e in status_json(env) if os.path.realpath(e.get("mountpoint", "")) == str(s3fs.mountpoint)]
        assert entry and entry[0].get("driver_pid"), entry
        os.kill(entry[0]["driver_pid"], signal.SIGKILL)
        prom.wait_for_query(f'obsctl_driver_restarts_total{{bucket="{s3fs.bucket}"}} >= 1', timeout=30)
        prom.wait_for_query(f'obsctl_mount_up{{bucket="{s3fs.bucket}"}} == 1', timeout=30)
        for m in mounts.values():
            prom.wait_for_query(f'obsctl_errors_total{{bucket="{m.bucket}"}}', timeout=20)
        yield p
    finally:
        if prom is not None:
            prom.stop()
        for m in mounts.values():
            if m.proc.proc is not None and m.proc.proc.poll() is None:
                os.kill(m.proc.pid, signal.SIGCONT)
                try:
                    m.proc.stop(30)
                except AssertionError:
                    m.proc.kill()
            force_cleanup(m.mountpoint)


def finite(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(v) for v in Prometheus.values(result))


# --------------------------------------------------------------------- dashboards


def test_every_panel_query_returns_data(pack):
    """Each expression, with the variables set to one real mount, runs on
    the real Prometheus and returns a non-NaN value for at least one of them
    (FUSE latency comes from rclone only, request latency from s3fs only:
    docs/metrics.md). The Node overview: test_node_panels_return_data_on_both_shapes."""
    workload(pack, "panels")
    problems = []
    for name, dash in dashboards().items():
        if name == "node-overview.json":
            continue
        subjects = pack.mounts.values()
        for target in panel_targets(name, dash):
            queries = [render(target.expr, s.values()) for s in subjects]
            deadline = time.monotonic() + 30
            while True:
                results = [pack.prom.query(q) for q in queries]  # raises on invalid PromQL
                if any(finite(r) for r in results) or time.monotonic() > deadline:
                    break
                time.sleep(1)
            no_data = (name, target.panel) in NO_DATA_HERE
            if no_data:
                assert not any(results), f"{target}: has data now, drop it from NO_DATA_HERE"
            elif not any(finite(r) for r in results):
                problems.append(f"{target}: no data for {queries}: {results}")
    assert not problems, "\n".join(problems)


def test_template_variable_queries_find_the_real_values(pack):
    """``label_values(SELECTOR, LABEL)`` as Grafana runs it (the series API)
    finds the job, instances, buckets, drivers and mountpoints."""
    expected = {
        "mount-overview.json": {
            "job": {"obsctl"},
            "instance": {m.target for m in pack.mounts.values()},
            "bucket": {m.bucket for m in pack.mounts.values()},
            "impl": {"rclone", "s3fs"},
            "mountpoint": {str(m.mountpoint) for m in pack.mounts.values()},
        },
    }
    for name, dash in dashboards().items():
        if name not in expected:
            continue
        for var in dash["templating"]["list"]:
            if var["type"] != "query":
                continue
            inner = var["query"][len("label_values("):-1]
            selector, label = inner.rsplit(",", 1)
            selector = render(selector.strip(), {v: ".*" for v in expected[name]})
            found = set(pack.prom.api(f"label/{label.strip()}/values", **{"match[]": selector}))
            assert expected[name][var["name"]] <= found, (name, var["name"], found)


# --------------------------------------------------------------------- alert rules


def alert_result(pack: Pack, alert: str) -> list[dict[str, Any]]:
    return pack.prom.query(alert_rules()[alert]["expr"])


def test_rules_loaded_and_evaluated_without_error(pack):
    names = set(alert_rules())
    deadline = time.monotonic() + 20
    while True:
        groups = pack.prom.api("rules")["groups"]
        rules = {r["name"]: r for g in groups for r in g["rules"]}
        if names <= set(rules) and all(
                not rules[n].get("lastEvaluation", "0001").startswith("0001") for n in names):
            break
        assert time.monotonic() < deadline, f"rules not all evaluated: {sorted(rules)}"
        time.sleep(0.5)
    bad = {n: (rules[n]["health"], rules[n].get("lastError")) for n in names
           if rules[n]["health"] != "ok"}
    assert not bad, bad


def test_alert_expressions_on_the_live_system(pack):
    """Healthy mounts: no mount alert; the killed s3fs driver: restarting."""
    s3fs, rclone = pack.mounts["s3fs"], pack.mounts["rclone"]
    for alert in ("ObsctlMountDown", "ObsctlMountStaleOrHung", "ObsctlMountStalled",
                  "ObsctlExporterSilent"):
        assert alert_result(pack, alert) == [], alert
    restarting = alert_result(pack, "ObsctlDriverRestarting")
    assert {(s["metric"]["bucket"], s["metric"]["impl"]) for s in restarting} == {(s3fs.bucket, "s3fs")}
    assert rclone.bucket not in str(restarting)
    pack.prom.query(alert_rules()["ObsctlMountErrorRatioHigh"]["expr"])  # valid; value depends on the driver

    # Prometheus' own rule evaluation agrees: firing (no `for`)
    def states() -> dict[tuple[str, str], str]:
        return {(a["labels"]["alertname"], a["labels"].get("instance", "")): a["state"]
                for a in pack.prom.api("alerts")["alerts"]}

    deadline = time.monotonic() + 15
    want = {("ObsctlDriverRestarting", s3fs.target): "firing"}
    while not want.items() <= states().items():
        assert time.monotonic() < deadline, states()
        time.sleep(0.5)


def test_hung_driver_fires_mount_down_and_stale_or_hung(pack):
    """SIGSTOP the rclone driver: the probe's stat blocks (mount_up 0) while
    requests wait in the kernel; SIGCONT: the mount answers again."""
    rclone = pack.mounts["rclone"]
    entry = [e for e in status_json(pack.env) if os.path.realpath(e.get("mountpoint", "")) == str(rclone.mountpoint)]
    driver = entry[0]["driver_pid"]
    os.kill(driver, signal.SIGSTOP)
    try:
        for alert in ("ObsctlMountDown", "ObsctlMountStaleOrHung"):
            res = pack.prom.wait_for_query(alert_rules()[alert]["expr"], timeout=30)
            assert [s["metric"]["mountpoint"] for s in res] == [str(rclone.mountpoint)], (alert, res)
    finally:
        os.kill(driver, signal.SIGCONT)
    pack.prom.wait_for_query(f'obsctl_mount_up{{bucket="{rclone.bucket}"}} == 1', timeout=30)


def test_stopped_obsctl_fires_exporter_silent(pack):
    """SIGTERM the s3fs obsctl: its series stop; ObsctlExporterSilent names
    its instance only, and ObsctlMountDown stays quiet (no series, no 0)."""
    s3fs = pack.mounts["s3fs"]
    assert s3fs.proc.stop(30) == 0, s3fs.proc.output()
    res = pack.prom.wait_for_query(alert_rules()["ObsctlExporterSilent"]["expr"], timeout=30)
    assert [s["metric"]["instance"] for s in res] == [s3fs.target], res
    assert alert_result(pack, "ObsctlMountDown") == []


# --------------------------------------------------------------------- the node


#: the degraded real node's command mix per round and command: 10% expired,
#: 10% rejected because the queue was full (real_node.parse_mix)
DEGRADED_MIX = "completed=16,expired=2,rejected_queue_full=2"
#: the degraded plan-shape node: 1 command in 4 fails (status="error")
PLAN_ERROR_RATIO = 0.25
#: queue depth of both degraded nodes: 240 / 256 = 93.75% full
DEGRADED_QUEUE = 240


@dataclass
class Node:
    name: str
    shape: str  # "real" (rust-dkg-engine) or "plan" (the rollout plan's histograms)
    target: str
    proc: subprocess.Popen

    def values(self) -> dict[str, str]:
        """Template variable values Grafana would use with this node selected."""
        return {"job": regex_literal("node"), "instance": regex_literal(self.target)}


@dataclass
class NodePack:
    prom: Prometheus
    nodes: dict[str, Node]

    def shape(self, shape: str) -> list[Node]:
        return [n for n in self.nodes.values() if n.shape == shape]


@pytest.fixture(scope="module")
def node_pack() -> Iterator[NodePack]:
    """Four nodes (real and plan shape, healthy and degraded) scraped every
    second by a real Prometheus with the node rules loaded."""
    nodes: dict[str, Node] = {}
    prom: Prometheus | None = None
    starts = {
        "real-healthy": ("real", real_node.start, ()),
        "real-degraded": ("real", real_node.start,
                          ("--mix", DEGRADED_MIX, "--panicked-task", "proving",
                           "--queue-depth", str(DEGRADED_QUEUE))),
        "plan-healthy": ("plan", synthetic_node.start,
                         ("--instance-id", "plan-healthy", "--error-ratio", "0", "--failure-ratio", "0")),
        "plan-degraded": ("plan", synthetic_node.start,
                          ("--instance-id", "plan-degraded", "--error-ratio", str(PLAN_ERROR_RATIO),
                           "--failure-ratio", "0.25", "--queue-depth", str(DEGRADED_QUEUE))),
    }
    try:
        for name, (shape, start, args) in starts.items():
            proc, target = start(*args)
            nodes[name] = Node(name, shape, target, proc)
        prom = Prometheus([n.target for n in nodes.values()], job="node",
                          rule_files=[p for p in rule_files() if p.name == "obsctl-node.yml"]).start()
        for n in nodes.values():
            # 10 scrapes (10 s, ~50 rounds) in the rate() windows: the plan
            # node fails whole rounds (1 in 4), so a short window is coarse
            prom.wait_for_query(f'count_over_time(node_command_total{{instance="{n.target}"}}[1m]) >= 10',
                                timeout=40)
        yield NodePack(prom, nodes)
    finally:
        if prom is not None:
            prom.stop()
        for n in nodes.values():
            n.proc.terminate()
            try:
                n.proc.wait(10)
            except subprocess.TimeoutExpired:
                n.proc.kill()


def node_query(pack: NodePack, expr: str, node: Node) -> list[dict[str, Any]]:
    return pack.prom.query(render(expr, node.values()))


def node_panel(title: str) -> Any:
    targets = [t for t in panel_targets("node-overview.json", dashboards()["node-overview.json"])
               if t.panel == title]
    assert targets, f"no panel {title!r} in node-overview.json"
    return targets


@pytest.mark.no_fuse
def test_node_panels_return_data_on_both_shapes(node_pack):
    """Every Node overview expression, with the variables set to one node,
    returns a non-NaN value for a node of rust-dkg-engine's shape (summaries)
    and for a node of the plan's shape (histograms)."""
    problems = []
    for target in panel_targets("node-overview.json", dashboards()["node-overview.json"]):
        for shape in ("real", "plan"):
            subjects = node_pack.shape(shape)
            deadline = time.monotonic() + 30
            while True:
                results = [node_query(node_pack, target.expr, n) for n in subjects]
                if any(finite(r) for r in results) or time.monotonic() > deadline:
                    break
                time.sleep(1)
            if not any(finite(r) for r in results):
                problems.append(f"{target}: no data on the {shape} shape: {results}")
    assert not problems, "\n".join(problems)


@pytest.mark.no_fuse
def test_node_latency_comes_from_quantiles_or_buckets(node_pack):
    """The latency panel's one query reads the real node's quantile series
    (its values are the fixture's durations: 10..50 ms) and the plan node's
    buckets (a 2 ms sleep: at most the 5 ms bucket bound... or a little more
    on a busy machine, never the 10 s top)."""
    [p95, _p99] = node_panel("Command latency p95 / p99")
    real = node_query(node_pack, p95.expr, node_pack.nodes["real-healthy"])
    assert {s["metric"]["command"] for s in real} == set(real_node.COMMANDS), real
    assert all(0.01 <= v <= 0.05 for v in Prometheus.values(real)), real
    plan = node_query(node_pack, p95.expr, node_pack.nodes["plan-healthy"])
    assert {s["metric"]["command"] for s in plan} == set(synthetic_node.COMMANDS), plan
    assert all(0 < v < 1 for v in Prometheus.values(plan)), plan


@pytest.mark.no_fuse
def test_node_error_ratio_panel_equals_the_fixture_share(node_pack):
    """The "Command error ratio" panel on the degraded real node equals its
    rejected + expired share (real_node.not_completed_share) within 2
    percentage points for every command; 0 on the healthy nodes; the plan
    node's status="error" share likewise. "Commands not completed, by
    status" shows expired and rejected_queue_full apart, one to one."""
    [ratio] = node_panel("Command error ratio")
    share = real_node.not_completed_share(real_node.parse_mix(DEGRADED_MIX))
    res = node_query(node_pack, ratio.expr, node_pack.nodes["real-degraded"])
    assert {s["metric"]["command"] for s in res} == set(real_node.COMMANDS), res
    assert all(abs(v - share) <= 0.02 for v in Prometheus.values(res)), (share, res)
    # the plan node fails every 4th round: over ~50+ rounds the window's
    # share is 0.25 give or take one round (0.05)
    res = node_query(node_pack, ratio.expr, node_pack.nodes["plan-degraded"])
    assert all(abs(v - PLAN_ERROR_RATIO) <= 0.05 for v in Prometheus.values(res)) and res, res
    for healthy in ("real-healthy", "plan-healthy"):
        res = node_query(node_pack, ratio.expr, node_pack.nodes[healthy])
        assert res and Prometheus.values(res) == [0.0] * len(res), (healthy, res)

    [by_status] = node_panel("Commands not completed, by status")
    res = node_query(node_pack, by_status.expr, node_pack.nodes["real-degraded"])
    rates = {s["metric"]["status"]: float(s["value"][1]) for s in res}
    assert set(rates) == {"expired", "rejected_queue_full"}, res
    assert rates["expired"] == pytest.approx(rates["rejected_queue_full"], rel=0.05), rates
    res = node_query(node_pack, by_status.expr, node_pack.nodes["plan-degraded"])
    assert {s["metric"]["status"] for s in res} == {"error"}, res
    assert node_query(node_pack, by_status.expr, node_pack.nodes["real-healthy"]) == []


@pytest.mark.no_fuse
def test_node_task_panels_show_the_dead_task(node_pack):
    """The task that panicked before the scrape began: 1 panicked run, 0
    runs in the last 15 minutes; its usual interval is its period (300 s,
    rust-dkg-engine's PROVING_PERIOD); the live tasks have runs."""
    dead = node_pack.nodes["real-degraded"]
    [runs] = node_panel("Task runs in the last 15 minutes")
    res = {s["metric"]["task"]: float(s["value"][1]) for s in node_query(node_pack, runs.expr, dead)}
    assert res["proving"] == 0 and res["dial_peers"] > 0 and res["sharding_table_check"] > 0, res
    [panicked] = node_panel("Panicked task runs")
    res = {s["metric"]["task"]: float(s["value"][1]) for s in node_query(node_pack, panicked.expr, dead)}
    assert res == {"proving": 1.0, "dial_peers": 0.0, "sharding_table_check": 0.0}, res
    [interval] = node_panel("Task usual interval")
    res = {s["metric"]["task"]: float(s["value"][1]) for s in node_query(node_pack, interval.expr, dead)}
    assert res["proving"] == pytest.approx(real_node.TASKS["proving"]), res


@pytest.mark.no_fuse
def test_node_template_variables_find_the_nodes(node_pack):
    dash = dashboards()["node-overview.json"]
    expected = {"job": {"node"}, "instance": {n.target for n in node_pack.nodes.values()}}
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        inner = var["query"][len("label_values("):-1]
        selector, label = inner.rsplit(",", 1)
        selector = render(selector.strip(), {v: ".*" for v in expected})
        found = set(node_pack.prom.api(f"label/{label.strip()}/values", **{"match[]": selector}))
        assert expected[var["name"]] <= found, (var["name"], found)


@pytest.mark.no_fuse
def test_node_alert_expressions_on_the_live_nodes(node_pack):
    """Each node alert expression names the degraded nodes and no healthy
    one; NodeTaskStopped stays quiet on a Prometheus that has watched the
    dead task for less than 15 minutes (the promtool cases show it firing);
    Prometheus' own evaluation agrees (pending while ``for`` runs)."""
    rules = alert_rules()
    real, plan = node_pack.nodes["real-degraded"].target, node_pack.nodes["plan-degraded"].target

    def names(alert: str) -> set[tuple[str, ...]]:
        res = node_pack.prom.query(rules[alert]["expr"])
        return {(s["metric"]["instance"], *([s["metric"]["task"]] if "task" in s["metric"] else []))
                for s in res}

    res = node_pack.prom.query(rules["NodeCommandErrorRatioHigh"]["expr"])
    values = {s["metric"]["instance"]: float(s["value"][1]) for s in res}
    assert set(values) == {real, plan}, res
    assert values[real] == pytest.approx(real_node.not_completed_share(real_node.parse_mix(DEGRADED_MIX)),
                                         abs=0.02), values
    assert names("NodeCommandQueueNearlyFull") == {(real,), (plan,)}
    assert names("NodeTaskPanicked") == {(real, "proving"), (plan, "compact"), (plan, "snapshot")}
    assert names("NodeTaskStopped") == set()

    def states() -> dict[tuple[str, str, str], str]:
        return {(a["labels"]["alertname"], a["labels"]["instance"], a["labels"].get("task", "")): a["state"]
                for a in node_pack.prom.api("alerts")["alerts"]}

    want = {("NodeCommandErrorRatioHigh", real, ""): "pending",
            ("NodeCommandQueueNearlyFull", real, ""): "pending",
            ("NodeTaskPanicked", real, "proving"): "firing"}
    deadline = time.monotonic() + 15
    while not want.items() <= states().items():
        assert time.monotonic() < deadline, states()
        time.sleep(0.5)
    groups = node_pack.prom.api("rules")["groups"]
    bad = {r["name"]: r.get("lastError") for g in groups for r in g["rules"] if r["health"] != "ok"}
    assert not bad, bad
