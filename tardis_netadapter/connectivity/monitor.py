"""One site's connectivity monitor: the seam the adapter's poller calls each cycle.

It owns the little state verdicts need across cycles (newest record per drone,
site clock of the last complete collection, first time a job was seen running)
and nothing else: commands are built and output parsed by ``collect``, verdicts
are the pure ``verdict.judge``. Nothing here raises on bad input.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any, Optional

from tardis.interfaces.siteadapter import ResourceStatus

from .collect import (
    Collection,
    HeartbeatProbe,
    HeartbeatStore,
    cleanup_command,
    combine_command,
    split_output,
)
from .heartbeat import UUID_PATTERN
from .outage import Outage, judge_outage, spare
from .verdict import JobView, Judgement, Timing, Verdict, judge

logger = logging.getLogger("cobald.runtime.tardis_netadapter.connectivity")

#: after the adapter could not list the site for longer than the grace (its
#: own ssh to the login node down, e.g. during a login node outage), drones
#: get this many heartbeat intervals to write a fresh record before any is
#: judged lost or never-connected: a record written before the drone healed
#: would otherwise show it failing for the whole blind spell.
BLIND_HOLD_INTERVALS = 2.0


class SiteMonitor:
    """Heartbeat collection and verdicts for the drones of one site."""

    def __init__(
        self, heartbeat_dir: str, timing: Timing, timeout: int = 30, site: str = ""
    ) -> None:
        self.heartbeat_dir = heartbeat_dir
        self.site = site
        self.timing = timing
        self.timeout = timeout
        self.store = HeartbeatStore()
        self.first_running: dict[str, float] = {}
        self.judgements: dict[str, Judgement] = {}
        #: the site outage judged on the latest listing (None: none); see outage.py
        self.outage: Optional[Outage] = None
        self.probe = HeartbeatProbe(heartbeat_dir, timeout)
        self._observed: Any = None  # the snapshot itself: ids get reused
        #: the tunnel failure class last logged per drone (see _log_path_errors)
        self.path_errors: dict[str, Optional[str]] = {}
        #: drones whose fallback to preload capture was logged (_log_fallbacks)
        self.fallbacks_logged: set[str] = set()
        #: site clock of the last judged complete collection, and until when
        #: terminal verdicts are held after a blind spell (see _hold)
        self._judged_at: Optional[float] = None
        self.hold_until: Optional[float] = None

    def command(self, batch_command: str) -> str:
        """The poller's batch status command with the heartbeat collection appended."""
        return combine_command(batch_command, self.heartbeat_dir, self.timeout)

    def ingest(self, stdout: str) -> str:
        """Take the heartbeats out of the combined output; return the batch part."""
        batch_part, collection = split_output(stdout)
        self.store.update(collection)
        if not collection.complete:
            logger.info("heartbeat collection incomplete this cycle; verdicts wait")
        return batch_part

    def observe(
        self,
        snapshot: Any,
        collector: Optional[set[str]] = None,
    ) -> dict[str, Judgement]:
        """Ingest a poller snapshot and judge every drone job in it.

        Duck-typed on ``batch.poller.StatusSnapshot``: ``jobs`` (records with
        ``name``, a TARDIS ``status`` and ``elapsed`` seconds) and
        ``extras[self.probe.name]`` (a Collection). No batch system's words:
        a job runs when its status is Running. Observing the same snapshot
        twice does nothing new.
        """
        if self._observed is snapshot:
            return self.judgements
        self._observed = snapshot
        extras = getattr(snapshot, "extras", None) or {}
        collection = extras.get(self.probe.name)
        if isinstance(collection, Collection):
            self.store.update(collection)
        views: dict[str, JobView] = {}
        for job in getattr(snapshot, "jobs", {}).values():
            name = getattr(job, "name", "")
            if not UUID_PATTERN.fullmatch(name or ""):
                continue
            running = getattr(job, "status", None) is ResourceStatus.Running
            if name in views and views[name].running:
                continue  # an older job of a resubmitted drone
            started = None
            elapsed = getattr(job, "elapsed", None)
            if running and elapsed is not None and self.store.now is not None:
                started = self.store.now - elapsed
            views[name] = JobView(running, started)
        return self.judge(views, collector)

    def judge(
        self,
        jobs: Mapping[str, JobView],
        collector: Optional[set[str]] = None,
    ) -> dict[str, Judgement]:
        """Verdicts for ``jobs`` (drone uuid -> the batch system's view), remembered.

        ``jobs`` is the whole listing: the site outage (``self.outage``) is
        judged over it, and a drone failing in the outage's stage is spared
        (``degraded``, never ``lost`` or ``never-connected``).
        """
        now = self.store.now
        judgements = {}
        for uuid, view in jobs.items():
            in_collector = None if collector is None else uuid in collector
            if now is None:
                # no complete collection yet: nothing can be concluded
                judgements[uuid] = judge(
                    JobView(view.running), None, 0.0, self.timing, in_collector
                )
                continue
            if view.running and view.started is None:
                view = JobView(True, self.first_running.setdefault(uuid, now))
            judgements[uuid] = judge(
                view, self.store.get(uuid), now, self.timing, in_collector
            )
        if now is not None:  # without a complete collection the outage stands
            self.outage = judge_outage(judgements, self.timing.interval, self.outage)
            judgements = {u: spare(j, self.outage) for u, j in judgements.items()}
            judgements = self._hold(now, judgements)
        self.judgements.update(judgements)
        self._log_path_errors(judgements)
        self._log_fallbacks(judgements)
        return judgements

    def _hold(
        self, now: float, judgements: dict[str, Judgement]
    ) -> dict[str, Judgement]:
        """Terminal verdicts become ``degraded`` shortly after a blind spell.

        When the previous complete collection is older than the grace, the
        adapter saw nothing for that long: the records it reads now may
        predate the drones' recovery (a tunnel back 2 s after the login node,
        its next record up to an interval later), so for
        ``BLIND_HOLD_INTERVALS`` heartbeat intervals nothing is ended for it.
        """
        previous, self._judged_at = self._judged_at, now
        if previous is not None and now - previous > self.timing.grace:
            self.hold_until = now + BLIND_HOLD_INTERVALS * self.timing.interval
            logger.warning(
                "%sno listing for %.0f s (longer than the grace, %.0f s): no "
                "drone is ended before fresh heartbeats, for %.0f s",
                f"{self.site}: " if self.site else "",
                now - previous,
                self.timing.grace,
                self.hold_until - now,
            )
        if self.hold_until is None or now >= self.hold_until:
            return judgements
        return {
            uuid: replace(
                j,
                verdict=Verdict.DEGRADED,
                reason=f"adapter was blind, waiting for fresh heartbeats: {j.reason}",
            )
            if j.verdict.terminal
            else j
            for uuid, j in judgements.items()
        }

    def _log_path_errors(self, judgements: Mapping[str, Judgement]) -> None:
        """Say once per change of a drone's tunnel failure class what it is.

        The class (``host key mismatch``, ``key refused``, ...) comes from the
        drone's supervisor through its heartbeat; a drone that keeps failing
        the same way is not logged every cycle. Only the adapter's monitor
        (given its ``site``) logs: ``status`` shows the class in its table.
        """
        if not self.site:
            return
        for uuid, judgement in judgements.items():
            known = self.path_errors.get(uuid)
            cls = judgement.path_error
            if cls == known:
                continue
            self.path_errors[uuid] = cls
            record = self.store.get(uuid)
            where = f"{self.site}: "
            if cls is None:
                if known is not None:
                    logger.info("%sdrone %s: tunnel works again", where, uuid)
                continue
            detail = record.path_error.detail if record and record.path_error else ""
            logger.warning(
                "%sdrone %s: tunnel failing: %s%s",
                where,
                uuid,
                cls,
                f" ({detail})" if detail else "",
            )

    def _log_fallbacks(self, judgements: Mapping[str, Judgement]) -> None:
        """Say once per drone that it could not get its network namespace.

        A drone configured for ``capture: namespace`` with ``isolation:
        preferred`` falls back to LD_PRELOAD capture where the worker forbids
        unprivileged user namespaces; it works, but other users of the node
        can ride its tunnel, so an operator should hear it, once (its records
        say it every round for the drone's whole life). Only the adapter's
        monitor (given its ``site``) logs: ``status`` shows ``preload!``.
        """
        if not self.site:
            return
        for uuid in judgements:
            if uuid in self.fallbacks_logged:
                continue
            record = self.store.get(uuid)
            isolation = record.isolation if record is not None else None
            if record is None or isolation is None or not isolation.fallback:
                continue
            self.fallbacks_logged.add(uuid)
            logger.warning(
                "%s: drone %s: namespace capture unavailable on %s (%s); "
                "capture falls back to preload",
                self.site,
                uuid,
                record.host or "its worker",
                isolation.reason,
            )

    def judgement(self, uuid: str) -> Optional[Judgement]:
        """The latest verdict for one drone, for ``resource_status``."""
        return self.judgements.get(uuid)

    def terminal(self) -> list[str]:
        """Drones whose latest verdict ends them (lost, never-connected)."""
        return sorted(u for u, j in self.judgements.items() if j.verdict.terminal)

    def forget(self, uuids: Iterable[str]) -> Optional[str]:
        """Drop gone drones; return the command removing their heartbeat files.

        The same removal also rides in the next collection (``probe.gone``),
        for callers that do not run the returned command themselves.
        """
        uuids = list(uuids)
        self.probe.gone.update(uuids)
        self.store.forget(uuids)
        for uuid in uuids:
            self.first_running.pop(uuid, None)
            self.path_errors.pop(uuid, None)
            self.fallbacks_logged.discard(uuid)
            self.judgements.pop(uuid, None)
        return cleanup_command(self.heartbeat_dir, uuids)

    def counts(self) -> dict[str, int]:
        """Drones per verdict (every verdict present, zeros included)."""
        counts = {v.value: 0 for v in Verdict}
        for judgement in self.judgements.values():
            counts[judgement.verdict.value] += 1
        return counts
