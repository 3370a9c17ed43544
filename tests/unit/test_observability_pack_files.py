"""The pack under observability/, checked offline: dashboards well-formed and
importable into any Grafana, metric names that exist, alert rules complete
and each covered by a firing and a quiet `promtool test rules` case.

What the queries return is checked against a real Prometheus in
tests/integration/test_observability_pack.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from obsctl.instruments import METRICS
from support import synthetic_node
from support.pack import (
    BUILTINS, RULE_TESTS_DIR, alert_rules, dashboards, panel_targets, panels,
    regex_literal, render, rule_files, variables_used,
)

DASHBOARDS = dashboards()

#: file -> the fixed uid operators and provisioning refer to
EXPECTED_UIDS = {"mount-overview.json": "obsctl-mount-overview",
                 "node-overview.json": "obsctl-node-overview"}
#: file -> variables that must exist (DESIGN 6a and the issue)
EXPECTED_VARIABLES = {
    "mount-overview.json": {"datasource", "job", "instance", "bucket", "impl", "mountpoint"},
    "node-overview.json": {"datasource", "job", "instance"},
}
#: the pilot metric set of a node as Prometheus shows it (DESIGN 6a)
NODE_METRICS = {"node_command_total", "node_command_duration_seconds",
                "node_task_runs_total", "node_task_duration_seconds",
                "node_sync_last_success_unix"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and",
                "or", "unless", "offset", "bool", "le", "inf", "nan", "time", "vector"}


def obsctl_prometheus_names() -> set[str]:
    """The series names obsctl's instruments have in Prometheus (see
    obsctl.instruments: counters get ``_total``, histograms their parts)."""
    names = set()
    for name, (kind, _unit, _desc) in METRICS.items():
        if kind in ("counter", "observable_counter"):
            names.add(f"{name}_total")
        elif kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


def metric_names(expr: str) -> set[str]:
    """Identifiers of ``expr`` that name a series: what is left once strings,
    label matchers, grouping label lists, function calls and keywords are
    taken out."""
    no_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    no_matchers = re.sub(r"\{[^}]*\}", "", no_strings)
    no_labels = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", no_matchers)
    out = set()
    for m in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", no_labels):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_WORDS or word.startswith("__"):
            continue
        out.add(word)
    return out


def test_both_dashboards_exist():
    assert set(DASHBOARDS) == set(EXPECTED_UIDS)


@pytest.mark.parametrize("name", sorted(EXPECTED_UIDS))
def test_dashboard_header(name):
    d = DASHBOARDS[name]
    assert d["uid"] == EXPECTED_UIDS[name]
    assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 36
    assert d["title"] and d["time"]["from"]
    # no numeric id: Grafana assigns one on import, a fixed one would clash
    assert d.get("id") is None


@pytest.mark.parametrize("name", sorted(EXPECTED_UIDS))
def test_dashboard_variables(name):
    """A datasource variable of type prometheus; query variables on it with
    All = ``.*`` so job/instance match both scraped and OTLP-fed series."""
    variables = {v["name"]: v for v in DASHBOARDS[name]["templating"]["list"]}
    assert EXPECTED_VARIABLES[name] <= set(variables), sorted(variables)
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for vname, v in variables.items():
        if vname == "datasource":
            continue
        assert v["type"] == "query", vname
        assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, vname
        assert v["includeAll"] and v["allValue"] == ".*", vname
        assert re.fullmatch(r"label_values\((.+, )?\w+\)", v["query"]), v["query"]


@pytest.mark.parametrize("name", sorted(EXPECTED_UIDS))
def test_dashboard_panels_well_formed(name):
    """Unique ids, gridPos inside 24 columns and not overlapping, the
    datasource variable on every panel and target, unique refIds."""
    d = DASHBOARDS[name]
    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids)), ids
    cells: dict[tuple[int, int], str] = {}
    for p in panels(d):
        g = p["gridPos"]
        assert {"h", "w", "x", "y"} <= set(g), p["title"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p.get("description"), f"panel {p['title']!r} has no description"
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), (p["title"], refs)
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"], (p["title"], t["refId"])
            assert t["expr"].strip(), (p["title"], t["refId"])


@pytest.mark.parametrize("name", sorted(EXPECTED_UIDS))
def test_dashboard_variables_defined(name):
    """Every $variable of every expression is a dashboard variable or a
    Grafana built-in; every expression renders."""
    d = DASHBOARDS[name]
    defined = {v["name"] for v in d["templating"]["list"]}
    for t in panel_targets(name, d):
        missing = variables_used(t.expr) - defined - set(BUILTINS)
        assert not missing, f"{t}: undefined variables {missing}"
        rendered = render(t.expr, {v: ".*" for v in defined})
        assert "$" not in rendered, rendered


def test_mount_dashboard_uses_only_obsctl_metrics():
    """No invented metric name: every series named in the mount dashboard is
    an obsctl instrument (src/obsctl/instruments.py) or Prometheus' ``up``."""
    known = obsctl_prometheus_names() | {"up"}
    name = "mount-overview.json"
    for t in panel_targets(name, DASHBOARDS[name]):
        unknown = metric_names(t.expr) - known
        assert not unknown, f"{t}: unknown metrics {unknown}"


