"""``tardis-netadapter render CONFIG --site S --machine-type M``: what a drone would get.

Prints the exact sbatch command line and the drone script (sent on sbatch's
stdin) that the NetSlurm adapter would submit for one drone, built by the same
functions the adapter uses, and, in a header, the values the adapter derives
for the site (keepalive intervals, heartbeat interval, grace, connect
deadline, listing age). Nothing is submitted and nothing is connected: the
configuration is read inertly (executors and pool factories are not built).
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..schema import ConfigurationError
from ..suggest import did_you_mean

#: a TARDIS-like drone uuid: lower-case site name and 10 characters
_UUID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def add_parser(subparsers: Any) -> None:
    """Register ``render``."""
    parser = subparsers.add_parser(
        "render",
        help="print the sbatch command and drone script for one drone",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    parser.add_argument("config", type=Path, help="cobald.yml or TARDIS YAML")
    parser.add_argument("--site", required=True, help="site name in the Sites list")
    parser.add_argument(
        "--machine-type", required=True, help="one of the site's MachineTypes"
    )
    parser.add_argument(
        "--uuid",
        help="drone uuid to render for (default: <site>-0000000000)",
    )
    only = parser.add_mutually_exclusive_group()
    only.add_argument(
        "--command-only", action="store_true", help="print only the sbatch command"
    )
    only.add_argument(
        "--script-only",
        action="store_true",
        help="print only the script, byte for byte as sbatch receives it",
    )
    parser.set_defaults(func=run)


def translation_for(tardis: Mapping[str, Any]) -> Mapping[str, float]:
    """The overlay batch system's unit translation, as its TARDIS adapter defines it.

    Read from the adapter class without building it (building would connect
    to the pool); falls back to HTCondor's units.
    """
    from ..siteadapter import HTCONDOR_TRANSLATION
    from ..siteconfig import batch_system_adapter

    name = batch_system_adapter(tardis) or "HTCondor"
    try:
        module = importlib.import_module(f"tardis.adapters.batchsystems.{name.lower()}")
        cls = getattr(module, f"{name}Adapter")
        prop = cls.machine_meta_data_translation_mapping
        return prop.fget(object.__new__(cls))
    except Exception:  # an unusual adapter: say so, use HTCondor's units
        print(
            f"# note: units of batch system {name!r} unknown; using HTCondor's",
            file=sys.stderr,
        )
        return HTCONDOR_TRANSLATION


def _how(explicit: object) -> str:
    return "set" if explicit is not None else "derived"


def derived_lines(settings: Any, tardis: Mapping[str, Any]) -> list[str]:
    """The values the adapter derives for the site, as the header shows them.

    What docs/configuration.md calls "derived" (keepalive intervals, the
    watchdog's heartbeat interval, the grace before a failing drone is lost,
    the connect deadline, how long one listing is reused) is computed at
    start from a few keys; an operator should not have to redo the sums.
    Each says whether it was derived or set in the configuration.
    """
    budget, profile = settings.budget, settings.profile
    monitoring, keepalive = profile.monitoring, profile.keepalive
    timeout = budget.idle_timeout
    lines = [
        "firewall.idle_timeout: "
        + (f"{timeout}s" if timeout else "none (idle flows are not dropped)"),
    ]
    if budget.enabled:
        lines.append(
            f"keepalive.server_alive_interval: {budget.server_alive_interval}s "
            f"({_how(keepalive.server_alive_interval)}) x server_alive_count_max "
            f"{budget.server_alive_count_max}: a dead tunnel is noticed after "
            f"{budget.dead_tunnel_detection}s"
        )
        knobs = " ".join(f"{k}={v}" for k, v in sorted(budget.condor_knobs.items()))
        lines.append(f"HTCondor knobs: {knobs or 'none (HTCondor defaults)'}")
    else:
        lines.append("keepalive.enabled: false (no keepalive derived)")
    if profile.mode == "vpn":
        from ..modes.vpn import dpd_interval

        lines.append(
            f"vpn.dpd: {dpd_interval(profile)}s ({_how(profile.vpn.dpd)}): "
            "openconnect --force-dpd"
        )
    if monitoring.enabled:
        lines += [
            f"monitoring.heartbeat_interval: {budget.watchdog_interval}s "
            f"({_how(monitoring.heartbeat_interval)})",
            f"monitoring.grace: {budget.grace}s ({_how(monitoring.grace)}): a "
            "drone failing this long is lost and ended",
            f"monitoring.connect_deadline: {budget.connect_deadline}s "
            f"({_how(monitoring.connect_deadline)}): a running drone that has "
            "not reached the pool by then is never-connected and ended",
        ]
    else:
        lines.append("monitoring.enabled: false (no watchdog, no verdicts)")
    entry = next(
        (
            s
            for s in tardis.get("Sites") or []
            if isinstance(s, Mapping) and s.get("name") == settings.name
        ),
        {},
    )
    heartbeat = entry.get("drone_heartbeat_interval") or 60
    max_age = settings.status_max_age
    lines += [
        "status_max_age: "
        + (
            f"{max_age:g}s (set)"
            if max_age is not None
            else f"{max(1.0, heartbeat / 2):g}s (derived: half of "
            f"drone_heartbeat_interval {heartbeat}s)"
        ),
        f"command_timeout: {settings.command_timeout:g}s",
    ]
    return lines


def run(args: argparse.Namespace) -> int:
    """Render and print; ConfigurationError (exit 2) names the bad key."""
    from ..siteadapter import build_submission
    from ..siteconfig import load_site_from_file

    site = load_site_from_file(args.config, args.site)
    kinds = site.settings.machine_types
    if args.machine_type not in kinds:
        raise ConfigurationError(
            [
                f"{args.site}.MachineTypes: no machine type {args.machine_type!r}"
                f"{did_you_mean(args.machine_type, kinds)}; known: {', '.join(kinds)}"
            ]
        )
    uuid = args.uuid or f"{args.site.lower()}-{'0' * 10}"
    if not _UUID.fullmatch(uuid):
        raise ConfigurationError(
            [f"--uuid: got {uuid!r}; expected letters, digits, '.', '_' or '-'"]
        )
    submission = build_submission(
        site.settings, args.machine_type, uuid, translation_for(site.tardis)
    )
    if args.command_only:
        print(submission.command)
    elif args.script_only:
        sys.stdout.write(submission.script)
    else:
        print(
            f"# tardis-netadapter render: site {args.site}, machine type "
            f"{args.machine_type}, drone {uuid}\n"
            "# submitted as (the script below goes to the command's stdin):\n"
            f"# {submission.command}\n"
            "# derived values of this site (docs/configuration.md):\n"
            + "".join(
                f"#   {line}\n" for line in derived_lines(site.settings, site.tardis)
            )
            + "# ---- script (use --script-only for the exact bytes) ----"
        )
        sys.stdout.write(submission.script)
    return 0
