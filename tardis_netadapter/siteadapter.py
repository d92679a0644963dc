"""The TARDIS site adapter, generic over a batch driver: thin glue over site.py.

TARDIS builds one adapter per site and machine type and calls it per drone;
everything a site's drones share (settings, driver, poller, monitor, brake,
rendered scripts) lives in one :class:`~tardis_netadapter.site.Site`. The
adapter class is the same for every batch system: :func:`adapter_class`
makes one per registered driver (``NetSlurmAdapter`` for ``adapter:
NetSlurm``), and poolfactory.py makes those names known to TARDIS.

What the adapter guarantees (docs/adapter.md): a submitted job is never lost
or duplicated, a listing never invents a death, and no failure stops the
COBalD daemon.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar, Optional

import asyncssh
from tardis.exceptions.executorexceptions import (
    CommandExecutionFailure,
    ExecutorFailure,
)
from tardis.exceptions.tardisexceptions import TardisDroneCrashed
from tardis.interfaces.executor import Executor
from tardis.interfaces.siteadapter import ResourceStatus, SiteAdapter
from tardis.utilities.attributedict import AttributeDict
from tardis.utilities.executors.shellexecutor import ShellExecutor

from . import site as sites
from .batch import (
    DRIVERS,
    BatchDriver,
    BatchOutputError,
    JobRecord,
    SlurmDriver,
    runner,
)
from .batch.poller import ListingUntrusted, SitePoller, StatusSnapshot
from .connectivity.collect import cleanup_command
from .connectivity.monitor import SiteMonitor
from .connectivity.verdict import Verdict
from .failures import (
    NetadapterTimeout,
    StatusUndecided,
    short,
    transient_failures,
)
from .schema import ConfigurationError
from .site import HTCONDOR_TRANSLATION, Site, Submission
from .siteconfig import SiteSettings

logger = logging.getLogger("cobald.runtime.tardis_netadapter.siteadapter")


def reset_caches() -> None:
    """Forget validated sites, pollers and rendered scripts (tests, config reloads)."""
    sites.forget_all()


def site_monitor(site_name: str) -> Optional[SiteMonitor]:
    """The connectivity monitor of a site (None if monitoring is off or no adapter yet)."""
    site = sites.get(site_name)
    return site.monitor if site is not None else None


def site_poller(site_name: str) -> Optional[SitePoller]:
    """The status poller of a site once its first adapter exists (hook for probes)."""
    site = sites.get(site_name)
    return site.poller if site is not None else None


def build_submission(
    settings: SiteSettings,
    machine_type: str,
    drone_uuid: str,
    translation: Optional[Any] = None,
) -> Submission:
    """The exact submit command and script for one drone (the ``render`` CLI)."""
    return Site(settings).submission(machine_type, drone_uuid, translation)


class NetBatchAdapter(SiteAdapter):
    """Drones as batch jobs on a network-restricted site, over the site's executor.

    Generic: ``driver`` (a :class:`~tardis_netadapter.batch.BatchDriver`
    class) is all that differs between batch systems.
    """

    driver: ClassVar[type[BatchDriver]]

    def __init__(self, machine_type: str, site_name: str):
        self._machine_type = machine_type
        self._site_name = site_name
        self._executor: Executor = (
            getattr(self.configuration, "executor", None) or ShellExecutor()
        )
        site = sites.site_for(
            site_name,
            self.configuration,
            self.driver(),
            self._executor,
            self._status_max_age(),
        )
        if machine_type not in site.settings.machine_types:
            raise ConfigurationError(
                [f"{site_name}.MachineTypes: has no machine type {machine_type!r}"]
            )
        self._site = site
        # render now: a template or profile problem stops the daemon at start
        site.script(machine_type)

    def _status_max_age(self) -> float:
        """Half the drone heartbeat: every cycle of TARDIS reads one fresh listing."""
        try:
            heartbeat = self.drone_heartbeat_interval
        except (AttributeError, TypeError):  # no Sites entry (tests, tools)
            heartbeat = 60
        return max(1.0, (heartbeat or 60) / 2)

    @property
    def site(self) -> Site:
        """Everything this site's drones share."""
        return self._site

    @property
    def poller(self) -> SitePoller:
        """The site's shared status poller (the connectivity monitor adds probes here)."""
        return self._site.poller

    @property
    def settings(self) -> SiteSettings:
        return self._site.settings

    @property
    def _system(self) -> str:
        return self._site.driver.system

    @property
    def _kind(self) -> Any:
        return self._site.settings.machine_types[self._machine_type]

    def submission(
        self, drone_uuid: str, translation: Optional[Any] = None
    ) -> Submission:
        return self._site.submission(self._machine_type, drone_uuid, translation)

    async def deploy_resource(
        self, resource_attributes: AttributeDict
    ) -> AttributeDict:
        """Submit the drone once: adopt its job if one exists, and never lose one.

        A job named after the drone in a listing made since this process
        started is adopted instead of submitting again (a daemon killed during
        the submit command and restarted). When the submit's outcome is
        unknown (timed out, connection lost, unreadable answer) the drone is
        looked up by name; if its job is not there yet it stays Booting without
        a job id and :meth:`resource_status` keeps looking until the job can
        no longer appear. Only a definite refusal (the batch system's own
        error) sends the drone down.
        """
        drone_uuid = resource_attributes.drone_uuid
        with self._site.brake.deploying(drone_uuid):
            return await self._submit_once(resource_attributes)

    async def _submit_once(self, resource_attributes: AttributeDict) -> AttributeDict:
        drone_uuid = resource_attributes.drone_uuid
        snapshot = await self.poller.snapshot(newer_than=self.poller.created)
        job = snapshot.by_name(drone_uuid)
        if job is not None:
            logger.warning(
                "%s: drone %s already has job %s (%s): adopting it instead of "
                "submitting again",
                self.site_name,
                drone_uuid,
                job.job_id,
                job.state,
            )
            return self._adopt(drone_uuid, job)
        submission = self.submission(
            drone_uuid,
            resource_attributes.get("obs_machine_meta_data_translation_mapping"),
        )
        logger.debug("%s: %s", self.site_name, submission.command)
        try:
            result = await self._site.run(
                submission.command, stdin_input=submission.script
            )
            job_id = self._site.driver.parse_submit(result.stdout, result.stderr)
        except Exception as error:
            job_id = _job_id_in(self._site.driver, error)
            if job_id is None:
                if not _outcome_unknown(error):
                    logger.warning(
                        "%s: the batch system refused drone %s: %s",
                        self.site_name,
                        drone_uuid,
                        _describe(error),
                    )
                    raise
                return await self._find_submission(drone_uuid, error)
        self.poller.note_submitted(job_id)
        logger.info(
            "%s: drone %s is %s job %s",
            self.site_name,
            drone_uuid,
            self._system,
            job_id,
        )
        return AttributeDict(
            remote_resource_uuid=job_id, resource_status=ResourceStatus.Booting
        )

    async def _find_submission(
        self, drone_uuid: str, error: BaseException
    ) -> AttributeDict:
        """The job may or may not exist: find it by its name, the drone uuid."""
        deadline = self.poller.clock() + self._site.late_job_margin
        self._site.unresolved[drone_uuid] = deadline
        logger.warning(
            "%s: drone %s: the submission's outcome is unknown (%s); looking for a job "
            "named %s",
            self.site_name,
            drone_uuid,
            _describe(error),
            drone_uuid,
        )
        try:
            job = (await self.poller.refresh()).by_name(drone_uuid)
        except Exception as lookup:  # the listing failed too: keep looking later
            logger.warning(
                "%s: drone %s: listing failed too (%s); looking again next cycle",
                self.site_name,
                drone_uuid,
                _describe(lookup),
            )
            job = None
        if job is not None:
            return self._adopt(drone_uuid, job)
        logger.warning(
            "%s: drone %s: no job yet; it stays Booting and is looked up by name "
            "until a job can no longer appear (%.0fs)",
            self.site_name,
            drone_uuid,
            self._site.late_job_margin,
        )
        return AttributeDict(
            remote_resource_uuid=None, resource_status=ResourceStatus.Booting
        )

    def _adopt(self, drone_uuid: str, job: JobRecord) -> AttributeDict:
        self._site.unresolved.pop(drone_uuid, None)
        status = job.status or ResourceStatus.Booting
        logger.info(
            "%s: drone %s is %s job %s (found by name)",
            self.site_name,
            drone_uuid,
            self._system,
            job.job_id,
        )
        return AttributeDict(remote_resource_uuid=job.job_id, resource_status=status)

    async def resource_status(
        self, resource_attributes: AttributeDict
    ) -> AttributeDict:
        """The drone's status from the shared listing; never a death it cannot confirm."""
        drone_uuid = resource_attributes.get("drone_uuid")
        job_id = resource_attributes.get("remote_resource_uuid")
        try:
            snapshot = await self.poller.snapshot()
        except Exception as error:  # noqa: BLE001 - noted, then handled as before
            if not _batch_answered(error):
                self._site.listing_failed(error)
            raise
        self._site.listing_worked()
        if job_id is None:
            return self._status_by_name(drone_uuid, snapshot)
        status = self.poller.status_of(str(job_id), snapshot)
        if status is None:
            raise StatusUndecided(
                f"{self.site_name}: drone {drone_uuid}: job {job_id}'s state is not "
                "certain yet; asking again next cycle"
            )
        if drone_uuid is not None:
            self._site.brake.observed(drone_uuid, status)
        self._judge_connectivity(drone_uuid, status, snapshot)
        return AttributeDict(resource_status=status)

    def _status_by_name(
        self, drone_uuid: Optional[str], snapshot: StatusSnapshot
    ) -> AttributeDict:
        """A drone whose submission's outcome was unknown: adopt its job once listed."""
        if drone_uuid is None:
            return AttributeDict(resource_status=ResourceStatus.Deleted)
        job = snapshot.by_name(drone_uuid)
        if job is not None:
            return self._adopt(drone_uuid, job)
        # after a restart the deadline is unknown: count from this process's start
        deadline = self._site.unresolved.get(
            drone_uuid, self.poller.created + self._site.late_job_margin
        )
        if snapshot.started > deadline and self.poller.missing_by_name(
            drone_uuid, snapshot
        ):
            self._site.unresolved.pop(drone_uuid, None)
            logger.warning(
                "%s: drone %s: no job named after it appeared; it was never submitted",
                self.site_name,
                drone_uuid,
            )
            return AttributeDict(resource_status=ResourceStatus.Deleted)
        raise StatusUndecided(
            f"{self.site_name}: drone {drone_uuid}: its job is not listed yet"
        )

    def _judge_connectivity(
        self,
        drone_uuid: Optional[str],
        status: ResourceStatus,
        snapshot: StatusSnapshot,
    ) -> None:
        """End a running drone that lost the pool, so COBalD replaces it.

        TARDIS answers TardisDroneCrashed with its CleanupState, which cancels
        the job; a drone merely ``degraded`` (failing for less than the grace,
        or spared by a site outage in its failing stage) is left alone.
        """
        monitor = self._site.monitor
        if monitor is None or drone_uuid is None:
            return
        monitor.observe(snapshot)
        self._site.follow_outage(snapshot)  # hold deploys while the site is down
        self._site.update_metrics(snapshot)
        if status is ResourceStatus.Deleted:
            monitor.forget([drone_uuid])
            return
        judgement = monitor.judgement(drone_uuid)
        if status is not ResourceStatus.Running or judgement is None:
            return
        if judgement.verdict is Verdict.CONNECTED:
            self._site.brake.connected(drone_uuid)
        elif judgement.verdict is Verdict.NEVER_CONNECTED:
            self._site.brake.never_connected(drone_uuid)
        if judgement.verdict.terminal:
            logger.warning(
                "%s: drone %s is %s (%s; failing stage: %s%s): ending it",
                self.site_name,
                drone_uuid,
                judgement.verdict.value,
                judgement.reason,
                judgement.failing_stage or "unknown",
                f"; tunnel: {judgement.path_error}" if judgement.path_error else "",
            )
            raise TardisDroneCrashed(
                f"{drone_uuid}: {judgement.verdict.value}: {judgement.reason}"
            )

    async def terminate_resource(self, resource_attributes: AttributeDict) -> None:
        drone_uuid = resource_attributes.get("drone_uuid")
        job_id = resource_attributes.get("remote_resource_uuid")
        if drone_uuid is not None:
            self._site.brake.cancelled(drone_uuid)  # our decision, not a death
        if job_id is None:
            job_id = await self._job_to_cancel_by_name(drone_uuid)
            if job_id is None:
                return
        driver = self._site.driver
        command = runner.limited(
            driver.cancel_command(str(job_id), self._kind.batch),
            self.settings.command_timeout,
        )
        if self._site.monitor is not None:
            # the heartbeat file goes in the same call; the cancel's status decides
            cleanup = cleanup_command(self._site.monitor.heartbeat_dir, [drone_uuid])
            if cleanup:
                command = f"{command}; status=$?; {cleanup}; exit $status"
        try:
            response = await runner.run(
                self._executor, command, timeout=self.settings.command_timeout
            )
        except CommandExecutionFailure as failure:
            if driver.already_gone(failure.stderr) or driver.already_gone(
                failure.stdout
            ):
                logger.info(
                    "%s: drone %s: job %s already finished, nothing to cancel",
                    self.site_name,
                    drone_uuid,
                    job_id,
                )
                return
            raise
        logger.info(
            "%s: drone %s: cancelled job %s", self.site_name, drone_uuid, job_id
        )
        logger.debug("%s: %s returned %s", self.site_name, command, response)

    async def _job_to_cancel_by_name(self, drone_uuid: Optional[str]) -> Optional[str]:
        """The job of a drone whose submission's outcome was unknown, or None if none.

        While its job may still appear, cancelling is retried rather than
        declared done: a job that lands later would run unseen.
        """
        if drone_uuid is None:
            return None
        snapshot = await self.poller.snapshot()
        job = snapshot.by_name(drone_uuid)
        if job is not None:
            return job.job_id
        deadline = self._site.unresolved.get(
            drone_uuid, self.poller.created + self._site.late_job_margin
        )
        if snapshot.started <= deadline:
            raise StatusUndecided(
                f"{self.site_name}: drone {drone_uuid}: its job may still appear; "
                "cancelling again next cycle"
            )
        self._site.unresolved.pop(drone_uuid, None)
        return None

    async def stop_resource(self, resource_attributes: AttributeDict) -> None:
        logger.debug(
            "%s jobs cannot be stopped gracefully; terminating instead.", self._system
        )
        await self.terminate_resource(resource_attributes)

    def handle_exceptions(self):
        """Every failure becomes one TARDIS handles in the calling state (failures.py)."""
        return transient_failures(self.site_name)


