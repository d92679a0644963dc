"""Batch systems: the driver interface, the batch-neutral poller, one module per system.

* ``driver``   what a batch system is to the adapter (:class:`BatchDriver`)
* ``poller``   one listing per site and cycle, never taken on trust
* ``runner``   a command with a deadline on the login node and here
* ``options``  TARDIS's ``short``/``long`` option form
* ``slurm``    the Slurm driver (``adapter: NetSlurm``)
* ``gridengine`` the Grid Engine driver (``adapter: NetGridEngine``)

:func:`register` adds a driver; the pool factory makes every registered
driver's ``adapter_name`` resolvable by TARDIS (poolfactory.py).
"""

from __future__ import annotations

from .driver import BatchDriver, BatchOutputError, JobRecord
from .gridengine import GridEngineDriver
from .slurm import SlurmDriver

#: registered drivers by the ``adapter:`` name TARDIS knows them by
DRIVERS: dict[str, type[BatchDriver]] = {}


def register(driver: type[BatchDriver]) -> type[BatchDriver]:
    """Make a driver known by its ``adapter_name`` (usable as a class decorator).

    Refuses a broken declaration and a second driver under a taken name, so
    a plug-in cannot silently replace NetSlurm.
    """
    problems = driver.check_declaration()
    if problems:
        raise TypeError("; ".join(problems))
    existing = DRIVERS.get(driver.adapter_name)
    if existing is not None and existing is not driver:
        raise ValueError(
            f"adapter name {driver.adapter_name!r} is taken by {existing.__name__}"
        )
    DRIVERS[driver.adapter_name] = driver
    return driver


def driver_for(adapter_name: object) -> type[BatchDriver] | None:
    """The driver registered under ``adapter_name``, or None."""
    return DRIVERS.get(adapter_name) if isinstance(adapter_name, str) else None


register(SlurmDriver)
register(GridEngineDriver)

__all__ = [
    "DRIVERS",
    "BatchDriver",
    "BatchOutputError",
    "GridEngineDriver",
    "JobRecord",
    "SlurmDriver",
    "driver_for",
    "register",
]
