"""The rows ``tardis-netadapter status`` shows, as a terminal table or JSON.

Pure functions of the rows so the rendering is tested without a site; the JSON
keys are a stable interface for scripts (``SCHEMA_VERSION`` changes when they do).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Optional

from .heartbeat import STAGES, ContainerNet, Heartbeat, Isolation, Route, Vpn
from .verdict import Judgement, Verdict

if TYPE_CHECKING:
    from ..brake import BrakeSnapshot
    from .outage import Outage

SCHEMA_VERSION = 1

COLUMNS: tuple[tuple[str, str], ...] = (
    ("uuid", "DRONE"),
    ("job_id", "JOB"),
    ("batch_state", "STATE"),
    ("verdict", "VERDICT"),
    ("heartbeat_age", "HB AGE"),
    ("failing_stage", "STAGE"),
    ("latency_ms", "LATENCY"),
    ("path_error", "PATH ERROR"),
    ("isolation", "ISOLATION"),
    # a dotted key: the value sits inside the drone's JSON object "isolation"
    ("isolation.leaks_blocked", "LEAKS"),
    # mode vpn: the VPN's transport (dtls, tls), from the drone's "vpn" object
    ("vpn", "VPN"),
    # mode nat: the drone's last route check (ok, fail), its "route" object
    ("route", "ROUTE"),
    # mode container-net: the payload container's last report (ok, fail)
    ("container_net", "CNET"),
    ("reason", "REASON"),
)
REASON_WIDTH = 60

#: ``status --wide``: per drone what an operator follows a drone by: where it
#: is (stage), how often its tunnel restarted, its last error, its heartbeat's
#: age and its node; the reason is not cut
WIDE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("uuid", "DRONE"),
    ("job_id", "JOB"),
    ("batch_state", "STATE"),
    ("verdict", "VERDICT"),
    ("stage", "STAGE"),
    ("restarts", "RESTARTS"),
    ("heartbeat_age", "HB AGE"),
    ("host", "NODE"),
    ("latency_ms", "LATENCY"),
    ("path_error", "PATH ERROR"),
    ("last_error", "LAST ERROR"),
    ("reason", "REASON"),
)
#: how much of the drone's last error the wide table shows (--json has it all)
LAST_ERROR_WIDTH = 60


@dataclass(frozen=True)
class StatusRow:
    """One drone as the status command shows it."""

    uuid: str
    job_id: Optional[str]
    #: the batch system's own word for the job's state (RUNNING, PENDING, ...)
    batch_state: str
    verdict: str
    heartbeat_age: Optional[float] = None
    failing_stage: Optional[str] = None
    latency_ms: Optional[float] = None
    reason: str = ""
    host: Optional[str] = None
    restarts: int = 0
    in_collector: Optional[bool] = None
    #: the tunnel supervisor's failure class ("host key mismatch", ...), or None
    path_error: Optional[str] = None
    #: how the payload's traffic is captured (the heartbeat's ``isolation``);
    #: None without a record or from a drone that does not report it
    isolation: Optional[Isolation] = None
    #: the drone's VPN (the heartbeat's ``vpn``): transport and address; None
    #: without a record or from a drone without a VPN
    vpn: Optional[Vpn] = None
    #: the drone's route check (the heartbeat's ``route``): ok, via, seen,
    #: reason; None without a record or from a drone without one (not nat)
    route: Optional[Route] = None
    #: the container's own network (the heartbeat's ``container_net``): ok,
    #: address, seen, reason; None without a record or in another mode
    container_net: Optional[ContainerNet] = None
    #: where the drone is: its failing stage and that stage's word, else the
    #: last stage its record reports (``payload:ok``); None without a record
    stage: Optional[str] = None
    #: the watchdog's last error (the record's ``last_error``), kept after it heals
    last_error: Optional[str] = None


def drone_stage(heartbeat: Optional[Heartbeat]) -> Optional[str]:
    """``STAGE:WORD`` of the stage the drone is at, from its record's stages.

    The failing stage when one fails (the record's own word for it, e.g.
    ``chain:failed``), else the last stage in the drone script's order that
    the record names (``payload:ok`` for a drone that is all the way up).
    """
    if heartbeat is None:
        return None
    stages = heartbeat.stages
    if heartbeat.failing_stage:
        word = stages.get(heartbeat.failing_stage, "failing")
        return f"{heartbeat.failing_stage}:{word}"
    if not stages:
        return None
    order = {name: index for index, name in enumerate(STAGES)}
    last = max(stages, key=lambda name: order.get(name, -1))
    return f"{last}:{stages[last]}"


def make_row(
    uuid: str,
    job_id: Optional[str],
    batch_state: str,
    judgement: Judgement,
    heartbeat: Optional[Heartbeat],
) -> StatusRow:
    """Combine a verdict with the record it was made from."""
    return StatusRow(
        uuid=uuid,
        job_id=job_id,
        batch_state=batch_state,
        verdict=judgement.verdict.value,
        heartbeat_age=judgement.heartbeat_age,
        failing_stage=judgement.failing_stage,
        latency_ms=judgement.latency_ms,
        reason=judgement.reason,
        host=heartbeat.host if heartbeat else None,
        restarts=heartbeat.restarts if heartbeat else 0,
        in_collector=judgement.in_collector,
        path_error=judgement.path_error,
        isolation=heartbeat.isolation if heartbeat else None,
        vpn=heartbeat.vpn if heartbeat else None,
        route=heartbeat.route if heartbeat else None,
        container_net=heartbeat.container_net if heartbeat else None,
        stage=drone_stage(heartbeat),
        last_error=heartbeat.last_error if heartbeat else None,
    )


def _age(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _cell(key: str, row: StatusRow, wide: bool = False) -> str:
    if key == "isolation":
        # ns, preload, or preload! for a drone that wanted a namespace and fell back
        return "-" if row.isolation is None else row.isolation.label
    if key == "vpn":
        # dtls, tls, or - (no VPN, or it is down)
        return "-" if row.vpn is None else row.vpn.label
    if key == "route":
        # ok, fail, or - (no route check: another mode, or no record)
        return "-" if row.route is None else row.route.label
    if key == "container_net":
        # ok, fail, or - (another mode, or no record)
        return "-" if row.container_net is None else row.container_net.label
    if key == "isolation.leaks_blocked":
        leaks = row.isolation.leaks_blocked if row.isolation else None
        return "-" if leaks is None else str(leaks)
    value = getattr(row, key)
    if key == "heartbeat_age":
        return _age(value)
    if key == "latency_ms":
        return "-" if value is None else f"{value:.1f}ms"
    if key in ("reason", "last_error"):
        if value is None or value == "":
            return "-"
        text = " ".join(str(value).split())  # no line breaks in a table
        text = "".join(c if c.isprintable() else "?" for c in text)
        width = LAST_ERROR_WIDTH if key == "last_error" else REASON_WIDTH
        if key == "reason" and wide:
            return text  # the wide view's last column: nothing cut
        return text if len(text) <= width else text[: width - 3] + "..."
    text = "-" if value is None or value == "" else str(value)
    return "".join(c if c.isprintable() else "?" for c in text)


def counts(rows: Sequence[StatusRow]) -> dict[str, int]:
    """Drones per verdict, every verdict present."""
    result = {v.value: 0 for v in Verdict}
    for row in rows:
        result[row.verdict] = result.get(row.verdict, 0) + 1
    return result


def render_table(rows: Sequence[StatusRow], site: str = "", wide: bool = False) -> str:
    """An aligned plain-text table with a one-line summary; no colour, no wrapping.

    ``wide``: the columns of ``status --wide`` (WIDE_COLUMNS) instead.
    """
    columns = WIDE_COLUMNS if wide else COLUMNS
    cells = [[title for _, title in columns]]
    cells += [[_cell(key, row, wide) for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
        for line in cells
    ]
    summary = ", ".join(f"{n} {v}" for v, n in counts(rows).items() if n)
    title = f"{site}: " if site else ""
    lines.append(f"{title}{len(rows)} drone(s){': ' + summary if summary else ''}")
    return "\n".join(lines) + "\n"


def to_json(
    rows: Sequence[StatusRow],
    site: str,
    site_time: Optional[float],
    extra: Optional[Mapping[str, Any]] = None,
) -> str:
    """The stable machine-readable form: {schema, site, site_time, counts, drones}."""
    document = {
        "schema": SCHEMA_VERSION,
        "site": site,
        "site_time": site_time,
        "counts": counts(rows),
        # slurm_state: the key's name before batch systems were pluggable,
        # kept so scripts written against schema 1 go on working
        "drones": [{**asdict(row), "slurm_state": row.batch_state} for row in rows],
    }
    document.update(extra or {})
    return json.dumps(document, indent=2, sort_keys=True)


def brake_line(brake: Optional[BrakeSnapshot]) -> Optional[str]:
    """The line ``status`` puts at the top when the site's brake refuses deploys.

    E.g. ``site NetLab: brake engaged: 5 drones in a row died within 300 s;
    next probe in 42 s``, or ``site NetLab: deploys held: site outage ...``:
    an operator must see first that the adapter is refusing to deploy, before
    reading a table that may well be empty. None when it is not refusing.
    """
    if brake is None or not (brake.engaged or brake.held is not None):
        return None
    return "".join(c if c.isprintable() else "?" for c in brake.headline)


def outage_line(site: str, outage: Optional[Outage]) -> Optional[str]:
    """The line ``status`` puts at the top when it judges the site in outage.

    E.g. ``site NetLab: site outage in stage tunnel: 5 of 5 running drones
    failing``: the failures in the table are the site's, not the drones'.
    ``status`` judges one snapshot, so it sees an outage begin as the adapter
    does, but not the adapter's hysteresis at its end (the adapter's hold,
    from the brake state file, shows that).
    """
    if outage is None:
        return None
    return "".join(
        c if c.isprintable() else "?" for c in f"site {site}: {outage.headline}"
    )


def outage_json(outage: Optional[Outage]) -> Optional[dict[str, Any]]:
    """The ``outage`` object of ``status --json`` (None: no outage judged)."""
    if outage is None:
        return None
    return {**asdict(outage), "headline": outage.headline}


def brake_json(brake: Optional[BrakeSnapshot]) -> Optional[dict[str, Any]]:
    """The ``brake`` object of ``status --json`` (None: no brake state known)."""
    if brake is None:
        return None
    return {**asdict(brake), "headline": brake.headline}
