"""NetGridEngine as TARDIS uses it: a drone submitted, followed and cancelled through the adapter.

A fake login node answers qsub, the driver's qstat listing (in the form the
lab recorded) and qdel, with qdel's real wording for a job already gone
(tests/unit/data/gridengine/qdel_gone.txt). TARDIS finds the adapter by
``adapter: NetGridEngine`` through the pool factory's alias.
"""

from __future__ import annotations

import importlib
import shlex

import pytest
from fakesite import HTCONDOR, NETWORK, first_command
from tardis.configuration.configuration import Configuration
from tardis.exceptions.executorexceptions import CommandExecutionFailure
from tardis.interfaces.siteadapter import ResourceStatus
from tardis.utilities.attributedict import AttributeDict

from tardis_netadapter import poolfactory, siteadapter
from tardis_netadapter.batch import GridEngineDriver
from tardis_netadapter.batch.poller import LISTING_BEGIN, LISTING_END
from tardis_netadapter.schema import ConfigurationError
from tardis_netadapter.siteconfig import load_site_settings

CLOCK = 1796158800  # 2026-12-01T21:00:00 UTC


class FakeGridEngine:
    """A login node with qsub, qstat -xml and qdel; records every call."""

    def __init__(self) -> None:
        self.jobs: dict[str, tuple[str, str]] = {}  # id -> (state, name)
        self.calls: list[tuple[str, str | None]] = []
        self.next_id = 41

    async def run_command(self, command: str, stdin_input: str | None = None):
        self.calls.append((command, stdin_input))
        words = first_command(command)
        if words[0] == "qsub":
            job_id = str(self.next_id)
            self.next_id += 1
            self.jobs[job_id] = ("qw", words[words.index("-N") + 1])
            return AttributeDict(stdout=f"{job_id}\n", stderr="", exit_code=0)
        if words[:2] == ["sh", "-c"] and "qstat -xml" in words[2]:
            return AttributeDict(stdout=self.listing(), stderr="", exit_code=0)
        if words[0] == "qdel":
            job_id = words[-1]
            if job_id not in self.jobs:
                raise CommandExecutionFailure(
                    message=f"Run command {command} failed",
                    exit_code=1,
                    stdout=f'denied: job "{job_id}" does not exist',
                    stderr="",
                )
            state, name = self.jobs[job_id]
            self.jobs[job_id] = ("d" + state, name)
            return AttributeDict(
                stdout=f"drone has registered the job {job_id} for deletion\n",
                stderr="",
                exit_code=0,
            )
        raise AssertionError(f"unexpected command {command}")

    def listing(self) -> str:
        running, pending = [], []
        for job_id, (state, name) in self.jobs.items():
            placed = "q" not in state
            (running if placed else pending).append(
                f'<job_list state="{"running" if placed else "pending"}">'
                f"<JB_job_number>{job_id}</JB_job_number><JB_name>{name}</JB_name>"
                f"<JB_owner>drone</JB_owner><state>{state}</state>"
                + (
                    "<JAT_start_time>2026-12-01T20:30:00</JAT_start_time>"
                    "<queue_name>long@worker1</queue_name>"
                    if placed
                    else "<queue_name></queue_name>"
                )
                + "<slots>8</slots></job_list>"
            )
        document = (
            "<?xml version='1.0'?>\n<job_info><queue_info>"
            + "".join(running)
            + "</queue_info><job_info>"
            + "".join(pending)
            + "</job_info></job_info>"
        )
        return f"{LISTING_BEGIN}\n{CLOCK}\n{document}\n{LISTING_END}\n"

    def count(self, program: str) -> int:
        return sum(1 for command, _ in self.calls if program in command)


def section(executor, **machine_type) -> dict:
    return {
        "executor": executor,
        "MachineTypes": ["smp"],
        "MachineTypeConfiguration": {
            "smp": {
                "Walltime": "24:00:00",
                "Queue": "long",
                "ParallelEnvironment": "smp",
                **machine_type,
            }
        },
        "MachineMetaData": {"smp": {"Cores": 8, "Memory": 16, "Disk": 40}},
        "Network": NETWORK,
        "status_max_age": 0.0001,
    }


@pytest.fixture
def grid_engine(renders):
    """A site NotreDameGE with ``adapter: NetGridEngine`` on a fake login node."""
    saved = dict(Configuration._shared_state)
    siteadapter.reset_caches()
    login = FakeGridEngine()
    Configuration._shared_state.clear()
    Configuration().update_config(
        {
            "Sites": [{"name": "NotreDameGE", "adapter": "NetGridEngine", "quota": 8}],
            "NotreDameGE": section(login),
        }
    )
    poolfactory.register()
    module = importlib.import_module("tardis.adapters.sites.netgridengine")
    adapter = module.NetGridEngineAdapter(machine_type="smp", site_name="NotreDameGE")
    yield adapter, login
    Configuration._shared_state.clear()
    Configuration._shared_state.update(saved)
    siteadapter.reset_caches()


