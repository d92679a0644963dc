"""The demo's faults in mode ``nat`` (issue 14): GSI's NAT router pair at work.

Half-way through ``tardis-netadapter demo --mode nat`` the master router's
keepalived is stopped (the VIPs move to the backup; conntrackd has already
given it the drones' connections), then a worker's link flaps (down,
addresses flushed, up, address back: the marked table's route is gone
until the route keeper puts it back). The drones are meant to notice
nothing: same Slurm jobs, same pool connections, ``route`` ok in their
heartbeats. Everything is observed from the root namespace by reading
files and asking the lab (no packet to a lab address from here).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Optional

from .daemon import heartbeat_record

#: how long the demo watches each fault before it gives up on it
WATCH = 30.0


def route_column(lab: Any, uuid: str) -> str:
    """What the drone's last heartbeat says about its NAT path."""
    route = heartbeat_record(lab, uuid).get("route") or {}
    if not route:
        return "-"
    if route.get("ok"):
        return f"ok via {route.get('via')} as {route.get('seen') or '?'}"
    return f"BROKEN: {route.get('reason') or '?'}"


def path_line(lab: Any) -> str:
    """The live view's path: which router holds the VIPs now."""
    master = lab.site_nat.master() or "no router"
    return f"marked route -> VIP on {master} -> SNAT 10.66.2.100 -> pool"


def _untouched(
    lab: Any, before: dict[str, dict[str, Any]], pool: Callable[[], dict]
) -> list[str]:
    """The drones whose pool connection is still the one from before."""
    now = pool()
    return [
        uuid
        for uuid, record in before.items()
        if now.get(uuid, {}).get("connected")
        and now[uuid].get("connect_count") == record.get("connect_count")
    ]


def _worker_of(lab: Any, job: str) -> Optional[str]:
    result = lab.run(
        "login", ["squeue", "-h", "-j", job, "-o", "%N"], user=lab.drone_user
    )
    node = result.stdout.strip()
    return node if node in lab.layout.worker_hosts else None


def run_faults(
    lab: Any,
    available: dict[str, str],
    events: Any,
    pool: Callable[[], dict[str, Any]],
) -> None:
    """Stop the master's keepalived, then flap a drone's worker link; record
    detection (the VIPs moved, the keeper repaired) and healing (every drone
    still on its first pool connection, route ok)."""
    before = {uuid: record for uuid, record in pool().items() if uuid in available}
    master = lab.site_nat.master() or "?"
    events.fault_at = time.monotonic()
    lab.site_nat.stop_keepalived(master, wait=False)
    events.fault = (next(iter(available)), master, 0)
    events.say(f"FAULT: stopped keepalived on {master}, the master NAT router")
    new_master = None
    while time.monotonic() - events.fault_at < WATCH and new_master is None:
        holder = lab.site_nat.master()
        new_master = holder if holder not in (None, master) else None
        time.sleep(0.05)
    if new_master is None:
        events.say(f"the VIPs did not move within {WATCH:.0f}s")
        return
    lab.site_nat.wait_master(new_master, timeout=WATCH)
    events.detected_at = time.monotonic()
    events.say(
        f"detected after {events.since_fault():.1f}s: the VIPs moved to "
        f"{new_master} (VRRP); conntrackd had given it the drones' flows"
    )
    time.sleep(2)  # a pool heartbeat or two through the new master
    kept = _untouched(lab, before, pool)
    events.say(
        f"{len(kept)} of {len(before)} drones still on their first pool "
        f"connection {events.since_fault():.1f}s after the fault"
    )
    uuid, job = next(iter(available.items()))
    worker = _worker_of(lab, job)
    if worker is not None:
        flapped = time.time()
        back = lab.site_nat.flap_worker_link(worker)
        events.say(f"FAULT: {worker}'s link flapped (down, addresses flushed, up)")
        repaired = None
        while time.monotonic() - back < WATCH:
            if lab.site_nat.routing(worker, "check").returncode == 0:
                repaired = time.monotonic() - back
                break
            time.sleep(0.1)
        events.say(
            f"route keeper on {worker}: marked route back {repaired:.1f}s after "
            "the address"
            if repaired is not None
            else f"route keeper on {worker}: NOT repaired within {WATCH:.0f}s"
        )
        if repaired is None:
            return
    else:
        flapped = time.time()
    deadline = time.monotonic() + WATCH
    while time.monotonic() < deadline:
        kept = _untouched(lab, before, pool)
        beats = [heartbeat_record(lab, uuid) for uuid in before]
        routes_ok = all(
            beat.get("time", 0) > flapped and (beat.get("route") or {}).get("ok")
            for beat in beats
        )
        if len(kept) == len(before) and routes_ok:
            events.healed_at = time.monotonic()
            events.say(
                f"healed: every drone untouched after {events.since_fault():.1f}s "
                "(same job, same pool connection, route ok in a new heartbeat)"
            )
            return
        time.sleep(0.5)
    events.say(f"not healed within {WATCH:.0f}s: {len(kept)} of {len(before)} kept")
