"""Site outages are not drone deaths (issue 11).

The rule itself on tables of verdicts (``judge_outage``, ``spare``), then the
adapter end to end: a real /bin/sh runs the combined status command against a
fake squeue and real heartbeat files, TARDIS's SiteAgent wraps the adapter as
in the daemon, so what reaches TARDIS (TardisDroneCrashed, SiteBraked) is what
is tested.
"""

from __future__ import annotations

import logging
import time

import pytest
from fakelogin import ShellExecutor, record, write_heartbeat
from fakesite import NETWORK, drone, site_section
from tardis.agents.siteagent import SiteAgent
from tardis.exceptions.executorexceptions import CommandExecutionFailure
from tardis.exceptions.tardisexceptions import (
    TardisDroneCrashed,
    TardisResourceStatusUpdateFailed,
)

from tardis_netadapter import site as sites
from tardis_netadapter.brake import BrakeSettings, SiteBrake, SiteBraked
from tardis_netadapter.connectivity.metrics import ConnectivityMetrics
from tardis_netadapter.connectivity.outage import (
    OUTAGE_MIN_DRONES,
    OUTAGE_WINDOW_INTERVALS,
    Outage,
    judge_outage,
    largest_cluster,
    spare,
)
from tardis_netadapter.connectivity.report import brake_line, outage_line
from tardis_netadapter.connectivity.verdict import Judgement, Verdict
from tardis_netadapter.siteadapter import NetSlurmAdapter, site_monitor

INTERVAL = 15.0  # the fixture site's heartbeat interval (idle timeout 30 s)
WINDOW = OUTAGE_WINDOW_INTERVALS * INTERVAL


def ok() -> Judgement:
    return Judgement(Verdict.CONNECTED, "probes answered", None, 3.0)


def failing(stage: str, since: float, verdict: Verdict = Verdict.LOST) -> Judgement:
    return Judgement(verdict, "r", stage, 3.0, None, None, since)


def drones(*judgements: Judgement) -> dict[str, Judgement]:
    return {f"d{i}": j for i, j in enumerate(judgements)}


# -- the rule -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "judgements, expected",
    [
        # 5 of 5 failing in tunnel within a few seconds: outage
        ([failing("tunnel", 100 + i) for i in range(5)], ("tunnel", 5)),
        # 3 of 6 (half) within the window: outage; the others are fine
        ([failing("tunnel", 100 + i) for i in range(3)] + [ok()] * 3, ("tunnel", 3)),
        # 3 of 7: less than half
        ([failing("tunnel", 100 + i) for i in range(3)] + [ok()] * 4, None),
        # 2 of 2: below OUTAGE_MIN_DRONES
        ([failing("tunnel", 100), failing("tunnel", 101)], None),
        # 4 failing, but began far apart (more than the window between each)
        ([failing("tunnel", 100 + i * (WINDOW + 1)) for i in range(4)], None),
        # 4 failing in tunnel, 3 of them within the window: 3 of 4 is enough
        (
            [failing("tunnel", t) for t in (100, 110, 100 + WINDOW, 1000)],
            ("tunnel", 4),
        ),
        # the same moment, but different stages: no common cause
        (
            [failing(s, 100) for s in ("tunnel", "chain", "pool", "cvmfs")],
            None,
        ),
        # degraded (within grace) counts as failing: declared before anyone is lost
        ([failing("tunnel", 100, Verdict.DEGRADED) for _ in range(3)], ("tunnel", 3)),
        # drones without a record, and pending ones, are not the population
        (
            [failing("tunnel", 100 + i) for i in range(3)]
            + [Judgement(Verdict.CONNECTING, "no heartbeat yet")] * 5
            + [Judgement(Verdict.PENDING, "job is not running")] * 5,
            ("tunnel", 3),
        ),
        # nobody failing
        ([ok()] * 5, None),
        ([], None),
    ],
)
def test_outage_rule_from_one_snapshot(judgements, expected):
    outage = judge_outage(drones(*judgements), INTERVAL)
    assert (None if outage is None else (outage.stage, outage.failing)) == expected


def test_the_largest_stage_cluster_wins():
    judgements = [failing("tunnel", 100)] * 4 + [failing("chain", 100)] * 3
    outage = judge_outage(drones(*judgements), INTERVAL)
    assert outage == Outage("tunnel", 4, 7, 100)


