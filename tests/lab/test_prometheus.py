"""Debian's real Prometheus scrapes a running adapter's exporter in the lab.

A lab of this module's own (``pml1``, one worker) runs the real ``cobald``
daemon with configs/lab.yml on its control host, with
``Network.monitoring.metrics_port`` set and ``metrics_address`` the control
host's public address, as an operator whose Prometheus runs on another host
would set it. Debian's ``prometheus`` runs in the lab's ``outside``
namespace (another host on the public net), scrapes the exporter across the
lab's network every second, and loads contrib/prometheus/alerts.yml. Every
query is sent with curl inside that namespace: nothing in the root namespace
talks to a lab address.

Shown: the endpoint is up from the daemon's start, before the site has a
drone (Prometheus' first samples count no drone); once a drone is connected
through its chain, every expression of contrib/grafana's dashboard evaluates
without error through the query API and returns series; the dashboard's
variable query finds the site; every alert rule evaluates with health ``ok``.
``TNA_KEEP_LOGS=DIR`` keeps the daemon's log and ``measured.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tardis_netadapter_lab import Lab, teardown
from tardis_netadapter_lab import layout as L
from tardis_netadapter_lab.daemon import CobaldDaemon, slurm_jobs, write_config

pytestmark = [pytest.mark.lab, pytest.mark.slow]

#: this module's lab (OPS-MON's lab name); one worker is enough for one drone
LAB_NAME = "pml1"
SITE = "NetLab"
METRICS_PORT = 9464
#: Prometheus' own listener, on the outside namespace's loopback only
PROMETHEUS = "127.0.0.1:9090"
ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "contrib" / "grafana" / "tardis-netadapter.json"
ALERTS = ROOT / "contrib" / "prometheus" / "alerts.yml"
#: configs/lab.yml's Network with the exporter on the control host's public
#: address, and short monitoring timings so a drone is judged soon
NETWORK = (
    "    Network:\n"
    "      monitoring:\n"
    "        heartbeat_interval: 5\n"
    f"        metrics_port: {METRICS_PORT}\n"
    f"        metrics_address: {L.CONTROL_PUBLIC}\n"
    "      mode: socks\n"
)
#: one drone is enough: COBalD's demand at most 1
ONE_DRONE = {"    maximum: 2\n": "    maximum: 1\n"}


def unavailable() -> str:
    if os.geteuid() != 0:
        return "needs root (the lab's namespaces and daemons)"
    missing = [
        tool
        for tool in ("prometheus", "sshd", "slurmctld", "danted", "curl")
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        is None
    ]
    return (
        f"missing {', '.join(missing)} (scripts/install-system-deps)" if missing else ""
    )


@pytest.fixture(scope="module")
def pml() -> Iterator[Lab]:
    """The module's own lab, always torn down."""
    reason = unavailable()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    teardown(LAB_NAME)  # leftovers of a crashed run of this module
    lab = Lab(name=LAB_NAME, workers=1, idle_timeout=30)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def api(lab: Lab, path: str, **params: str) -> dict[str, Any]:
    """GET Prometheus' HTTP API from inside the outside namespace (curl)."""
    argv = ["curl", "-sS", "--max-time", "20", "-G", f"http://{PROMETHEUS}{path}"]
    for key, value in params.items():
        argv += ["--data-urlencode", f"{key}={value}"]
    result = lab.run("outside", argv, timeout=30)
    if result.returncode != 0:
        return {"status": "unreachable", "error": result.stderr.strip()}
    try:
        return json.loads(result.stdout)
    except ValueError:
        return {"status": "garbage", "error": result.stdout[-300:]}


def query(lab: Lab, expr: str) -> list[dict[str, Any]]:
    answer = api(lab, "/api/v1/query", query=expr)
    assert answer.get("status") == "success", (expr, answer)
    assert not answer.get("warnings"), (expr, answer["warnings"])
    return answer["data"]["result"]


def wait_for(what: str, check: Callable[[], Any], timeout: float, explain) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(1)
    pytest.fail(f"{what} not within {timeout:.0f} s\n{explain()}", pytrace=False)


def prometheus_config(directory: Path) -> Path:
    config = directory / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  evaluation_interval: 1s\n"
        "rule_files:\n"
        f"  - {ALERTS}\n"
        "scrape_configs:\n"
        "  - job_name: tardis-netadapter\n"
        "    static_configs:\n"
        f"      - targets: ['{L.CONTROL_PUBLIC}:{METRICS_PORT}']\n"
    )
    return config


def dashboard_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"].replace("$site", SITE))
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]


