"""One site: its settings, batch driver, poller, monitor, metrics, brake and drone scripts.

TARDIS builds one adapter per machine type and knows nothing of sites beyond
their names, yet a site's drones must share one listing per cycle, one
connectivity monitor, one brake and the scripts rendered once. A
:class:`Site` holds all of that; the adapter (siteadapter.py) and the CLI
(``render``, ``status``, ``check``) use the same object, so what the CLI shows
is what a drone gets.

The only module-level state is the table of sites by name (:func:`site_for`),
because TARDIS gives each adapter nothing but the site's name and section.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tardis.interfaces.executor import Executor

from .batch import BatchDriver, runner
from .batch.poller import Probe, SitePoller
from .brake import SiteBrake, default_state_file
from .connectivity.metrics import ConnectivityMetrics, serve
from .connectivity.monitor import SiteMonitor
from .connectivity.outage import Outage
from .connectivity.verdict import Timing
from .machine import drone_environment
from .siteconfig import SiteSettings, load_site_settings

logger = logging.getLogger("cobald.runtime.tardis_netadapter.site")

#: only failed listings for this long (s) make a site outage in stage
#: UNREACHABLE_STAGE: longer than a listing's own retries and one TARDIS cycle,
#: short against a drone's grace
UNREACHABLE_AFTER = 30.0
#: the stage named when the adapter cannot list the site (its login node)
UNREACHABLE_STAGE = "login"

#: HTCondor's unit translation (cores, MB, KB), used when no batch system says otherwise
HTCONDOR_TRANSLATION = {"Cores": 1, "Memory": 1024, "Disk": 1024 * 1024}
#: seconds a listing is reused when neither the site nor TARDIS says otherwise
DEFAULT_MAX_AGE = 30.0


@dataclass(frozen=True)
class Submission:
    """What one drone gets: the submit command line and the script on its stdin."""

    command: str
    script: str


class Site:
    """Everything shared by the drones of one site, built once from its settings."""

    def __init__(
        self,
        settings: SiteSettings,
        executor: Optional[Executor] = None,
        *,
        max_age: Optional[float] = None,
        brake_state: Optional[Path] = None,
    ) -> None:
        """``brake_state``: where the brake's state is written for ``status``;
        only the daemon's sites pass one, so a CLI never overwrites it."""
        self.settings = settings
        self.name = settings.name
        self.driver: BatchDriver = settings.driver
        self.executor = executor
        self.brake = SiteBrake(self.name, settings.brake, state_file=brake_state)
        #: drones whose submit outcome is unknown -> when a late job can no longer appear
        self.unresolved: dict[str, float] = {}
        self._scripts: dict[str, str] = {}
        self.monitor: Optional[SiteMonitor] = None
        self.metrics: Optional[ConnectivityMetrics] = None
        #: the exporter's start is scheduled (on a loop, or with COBalD's runtime)
        self._exporter_started = False
        self._exporter_task: Optional[asyncio.Task] = None
        self._metered: Any = None
        self._followed: Any = None
        #: the outage the adapter acts on, and the monotonic time it was declared
        self.outage: Optional[Outage] = None
        self._outage_declared = 0.0
        #: monotonic time of the first of the current run of failed listings
        self._unlisted_since: Optional[float] = None
        self.poller = self._new_poller(executor, max_age)

    # -- status --------------------------------------------------------------------
    def _new_poller(
        self, executor: Optional[Executor], max_age: Optional[float]
    ) -> SitePoller:
        """One listing per cycle; with monitoring, heartbeats ride in the same call."""
        settings = self.settings
        probes: list[Probe] = []
        monitoring = settings.profile.monitoring
        if monitoring.enabled:
            self.monitor = SiteMonitor(
                monitoring.heartbeat_dir,
                Timing.from_budget(settings.budget),
                timeout=max(1, int(min(30, settings.command_timeout))),  # 0: no limit
                site=self.name,
            )
            probes = [self.monitor.probe]
            if monitoring.metrics_port:
                self.metrics = ConnectivityMetrics()
        if settings.status_max_age is not None:
            max_age = settings.status_max_age
        return SitePoller(
            self.driver,
            executor,
            max_age=DEFAULT_MAX_AGE if max_age is None else max_age,
            timeout=settings.command_timeout,
            probes=probes,
            name=self.name,
        )

    def use_executor(self, executor: Executor, max_age: Optional[float]) -> None:
        """A new executor (a reloaded configuration): a new poller and monitor for it."""
        if self.poller.executor is not executor:
            self.poller = self._new_poller(executor, max_age)
            self.executor = executor

    def listing_failed(self, error: BaseException) -> None:
        """A listing failed: after UNREACHABLE_AFTER seconds of only failures, an outage.

        The drones' heartbeats cannot say that the login node is down, because
        the adapter reads them over the same login node: while it is down the
        adapter sees nothing at all. Failed listings for that long are the
        site's outage in stage ``login``, said once, deploys held (they would
        fail anyway), and over at the first listing that works
        (``follow_outage``, or ``listing_worked`` without monitoring). No drone
        is judged meanwhile: without a listing there is no verdict.
        """
        now = time.monotonic()
        if self._unlisted_since is None:
            self._unlisted_since = now
        failing_for = now - self._unlisted_since
        if self.outage is not None or failing_for < UNREACHABLE_AFTER:
            return
        self.outage = Outage(UNREACHABLE_STAGE, 0, 0, time.time() - failing_for)
        self._outage_declared = now
        logger.warning(
            "%s: site outage in stage %s: every listing failed for %.0f s (%s): "
            "no drone is ended for it; new submissions are held until the site "
            "answers again",
            self.name,
            UNREACHABLE_STAGE,
            failing_for,
            (str(error).splitlines() or [type(error).__name__])[0][:160],
        )
        self.brake.hold(
            f"site outage in stage {UNREACHABLE_STAGE} (no listing for "
            f"{failing_for:.0f} s)"
        )
        if self.metrics is not None:
            self.metrics.update_outage(self.name, self.outage)

    def listing_worked(self) -> None:
        """A listing worked: the login node answers (its outage ends in follow_outage)."""
        self._unlisted_since = None
        if self.monitor is None and self.outage is not None:
            self._end_outage(self.outage, time.time() - self.outage.since)
            self.outage = None

    def _end_outage(self, was: Outage, lasted: float) -> None:
        logger.warning(
            "%s: site outage in stage %s is over after %.0f s (declared %.0f s "
            "ago); new submissions resume",
            self.name,
            was.stage,
            max(0.0, lasted),
            time.monotonic() - self._outage_declared,
        )
        self.brake.release()

    def follow_outage(self, snapshot: Any) -> None:
        """Hold or release deploys as the monitor's site outage begins or ends.

        Once per listing (after ``monitor.observe``); says so once when an
        outage begins and once when it ends. The drones themselves are spared
        by the monitor (outage.spare), not here.
        """
        if self.monitor is None or self._followed is snapshot:
            return
        self._followed = snapshot
        outage, was = self.monitor.outage, self.outage
        self.outage = outage
        if was is not None and (outage is None or outage.stage != was.stage):
            self._end_outage(was, (self.monitor.store.now or was.since) - was.since)
        if outage is not None and (was is None or was.stage != outage.stage):
            self._outage_declared = time.monotonic()
            logger.warning(
                "%s: %s (first failure %.0f s ago): no drone is ended for it; "
                "new submissions are held until the site answers again",
                self.name,
                outage.headline,
                max(0.0, (self.monitor.store.now or outage.since) - outage.since),
            )
            self.brake.hold(
                f"site outage in stage {outage.stage} ({outage.failing} of "
                f"{outage.population} running drones failing)"
            )

    def start_exporter(self) -> None:
        """Serve the site's metrics from now on, drones or not (once per Site).

        TARDIS builds the adapters while COBalD reads its configuration, before
        any event loop runs, and asks an adapter nothing until the site has a
        drone. So the start goes to COBalD's runtime, which runs it as soon as
        its asyncio runner is up; when a loop already runs here (tests, a
        reload inside the daemon), it starts on that loop. The series are
        primed first, so the first scrape already shows the site. A failure
        (the port taken) is logged, never raised: metrics are optional.
        """
        if self.metrics is None or self._exporter_started:
            return
        self._exporter_started = True
        monitoring = self.settings.profile.monitoring
        budget = self.settings.budget
        self.metrics.prime(
            self.name, float(budget.watchdog_interval), float(budget.grace)
        )
        self.metrics.update_brake(self.name, self.brake.snapshot())
        port, address = int(monitoring.metrics_port), monitoring.metrics_address
        metrics = self.metrics

        async def start() -> None:
            try:
                await serve(metrics, port, address)
            except Exception as error:  # noqa: BLE001 - optional, never stop COBalD
                logger.error(
                    "%s: connectivity metrics exporter on %s:%s failed: %r "
                    "(Network.monitoring.metrics_address/metrics_port)",
                    self.name,
                    address,
                    port,
                    error,
                )

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            from cobald.daemon import runtime

            runtime.adopt(start, flavour=asyncio)
        else:
            self._exporter_task = loop.create_task(start())

    def update_metrics(self, snapshot: Any) -> None:
        """Set the site's gauges once per listing, not once per drone."""
        if self.metrics is None or self.monitor is None or self._metered is snapshot:
            return
        self._metered = snapshot
        self.start_exporter()  # normally already started with the adapter
        self.metrics.update(
            self.name, self.monitor.judgements, self.monitor.store.records
        )
        self.metrics.update_brake(self.name, self.brake.snapshot())
        self.metrics.update_outage(self.name, self.monitor.outage)

    # -- commands ------------------------------------------------------------------
    async def run(self, command: str, stdin_input: Optional[str] = None) -> Any:
        """One batch command, limited on the login node and here alike."""
        timeout = self.settings.command_timeout
        return await runner.run(
            self.executor,
            runner.limited(command, timeout),
            timeout=timeout,
            stdin_input=stdin_input,
        )

    @property
    def late_job_margin(self) -> float:
        """How long after a submit was given up on its job may still appear."""
        return self.settings.command_timeout + runner.KILL_AFTER

    # -- what a drone gets -----------------------------------------------------------
    def script(self, machine_type: str) -> str:
        """The rendered drone script of a machine type, rendered once and cached."""
        if machine_type not in self._scripts:
            from . import render  # late: the renderer pulls in the templates

            self._scripts[machine_type] = render.render_drone_script(
                self.settings.profile,
                self.settings.budget,
                site_name=self.name,
                machine_type=machine_type,
                job_id_variable=self.driver.job_id_variable,
            )
        return self._scripts[machine_type]

    def submission(
        self,
        machine_type: str,
        drone_uuid: str,
        translation: Optional[Mapping[str, float]] = None,
    ) -> Submission:
        """The exact submit command and script for one drone (adapter and CLI alike)."""
        kind = self.settings.machine_types[machine_type]
        environment = drone_environment(
            drone_uuid,
            kind.meta_data,
            translation or HTCONDOR_TRANSLATION,
            self.driver.walltime_seconds(kind.batch),
        )
        command = self.driver.submit_command(
            kind.batch,
            kind.meta_data,
            drone_uuid,
            environment,
            export=self.settings.export_environment,
        )
        return Submission(command=command, script=self.script(machine_type))


