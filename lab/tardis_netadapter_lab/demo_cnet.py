"""The demo in mode ``container-net`` (issue 15): the ALICE EPN's partition.

``tardis-netadapter demo --mode container-net`` runs two NUMA-bound drones
on one worker; each one's container has its own address on the lab's
partition (CNI through the site-local setuid apptainer), the worker none.
Half-way one drone's job is killed with SIGKILL, as a node's OOM killer or
``scancel --signal=KILL`` would: the demo watches its address go back to the
partition's pool (the CNI DEL of the lab's apptainer, or its collection of a
lease whose holder is gone) while the other drone goes on. Everything is
observed from the root namespace by reading files and asking the lab.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .daemon import heartbeat_record

#: how long the demo watches the killed drone's address
WATCH = 30.0


def cnet_column(lab: Any, uuid: str) -> str:
    """The container's own address and whether its reporter is content."""
    net = heartbeat_record(lab, uuid).get("container_net") or {}
    if not net:
        return "-"
    if net.get("ok"):
        return f"ok {net.get('address')} (pool sees {net.get('seen') or '?'})"
    return f"BROKEN: {net.get('reason') or '?'}"


def path_line(lab: Any) -> str:
    held = len(lab.partition_leases())
    return f"container on the partition (addresses held: {held}) -> gateway -> pool"


def leased(lab: Any) -> set[str]:
    """The partition addresses host-local IPAM holds now."""
    return {path.name for path in lab.partition_leases()}


def run_fault(
    lab: Any,
    available: dict[str, str],
    events: Any,
    pool: Callable[[], dict[str, Any]],
) -> None:
    """SIGKILL one drone's job; record when its address is back in the pool."""
    uuid, job = next(iter(available.items()))
    address = (heartbeat_record(lab, uuid).get("container_net") or {}).get("address")
    others = [u for u in available if u != uuid]
    before = leased(lab)
    events.fault_at = time.monotonic()
    lab.run("login", ["scancel", "--signal=KILL", "--full", job], user=lab.drone_user)
    events.fault = (uuid, job, 0)
    events.say(
        f"FAULT: SIGKILL to {uuid}'s job {job}; its container held {address} "
        f"({len(before)} partition addresses held)"
    )
    while time.monotonic() - events.fault_at < WATCH:
        if address and address not in leased(lab):
            events.detected_at = events.healed_at = time.monotonic()
            still = [u for u in others if pool().get(u, {}).get("connected")]
            events.say(
                f"healed: {address} back in the partition's pool after "
                f"{events.since_fault():.1f}s (CNI DEL); {len(still)} of "
                f"{len(others)} other drones still registered"
            )
            return
        time.sleep(0.2)
    events.say(f"{address} still leased {WATCH:.0f}s after the kill")
