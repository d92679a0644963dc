#!/usr/bin/env python3
"""Status polling at scale: NetSlurm and NetGridEngine beside TARDIS's stock SlurmAdapter.

The adapters poll the same N drones through the same fake executor, which
sleeps a fixed latency per call (an SSH round trip to a login node) and
answers ``squeue`` with realistic lines for the jobs asked about (70 %
RUNNING, 20 % PENDING, 10 % COMPLETED), or, for NetGridEngine, its
``qstat -xml`` listing with the same mix (``r``, ``qw``, finished ``z``) in
the form Grid Engine 8.1.9 prints (tests/unit/data/gridengine/). One cycle = every drone asks for its
status once, concurrently, through TARDIS's SiteAgent (so handle_exceptions
and all per-drone glue are inside the measurement), as happens when drone
heartbeats line up. Per adapter and N: executor calls per cycle, wall time and
CPU time (``time.process_time``) per cycle, median over the cycles.

    python benchmarks/adapter_scale.py [--drones 1000 5000] [--cycles 5]
                                       [--latency 0.05] [--bulk-size 100]

The stock adapter runs with its defaults (bulk_size 100, bulk_delay 1 s);
NetSlurm with one squeue per site and cycle, NetGridEngine with one qstat.
TARDIS has no Grid Engine adapter, so the Grid Engine rows' "vs stock" is
against the stock Slurm adapter at the same N: the cost of the same work.
``--adapters`` picks which to run (default: all three). Output: a markdown table
(docs/benchmarks.md keeps the last one with its command line).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import platform
import re
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tardis.adapters.sites.slurm import SlurmAdapter
from tardis.agents.siteagent import SiteAgent
from tardis.configuration.configuration import Configuration
from tardis.interfaces.siteadapter import ResourceStatus
from tardis.utilities.attributedict import AttributeDict

from tardis_netadapter import siteadapter
from tardis_netadapter.batch import GridEngineDriver
from tardis_netadapter.batch.poller import LISTING_BEGIN, LISTING_END
from tardis_netadapter.siteadapter import NetSlurmAdapter, adapter_class

STATES = ["RUNNING"] * 7 + ["PENDING"] * 2 + ["COMPLETED"]
EXPECTED = {
    "RUNNING": ResourceStatus.Running,
    "PENDING": ResourceStatus.Booting,
    "COMPLETED": ResourceStatus.Deleted,
}
FIRST_JOB = 4_200_000
#: Grid Engine's state words for the same mix (z: finished, listed by -s z)
GE_STATE = {"RUNNING": "r", "PENDING": "qw", "COMPLETED": "z"}
#: the adapters, by the name in the table
STOCK, NETSLURM, NETGE = "TARDIS SlurmAdapter", "NetSlurm", "NetGridEngine"
ADAPTERS = {"stock": STOCK, "netslurm": NETSLURM, "netgridengine": NETGE}


def qstat_xml(ids: Sequence[str], state: dict[str, str], node: dict[str, str]) -> str:
    """A qstat -xml listing as Grid Engine 8.1.9 prints it (running jobs under
    queue_info, pending ones under job_info), after the driver's clock line."""
    running, pending = [], []
    for job in ids:
        word = GE_STATE[state[job]]
        placed = word != "qw"
        timing = (
            "<JAT_start_time>2026-12-01T20:00:00</JAT_start_time>"
            if placed
            else "<JB_submission_time>2026-12-01T19:59:00</JB_submission_time>"
        )
        (running if placed else pending).append(
            f'    <job_list state="{"running" if placed else "pending"}">\n'
            f"      <JB_job_number>{job}</JB_job_number>\n"
            "      <JAT_prio>0.50000</JAT_prio>\n"
            f"      <JB_name>bench-{job}</JB_name>\n"
            "      <JB_owner>drone</JB_owner>\n"
            f"      <state>{word}</state>\n"
            f"      {timing}\n"
            f"      <queue_name>{'long@' + node[job] if placed else ''}</queue_name>\n"
            "      <slots>8</slots>\n"
            "    </job_list>"
        )
    return "\n".join(
        [
            "1796158800",  # 2026-12-01T21:00:00 UTC, the login node's clock
            "<?xml version='1.0'?>",
            '<job_info  xmlns:xsd="http://arc.liv.ac.uk/repos/darcs/sge/source/'
            'dist/util/resources/schemas/qstat/qstat.xsd">',
            "  <queue_info>",
            *running,
            "  </queue_info>",
            "  <job_info>",
            *pending,
            "  </job_info>",
            "</job_info>",
        ]
    )


