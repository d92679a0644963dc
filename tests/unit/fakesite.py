"""A fake Slurm site for adapter unit tests: executor, site section, TARDIS config.

The executor answers sbatch, squeue and scancel like a login node and records
every call; ``configure`` loads a site into TARDIS's Configuration borg and
restores it afterwards; ``renders`` replaces the drone-script renderer.
"""

from __future__ import annotations

import asyncio
import shlex
import sys
import types

import pytest
from tardis.configuration.configuration import Configuration
from tardis.exceptions.executorexceptions import CommandExecutionFailure
from tardis.utilities.attributedict import AttributeDict

import tardis_netadapter
from tardis_netadapter import siteadapter
from tardis_netadapter.batch import slurm
from tardis_netadapter.siteadapter import NetSlurmAdapter

HTCONDOR = AttributeDict(Cores=1, Memory=1024, Disk=1024 * 1024)


def first_command(command: str) -> list[str]:
    """The words of the batch command in ``command``, as a shell splits them.

    Skips the adapter's wrappers: ``printf`` marker lines before it (``&&``
    lists) and the login node's ``timeout -k K N`` in front of it.
    """
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&")
    lexer.whitespace_split = True
    segments: list[list[str]] = [[]]
    for word in lexer:
        if word in (";", "&&"):
            segments.append([])
        else:
            segments[-1].append(word)
    for words in segments:
        if words and words[0] == "timeout":
            words = words[4:]  # timeout -k K N
        if words and words[0] != "printf":
            return words
    return segments[0]


def squeue_output(lines: list[str]) -> str:
    """squeue's lines between the poller's markers, as the login node prints them."""
    return "\n".join([slurm.SQUEUE_BEGIN, *lines, slurm.SQUEUE_END])


class FakeExecutor:
    """A site's login node: sbatch, squeue and scancel answers, every call recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []
        self.jobs: dict[str, str] = {}
        self.next_id = 100
        self.sbatch_stdout: str | None = None
        self.fail: Exception | None = None
        self.latency = 0.0

    async def run_command(self, command: str, stdin_input: str | None = None):
        self.calls.append((command, stdin_input))
        if self.latency:
            await asyncio.sleep(self.latency)
        if self.fail is not None:
            raise self.fail
        words = first_command(command)
        if words[0] == "sbatch":
            job_id = str(self.next_id)
            self.next_id += 1
            name = next(w for w in words if w.startswith("--job-name=")).split("=", 1)[
                1
            ]
            self.jobs[job_id] = f"PENDING|{name}"
            stdout = job_id if self.sbatch_stdout is None else self.sbatch_stdout
            return AttributeDict(stdout=stdout + "\n", stderr="", exit_code=0)
        if words[0] == "squeue":
            lines = []
            for job_id, entry in self.jobs.items():
                state, name = entry.split("|")
                lines.append(f"{job_id}|{state}|worker1|None|{name}")
            return AttributeDict(stdout=squeue_output(lines), stderr="", exit_code=0)
        if words[0] == "scancel":
            job_id = words[-1]
            state = self.jobs.get(job_id, "|").split("|")[0]
            if job_id not in self.jobs or state in ("COMPLETED", "CANCELLED"):
                raise CommandExecutionFailure(
                    message=f"Run command {command} failed",
                    exit_code=1,
                    stdout="",
                    stderr=f"scancel: error: Kill job error on job id {job_id}: "
                    "Job/step already completing or completed",
                )
            self.jobs[job_id] = self.jobs[job_id].replace(state, "CANCELLED")
            return AttributeDict(stdout="", stderr="", exit_code=0)
        raise AssertionError(f"unexpected command {command}")

    def count(self, program: str) -> int:
        return sum(
            1 for command, _ in self.calls if first_command(command)[0] == program
        )


NETWORK = {
    "tunnel": {"hops": [{"host": "10.66.1.1", "user": "drone"}]},
    "firewall": {"idle_timeout": 30},
    "pool": {"collector": "10.66.2.1:9618"},
}


def site_section(executor, **overrides) -> dict:
    section = {
        "executor": executor,
        "MachineTypes": ["small", "large"],
        "MachineTypeConfiguration": {
            "small": {"Walltime": "60", "Partition": "batch"},
            "large": {
                "Walltime": "1-00:00:00",
                "SubmitOptions": {"long": {"account": "a b;rm -rf /"}},
                "TerminateOptions": {"long": {"full": None}},
            },
        },
        "MachineMetaData": {
            "small": {"Cores": 2, "Memory": 4, "Disk": 10},
            "large": {"Cores": 8, "Memory": 32, "Disk": 100},
        },
        "Network": NETWORK,
    }
    section.update(overrides)
    return section


@pytest.fixture
def renders(monkeypatch) -> list[tuple]:
    """A stand-in for render.render_drone_script (the drone-scripts work), counting calls."""
    calls: list[tuple] = []

    def render_drone_script(profile, budget, site_name, machine_type):
        calls.append((site_name, machine_type))
        return f"#!/bin/bash\n# {site_name} {machine_type} {profile.mode}\nexec true\n"

    fake = types.ModuleType("tardis_netadapter.render")
    fake.render_drone_script = render_drone_script
    monkeypatch.setitem(sys.modules, "tardis_netadapter.render", fake)
    monkeypatch.setattr(tardis_netadapter, "render", fake, raising=False)
    return calls


@pytest.fixture
def configure(renders):
    """Load a TARDIS configuration into the Configuration borg; restore it afterwards."""
    saved = dict(Configuration._shared_state)
    siteadapter.reset_caches()

    def apply(section: dict, site: str = "NetLab") -> None:
        Configuration._shared_state.clear()
        Configuration().update_config(
            {
                "Sites": [{"name": site, "adapter": "NetSlurm", "quota": 8}],
                site: section,
            }
        )

    yield apply
    Configuration._shared_state.clear()
    Configuration._shared_state.update(saved)
    siteadapter.reset_caches()


@pytest.fixture
def executor() -> FakeExecutor:
    return FakeExecutor()


@pytest.fixture
def adapter(configure, executor) -> NetSlurmAdapter:
    configure(site_section(executor))
    return NetSlurmAdapter(machine_type="small", site_name="NetLab")


def drone(uuid: str = "netlab-0123456789", job_id=None) -> AttributeDict:
    return AttributeDict(
        drone_uuid=uuid,
        remote_resource_uuid=job_id,
        obs_machine_meta_data_translation_mapping=HTCONDOR,
    )
