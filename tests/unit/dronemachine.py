"""TARDIS's own Drone state machine on a fake site, for "never lose a drone" tests.

A real ``tardis.resources.drone.Drone`` whose site agent is a real
``SiteAgent`` around a ``NetSlurmAdapter`` on a ScriptedLoginNode (a real
/bin/sh with a fake Slurm, see fakesite.py), a stub batch system whose answers
the test sets, and no plugins. ``step`` runs one state's ``run()`` as
``Drone.run`` does each heartbeat; an exception escaping it is what stops the
COBalD daemon, so ``step`` turns it into a test failure (:class:`DaemonStopped`)
that names the drone, the state and the exception.
"""

from __future__ import annotations

import asyncio
import uuid as uuidlib
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

from fakesite import HTCONDOR, FakeSlurm, ScriptedLoginNode, site_section
from tardis.agents.batchsystemagent import BatchSystemAgent
from tardis.agents.siteagent import SiteAgent
from tardis.interfaces.batchsystemadapter import BatchSystemAdapter, MachineStatus
from tardis.interfaces.siteadapter import ResourceStatus
from tardis.interfaces.state import State
from tardis.resources.drone import Drone
from tardis.resources.dronestates import RequestState

from tardis_netadapter import siteadapter
from tardis_netadapter.siteadapter import NetSlurmAdapter

#: small, so a hung command costs the test suite little; every wait in the
#: tests is a multiple of it
COMMAND_TIMEOUT = 0.3
#: below the gap between two steps: every step's status comes from a fresh squeue
STATUS_MAX_AGE = 0.001


class DaemonStopped(AssertionError):
    """An exception escaped a drone state's run(): the COBalD daemon would stop."""


class StubBatchSystem(BatchSystemAdapter):
    """The overlay batch system (HTCondor) with answers the test sets per drone."""

    def __init__(self) -> None:
        self.status: dict[str, MachineStatus] = defaultdict(
            lambda: MachineStatus.Available
        )
        self.calls: list[tuple[str, str]] = []

    async def integrate_machine(self, drone_uuid: str) -> None:
        self.calls.append(("integrate", drone_uuid))

    async def disintegrate_machine(self, drone_uuid: str) -> None:
        self.calls.append(("disintegrate", drone_uuid))

    async def drain_machine(self, drone_uuid: str) -> None:
        self.calls.append(("drain", drone_uuid))

    async def get_allocation(self, drone_uuid: str) -> float:
        return 1.0

    async def get_utilisation(self, drone_uuid: str) -> float:
        return 1.0

    async def get_machine_status(self, drone_uuid: str) -> MachineStatus:
        return self.status[drone_uuid]

    @property
    def machine_meta_data_translation_mapping(self):
        return HTCONDOR


