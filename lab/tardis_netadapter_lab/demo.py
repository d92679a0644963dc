"""``tardis-netadapter demo [--minutes N] [--mode socks|vpn|nat|container-net]``: the whole path, live, in the lab.

Brings a lab up (a restricted site on this machine), runs the real COBalD
daemon with the NetSlurm adapter against it, keeps the pool busy so TARDIS
wants drones, shows drones by TARDIS state and connectivity verdict refreshed
in place, kills one drone's tunnel half-way so the healing is visible, then
tears everything down and prints a summary. Ctrl-C tears down cleanly.
``--mode vpn`` (issue 13) runs configs/lab-vpn.yml instead: one drone in mode
vpn (openconnect to the DMZ's ocserv), shown with its tun address and
transport; half-way the DMZ's ocserv is restarted, and the demo shows the
drone's supervisor log in again and the payload's registration going on.
``--mode nat`` (issue 14) runs configs/lab-nat.yml with the lab's site NAT
up: two drones whose marked traffic leaves through the keepalived router
pair; half-way the master router's keepalived is stopped and a worker's
link flaps, and the drones go on untouched (demo_nat.py).
``--mode container-net`` (issue 15) runs configs/lab-cnet.yml: two
NUMA-bound drones on one worker, each container with its own partition
address; half-way one job is SIGKILLed and its address goes back to the
partition's pool (demo_cnet.py).
Needs root (network namespaces); every daemon runs inside the lab. Part of the
lab distribution: the product CLI finds it through the
``tardis_netadapter.commands`` entry-point group.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from . import demo_cnet, demo_nat

SITE = "NetLab"
DEMO_LAB = "tnademo"


def add_parser(subparsers: Any) -> None:
    """Register ``demo``."""
    parser = subparsers.add_parser(
        "demo",
        help="run drones through a simulated restricted site, live (needs root)",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=4.0,
        help="how long to run once the first drone is up (default 4)",
    )
    parser.add_argument("--name", default=DEMO_LAB, help="lab name (default tnademo)")
    parser.add_argument(
        "--mode",
        choices=("socks", "vpn", "nat", "container-net"),
        default="socks",
        help="socks: configs/lab.yml, the ssh tunnel of a drone is killed half-way; "
        "vpn: configs/lab-vpn.yml, the DMZ's ocserv is restarted half-way; "
        "nat: configs/lab-nat.yml, the master NAT router's keepalived is stopped "
        "and a worker's link flaps half-way; container-net: configs/lab-cnet.yml, "
        "one of two NUMA-bound drones is SIGKILLed half-way (default socks)",
    )
    parser.set_defaults(func=run)


# --------------------------------------------------------------------------
# what the demo observes
# --------------------------------------------------------------------------


@dataclass
class Events:
    """The story of the run, for the live view and the summary."""

    started: float = field(default_factory=time.monotonic)
    lines: list[str] = field(default_factory=list)
    first_available: Optional[float] = None
    peak_available: int = 0
    mode: str = "socks"
    fault: Optional[tuple[str, str, int]] = None  # drone, host, killed pid
    fault_at: Optional[float] = None
    detected_at: Optional[float] = None
    healed_at: Optional[float] = None

    def say(self, text: str) -> None:
        self.lines.append(f"{time.monotonic() - self.started:6.1f}s  {text}")

    def since_fault(self) -> float:
        return time.monotonic() - (self.fault_at or time.monotonic())


def connectivity_rows(lab: Any, settings: Any) -> list[Any]:
    """The same rows ``tardis-netadapter status`` shows, gathered inside the lab."""
    from tardis_netadapter.commands.status import collect_rows
    from tardis_netadapter.connectivity.monitor import SiteMonitor
    from tardis_netadapter.connectivity.verdict import Timing

    from .daemon import LoginExecutor

    monitor = SiteMonitor(
        settings.profile.monitoring.heartbeat_dir, Timing.from_budget(settings.budget)
    )
    return asyncio.run(
        collect_rows(LoginExecutor(lab), SITE, monitor, settings.command_timeout)
    )


def tunnel_ssh(lab: Any, drone_uuid: str) -> Optional[tuple[str, int]]:
    """(worker, pid) of the drone's tunnel ssh (not autossh), found by its work dir."""
    from .netns import pids_in_namespaces

    marker = f"tardis-drone.{drone_uuid}."
    for host in lab.layout.worker_hosts:
        for pid in pids_in_namespaces([lab.layout.namespace_path(host)]):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            words = [word.decode(errors="replace") for word in argv if word]
            if (
                words
                and Path(words[0]).name == "ssh"  # not autossh: its ssh would live on
                and "-N" in words
                and any(marker in word for word in words)
            ):
                return host, pid
    return None