def drone(uuid: str = "notredamege-0123456789", job_id=None) -> AttributeDict:
    return AttributeDict(
        drone_uuid=uuid,
        remote_resource_uuid=job_id,
        obs_machine_meta_data_translation_mapping=HTCONDOR,
    )


async def test_a_drone_from_qsub_to_qdel(grid_engine):
    adapter, login = grid_engine
    deployed = await adapter.deploy_resource(drone())
    assert deployed.remote_resource_uuid == "41"
    assert deployed.resource_status is ResourceStatus.Booting
    # qsub got the rendered script on stdin and the drone's values through -v
    command, script = next(call for call in login.calls if "qsub" in call[0])
    assert script.startswith("#!/bin/bash")
    words = first_command(command)
    assert words[words.index("-N") + 1] == "notredamege-0123456789"
    assert "TardisDroneUuid=notredamege-0123456789" in words[words.index("-v") + 1]
    assert words[words.index("-pe") + 1 : words.index("-pe") + 3] == ["smp", "8"]

    attributes = drone(job_id="41")
    login.jobs["41"] = ("r", "notredamege-0123456789")
    status = await adapter.resource_status(attributes)
    assert status.resource_status is ResourceStatus.Running

    await adapter.terminate_resource(attributes)
    assert login.jobs["41"][0] == "dr"
    status = await adapter.resource_status(attributes)
    # still listed, so it may still run: cleaned up, not yet gone
    assert status.resource_status is ResourceStatus.Stopped
    await adapter.terminate_resource(attributes)  # "already in deletion": no error
    login.jobs["41"] = ("z", "notredamege-0123456789")
    status = await adapter.resource_status(attributes)
    assert status.resource_status is ResourceStatus.Deleted  # qdel seen as the end

    del login.jobs["41"]  # purged: qdel says it does not exist, which is no error
    await adapter.terminate_resource(attributes)
    assert login.count("qdel") == 3


async def test_held_and_error_states_reach_tardis_as_documented(grid_engine):
    adapter, login = grid_engine
    login.jobs["7"] = ("hqw", "notredamege-aa")
    login.jobs["8"] = ("Eqw", "notredamege-bb")
    held = await adapter.resource_status(drone("notredamege-aa", "7"))
    failed = await adapter.resource_status(drone("notredamege-bb", "8"))
    assert held.resource_status is ResourceStatus.Stopped
    assert failed.resource_status is ResourceStatus.Error


async def test_one_listing_serves_every_drone(grid_engine):
    adapter, login = grid_engine
    for index in range(20):
        login.jobs[str(100 + index)] = ("r", f"notredamege-{index:02d}")
    adapter.poller.max_age = 60
    for index in range(20):
        status = await adapter.resource_status(
            drone(f"notredamege-{index:02d}", str(100 + index))
        )
        assert status.resource_status is ResourceStatus.Running
    assert login.count("qstat") == 1


def site_problems(**machine_type) -> list[str]:
    with pytest.raises(ConfigurationError) as caught:
        load_site_settings(
            "NotreDameGE", section(None, **machine_type), GridEngineDriver()
        )
    return caught.value.problems


def test_site_section_errors_name_the_key():
    (problem,) = site_problems(Walltime="24")
    assert problem.startswith(
        "NotreDameGE.MachineTypeConfiguration.smp.Walltime: got '24'"
    )


def test_the_drone_size_is_checked_against_the_machine_type():
    """Cores 8 without a PE, and 1G x 8 slots of h_vmem for a 16 GB drone."""
    problems = site_problems(ParallelEnvironment=None, MemoryPerSlot="1G")
    assert len(problems) == 2
    assert problems[0].startswith(
        "NotreDameGE.MachineTypeConfiguration.smp.ParallelEnvironment: missing "
        "for a drone of 8 cores"
    )
    assert problems[1].startswith(
        "NotreDameGE.MachineTypeConfiguration.smp.MemoryPerSlot: got '1G' x 8 slots"
    )


def test_render_shows_the_qsub_line(grid_engine):
    adapter, _ = grid_engine
    submission = adapter.submission("notredamege-0123456789")
    words = shlex.split(submission.command)
    assert words[:2] == ["qsub", "-terse"]
    assert submission.script.startswith("#!/bin/bash")
