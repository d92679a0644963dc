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
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional

import asyncssh
from tardis.exceptions.executorexceptions import (
    CommandExecutionFailure,
    ExecutorFailure,
)
from tardis.exceptions.tardisexceptions import (
    TardisAuthError,
    TardisDroneCrashed,
    TardisError,
    TardisQuotaExceeded,
    TardisResourceStatusUpdateFailed,
    TardisTimeout,
)
from tardis.interfaces.executor import Executor
from tardis.interfaces.siteadapter import ResourceStatus, SiteAdapter
from tardis.utilities.attributedict import AttributeDict
from tardis.utilities.executors.shellexecutor import ShellExecutor

from .batch import slurm
from .connectivity.collect import ElapsedProbe, cleanup_command
from .connectivity.metrics import ConnectivityMetrics, serve
from .connectivity.monitor import SiteMonitor
from .connectivity.verdict import Timing
from .schema import ConfigurationError
from .siteconfig import SiteSettings, load_site_settings

logger = logging.getLogger("cobald.runtime.tardis_netadapter.siteadapter")

#: HTCondor's unit translation (cores, MB, KB), used when no batch system says otherwise
HTCONDOR_TRANSLATION = AttributeDict(Cores=1, Memory=1024, Disk=1024 * 1024)


class NetadapterTimeout(TardisTimeout, TardisResourceStatusUpdateFailed):
    """A Slurm command timed out.

    Both a TardisTimeout and a TardisResourceStatusUpdateFailed: TARDIS's
    RequestState and status pipeline retry on the former, but ShutDownState
    and CleanupState only catch the latter, and anything uncaught there stops
    the whole daemon.
    """


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
            timeout=int(min(30, settings.command_timeout)),
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
    command = slurm.sbatch_command(kind.slurm, kind.meta_data, drone_uuid, environment)
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
        call = self._executor.run_command(command, stdin_input=stdin_input)
        return await asyncio.wait_for(call, self._settings.command_timeout)

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
        drone_uuid = resource_attributes.drone_uuid
        submission = self.submission(
            drone_uuid,
            resource_attributes.get("obs_machine_meta_data_translation_mapping"),
        )
        logger.debug("%s: %s", self.site_name, submission.command)
        result = await self._run(submission.command, stdin_input=submission.script)
        try:
            job_id = slurm.parse_sbatch_output(result.stdout, result.stderr)
        except slurm.SlurmOutputError:
            # sbatch may have submitted the job and printed something odd: find it
            # by its name (the drone uuid) rather than leave an untracked drone.
            job = (await self._poller.refresh()).by_name(drone_uuid)
            if job is None:
                raise
            logger.warning(
                "%s: sbatch output unreadable, found %s as job %s by name",
                self.site_name,
                drone_uuid,
                job.job_id,
            )
            job_id = job.job_id
        self._poller.note_submitted(job_id)
        logger.info("%s: drone %s is Slurm job %s", self.site_name, drone_uuid, job_id)
        return AttributeDict(
            remote_resource_uuid=job_id, resource_status=ResourceStatus.Booting
        )

    async def resource_status(
        self, resource_attributes: AttributeDict
    ) -> AttributeDict:
        job_id = resource_attributes.get("remote_resource_uuid")
        snapshot = await self._poller.snapshot()
        status = self._poller.status_of(
            None if job_id is None else str(job_id), snapshot
        )
        self._judge_connectivity(
            resource_attributes.get("drone_uuid"), status, snapshot
        )
        return AttributeDict(resource_status=status)

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

    async def terminate_resource(self, resource_attributes: AttributeDict) -> None:
        job_id = resource_attributes.get("remote_resource_uuid")
        if job_id is None:
            return
        command = slurm.scancel_command(str(job_id), self._kind.slurm.TerminateOptions)
        if self._state.monitor is not None:
            # the heartbeat file goes in the same call; scancel's status decides
            cleanup = cleanup_command(
                self._state.monitor.heartbeat_dir, [resource_attributes.drone_uuid]
            )
            if cleanup:
                command = f"{command}; status=$?; {cleanup}; exit $status"
        try:
            response = await self._run(command)
        except CommandExecutionFailure as failure:
            if _already_gone(failure.stderr) or _already_gone(failure.stdout):
                logger.info(
                    "%s: job %s already finished, nothing to cancel",
                    self.site_name,
                    job_id,
                )
                return
            raise
        logger.debug("%s: %s returned %s", self.site_name, command, response)

    async def stop_resource(self, resource_attributes: AttributeDict) -> None:
        logger.debug("Slurm jobs cannot be stopped gracefully; terminating instead.")
        await self.terminate_resource(resource_attributes)

    @contextmanager
    def handle_exceptions(self):
        """Map every transient failure to an exception TARDIS retries.

        A bare TardisError (or any other exception) escaping a drone ends the
        COBalD daemon, so only errors not known to be transient become one.
        """
        site = self.site_name
        warning = _WarnOnce()
        try:
            yield
        except (
            TardisResourceStatusUpdateFailed,
            TardisTimeout,
            TardisAuthError,
            TardisDroneCrashed,
            TardisQuotaExceeded,
        ):
            raise
        except asyncio.TimeoutError as error:
            warning(error, "%s: Slurm command timed out", site)
            raise NetadapterTimeout(f"{site}: Slurm command timed out") from error
        except CommandExecutionFailure as error:
            warning(
                error,
                "%s: command failed (exit %s): stdout=%r stderr=%r",
                site,
                error.exit_code,
                _short(error.stdout),
                _short(error.stderr),
            )
            raise TardisResourceStatusUpdateFailed(
                f"{site}: {error.message}"
            ) from error
        except ExecutorFailure as error:
            warning(error, "%s: executor failed: %s", site, error.description)
            raise TardisResourceStatusUpdateFailed(
                f"{site}: {error.description}"
            ) from error
        except asyncssh.Error as error:
            warning(error, "%s: SSH failed: %s", site, error)
            raise TardisResourceStatusUpdateFailed(f"{site}: SSH: {error}") from error
        except (OSError, EOFError) as error:  # ConnectionError is an OSError
            warning(error, "%s: connection failed: %r", site, error)
            raise TardisResourceStatusUpdateFailed(f"{site}: {error!r}") from error
        except (slurm.SlurmOutputError, slurm.StatusUnavailable) as error:
            warning(error, "%s: %s", site, error)
            raise TardisResourceStatusUpdateFailed(f"{site}: {error}") from error
        except UnicodeError as error:
            warning(error, "%s: undecodable output: %s", site, error)
            raise TardisResourceStatusUpdateFailed(f"{site}: {error}") from error
        except Exception as error:
            logger.exception("%s: unexpected error, not known to be transient", site)
            raise TardisError(f"{site}: {error!r}") from error


