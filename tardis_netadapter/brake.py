"""A per-site brake: stop deploying to a site whose drones all die young.

Why: TARDIS has no such brake (its issue #205: a broken drone configuration
respawned drones until it overloaded a server). When a site swallows every
drone (a broken image, a payload that exits at once, a chain that never
reaches the pool), COBalD's demand replaces each dead drone at once, and the
site is hammered with jobs forever.

What counts as a *young death*: a drone that ended (Slurm: Deleted, or Error)
without ever running, or after running less than ``min_lifetime`` seconds,
and that was not cancelled by the adapter itself (demand went down); and a
drone the connectivity monitor judged ``never-connected``, even though the
adapter then cancels it. A drone *survives* when it has been seen running for
``min_lifetime`` seconds, or when the monitor judged it ``connected``.

After ``after`` young deaths in a row (no survivor in between) the brake is
*engaged*: :meth:`SiteBrake.check` raises :class:`SiteBraked` for
``backoff`` seconds, before anything is submitted. Then it is *half-open*:
exactly one deploy goes through as a probe, and every other deploy is refused
until the probe's fate is known. The probe survives: the brake is lifted and
everything is reset. The probe dies young: the brake is engaged again for
twice the back-off (at most ``max_backoff``). Any survivor lifts the brake,
probe or not: a site where one drone works is not a black hole.

A second trigger, the *hold* (:meth:`SiteBrake.hold`, :meth:`SiteBrake.release`):
while the connectivity monitor judges a site outage (connectivity/outage.py),
every deploy is refused with the same :class:`SiteBraked`, without probes,
until the outage ends. One mechanism for both: whatever refuses deploys to a
site is here, and ``status`` and the metrics read it in one place. The hold
does not depend on ``enabled`` (that switches the young-death trigger only):
a site outage is judged only with monitoring on, which has its own switch.

Why the defaults (5 in a row, 300 s) never trip a healthy site: a drone that
reaches the pool is judged ``connected`` on its first good heartbeat (about a
minute), and one that runs for five minutes has survived whatever kills a
misconfigured drone (image pull, cvmfs mount, tunnel, startd start all fail
within seconds to a couple of minutes). Drones the adapter cancels (demand
went down, or a held job) never count, so ordinary scaling cannot trip it; a
single survivor resets the count, so five in a row without any survivor is
what a black hole looks like and what a working site practically never shows.
The first back-off of 60 s is about one TARDIS cycle, short enough that a
transient outage (a node that failed five drones) costs little; doubling up to
an hour bounds a true black hole to about one job per hour.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from tardis.exceptions.tardisexceptions import (
    TardisQuotaExceeded,
    TardisResourceStatusUpdateFailed,
)
from tardis.interfaces.siteadapter import ResourceStatus

from .schema import load, plain

logger = logging.getLogger("cobald.runtime.tardis_netadapter.brake")

#: version of the state file's keys; changes when they do
STATE_SCHEMA = 1
#: drones whose end was counted (or that we cancelled) are remembered this long
#: (by count), so late status answers about them are not counted again
SETTLED_MEMORY = 16384
#: at most this many live drones are tracked; the oldest is dropped beyond it
TRACKED_MEMORY = 100000
_SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class SiteBraked(TardisQuotaExceeded, TardisResourceStatusUpdateFailed):
    """Deploys to this site are refused for now; nothing was submitted.

    Both bases on purpose: TARDIS's RequestState sends the drone to DownState on
    either, without a retry loop, and the adapter's exception handling passes
    both through unchanged.
    """


@dataclass(frozen=True)
class BrakeSettings:
    """The site section's ``brake:`` key."""

    enabled: bool = True
    after: int = 5
    min_lifetime: float = 300.0
    backoff: float = 60.0
    max_backoff: float = 3600.0

    def check(self, path: str) -> list[str]:
        problems = []
        if self.after < 1:
            problems.append(
                f"{path}.after: got {self.after!r}; expected a whole number of young "
                "deaths in a row of at least 1 (default 5)"
            )
        for key in ("min_lifetime", "backoff", "max_backoff"):
            value = getattr(self, key)
            if not value > 0:
                problems.append(
                    f"{path}.{key}: got {value!r}; expected seconds greater than 0 "
                    f"(default {getattr(BrakeSettings, key):g})"
                )
        if self.backoff > 0 and self.max_backoff < self.backoff:
            problems.append(
                f"{path}.max_backoff: got {self.max_backoff!r}; expected at least "
                f"{path}.backoff ({self.backoff!r}): the back-off only grows"
            )
        return problems


