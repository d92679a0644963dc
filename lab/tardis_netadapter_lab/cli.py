"""`tardis-netadapter lab ...`: bring the lab up and down, inspect it, break it.

Registered with the product's CLI through the ``tardis_netadapter.commands``
entry-point group (see lab/pyproject.toml), so the product never imports the
lab. Also runs on its own: `python -m tardis_netadapter_lab lab up`.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, Optional

from . import faults as faults_module
from . import layout as L
from .gridengine import GridEngineError
from .site import Lab, LabError, teardown
from .sitenat import SiteNatError


def add_lab_parser(subparsers: Any) -> None:
    """Register the `lab` command group on a parent parser's subparsers."""
    lab = subparsers.add_parser(
        "lab", help="the simulated restricted site (needs root)", description=__doc__
    )
    commands = lab.add_subparsers(dest="lab_command", metavar="LAB_COMMAND")
    commands.required = True

    up = _command(commands, "up", "build a lab and start its services", _up)
    up.add_argument("--workers", type=int, default=2, help="worker hosts (default 2)")
    up.add_argument(
        "--idle-timeout",
        type=int,
        default=30,
        metavar="SECONDS",
        help="login firewall: idle established TCP flows die after this (default 30)",
    )

    _command(commands, "down", "remove a lab (idempotent, also after a crash)", _down)

    status = _command(commands, "status", "hosts, addresses, services", _status)
    status.add_argument("--json", action="store_true", help="machine-readable")

    run = _command(commands, "exec", "run a command on a lab host", _exec)
    run.add_argument("--user", help="run as this user (e.g. the drone user)")
    run.add_argument("host", help="login, workerN, outside or control")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")

    nat = _command(commands, "nat", "the site NAT routers (issue 14): up or down", None)
    nat_commands = nat.add_subparsers(dest="nat_command", metavar="NAT_COMMAND")
    nat_commands.required = True
    nat_up = _command(
        nat_commands,
        "up",
        "keepalived+conntrackd on nat1/nat2, workers routed",
        _nat_up,
    )
    nat_up.add_argument(
        "--no-conntrack-sync", action="store_true", help="no conntrackd (control)"
    )
    nat_up.add_argument("--no-keeper", action="store_true", help="no route keeper")
    _command(nat_commands, "down", "remove what `nat up` added", _nat_down)

    ge = _command(
        commands, "gridengine", "Grid Engine (issue 16): up, down or status", None
    )
    ge_commands = ge.add_subparsers(dest="ge_command", metavar="GRIDENGINE_COMMAND")
    ge_commands.required = True
    ge_up = _command(
        ge_commands, "up", "sge_qmaster on login, sge_execd on workers", _ge_up
    )
    ge_up.add_argument(
        "--qrsh",
        action="store_true",
        help="let workers connect back to login (qrsh's builtin method needs it)",
    )
    _command(ge_commands, "down", "stop Grid Engine, remove its cell", _ge_down)
    ge_status = _command(ge_commands, "status", "daemons and queues", _ge_status)
    ge_status.add_argument("--json", action="store_true", help="machine-readable")

    fault = _command(commands, "fault", "inject a fault", None)
    faults = fault.add_subparsers(dest="fault", metavar="FAULT")
    faults.required = True
    kill = _command(faults, "kill", "kill a service", _kill)
    kill.add_argument("service")
    restart = _command(faults, "restart", "(re)start a service", _restart)
    restart.add_argument("service")
    cut = _command(faults, "cut-link", "cut a host's uplink for a while", _cut)
    cut.add_argument(
        "host", help="workerN (link to login), login, control, natN (public leg)"
    )
    cut.add_argument("seconds", type=float)
    cut.add_argument("--wait", action="store_true", help="block until restored")
    restore = _command(faults, "restore-link", "bring a cut link back now", _restore)
    restore.add_argument("host")
    idle = _command(faults, "idle-timeout", "change the firewall idle timeout", _idle)
    idle.add_argument("seconds", type=int)
    bandwidth = _command(faults, "bandwidth", "limit a host's uplink (tbf)", _bw)
    bandwidth.add_argument("host")
    bandwidth.add_argument("rate", help='e.g. 100mbit, or "none" to remove')
    squeue = _command(faults, "squeue", "make login's squeue lie (drone user)", _squeue)
    squeue.add_argument("mode", choices=faults_module.SQUEUE_MODES)
    sbatch = _command(
        faults, "sbatch-delay", "sbatch submits, then stalls before answering", _sbatch
    )
    sbatch.add_argument("seconds", type=float, help="0 turns the stall off")
    payload = _command(faults, "payload", "payload stand-in exits at once", _payload)
    payload.add_argument("mode", choices=faults_module.PAYLOAD_MODES)