class FakeLoginNode:
    """squeue over a fake executor: fixed latency, realistic output, calls counted."""

    def __init__(self, drones: int, latency: float):
        self.latency = latency
        self.calls = 0
        self.ids = [str(FIRST_JOB + index) for index in range(drones)]
        self.state = {
            job: STATES[index % len(STATES)] for index, job in enumerate(self.ids)
        }
        node = {job: f"jrc{int(job) % 900:04d}" for job in self.ids}
        # what the stock adapter asks for: -o "%A|%N|%T" --job=<ids>
        self.stock_lines = {
            job: f"{job}|{node[job]}|{self.state[job]}" for job in self.ids
        }
        # what NetSlurm asks for: --me -o '%i|%T|%N|%r|%M|%j', between markers
        self.me_output = "\n".join(
            [
                LISTING_BEGIN,
                *(
                    f"{job}|{self.state[job]}|"
                    f"{node[job] if self.state[job] != 'PENDING' else ''}|"
                    f"{'None' if self.state[job] != 'PENDING' else 'Resources'}|"
                    f"{'1:00:00' if self.state[job] != 'PENDING' else '0:00'}|"
                    f"bench-{job}"
                    for job in self.ids
                ),
                LISTING_END,
            ]
        )
        # what NetGridEngine asks for: sh -c '... qstat -xml ...', between markers
        self.qstat_output = "\n".join(
            [LISTING_BEGIN, qstat_xml(self.ids, self.state, node), LISTING_END]
        )

    async def run_command(self, command: str, stdin_input: str | None = None):
        self.calls += 1
        await asyncio.sleep(self.latency)
        if "--me" in command:
            stdout = self.me_output
        elif "qstat -xml" in command:
            stdout = self.qstat_output
        else:
            match = re.search(r"--job=([\d,]+)", command)
            wanted = match.group(1).split(",") if match else []
            stdout = "\n".join(
                self.stock_lines[j] for j in wanted if j in self.stock_lines
            )
        return AttributeDict(stdout=stdout, stderr="", exit_code=0)


@dataclass
class Result:
    adapter: str
    drones: int
    calls: float
    wall: float
    cpu: float


#: the machine type of each adapter, the same drone (8 cores, 16 GB, 1 hour)
MACHINE_TYPE = {
    STOCK: {"Walltime": "60", "Partition": "batch", "StartupCommand": "drone.sh"},
    NETSLURM: {"Walltime": "60", "Partition": "batch"},
    NETGE: {"Walltime": "1:00:00", "Queue": "long", "ParallelEnvironment": "smp"},
}
SITE_ADAPTER = {STOCK: "Slurm", NETSLURM: "NetSlurm", NETGE: "NetGridEngine"}


def configure(executor: FakeLoginNode, kind: str) -> None:
    """A one-site TARDIS configuration using the fake login node."""
    Configuration._shared_state.clear()
    siteadapter.reset_caches()
    site = {
        "executor": executor,
        "MachineTypes": ["m"],
        "MachineTypeConfiguration": {"m": MACHINE_TYPE[kind]},
        "MachineMetaData": {"m": {"Cores": 8, "Memory": 16, "Disk": 40}},
    }
    if kind != STOCK:
        site["Network"] = {
            "tunnel": {"hops": [{"host": "login"}]},
            "pool": {"collector": "pool.example.org:9618"},
        }
        site["status_max_age"] = 30
    name = "Bench"
    Configuration().update_config(
        {"Sites": [{"name": name, "adapter": SITE_ADAPTER[kind]}], name: site}
    )


