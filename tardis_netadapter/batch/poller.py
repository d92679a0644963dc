"""The batch-neutral status poller: one listing per site and cycle, never taken on trust.

Every drone of a site, of every machine type, is answered from one listing
(the driver's ``list_command``) per cycle; concurrent callers share one
refresh; a failed refresh is not retried by every drone. A listing is checked
before it is believed (:class:`SitePoller`), because believing a wrong one
ends drones whose jobs run on, unseen. Probes (the connectivity monitor's
heartbeat collection) ride in the same executor call.

Nothing here knows a batch system: it sees :class:`~.driver.JobRecord` objects
with a TARDIS ``ResourceStatus``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from tardis.interfaces.executor import Executor
from tardis.interfaces.siteadapter import ResourceStatus

from . import runner
from .driver import BatchDriver, JobRecord

logger = logging.getLogger("cobald.runtime.tardis_netadapter.batch")


class Probe(Protocol):
    """Extra data gathered in the same executor call as the listing (e.g. heartbeats).

    ``command`` is a shell snippet run after the listing succeeded; its stdout is
    handed to ``parse`` and the result lands in ``StatusSnapshot.extras[name]``.
    A probe must not fail the call: end its command with ``|| true``.
    """

    name: str
    command: str

    def parse(self, text: str) -> Any: ...


@dataclass(frozen=True)
class StatusSnapshot:
    """What one refresh saw; ``started`` is taken before the command was sent."""

    started: float
    finished: float
    jobs: Mapping[str, JobRecord]
    extras: Mapping[str, Any] = field(default_factory=dict)

    def by_name(self, name: str) -> Optional[JobRecord]:
        """The newest job with this name (drones are named by their uuid)."""
        matches = [job for job in self.jobs.values() if job.name == name]
        return max(matches, key=lambda job: _id_key(job.job_id)) if matches else None


def _id_key(job_id: str) -> tuple[int, str]:
    digits = re.match(r"\d+", job_id)
    return (int(digits.group(0)) if digits else -1, job_id)


class StatusUnavailable(RuntimeError):
    """The last refresh failed a moment ago; not retried yet to spare the login node."""


class ListingUntrusted(RuntimeError):
    """The listing came, but not as an answer that can be taken as the whole truth."""


#: lines around the listing's own output: whatever a login shell prints before it
#: (banners) is ignored, and output that stops before the end marker was cut
#: short and is not trusted.
_MARKER = "@@tardis-netadapter:{}@@"
LISTING_BEGIN = _MARKER.format("listing")
LISTING_END = _MARKER.format("listing-end")

#: how long an empty listing must persist, while jobs were active, before it is
#: believed (longer than Slurm's default MinJobAge of 300 s, during which a
#: finished job is still listed with its final state)
TRUST_EMPTY_AFTER = 600.0


class _Refresh:
    """One running refresh and the callers waiting for it.

    Each caller awaits a future of its own, settled by one callback when the
    refresh ends: a cancelled caller cannot cancel the shared refresh. A
    per-caller ``asyncio.shield`` would do the same with an extra future and
    an extra event-loop hop per caller; at 5,000 drones that measured 1.7-1.9x
    the stock adapter's CPU time per cycle instead of 0.8-0.95x
    (benchmarks/adapter_scale.py).
    """

    __slots__ = ("task", "started", "waiters")

    def __init__(self, task: asyncio.Future, started: float):
        self.task = task
        self.started = started
        self.waiters: list[asyncio.Future] = []

    def wait(self) -> asyncio.Future:
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        return waiter

    def settle(self) -> Optional[BaseException]:
        """Pass the outcome to every waiter; return the error, if any."""
        task, waiters, self.waiters = self.task, self.waiters, []
        if task.cancelled():
            for waiter in waiters:
                if not waiter.done():
                    waiter.cancel()
            return None
        error = task.exception()
        for waiter in waiters:
            if waiter.done():
                continue
            if error is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(task.result())
        return error


class SitePoller:
    """One bulk listing per site, shared by every machine type and drone.

    ``snapshot()`` returns the current snapshot while it is younger than
    ``max_age`` seconds; otherwise one refresh runs and every concurrent
    caller awaits that same refresh. A failed refresh is reported to every
    waiter and, for ``retry_after`` seconds, to later callers too, so a dead
    login node sees one attempt per interval, not one per drone.

    A listing is never believed blindly: output cut short, a line that is not a
    job line, or an empty listing while jobs were running (a login node's
    hiccup) fail the refresh instead of reporting every drone gone; and a job
    missing from one listing is only gone once a later listing misses it too
    (:meth:`status_of`).

    Probes (see :class:`Probe`) extend the same executor call; the
    connectivity monitor adds its heartbeat collection this way.
    """

    def __init__(
        self,
        driver: BatchDriver,
        executor: Executor,
        *,
        max_age: float = 30.0,
        retry_after: Optional[float] = None,
        timeout: Optional[float] = None,
        probes: Sequence[Probe] = (),
        clock: Callable[[], float] = time.monotonic,
        name: str = "",
        trust_empty_after: float = TRUST_EMPTY_AFTER,
    ):
        self.driver = driver
        self.executor = executor
        self.max_age = max_age
        self.retry_after = min(max_age, 10.0) if retry_after is None else retry_after
        self.timeout = timeout
        self.probes = list(probes)
        self.clock = clock
        self.name = name
        self.trust_empty_after = trust_empty_after
        self.calls = 0  # executor calls made, for tests and benchmarks
        #: listings started before this cannot know jobs a previous process submitted
        self.created = clock()
        self._current: Optional[StatusSnapshot] = None
        self._pending: Optional[_Refresh] = None
        self._failure: Optional[tuple[float, BaseException]] = None
        self._submitted: dict[str, float] = {}
        self._active: set[str] = set()
        self._empty_since: Optional[float] = None
        self._missing: dict[str, float] = {}
        self._unknown_states: set[tuple[str, str]] = set()
        self._failures_told: set[str] = set()

    # -- commands -----------------------------------------------------------
    def add_probe(self, probe: Probe) -> None:
        self.probes.append(probe)

    def command(self) -> str:
        """The listing between its markers, then each probe after a marker line, in one call."""
        listing = self.driver.list_command()
        if self.timeout is not None:
            listing = runner.limited(listing, self.timeout)
        parts = [
            f"printf '%s\\n' {shlex.quote(LISTING_BEGIN)}",
            listing,
            f"printf '%s\\n' {shlex.quote(LISTING_END)}",
        ]
        for probe in self.probes:
            marker = shlex.quote(_MARKER.format(probe.name))
            parts.append(f"printf '%s\\n' {marker} && {{ {probe.command}\n}}")
        return " && ".join(parts)

    def parse(self, stdout: str, started: float, finished: float) -> StatusSnapshot:
        """Split the output into the listing's part and each probe's part.

        Text before the begin marker (a login banner) is ignored; output
        without the end marker was cut short and raises ListingUntrusted.
        """
        lines = (stdout or "").splitlines()
        stripped = [line.strip() for line in lines]
        if LISTING_BEGIN not in stripped:
            raise ListingUntrusted(
                f"{self.name}: the job listing is missing (no begin marker)"
            )
        begin = stripped.index(LISTING_BEGIN)
        if LISTING_END not in stripped[begin:]:
            raise ListingUntrusted(
                f"{self.name}: the job listing was cut short (no end marker)"
            )
        end = stripped.index(LISTING_END, begin)
        sections: dict[Optional[str], list[str]] = {None: lines[begin + 1 : end]}
        current: Optional[str] = None
        names = {_MARKER.format(probe.name): probe.name for probe in self.probes}
        for line in lines[end + 1 :]:
            if line.strip() in names:
                current = names[line.strip()]
                sections[current] = []
            elif current is not None:
                sections[current].append(line)
        jobs = self.driver.parse_listing("\n".join(sections[None]))
        extras = {
            probe.name: probe.parse("\n".join(sections.get(probe.name, [])))
            for probe in self.probes
        }
        return StatusSnapshot(started, finished, jobs, extras)

    # -- refreshing ---------------------------------------------------------
    async def snapshot(self, newer_than: Optional[float] = None) -> StatusSnapshot:
        """A snapshot fresh enough for this cycle (or started after ``newer_than``)."""
        now = self.clock()
        current = self._current
        if newer_than is None:
            if current is not None and now - current.started <= self.max_age:
                return current
            if self._failure is not None and now - self._failure[0] < self.retry_after:
                raise StatusUnavailable(
                    f"{self.name}: the job listing failed {now - self._failure[0]:.1f}s ago "
                    f"({self._failure[1]!r}); retrying after {self.retry_after:.0f}s"
                ) from self._failure[1]
        elif current is not None and current.started >= newer_than:
            return current
        pending = self._pending
        if pending is None or (newer_than is not None and pending.started < newer_than):
            pending = self._start_refresh()
        return await pending.wait()

    async def refresh(self) -> StatusSnapshot:
        """Force a snapshot that started now or later."""
        return await self.snapshot(newer_than=self.clock())

    def _start_refresh(self) -> _Refresh:
        started = self.clock()
        pending = _Refresh(asyncio.ensure_future(self._refresh(started)), started)
        self._pending = pending
        pending.task.add_done_callback(lambda task: self._refresh_done(pending))
        return pending

    def _refresh_done(self, pending: _Refresh) -> None:
        if self._pending is pending:
            self._pending = None
        error = pending.settle()
        if error is not None:
            self._failure = (self.clock(), error)

    async def _refresh(self, started: float) -> StatusSnapshot:
        self.calls += 1
        command = self.command()
        if self.timeout is not None:
            result = await runner.run(self.executor, command, timeout=self.timeout)
        else:
            result = await self.executor.run_command(command)
        snapshot = self.parse(result.stdout, started, self.clock())
        self._check_plausible(snapshot)
        if self._current is None or snapshot.started >= self._current.started:
            self._current = snapshot
            self._active = {
                job.job_id for job in snapshot.jobs.values() if not job.final
            }
        self._failure = None
        logger.debug(
            "%s: listed %d jobs in %.2fs",
            self.name,
            len(snapshot.jobs),
            snapshot.finished - started,
        )
        return snapshot

    def _check_plausible(self, snapshot: StatusSnapshot) -> None:
        """Refuse an empty listing while jobs were running, until it persists.

        A login node in trouble can answer the listing with nothing and exit 0;
        believed, that ends every drone while its job runs on. Jobs that end
        stay listed for a while (Slurm: ``--states=all``, for MinJobAge), so a real end is
        seen as a final state first; an empty listing is believed only after it
        has lasted ``trust_empty_after`` seconds.
        """
        if snapshot.jobs:
            self._empty_since = None
            return
        known = self._active | set(self._submitted)
        if not known:
            return
        if self._empty_since is None:
            self._empty_since = snapshot.started
        empty_for = snapshot.started - self._empty_since
        if empty_for < self.trust_empty_after:
            raise ListingUntrusted(
                f"{self.name}: the listing had no jobs while {len(known)} were active; "
                f"not believed until it stays empty for {self.trust_empty_after:.0f}s "
                f"(empty for {empty_for:.0f}s)"
            )
        logger.warning(
            "%s: the listing has had no jobs for %.0fs while %d were active: believing it",
            self.name,
            empty_for,
            len(known),
        )

    # -- per-drone answers ----------------------------------------------------
    def note_submitted(self, job_id: str, at: Optional[float] = None) -> None:
        """Remember when sbatch returned: snapshots started earlier cannot know the job."""
        self._submitted[str(job_id)] = self.clock() if at is None else at

    def status_of(
        self, job_id: Optional[str], snapshot: StatusSnapshot
    ) -> Optional[ResourceStatus]:
        """The job's ResourceStatus in ``snapshot``; None when it cannot be told yet.

        None (keep the drone's previous state) for a state this adapter does
        not know, and for a job missing from this listing for the first time:
        it is Deleted only when a listing started after this one finished
        misses it too. A job submitted after the snapshot started is Booting:
        the snapshot could not have listed it yet.
        """
        if job_id is None:
            return ResourceStatus.Deleted
        job_id = str(job_id)
        job = snapshot.jobs.get(job_id)
        if job is not None:
            self._submitted.pop(job_id, None)
            self._missing.pop(job_id, None)
            if job.status is None:
                self._unknown_state(job)
            elif job.failed and job_id not in self._failures_told:
                self._failures_told.add(job_id)
                logger.warning(
                    "%s: job %s (%s) ended in %s state %s",
                    self.name,
                    job_id,
                    job.name,
                    self.driver.system,
                    job.state,
                )
            return job.status
        submitted = self._submitted.get(job_id)
        if submitted is not None and snapshot.started < submitted:
            return ResourceStatus.Booting
        return self._confirm_missing(job_id, snapshot)

    def _confirm_missing(
        self, key: str, snapshot: StatusSnapshot
    ) -> Optional[ResourceStatus]:
        first_missed = self._missing.get(key)
        if first_missed is None:
            self._missing[key] = snapshot.finished
            logger.info(
                "%s: job %s is missing from the listing; gone only if the next listing "
                "misses it too",
                self.name,
                key,
            )
            return None
        if snapshot.started <= first_missed:  # the same listing, or one as old
            return None
        del self._missing[key]
        self._submitted.pop(key, None)
        return ResourceStatus.Deleted

    def missing_by_name(self, name: str, snapshot: StatusSnapshot) -> bool:
        """A drone without a known job: True once two listings missed its name."""
        return self._confirm_missing(f"name:{name}", snapshot) is ResourceStatus.Deleted

    def _unknown_state(self, job: JobRecord) -> None:
        key = (job.job_id, job.state)
        if key in self._unknown_states:
            return
        if len(self._unknown_states) > 10_000:  # bounded: one warning per pair
            self._unknown_states.clear()
            self._failures_told.clear()
        self._unknown_states.add(key)
        logger.warning(
            "%s: job %s (%s) is in %s state %r, which this adapter does not "
            "know; keeping the drone's previous state",
            self.name,
            job.job_id,
            job.name,
            self.driver.system,
            job.state,
        )
