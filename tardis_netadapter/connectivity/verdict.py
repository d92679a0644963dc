"""The verdict on one drone's path to the pool: a pure function of what was seen.

Pure so that every boundary (grace, connect deadline, staleness) is tested on a
table of cases, and so the adapter's poller and the ``status`` command agree.
All times are epoch seconds on ONE clock: pass the site clock of the
collection (``HeartbeatStore.now``), and Slurm start / first-seen-running
times taken on the same clock. See docs/monitoring.md for the state machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

from .heartbeat import Heartbeat


class Verdict(str, Enum):
    """What the adapter concludes; LOST and NEVER_CONNECTED end the drone."""

    PENDING = "pending"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DEGRADED = "degraded"
    LOST = "lost"
    NEVER_CONNECTED = "never-connected"

    @property
    def terminal(self) -> bool:
        """The adapter raises TardisDroneCrashed on these."""
        return self in (Verdict.LOST, Verdict.NEVER_CONNECTED)


@dataclass(frozen=True)
class Timing:
    """Heartbeat interval, grace and connect deadline of a site, in seconds."""

    interval: float
    grace: float
    connect_deadline: float

    @classmethod
    def from_budget(cls, budget: object) -> Timing:
        """From a keepalive.KeepaliveBudget (its derived or explicit monitoring values)."""
        return cls(
            interval=float(budget.watchdog_interval),  # type: ignore[attr-defined]
            grace=float(budget.grace),  # type: ignore[attr-defined]
            connect_deadline=float(budget.connect_deadline),  # type: ignore[attr-defined]
        )

    @property
    def late_after(self) -> float:
        """A record older than this missed two heartbeats: the drone is degraded."""
        return 2 * self.interval


@dataclass(frozen=True)
class JobView:
    """The batch system's side: is the job running, and since when (if known)."""

    running: bool
    started: Optional[float] = None


@dataclass(frozen=True)
class Judgement:
    """A verdict with what an operator needs to see next to it."""

    verdict: Verdict
    reason: str
    failing_stage: Optional[str] = None
    heartbeat_age: Optional[float] = None
    latency_ms: Optional[float] = None
    in_collector: Optional[bool] = None
    #: site clock time the failure began (None: nothing failing, or no record);
    #: what the site outage judgement (outage.py) clusters on
    failing_since: Optional[float] = None
    #: the tunnel supervisor's failure class (heartbeat path_error), e.g.
    #: "host key mismatch"; None while it reports none
    path_error: Optional[str] = None


def judge(
    job: JobView,
    heartbeat: Optional[Heartbeat],
    now: float,
    timing: Timing,
    in_collector: Optional[bool] = None,
) -> Judgement:
    """The verdict for one drone.

    ``in_collector``: True/False if the collector was asked, None if unknown. It
    only speaks for a drone without any heartbeat (a site whose heartbeats the
    adapter cannot read): a startd ad proves the path worked. Ads linger in the
    collector for minutes, so they never overrule a heartbeat.
    """
    age = None if heartbeat is None else max(0.0, now - heartbeat.time)
    path_error = heartbeat.path_error if heartbeat is not None else None

    def result(
        verdict: Verdict,
        reason: str,
        stage: Optional[str] = None,
        since: Optional[float] = None,
    ) -> Judgement:
        return Judgement(
            verdict,
            reason,
            stage,
            age,
            heartbeat.latency_ms if heartbeat is not None else None,
            in_collector,
            since,
            path_error.cls if path_error is not None else None,
        )

    if not job.running:
        return result(Verdict.PENDING, "job is not running")
    running_for = None if job.started is None else now - job.started
    past_deadline = running_for is not None and running_for > timing.connect_deadline

    if heartbeat is None or age is None:
        if in_collector:
            return result(Verdict.CONNECTED, "no heartbeat; startd is in the collector")
        if past_deadline:
            return result(
                Verdict.NEVER_CONNECTED,
                f"no heartbeat {running_for:.0f}s after start "
                f"(deadline {timing.connect_deadline:.0f}s)",
                "heartbeat",
            )
        return result(Verdict.CONNECTING, "no heartbeat yet")

    if age > timing.late_after:
        # the drone, its watchdog or the filesystem/transport stalled: the last
        # sign of life is the record itself, unless it was already failing.
        failing_since = (
            heartbeat.time
            if heartbeat.ok
            else heartbeat.failing_since or heartbeat.time
        )
        stage = heartbeat.failing_stage if not heartbeat.ok else "heartbeat"
        reason = f"last heartbeat {age:.0f}s ago"
    elif heartbeat.ok:
        return result(Verdict.CONNECTED, "probes answered")
    else:
        failing_since = heartbeat.failing_since or heartbeat.time
        stage = heartbeat.failing_stage or "pool"
        reason = heartbeat.last_error or f"stage {stage} failing"
        if path_error is not None and stage == "tunnel":
            # ssh's own reason is the one to act on (a changed host key, a
            # refused key), not "the SOCKS port is not up"
            reason = f"{path_error.cls}: {path_error.detail or reason}"

    failing_for = max(0.0, now - failing_since)
    if heartbeat.last_ok is not None:
        if failing_for > timing.grace:
            return result(
                Verdict.LOST,
                f"failing for {failing_for:.0f}s > grace {timing.grace:.0f}s: {reason}",
                stage,
                failing_since,
            )
        return result(
            Verdict.DEGRADED,
            f"failing for {failing_for:.0f}s: {reason}",
            stage,
            failing_since,
        )
    if past_deadline:
        return result(
            Verdict.NEVER_CONNECTED,
            f"no good heartbeat {running_for:.0f}s after start "
            f"(deadline {timing.connect_deadline:.0f}s): {reason}",
            stage,
            failing_since,
        )
    return result(Verdict.CONNECTING, reason, stage, failing_since)