# The product's CLI calls the entry point `lab = tardis_netadapter_lab.cli:add_parser`.
add_parser = add_lab_parser


def _command(
    commands: Any, name: str, help: str, func: Optional[Callable[..., int]]
) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help, description=help)
    parser.add_argument(
        "--name", default=L.DEFAULT_NAME, help=f"lab name (default {L.DEFAULT_NAME})"
    )
    if func is not None:
        parser.set_defaults(func=_guarded(func))
    return parser


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (LabError, SiteNatError, GridEngineError, ValueError, KeyError) as error:
            print(f"lab: {error}", file=sys.stderr)
            return 2

    return run


def _up(args: argparse.Namespace) -> int:
    started = time.monotonic()
    lab = Lab(name=args.name, workers=args.workers, idle_timeout=args.idle_timeout).up()
    print(f"lab {lab.name} up in {time.monotonic() - started:.1f} s")
    _print_status(lab.status())
    return 0


def _down(args: argparse.Namespace) -> int:
    started = time.monotonic()
    removed = teardown(args.name)
    print(
        f"lab {args.name} down in {time.monotonic() - started:.1f} s: "
        f"{len(removed['namespaces'])} namespaces, {len(removed['pids'])} processes, "
        f"users {', '.join(removed['users']) or '-'}"
    )
    return 0


def _status(args: argparse.Namespace) -> int:
    try:
        lab = Lab.attach(args.name)
    except LabError:
        lab = Lab(name=args.name)
    status = lab.status()
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        _print_status(status)
    return 0 if status["up"] else 1


def _print_status(status: dict[str, Any]) -> None:
    print(f"lab {status['name']}: {'up' if status['up'] else 'down'}")
    if not status["up"]:
        return
    print(f"  state dir     {status['state_dir']}")
    print(f"  idle timeout  {status['idle_timeout']} s")
    print("  hosts:")
    for host, info in status["hosts"].items():
        addresses = " ".join(f"{net}={addr}" for net, addr in info["addresses"].items())
        print(f"    {host:<9} {info['namespace']:<16} {addresses}")
    print("  services:")
    for name, info in status["services"].items():
        state = f"pid {info['pid']}" if info["alive"] else "not running"
        where = f"{info['host']} {info['address']}:{info['port']}"
        if info.get("protocol", "tcp") != "tcp":
            where += f"/{info['protocol']}"
        print(f"    {name:<16} {where:<26} {state}")
    print(
        f"  users         drone={status['users']['drone']} other={status['users']['other']}"
    )
    print(f"  control key   {status['ssh']['control_key']}")
    print(f"  known_hosts   {status['ssh']['known_hosts']}")
    print(f"  SLURM_CONF    {status['slurm']['conf']}")
    print(f"  bin dir       {status['bin_dir']}")
    nat = status.get("nat", {})
    if nat.get("up"):
        holder = [n for n, r in nat["routers"].items() if all(r["vips"].values())]
        print(
            f"  site NAT      up: gateway {nat['gateway']} public {nat['public_address']}"
            f" on {', '.join(holder) or 'no router'}; conntrackd "
            f"{'on' if nat['conntrack_sync'] else 'off'}, keeper "
            f"{'on' if nat['keeper'] else 'off'}"
        )
    else:
        print("  site NAT      down (`lab nat up`)")
    ge = status.get("gridengine", {})
    if ge.get("up"):
        alive = sum(1 for daemon in ge["daemons"].values() if daemon["alive"])
        print(
            f"  Grid Engine   up: cell {ge['sge_cell']} in {ge['sge_root']}, "
            f"{alive}/{len(ge['daemons'])} daemons, qrsh "
            f"{'open' if ge['qrsh'] else 'blocked'}"
        )
    else:
        print("  Grid Engine   down (`lab gridengine up`)")


def _nat_up(args: argparse.Namespace) -> int:
    started = time.monotonic()
    nat = Lab.attach(args.name).site_nat
    nat.up(conntrack_sync=not args.no_conntrack_sync, keeper=not args.no_keeper)
    print(f"site NAT of lab {args.name} up in {time.monotonic() - started:.1f} s")
    return 0


