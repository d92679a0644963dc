"""The verdict function on a table of cases, boundaries at grace, lateness and deadline."""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import pytest

from tardis_netadapter.config import load_profile
from tardis_netadapter.connectivity.heartbeat import Heartbeat, Probe
from tardis_netadapter.connectivity.verdict import JobView, Timing, Verdict, judge
from tardis_netadapter.keepalive import derive_budget

T = Timing(interval=30, grace=120, connect_deadline=600)
NOW = 100_000.0
STARTED = NOW - 1000  # running well past the deadline unless a case says otherwise


def hb(
    age: float = 5,
    ok: bool = True,
    last_ok: Optional[float] = None,
    failing_since: Optional[float] = None,
    stage: Optional[str] = None,
) -> Heartbeat:
    """A record written ``age`` seconds before NOW."""
    time = NOW - age
    probe = Probe("cm:9618", ok, 12.5 if ok else None, None if ok else "refused")
    if ok:
        return Heartbeat("d-1", time, probes=(probe,), last_ok=time)
    return Heartbeat(
        "d-1",
        time,
        probes=(probe,),
        last_ok=last_ok,
        failing_since=failing_since,
        failing_stage=stage or "chain",
        last_error="refused",
    )


RUN = JobView(True, STARTED)
YOUNG = JobView(True, NOW - 100)

CASES = [
    # (name, slurm, heartbeat, collector, verdict, stage)
    ("queued", JobView(False), None, None, Verdict.PENDING, None),
    (
        "queued with a stale record",
        JobView(False),
        hb(age=9999),
        None,
        Verdict.PENDING,
        None,
    ),
    ("young, no record", YOUNG, None, None, Verdict.CONNECTING, None),
    ("start unknown, no record", JobView(True), None, None, Verdict.CONNECTING, None),
    (
        "at deadline, no record",
        JobView(True, NOW - 600),
        None,
        None,
        Verdict.CONNECTING,
        None,
    ),
    (
        "past deadline, no record",
        JobView(True, NOW - 601),
        None,
        None,
        Verdict.NEVER_CONNECTED,
        "heartbeat",
    ),
    ("no record but in collector", RUN, None, True, Verdict.CONNECTED, None),
    (
        "no record, not in collector",
        RUN,
        None,
        False,
        Verdict.NEVER_CONNECTED,
        "heartbeat",
    ),
    ("healthy", RUN, hb(), None, Verdict.CONNECTED, None),
    ("healthy, absent from collector", RUN, hb(), False, Verdict.CONNECTED, None),
    (
        "healthy record exactly 2 intervals old",
        RUN,
        hb(age=60),
        None,
        Verdict.CONNECTED,
        None,
    ),
    ("healthy record just late", RUN, hb(age=61), None, Verdict.DEGRADED, "heartbeat"),
    (
        "healthy record aged grace",
        RUN,
        hb(age=120),
        None,
        Verdict.DEGRADED,
        "heartbeat",
    ),
    (
        "healthy record older than grace",
        RUN,
        hb(age=121),
        None,
        Verdict.LOST,
        "heartbeat",
    ),
    (
        "stale record, collector still has ad",
        RUN,
        hb(age=500),
        True,
        Verdict.LOST,
        "heartbeat",
    ),
    (
        "failing briefly",
        RUN,
        hb(ok=False, last_ok=NOW - 40, failing_since=NOW - 30),
        None,
        Verdict.DEGRADED,
        "chain",
    ),
    (
        "failing exactly grace",
        RUN,
        hb(ok=False, last_ok=NOW - 130, failing_since=NOW - 120),
        None,
        Verdict.DEGRADED,
        "chain",
    ),
    (
        "failing longer than grace",
        RUN,
        hb(ok=False, last_ok=NOW - 131, failing_since=NOW - 121),
        None,
        Verdict.LOST,
        "chain",
    ),
    (
        "failing, tunnel stage",
        RUN,
        hb(ok=False, last_ok=NOW - 500, failing_since=NOW - 400, stage="tunnel"),
        None,
        Verdict.LOST,
        "tunnel",
    ),
    (
        "failing without failing_since uses record time",
        RUN,
        hb(age=10, ok=False, last_ok=NOW - 200),
        None,
        Verdict.DEGRADED,
        "chain",
    ),
    (
        "failing, record stale too",
        RUN,
        hb(age=100, ok=False, last_ok=NOW - 300, failing_since=NOW - 290),
        None,
        Verdict.LOST,
        "chain",
    ),
    (
        "never ok, young",
        YOUNG,
        hb(ok=False, failing_since=NOW - 90, stage="tunnel"),
        None,
        Verdict.CONNECTING,
        "tunnel",
    ),
    (
        "never ok, failing > grace, before deadline",
        JobView(True, NOW - 500),
        hb(ok=False, failing_since=NOW - 490, stage="tunnel"),
        None,
        Verdict.CONNECTING,
        "tunnel",
    ),
    (
        "never ok, past deadline",
        RUN,
        hb(ok=False, failing_since=NOW - 990, stage="tunnel"),
        None,
        Verdict.NEVER_CONNECTED,
        "tunnel",
    ),
    (
        "never ok, stale, past deadline",
        RUN,
        hb(age=900, ok=False, failing_since=NOW - 990, stage="cvmfs"),
        None,
        Verdict.NEVER_CONNECTED,
        "cvmfs",
    ),
    (
        "never ok, in collector, failing",
        RUN,
        hb(ok=False, failing_since=NOW - 990),
        True,
        Verdict.NEVER_CONNECTED,
        "chain",
    ),
]


