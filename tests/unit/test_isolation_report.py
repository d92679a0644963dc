"""The heartbeat's ``isolation`` object (issue 12): parsed, shown by status, logged once.

A drone reports how its payload's traffic is captured: a private network
namespace (``ns``), LD_PRELOAD (``preload``), or LD_PRELOAD because the
namespace was unavailable (``preload!``, with the reason). The record comes
from a shared filesystem the adapter does not control, so every field is
parsed on its own and garbage never raises.
"""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any, Optional

import pytest
from fakelogin import CONFIG, record, write_heartbeat
from tardis.interfaces.siteadapter import ResourceStatus

from tardis_netadapter import cli
from tardis_netadapter.connectivity.collect import BEGIN, END, parse_collection
from tardis_netadapter.connectivity.heartbeat import (
    Heartbeat,
    Isolation,
    from_dict,
    parse_record,
)
from tardis_netadapter.connectivity.monitor import SiteMonitor
from tardis_netadapter.connectivity.report import make_row, render_table, to_json
from tardis_netadapter.connectivity.verdict import Judgement, Timing, Verdict

TIMING = Timing(interval=30, grace=120, connect_deadline=600)

#: the three shapes of decision 7 (issue 12 brief), as the watchdog writes them
NAMESPACE = {
    "method": "namespace",
    "tool": "pasta",
    "reason": None,
    "leaks_blocked": 3,
}
PRELOAD = {
    "method": "preload",
    "tool": "proxychains",
    "reason": None,
    "leaks_blocked": None,
}
FALLBACK = {
    "method": "preload",
    "tool": "proxychains",
    "reason": "user namespaces disabled (max_user_namespaces=0)",
    "leaks_blocked": None,
}
LOGGER = "cobald.runtime.tardis_netadapter.connectivity"


def isolation_of(value: Any) -> Optional[Isolation]:
    """The parsed isolation of a record carrying ``value`` (absent: the key left out)."""
    data = record("netlab-aaa", 1000.0)
    if value is not ...:
        data["isolation"] = value
    heartbeat = parse_record(json.dumps(data))
    assert heartbeat is not None, "a bad isolation must not drop the whole record"
    return heartbeat.isolation


# -- parsing -------------------------------------------------------------------


def test_the_three_shapes_parse_and_label():
    ns = isolation_of(NAMESPACE)
    assert ns == Isolation("namespace", "pasta", None, 3)
    assert (ns.label, ns.fallback) == ("ns", False)
    preload = isolation_of(PRELOAD)
    assert preload == Isolation("preload", "proxychains", None, None)
    assert (preload.label, preload.fallback) == ("preload", False)
    fallback = isolation_of(FALLBACK)
    assert fallback.reason == FALLBACK["reason"]
    assert (fallback.label, fallback.fallback) == ("preload!", True)


@pytest.mark.parametrize(
    "value", [..., None, "namespace", 3, ["namespace"], {}, {"other": 1}]
)
def test_absent_or_garbage_isolation_is_none(value):
    assert isolation_of(value) is None


def test_a_record_without_isolation_from_an_older_drone_still_parses():
    heartbeat = from_dict(record("netlab-aaa", 1000.0))
    assert heartbeat is not None and heartbeat.isolation is None
    assert Heartbeat("d", 1.0).isolation is None


@pytest.mark.parametrize(
    "field, value",
    [
        ("method", 7),
        ("method", ["namespace"]),
        ("method", "   "),
        ("tool", {"x": 1}),
        ("tool", False),
        ("reason", 42),
        ("leaks_blocked", "3"),
        ("leaks_blocked", True),
        ("leaks_blocked", -1),
        ("leaks_blocked", float("nan")),
        ("leaks_blocked", 1e30),
    ],
)
def test_a_wrong_type_empties_that_field_only(field, value):
    isolation = isolation_of({**NAMESPACE, field: value})
    assert isolation is not None
    assert getattr(isolation, field) is None
    kept = {k: v for k, v in NAMESPACE.items() if k != field and v is not None}
    assert {k: getattr(isolation, k) for k in kept} == kept


