"""Is the site down, rather than its drones? A pure judgement over one cycle's verdicts.

Why: when a site's login node goes away (sshd restarted, the node rebooted, a
firewall change), every drone's tunnel fails at once. Judged one by one, each
drone is ``lost`` after its grace and ended, and COBalD submits replacements
that cannot connect either while the site is down, whereas the drones that
were ended would have healed when it came back. A failure that hits most of a
site's drones in the same stage at the same moment is the site's, not theirs.

The rule (batch- and mode-neutral: it sees only verdicts, stages and times):

* the *population* is the site's running drones that have a heartbeat record
  (drones still without one say nothing about the path yet);
* a drone *fails* in stage S since t when its verdict names a failing stage S
  and ``failing_since`` t (``judge`` sets both; a late record fails in stage
  ``heartbeat`` since its own time, as the verdict has it);
* the site **enters** an outage in stage S when, within some window of
  :data:`OUTAGE_WINDOW_INTERVALS` heartbeat intervals, at least
  :data:`OUTAGE_MIN_DRONES` drones and at least :data:`OUTAGE_START_SHARE` of
  the population began failing in S (of several stages, the largest cluster);
* it **stays** in that outage while at least :data:`OUTAGE_END_SHARE` of the
  population fails in S, whenever their failures began (drones started during
  the outage fail too); it ends below that, or when no drone fails in S.

One snapshot is enough to enter an outage (``status`` judges a single
snapshot); only the hysteresis of the end needs the previous judgement.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Optional

from .verdict import Judgement, Verdict

#: at least this many drones must fail together: with one or two drones a
#: common failure cannot be told from two drones failing on the same node, and
#: the drone-by-drone verdict (replace them) is the safer answer for them.
OUTAGE_MIN_DRONES = 3
#: ... and at least this share of the population: most drones failing at once
#: is what a site outage looks like; a minority failing together is a node, a
#: rack or a switch, and replacing those drones helps.
OUTAGE_START_SHARE = 0.5
#: the outage lasts while at least this share still fails in its stage. Lower
#: than the start share (hysteresis), so that drones healing one by one as the
#: site returns (each at its next watchdog round) do not end and restart the
#: outage, flapping the hold on submissions.
OUTAGE_END_SHARE = 0.25
#: failures belong together when they began within this many heartbeat
#: intervals of each other: each watchdog notices a site-wide cut at its next
#: round (within one interval, plus the probe time), so the drones of one
#: outage spread over at most about one interval; two leave margin, and
#: failures further apart are independent events.
OUTAGE_WINDOW_INTERVALS = 2.0


@dataclass(frozen=True)
class Outage:
    """A site outage: its stage, how many drones fail in it, since when (site clock)."""

    stage: str
    failing: int
    population: int
    since: float

    @property
    def headline(self) -> str:
        """One line for humans (``status``, the log)."""
        return (
            f"site outage in stage {self.stage}: {self.failing} of "
            f"{self.population} running drones failing"
        )


def failures(
    judgements: Mapping[str, Judgement],
) -> tuple[int, list[tuple[str, float]]]:
    """The population size and the (stage, failing_since) of each failing drone."""
    population = 0
    failing = []
    for judgement in judgements.values():
        if judgement.verdict is Verdict.PENDING or judgement.heartbeat_age is None:
            continue  # not running, or no record: says nothing about the path
        population += 1
        if judgement.failing_stage is not None and judgement.failing_since is not None:
            failing.append((judgement.failing_stage, judgement.failing_since))
    return population, failing


def largest_cluster(times: list[float], window: float) -> tuple[int, float]:
    """The most ``times`` within ``window`` of each other, and the earliest of them."""
    times = sorted(times)
    best, since, low = 0, times[0] if times else 0.0, 0
    for high, time in enumerate(times):
        while time - times[low] > window:
            low += 1
        if high - low + 1 > best:
            best, since = high - low + 1, times[low]
    return best, since


def judge_outage(
    judgements: Mapping[str, Judgement],
    interval: float,
    current: Optional[Outage] = None,
) -> Optional[Outage]:
    """The site's outage after this cycle's ``judgements`` (None: no outage).

    ``current`` is the outage judged the cycle before (None for a single
    snapshot); ``interval`` the heartbeat interval in seconds.
    """
    population, failing = failures(judgements)
    if current is not None:
        in_stage = [since for stage, since in failing if stage == current.stage]
        if in_stage and len(in_stage) >= OUTAGE_END_SHARE * population:
            return Outage(current.stage, len(in_stage), population, current.since)
    window = OUTAGE_WINDOW_INTERVALS * interval
    best: Optional[Outage] = None
    for stage in sorted({stage for stage, _ in failing}):
        count, since = largest_cluster([t for s, t in failing if s == stage], window)
        if count < OUTAGE_MIN_DRONES or count < OUTAGE_START_SHARE * population:
            continue
        if best is None or count > best.failing:
            in_stage = sum(1 for s, _ in failing if s == stage)
            best = Outage(stage, in_stage, population, since)
    return best


def spare(judgement: Judgement, outage: Optional[Outage]) -> Judgement:
    """``judgement``, downgraded from terminal to ``degraded`` if the outage explains it.

    A drone failing in the outage's stage is not ended: replacing it cannot
    help while the site is down, and it heals when the site returns. A drone
    failing in another stage is judged as ever.
    """
    if (
        outage is None
        or not judgement.verdict.terminal
        or judgement.failing_stage != outage.stage
    ):
        return judgement
    return replace(
        judgement,
        verdict=Verdict.DEGRADED,
        reason=f"site outage in stage {outage.stage} "
        f"({outage.failing} of {outage.population} drones), not ended: "
        f"{judgement.reason}",
    )
