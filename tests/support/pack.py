"""The observability pack under observability/: paths, dashboards, rules.

One place that knows where the pack lives and how a Grafana dashboard's
PromQL becomes a query Prometheus can run:

* :func:`dashboards` / :func:`panel_targets` - the dashboard JSON files and
  every (panel, target) with its expression;
* :func:`render` - substitute template variables the way Grafana does
  (``$name`` / ``${name}``; ``$__rate_interval`` -> a fixed window);
* :func:`alert_rules` - every alert rule of every rule file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

REPO = Path(__file__).resolve().parents[2]
PACK = REPO / "observability"
DASHBOARDS_DIR = PACK / "grafana" / "dashboards"
RULES_DIR = PACK / "prometheus" / "rules"
RULE_TESTS_DIR = PACK / "prometheus" / "tests"

#: Grafana's built-in variables that may appear in an expression, and what
#: the tests put in their place. $__rate_interval is Grafana's
#: max(4 x scrape interval, step + scrape interval); with the tests' 1 s
#: scrape, one minute covers it and keeps rate() windows full of samples.
BUILTINS: dict[str, str] = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}

_VAR = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


def dashboards() -> dict[str, dict[str, Any]]:
    """``{file name: parsed dashboard}`` for every JSON file of the pack."""
    return {p.name: json.loads(p.read_text(encoding="utf-8"))
            for p in sorted(DASHBOARDS_DIR.glob("*.json"))}


@dataclass(frozen=True)
class Target:
    """One query of one panel."""

    dashboard: str
    panel: str
    ref_id: str
    expr: str

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel!r} / {self.ref_id}"


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def panel_targets(name: str, dashboard: dict[str, Any]) -> list[Target]:
    """Every target with an ``expr`` of every panel of ``dashboard``."""
    return [Target(name, p.get("title", ""), t.get("refId", ""), t["expr"])
            for p in panels(dashboard) for t in p.get("targets", []) if "expr" in t]


def variables_used(expr: str) -> set[str]:
    """Names of the template variables ``expr`` references."""
    return {a or b for a, b in _VAR.findall(expr)}


def render(expr: str, values: dict[str, str]) -> str:
    """``expr`` with every variable replaced by ``values`` or :data:`BUILTINS`.

    ``values`` holds what Grafana would interpolate (for a regex matcher:
    a regex such as ``.*`` or an escaped literal).

    Raises:
        KeyError: a variable with no value (names it).
    """
    table = {**BUILTINS, **values}

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in table:
            raise KeyError(f"no value for ${name} in {expr!r}")
        return table[name]

    return _VAR.sub(sub, expr)


def regex_literal(value: str) -> str:
    """``value`` as Grafana puts a single selected value into ``=~"$var"``:
    regex-escaped, then escaped for a PromQL double-quoted string."""
    return re.escape(value).replace("\\", "\\\\")


def rule_files() -> list[Path]:
    """The rule files of the pack."""
    return sorted(RULES_DIR.glob("*.yml"))


def alert_rules() -> dict[str, dict[str, Any]]:
    """``{alert name: rule}`` over every group of every rule file."""
    out: dict[str, dict[str, Any]] = {}
    for path in rule_files():
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    out[rule["alert"]] = rule
    return out