#: exit statuses after which the submit command may or may not have submitted
_UNKNOWN_EXITS = runner.TIMED_OUT | {runner.SSH_FAILED, None}


def _outcome_unknown(error: BaseException) -> bool:
    """Could the submit command have submitted the job although the call failed?"""
    if isinstance(error, CommandExecutionFailure):
        return error.exit_code in _UNKNOWN_EXITS or (error.exit_code or 0) < 0
    return isinstance(
        error,
        (
            asyncio.TimeoutError,
            BatchOutputError,
            UnicodeError,
            OSError,
            EOFError,
            asyncssh.Error,
            ExecutorFailure,
        ),
    )


def _job_id_in(driver: BatchDriver, error: BaseException) -> Optional[str]:
    """A job id printed although the call failed (a site wrapper's late error)."""
    stdout = getattr(error, "stdout", None)
    if not isinstance(error, CommandExecutionFailure) or not stdout:
        return None
    try:
        return driver.parse_submit(stdout)
    except BatchOutputError:
        return None


def _describe(error: BaseException) -> str:
    if isinstance(error, CommandExecutionFailure):
        return f"exit {error.exit_code}: {short(error.stderr or error.stdout, 200)}"
    return repr(error)


_ADAPTERS: dict[type[BatchDriver], type[NetBatchAdapter]] = {}


