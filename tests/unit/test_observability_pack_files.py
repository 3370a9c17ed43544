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
from support import real_node, synthetic_node
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
#: the metric families of rust-dkg-engine the Node overview reads, as the
#: node serves them (tests/support/real_node.py cites each in the node's source)
NODE_METRICS = {"node_command_total", "node_command_duration_seconds",
                "node_command_execution_delay_seconds", "node_command_queue_depth",
                "node_command_queue_fill_ratio", "node_task_runs_total",
                "node_task_duration_seconds", "node_task_cadence_seconds"}
#: status values a node expression may name: the real node's
#: (real_node.COMMAND_STATUSES; tasks: completed | panicked, src/tasks/periodic/runner.rs:31, 35)
#: and the plan's shape (ok | error, success | failure)
NODE_STATUSES = set(real_node.COMMAND_STATUSES) | {"panicked", "ok", "error", "success", "failure"}
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


def node_exprs() -> list[tuple[str, str]]:
    """(where, expr) of every Node overview target and every node alert."""
    name = "node-overview.json"
    out = [(str(t), t.expr) for t in panel_targets(name, DASHBOARDS[name])]
    out += [(a, r["expr"]) for a, r in alert_rules().items() if a.startswith("Node")]
    return out


def test_node_expressions_use_only_what_the_real_node_serves():
    """No panel or alert on a metric rust-dkg-engine does not emit: every
    series named is one of its families (or a summary's _sum / _count); a
    ``_bucket`` (the plan's histograms) only as the alternative of the same
    family's ``quantile`` series in the same expression. Every family the
    dashboard reads is used."""
    summaries = {"node_command_duration_seconds", "node_command_execution_delay_seconds",
                 "node_task_duration_seconds", "node_task_cadence_seconds"}
    used = set()
    for where, expr in node_exprs():
        for m in metric_names(expr):
            base = re.sub(r"_(bucket|sum|count)$", "", m)
            if m != base:
                assert base in summaries, f"{where}: {m} is not a part of a summary"
            assert base in NODE_METRICS, f"{where}: {m}: the node does not emit it"
            if m.endswith("_bucket"):
                assert re.search(rf'\b{base}\{{[^}}]*quantile="', expr), \
                    f"{where}: {m} without the node's {base}{{quantile=...}} alternative"
            used.add(base)
    assert used == NODE_METRICS, NODE_METRICS - used


def test_node_expressions_name_only_real_status_and_quantile_values():
    """Status values are the node's or the plan's; quantile values are ones
    the exporter writes (real_node.QUANTILES, written as Rust's Display) and
    that Prometheus 3 does not rewrite on ingestion (it normalises ``1`` to
    ``1.0``: only values with a fractional part are safe in both)."""
    written = {real_node.rust_f64(q) for q in real_node.QUANTILES}
    for where, expr in node_exprs():
        for _op, values in re.findall(r'\bstatus\s*(=~|!~|=|!=)\s*"([^"]*)"', expr):
            unknown = set(values.split("|")) - NODE_STATUSES
            assert not unknown, f"{where}: status {unknown} is not a value a node records"
        for value in re.findall(r'\bquantile\s*=\s*"([^"]*)"', expr):
            assert value in written and "." in value, f"{where}: quantile={value!r}"


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
    "NodeCommandErrorRatioHigh", "NodeCommandQueueNearlyFull", "NodeTaskPanicked",
    "NodeTaskStopped",
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


# -------------------------------------------------------------------- node fixtures


SYNTHETIC_NODE = synthetic_node.__file__
REAL_NODE = real_node.__file__