def test_mount_dashboard_covers_every_mount_metric():
    name = "mount-overview.json"
    used = set()
    for t in panel_targets(name, DASHBOARDS[name]):
        used |= metric_names(t.expr)
    expected = {n for n in obsctl_prometheus_names() if not n.endswith(("_sum", "_count"))}
    assert expected <= used, f"no panel for {sorted(expected - used)}"


def test_node_dashboard_covers_the_pilot_set():
    name = "node-overview.json"
    used = set()
    for t in panel_targets(name, DASHBOARDS[name]):
        used |= {re.sub(r"_bucket$", "", m) for m in metric_names(t.expr)}
    assert used <= NODE_METRICS, used - NODE_METRICS
    assert used == NODE_METRICS, NODE_METRICS - used


def test_no_syntax_removed_in_prometheus_3():
    """Prometheus 3 removed holt_winters (now double_exponential_smoothing,
    behind a feature flag) and changed classic-histogram ``le`` values to
    normalised floats, so an ``le="1.0"`` style matcher stops matching."""
    exprs = [t.expr for n, d in DASHBOARDS.items() for t in panel_targets(n, d)]
    exprs += [r["expr"] for r in alert_rules().values()]
    for expr in exprs:
        assert "holt_winters" not in expr, expr
        assert not re.search(r'\ble\s*=~?\s*"', expr), expr


def test_render_escapes_like_grafana():
    assert render('x{a=~"$v"}[$__rate_interval]', {"v": regex_literal("/mnt/a.b-c")}) == \
        'x{a=~"/mnt/a\\\\.b\\\\-c"}[1m]'
    with pytest.raises(KeyError, match=r"\$nope"):
        render("x{a=~\"$nope\"}", {})


# -------------------------------------------------------------------- rules


def test_rule_files_exist():
    assert {p.name for p in rule_files()} == {"obsctl-mounts.yml", "obsctl-node.yml"}


EXPECTED_ALERTS = {
    "ObsctlMountDown", "ObsctlMountStaleOrHung", "ObsctlMountStalled",
    "ObsctlMountErrorRatioHigh", "ObsctlDriverRestarting", "ObsctlExporterSilent",
    "NodeCommandErrorRatioHigh", "NodeSyncHeartbeatTooOld",
}


def test_every_alert_has_severity_and_annotations():
    rules = alert_rules()
    assert set(rules) == EXPECTED_ALERTS
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"].strip(), name
        assert len(rule["annotations"]["description"]) > 80, f"{name}: description too short for a runbook"


def test_every_alert_has_a_firing_and_a_quiet_promtool_case():
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in sorted(RULE_TESTS_DIR.glob("*.yml")):
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert not EXPECTED_ALERTS - fires, f"no firing case for {EXPECTED_ALERTS - fires}"
    assert not EXPECTED_ALERTS - quiet, f"no quiet case for {EXPECTED_ALERTS - quiet}"


# -------------------------------------------------------------------- synthetic node


SYNTHETIC_NODE = synthetic_node.__file__


def test_synthetic_node_emits_the_label_contract():
    """The synthetic node's /metrics (real SDK + Prometheus exporter) has
    exactly the pilot set with the labels docs/observability.md documents."""
    from prometheus_client.parser import text_string_to_metric_families

    proc, target = synthetic_node.start("--error-ratio", "0.5", "--failure-ratio", "0.5",
                                        "--interval", "0.05")
    try:
        url = f"http://{target}/metrics"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        time.sleep(0.5)
        text = opener.open(url, timeout=5).read().decode()
    finally:
        proc.terminate()
        proc.wait(10)
    labels: dict[str, set[frozenset]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            own = {k: v for k, v in sample.labels.items()
                   if not k.startswith("otel_scope_") and k != "le"}
            labels.setdefault(sample.name, set()).add(frozenset(own.items()))
    assert {"node_command_total", "node_command_duration_seconds_bucket",
            "node_task_runs_total", "node_task_duration_seconds_bucket",
            "node_sync_last_success_unix"} <= set(labels), sorted(labels)
    assert {dict(s)["status"] for s in labels["node_command_total"]} == {"ok", "error"}
    assert {dict(s)["status"] for s in labels["node_task_runs_total"]} == {"success", "failure"}
    assert all(set(dict(s)) == {"command", "status"} for s in labels["node_command_duration_seconds_bucket"])
    assert all(set(dict(s)) == {"task", "status"} for s in labels["node_task_duration_seconds_bucket"])
    assert labels["node_sync_last_success_unix"] == {frozenset()}


def test_synthetic_node_rejects_a_bad_ratio():
    res = subprocess.run([sys.executable, str(SYNTHETIC_NODE), "--error-ratio", "2"],
                         capture_output=True, text=True, timeout=30, check=False)
    assert res.returncode == 2
    assert "--error-ratio must be between 0 and 1" in res.stderr