def _nat_down(args: argparse.Namespace) -> int:
    Lab.attach(args.name).site_nat.down()
    print(f"site NAT of lab {args.name} down")
    return 0


def _ge_up(args: argparse.Namespace) -> int:
    started = time.monotonic()
    Lab.attach(args.name).gridengine.up(qrsh=args.qrsh)
    print(f"Grid Engine of lab {args.name} up in {time.monotonic() - started:.1f} s")
    return _ge_status(argparse.Namespace(name=args.name, json=False))


def _ge_down(args: argparse.Namespace) -> int:
    Lab.attach(args.name).gridengine.down()
    print(f"Grid Engine of lab {args.name} down")
    return 0


def _ge_status(args: argparse.Namespace) -> int:
    status = Lab.attach(args.name).gridengine.status()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    if not status["up"]:
        print(f"Grid Engine of lab {args.name}: down (`lab gridengine up`)")
        return 0
    print(f"  SGE_ROOT      {status['sge_root']}  SGE_CELL {status['sge_cell']}")
    print(
        f"  qmaster       {status['qmaster']}  qrsh {'open' if status['qrsh'] else 'blocked'}"
    )
    for name, daemon in status["daemons"].items():
        alive = "running" if daemon["alive"] else "DOWN"
        print(f"  {name:<20} pid {daemon['pid']} {alive}")
    for queue, state in status["queues"].items():
        print(f"  {queue:<20} {state or 'ok'}")
    return 0


def _exec(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise LabError("nothing to run: lab exec HOST -- CMD [ARG...]")
    lab = Lab.attach(args.name)
    return subprocess.run(
        lab.command(args.host, cmd, args.user),
        env=lab.env(args.host, args.user),
        cwd=str(lab.layout.home(args.user)) if args.user else "/",
        check=False,
    ).returncode


def _kill(args: argparse.Namespace) -> int:
    killed = Lab.attach(args.name).kill_service(args.service)
    print(f"{args.service}: {'killed' if killed else 'was not running'}")
    return 0


def _restart(args: argparse.Namespace) -> int:
    pid = Lab.attach(args.name).restart_service(args.service)
    print(f"{args.service}: running, pid {pid}")
    return 0


def _cut(args: argparse.Namespace) -> int:
    Lab.attach(args.name).cut_link(args.host, args.seconds, wait=args.wait)
    state = "cut and restored" if args.wait else "cut; restores by itself"
    print(f"{args.host}: link {state} after {args.seconds:g} s")
    return 0


def _restore(args: argparse.Namespace) -> int:
    Lab.attach(args.name).restore_link(args.host)
    print(f"{args.host}: link up")
    return 0


def _idle(args: argparse.Namespace) -> int:
    Lab.attach(args.name).set_idle_timeout(args.seconds)
    print(f"idle timeout now {args.seconds} s")
    return 0


def _bw(args: argparse.Namespace) -> int:
    rate = None if args.rate.lower() in ("none", "off", "0") else args.rate
    Lab.attach(args.name).limit_bandwidth(args.host, rate)
    print(f"{args.host}: uplink {'limited to ' + rate if rate else 'unlimited'}")
    return 0


def _squeue(args: argparse.Namespace) -> int:
    faults_module.set_squeue(Lab.attach(args.name).layout, args.mode)
    print(f"squeue on login (drone user, via sshd): {args.mode}")
    return 0


def _sbatch(args: argparse.Namespace) -> int:
    faults_module.set_sbatch_delay(Lab.attach(args.name).layout, args.seconds)
    state = f"stalls {args.seconds:g} s after submitting" if args.seconds else "normal"
    print(f"sbatch on login (drone user, via sshd): {state}")
    return 0


def _payload(args: argparse.Namespace) -> int:
    faults_module.set_payload(Lab.attach(args.name).layout, args.mode)
    state = "exits at once" if args.mode == "exit" else "runs normally"
    print(f"payload stand-in (jobs started from now on): {state}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Stand-alone entry point: the same `lab ...` and `demo` syntax as the main CLI.

    For a machine where only ``python -m`` is at hand (or to bypass the
    product's entry-point discovery while debugging it).
    """
    from . import demo

    parser = argparse.ArgumentParser(prog="python -m tardis_netadapter_lab")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    add_lab_parser(subparsers)
    demo.add_parser(subparsers)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
