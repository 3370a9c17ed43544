"""docs/metrics.md, "The metrics", names every instrument of ``obsctl.instruments.METRICS``
as Prometheus shows it, and no metric that is not one."""

from __future__ import annotations

import re
from pathlib import Path

from obsctl.instruments import METRICS

DOC = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text(encoding="utf-8")


def _prometheus_name(name: str, kind: str) -> str:
    """Counters gain ``_total``, histograms are shown by their ``_bucket`` series
    (Prometheus 3's OTLP translation; docs/observability.md, "Metric names")."""
    if kind in ("counter", "observable_counter"):
        return name + "_total"
    if kind == "histogram":
        return name + "_bucket"
    return name


def test_the_metrics_table_is_the_instruments_table():
    table = DOC.split("## The metrics", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `obsctl_")]
    listed = {name for row in rows for name in re.findall(r"`(obsctl_\w+)`", row.split("|")[1])}
    expected = {_prometheus_name(name, kind) for name, (kind, _unit, _desc) in METRICS.items()}
    assert listed == expected, f"missing: {sorted(expected - listed)}; not a metric: {sorted(listed - expected)}"