@pytest.mark.parametrize(
    "failing_now, fine, lasts",
    [
        (3, 5, True),  # 3 of 8 >= a quarter: still an outage (no longer half)
        (2, 6, True),  # exactly a quarter
        (2, 7, False),  # 2 of 9: fewer than a quarter
        (0, 8, False),  # nobody failing
    ],
)
def test_an_outage_ends_below_a_quarter(failing_now, fine, lasts):
    current = Outage("tunnel", 8, 8, 100.0)
    # late failures (drones started during the outage) count while it lasts
    judgements = [failing("tunnel", 100 + 200 * i) for i in range(failing_now)]
    outage = judge_outage(drones(*judgements, *[ok()] * fine), INTERVAL, current)
    assert (outage is not None) is lasts
    if lasts:
        assert outage.stage == "tunnel" and outage.since == 100.0
        assert outage.failing == failing_now


def test_an_outage_is_not_begun_at_a_quarter():
    judgements = [failing("tunnel", 100 + i) for i in range(3)] + [ok()] * 5
    assert judge_outage(drones(*judgements), INTERVAL) is None  # 3 of 8 < half


def test_largest_cluster():
    assert largest_cluster([], 10) == (0, 0.0)
    assert largest_cluster([50, 0, 5, 10, 60, 55], 10) == (3, 0)
    assert largest_cluster([0, 11, 22], 10) == (1, 0)


def test_spare_only_terminal_verdicts_in_the_outage_stage():
    outage = Outage("tunnel", 5, 5, 100.0)
    lost = failing("tunnel", 100)
    spared = spare(lost, outage)
    assert spared.verdict is Verdict.DEGRADED
    assert spared.reason.startswith("site outage in stage tunnel (5 of 5 drones)")
    assert spared.failing_since == 100 and spared.failing_stage == "tunnel"
    never = failing("tunnel", 100, Verdict.NEVER_CONNECTED)
    assert spare(never, outage).verdict is Verdict.DEGRADED
    assert spare(failing("chain", 100), outage).verdict is Verdict.LOST
    assert spare(lost, None) is lost
    degraded = failing("tunnel", 100, Verdict.DEGRADED)
    assert spare(degraded, outage) is degraded
    assert OUTAGE_MIN_DRONES == 3


def test_the_brake_hold_refuses_deploys_until_released():
    brake = SiteBrake("NetLab", BrakeSettings(enabled=False))  # trigger 1 off
    brake.check("a")
    brake.hold("site outage in stage tunnel (5 of 5 running drones failing)")
    with pytest.raises(SiteBraked, match="deploys held: site outage"):
        brake.check("b")
    snapshot = brake.snapshot()
    assert snapshot.held and snapshot.refused == 1 and not snapshot.engaged
    assert brake_line(snapshot) == (
        "site NetLab: deploys held: site outage in stage tunnel "
        "(5 of 5 running drones failing)"
    )
    brake.release()
    brake.check("c")
    assert brake_line(brake.snapshot()) is None


def test_outage_line_and_metrics():
    outage = Outage("tunnel", 4, 5, 100.0)
    assert outage_line("NetLab", outage) == (
        "site NetLab: site outage in stage tunnel: 4 of 5 running drones failing"
    )
    assert outage_line("NetLab", None) is None
    metrics = ConnectivityMetrics()
    metrics.update_outage("NetLab", outage)
    assert metrics.site_outage.get({"site": "NetLab", "stage": "tunnel"}) == 1
    assert metrics.site_outage.get({"site": "NetLab", "stage": "chain"}) == 0
    metrics.update_outage("NetLab", None)
    assert metrics.site_outage.get({"site": "NetLab", "stage": "tunnel"}) == 0


# -- the adapter -----------------------------------------------------------------------

MONITORED = {**NETWORK, "monitoring": {"heartbeat_dir": "~/hb"}}


@pytest.fixture
def site(configure, login):
    """An adapter on the fake login node, with sbatch and scancel that only log."""
    bin_dir = login["tmp"] / "bin"
    (bin_dir / "scancel").write_text(
        f'#!/bin/sh\necho "$@" >> {login["tmp"]}/scancel.log\n'
    )
    (bin_dir / "sbatch").write_text(
        f"#!/bin/sh\ncat > /dev/null\necho x >> {login['tmp']}/sbatch.log\necho 999\n"
    )
    for name in ("scancel", "sbatch"):
        (bin_dir / name).chmod(0o755)
    configure(site_section(ShellExecutor(login["env"]), Network=MONITORED))
    agent = SiteAgent(NetSlurmAdapter(machine_type="small", site_name="NetLab"))
    return agent, login