@pytest.mark.parametrize(
    "slurm, record, collector, verdict, stage",
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_verdict_table(slurm, record, collector, verdict, stage):
    judgement = judge(slurm, record, NOW, T, in_collector=collector)
    assert judgement.verdict is verdict, judgement.reason
    assert judgement.failing_stage == stage
    assert judgement.reason


def test_only_lost_and_never_connected_are_terminal():
    assert {v for v in Verdict if v.terminal} == {Verdict.LOST, Verdict.NEVER_CONNECTED}


def test_display_fields():
    judgement = judge(RUN, hb(age=7), NOW, T, in_collector=False)
    assert judgement.heartbeat_age == 7
    assert judgement.latency_ms == 12.5
    assert judgement.in_collector is False


def test_future_record_time_is_age_zero():
    """A worker clock ahead of the site's must not produce negative ages."""
    judgement = judge(RUN, hb(age=-50), NOW, T)
    assert judgement.heartbeat_age == 0
    assert judgement.verdict is Verdict.CONNECTED


def test_recovery_after_degraded_is_connected():
    failing = hb(ok=False, last_ok=NOW - 60, failing_since=NOW - 50)
    assert judge(RUN, failing, NOW, T).verdict is Verdict.DEGRADED
    healed = replace(hb(), seq=failing.seq + 1)
    assert judge(RUN, healed, NOW, T).verdict is Verdict.CONNECTED


def test_cut_link_is_lost_within_grace_plus_two_intervals():
    """Simulate the watchdog (probe every interval) and a poller (every interval):
    a cut at any phase is reported lost no later than grace + 2 intervals after it."""
    for phase in range(0, 30, 3):
        cut = 1000.0 + phase
        last_ok, failing_since, record = None, None, None
        lost_at = None
        for tick in range(0, 2000):
            now = float(tick)
            if tick % 30 == 0 and tick >= 0:  # watchdog round at this second
                if now < cut:
                    last_ok, failing_since = now, None
                    record = Heartbeat("d-1", now, last_ok=last_ok)
                else:
                    failing_since = failing_since or now
                    record = Heartbeat(
                        "d-1",
                        now,
                        last_ok=last_ok,
                        failing_since=failing_since,
                        failing_stage="chain",
                    )
            if tick % 30 == 15 and record is not None:  # poller, off phase
                verdict = judge(JobView(True, 0.0), record, now, T).verdict
                if now < cut + T.grace:
                    assert verdict is not Verdict.LOST, (phase, now)
                if verdict is Verdict.LOST:
                    lost_at = now
                    break
        assert lost_at is not None
        assert lost_at - cut <= T.grace + 2 * T.interval, (phase, lost_at - cut)


def test_timing_from_budget_follows_profile():
    profile = load_profile(
        {
            "mode": "direct",
            "chain": {"tool": "none"},
            "pool": {"collector": "cm.example.org:9618"},
            "firewall": {"idle_timeout": 40},
        }
    )
    budget = derive_budget(profile)
    timing = Timing.from_budget(budget)
    assert timing.interval == budget.watchdog_interval == 20
    assert timing.grace == budget.grace
    assert timing.connect_deadline == budget.connect_deadline
    assert timing.late_after == 40