def load_brake(section_value: Any, path: str) -> BrakeSettings:
    """Validate the ``brake:`` key (None or absent: the defaults).

    Raises schema.ConfigurationError listing every problem, each with its key
    path (``path`` is e.g. ``NetLab.brake``), the bad value and the fix.
    """

    return load(BrakeSettings, plain(section_value), path)  # AttributeDicts too


def check_against_walltimes(
    settings: BrakeSettings, walltimes: Mapping[str, float], path: str
) -> list[str]:
    """Problems if a machine type's walltime is not well above ``min_lifetime``.

    A drone that Slurm ends at its walltime before ``min_lifetime`` would die
    young every time, and the brake would stop a healthy site. ``walltimes``
    maps machine type names to walltime seconds; ``path`` is the brake's.
    """
    if not settings.enabled:
        return []
    return [
        f"{path}.min_lifetime: got {settings.min_lifetime:g}; expected at most half "
        f"the walltime of machine type {name!r} ({seconds:g} s), or every drone of "
        "it dies young; lower min_lifetime or raise the Walltime"
        for name, seconds in walltimes.items()
        if settings.min_lifetime > seconds / 2
    ]


@dataclass(frozen=True)
class BrakeSnapshot:
    """What ``status`` and the metrics show about a site's brake.

    ``next_probe_in`` is None when the brake is not engaged or a probe is in
    flight (then ``probe`` names it); ``refused`` counts deploys refused since
    the process started.
    """

    site: str
    enabled: bool
    engaged: bool
    young_deaths_in_a_row: int
    trips: int
    refused: int
    next_probe_in: Optional[float]
    probe: Optional[str]
    backoff: float
    min_lifetime: float
    after: int
    last_reason: str
    updated: float  # wall clock (epoch seconds) of the snapshot
    held: Optional[str] = None  # why deploys are held (a site outage), or None

    @property
    def headline(self) -> str:
        """One line for humans, e.g. for the top of ``status``."""
        if self.held is not None and not self.engaged:
            return f"site {self.site}: deploys held: {self.held}"
        if not self.engaged:
            return f"site {self.site}: brake not engaged"
        text = (
            f"site {self.site}: brake engaged: {self.young_deaths_in_a_row} drones "
            f"in a row died within {self.min_lifetime:g} s; "
        )
        if self.probe is not None:
            return text + f"probe {self.probe or '(being submitted)'} in flight"
        return text + f"next probe in {self.next_probe_in or 0:.0f} s"


