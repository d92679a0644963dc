"""The brake where operators see it: metrics exposition and ``status``."""

from __future__ import annotations

import json
import time

import pytest
from aioprometheus import Registry, render
from fakelogin import CONFIG
from tardis.interfaces.siteadapter import ResourceStatus

from tardis_netadapter import cli
from tardis_netadapter.brake import (
    BrakeSettings,
    BrakeSnapshot,
    SiteBrake,
    SiteBraked,
    default_state_file,
)
from tardis_netadapter.connectivity.metrics import ConnectivityMetrics
from tardis_netadapter.connectivity.report import brake_json, brake_line


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def engaged_brake(state_file=None, wall=None) -> tuple[SiteBrake, Clock]:
    """A NetLab brake tripped by five drones that never ran, 18 s ago."""
    clock = Clock(1000.0)
    brake = SiteBrake(
        "NetLab",
        BrakeSettings(),
        clock=clock,
        state_file=state_file,
        wall=wall or time.time,
    )
    for index in range(5):
        brake.submitted(f"netlab-{index}")
        brake.observed(f"netlab-{index}", ResourceStatus.Deleted)
    clock.now += 18
    return brake, clock


# -- metrics ---------------------------------------------------------------------


def test_brake_metrics_render_in_the_exposition_text():
    registry = Registry()
    metrics = ConnectivityMetrics(registry)
    brake, _ = engaged_brake()
    for _ in range(3):
        with pytest.raises(SiteBraked):
            brake.check("netlab-x")
    metrics.update_brake("NetLab", brake.snapshot())
    metrics.update_brake("NetLab", brake.snapshot())  # once per cycle, idempotent
    text = render(registry, [])[0].decode()
    assert 'tna_brake_engaged{site="NetLab"} 1' in text
    assert 'tna_brake_young_deaths_in_a_row{site="NetLab"} 5' in text
    assert 'tna_brake_refused_deploys_total{site="NetLab"} 3' in text
    assert 'tna_brake_trips_total{site="NetLab"} 1' in text
    assert 'tna_brake_next_probe_seconds{site="NetLab"} 42' in text


def test_brake_metrics_of_an_open_brake_are_zero():
    registry = Registry()
    metrics = ConnectivityMetrics(registry)
    brake = SiteBrake("NetLab", BrakeSettings())
    metrics.update_brake("NetLab", brake.snapshot())
    text = render(registry, [])[0].decode()
    assert 'tna_brake_engaged{site="NetLab"} 0' in text
    assert 'tna_brake_next_probe_seconds{site="NetLab"} 0' in text


# -- rendering -------------------------------------------------------------------


def test_brake_line_only_when_engaged():
    brake, _ = engaged_brake()
    assert brake_line(brake.snapshot()) == (
        "site NetLab: brake engaged: 5 drones in a row died within 300 s; "
        "next probe in 42 s"
    )
    assert brake_line(None) is None
    assert brake_line(SiteBrake("NetLab", BrakeSettings()).snapshot()) is None


def test_brake_line_with_a_probe_in_flight():
    brake, clock = engaged_brake()
    clock.now += 42
    brake.check("netlab-probe")
    assert brake_line(brake.snapshot()).endswith("; probe netlab-probe in flight")


def test_brake_json_keys():
    brake, _ = engaged_brake()
    document = brake_json(brake.snapshot())
    assert set(document) == {
        "site",
        "enabled",
        "engaged",
        "young_deaths_in_a_row",
        "trips",
        "refused",
        "next_probe_in",
        "probe",
        "backoff",
        "min_lifetime",
        "after",
        "last_reason",
        "updated",
        "held",
        "headline",
    }
    assert document["engaged"] is True and document["next_probe_in"] == 42
    assert brake_json(None) is None


# -- the status command ----------------------------------------------------------


def test_status_shows_an_engaged_brake_first(login, capsys, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(login["tmp"] / "state"))
    monkeypatch.setenv("PATH", login["env"]["PATH"])
    login["jobs"].write_text("21|PENDING|netlab-aaa|0:00\n")
    config = login["tmp"] / "cobald.yml"
    config.write_text(CONFIG.format(hb=login["hb"]))

    assert cli.main(["status", str(config)]) == 0  # no state file: no brake line
    assert "brake" not in capsys.readouterr().out
    assert cli.main(["status", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["brake"] is None

    engaged_brake(default_state_file("NetLab"))  # the adapter's process wrote it
    assert cli.main(["status", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(
        "site NetLab: brake engaged: 5 drones in a row died within 300 s; "
        "next probe in "
    )
    assert lines[1].split()[0] == "DRONE"
    assert cli.main(["status", str(config), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["brake"]["engaged"] is True
    assert document["brake"]["young_deaths_in_a_row"] == 5
    assert 0 <= document["brake"]["next_probe_in"] <= 60
    assert document["drones"][0]["uuid"] == "netlab-aaa"


def test_status_reads_an_explicit_state_file_and_ignores_a_lifted_brake(
    login, capsys, monkeypatch
):
    monkeypatch.setenv("PATH", login["env"]["PATH"])
    login["jobs"].write_text("")
    config = login["tmp"] / "cobald.yml"
    config.write_text(CONFIG.format(hb=login["hb"]))
    path = login["tmp"] / "somewhere" / "brake.json"
    brake, clock = engaged_brake(path)
    argv = ["status", str(config), "--brake-state", str(path)]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.startswith("site NetLab: brake engaged")
    clock.now += 42
    brake.check("netlab-probe")
    brake.submitted("netlab-probe")
    brake.connected("netlab-probe")  # survived: lifted
    assert cli.main(argv) == 0
    assert "brake" not in capsys.readouterr().out
    assert cli.main([*argv, "--json"]) == 0
    state = json.loads(capsys.readouterr().out)["brake"]
    assert state["engaged"] is False
    assert state["last_reason"] == (
        "drone netlab-probe survived (connected to the pool)"
    )


def test_snapshot_is_a_frozen_copy():
    brake, _ = engaged_brake()
    snapshot = brake.snapshot()
    assert isinstance(snapshot, BrakeSnapshot)
    brake.connected("netlab-z")
    assert snapshot.engaged and not brake.snapshot().engaged