def test_prometheus_scrapes_the_adapter_and_every_dashboard_query_works(
    pml: Lab, tmp_path: Path
):
    lab = pml
    config = write_config(
        lab,
        tmp_path,
        replace={"    Network:\n      mode: socks\n": NETWORK, **ONE_DRONE},
    )
    cobald = CobaldDaemon(lab, tmp_path, config)
    data = tmp_path / "prometheus-data"
    data.mkdir()
    prometheus_log = tmp_path / "prometheus.log"
    measured: dict[str, Any] = {}
    prometheus = None

    def explain() -> str:
        tail = prometheus_log.read_text()[-1500:] if prometheus_log.exists() else ""
        return (
            f"slurm={slurm_jobs(lab)}\ntargets={api(lab, '/api/v1/targets')}\n"
            f"--- prometheus.log (tail)\n{tail}\n--- cobald.log (tail)\n"
            f"{cobald.log_tail()}"
        )

    with open(prometheus_log, "w") as log:
        prometheus = lab.popen(
            "outside",
            [
                shutil.which("prometheus") or "/usr/bin/prometheus",
                f"--config.file={prometheus_config(tmp_path)}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address={PROMETHEUS}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            "Prometheus' API",
            lambda: api(lab, "/api/v1/status/buildinfo").get("status") == "success",
            60,
            explain,
        )
        started = time.monotonic()
        cobald.start()

        # 1. the exporter is up from the daemon's start, before any drone
        def target_up() -> bool:
            targets = (
                api(lab, "/api/v1/targets").get("data", {}).get("activeTargets", [])
            )
            return any(t.get("health") == "up" for t in targets)

        wait_for("the exporter scraped (target up)", target_up, 90, explain)
        measured["exporter_up_after_s"] = round(time.monotonic() - started, 1)
        first = wait_for(
            "a first sample of tna_drones",
            lambda: query(lab, f'sum(tna_drones{{site="{SITE}"}})'),
            30,
            explain,
        )
        measured["drones_at_first_scrape"] = float(first[0]["value"][1])
        # the smallest count ever scraped: 0, up with no drone. Waited for: a
        # subquery's steps are whole seconds, so right after the first scrape
        # no step may have a sample yet and the answer is empty
        earliest = wait_for(
            "the subquery over the first samples",
            lambda: query(
                lab, f'min_over_time(sum(tna_drones{{site="{SITE}"}})[10m:1s])'
            ),
            10,
            explain,
        )
        assert float(earliest[0]["value"][1]) == 0.0, explain()  # up with no drone
        assert query(lab, f'tna_site_outage{{site="{SITE}",stage="login"}}'), explain()

        # 2. a drone connected through its chain: probes, latencies, heartbeats
        wait_for(
            "a connected drone in the scraped data",
            lambda: query(lab, f'tna_drones{{site="{SITE}",verdict="connected"}} >= 1'),
            300,
            explain,
        )
        measured["connected_after_s"] = round(time.monotonic() - started, 1)
        time.sleep(15)  # samples for rate() and increase() windows

        # 3. every dashboard expression, through the query API
        results = {}
        for title, expr in dashboard_exprs():
            series = query(lab, expr)
            results[expr] = len(series)
            assert series, f"{title}: {expr} returned no series\n{explain()}"
        measured["dashboard_series"] = results
        names = api(lab, "/api/v1/label/site/values", **{"match[]": "tna_drones"})
        assert SITE in names.get("data", []), names  # the dashboard's variable

        # 4. the alert rules, loaded by the real Prometheus, evaluate cleanly
        groups = api(lab, "/api/v1/rules").get("data", {}).get("groups", [])
        rules = [rule for group in groups for rule in group["rules"]]
        assert len(rules) == 5, groups
        for rule in rules:
            assert rule["health"] == "ok", rule
        measured["alerts_firing"] = [
            rule["name"] for rule in rules if rule.get("state") == "firing"
        ]
        assert cobald.alive, explain()
    finally:
        if prometheus is not None and prometheus.poll() is None:
            prometheus.terminate()  # only the process this test started
            try:
                prometheus.wait(15)
            except subprocess.TimeoutExpired:
                prometheus.kill()
                prometheus.wait(5)
        cobald.stop()
        keep = os.environ.get("TNA_KEEP_LOGS")
        if keep:
            target = Path(keep)
            target.mkdir(parents=True, exist_ok=True)
            (target / "measured.json").write_text(json.dumps(measured, indent=2))
            for name in ("cobald.log", "prometheus.log"):
                if (tmp_path / name).exists():
                    shutil.copy(tmp_path / name, target / name)
        print(json.dumps(measured, indent=2))