def default_state_file(site: str) -> Path:
    """Where the adapter writes a site's brake state for ``status`` to read.

    ``$XDG_STATE_HOME/tardis-netadapter/brake-<site>.json``, or under
    ``~/.local/state`` (a relative ``XDG_STATE_HOME`` is ignored, as the XDG
    specification says).
    """
    if not _SITE_NAME.fullmatch(site):
        raise ValueError(f"site name {site!r} cannot name a state file")
    base = os.environ.get("XDG_STATE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "tardis-netadapter" / f"brake-{site}.json"


def read_brake_state(
    path: Path, now: Callable[[], float] = time.time
) -> Optional[BrakeSnapshot]:
    """The snapshot a SiteBrake last wrote to ``path``; None if missing or corrupt.

    ``next_probe_in`` is recomputed against ``now`` (the file holds the wall
    clock time of the next probe, since it is written only on changes).
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("schema") != STATE_SCHEMA:
            return None
        next_at = data["next_probe_at"]
        return BrakeSnapshot(
            site=str(data["site"]),
            enabled=bool(data["enabled"]),
            engaged=bool(data["engaged"]),
            young_deaths_in_a_row=int(data["young_deaths_in_a_row"]),
            trips=int(data["trips"]),
            refused=int(data["refused"]),
            next_probe_in=None if next_at is None else max(0.0, next_at - now()),
            probe=None if data["probe"] is None else str(data["probe"]),
            backoff=float(data["backoff"]),
            min_lifetime=float(data["min_lifetime"]),
            after=int(data["after"]),
            last_reason=str(data["last_reason"]),
            updated=float(data["updated"]),
            held=None if data.get("held") is None else str(data["held"]),
        )
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def write_brake_state(path: Path, snapshot: BrakeSnapshot) -> None:
    """Write ``snapshot`` atomically (a temporary file renamed over ``path``)."""
    document = asdict(snapshot)
    next_in = document.pop("next_probe_in")
    document["schema"] = STATE_SCHEMA
    document["next_probe_at"] = None if next_in is None else snapshot.updated + next_in
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(
            json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


_UNBOUND = ""  # a probe let through by check() without a drone uuid yet


class SiteBrake:
    """The brake of one site; one instance shared by all of the site's adapters.

    Not thread-safe, and needs none: TARDIS calls adapters from one event loop,
    and no method awaits.
    """

    def __init__(
        self,
        site: str,
        settings: BrakeSettings,
        clock: Callable[[], float] = time.monotonic,
        state_file: Optional[Path] = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.site = site
        self.settings = settings
        self._clock = clock
        self._wall = wall
        self._state_file = state_file
        #: live drones seen young: uuid -> first time seen Running (None: not yet)
        self._alive: OrderedDict[str, Optional[float]] = OrderedDict()
        #: drones whose fate is counted or that we cancelled: late events ignored
        self._settled: OrderedDict[str, None] = OrderedDict()
        self._in_a_row = 0
        self._trips = 0
        self._refused = 0
        self._engaged = False
        self._until = 0.0  # clock time the current back-off ends
        self._backoff = settings.backoff  # the current back-off
        self._probe: Optional[str] = None
        self._last_reason = ""
        self._held: Optional[str] = None  # the hold's reason (a site outage)
        self._written: Any = None
        self._write_failed = False
        self._persist()  # a fresh process starts unbraked: replace a stale file

    # -- deploys ---------------------------------------------------------------

    def check(self, drone_uuid: Optional[str] = None) -> None:
        """Refuse a deploy with SiteBraked while the brake is engaged; fast, no I/O.

        When the back-off is over, the first caller passes as the probe (pass
        its ``drone_uuid`` so the probe is known even before ``submitted``).
        A hold refuses every deploy, without probes, until it is released.
        """
        if self._held is not None:
            self._refused += 1
            raise SiteBraked(
                f"{self.site}: deploys held: {self._held}; deploy refused, "
                "nothing submitted"
            )
        if not self.settings.enabled or not self._engaged:
            return
        now = self._clock()
        if now < self._until:
            self._refuse(f"next probe in {self._until - now:.0f} s")
        if self._probe is not None:
            self._refuse(f"probe {self._probe or '(being submitted)'} in flight")
        self._probe = drone_uuid or _UNBOUND
        logger.info(
            "%s: brake back-off over: letting drone %s through as the probe",
            self.site,
            drone_uuid or "(next)",
        )
        self._persist()

    def _refuse(self, when: str) -> None:
        self._refused += 1
        raise SiteBraked(
            f"{self.site}: brake engaged: {self._in_a_row} drones in a row died "
            f"young (within {self.settings.min_lifetime:g} s; last: "
            f"{self._last_reason}); {when}; deploy refused, nothing submitted"
        )

    def submitted(self, drone_uuid: str) -> None:
        """The adapter deployed ``drone_uuid`` (a job exists or may exist)."""
        if not self.settings.enabled:
            return
        if self._probe == _UNBOUND:
            self._probe = drone_uuid
            self._persist()
        if not self._is_settled(drone_uuid):
            self._track(drone_uuid)

    def deploy_failed(self, drone_uuid: str) -> None:
        """The deploy of ``drone_uuid`` failed before any job existed.

        Nothing was learnt about the site's drones; if it was the probe, the
        next deploy becomes the probe.
        """
        if not self.settings.enabled:
            return
        self._alive.pop(drone_uuid, None)
        if self._probe in (drone_uuid, _UNBOUND):
            self._probe = None
            self._persist()

    @contextlib.contextmanager
    def deploying(self, drone_uuid: str) -> Iterator[None]:
        """check, then submitted or deploy_failed: the one way the adapter needs.

        ``with brake.deploying(uuid): <submit>``: raises SiteBraked before the
        body runs; a body that raises (or is cancelled) releases a probe slot.
        """
        self.check(drone_uuid)
        try:
            yield
        except BaseException:
            self.deploy_failed(drone_uuid)
            raise
        self.submitted(drone_uuid)

    def hold(self, reason: str) -> None:
        """Refuse every deploy until :meth:`release` (the site-outage trigger).

        Idempotent: call it every cycle the outage lasts; ``reason`` is what
        refusals and ``status`` say and may change as the outage does.
        """
        if self._held != reason:
            self._held = reason
            self._persist()

    def release(self) -> None:
        """Lift the hold (the outage ended); the young-death trigger is untouched."""
        if self._held is not None:
            self._held = None
            self._persist()

    @property
    def held(self) -> Optional[str]:
        """Why deploys are held, or None."""
        return self._held

    # -- what happens to drones ---------------------------------------------------

    def observed(self, drone_uuid: str, status: ResourceStatus) -> None:
        """A status answer for a drone; call on every answer (cheap)."""
        if not self.settings.enabled or self._is_settled(drone_uuid):
            return
        now = self._clock()
        if status is ResourceStatus.Booting:
            if drone_uuid not in self._alive:  # e.g. submitted before a restart
                self._track(drone_uuid)
        elif status is ResourceStatus.Running:
            if drone_uuid not in self._alive:
                # running when first seen: its age is unknown (submitted before
                # this process started), so it can show neither youth nor age
                return
            started = self._alive[drone_uuid]
            if started is None:
                self._alive[drone_uuid] = now
            elif now - started >= self.settings.min_lifetime:
                self._survived(drone_uuid, f"ran {now - started:.0f} s")
        elif status in (ResourceStatus.Deleted, ResourceStatus.Error):
            if drone_uuid not in self._alive:
                return
            started = self._alive.pop(drone_uuid)
            if started is None:
                self._died_young(drone_uuid, f"drone {drone_uuid} ended, never ran")
            elif now - started < self.settings.min_lifetime:
                self._died_young(
                    drone_uuid, f"drone {drone_uuid} ended after {now - started:.0f} s"
                )
            else:
                self._survived(drone_uuid, f"ran {now - started:.0f} s")
        # Stopped (held, suspended): TARDIS cancels it; that is not a death

    def cancelled(self, drone_uuid: str) -> None:
        """The adapter cancels ``drone_uuid`` by its own decision: never counted."""
        if not self.settings.enabled or self._is_settled(drone_uuid):
            return
        self._alive.pop(drone_uuid, None)
        self._settle(drone_uuid)
        if self._probe == drone_uuid:  # its fate stays unknown: probe again
            self._probe = None
            self._persist()

    def never_connected(self, drone_uuid: str) -> None:
        """The connectivity monitor judged ``drone_uuid`` never-connected."""
        if not self.settings.enabled or self._is_settled(drone_uuid):
            return
        self._alive.pop(drone_uuid, None)
        self._died_young(drone_uuid, f"drone {drone_uuid} never connected")

    def connected(self, drone_uuid: str) -> None:
        """The connectivity monitor judged ``drone_uuid`` connected: it survived."""
        if not self.settings.enabled or self._is_settled(drone_uuid):
            return
        self._alive.pop(drone_uuid, None)
        self._survived(drone_uuid, "connected to the pool")

    # -- state -----------------------------------------------------------------

    def snapshot(self) -> BrakeSnapshot:
        """The brake as status and metrics show it (read-only copy)."""
        next_in = None
        if self._engaged and self._probe is None:
            next_in = max(0.0, self._until - self._clock())
        return BrakeSnapshot(
            site=self.site,
            enabled=self.settings.enabled,
            engaged=self._engaged,
            young_deaths_in_a_row=self._in_a_row,
            trips=self._trips,
            refused=self._refused,
            next_probe_in=next_in,
            probe=self._probe,
            backoff=self._backoff,
            min_lifetime=self.settings.min_lifetime,
            after=self.settings.after,
            last_reason=self._last_reason,
            updated=self._wall(),
            held=self._held,
        )

    def _died_young(self, drone_uuid: str, reason: str) -> None:
        self._settle(drone_uuid)
        self._in_a_row += 1
        self._last_reason = reason
        if self._engaged and drone_uuid == self._probe:
            self._probe = None
            self._backoff = min(self._backoff * 2, self.settings.max_backoff)
            self._trip(f"probe {reason}")
        elif not self._engaged and self._in_a_row >= self.settings.after:
            self._backoff = self.settings.backoff
            self._trip(reason)
        self._persist()

    def _trip(self, reason: str) -> None:
        self._engaged = True
        self._trips += 1
        self._until = self._clock() + self._backoff
        logger.warning(
            "%s: brake engaged: %d drones in a row died within %g s (last: %s); "
            "refusing deploys for %g s",
            self.site,
            self._in_a_row,
            self.settings.min_lifetime,
            reason,
            self._backoff,
        )

    def _survived(self, drone_uuid: str, how: str) -> None:
        self._settle(drone_uuid)
        if self._engaged:
            logger.warning(
                "%s: brake lifted: drone %s survived (%s)", self.site, drone_uuid, how
            )
            self._last_reason = f"drone {drone_uuid} survived ({how})"
        self._engaged = False
        self._probe = None
        self._in_a_row = 0
        self._backoff = self.settings.backoff
        self._persist()

    def _track(self, drone_uuid: str) -> None:
        if drone_uuid not in self._alive:
            self._alive[drone_uuid] = None
            while len(self._alive) > TRACKED_MEMORY:
                self._alive.popitem(last=False)

    def _settle(self, drone_uuid: str) -> None:
        self._settled[drone_uuid] = None
        self._settled.move_to_end(drone_uuid)
        while len(self._settled) > SETTLED_MEMORY:
            self._settled.popitem(last=False)

    def _is_settled(self, drone_uuid: str) -> bool:
        if drone_uuid in self._settled:
            self._settled.move_to_end(drone_uuid)  # still reported: keep it
            return True
        return False

    def _persist(self) -> None:
        """Write the state file when the brake's state changed (not per event)."""
        if self._state_file is None:
            return
        key = (
            self._engaged,
            self._in_a_row,
            self._trips,
            self._probe,
            self._until,
            self._backoff,
            self._held,
        )
        if key == self._written:
            return
        try:
            write_brake_state(self._state_file, self.snapshot())
        except OSError as error:
            if not self._write_failed:
                logger.warning(
                    "%s: cannot write brake state %s: %r (status will not show it)",
                    self.site,
                    self._state_file,
                    error,
                )
            self._write_failed = True
            return
        self._written = key
        self._write_failed = False