def test_empty_reason_is_no_fallback():
    """ns/isolation's third field is empty unless the drone fell back."""
    isolation = isolation_of({**PRELOAD, "reason": ""})
    assert isolation.reason is None and isolation.label == "preload"


def test_long_and_unprintable_text_is_cut_and_cleaned():
    isolation = isolation_of(
        {
            "method": "m" * 100,
            "tool": "t" * 100,
            "reason": "line one\nline\ttwo \x1b[31m" + "r" * 1000,
            "leaks_blocked": 2.0,
        }
    )
    assert len(isolation.method) == 16 and len(isolation.tool) == 32
    assert len(isolation.reason) == 300
    assert isolation.reason.startswith("line one line two ?[31m")
    assert isolation.leaks_blocked == 2 and isinstance(isolation.leaks_blocked, int)
    # an unknown method is shown as written (a newer drone), not hidden
    assert isolation.label == "m" * 16


# -- status: table and JSON ---------------------------------------------------------


def row_for(isolation: Any, uuid: str = "netlab-aaa"):
    data = record(uuid, 1000.0, host="wn7")
    if isolation is not ...:
        data["isolation"] = isolation
    heartbeat = parse_record(json.dumps(data))
    judgement = Judgement(Verdict.CONNECTED, "probes answered", None, 1.0, 8.5)
    return make_row(uuid, "11", "RUNNING", judgement, heartbeat)


def columns(text: str) -> list[dict[str, str]]:
    """The ISOLATION and LEAKS cells of each drone line, by header position."""
    lines = text.splitlines()
    start = lines[0].index("ISOLATION")
    leaks = lines[0].index("LEAKS")
    end = lines[0].index("VPN")  # the next column (mode vpn's)
    return [
        {
            "isolation": line[start:leaks].strip(),
            "leaks": line[leaks:end].strip(),
        }
        for line in lines[1:-1]
    ]


def test_status_table_shows_isolation_and_leaks():
    rows = [
        row_for(NAMESPACE, "netlab-aaa"),
        row_for(PRELOAD, "netlab-bbb"),
        row_for(FALLBACK, "netlab-ccc"),
        row_for(..., "netlab-ddd"),
        row_for({**NAMESPACE, "leaks_blocked": 0}, "netlab-eee"),
    ]
    assert columns(render_table(rows, "NetLab")) == [
        {"isolation": "ns", "leaks": "3"},
        {"isolation": "preload", "leaks": "-"},
        {"isolation": "preload!", "leaks": "-"},
        {"isolation": "-", "leaks": "-"},
        {"isolation": "ns", "leaks": "0"},
    ]


def test_status_json_carries_the_isolation_object():
    rows = [row_for(NAMESPACE), row_for(FALLBACK, "netlab-bbb"), row_for(...)]
    drones = json.loads(to_json(rows, "NetLab", 1000.0))["drones"]
    assert drones[0]["isolation"] == NAMESPACE
    assert drones[1]["isolation"] == FALLBACK
    assert drones[2]["isolation"] is None
    # additive: the keys scripts already read are all still there
    assert {"uuid", "verdict", "path_error", "slurm_state"} <= set(drones[0])


