"""The adapter ends drones that lost the pool, and only those (issue: monitoring).

A real /bin/sh runs the adapter's one combined status command against a fake
squeue and real heartbeat files; TARDIS's SiteAgent wraps the adapter as in
the daemon, so the exception that reaches TARDIS's drone states is the one
tested.
"""

from __future__ import annotations

import time

import pytest
from fakelogin import ShellExecutor, record, write_heartbeat
from fakesite import NETWORK, drone, site_section
from tardis.agents.siteagent import SiteAgent
from tardis.exceptions.tardisexceptions import TardisDroneCrashed
from tardis.interfaces.siteadapter import ResourceStatus

from tardis_netadapter.siteadapter import NetSlurmAdapter, site_monitor

# idle timeout 30 s: heartbeat every 15 s, grace 2*15 + 10*3 = 60 s, deadline 300 s
MONITORED = {**NETWORK, "monitoring": {"heartbeat_dir": "~/hb"}}


@pytest.fixture
def site(configure, login):
    """An adapter whose executor is a real shell on the fake login node."""
    scancel = login["tmp"] / "bin" / "scancel"
    scancel.write_text(f'#!/bin/sh\necho "$@" >> {login["tmp"]}/scancel.log\n')
    scancel.chmod(0o755)
    executor = ShellExecutor(login["env"])
    configure(site_section(executor, Network=MONITORED))
    agent = SiteAgent(NetSlurmAdapter(machine_type="small", site_name="NetLab"))
    return agent, executor, login


def jobs(login, *lines: str) -> None:
    login["jobs"].write_text("".join(line + "\n" for line in lines))


async def test_connected_and_degraded_drones_keep_running(site):
    agent, executor, login = site
    now = time.time()
    jobs(login, "11|RUNNING|netlab-aaa|1:00:00", "12|RUNNING|netlab-bbb|1:00:00")
    write_heartbeat(login, record("netlab-aaa", now - 3))
    failing_briefly = record(
        "netlab-bbb", now - 3, ok=False, last_ok=now - 30, failing_since=now - 25
    )
    write_heartbeat(login, failing_briefly)
    for uuid, job in (("netlab-aaa", "11"), ("netlab-bbb", "12")):
        status = await agent.resource_status(drone(uuid, job_id=job))
        assert status.resource_status is ResourceStatus.Running
    verdicts = {
        u: j.verdict.value for u, j in site_monitor("NetLab").judgements.items()
    }
    assert verdicts == {"netlab-aaa": "connected", "netlab-bbb": "degraded"}
    assert executor.calls == 1  # squeue and every heartbeat in one call


@pytest.mark.parametrize(
    "heartbeat, elapsed, verdict",
    [
        # connected once, failing for 5 minutes: far past the 60 s grace
        ({"ok": False, "last_ok": -300, "failing_since": -290}, "1:00:00", "lost"),
        # running an hour, never a heartbeat: past the 300 s connect deadline
        (None, "1:00:00", "never-connected"),
    ],
)
async def test_lost_and_never_connected_drones_are_ended(
    site, heartbeat, elapsed, verdict
):
    agent, _, login = site
    now = time.time()
    jobs(login, f"21|RUNNING|netlab-ccc|{elapsed}")
    if heartbeat is not None:
        last_ok, since = (
            now + heartbeat.pop("last_ok"),
            now + heartbeat["failing_since"],
        )
        heartbeat["failing_since"] = since
        write_heartbeat(
            login, record("netlab-ccc", now - 3, last_ok=last_ok, **heartbeat)
        )
    with pytest.raises(TardisDroneCrashed, match=verdict):
        await agent.resource_status(drone("netlab-ccc", job_id="21"))


async def test_a_pending_drone_is_never_judged(site):
    agent, _, login = site
    jobs(login, "31|PENDING|netlab-ddd|0:00")
    status = await agent.resource_status(drone("netlab-ddd", job_id="31"))
    assert status.resource_status is ResourceStatus.Booting


async def test_terminate_cancels_and_removes_the_heartbeat_in_one_call(site):
    agent, executor, login = site
    write_heartbeat(login, record("netlab-eee", time.time()))
    await agent.terminate_resource(drone("netlab-eee", job_id="41"))
    assert executor.calls == 1
    assert (login["tmp"] / "scancel.log").read_text().split() == ["41"]
    assert not (login["hb"] / "netlab-eee.json").exists()


async def test_a_drone_that_ended_by_itself_has_its_heartbeat_removed_next_cycle(
    site,
):
    """Walltime or a failed payload: no scancel, yet no week-long leftover file."""
    agent, executor, login = site
    jobs(login, "61|COMPLETED|netlab-ggg|2:00:00", "62|RUNNING|netlab-hhh|1:00:00")
    write_heartbeat(login, record("netlab-ggg", time.time() - 60))
    write_heartbeat(login, record("netlab-hhh", time.time()))
    status = await agent.resource_status(drone("netlab-ggg", job_id="61"))
    assert status.resource_status is ResourceStatus.Deleted
    agent._site_adapter.poller.max_age = 0
    await agent.resource_status(drone("netlab-hhh", job_id="62"))  # the next cycle
    assert executor.calls == 2  # the removal rode in the listing's call
    assert not (login["hb"] / "netlab-ggg.json").exists()
    assert (login["hb"] / "netlab-hhh.json").exists()


async def test_without_monitoring_heartbeats_are_not_collected(configure, login):
    executor = ShellExecutor(login["env"])
    network = {**NETWORK, "monitoring": {"enabled": False, "heartbeat_dir": "~/hb"}}
    configure(site_section(executor, Network=network))
    agent = SiteAgent(NetSlurmAdapter(machine_type="small", site_name="NetLab"))
    jobs(login, "51|RUNNING|netlab-fff|9:00:00")  # would be never-connected
    status = await agent.resource_status(drone("netlab-fff", job_id="51"))
    assert status.resource_status is ResourceStatus.Running
    assert site_monitor("NetLab") is None


async def test_metrics_are_set_once_per_cycle_not_once_per_drone(
    configure, login, monkeypatch
):
    from tardis_netadapter import site as sites
    from tardis_netadapter.connectivity.metrics import ConnectivityMetrics

    updates = []
    monkeypatch.setattr(
        ConnectivityMetrics, "update", lambda self, site, j, r: updates.append(site)
    )

    async def no_exporter(metrics, port, addr="127.0.0.1"):
        return None

    monkeypatch.setattr(sites, "serve", no_exporter)
    executor = ShellExecutor(login["env"])
    network = {**MONITORED, "monitoring": {"heartbeat_dir": "~/hb", "metrics_port": 9}}
    configure(site_section(executor, Network=network))
    agent = SiteAgent(NetSlurmAdapter(machine_type="small", site_name="NetLab"))
    now = time.time()
    jobs(login, *(f"{60 + i}|RUNNING|netlab-m{i}|1:00:00" for i in range(5)))
    for i in range(5):
        write_heartbeat(login, record(f"netlab-m{i}", now - 3))
    for i in range(5):
        await agent.resource_status(drone(f"netlab-m{i}", job_id=str(60 + i)))
    assert executor.calls == 1 and updates == ["NetLab"]
