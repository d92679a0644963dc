"""NetSlurm: the TARDIS site adapter, thin glue over batch/slurm.py, siteconfig.py and render.py.

Per site (cached by site name, shared by all its machine types): the
validated section (profile, keepalive budget, machine types) and one
:class:`~tardis_netadapter.batch.slurm.SitePoller`. Per machine type: the
drone script, rendered once. Per drone: only the sbatch command line, whose
drone-specific values travel as environment.

Registered with TARDIS by ``tardis_netadapter.poolfactory`` (``adapter: NetSlurm``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

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

from .batch import runner, slurm
from .brake import SiteBrake, default_state_file
from .connectivity.collect import ElapsedProbe, cleanup_command
from .connectivity.metrics import ConnectivityMetrics, serve
from .connectivity.monitor import SiteMonitor
from .connectivity.verdict import Timing, Verdict
from .failures import (
    NetadapterTimeout,
    StatusUndecided,
    short,
    transient_failures,
)
from .schema import ConfigurationError
from .siteconfig import SiteSettings, load_site_settings

logger = logging.getLogger("cobald.runtime.tardis_netadapter.siteadapter")

#: HTCondor's unit translation (cores, MB, KB), used when no batch system says otherwise
HTCONDOR_TRANSLATION = AttributeDict(Cores=1, Memory=1024, Disk=1024 * 1024)


@dataclass(frozen=True)
class Submission:
    """What one drone gets: the sbatch command line and the script on its stdin."""

    command: str
    script: str


# --------------------------------------------------------------------------
# per-site and per-machine-type state, shared by every adapter instance
# --------------------------------------------------------------------------


@dataclass
class _SiteState:
    section: Any
    settings: SiteSettings
    poller: Optional[slurm.SitePoller] = None
    monitor: Optional[SiteMonitor] = None
    metrics: Optional[ConnectivityMetrics] = None
    exporter: Optional[asyncio.Task] = None
    metered: Any = None  # the snapshot the metrics were last set from
    #: drones whose sbatch outcome is unknown -> when a late job can no longer appear
    unresolved: dict[str, float] = field(default_factory=dict)
    brake: Optional[SiteBrake] = None


_SITES: dict[str, _SiteState] = {}
_SCRIPTS: dict[tuple[str, str], str] = {}


def reset_caches() -> None:
    """Forget validated sites, pollers and rendered scripts (tests, config reloads)."""
    _SITES.clear()
    _SCRIPTS.clear()


def site_state(site_name: str, section: Any) -> _SiteState:
    """Validate a site's section once; re-validate only if the section object changed."""
    state = _SITES.get(site_name)
    if state is None or state.section is not section:
        state = _SiteState(section, load_site_settings(site_name, section))
        state.brake = SiteBrake(
            site_name, state.settings.brake, state_file=default_state_file(site_name)
        )
        _SITES[site_name] = state
        _forget_scripts(site_name)
        logger.info(
            "%s: network profile valid (mode %s, ssh keepalive %ss)",
            site_name,
            state.settings.profile.mode,
            state.settings.budget.server_alive_interval,
        )
    return state


def site_monitor(site_name: str) -> Optional[SiteMonitor]:
    """The connectivity monitor of a site (None if monitoring is off or no adapter yet)."""
    state = _SITES.get(site_name)
    return state.monitor if state is not None else None


def _new_poller(
    settings: SiteSettings, executor: Executor, max_age: float
) -> tuple[slurm.SitePoller, Optional[SiteMonitor]]:
    """The site's poller; with monitoring, heartbeats ride in the same executor call."""
    monitor = None
    probes: list[slurm.Probe] = []
    monitoring = settings.profile.monitoring
    if monitoring.enabled:
        monitor = SiteMonitor(
            monitoring.heartbeat_dir,
            Timing.from_budget(settings.budget),
            timeout=max(1, int(min(30, settings.command_timeout))),  # 0: no limit
        )
        probes = [monitor.probe, ElapsedProbe()]
    poller = slurm.SitePoller(
        executor,
        max_age=max_age,
        timeout=settings.command_timeout,
        probes=probes,
        name=settings.name,
    )
    return poller, monitor


def site_poller(site_name: str) -> Optional[slurm.SitePoller]:
    """The status poller of a site once its first adapter exists (hook for probes)."""
    state = _SITES.get(site_name)
    return state.poller if state is not None else None


def _forget_scripts(site_name: str) -> None:
    for key in [key for key in _SCRIPTS if key[0] == site_name]:
        del _SCRIPTS[key]


