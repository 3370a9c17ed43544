"""The pack under observability/ against real components.

* `promtool check rules` and `promtool test rules` (Debian's promtool);
* a real Prometheus (Debian's /usr/bin/prometheus, 1 s scrape and rule
  evaluation, the pack's rule files loaded) scraping two real obsctl mounts
  of a loopback moto S3 server (rclone and s3fs, pull-only: bind_address on
  127.0.0.1, no OTLP) and two synthetic nodes (tests/support/synthetic_node.py:
  the OpenTelemetry SDK and its Prometheus exporter), one healthy and one
  with 25% failing commands and a sync stuck an hour ago;
* every panel expression of both dashboards, with the template variables
  replaced by the values Grafana would put there, returns data; every
  template variable query finds the real label values; every alert rule is
  loaded and evaluates without error, and each alert expression returns what
  the situation says: the degraded node's alerts, the s3fs driver that the
  test killed (restart), the rclone mount whose driver the test stopped
  (hung: mount down, stale or hung), the obsctl that the test stopped
  (exporter silent).

The tests of this module share one set-up (module fixture ``pack``) and run
in file order: the last two change the world (SIGSTOP / SIGTERM).
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
from support import synthetic_node
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
class Node:
    name: str
    target: str
    proc: subprocess.Popen

    def values(self) -> dict[str, str]:
        return {"job": regex_literal("node"), "instance": regex_literal(self.target)}


@dataclass
class Pack:
    prom: Prometheus
    s3: Any
    env: dict[str, str]
    mounts: dict[str, Mount] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)


def start_node(name: str, *args: str) -> Node:
    proc, target = synthetic_node.start("--instance-id", name, *args)
    return Node(name, target, proc)


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
    nodes: dict[str, Node] = {}
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
        nodes["healthy"] = start_node("node-healthy", "--error-ratio", "0")
        nodes["degraded"] = start_node("node-degraded", "--error-ratio", "0.25", "--sync-stuck")
        prom = Prometheus([m.target for m in mounts.values()], job="obsctl",
                          extra_jobs={"node": [n.target for n in nodes.values()]},
                          rule_files=rule_files()).start()
        p = Pack(prom, s3_server, env, mounts, nodes)
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
        for n in nodes.values():
            n.proc.terminate()
            try:
                n.proc.wait(10)
            except subprocess.TimeoutExpired:
                n.proc.kill()
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
    """Each expression, with the variables set to one real mount (node), runs
    on the real Prometheus and returns a non-NaN value for at least one of
    them (FUSE latency comes from rclone only, request latency from s3fs
    only: docs/metrics.md)."""
    workload(pack, "panels")
    problems = []
    for name, dash in dashboards().items():
        subjects = pack.nodes.values() if name == "node-overview.json" else pack.mounts.values()
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
        "node-overview.json": {"job": {"node"}, "instance": {n.target for n in pack.nodes.values()}},
    }
    for name, dash in dashboards().items():
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
    """Healthy mounts: no mount alert; the killed s3fs driver: restarting;
    the degraded node: error ratio and heartbeat, the healthy one neither."""
    s3fs, rclone = pack.mounts["s3fs"], pack.mounts["rclone"]
    degraded = pack.nodes["degraded"].target
    for alert in ("ObsctlMountDown", "ObsctlMountStaleOrHung", "ObsctlMountStalled",
                  "ObsctlExporterSilent"):
        assert alert_result(pack, alert) == [], alert
    restarting = alert_result(pack, "ObsctlDriverRestarting")
    assert {(s["metric"]["bucket"], s["metric"]["impl"]) for s in restarting} == {(s3fs.bucket, "s3fs")}
    assert rclone.bucket not in str(restarting)
    pack.prom.query(alert_rules()["ObsctlMountErrorRatioHigh"]["expr"])  # valid; value depends on the driver

    res = pack.prom.wait_for_query(alert_rules()["NodeCommandErrorRatioHigh"]["expr"], timeout=20)
    assert [s["metric"]["instance"] for s in res] == [degraded], res
    assert 0.15 < Prometheus.values(res)[0] < 0.35, res  # 1 command in 4 fails
    res = alert_result(pack, "NodeSyncHeartbeatTooOld")
    assert [s["metric"]["instance"] for s in res] == [degraded], res
    assert 3500 < Prometheus.values(res)[0] < 4000, res  # stuck 3600 s before its start

    # Prometheus' own rule evaluation agrees: pending (their `for` has not
    # elapsed) or firing (no `for`)
    def states() -> dict[tuple[str, str], str]:
        return {(a["labels"]["alertname"], a["labels"].get("instance", "")): a["state"]
                for a in pack.prom.api("alerts")["alerts"]}

    deadline = time.monotonic() + 15
    want = {("NodeCommandErrorRatioHigh", degraded): "pending",
            ("NodeSyncHeartbeatTooOld", degraded): "pending",
            ("ObsctlDriverRestarting", s3fs.target): "firing"}
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