class DroneSite:
    """One COBalD/TARDIS daemon's view of the fake site: adapters, agents, drones.

    ``executor`` replaces the ScriptedLoginNode (e.g. TARDIS's ShellExecutor).
    ``restart()`` gives the view of a new daemon process on the same site: new
    executor (connection), adapter caches reset, new adapter objects; the
    queue (FakeSlurm) is the site's and stays.
    """

    def __init__(
        self,
        configure,
        slurm: FakeSlurm,
        root: Path,
        site_name: str = "NetLab",
        exit_255_raises: bool = False,
        executor: Any = None,
        **overrides,
    ) -> None:
        self._configure = configure
        self.slurm = slurm
        self.root = root
        self.site_name = site_name
        self._overrides = overrides
        self.login = ScriptedLoginNode(slurm, root, exit_255_raises=exit_255_raises)
        self.batch = StubBatchSystem()
        section = site_section(
            executor if executor is not None else self.login,
            command_timeout=COMMAND_TIMEOUT,
            status_max_age=STATUS_MAX_AGE,
            **overrides,
        )
        configure(
            section,
            site=site_name,
            drone_heartbeat_interval=1,
            drone_minimum_lifetime=None,
        )
        self._adapters: dict[str, NetSlurmAdapter] = {}

    def adapter(self, machine_type: str = "small") -> NetSlurmAdapter:
        """The machine type's adapter (TARDIS builds one per site and machine type)."""
        if machine_type not in self._adapters:
            self._adapters[machine_type] = NetSlurmAdapter(
                machine_type=machine_type, site_name=self.site_name
            )
        return self._adapters[machine_type]

    def _drone(self, machine_type: str = "small", **attributes) -> Drone:
        return Drone(
            site_agent=SiteAgent(self.adapter(machine_type)),
            batch_system_agent=BatchSystemAgent(self.batch),
            plugins=[],
            **attributes,
        )

    async def new_drone(self, machine_type: str = "small") -> Drone:
        """A drone as COBalD creates it: Drone.run's first lines put it in RequestState."""
        drone = self._drone(machine_type)
        drone.resource_attributes.resource_status = ResourceStatus.Booting
        await drone.set_state(RequestState())
        return drone

    async def drone_in(
        self, state: type[State], job_state: str = "RUNNING", machine_type="small"
    ) -> Drone:
        """A drone already in ``state`` whose job is in ``job_state`` at the site."""
        drone_uuid = f"{self.site_name.lower()}-{uuidlib.uuid4().hex[:10]}"
        job = self.slurm.submit(drone_uuid, state=job_state)
        drone = self._drone(
            machine_type,
            drone_uuid=drone_uuid,
            remote_resource_uuid=job.job_id,
            state=state(),
        )
        drone.resource_attributes.resource_status = (
            ResourceStatus.Running if job_state == "RUNNING" else ResourceStatus.Booting
        )
        return drone

    def restart(self) -> DroneSite:
        """A new daemon process on the same site (caches and connections are gone)."""
        siteadapter.reset_caches()
        return DroneSite(
            self._configure,
            self.slurm,
            self.root,
            site_name=self.site_name,
            exit_255_raises=self.login.exit_255_raises,
            **self._overrides,
        )

    def restore(self, drone: Drone, machine_type: str = "small") -> Drone:
        """The drone as TARDIS's SqliteRegistry restores it (no resource_status)."""
        attributes = drone.resource_attributes
        return self._drone(
            machine_type,
            remote_resource_uuid=attributes.remote_resource_uuid,
            drone_uuid=attributes.drone_uuid,
            state=type(drone.state)(),
            created=attributes.created,
            updated=attributes.updated,
        )

    def jobs_of(self, drone: Drone) -> list:
        """The site's jobs named after the drone (finished ones included)."""
        return self.slurm.named(drone.resource_attributes.drone_uuid)


def state_of(drone: Drone) -> str:
    return type(drone.state).__name__


def job_of(drone: Drone) -> Optional[str]:
    """The job id the drone tracks, as a string (None: it tracks none)."""
    job_id = drone.resource_attributes.get("remote_resource_uuid")
    return None if job_id is None else str(job_id)


async def step(drone: Drone) -> None:
    """One state's run(), as Drone.run does each heartbeat; escapes are failures."""
    state = drone.state
    try:
        await state.run(drone)
    except Exception as error:
        raise DaemonStopped(
            f"{type(error).__name__} escaped {state}.run() for drone "
            f"{drone.resource_attributes.drone_uuid}: {error!r} "
            "(this stops the COBalD daemon)"
        ) from error


async def cycle(drones: list[Drone]) -> None:
    """One heartbeat of several drones at once (they share the site's squeue)."""
    await asyncio.gather(*(step(drone) for drone in drones))


async def step_until(drone: Drone, state: type[State], max_steps: int = 8) -> int:
    """Step until the drone is in ``state``; returns the steps it took."""
    for steps in range(1, max_steps + 1):
        await step(drone)
        if isinstance(drone.state, state):
            return steps
    raise AssertionError(
        f"drone {drone.resource_attributes.drone_uuid} not in {state.__name__} "
        f"after {max_steps} steps; it is in {state_of(drone)}"
    )
