"""``tardis-netadapter demo [--minutes N]``: the whole path, live, in the lab.

Brings a lab up (a restricted site on this machine), runs the real COBalD
daemon with the NetSlurm adapter against it, keeps the pool busy so TARDIS
wants drones, shows drones by TARDIS state and connectivity verdict refreshed
in place, kills one drone's tunnel half-way so the healing is visible, then
tears everything down and prints a summary. Ctrl-C tears down cleanly.
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


# --------------------------------------------------------------------------
# the live view
# --------------------------------------------------------------------------


def render_view(
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
    lines = [
        f"tardis-netadapter demo: {elapsed:5.0f}s  "
        "(COBalD + TARDIS + NetSlurm -> lab Slurm -> ssh/proxychains/dante -> pool)",
        "",
        "TARDIS states : "
        + (", ".join(f"{k} {v}" for k, v in sorted(states.items())) or "-"),
        "verdicts      : "
        + (", ".join(f"{k} {v}" for k, v in sorted(verdicts.items())) or "-"),
        "",
        f"{'DRONE':<22} {'JOB':>5} {'TARDIS':<18} {'SLURM':<10} {'VERDICT':<16} "
        f"{'HB AGE':>6} {'RESTARTS':>8} {'POOL CONN':>9}",
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
        )
    lines += ["", "events:"] + [f"  {line}" for line in events.lines[-8:]]
    return "\n".join(lines) + "\n"


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
            events.say(f"{uuid} registered with the pool through its chain")
    rows = connectivity_rows(lab, settings)
    available = [u for u, (_, s) in drones.items() if s == "AvailableState"]
    if available and events.first_available is None:
        events.first_available = time.monotonic()
        events.say(f"{available[0]} is Available in TARDIS")
    events.peak_available = max(events.peak_available, len(available))
    if (
        events.fault is None
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
    if events.fault is not None and events.healed_at is None:
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

    lines = [
        "",
        "demo summary",
        f"  drones started by TARDIS      : {len(drones_seen)}",
        f"  most drones Available at once : {events.peak_available}",
        f"  first drone Available after   : {at(events.first_available)}",
        f"  tunnel killed                 : {at(events.fault_at)}",
        f"  fault detected                : {at(events.detected_at)}",
        f"  healed (tunnel + pool again)  : {at(events.healed_at)}",
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
    from .daemon import CobaldDaemon, write_config

    if os.geteuid() != 0:
        print(
            "tardis-netadapter demo: needs root (network namespaces)", file=sys.stderr
        )
        return 2
    teardown(args.name)  # a demo lab left by a crashed run
    events = Events()
    tty = sys.stdout.isatty()
    seen: set[str] = set()
    print(f"bringing lab {args.name} up ...", flush=True)
    lab = Lab(name=args.name, workers=2, idle_timeout=30).up()
    workdir = Path(tempfile.mkdtemp(prefix="tna-demo-"))
    daemon = None
    try:
        config = write_config(lab, workdir)
        settings = load_site_from_file(config, SITE).settings
        daemon = CobaldDaemon(lab, workdir, config).start()
        events.say(f"lab up; cobald running on control (pid {daemon.process.pid})")
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
                    time.monotonic() - events.started, drones, rows, pool, events
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
        lab.down()
        print(f"lab {args.name} down; cobald log and registry kept in {workdir}")
    text = summary(events, seen)
    sys.stdout.write(text)
    return 0 if text.rstrip().endswith("OK") else 1