def scrape(target: str) -> tuple[str, str]:
    """(Content-Type, body) of ``http://TARGET/metrics``."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{target}/metrics", timeout=5) as resp:
        return resp.headers.get("Content-Type", ""), resp.read().decode()


def samples_by_name(text: str) -> tuple[dict[str, str], dict[str, list[dict[str, str]]]]:
    """({family: type}, {sample name: [labels ...]}) by prometheus_client's
    parser (which names a counter family without ``_total``; put back here)."""
    from prometheus_client.parser import text_string_to_metric_families

    types: dict[str, str] = {}
    labels: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        types[family.name + ("_total" if family.type == "counter" else "")] = family.type
        for sample in family.samples:
            own = {k: v for k, v in sample.labels.items() if not k.startswith("otel_scope_")}
            labels.setdefault(sample.name, []).append(own)
    return types, labels


def test_synthetic_node_emits_the_plan_shape():
    """The plan-shape node's /metrics (real SDK + Prometheus exporter):
    histograms with ``le``, status ok/error and success/failure, the queue
    gauges, no sync gauge."""
    proc, target = synthetic_node.start("--error-ratio", "0.5", "--failure-ratio", "0.5",
                                        "--interval", "0.05", "--queue-depth", "64")
    try:
        time.sleep(0.5)
        _ctype, text = scrape(target)
    finally:
        proc.terminate()
        proc.wait(10)
    types, labels = samples_by_name(text)
    for family in ("node_command_duration_seconds", "node_command_execution_delay_seconds",
                   "node_task_duration_seconds", "node_task_cadence_seconds"):
        assert types[family] == "histogram", (family, types[family])
        assert all("le" in lb for lb in labels[f"{family}_bucket"]), family
    assert {s["status"] for s in labels["node_command_total"]} == {"ok", "error"}
    assert {s["status"] for s in labels["node_task_runs_total"]} == {"success", "failure"}
    assert all(set(s) == {"command", "status", "le"} for s in labels["node_command_duration_seconds_bucket"])
    assert all(set(s) == {"task", "le"} for s in labels["node_task_cadence_seconds_bucket"])
    assert list(labels["node_command_queue_fill_ratio"]) == [{}]
    assert not [n for n in labels if n.startswith("node_sync")], sorted(labels)


def test_synthetic_node_rejects_a_bad_ratio():
    res = subprocess.run([sys.executable, str(SYNTHETIC_NODE), "--error-ratio", "2"],
                         capture_output=True, text=True, timeout=30, check=False)
    assert res.returncode == 2
    assert "--error-ratio must be between 0 and 1" in res.stderr


def test_real_node_serves_the_exporters_format():
    """The real-node fixture's /metrics as metrics-exporter-prometheus 0.17.2
    writes it (facts cited in tests/support/real_node.py): no ``# HELP``,
    ``# TYPE ... summary`` for the durations with the 7 default quantiles
    after the metric's own labels and _sum/_count, never _bucket;
    Content-Type text/plain; the node's status values and label names."""
    proc, target = real_node.start("--mix", "completed=3,expired=1,rejected_queue_full=1",
                                   "--panicked-task", "proving", "--interval", "0.05")
    try:
        time.sleep(0.3)
        ctype, text = scrape(target)
    finally:
        proc.terminate()
        proc.wait(10)
    assert ctype == "text/plain"
    assert "# HELP" not in text and "_bucket" not in text
    types, labels = samples_by_name(text)
    durations = ("node_command_duration_seconds", "node_command_execution_delay_seconds",
                 "node_task_duration_seconds", "node_task_cadence_seconds")
    assert {f: types[f] for f in durations} == {f: "summary" for f in durations}
    assert {types["node_command_total"], types["node_task_runs_total"]} == {"counter"}
    assert {types["node_command_queue_depth"], types["node_command_queue_fill_ratio"]} == {"gauge"}
    assert set(types) == NODE_METRICS, sorted(types)
    for family in durations:
        assert {s["quantile"] for s in labels[family]} == {"0", "0.5", "0.9", "0.95", "0.99", "0.999", "1"}
        assert f"{family}_sum" in labels and f"{family}_count" in labels
    assert {s["status"] for s in labels["node_command_total"]} == {"completed", "expired", "rejected_queue_full"}
    # a rejected command records only node_command_total (scheduler.rs)
    assert {s["status"] for s in labels["node_command_duration_seconds_count"]} == {"completed", "expired"}
    assert {s["status"] for s in labels["node_task_runs_total"]} == {"completed", "panicked"}
    assert all(set(s) == {"task"} for s in labels["node_task_cadence_seconds_count"])
    # label order as the counter!/histogram! call gives it, quantile last
    assert re.search(r'^node_command_total\{command="\w+",status="\w+"\} \d+$', text, re.M)
    assert re.search(r'^node_task_duration_seconds\{task="\w+",status="\w+",quantile="0\.99"\} ', text, re.M)
    assert re.search(r"^node_command_queue_depth 0$|^node_command_queue_depth 3$", text, re.M)


def test_rust_f64_display():
    assert [real_node.rust_f64(v) for v in (0.0, 1.0, 0.5, 0.999, 1e-05, 256.0, 0.1 + 0.2)] == \
        ["0", "1", "0.5", "0.999", "0.00001", "256", "0.30000000000000004"]


@pytest.mark.parametrize("args, message", [
    (["--mix", "error=1"], "--mix: 'error=1' is not STATUS=N"),
    (["--mix", "completed=x"], "count of 'completed' must be a whole number"),
    (["--mix", "completed=0"], "at least one command per round"),
    (["--queue-depth", "300"], "--queue-depth must be between 0 and 256"),
])
def test_real_node_rejects_bad_arguments(args, message):
    res = subprocess.run([sys.executable, REAL_NODE, *args], capture_output=True, text=True,
                         timeout=30, check=False)
    assert res.returncode == 2 and message in res.stderr, res.stderr


def test_not_completed_share():
    assert real_node.not_completed_share(real_node.parse_mix("completed=16,expired=2,rejected_queue_full=2")) == \
        pytest.approx(0.2)
    assert real_node.not_completed_share(real_node.parse_mix("completed=20")) == 0