def _log_exporter_failure(task: asyncio.Task) -> None:
    """The metrics exporter is optional: its failure is logged, never raised."""
    if not task.cancelled() and task.exception() is not None:
        logger.error("connectivity metrics exporter failed: %r", task.exception())


class _WarnOnce:
    """Warn once per failure, not once per drone.

    Every drone waiting on a failed shared squeue gets the same exception (or a
    StatusUnavailable caused by it); at thousands of drones a warning each
    would flood the log. Repeats are logged at debug level.
    """

    _last: Optional[BaseException] = None

    def __call__(self, error: BaseException, message: str, *args: Any) -> None:
        root = error.__cause__ if isinstance(error, slurm.StatusUnavailable) else error
        if root is not None and root is _WarnOnce._last:
            logger.debug(message, *args)
            return
        _WarnOnce._last = root
        logger.warning(message, *args)


def _already_gone(text: Optional[str]) -> bool:
    """scancel's wording for a job that finished or was purged already."""
    text = (text or "").lower()
    return "already completing or completed" in text or "invalid job id" in text


def _short(text: Optional[str], limit: int = 500) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else text[:limit] + "..."


__all__ = [
    "NetSlurmAdapter",
    "NetadapterTimeout",
    "Submission",
    "build_submission",
    "drone_script",
    "reset_caches",
    "site_poller",
]
