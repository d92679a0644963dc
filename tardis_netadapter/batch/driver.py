"""What a batch system is to the adapter: a small declaration, one module per system.

A driver says how to submit a drone (command, job id from the answer), how to
cancel one (command, the wording of "already gone"), how to list every job of
the drone user in one call (command, records with a TARDIS ``ResourceStatus``,
name and elapsed time), which variable holds the job id on the worker, and the
options of its machine types. Everything else (the poller, idempotent
submission, the connectivity monitor, the drone scripts) is batch-neutral and
takes a driver: adding a batch system is a new module under ``batch/`` and one
``register`` call, nothing else (docs/architecture.md).

Modelled on dask-jobqueue's job classes (a batch system sets its commands and
little more) and parsl's providers (batch system, channel and launcher as
separate axes: here the channel is TARDIS's executor).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple, Optional

from tardis.interfaces.siteadapter import ResourceStatus


class JobRecord(NamedTuple):
    """One job of a listing, in batch-neutral terms.

    ``status`` is None for a state the driver does not know: the drone keeps
    its previous state rather than the adapter guessing. ``state`` is the batch
    system's own word, only for people (logs, ``status``). ``elapsed`` is how
    long the job has run (seconds), where the listing says so.

    A NamedTuple, not a frozen dataclass: a listing makes one per job per
    cycle, and a frozen dataclass's ``__init__`` costs several times more.
    """

    job_id: str
    name: str
    state: str
    status: Optional[ResourceStatus]
    elapsed: Optional[float] = None
    nodes: str = ""
    reason: str = ""
    #: ended in a state the operator should hear about (failed, out of memory, ...)
    failed: bool = False

    @property
    def final(self) -> bool:
        """The job has ended: its drone's resource is gone."""
        return self.status is ResourceStatus.Deleted


class BatchOutputError(ValueError):
    """The batch system answered with output we cannot interpret; carries it for the log."""

    def __init__(self, message: str, stdout: str = "", stderr: str = ""):
        super().__init__(message)
        self.stdout = stdout
        self.stderr = stderr

    def __str__(self) -> str:
        return (
            f"{self.args[0]} (stdout={_clip(self.stdout)!r}, "
            f"stderr={_clip(self.stderr)!r})"
        )


def _clip(text: str, limit: int = 500) -> str:
    text = text or ""
    return text if len(text) <= limit else text[:limit] + "..."


_ADAPTER_NAME = re.compile(r"Net[A-Z][A-Za-z0-9]*")
_VARIABLE = re.compile(r"[A-Z_][A-Z0-9_]*")


class BatchDriver(ABC):
    """A batch system: its commands, its answers, its states; nothing else.

    Drivers are stateless: one instance serves every site and drone. Every
    command they build is a single simple command whose words are quoted
    (``shlex``); the adapter wraps it in the login node's ``timeout``.
    """

    #: the ``adapter:`` name in TARDIS's ``Sites`` list, e.g. ``NetSlurm``
    adapter_name: ClassVar[str]
    #: the batch system's name for people, e.g. ``Slurm``
    system: ClassVar[str]
    #: the variable that holds the job id inside a running job, e.g. ``SLURM_JOB_ID``
    job_id_variable: ClassVar[str]
    #: the programs the login node must have (``check --probe`` looks for them)
    site_commands: ClassVar[tuple[str, ...]]
    #: the dataclass of ``MachineTypeConfiguration.<type>`` (validated by schema.load)
    machine_type_options: ClassVar[type]

    # -- submit ------------------------------------------------------------------
    @abstractmethod
    def submit_command(
        self,
        options: Any,
        meta_data: Any,
        job_name: str,
        environment: Mapping[str, str],
        export: Sequence[str] = (),
    ) -> str:
        """The submit command for one drone; the drone script goes on its stdin.

        ``environment`` is the drone's own values (``TardisDrone*``), ``export``
        the site's ``export_environment`` entries; nothing else of the
        submitting environment may reach the job.
        """

    @abstractmethod
    def parse_submit(self, stdout: str, stderr: str = "") -> str:
        """The job id from the submit command's answer, or BatchOutputError."""

    # -- cancel ------------------------------------------------------------------
    @abstractmethod
    def cancel_command(self, job_id: str, options: Any) -> str:
        """The command that cancels one job."""

    @abstractmethod
    def already_gone(self, text: str) -> bool:
        """The cancel command's wording for a job that has ended already."""

    # -- list --------------------------------------------------------------------
    @abstractmethod
    def list_command(self) -> str:
        """One command listing every job of the drone user, recently ended ones included."""

    @abstractmethod
    def parse_listing(self, text: str) -> dict[str, JobRecord]:
        """Records by job id; BatchOutputError for any line that is not a whole job line."""

    # -- machine types -------------------------------------------------------------
    @abstractmethod
    def walltime_seconds(self, options: Any) -> int:
        """The machine type's time limit in seconds (drones need a finite one)."""

    # -- names -----------------------------------------------------------------------
    def job_name_problem(self, job_name: str) -> Optional[str]:
        """Why the batch system would refuse ``job_name`` (a drone uuid) as a
        job name, or None. Checked against the site name when the configuration
        is loaded, so a name every submission would fail on is refused at start."""
        return None

    # -- check --probe -------------------------------------------------------------
    def probe_job_command(self, options: Any) -> Optional[str]:
        """A command that runs a short script (on its stdin, ``/bin/sh -s``) as
        one task of a short job on a worker of the machine type ``options``,
        waits for it and prints its output; ``check --probe`` runs a network
        mode's worker checks with it (Mode.probe_job_lines). None: this batch
        system cannot run such a job (the mode's worker checks are skipped,
        and ``check`` says so)."""
        return None

    @classmethod
    def check_declaration(cls) -> list[str]:
        """Problems with the class attributes, so a broken driver fails at registration."""
        problems = []
        name = getattr(cls, "adapter_name", "")
        if not _ADAPTER_NAME.fullmatch(name or ""):
            problems.append(
                f"{cls.__name__}.adapter_name: got {name!r}; expected 'Net' and a "
                "capitalised word such as 'NetSlurm'"
            )
        variable = getattr(cls, "job_id_variable", "")
        if not _VARIABLE.fullmatch(variable or ""):
            problems.append(
                f"{cls.__name__}.job_id_variable: got {variable!r}; expected an "
                "environment variable name such as 'SLURM_JOB_ID'"
            )
        for attribute in ("system", "site_commands", "machine_type_options"):
            if not getattr(cls, attribute, None):
                problems.append(f"{cls.__name__}.{attribute}: missing")
        return problems
