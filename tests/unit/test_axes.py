"""The two axes stay independent: a toy batch system and a toy network mode plug in.

Each toy lives in files of its own under tests/unit/toys/ and is added with
one register call; nothing else of the product is changed. Through the same
lookup TARDIS uses (``tardis.adapters.sites.<name>``), the adapter renders a
drone script, submits it, polls it, judges its heartbeats and cancels it with
the toy batch system's commands. If adding a batch system ever needs an edit
elsewhere, this test is where it shows.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

import pytest
from tardis.agents.siteagent import SiteAgent
from tardis.configuration.configuration import Configuration
from tardis.exceptions.tardisexceptions import TardisDroneCrashed
from tardis.interfaces.siteadapter import ResourceStatus
from tardis.utilities.attributedict import AttributeDict
from tardis.utilities.executors.shellexecutor import ShellExecutor
from toys import toy_mode, toybatch

from tardis_netadapter import batch, modes, poolfactory, siteadapter

NETWORK = {
    "tunnel": {"hops": [{"host": "10.66.1.1", "user": "drone"}]},
    "firewall": {"idle_timeout": 30},
    "pool": {"collector": "10.66.2.1:9618"},
    "monitoring": {"heartbeat_dir": "~/hb"},
}


@pytest.fixture(params=["socks", "toy"])
def toy_site(request, tmp_path, monkeypatch):
    """A login node whose batch system is Toy, in mode socks or the toy mode.

    Both toys are registered the way a plug-in would register them.
    """
    bin_dir, state, home = tmp_path / "bin", tmp_path / "toy", tmp_path / "home"
    bin_dir.mkdir()
    (home / "hb").mkdir(parents=True)
    toybatch.install(bin_dir, state)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("HOME", str(home))
    batch.register(toybatch.ToyDriver)
    network = dict(NETWORK)
    if request.param == "toy":
        modes.register(toy_mode)
        network = {
            "mode": "toy",
            "toy": {"greeting": "hi from the toy"},
            "firewall": {"idle_timeout": 30},
            "pool": {"collector": "10.66.2.1:9618"},
            "monitoring": {"heartbeat_dir": "~/hb"},
        }
    saved = dict(Configuration._shared_state)
    siteadapter.reset_caches()
    Configuration._shared_state.clear()
    Configuration().update_config(
        {
            "Sites": [{"name": "ToySite", "adapter": "NetToy", "quota": 4}],
            "ToySite": {
                "executor": ShellExecutor(),
                "MachineTypes": ["m"],
                "MachineTypeConfiguration": {"m": {"Minutes": 90, "Queue": "long"}},
                "MachineMetaData": {"m": {"Cores": 4, "Memory": 8, "Disk": 20}},
                "Network": network,
            },
        }
    )
    yield state, home / "hb", request.param
    Configuration._shared_state.clear()
    Configuration._shared_state.update(saved)
    siteadapter.reset_caches()
    batch.DRIVERS.pop("NetToy", None)
    sys.modules.pop("tardis.adapters.sites.nettoy", None)
    if request.param == "toy":
        modes.unregister("toy")


def heartbeat(hb: Path, uuid: str, ok: bool = True) -> None:
    now = time.time()
    record = {
        "v": 1,
        "uuid": uuid,
        "time": now,
        "seq": 1,
        "probes": [{"endpoint": "cm:9618", "ok": ok, "latency_ms": 5.0}],
        "last_ok": now if ok else None,
        "failing_stage": None if ok else "chain",
    }
    (hb / f"{uuid}.json").write_text(json.dumps(record) + "\n")


async def test_toy_plugins_run_drones_without_any_other_change(toy_site):
    state, hb, mode = toy_site
    poolfactory.register()  # what the pool factory does before TARDIS looks
    module = importlib.import_module("tardis.adapters.sites.nettoy")
    adapter = module.NetToyAdapter(machine_type="m", site_name="ToySite")
    agent = SiteAgent(adapter)
    adapter.poller.max_age = 0  # every call below is a new cycle

    # render + submit: the drone's values reach the toy system, the script on stdin
    drone = AttributeDict(drone_uuid="toysite-00000000aa")
    deployed = await agent.deploy_resource(drone)
    assert deployed.remote_resource_uuid == "1"
    assert deployed.resource_status is ResourceStatus.Booting
    script = toybatch.script_of(state, "1")
    assert script.startswith("#!/bin/bash")
    assert "TNA_JOB_ID=${TOY_JOB_ID:-}" in script  # the driver's variable, once
    if mode == "toy":  # the mode's stage, setting and library, and no socks parts
        assert "toy_stage" in script and "hi from the toy" in script
        assert "write_proxychains_conf" not in script and "tunnel_stage" not in script
    else:
        assert "tunnel_stage" in script
    drone.update(deployed)

    # poll: queued, then running and connected
    assert (
        await agent.resource_status(drone)
    ).resource_status is ResourceStatus.Booting
    toybatch.set_state(state, "1", "R", seconds=30)
    heartbeat(hb, "toysite-00000000aa")
    assert (
        await agent.resource_status(drone)
    ).resource_status is ResourceStatus.Running
    judgement = siteadapter.site_monitor("ToySite").judgement("toysite-00000000aa")
    assert judgement.verdict.value == "connected"

    # judge: a second drone running for an hour without a heartbeat is ended
    silent = AttributeDict(drone_uuid="toysite-00000000bb")
    silent.update(await agent.deploy_resource(silent))
    toybatch.set_state(state, silent.remote_resource_uuid, "R", seconds=3600)
    with pytest.raises(TardisDroneCrashed, match="never-connected"):
        await agent.resource_status(silent)

    # cancel with the toy's own command; a second cancel is "already gone"
    await agent.terminate_resource(drone)
    assert (
        await agent.resource_status(drone)
    ).resource_status is ResourceStatus.Deleted
    await agent.terminate_resource(
        AttributeDict(drone_uuid="x", remote_resource_uuid="9")
    )