# ------------------------------------------------------------------------------------
# the sites of this process, by name
# ------------------------------------------------------------------------------------

_SITES: dict[str, tuple[Any, Site]] = {}


def site_for(
    site_name: str,
    section: Any,
    driver: BatchDriver,
    executor: Executor,
    max_age: Optional[float] = None,
) -> Site:
    """The site of this name, validated once; again only if its section object changed."""
    known = _SITES.get(site_name)
    if known is not None and known[0] is section:
        site = known[1]
        site.use_executor(executor, max_age)
        return site
    site = Site(
        load_site_settings(site_name, section, driver),
        executor,
        max_age=max_age,
        brake_state=default_state_file(site_name),
    )
    _SITES[site_name] = (section, site)
    site.start_exporter()  # the endpoint is up with the adapter, not with a drone
    logger.info(
        "%s: site valid (%s, network mode %s, ssh keepalive %ss)",
        site_name,
        driver.system,
        site.settings.profile.mode,
        site.settings.budget.server_alive_interval,
    )
    return site


def get(site_name: str) -> Optional[Site]:
    """The site of this name once an adapter has built it (hook for tests and probes)."""
    known = _SITES.get(site_name)
    return known[1] if known is not None else None


def forget_all() -> None:
    """Forget every site (tests, configuration reloads)."""
    _SITES.clear()
