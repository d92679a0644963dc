"""SiteMonitor through the real SitePoller and a shell, collector view, metrics, status."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from types import SimpleNamespace

import pytest
from aioprometheus import Registry, render
from fakelogin import CONFIG, ShellExecutor, record, write_heartbeat
from tardis.interfaces.siteadapter import ResourceStatus

from tardis_netadapter import cli
from tardis_netadapter.batch import SlurmDriver
from tardis_netadapter.batch.poller import SitePoller
from tardis_netadapter.connectivity.collect import (
    BEGIN,
    END,
    parse_collection,
)
from tardis_netadapter.connectivity.collector_view import (
    collector_uuids,
    uuids_from_ads,
)
from tardis_netadapter.connectivity.metrics import ConnectivityMetrics
from tardis_netadapter.connectivity.monitor import SiteMonitor
from tardis_netadapter.connectivity.report import (
    COLUMNS,
    StatusRow,
    make_row,
    render_table,
    to_json,
)
from tardis_netadapter.connectivity.startd_cron import environment, startd_cron_knobs
from tardis_netadapter.connectivity.verdict import Judgement, Timing, Verdict

TIMING = Timing(interval=30, grace=120, connect_deadline=600)


def test_one_executor_call_gives_squeue_heartbeats_and_verdicts(login):
    now = time.time()
    login["jobs"].write_text(
        "11|RUNNING|netlab-aaa|1:00:00\n"
        "12|RUNNING|netlab-bbb|1:00:00\n"
        "13|RUNNING|netlab-ccc|0:30\n"
        "14|RUNNING|netlab-ddd|1:00:00\n"
        "15|PENDING|netlab-eee|0:00\n"
    )
    write_heartbeat(login, record("netlab-aaa", now - 5))
    write_heartbeat(
        login,
        record(
            "netlab-bbb", now - 5, ok=False, last_ok=now - 500, failing_since=now - 490
        ),
    )
    write_heartbeat(login, record("netlab-gone", now - 9999))
    executor = ShellExecutor(login["env"])
    monitor = SiteMonitor("~/hb", TIMING)
    poller = SitePoller(SlurmDriver(), executor, probes=[monitor.probe], name="NetLab")
    snapshot = asyncio.run(poller.refresh())
    assert executor.calls == 1
    assert sorted(snapshot.jobs) == ["11", "12", "13", "14", "15"]
    judgements = monitor.observe(snapshot)
    verdicts = {uuid: j.verdict for uuid, j in judgements.items()}
    assert verdicts == {
        "netlab-aaa": Verdict.CONNECTED,
        "netlab-bbb": Verdict.LOST,
        "netlab-ccc": Verdict.CONNECTING,  # 30 s running, no heartbeat yet
        "netlab-ddd": Verdict.NEVER_CONNECTED,  # an hour running, never a heartbeat
        "netlab-eee": Verdict.PENDING,
    }
    assert monitor.terminal() == ["netlab-bbb", "netlab-ddd"]
    assert monitor.judgement("netlab-aaa").latency_ms == 8.5
    assert monitor.observe(snapshot) is monitor.judgements  # same snapshot: no work
    command = monitor.forget(["netlab-gone", "netlab-bbb"])
    subprocess.run(["/bin/sh", "-c", command], env=login["env"], check=True)
    assert sorted(p.name for p in login["hb"].iterdir()) == ["netlab-aaa.json"]
    assert monitor.judgement("netlab-bbb") is None
    assert monitor.counts()["never-connected"] == 1


def test_first_seen_running_starts_the_deadline():
    monitor = SiteMonitor("~/hb", TIMING)
    job = SimpleNamespace(name="netlab-aaa", status=ResourceStatus.Running, job_id="1")

    def snapshot(site_time: float):
        collection = parse_collection(f"{BEGIN} {site_time}\n{END}")
        return SimpleNamespace(jobs={"1": job}, extras={"heartbeats": collection})

    # listed every 100 s (< grace: the adapter is not blind, see the next test)
    for site_time in range(1000, 1601, 100):
        verdict = monitor.observe(snapshot(site_time))["netlab-aaa"].verdict
        assert verdict is Verdict.CONNECTING
    assert (
        monitor.observe(snapshot(1601))["netlab-aaa"].verdict is Verdict.NEVER_CONNECTED
    )


def test_after_a_blind_spell_no_drone_is_ended_before_fresh_heartbeats(caplog):
    """The adapter could not list for longer than the grace (its ssh to login
    down): the first records it reads may predate the drones' recovery, so for
    two heartbeat intervals nothing is lost; then the verdicts count again."""
    monitor = SiteMonitor("~/hb", TIMING, site="NetLab")
    job = SimpleNamespace(name="netlab-aaa", status=ResourceStatus.Running, job_id="1")

    def observe(site_time: float, beat: dict) -> Judgement:
        collection = parse_collection(f"{BEGIN} {site_time}\n{json.dumps(beat)}\n{END}")
        return monitor.observe(
            SimpleNamespace(jobs={"1": job}, extras={"heartbeats": collection})
        )["netlab-aaa"]

    assert observe(1000, record("netlab-aaa", 999)).verdict is Verdict.CONNECTED
    # a record written at 1005, failing since 1002; next listing 600 s later
    stale = record("netlab-aaa", 1005, ok=False, last_ok=1000, failing_since=1002)
    caplog.set_level("WARNING", logger="cobald.runtime.tardis_netadapter.connectivity")
    held = observe(1605, stale)
    assert held.verdict is Verdict.DEGRADED and "fresh heartbeats" in held.reason
    assert "NetLab: no listing for 605 s" in caplog.text
    assert observe(1634, stale).verdict is Verdict.DEGRADED  # < 2 intervals (60 s)
    assert observe(1666, stale).verdict is Verdict.LOST  # still no fresh record
    # a drone that healed meanwhile is simply connected
    assert observe(1670, record("netlab-aaa", 1668)).verdict is Verdict.CONNECTED


def test_no_complete_collection_concludes_nothing():
    monitor = SiteMonitor("~/hb", TIMING)
    job = SimpleNamespace(name="netlab-aaa", status=ResourceStatus.Running, job_id="1")
    cut = parse_collection(f"{BEGIN} 5000\n")  # no END: cut short
    judgements = monitor.observe(
        SimpleNamespace(jobs={"1": job}, extras={"heartbeats": cut})
    )
    assert judgements["netlab-aaa"].verdict is Verdict.CONNECTING


def test_resubmitted_drone_uses_its_running_job():
    monitor = SiteMonitor("~/hb", TIMING)
    jobs = {
        "1": SimpleNamespace(
            name="netlab-aaa", status=ResourceStatus.Running, job_id="1"
        ),
        "2": SimpleNamespace(
            name="netlab-aaa", status=ResourceStatus.Deleted, job_id="2"
        ),
        "3": SimpleNamespace(
            name="not a drone/..", status=ResourceStatus.Running, job_id="3"
        ),
    }
    collection = parse_collection(f"{BEGIN} 100\n{END}")
    judgements = monitor.observe(
        SimpleNamespace(jobs=jobs, extras={"heartbeats": collection})
    )
    assert list(judgements) == ["netlab-aaa"]
    assert judgements["netlab-aaa"].verdict is Verdict.CONNECTING


# -- collector view --------------------------------------------------------------


class Ad(dict):
    pass


async def test_collector_view_from_fake_query():
    ads = [
        Ad(TardisDroneUuid="netlab-aaa", Name="slot1@wn1"),
        Ad(Name="other"),
        Ad(TardisDroneUuid=5),
    ]
    assert await collector_uuids("cm:9618", query=lambda address: ads) == {"netlab-aaa"}


async def test_collector_failure_is_unknown():
    def broken(address):
        raise RuntimeError("Failed communication with collector")

    assert await collector_uuids("cm:9618", query=broken) is None
    assert await collector_uuids("", query=broken) is None


async def test_collector_timeout_is_unknown():
    def slow(address):
        time.sleep(1)
        return []

    start = time.monotonic()
    assert await collector_uuids("cm:9618", timeout=0.1, query=slow) is None
    assert time.monotonic() - start < 0.9


async def test_real_bindings_with_nothing_listening_are_unknown():
    """htcondor2 against a closed loopback port: fails fast, reported as unknown."""
    pytest.importorskip("htcondor2")
    assert await collector_uuids("127.0.0.1:1", timeout=20) is None


def test_uuids_from_strange_ads():
    class Broken:
        def get(self, key):
            raise KeyError(key)

    assert uuids_from_ads([Broken(), Ad(TardisDroneUuid="x")]) == {"x"}


# -- metrics ---------------------------------------------------------------------


def test_metrics_values():
    registry = Registry()
    metrics = ConnectivityMetrics(registry)
    judgements = {
        "a": Judgement(Verdict.CONNECTED, "", None, 10.0, 8.5),
        "b": Judgement(Verdict.LOST, "", "chain", 300.0),
        "c": Judgement(Verdict.PENDING, "", None, 9999.0),
    }
    parsed = parse_collection(
        f"{BEGIN} 1000\n"
        + json.dumps(record("a", 990))
        + "\n"
        + json.dumps(record("b", 700, ok=False, last_ok=600))
        + f"\n{END}"
    )
    metrics.update("NetLab", judgements, parsed.records)
    metrics.update("NetLab", judgements, parsed.records)  # same records: observed once
    assert metrics.drones.get({"site": "NetLab", "verdict": "connected"}) == 1
    assert metrics.drones.get({"site": "NetLab", "verdict": "lost"}) == 1
    assert metrics.drones.get({"site": "NetLab", "verdict": "degraded"}) == 0
    assert metrics.heartbeat_age.get({"site": "NetLab"}) == 300.0  # pending ignored
    summary = metrics.latency.get({"site": "NetLab", "endpoint": "cm:9618"})
    assert summary["count"] == 1 and summary["sum"] == 8.5
    assert metrics.probe_failures.get({"site": "NetLab", "endpoint": "cm:9618"}) == 1
    text, _ = render(registry, [])
    assert b'tna_drones{site="NetLab",verdict="lost"} 1' in text


def test_metrics_use_a_private_registry():
    ConnectivityMetrics()
    ConnectivityMetrics()  # a second instance must not clash on metric names


# -- startd cron -----------------------------------------------------------------


def test_startd_cron_knobs():
    knobs = startd_cron_knobs("/tmp/tna-x/tna.ad", 30, existing_joblist="GLIDEIN")
    assert knobs == {
        "STARTD_CRON_JOBLIST": "GLIDEIN TNA",
        "STARTD_CRON_TNA_EXECUTABLE": "/bin/cat",
        "STARTD_CRON_TNA_ARGS": "/tmp/tna-x/tna.ad",
        "STARTD_CRON_TNA_PERIOD": "30s",
        "STARTD_CRON_TNA_MODE": "Periodic",
    }
    assert environment(knobs)["_CONDOR_STARTD_CRON_TNA_PERIOD"] == "30s"
    for bad in ("/tmp/a b", "", '/x"y'):
        with pytest.raises(ValueError, match="blanks"):
            startd_cron_knobs(bad, 30)
    with pytest.raises(ValueError, match="period"):
        startd_cron_knobs("/x", 0)


def test_startd_cron_knobs_parse_in_htcondor():
    condor_knobs = pytest.importorskip("tardis_netadapter.condor_knobs")
    knobs = startd_cron_knobs("/tmp/tna-x/tna.ad", 30)
    assert condor_knobs.read_back(knobs) == knobs


# -- status rendering ------------------------------------------------------------

ROWS = [
    StatusRow(
        "netlab-aaa", "11", "RUNNING", "connected", 4.2, None, 8.53, "probes answered"
    ),
    StatusRow(
        "netlab-bbb",
        "12",
        "RUNNING",
        "lost",
        7300.0,
        "chain",
        None,
        "failing for 490s > grace 120s: " + "x" * 100 + "\nsecond line",
    ),
    StatusRow("netlab-ccc", "13", "PENDING", "pending"),
]


def test_render_table():
    text = render_table(ROWS, "NetLab")
    lines = text.splitlines()
    assert lines[0].split() == [
        "DRONE",
        "JOB",
        "STATE",
        "VERDICT",
        "HB",
        "AGE",
        "STAGE",
        "LATENCY",
        "PATH",
        "ERROR",
        "ISOLATION",
        "LEAKS",
        "VPN",
        "ROUTE",
        "CNET",
        "REASON",
    ]
    assert lines[1].split()[:7] == [
        "netlab-aaa",
        "11",
        "RUNNING",
        "connected",
        "4s",
        "-",
        "8.5ms",
    ]
    assert lines[2].split()[:6] == [
        "netlab-bbb",
        "12",
        "RUNNING",
        "lost",
        "2h01m",
        "chain",
    ]
    assert lines[2].endswith("...") and "second line" not in text
    assert lines[3].split()[:5] == ["netlab-ccc", "13", "PENDING", "pending", "-"]
    assert lines[-1] == "NetLab: 3 drone(s): 1 pending, 1 connected, 1 lost"
    # columns align: every row's VERDICT starts where the header's does
    column = lines[0].index("VERDICT")
    assert all(line[column - 2 : column] == "  " for line in lines[1:4])


def test_render_empty_table():
    assert render_table([], "NetLab").splitlines()[-1] == "NetLab: 0 drone(s)"


def test_json_keys_are_stable():
    document = json.loads(to_json(ROWS, "NetLab", 1000.0))
    assert set(document) == {"schema", "site", "site_time", "counts", "drones"}
    assert document["schema"] == 1 and document["counts"]["lost"] == 1
    assert set(document["drones"][0]) == {
        "uuid",
        "job_id",
        "batch_state",
        "slurm_state",
        "verdict",
        "heartbeat_age",
        "failing_stage",
        "latency_ms",
        "reason",
        "host",
        "restarts",
        "in_collector",
        "path_error",
        "isolation",
        "vpn",
        "route",
        "container_net",
        "stage",  # issue 17, additive
        "last_error",  # issue 17, additive
    }
    # every column is in the JSON (a dotted key: inside that object)
    assert {key.split(".")[0] for key, _ in COLUMNS} <= set(document["drones"][0])


def test_make_row_carries_record_facts():
    from tardis_netadapter.connectivity.heartbeat import Heartbeat

    row = make_row(
        "d",
        "1",
        "RUNNING",
        Judgement(Verdict.DEGRADED, "r", "tunnel", 3.0, None, False),
        Heartbeat("d", 1.0, host="wn7", restarts=2),
    )
    assert (row.host, row.restarts, row.verdict, row.in_collector) == (
        "wn7",
        2,
        "degraded",
        False,
    )


# -- the status command end to end -----------------------------------------------


def test_status_command(login, capsys, monkeypatch):
    now = time.time()
    login["jobs"].write_text(
        "21|RUNNING|netlab-aaa|10:00\n22|RUNNING|netlab-bbb|2:00:00\n30|RUNNING|other|1:00\n"
    )
    write_heartbeat(login, record("netlab-aaa", now - 3))
    config = login["tmp"] / "cobald.yml"
    config.write_text(CONFIG.format(hb=login["hb"]))
    monkeypatch.setenv("PATH", login["env"]["PATH"])
    assert cli.main(["status", str(config), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["site"] == "NetLab"
    verdicts = {d["uuid"]: (d["verdict"], d["job_id"]) for d in document["drones"]}
    assert verdicts == {
        "netlab-aaa": ("connected", "21"),
        "netlab-bbb": ("never-connected", "22"),
    }
    assert cli.main(["status", str(config)]) == 0
    table = capsys.readouterr().out
    assert "netlab-bbb" in table and "never-connected" in table and "other" not in table


def test_status_unreachable_site_is_an_error_not_a_traceback(
    login, capsys, monkeypatch
):
    config = login["tmp"] / "cobald.yml"
    config.write_text(CONFIG.format(hb=login["hb"]))
    monkeypatch.setenv("PATH", "/nonexistent")
    assert cli.main(["status", str(config), "--site", "NetLab"]) == 1
    assert "site NetLab: unreachable: " in capsys.readouterr().err.splitlines()[0]


def test_status_names_a_missing_site(login, capsys):
    config = login["tmp"] / "cobald.yml"
    config.write_text(CONFIG.format(hb=login["hb"]))
    assert cli.main(["status", str(config), "--site", "Nowhere"]) == 2
    assert "no site named 'Nowhere'" in capsys.readouterr().err


def test_the_poll_prunes_records_no_drone_has_touched_for_a_week(login):
    now = time.time()
    login["jobs"].write_text("11|RUNNING|netlab-aaa|1:00:00\n")
    write_heartbeat(login, record("netlab-aaa", now - 5))
    # a real drone uuid: the prune removes only <site>-<10 hex digits>.json records
    write_heartbeat(login, record("netlab-0123456789", now - 9 * 86400))
    orphan = login["hb"] / "netlab-0123456789.json"
    os.utime(orphan, (now - 9 * 86400, now - 9 * 86400))
    monitor = SiteMonitor("~/hb", TIMING)
    poller = SitePoller(
        SlurmDriver(), ShellExecutor(login["env"]), probes=[monitor.probe], name="S"
    )
    snapshot = asyncio.run(poller.refresh())
    assert not orphan.exists()
    assert (login["hb"] / "netlab-aaa.json").exists()
    assert monitor.observe(snapshot)["netlab-aaa"].verdict is Verdict.CONNECTED


def test_tunnel_failure_class_is_shown_and_logged_once_per_change(caplog):
    """The supervisor's class (heartbeat path_error) reaches the judgement, the
    status row and the adapter's log: once when it appears, once per change,
    once when it clears; not every cycle."""
    monitor = SiteMonitor("~/hb", TIMING, site="NetLab")
    job = SimpleNamespace(name="netlab-aaa", status=ResourceStatus.Running, job_id="1")
    mismatch = {
        "class": "host key mismatch",
        "detail": "Host key for 10.66.1.1 has changed",
        "since": 990,
    }

    def observe(site_time: float, path_error) -> Judgement:
        data = record(
            "netlab-aaa",
            site_time - 1,
            ok=path_error is None,
            last_ok=None,
            path_error=path_error,
        )
        if path_error is not None:
            data["failing_stage"] = "tunnel"
            data["last_error"] = "SOCKS port 127.0.0.1:20000 not up after 10s"
            data["failing_since"] = 990
        collection = parse_collection(f"{BEGIN} {site_time}\n{json.dumps(data)}\n{END}")
        return monitor.observe(
            SimpleNamespace(jobs={"1": job}, extras={"heartbeats": collection})
        )["netlab-aaa"]

    caplog.set_level("INFO", logger="cobald.runtime.tardis_netadapter.connectivity")
    first = observe(1000, mismatch)
    assert first.path_error == "host key mismatch"
    assert first.reason.startswith("host key mismatch: Host key for 10.66.1.1")
    row = make_row("netlab-aaa", "1", "RUNNING", first, monitor.store.get("netlab-aaa"))
    assert row.path_error == "host key mismatch"
    assert "host key mismatch" in render_table([row])
    assert json.loads(to_json([row], "NetLab", 1000))["drones"][0]["path_error"] == (
        "host key mismatch"
    )
    observe(1030, mismatch)
    observe(1060, mismatch)
    refused = {**mismatch, "class": "key refused", "detail": "Permission denied"}
    observe(1090, refused)
    assert observe(1120, None).path_error is None
    observe(1150, None)
    lines = [r.getMessage() for r in caplog.records if "tunnel" in r.getMessage()]
    assert lines == [
        "NetLab: drone netlab-aaa: tunnel failing: host key mismatch "
        "(Host key for 10.66.1.1 has changed)",
        "NetLab: drone netlab-aaa: tunnel failing: key refused (Permission denied)",
        "NetLab: drone netlab-aaa: tunnel works again",
    ]