def drone_script(settings: SiteSettings, machine_type: str) -> str:
    """The rendered drone script of a machine type, rendered once and cached."""
    key = (settings.name, machine_type)
    if key not in _SCRIPTS:
        from . import render  # late: the renderer pulls in the templates

        _SCRIPTS[key] = render.render_drone_script(
            settings.profile,
            settings.budget,
            site_name=settings.name,
            machine_type=machine_type,
            job_id_variable="SLURM_JOB_ID",  # until the batch driver declares it
        )
    return _SCRIPTS[key]


def build_submission(
    settings: SiteSettings,
    machine_type: str,
    drone_uuid: str,
    translation: Mapping[str, float],
) -> Submission:
    """The exact sbatch command and script for one drone (used by the adapter and the CLI)."""
    kind = settings.machine_types[machine_type]
    environment = slurm.drone_environment(
        drone_uuid, kind.meta_data, translation, kind.slurm.walltime_seconds
    )
    command = slurm.sbatch_command(
        kind.slurm,
        kind.meta_data,
        drone_uuid,
        environment,
        export=settings.export_environment,
    )
    return Submission(command=command, script=drone_script(settings, machine_type))


# --------------------------------------------------------------------------
# the adapter
# --------------------------------------------------------------------------


class NetSlurmAdapter(SiteAdapter):
    """Drones as Slurm jobs on a network-restricted site, submitted over the site's executor."""

    def __init__(self, machine_type: str, site_name: str):
        self._machine_type = machine_type
        self._site_name = site_name
        self._executor: Executor = (
            getattr(self.configuration, "executor", None) or ShellExecutor()
        )
        state = site_state(site_name, self.configuration)
        self._settings = state.settings
        if machine_type not in self._settings.machine_types:
            raise ConfigurationError(
                [f"{site_name}.MachineTypes: has no machine type {machine_type!r}"]
            )
        self._kind = self._settings.machine_types[machine_type]
        if state.poller is None or state.poller.executor is not self._executor:
            state.poller, state.monitor = _new_poller(
                self._settings, self._executor, self._status_max_age()
            )
            if (
                state.monitor is not None
                and self._settings.profile.monitoring.metrics_port
            ):
                state.metrics = ConnectivityMetrics()
        self._state = state
        self._poller = state.poller
        # render now: a template or profile problem stops the daemon at start
        drone_script(self._settings, machine_type)

    def _status_max_age(self) -> float:
        if self._settings.status_max_age is not None:
            return self._settings.status_max_age
        try:
            heartbeat = self.drone_heartbeat_interval
        except (AttributeError, TypeError):  # no Sites entry (tests, tools)
            heartbeat = 60
        return max(1.0, (heartbeat or 60) / 2)

    @property
    def poller(self) -> slurm.SitePoller:
        """The site's shared status poller (the connectivity monitor adds probes here)."""
        return self._poller

    @property
    def settings(self) -> SiteSettings:
        return self._settings

    async def _run(self, command: str, stdin_input: Optional[str] = None) -> Any:
        """One batch command, limited on the login node and here alike."""
        timeout = self._settings.command_timeout
        return await runner.run(
            self._executor,
            runner.limited(command, timeout),
            timeout=timeout,
            stdin_input=stdin_input,
        )

    def submission(
        self, drone_uuid: str, translation: Optional[Mapping[str, float]] = None
    ) -> Submission:
        return build_submission(
            self._settings,
            self._machine_type,
            drone_uuid,
            translation or HTCONDOR_TRANSLATION,
        )

    async def deploy_resource(
        self, resource_attributes: AttributeDict
    ) -> AttributeDict:
        """Submit the drone once: adopt its job if one exists, and never lose one.

        A job named after the drone in a listing made since this process
        started is adopted instead of submitting again (a daemon killed during
        sbatch and restarted). When sbatch's outcome is unknown (timed out,
        connection lost, unreadable answer) the drone is looked up by name; if
        its job is not there yet it stays Booting without a job id and
        :meth:`resource_status` keeps looking until the job can no longer
        appear. Only a definite refusal (sbatch's own error) sends the drone
        down.
        """
        drone_uuid = resource_attributes.drone_uuid
        with self._state.brake.deploying(drone_uuid):
            return await self._submit_once(resource_attributes)

    async def _submit_once(self, resource_attributes: AttributeDict) -> AttributeDict:
        drone_uuid = resource_attributes.drone_uuid
        snapshot = await self._poller.snapshot(newer_than=self._poller.created)
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
            result = await self._run(submission.command, stdin_input=submission.script)
            job_id = slurm.parse_sbatch_output(result.stdout, result.stderr)
        except Exception as error:
            job_id = _job_id_in(error)
            if job_id is None:
                if not _outcome_unknown(error):
                    logger.warning(
                        "%s: sbatch refused drone %s: %s",
                        self.site_name,
                        drone_uuid,
                        _describe(error),
                    )
                    raise
                return await self._find_submission(drone_uuid, error)
        self._poller.note_submitted(job_id)
        logger.info("%s: drone %s is Slurm job %s", self.site_name, drone_uuid, job_id)
        return AttributeDict(
            remote_resource_uuid=job_id, resource_status=ResourceStatus.Booting
        )

    async def _find_submission(
        self, drone_uuid: str, error: BaseException
    ) -> AttributeDict:
        """sbatch may or may not have submitted: find the job by its name, the drone uuid."""
        deadline = self._poller.clock() + self._late_job_margin()
        self._state.unresolved[drone_uuid] = deadline
        logger.warning(
            "%s: drone %s: sbatch's outcome is unknown (%s); looking for a job "
            "named %s",
            self.site_name,
            drone_uuid,
            _describe(error),
            drone_uuid,
        )
        try:
            job = (await self._poller.refresh()).by_name(drone_uuid)
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
            self._late_job_margin(),
        )
        return AttributeDict(
            remote_resource_uuid=None, resource_status=ResourceStatus.Booting
        )

    def _late_job_margin(self) -> float:
        """How long after sbatch was given up on its job may still appear."""
        return self._settings.command_timeout + runner.KILL_AFTER

    def _adopt(self, drone_uuid: str, job: slurm.JobInfo) -> AttributeDict:
        self._state.unresolved.pop(drone_uuid, None)
        status = slurm.map_state(job.state, job.job_id) or ResourceStatus.Booting
        logger.info(
            "%s: drone %s is Slurm job %s (found by name)",
            self.site_name,
            drone_uuid,
            job.job_id,
        )
        return AttributeDict(remote_resource_uuid=job.job_id, resource_status=status)

    async def resource_status(
        self, resource_attributes: AttributeDict
    ) -> AttributeDict:
        """The drone's status from the shared listing; never a death it cannot confirm."""
        drone_uuid = resource_attributes.get("drone_uuid")
        job_id = resource_attributes.get("remote_resource_uuid")
        snapshot = await self._poller.snapshot()
        if job_id is None:
            return self._status_by_name(drone_uuid, snapshot)
        status = self._poller.status_of(str(job_id), snapshot)
        if status is None:
            raise StatusUndecided(
                f"{self.site_name}: drone {drone_uuid}: job {job_id}'s state is not "
                "certain yet; asking again next cycle"
            )
        if drone_uuid is not None:
            self._state.brake.observed(drone_uuid, status)
        self._judge_connectivity(drone_uuid, status, snapshot)
        return AttributeDict(resource_status=status)

    def _status_by_name(
        self, drone_uuid: Optional[str], snapshot: slurm.StatusSnapshot
    ) -> AttributeDict:
        """A drone whose sbatch outcome was unknown: adopt its job once it is listed."""
        if drone_uuid is None:
            return AttributeDict(resource_status=ResourceStatus.Deleted)
        job = snapshot.by_name(drone_uuid)
        if job is not None:
            return self._adopt(drone_uuid, job)
        # after a restart the deadline is unknown: count from this process's start
        deadline = self._state.unresolved.get(
            drone_uuid, self._poller.created + self._late_job_margin()
        )
        if snapshot.started > deadline and self._poller.missing_by_name(
            drone_uuid, snapshot
        ):
            self._state.unresolved.pop(drone_uuid, None)
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
        snapshot: slurm.StatusSnapshot,
    ) -> None:
        """End a running drone that lost the pool, so COBalD replaces it.

        TARDIS answers TardisDroneCrashed with its CleanupState, which cancels
        the job; a drone merely ``degraded`` (failing for less than the grace)
        is left alone.
        """
        monitor = self._state.monitor
        if monitor is None or drone_uuid is None:
            return
        monitor.observe(snapshot)
        self._update_metrics(monitor, snapshot)
        if status is ResourceStatus.Deleted:
            monitor.forget([drone_uuid])
            return
        judgement = monitor.judgement(drone_uuid)
        if status is not ResourceStatus.Running or judgement is None:
            return
        if judgement.verdict is Verdict.CONNECTED:
            self._state.brake.connected(drone_uuid)
        elif judgement.verdict is Verdict.NEVER_CONNECTED:
            self._state.brake.never_connected(drone_uuid)
        if judgement.verdict.terminal:
            logger.warning(
                "%s: drone %s is %s (%s; failing stage: %s): ending it",
                self.site_name,
                drone_uuid,
                judgement.verdict.value,
                judgement.reason,
                judgement.failing_stage or "unknown",
            )
            raise TardisDroneCrashed(
                f"{drone_uuid}: {judgement.verdict.value}: {judgement.reason}"
            )

    def _update_metrics(
        self, monitor: SiteMonitor, snapshot: slurm.StatusSnapshot
    ) -> None:
        """Set the site's gauges once per snapshot, not once per drone."""
        state = self._state
        if state.metrics is None or state.metered is snapshot:
            return
        state.metered = snapshot
        if state.exporter is None:
            port = self._settings.profile.monitoring.metrics_port
            state.exporter = asyncio.ensure_future(serve(state.metrics, int(port)))
            state.exporter.add_done_callback(_log_exporter_failure)
        state.metrics.update(self.site_name, monitor.judgements, monitor.store.records)
        state.metrics.update_brake(self.site_name, state.brake.snapshot())

    async def terminate_resource(self, resource_attributes: AttributeDict) -> None:
        drone_uuid = resource_attributes.get("drone_uuid")
        job_id = resource_attributes.get("remote_resource_uuid")
        if drone_uuid is not None:
            self._state.brake.cancelled(drone_uuid)  # our decision, not a death
        if job_id is None:
            job_id = await self._job_to_cancel_by_name(drone_uuid)
            if job_id is None:
                return
        command = runner.limited(
            slurm.scancel_command(str(job_id), self._kind.slurm.TerminateOptions),
            self._settings.command_timeout,
        )
        if self._state.monitor is not None:
            # the heartbeat file goes in the same call; scancel's status decides
            cleanup = cleanup_command(self._state.monitor.heartbeat_dir, [drone_uuid])
            if cleanup:
                command = f"{command}; status=$?; {cleanup}; exit $status"
        try:
            response = await runner.run(
                self._executor, command, timeout=self._settings.command_timeout
            )
        except CommandExecutionFailure as failure:
            if _already_gone(failure.stderr) or _already_gone(failure.stdout):
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
        """The job of a drone whose sbatch outcome was unknown, or None if it has none.

        While its job may still appear, cancelling is retried rather than
        declared done: a job that lands later would run unseen.
        """
        if drone_uuid is None:
            return None
        snapshot = await self._poller.snapshot()
        job = snapshot.by_name(drone_uuid)
        if job is not None:
            return job.job_id
        deadline = self._state.unresolved.get(
            drone_uuid, self._poller.created + self._late_job_margin()
        )
        if snapshot.started <= deadline:
            raise StatusUndecided(
                f"{self.site_name}: drone {drone_uuid}: its job may still appear; "
                "cancelling again next cycle"
            )
        self._state.unresolved.pop(drone_uuid, None)
        return None

    async def stop_resource(self, resource_attributes: AttributeDict) -> None:
        logger.debug("Slurm jobs cannot be stopped gracefully; terminating instead.")
        await self.terminate_resource(resource_attributes)

    def handle_exceptions(self):
        """Every failure becomes one TARDIS handles in the calling state (failures.py)."""
        return transient_failures(self.site_name)