def listing(login, uuids) -> None:
    login["jobs"].write_text(
        "".join(f"{100 + i}|RUNNING|{u}|1:00:00\n" for i, u in enumerate(uuids))
    )


def fail(login, uuid: str, since: float, stage: str = "tunnel") -> None:
    """A drone that was connected, failing in ``stage`` since ``since``."""
    now = time.time()
    write_heartbeat(
        login,
        record(
            uuid,
            now - 3,
            ok=False,
            last_ok=since - 10,
            failing_since=since,
            failing_stage=stage,
        ),
    )


async def statuses(agent, uuids) -> dict[str, str]:
    """One TARDIS cycle: every drone's status, or the verdict that ended it."""
    agent._site_adapter.poller.max_age = 0  # a fresh listing for this cycle
    result = {}
    for i, uuid in enumerate(uuids):
        try:
            status = await agent.resource_status(drone(uuid, job_id=str(100 + i)))
            agent._site_adapter.poller.max_age = 3600  # the rest share the listing
            result[uuid] = status.resource_status.name
        except TardisDroneCrashed as crash:
            result[uuid] = f"crashed: {crash}"
    return result


async def deploy(agent, uuid: str):
    return await agent.deploy_resource(drone(uuid))


def outage_logs(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "site outage" in r.getMessage()]


async def test_a_site_outage_ends_no_drone_and_holds_deploys(site, caplog):
    agent, login = site
    caplog.set_level(logging.INFO)
    uuids = [f"netlab-out{i}" for i in range(5)]
    listing(login, uuids)
    now = time.time()
    for i, uuid in enumerate(uuids):  # all failing for 2 min, past the 60 s grace
        fail(login, uuid, now - 120 + i)
    for _ in range(2):  # two cycles: said once
        assert await statuses(agent, uuids) == dict.fromkeys(uuids, "Running")
        with pytest.raises(SiteBraked, match="deploys held: site outage in stage"):
            await deploy(agent, "netlab-new")
    assert not (login["tmp"] / "sbatch.log").exists()
    assert not (login["tmp"] / "scancel.log").exists()
    judgements = site_monitor("NetLab").judgements
    assert {j.verdict for j in judgements.values()} == {Verdict.DEGRADED}
    assert all("site outage in stage tunnel" in j.reason for j in judgements.values())
    begun = outage_logs(caplog)
    assert len(begun) == 1
    assert begun[0].startswith(
        "NetLab: site outage in stage tunnel: 5 of 5 running drones failing"
    )
    assert "new submissions are held" in begun[0]

    # the site answers again: every heartbeat is good
    for uuid in uuids:
        write_heartbeat(login, record(uuid, time.time() - 1))
    assert await statuses(agent, uuids) == dict.fromkeys(uuids, "Running")
    assert site_monitor("NetLab").outage is None
    assert sites.get("NetLab").brake.held is None
    result = await deploy(agent, "netlab-new")
    assert result.remote_resource_uuid == "999"
    ended = outage_logs(caplog)[1:]
    assert len(ended) == 1 and "is over after" in ended[0]


async def test_a_drone_failing_alone_is_still_ended(site):
    agent, login = site
    uuids = [f"netlab-one{i}" for i in range(5)]
    listing(login, uuids)
    for uuid in uuids[1:]:
        write_heartbeat(login, record(uuid, time.time() - 2))
    fail(login, uuids[0], time.time() - 120)
    result = await statuses(agent, uuids)
    assert result[uuids[0]].startswith("crashed: netlab-one0: lost")
    assert all(result[u] == "Running" for u in uuids[1:])
    assert site_monitor("NetLab").outage is None
    await deploy(agent, "netlab-new")  # not held


async def test_two_of_two_failing_is_below_the_minimum(site):
    agent, login = site
    uuids = ["netlab-two0", "netlab-two1"]
    listing(login, uuids)
    now = time.time()
    for uuid in uuids:
        fail(login, uuid, now - 120)
    result = await statuses(agent, uuids)
    assert all(r.startswith(f"crashed: {u}: lost") for u, r in result.items())
    await deploy(agent, "netlab-new")


async def test_failures_far_apart_are_not_an_outage(site):
    agent, login = site
    uuids = [f"netlab-far{i}" for i in range(4)]
    listing(login, uuids)
    now = time.time()
    for i, uuid in enumerate(uuids):  # 40 s apart: more than the 30 s window
        fail(login, uuid, now - 100 - 40 * i)
    result = await statuses(agent, uuids)
    assert all(r.startswith(f"crashed: {u}: lost") for u, r in result.items())
    assert site_monitor("NetLab").outage is None