def test_status_command_end_to_end(login, capsys, monkeypatch):
    now = time.time()
    login["jobs"].write_text(
        "21|RUNNING|netlab-aaa|10:00\n22|RUNNING|netlab-bbb|10:00\n"
    )
    write_heartbeat(login, record("netlab-aaa", now - 3, isolation=NAMESPACE))
    write_heartbeat(login, record("netlab-bbb", now - 3, isolation=FALLBACK))
    config = login["tmp"] / "cobald.yml"
    config.write_text(CONFIG.format(hb=login["hb"]))
    monkeypatch.setenv("PATH", login["env"]["PATH"])
    brake = ["--brake-state", str(login["tmp"] / "no-brake.json")]
    assert cli.main(["status", str(config), "--json", *brake]) == 0
    drones = {d["uuid"]: d for d in json.loads(capsys.readouterr().out)["drones"]}
    assert drones["netlab-aaa"]["isolation"] == NAMESPACE
    assert drones["netlab-bbb"]["isolation"]["reason"] == FALLBACK["reason"]
    assert cli.main(["status", str(config), *brake]) == 0
    out = capsys.readouterr().out
    assert columns(out) == [
        {"isolation": "ns", "leaks": "3"},
        {"isolation": "preload!", "leaks": "-"},
    ]


# -- the adapter's log: once per drone -------------------------------------------


def observe(monitor: SiteMonitor, site_time: float, records: dict[str, Any]) -> None:
    """One poll cycle: every drone in ``records`` running, with that isolation."""
    jobs, lines = {}, []
    for i, (uuid, isolation) in enumerate(records.items()):
        jobs[str(i)] = SimpleNamespace(name=uuid, status=ResourceStatus.Running)
        data = record(uuid, site_time - 1, host="wn7")
        if isolation is not ...:
            data["isolation"] = isolation
        lines.append(json.dumps(data))
    collection = parse_collection(
        "\n".join([f"{BEGIN} {site_time}", *lines, END]) + "\n"
    )
    monitor.observe(SimpleNamespace(jobs=jobs, extras={"heartbeats": collection}))


def fallback_lines(caplog) -> list[tuple[str, str]]:
    return [
        (r.levelname, r.getMessage())
        for r in caplog.records
        if "falls back" in r.getMessage()
    ]


def test_fallback_is_logged_once_per_drone(caplog):
    caplog.set_level("INFO", logger=LOGGER)
    monitor = SiteMonitor("~/hb", TIMING, site="NetLab")
    drones = {"netlab-aaa": FALLBACK, "netlab-bbb": NAMESPACE, "netlab-ccc": PRELOAD}
    for cycle in range(4):
        observe(monitor, 1000 + 30 * cycle, drones)
    expected = (
        "WARNING",
        "NetLab: drone netlab-aaa: namespace capture unavailable on wn7 "
        "(user namespaces disabled (max_user_namespaces=0)); "
        "capture falls back to preload",
    )
    assert fallback_lines(caplog) == [expected]
    # a second drone falling back later is logged for itself, once
    drones["netlab-ddd"] = FALLBACK
    observe(monitor, 1200, drones)
    observe(monitor, 1230, drones)
    assert [m for _, m in fallback_lines(caplog)][1].startswith(
        "NetLab: drone netlab-ddd: namespace capture unavailable"
    )
    assert len(fallback_lines(caplog)) == 2


def test_a_forgotten_drone_is_forgotten_here_too(caplog):
    caplog.set_level("INFO", logger=LOGGER)
    monitor = SiteMonitor("~/hb", TIMING, site="NetLab")
    observe(monitor, 1000, {"netlab-aaa": FALLBACK})
    assert monitor.fallbacks_logged == {"netlab-aaa"}
    monitor.forget(["netlab-aaa"])
    assert monitor.fallbacks_logged == set()
    # the uuid reappearing (a resubmission reusing it) is a new drone: said again
    observe(monitor, 1030, {"netlab-aaa": FALLBACK})
    assert len(fallback_lines(caplog)) == 2


def test_status_monitor_does_not_log_and_no_fallback_no_log(caplog):
    caplog.set_level("INFO", logger=LOGGER)
    quiet = SiteMonitor("~/hb", TIMING)  # as `status` builds it: no site
    observe(quiet, 1000, {"netlab-aaa": FALLBACK})
    adapter = SiteMonitor("~/hb", TIMING, site="NetLab")
    observe(adapter, 1000, {"netlab-bbb": PRELOAD, "netlab-ccc": ..., "d-x": {}})
    assert fallback_lines(caplog) == []