def vpn_files(drone_uuid: str) -> tuple[str, str]:
    """(ns/vpn.state, ns/vpn.restarts) of a vpn drone ('' when absent).

    Files in the drone's work directory (the lab's workers share this
    machine's /tmp): read as files, no packet is sent to a lab address.
    """
    found = sorted(Path("/tmp").glob(f"tardis-drone.{drone_uuid}.*/ns"))
    if not found:
        return "", ""
    texts = []
    for name in ("vpn.state", "vpn.restarts"):
        try:
            texts.append((found[0] / name).read_text().strip())
        except OSError:
            texts.append("")
    return texts[0], texts[1]


def vpn_up(state: str) -> bool:
    return state.split()[:1] == ["up"]


def restart_ocserv(lab: Any, drone_uuid: str, events: Events) -> None:
    """The vpn fault: restart dmz's ocserv, then watch the drone heal closely.

    The VPN is back within seconds (the supervisor logs in anew), faster than
    the view's refresh, so this watches ns/vpn.state and the pool every
    0.2 s for up to 30 s and records when the VPN and the registration were
    back.
    """
    state, restarts = vpn_files(drone_uuid)
    before = pool_drones(lab).get(drone_uuid, {})
    events.fault_at = time.monotonic()
    pid = lab.restart_service("ocserv")
    events.fault = (drone_uuid, "dmz", pid)
    events.say(
        f"FAULT: restarted dmz's ocserv (new pid {pid}, listening after "
        f"{events.since_fault():.1f}s); {drone_uuid}'s VPN was {state!r}"
    )
    vpn_back = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and events.healed_at is None:
        now_state, now_restarts = vpn_files(drone_uuid)
        if events.detected_at is None and (
            now_restarts != restarts or not vpn_up(now_state)
        ):
            events.detected_at = time.monotonic()
            events.say(
                f"detected after {events.since_fault():.1f}s: the drone's supervisor "
                f"restarts openconnect (VPN {now_state or '?'!r})"
            )
        if vpn_back is None and now_restarts != restarts and vpn_up(now_state):
            vpn_back = time.monotonic()
            words = now_state.split()
            events.say(
                f"VPN back after {events.since_fault():.1f}s: tun0 "
                f"{words[1] if len(words) > 1 else '?'} over "
                f"{words[2] if len(words) > 2 else '?'} (a fresh login)"
            )
        if vpn_back is not None:
            record = pool_drones(lab).get(drone_uuid, {})
            progressed = record.get("heartbeats", 0) > before.get(
                "heartbeats", 0
            ) or record.get("connect_count", 0) > before.get("connect_count", 0)
            if record.get("connected") and progressed:
                events.healed_at = time.monotonic()
                kept = record.get("connect_count") == before.get("connect_count")
                events.say(
                    f"healed: {drone_uuid} heard from through the VPN again after "
                    f"{events.since_fault():.1f}s ("
                    + ("the same pool connection" if kept else "registered anew")
                    + ")"
                )
        time.sleep(0.2)


# --------------------------------------------------------------------------
# the live view
# --------------------------------------------------------------------------


def render_view(
    lab: Any,
    elapsed: float,
    drones: dict[str, tuple[str, str]],
    rows: list[Any],
    pool: dict[str, Any],
    events: Events,
) -> str:
    """One frame: TARDIS states, verdicts, pool registrations and recent events."""
    by_uuid = {row.uuid: row for row in rows}
    states = Counter(state for _, state in drones.values())
    verdicts = Counter(row.verdict for row in rows)
    path = {
        "vpn": "openconnect -> dmz's ocserv -> pool",
        "nat": demo_nat.path_line(lab),
        "container-net": demo_cnet.path_line(lab),
    }.get(events.mode, "ssh/proxychains/dante -> pool")
    lines = [
        f"tardis-netadapter demo: {elapsed:5.0f}s  "
        f"(COBalD + TARDIS + NetSlurm -> lab Slurm -> {path})",
        "",
        "TARDIS states : "
        + (", ".join(f"{k} {v}" for k, v in sorted(states.items())) or "-"),
        "verdicts      : "
        + (", ".join(f"{k} {v}" for k, v in sorted(verdicts.items())) or "-"),
        "",
        f"{'DRONE':<22} {'JOB':>5} {'TARDIS':<18} {'SLURM':<10} {'VERDICT':<16} "
        f"{'HB AGE':>6} {'RESTARTS':>8} {'POOL CONN':>9}"
        + {"vpn": "  TUN0 / VPN", "nat": "  ROUTE", "container-net": "  CNET"}.get(
            events.mode, ""
        ),
    ]
    for uuid, (job, state) in sorted(drones.items()):
        row = by_uuid.get(uuid)
        record = pool.get(uuid, {})
        age = (
            "-"
            if row is None or row.heartbeat_age is None
            else f"{row.heartbeat_age:.0f}s"
        )
        lines.append(
            f"{uuid:<22} {job:>5} {state:<18} "
            f"{(row.batch_state if row else '-'):<10} "
            f"{(row.verdict if row else '-'):<16} {age:>6} "
            f"{(row.restarts if row else 0):>8} "
            f"{'yes' if record.get('connected') else 'no':>5} #{record.get('connect_count', 0)}"
            + extra_column(lab, uuid, events.mode)
        )
    lines += ["", "events:"] + [f"  {line}" for line in events.lines[-8:]]
    return "\n".join(lines) + "\n"