async def test_a_drone_failing_alone_in_another_stage_during_an_outage(site):
    agent, login = site
    uuids = [f"netlab-mix{i}" for i in range(5)]
    listing(login, uuids)
    now = time.time()
    for uuid in uuids[:4]:
        fail(login, uuid, now - 120)
    fail(login, uuids[4], now - 300, stage="cvmfs")
    result = await statuses(agent, uuids)
    assert all(result[u] == "Running" for u in uuids[:4])
    assert result[uuids[4]].startswith("crashed: netlab-mix4: lost")
    assert site_monitor("NetLab").outage.stage == "tunnel"


# -- the status command: its own single snapshot -------------------------------------


def test_status_shows_a_site_outage_from_one_snapshot(login, capsys, monkeypatch):
    import json

    from fakelogin import CONFIG

    from tardis_netadapter import cli

    monkeypatch.setenv("XDG_STATE_HOME", str(login["tmp"] / "state"))
    monkeypatch.setenv("PATH", login["env"]["PATH"])
    uuids = [f"netlab-st{i}" for i in range(4)]
    listing(login, uuids)
    now = time.time()
    for uuid in uuids:
        fail(login, uuid, now - 120)
    config = login["tmp"] / "cobald.yml"
    config.write_text(CONFIG.format(hb=login["hb"]))
    assert cli.main(["status", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        "site NetLab: site outage in stage tunnel: 4 of 4 running drones failing"
    )
    assert lines[1].split()[0] == "DRONE"
    assert cli.main(["status", str(config), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["outage"]["stage"] == "tunnel"
    assert document["counts"]["degraded"] == 4 and document["counts"]["lost"] == 0
    for uuid in uuids:  # healed
        write_heartbeat(login, record(uuid, time.time() - 1))
    assert cli.main(["status", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["outage"] is None


# -- a login node that does not answer the adapter at all --------------------------


class DownableExecutor(ShellExecutor):
    """The fake login node, or, while ``down``, ssh's refusal as TARDIS raises it."""

    down = False

    async def run_command(self, command: str, stdin_input=None):
        if self.down:
            self.calls += 1
            raise CommandExecutionFailure(
                message="ssh: connect to host login port 22: Connection refused",
                exit_code=255,
                stdout="",
                stderr="ssh: connect to host login port 22: Connection refused",
            )
        return await super().run_command(command, stdin_input)


UNMONITORED = {**NETWORK, "monitoring": {"enabled": False}}


@pytest.mark.parametrize(
    "network", [MONITORED, UNMONITORED], ids=["monitored", "unmonitored"]
)
async def test_a_login_node_the_adapter_cannot_reach_is_an_outage_said_once(
    configure, login, caplog, monkeypatch, network
):
    """The heartbeats are read over the login node: while it is down the adapter
    sees nothing, so failed listings themselves are the site's outage."""
    monkeypatch.setattr(sites, "UNREACHABLE_AFTER", 0.2)
    executor = DownableExecutor(login["env"])
    configure(site_section(executor, Network=network))
    agent = SiteAgent(NetSlurmAdapter(machine_type="small", site_name="NetLab"))
    agent._site_adapter.poller.retry_after = 0  # every cycle asks the login node
    caplog.set_level(logging.INFO)
    uuids = [f"netlab-up{i}" for i in range(3)]
    listing(login, uuids)
    now = time.time()
    for uuid in uuids:
        write_heartbeat(login, record(uuid, now - 1))
    assert await statuses(agent, uuids) == dict.fromkeys(uuids, "Running")

    executor.down = True
    for _ in range(3):  # a short blip is not an outage; longer ones are, once
        time.sleep(0.15)
        for uuid in uuids:  # TARDIS keeps the drone's state: a failed update
            with pytest.raises(TardisResourceStatusUpdateFailed):
                await statuses(agent, [uuid])
    said = outage_logs(caplog)
    assert len(said) == 1 and "site outage in stage login" in said[0], said
    assert "no drone is ended" in said[0]
    with pytest.raises(SiteBraked, match="deploys held: site outage in stage login"):
        await deploy(agent, "netlab-new")

    executor.down = False
    for uuid in uuids:  # fresh heartbeats: the drones healed with the site
        write_heartbeat(login, record(uuid, time.time()))
    assert await statuses(agent, uuids) == dict.fromkeys(uuids, "Running")
    said = outage_logs(caplog)
    assert len(said) == 2 and "site outage in stage login is over" in said[1], said
    sites.get("NetLab").brake.check("netlab-new")  # deploys resume
