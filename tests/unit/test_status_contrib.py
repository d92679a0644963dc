"""contrib/prometheus and contrib/grafana against the exporter and real promtool.

Alert rules and dashboard queries are text that no Python import checks: a
renamed metric would leave them silently empty. So every metric name in
them must be one the exporter exports (derived from its registry), every
exported family must be shown on the dashboard, the rules must pass
``promtool check rules`` and their unit tests ``promtool test rules``, and
docs/monitoring.md must describe each panel and each alert.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tardis_netadapter.connectivity.metrics import exported_names

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "contrib" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "contrib" / "prometheus" / "tests" / "alerts_test.yml"
DASHBOARD = ROOT / "contrib" / "grafana" / "tardis-netadapter.json"
MONITORING = ROOT / "docs" / "monitoring.md"

#: PromQL words that are not metric names (aggregations' modifiers, operators)
KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects.

    Strings, label matchers ``{...}``, ranges ``[...]`` and grouping lists
    (``by (...)``) are removed; what is left are function names (followed
    by ``(``), keywords, numbers and metric names.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?", text):
        word = match.group(0)
        if match.group(1) or word in KEYWORDS:
            continue
        names.add(word)
    return names


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def family(name: str) -> str:
    """The metric family of a series name (a summary's _sum/_count)."""
    return re.sub(r"_(sum|count)$", "", name)


def test_the_name_extraction_sees_a_wrong_name():
    expr = 'sum by (site) (rate(tna_nope_total{site=~"$site"}[5m])) / tna_drones'
    assert metric_names(expr) == {"tna_nope_total", "tna_drones"}
    assert metric_names('max by (a, b) (x{quantile="0.99"}) > 2 * y') == {"x", "y"}


def test_every_alert_uses_only_exported_metrics():
    exported = exported_names()
    rules = alert_rules()
    assert {r["alert"] for r in rules} == {
        "TnaDroneLost",
        "TnaSiteOutage",
        "TnaBrakeEngaged",
        "TnaHeartbeatsStale",
        "TnaTunnelRestartStorm",
    }
    for rule in rules:
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= exported, (rule["alert"], names - exported)


def test_every_dashboard_query_uses_only_exported_metrics_and_shows_them_all():
    exported = exported_names()
    used = set()
    for expr in dashboard_exprs():
        names = metric_names(expr.replace("$site", ".*"))
        assert names and names <= exported, (expr, names - exported)
        used |= names
    assert {family(n) for n in exported} == {family(n) for n in used}


def test_the_dashboard_is_importable_json_with_described_panels():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"site"}
    for panel in dashboard["panels"]:
        assert panel["description"] and panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"


def test_monitoring_md_describes_every_panel_and_every_alert():
    text = MONITORING.read_text()
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        assert f"**{panel['title']}**" in text, panel["title"]
    for rule in alert_rules():  # a paragraph of its own, with what to do
        found = re.search(rf"^`{rule['alert']}` \(.*?(?=^`Tna|^## )", text, re.M | re.S)
        assert found, rule["alert"]
        assert "What to do:" in found.group(0), rule["alert"]


def promtool_or_skip() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip(
            "promtool is not installed (scripts/install-system-deps: prometheus)"
        )
    return found


def test_promtool_check_rules():
    result = subprocess.run(
        [promtool_or_skip(), "check", "rules", str(ALERTS)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout


def test_promtool_test_rules():
    """Series written for each alert: it fires when it should, not before, not beside."""
    result = subprocess.run(
        [promtool_or_skip(), "test", "rules", str(ALERT_TESTS)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {
        case["alertname"]
        for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert tested == {rule["alert"] for rule in alert_rules()}