def adapter_class(driver: type[BatchDriver]) -> type[NetBatchAdapter]:
    """The adapter class of a driver, named as TARDIS looks it up (``NetSlurmAdapter``).

    One class per driver, made once, so every lookup gets the same class.
    """
    if driver not in _ADAPTERS:
        name = f"{driver.adapter_name}Adapter"
        _ADAPTERS[driver] = type(
            name, (NetBatchAdapter,), {"driver": driver, "__module__": __name__}
        )
    return _ADAPTERS[driver]


#: the built-in driver's adapter (``adapter: NetSlurm``), by the name TARDIS uses
NetSlurmAdapter = adapter_class(SlurmDriver)

__all__ = [
    "DRIVERS",
    "HTCONDOR_TRANSLATION",
    "NetBatchAdapter",
    "NetSlurmAdapter",
    "NetadapterTimeout",
    "Submission",
    "adapter_class",
    "build_submission",
    "reset_caches",
    "site_monitor",
    "site_poller",
]


def _batch_answered(error: BaseException) -> bool:
    """True when the login node answered and only the batch system's output was bad.

    A listing cut short or an empty one while jobs run (ListingUntrusted,
    also behind a cached StatusUnavailable) is Slurm's hiccup, not a login
    node the adapter cannot reach: it makes no outage in stage ``login``.
    """
    seen: Optional[BaseException] = error
    while seen is not None:
        if isinstance(seen, (ListingUntrusted, BatchOutputError)):
            return True
        seen = seen.__cause__
    return False