def extra_column(lab: Any, uuid: str, mode: str) -> str:
    """The mode's own column of the live view ('' for socks)."""
    if mode == "vpn":
        return f"  {vpn_column(uuid)}"
    if mode == "nat":
        return f"  {demo_nat.route_column(lab, uuid)}"
    if mode == "container-net":
        return f"  {demo_cnet.cnet_column(lab, uuid)}"
    return ""


def vpn_column(drone_uuid: str) -> str:
    """tun0's address and the transport, as the drone's ns/vpn.state says."""
    state, _ = vpn_files(drone_uuid)
    words = state.split()
    if words[:1] == ["up"] and len(words) >= 3:
        return f"{words[1]} {words[2]}"
    return " ".join(words) or "-"


def show(frame: str, tty: bool) -> None:
    if tty:
        sys.stdout.write("\033[H\033[J" + frame)
    else:
        sys.stdout.write(frame + "-" * 40 + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------


def pool_drones(lab: Any) -> dict[str, Any]:
    from .daemon import pool_request

    answer = pool_request(lab, {"op": "query"})
    records = answer.get("drones", []) if isinstance(answer, dict) else []
    return {record.get("uuid"): record for record in records if record.get("uuid")}


def step(
    lab: Any, daemon: Any, settings: Any, events: Events, busy: set[str], half: float
) -> tuple[dict, list, dict]:
    """One observation cycle: keep the pool busy, inject the fault, notice healing."""
    from .daemon import pool_request

    drones = daemon.drones()
    pool = pool_drones(lab)
    for uuid in drones:
        if uuid in busy or not pool.get(uuid, {}).get("connected"):
            continue
        answer = pool_request(lab, {"op": "set_load", "uuid": uuid, "load": 1.0})
        if answer.get("ok"):
            busy.add(uuid)
            how = {
                "vpn": f"through the VPN (pool sees {pool[uuid].get('remote', '?')}; "
                f"tun0 {vpn_column(uuid)})",
                "nat": f"through the NAT (pool sees {pool[uuid].get('remote', '?')})",
                "container-net": "from its container's own address (pool sees "
                f"{pool[uuid].get('remote', '?')})",
            }.get(events.mode, "through its chain")
            events.say(f"{uuid} registered with the pool {how}")
    rows = connectivity_rows(lab, settings)
    available = [u for u, (_, s) in drones.items() if s == "AvailableState"]
    if available and events.first_available is None:
        events.first_available = time.monotonic()
        events.say(f"{available[0]} is Available in TARDIS")
    events.peak_available = max(events.peak_available, len(available))
    # half-way through the run, once, with a drone up: the mode's fault
    fault_due = (
        events.fault_at is None
        and events.first_available is not None
        and time.monotonic() - events.first_available >= half
        and bool(available)
    )
    if fault_due and events.mode == "vpn":
        restart_ocserv(lab, available[0], events)
        return drones, rows, pool
    if fault_due and events.mode == "nat":
        busy_jobs = {u: drones[u][0] for u in available}
        demo_nat.run_faults(lab, busy_jobs, events, lambda: pool_drones(lab))
        return drones, rows, pool
    if fault_due and events.mode == "container-net":
        busy_jobs = {u: drones[u][0] for u in available}
        demo_cnet.run_fault(lab, busy_jobs, events, lambda: pool_drones(lab))
        return drones, rows, pool
    if (
        events.mode == "socks"
        and events.fault is None
        and events.first_available is not None
        and time.monotonic() - events.first_available >= half
    ):
        for uuid in available:
            found = tunnel_ssh(lab, uuid)
            if found is not None:
                host, pid = found
                os.kill(pid, signal.SIGKILL)
                events.fault, events.fault_at = (uuid, host, pid), time.monotonic()
                events.say(
                    f"FAULT: killed the tunnel ssh of {uuid} on {host} (pid {pid})"
                )
                break
    if events.mode == "socks" and events.fault is not None and events.healed_at is None:
        uuid = events.fault[0]
        row = next((r for r in rows if r.uuid == uuid), None)
        found = tunnel_ssh(lab, uuid)
        record = pool.get(uuid, {})
        if events.detected_at is None:
            noticed = []
            if found is not None and found[1] != events.fault[2]:
                noticed.append(
                    f"the supervisor started a new tunnel ssh (pid {found[1]})"
                )
            if not record.get("connected") or record.get("connect_count", 0) >= 2:
                noticed.append("the payload saw its pool connection break")
            if row is not None and (row.restarts > 0 or row.verdict == "degraded"):
                noticed.append(f"the watchdog reports {row.verdict}")
            if noticed:
                events.detected_at = time.monotonic()
                events.say(
                    f"detected after {events.since_fault():.1f}s: " + "; ".join(noticed)
                )
        if (
            found is not None
            and found[1] != events.fault[2]
            and record.get("connected")
            and record.get("connect_count", 0) >= 2
        ):
            events.healed_at = time.monotonic()
            events.say(
                f"healed: new tunnel (pid {found[1]}) and {uuid} registered again "
                f"after {events.since_fault():.1f}s"
            )
    return drones, rows, pool


def summary(events: Events, drones_seen: set[str]) -> str:
    def at(moment: Optional[float]) -> str:
        return "never" if moment is None else f"{moment - events.started:.0f}s"

    fault, healed = {
        "vpn": ("ocserv restarted              ", "healed (VPN + pool again)     "),
        "nat": ("master router stopped        ", "drones untouched, route ok    "),
        "container-net": (
            "a drone's job SIGKILLed      ",
            "its address back in the pool ",
        ),
    }.get(
        events.mode,
        ("tunnel killed                 ", "healed (tunnel + pool again)  "),
    )
    fault, healed = fault.strip().ljust(30), healed.strip().ljust(30)

    lines = [
        "",
        "demo summary",
        f"  drones started by TARDIS      : {len(drones_seen)}",
        f"  most drones Available at once : {events.peak_available}",
        f"  first drone Available after   : {at(events.first_available)}",
        f"  {fault}: {at(events.fault_at)}",
        f"  fault detected                : {at(events.detected_at)}",
        f"  {healed}: {at(events.healed_at)}",
    ]
    ok = (
        events.peak_available >= 1
        and events.fault_at is not None
        and events.healed_at is not None
    )
    lines.append("  result                        : " + ("OK" if ok else "INCOMPLETE"))
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    """The ``demo`` command; exit 0 when drones came up and the fault healed."""
    from tardis_netadapter.siteconfig import load_site_from_file

    from . import Lab, teardown
    from .daemon import (
        LAB_CNET_CONFIG,
        LAB_CONFIG,
        LAB_NAT_CONFIG,
        LAB_VPN_CONFIG,
        CobaldDaemon,
        write_config,
    )

    if os.geteuid() != 0:
        print(
            "tardis-netadapter demo: needs root (network namespaces)", file=sys.stderr
        )
        return 2
    teardown(args.name)  # a demo lab left by a crashed run
    events = Events(mode=args.mode)
    tty = sys.stdout.isatty()
    seen: set[str] = set()
    print(f"bringing lab {args.name} up ...", flush=True)
    lab = Lab(name=args.name, workers=2, idle_timeout=30).up()
    workdir = Path(tempfile.mkdtemp(prefix="tna-demo-"))
    daemon = None
    try:
        source = {
            "vpn": LAB_VPN_CONFIG,
            "nat": LAB_NAT_CONFIG,
            "container-net": LAB_CNET_CONFIG,
        }.get(args.mode, LAB_CONFIG)
        if args.mode == "nat":
            lab.site_nat.up()
            lab.site_nat.wait_master()
        config = write_config(lab, workdir, source=source)
        settings = load_site_from_file(config, SITE).settings
        daemon = CobaldDaemon(lab, workdir, config).start()
        events.say(
            f"lab up; cobald running on control (pid {daemon.process.pid}), "
            f"mode {args.mode} ({source.name})"
        )
        busy: set[str] = set()
        run_for = args.minutes * 60
        deadline = time.monotonic() + run_for + 300  # plus time to the first drone
        while time.monotonic() < deadline:
            if not daemon.alive:
                events.say("cobald exited: see " + str(daemon.log_path))
                break
            drones, rows, pool = step(lab, daemon, settings, events, busy, run_for / 2)
            seen.update(drones)
            show(
                render_view(
                    lab, time.monotonic() - events.started, drones, rows, pool, events
                ),
                tty,
            )
            if (
                events.first_available is not None
                and time.monotonic() - events.first_available >= run_for
            ):
                break
            time.sleep(2)
    except KeyboardInterrupt:
        events.say("interrupted: tearing down")
    finally:
        if daemon is not None:
            daemon.stop()
        lab.run("login", ["scancel", "--me"], user=lab.drone_user)
        if args.mode == "nat":
            lab.site_nat.down()
        lab.down()
        print(f"lab {args.name} down; cobald log and registry kept in {workdir}")
    text = summary(events, seen)
    sys.stdout.write(text)
    return 0 if text.rstrip().endswith("OK") else 1
