"""The per-site brake: young deaths trip it, half-open probing lifts it.

Every test drives a SiteBrake with a fake clock; one drives TARDIS's own
RequestState to show that SiteBraked sends a drone to DownState with nothing
submitted.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from tardis.interfaces.siteadapter import ResourceStatus
from tardis.resources.dronestates import BootingState, DownState, RequestState
from tardis.utilities.attributedict import AttributeDict

from tardis_netadapter import brake as brake_module
from tardis_netadapter.brake import (
    BrakeSettings,
    SiteBrake,
    SiteBraked,
    check_against_walltimes,
    default_state_file,
    load_brake,
    read_brake_state,
)
from tardis_netadapter.schema import ConfigurationError

Running, Booting, Deleted = (
    ResourceStatus.Running,
    ResourceStatus.Booting,
    ResourceStatus.Deleted,
)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(clock: Clock, **settings) -> SiteBrake:
    defaults = {"after": 3, "min_lifetime": 300, "backoff": 60, "max_backoff": 200}
    return SiteBrake("NetLab", BrakeSettings(**{**defaults, **settings}), clock=clock)


def die_young(brake: SiteBrake, clock: Clock, uuid: str, ran: float = 10) -> None:
    """A drone that is submitted, runs ``ran`` seconds and ends by itself."""
    brake.submitted(uuid)
    brake.observed(uuid, Booting)
    brake.observed(uuid, Running)
    clock.advance(ran)
    brake.observed(uuid, Deleted)


def survive(brake: SiteBrake, clock: Clock, uuid: str) -> None:
    brake.submitted(uuid)
    brake.observed(uuid, Running)
    clock.advance(brake.settings.min_lifetime)
    brake.observed(uuid, Running)


def trip(brake: SiteBrake, clock: Clock) -> None:
    for index in range(brake.settings.after):
        die_young(brake, clock, f"netlab-trip{brake.snapshot().trips}-{index}")
    assert brake.snapshot().engaged


# -- settings -----------------------------------------------------------------


def test_defaults_and_absent_section():
    assert load_brake(None, "NetLab.brake") == BrakeSettings(
        enabled=True, after=5, min_lifetime=300.0, backoff=60.0, max_backoff=3600.0
    )
    assert load_brake({"enabled": False}, "NetLab.brake").enabled is False


def test_bad_settings_name_path_value_and_fix_all_at_once():
    with pytest.raises(ConfigurationError) as raised:
        load_brake(
            {"after": 0, "min_lifetime": -1, "backoff": 100, "max_backoff": 50},
            "NetLab.brake",
        )
    problems = raised.value.problems
    assert len(problems) == 3
    assert problems[0].startswith("NetLab.brake.after: got 0; expected")
    assert problems[1].startswith("NetLab.brake.min_lifetime: got -1.0; expected")
    assert "NetLab.brake.max_backoff: got 50.0" in problems[2]
    assert "at least NetLab.brake.backoff" in problems[2]
    with pytest.raises(ConfigurationError, match=r"NetLab.brake.afte: .*unknown key"):
        load_brake({"afte": 3}, "NetLab.brake")
    with pytest.raises(ConfigurationError, match=r"NetLab.brake.enabled: got 'no'"):
        load_brake({"enabled": "no"}, "NetLab.brake")


def test_walltime_below_twice_min_lifetime_is_refused():
    settings = BrakeSettings()
    problems = check_against_walltimes(
        settings, {"big": 86400, "tiny": 480}, "NetLab.brake"
    )
    assert len(problems) == 1
    assert problems[0].startswith("NetLab.brake.min_lifetime: got 300;")
    assert "'tiny' (480 s)" in problems[0]
    assert (
        check_against_walltimes(BrakeSettings(enabled=False), {"tiny": 480}, "p") == []
    )


# -- tripping -----------------------------------------------------------------


def test_trips_after_n_young_deaths_in_a_row(caplog):
    clock = Clock()
    brake = make(clock)
    caplog.set_level(logging.INFO, logger="cobald.runtime.tardis_netadapter.brake")
    die_young(brake, clock, "netlab-a")
    die_young(brake, clock, "netlab-b", ran=299)
    brake.check("netlab-c")  # two: still open
    assert not brake.snapshot().engaged
    brake.submitted("netlab-c")
    brake.observed("netlab-c", Deleted)  # never ran: young too
    snap = brake.snapshot()
    assert snap.engaged and snap.trips == 1 and snap.young_deaths_in_a_row == 3
    assert snap.next_probe_in == 60
    with pytest.raises(SiteBraked) as raised:
        brake.check("netlab-d")
    message = str(raised.value)
    assert "NetLab" in message and "3 drones in a row died young" in message
    assert "next probe in 60 s" in message
    engaged = [r for r in caplog.records if "brake engaged" in r.getMessage()]
    assert len(engaged) == 1
    assert "refusing deploys for 60 s" in engaged[0].getMessage()


def test_never_connected_counts_even_though_the_adapter_cancels_it():
    clock = Clock()
    brake = make(clock)
    for name in ("netlab-a", "netlab-b", "netlab-c"):
        brake.submitted(name)
        brake.observed(name, Running)
        clock.advance(600)  # past min_lifetime, but it never reached the pool
        brake.never_connected(name)
        brake.cancelled(name)  # TARDIS cleans it up: no extra count, no undo
        brake.observed(name, Deleted)
    snap = brake.snapshot()
    assert snap.engaged and snap.young_deaths_in_a_row == 3
    assert snap.last_reason == "drone netlab-c never connected"


def test_cancelled_drones_do_not_count():
    clock = Clock()
    brake = make(clock)
    for index in range(10):  # demand went down: we cancel young drones
        name = f"netlab-{index}"
        brake.submitted(name)
        brake.observed(name, Booting)
        brake.cancelled(name)
        brake.observed(name, Booting)  # squeue still lists it for a moment
        brake.observed(name, Deleted)
    snap = brake.snapshot()
    assert not snap.engaged and snap.young_deaths_in_a_row == 0


def test_a_survivor_in_between_resets_the_count():
    clock = Clock()
    brake = make(clock)
    die_young(brake, clock, "netlab-a")
    die_young(brake, clock, "netlab-b")
    survive(brake, clock, "netlab-ok")
    assert brake.snapshot().young_deaths_in_a_row == 0
    die_young(brake, clock, "netlab-c")
    die_young(brake, clock, "netlab-d")
    assert not brake.snapshot().engaged
    brake.submitted("netlab-e")
    brake.observed("netlab-e", Running)
    brake.connected("netlab-e")  # the monitor's verdict counts at once
    die_young(brake, clock, "netlab-f")
    assert brake.snapshot().young_deaths_in_a_row == 1


def test_an_old_drone_ending_is_not_young():
    clock = Clock()
    brake = make(clock)
    brake.submitted("netlab-old")
    brake.observed("netlab-old", Running)
    clock.advance(100)
    brake.observed("netlab-old", Running)  # not yet old enough
    clock.advance(250)
    brake.observed("netlab-old", Deleted)  # ran 350 s
    die_young(brake, clock, "netlab-a")
    assert brake.snapshot().young_deaths_in_a_row == 1


def test_drones_of_unknown_age_and_held_jobs_do_not_count():
    clock = Clock()
    brake = make(clock)
    for index in range(5):
        brake.observed(f"netlab-old{index}", Running)  # running before a restart
        brake.observed(f"netlab-old{index}", Deleted)
        brake.observed(f"netlab-held{index}", Booting)
        brake.observed(f"netlab-held{index}", ResourceStatus.Stopped)
        brake.cancelled(f"netlab-held{index}")
    assert brake.snapshot().young_deaths_in_a_row == 0


def test_a_pending_job_from_before_a_restart_that_ends_unrun_counts():
    clock = Clock()
    brake = make(clock, after=1)
    brake.observed("netlab-p", Booting)
    brake.observed("netlab-p", Deleted)
    assert brake.snapshot().engaged


# -- refusing and probing -------------------------------------------------------


def test_refused_fast_with_no_side_effects():
    clock = Clock()
    brake = make(clock)
    trip(brake, clock)
    before = brake.snapshot()
    for _ in range(100):
        with pytest.raises(SiteBraked):
            brake.check("netlab-x")
    after = brake.snapshot()
    assert after.refused == before.refused + 100
    assert (after.engaged, after.trips, after.probe, after.young_deaths_in_a_row) == (
        before.engaged,
        before.trips,
        before.probe,
        before.young_deaths_in_a_row,
    )
    assert "netlab-x" not in brake._alive


def test_half_open_lets_exactly_one_probe_through():
    clock = Clock()
    brake = make(clock)
    trip(brake, clock)
    clock.advance(59)
    with pytest.raises(SiteBraked):
        brake.check("netlab-early")
    clock.advance(1)
    assert brake.snapshot().next_probe_in == 0
    brake.check("netlab-probe")  # passes
    assert brake.snapshot().probe == "netlab-probe"
    for name in ("netlab-2", "netlab-3"):
        with pytest.raises(SiteBraked, match="probe netlab-probe in flight"):
            brake.check(name)
    brake.submitted("netlab-probe")
    brake.observed("netlab-probe", Running)
    clock.advance(1000)  # long after the back-off: still only the probe
    with pytest.raises(SiteBraked):
        brake.check("netlab-4")


def test_probe_dies_young_doubles_the_backoff_up_to_the_cap():
    clock = Clock()
    brake = make(clock)  # backoff 60, max_backoff 200
    trip(brake, clock)
    for index, expected in enumerate((120, 200, 200)):
        clock.advance(brake.snapshot().next_probe_in)
        brake.check(f"netlab-probe{index}")
        die_young(brake, clock, f"netlab-probe{index}", ran=0)
        snap = brake.snapshot()
        assert snap.engaged and snap.backoff == expected
        assert snap.next_probe_in == expected
        assert snap.probe is None
    assert brake.snapshot().trips == 4


def test_probe_survives_lifts_the_brake_and_resets(caplog):
    clock = Clock()
    brake = make(clock)
    caplog.set_level(logging.INFO, logger="cobald.runtime.tardis_netadapter.brake")
    trip(brake, clock)
    clock.advance(60)
    brake.check("netlab-p1")
    die_young(brake, clock, "netlab-p1")  # back-off now 120
    clock.advance(120)
    with brake.deploying("netlab-p2"):
        pass
    brake.observed("netlab-p2", Running)
    clock.advance(300)
    brake.observed("netlab-p2", Running)
    snap = brake.snapshot()
    assert not snap.engaged and snap.young_deaths_in_a_row == 0
    assert snap.backoff == 60 and snap.probe is None
    assert snap.last_reason == "drone netlab-p2 survived (ran 300 s)"
    brake.check("netlab-next")  # open again
    lifted = [r.getMessage() for r in caplog.records if "lifted" in r.getMessage()]
    assert lifted == ["NetLab: brake lifted: drone netlab-p2 survived (ran 300 s)"]
    trip(brake, clock)  # a later trip starts from the first back-off again
    assert brake.snapshot().next_probe_in == 60


def test_probe_cancelled_or_failed_to_deploy_frees_the_slot():
    clock = Clock()
    brake = make(clock)
    trip(brake, clock)
    clock.advance(60)
    with pytest.raises(RuntimeError), brake.deploying("netlab-p1"):
        raise RuntimeError("sbatch failed")
    assert brake.snapshot().probe is None
    brake.check("netlab-p2")
    brake.submitted("netlab-p2")
    brake.cancelled("netlab-p2")  # demand went down: its fate is unknown
    brake.check("netlab-p3")  # the next deploy probes
    assert brake.snapshot().probe == "netlab-p3"
    assert brake.snapshot().engaged


def test_an_unnamed_probe_is_bound_by_submitted():
    clock = Clock()
    brake = make(clock)
    trip(brake, clock)
    clock.advance(60)
    brake.check()
    with pytest.raises(SiteBraked, match="being submitted"):
        brake.check()
    brake.submitted("netlab-p")
    assert brake.snapshot().probe == "netlab-p"


def test_disabled_brake_never_refuses():
    clock = Clock()
    brake = make(clock, enabled=False)
    for index in range(20):
        brake.check(f"netlab-{index}")
        die_young(brake, clock, f"netlab-{index}")
        brake.never_connected(f"netlab-{index}")
    snap = brake.snapshot()
    assert not snap.engaged and snap.refused == 0 and not snap.enabled


def test_memory_is_bounded(monkeypatch):
    monkeypatch.setattr(brake_module, "SETTLED_MEMORY", 50)
    monkeypatch.setattr(brake_module, "TRACKED_MEMORY", 40)
    clock = Clock()
    brake = make(clock, after=10**9)
    for index in range(1000):
        die_young(brake, clock, f"netlab-d{index}")
        survive(brake, clock, f"netlab-s{index}")
        brake.submitted(f"netlab-c{index}")
        brake.cancelled(f"netlab-c{index}")
        brake.submitted(f"netlab-v{index}")  # never heard of again
    assert len(brake._alive) <= 40
    assert len(brake._settled) <= 50


# -- state file -----------------------------------------------------------------


def test_state_file_written_atomically_on_changes_and_read_back(tmp_path, monkeypatch):
    clock, wall = Clock(), Clock(5_000_000.0)
    path = tmp_path / "state" / "brake-NetLab.json"
    settings = BrakeSettings(after=2, backoff=60)
    written = []
    real_replace = os.replace

    def recording_replace(source, target):
        assert Path(source).parent == path.parent and Path(source) != path
        written.append(json.loads(Path(source).read_text()))
        real_replace(source, target)

    monkeypatch.setattr(brake_module.os, "replace", recording_replace)
    brake = SiteBrake("NetLab", settings, clock=clock, state_file=path, wall=wall)
    assert len(written) == 1 and written[0]["engaged"] is False  # stale file replaced
    die_young(brake, clock, "netlab-a")
    die_young(brake, clock, "netlab-b")
    assert [w["young_deaths_in_a_row"] for w in written] == [0, 1, 2]
    for _ in range(5):
        with pytest.raises(SiteBraked):
            brake.check("netlab-x")
        brake.observed("netlab-unknown", Running)
    assert len(written) == 3  # refusals and unknown drones: no writes
    assert sorted(os.listdir(path.parent)) == ["brake-NetLab.json"]

    wall.advance(18)
    state = read_brake_state(path, now=wall)
    assert state is not None and state.engaged and state.young_deaths_in_a_row == 2
    assert state.next_probe_in == pytest.approx(42)
    assert state.headline == (
        "site NetLab: brake engaged: 2 drones in a row died within 300 s; "
        "next probe in 42 s"
    )


def test_missing_or_corrupt_state_file_reads_as_none(tmp_path):
    path = tmp_path / "brake-NetLab.json"
    assert read_brake_state(path) is None
    path.write_text("{not json")
    assert read_brake_state(path) is None
    path.write_text('{"schema": 1, "site": "NetLab"}')
    assert read_brake_state(path) is None
    path.write_text("[1, 2]")
    assert read_brake_state(path) is None


def test_unwritable_state_file_never_breaks_the_brake(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    clock = Clock()
    brake = SiteBrake(
        "NetLab", BrakeSettings(after=1), clock=clock, state_file=blocker / "x.json"
    )
    die_young(brake, clock, "netlab-a")
    assert brake.snapshot().engaged
    assert len([r for r in caplog.records if "cannot write" in r.getMessage()]) == 1


def test_default_state_file(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_state_file("NetLab") == (
        tmp_path / "tardis-netadapter" / "brake-NetLab.json"
    )
    monkeypatch.setenv("XDG_STATE_HOME", "relative/dir")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_file("NetLab") == (
        tmp_path
        / "home"
        / ".local"
        / "state"
        / "tardis-netadapter"
        / "brake-NetLab.json"
    )
    with pytest.raises(ValueError):
        default_state_file("../etc")


# -- TARDIS's RequestState --------------------------------------------------------


class FakeSiteAgent:
    def __init__(self, brake: SiteBrake) -> None:
        self.brake = brake
        self.submitted: list[str] = []

    async def deploy_resource(self, resource_attributes: AttributeDict):
        with self.brake.deploying(resource_attributes.drone_uuid):
            self.submitted.append(resource_attributes.drone_uuid)
        return AttributeDict(remote_resource_uuid="1", resource_status=Booting)


class FakeDrone:
    """What RequestState.run touches: resource_attributes, site_agent, set_state."""

    def __init__(self, uuid: str, site_agent: FakeSiteAgent) -> None:
        self.resource_attributes = AttributeDict(drone_uuid=uuid)
        self.site_agent = site_agent
        self.states: list = []

    async def set_state(self, state) -> None:
        self.states.append(state)


async def test_tardis_request_state_sends_a_braked_drone_down():
    clock = Clock()
    brake = make(clock)
    agent = FakeSiteAgent(brake)
    healthy = FakeDrone("netlab-first", agent)
    await RequestState.run(healthy)
    assert [type(s) for s in healthy.states] == [BootingState]
    trip(brake, clock)
    drone = FakeDrone("netlab-braked", agent)
    await RequestState.run(drone)
    assert [type(s) for s in drone.states] == [DownState]
    assert agent.submitted == ["netlab-first"]  # nothing submitted while braked


def test_a_black_hole_gets_a_bounded_number_of_jobs():
    """The figures in docs/adapter.md: defaults, COBalD asking every second."""
    clock = Clock()
    brake = SiteBrake("NetLab", BrakeSettings(), clock=clock)
    submitted: list[tuple[float, str]] = []
    start = clock.now
    for second in range(3 * 3600):
        uuid = f"netlab-{second}"
        try:
            brake.check(uuid)
        except SiteBraked:
            pass
        else:
            brake.submitted(uuid)
            submitted.append((clock.now - start, uuid))
            brake.observed(uuid, Running)
        clock.advance(1)
        for _, old in submitted[-1:]:
            brake.observed(old, Deleted)  # every drone ends a second after start
    tripped_at = submitted[brake.settings.after - 1][0] + 1
    after_trip = [t - tripped_at for t, _ in submitted[brake.settings.after :]]
    assert len([t for t in after_trip if t < 600]) == 3  # probes at ~60, 180, 420 s
    assert len([t for t in after_trip if t < 3600]) == 5  # + 900, 1860 s
    gaps = [b - a for a, b in zip(after_trip, after_trip[1:])]
    assert max(gaps) <= 3600 + 2 and gaps[-1] >= 3600  # then one per hour