async def one_cycle(agent: SiteAgent, drones: Sequence[AttributeDict]) -> list:
    return await asyncio.gather(*(agent.resource_status(d) for d in drones))


async def measure(kind: str, drones: int, cycles: int, latency: float) -> Result:
    login = FakeLoginNode(drones, latency)
    configure(login, kind)
    netslurm = kind != STOCK  # one of ours: a poller with a settable clock
    if kind == STOCK:
        adapter = SlurmAdapter(machine_type="m", site_name="Bench")
    else:
        cls = NetSlurmAdapter if kind == NETSLURM else adapter_class(GridEngineDriver)
        adapter = cls(machine_type="m", site_name="Bench")
        clock = [0.0]
        adapter.poller.clock = lambda: clock[0]
    agent = SiteAgent(adapter)
    attributes = [
        AttributeDict(remote_resource_uuid=int(job) if not netslurm else job)
        for job in login.ids
    ]
    # warm-up cycle: imports, first-call caches; not measured
    await one_cycle(agent, attributes)
    calls, walls, cpus = [], [], []
    for _ in range(cycles):
        if netslurm:
            clock[0] += 60  # a new cycle: the last snapshot is too old
        gc.collect()
        before_calls = login.calls
        wall, cpu = time.perf_counter(), time.process_time()
        results = await one_cycle(agent, attributes)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        calls.append(login.calls - before_calls)
        for job, result in zip(login.ids, results):
            assert result.resource_status is EXPECTED[login.state[job]], (job, result)
    return Result(
        adapter=kind,
        drones=drones,
        calls=statistics.median(calls),
        wall=statistics.median(walls),
        cpu=statistics.median(cpus),
    )


def table(results: list[Result]) -> str:
    lines = [
        "| drones | adapter | executor calls / cycle | wall time / cycle | CPU time / cycle | CPU vs stock |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    stock = {r.drones: r for r in results if r.adapter == STOCK}
    for r in results:
        ratio = f"{r.cpu / stock[r.drones].cpu:.2f}x" if r.drones in stock else "-"
        lines.append(
            f"| {r.drones:,} | {r.adapter} | {r.calls:g} | {r.wall * 1000:.0f} ms "
            f"| {r.cpu * 1000:.0f} ms | {ratio} |"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> list[Result]:
    results = []
    kinds = [ADAPTERS[name] for name in ADAPTERS if name in args.adapters]
    for drones in args.drones:
        for kind in kinds:
            results.append(await measure(kind, drones, args.cycles, args.latency))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drones", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per call")
    parser.add_argument(
        "--adapters", nargs="+", choices=list(ADAPTERS), default=list(ADAPTERS)
    )
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # the Completed drones would log per cycle
    saved = dict(Configuration._shared_state)
    try:
        results = asyncio.run(main_async(args))
    finally:
        Configuration._shared_state.clear()
        Configuration._shared_state.update(saved)
        logging.disable(logging.NOTSET)
    print(
        f"<!-- python {platform.python_version()}, {platform.machine()}, "
        f"latency {args.latency * 1000:.0f} ms/call, median of {args.cycles} cycles -->"
    )
    print(table(results))
    # the target: NetSlurm against the stock Slurm adapter at the same N, and
    # one listing per cycle for each of ours whatever N. NetGridEngine's CPU is
    # reported, not held to the Slurm target: TARDIS has no Grid Engine adapter
    # to compare with, and qstat's XML costs more to read than squeue's lines.
    pairs = [
        (r, s)
        for r in results
        for s in results
        if r.adapter == NETSLURM and s.adapter == STOCK and s.drones == r.drones
    ]
    ok = all(r.calls <= s.calls and r.cpu <= 1.2 * s.cpu for r, s in pairs) and all(
        r.calls == 1 for r in results if r.adapter != STOCK
    )
    worst = max((r.cpu / s.cpu for r, s in pairs), default=None)
    print(
        "\ntarget (one listing per cycle; NetSlurm: calls <= stock, CPU <= 1.2x "
        f"stock): {'met' if ok else 'MISSED'}"
        + (f" (worst NetSlurm CPU ratio {worst:.2f}x)" if worst is not None else "")
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
