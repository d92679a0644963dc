"""``tardis-netadapter status CONFIG``: each drone's path to the pool, right now.

Runs the same single executor call as the adapter's poller (the batch
system's job listing, with run times, and the heartbeat collection), judges
every drone with the adapter's own verdict function and prints a table, or JSON
with stable keys (``--json``). Nothing is changed at the site. When the
adapter's brake for the site is engaged (read from the state file the adapter
writes, since the adapter is another process), that comes first; when this
snapshot shows a site outage (connectivity/outage.py), that comes next.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any, Optional

from ..batch import BatchDriver, SlurmDriver
from ..batch.poller import SitePoller
from ..brake import BrakeSnapshot, default_state_file, read_brake_state
from ..connectivity.collector_view import collector_uuids
from ..connectivity.monitor import SiteMonitor
from ..connectivity.report import (
    StatusRow,
    brake_json,
    brake_line,
    make_row,
    outage_json,
    outage_line,
    render_table,
    to_json,
)
from ..connectivity.verdict import Timing
from .sitecli import build_executor, site_name

logger = logging.getLogger("cobald.runtime.tardis_netadapter.status")


def add_parser(subparsers: Any) -> None:
    """Register ``status``."""
    parser = subparsers.add_parser(
        "status",
        help="show each drone's connectivity verdict at a site",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("config", type=Path, help="cobald.yml or TARDIS YAML")
    parser.add_argument("--site", help="site name (default: the only NetSlurm site)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument(
        "--all",
        action="store_true",
        help="list every job of the account, not only this site's drones",
    )
    parser.add_argument(
        "--collector",
        action="store_true",
        help="also ask the pool's collector (htcondor2) which drones have a startd ad",
    )
    parser.add_argument(
        "--brake-state",
        type=Path,
        help="the brake state file the adapter writes (default: "
        "$XDG_STATE_HOME or ~/.local/state, tardis-netadapter/brake-SITE.json)",
    )
    parser.set_defaults(func=run)


async def collect_rows(
    executor: Any,
    site: str,
    monitor: SiteMonitor,
    timeout: Optional[float],
    collector: Optional[str] = None,
    all_jobs: bool = False,
    driver: Optional[BatchDriver] = None,
) -> list[StatusRow]:
    """One poller call (the job listing + heartbeats), then a row per drone."""
    poller = SitePoller(
        driver or SlurmDriver(),
        executor,
        timeout=timeout,
        probes=[monitor.probe],
        name=site,
    )
    snapshot = await poller.refresh()
    uuids = await collector_uuids(collector) if collector else None
    judgements = monitor.observe(snapshot, collector=uuids)
    prefix = f"{site.lower()}-"
    rows = []
    for job in sorted(snapshot.jobs.values(), key=lambda j: (j.name, j.job_id)):
        if not all_jobs and not job.name.startswith(prefix):
            continue
        judgement = judgements.get(job.name)
        if judgement is None:
            continue
        rows.append(
            make_row(
                job.name, job.job_id, job.state, judgement, monitor.store.get(job.name)
            )
        )
    return rows


def _brake_state(site: str, path: Optional[Path]) -> Optional[BrakeSnapshot]:
    """The site's brake as the adapter last wrote it; None if unknown."""
    try:
        return read_brake_state(path or default_state_file(site))
    except ValueError:  # a site name that cannot name a file: no state to show
        return None


def run(args: argparse.Namespace) -> int:
    """The ``status`` command; exit 0, 1 if the site could not be asked."""
    from ..siteconfig import load_site_from_file

    site = site_name(args.config, args.site)
    found = load_site_from_file(args.config, site)
    settings = found.settings
    monitoring = settings.profile.monitoring
    if not monitoring.enabled:
        print(f"{site}: Network.monitoring.enabled is false; no heartbeats to show")
    brake = _brake_state(site, args.brake_state)
    headline = brake_line(brake)
    if headline and not args.json:
        print(headline)  # first: the adapter is refusing to deploy here
    executor = build_executor(found.tardis[site].get("executor"))
    monitor = SiteMonitor(monitoring.heartbeat_dir, Timing.from_budget(settings.budget))
    collector = settings.profile.pool.collector if args.collector else None
    try:
        rows = asyncio.run(
            collect_rows(
                executor,
                site,
                monitor,
                settings.command_timeout,
                collector,
                args.all,
                settings.driver,
            )
        )
    except Exception as error:  # any failure to reach the site: say so, no traceback
        print(
            f"tardis-netadapter status: {site}: cannot ask the site: {error!r}",
            file=sys.stderr,
        )
        return 1
    if args.json:
        extra = {"brake": brake_json(brake), "outage": outage_json(monitor.outage)}
        print(to_json(rows, site, monitor.store.now, extra))
    else:
        headline = outage_line(site, monitor.outage)
        if headline:
            print(headline)  # the failures below are the site's, not the drones'
        sys.stdout.write(render_table(rows, site))
    return 0