def _log_exporter_failure(task: asyncio.Task) -> None:
    """The metrics exporter is optional: its failure is logged, never raised."""
    if not task.cancelled() and task.exception() is not None:
        logger.error("connectivity metrics exporter failed: %r", task.exception())


def _already_gone(text: Optional[str]) -> bool:
    """scancel's wording for a job that finished or was purged already."""
    text = (text or "").lower()
    return "already completing or completed" in text or "invalid job id" in text


#: exit statuses after which sbatch may or may not have submitted
_UNKNOWN_EXITS = runner.TIMED_OUT | {runner.SSH_FAILED, None}


def _outcome_unknown(error: BaseException) -> bool:
    """Could sbatch have submitted the job although the call failed?"""
    if isinstance(error, CommandExecutionFailure):
        return error.exit_code in _UNKNOWN_EXITS or (error.exit_code or 0) < 0
    return isinstance(
        error,
        (
            asyncio.TimeoutError,
            slurm.SlurmOutputError,
            UnicodeError,
            OSError,
            EOFError,
            asyncssh.Error,
            ExecutorFailure,
        ),
    )


def _job_id_in(error: BaseException) -> Optional[str]:
    """A job id sbatch printed although the call failed (a site wrapper's late error)."""
    stdout = getattr(error, "stdout", None)
    if not isinstance(error, CommandExecutionFailure) or not stdout:
        return None
    try:
        return slurm.parse_sbatch_output(stdout)
    except slurm.SlurmOutputError:
        return None


def _describe(error: BaseException) -> str:
    if isinstance(error, CommandExecutionFailure):
        return f"exit {error.exit_code}: {short(error.stderr or error.stdout, 200)}"
    return repr(error)


__all__ = [
    "NetSlurmAdapter",
    "NetadapterTimeout",
    "Submission",
    "build_submission",
    "drone_script",
    "reset_caches",
    "site_poller",
]
