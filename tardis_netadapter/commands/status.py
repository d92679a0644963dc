"""``tardis-netadapter status CONFIG``: each drone's path to the pool, right now.

Runs the same single executor call as the adapter's poller (the batch
system's job listing, with run times, and the heartbeat collection), judges
every drone with the adapter's own verdict function and prints a table, or JSON
with stable keys (``--json``). Nothing is changed at the site. When the
adapter's brake for the site is engaged (read from the state file the adapter
writes, since the adapter is another process), that comes first; when this
snapshot shows a site outage (connectivity/outage.py), that comes next. When
the site cannot be asked at all, the reason is the first line
(status_reason.py). ``--wide`` shows each drone's stage, restarts, last error,
heartbeat age and node; ``--watch`` redraws (status_watch.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import dataclass, field
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
from .status_reason import Unreachable, unreachable

logger = logging.getLogger("cobald.runtime.tardis_netadapter.status")

#: seconds between two rounds of ``--watch`` without a value
DEFAULT_WATCH = 5.0


def _positive_seconds(text: str) -> float:
    """``--watch``'s value: seconds, at least 0.5 (each round runs a listing)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0.5:
        raise argparse.ArgumentTypeError(
            f"got {text!r}; expected seconds between rounds, at least 0.5 (e.g. 5)"
        )
    return value


def add_parser(subparsers: Any) -> None:
    """Register ``status``."""
    parser = subparsers.add_parser(
        "status",
        help="show each drone's connectivity verdict at a site",
        # the docstring's first paragraph without its rST markup (--help is plain)
        description=__doc__.split("\n\n")[0].replace("``", ""),
    )
    parser.add_argument("config", type=Path, help="cobald.yml or TARDIS YAML")
    parser.add_argument("--site", help="site name (default: the only NetSlurm site)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument(
        "--wide",
        action="store_true",
        help="per drone: stage, restarts, last error, heartbeat age and node",
    )
    parser.add_argument(
        "--watch",
        nargs="?",
        type=_positive_seconds,
        const=DEFAULT_WATCH,
        metavar="SECONDS",
        help=f"ask again every SECONDS (default {DEFAULT_WATCH:g}) and redraw in "
        "place; plain successive tables when not a terminal (one JSON document "
        "per line with --json)",
    )
    parser.add_argument(
        "--count",
        type=int,
        metavar="N",
        help="with --watch: stop after N rounds (default: until interrupted)",
    )
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


@dataclass
class Frame:
    """One round of ``status``: what was asked, and what came back."""

    site: str
    rows: list[StatusRow] = field(default_factory=list)
    brake: Optional[BrakeSnapshot] = None
    unreachable: Optional[Unreachable] = None
    note: Optional[str] = None  # e.g. monitoring disabled

    def text(self, monitor: SiteMonitor, wide: bool) -> str:
        """The lines a person reads, most urgent first."""
        lines = [self.note] if self.note else []
        if self.unreachable is not None:
            # first: nothing below is current when the site cannot be asked
            lines += [
                self.unreachable.headline(self.site),
                f"  detail: {self.unreachable.detail}",
            ]
        headline = brake_line(self.brake)
        if headline:
            lines.append(headline)  # the adapter is refusing to deploy here
        if self.unreachable is not None:
            return "\n".join(lines) + "\n"
        headline = outage_line(self.site, monitor.outage)
        if headline:
            lines.append(headline)  # the failures below are the site's, not the drones'
        return "\n".join(lines + [""]) + render_table(self.rows, self.site, wide)

    def json(self, monitor: SiteMonitor, indent: Optional[int] = 2) -> str:
        """``--json``: the stable document, with ``unreachable`` when not asked."""
        extra = {
            "brake": brake_json(self.brake),
            "outage": outage_json(monitor.outage) if not self.unreachable else None,
            "unreachable": self.unreachable.as_json() if self.unreachable else None,
        }
        document = to_json(self.rows, self.site, monitor.store.now, extra)
        if indent is None:  # one line per document (--watch --json)
            import json

            return json.dumps(json.loads(document), sort_keys=True)
        return document


class StatusSource:
    """What ``status`` asks a site with, built once, asked once per round.

    One monitor for every round, so ``--watch`` follows verdicts and outages
    with the same memory the adapter has.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        from ..siteconfig import load_site_from_file

        self.site = site_name(args.config, args.site)
        found = load_site_from_file(args.config, self.site)
        self.settings = found.settings
        monitoring = self.settings.profile.monitoring
        self.note = (
            None
            if monitoring.enabled
            else f"{self.site}: Network.monitoring.enabled is false; no heartbeats to show"
        )
        self.executor = build_executor(found.tardis[self.site].get("executor"))
        self.monitor = SiteMonitor(
            monitoring.heartbeat_dir, Timing.from_budget(self.settings.budget)
        )
        self.collector = (
            self.settings.profile.pool.collector if args.collector else None
        )
        self.all_jobs = args.all
        self.brake_state = args.brake_state

    async def frame(self) -> Frame:
        """One round: the brake state file, then one listing of the site."""
        frame = Frame(
            self.site, brake=_brake_state(self.site, self.brake_state), note=self.note
        )
        try:
            frame.rows = await collect_rows(
                self.executor,
                self.site,
                self.monitor,
                self.settings.command_timeout,
                self.collector,
                self.all_jobs,
                self.settings.driver,
            )
        except Exception as error:  # any failure to reach the site: its reason first
            frame.unreachable = unreachable(error, self.settings.command_timeout)
        return frame


def run(args: argparse.Namespace) -> int:
    """The ``status`` command; exit 0, 1 if the site could not be asked."""
    if args.count is not None and args.watch is None:
        print(
            "tardis-netadapter status: --count N needs --watch (one round is the "
            "default without it)",
            file=sys.stderr,
        )
        return 2
    source = StatusSource(args)
    if args.watch is not None:
        from .status_watch import watch

        return watch(source, args)
    frame = asyncio.run(source.frame())
    if args.json:
        print(frame.json(source.monitor))
    else:
        text = frame.text(source.monitor, args.wide)
        # unreachable: the lines go to stderr, where scripts look for errors
        (sys.stdout if frame.unreachable is None else sys.stderr).write(text)
    return 1 if frame.unreachable is not None else 0
