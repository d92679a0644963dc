"""The Slurm driver: sbatch, squeue and scancel, their answers and Slurm's job states.

Everything here is a pure function; :class:`SlurmDriver` bundles them as the
driver the batch-neutral adapter, poller and CLI take (batch/driver.py). The
``render`` CLI builds its command line with the same functions, so what it
prints is what a drone gets.

Why not TARDIS's own SlurmAdapter pieces: its job-id regex misses
``sbatch --parsable`` output, it polls ``squeue --job=<100 ids>`` per bulk
(N/100 calls per cycle) and it does not quote configuration values.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Optional

from tardis.interfaces.siteadapter import ResourceStatus
from tardis.utilities.staticmapping import StaticMapping

from ..machine import MachineMetaData
from .driver import BatchDriver, BatchOutputError, JobRecord
from .options import OptionSet

# --------------------------------------------------------------------------
# machine type settings (validated through schema.load, see siteconfig.py)
# --------------------------------------------------------------------------

#: sbatch options the adapter sets itself; SubmitOptions may not override them.
OWNED_SHORT = {
    "p": "Partition",
    "N": "(always 1 node)",
    "n": "MachineMetaData.Cores",
    "t": "Walltime",
    "J": "(the drone uuid)",
}
OWNED_LONG = {
    "partition": "Partition",
    "nodes": "(always 1 node)",
    "ntasks": "MachineMetaData.Cores",
    "time": "Walltime",
    "mem": "MachineMetaData.Memory",
    "mem-per-cpu": "MachineMetaData.Memory",
    "job-name": "(the drone uuid)",
    "export": "(the drone environment)",
    "parsable": "(always set)",
    "wrap": "(the rendered drone script, sent on stdin)",
}


#: sbatch options ``Gpus``/``GpuType`` render; refused in SubmitOptions when
#: ``Gpus`` is set (sbatch keeps one --gres list, and --gpus* would ask twice)
GPU_OWNED_SHORT = {"G": "Gpus"}
GPU_OWNED_LONG = dict.fromkeys(
    ("gres", "gpus", "gpus-per-node", "gpus-per-socket", "gpus-per-task"),
    "Gpus/GpuType",
)
#: sbatch options ``NumaBinding: socket`` renders or that contradict it
#: (sbatch(1) of 22.05: -B/--sockets-per-node/--cores-per-socket exclude
#: --hint, --threads-per-core and --ntasks-per-core)
NUMA_OWNED_SHORT = {"B": "NumaBinding"}
NUMA_OWNED_LONG = dict.fromkeys(
    (
        "extra-node-info",
        "sockets-per-node",
        "cores-per-socket",
        "threads-per-core",
        "ntasks-per-core",
        "ntasks-per-socket",
        "hint",
        "mem-bind",
    ),
    "NumaBinding",
)
#: a GRES type name as gres.conf's ``Type=`` takes it; no ':' or ',' (the
#: separators of a --gres list)
_GRES_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


#: how a Walltime is written (schema messages add it to every Walltime problem)
WALLTIME_FORMAT = (
    'a Slurm time limit as a quoted string: "60" (minutes), "MM:SS", '
    '"HH:MM:SS" such as "02:00:00", or "D-HH[:MM[:SS]]" such as "1-12:00:00"'
)
#: how a Partition is written
PARTITION_FORMAT = (
    "a partition name as slurm.conf defines it (no blank, '#' or '='), or "
    "several separated by ',' (sbatch -p takes the first that can run the job)"
)
#: what slurm.conf's ``PartitionName=`` cannot hold: its parser splits on
#: blanks, starts a comment at '#' and a value at '='; sbatch -p splits the
#: list on ','. Slurm refuses such a name ("invalid partition specified")
#: only at the first submission, after the daemon has started.
_PARTITION_BAD = re.compile(r"[\s#=\x00-\x1f\x7f]")


def _partition_problems(partition: str, path: str) -> list[str]:
    """Why Slurm would refuse ``partition`` (a name or a ','-separated list)."""
    names = partition.split(",")
    if any(not name for name in names):
        return [
            f"{path}: got {partition!r}; an empty name in the list (a leading, "
            f"trailing or doubled ','); expected format: {PARTITION_FORMAT}"
        ]
    problems = []
    for name in names:
        if _PARTITION_BAD.search(name):
            problems.append(
                f"{path}: got {partition!r}; {name!r} holds a blank, '#', '=' or a "
                f"control character, which no Slurm partition name can; expected "
                f"format: {PARTITION_FORMAT}"
            )
        elif name.upper() == "DEFAULT":
            problems.append(
                f"{path}: got {partition!r}; DEFAULT is slurm.conf's record of "
                "defaults, not a partition: remove Partition to use the site's "
                "default partition"
            )
    return problems


@dataclass(frozen=True)
class SlurmMachineType:
    """The Slurm keys of ``Site.MachineTypeConfiguration.<machine type>``.

    ``Gpus``/``GpuType`` and ``NumaBinding`` are keys of their own rather than
    SubmitOptions so that the drone's shape (GPUs, one NUMA domain) is
    validated and rendered the same way on every site, with the spelling the
    installed Slurm accepts (see :func:`resource_words`).
    """

    Walltime: str = field(metadata={"format": WALLTIME_FORMAT})
    Partition: Optional[str] = field(
        default=None, metadata={"format": PARTITION_FORMAT}
    )
    SubmitOptions: OptionSet = field(default_factory=OptionSet)
    TerminateOptions: OptionSet = field(default_factory=OptionSet)
    #: GPUs per drone (``--gres=gpu[:GpuType]:Gpus``); None: no GPU request
    Gpus: Optional[int] = None
    #: the GRES type (gres.conf ``Type=``, e.g. ``mi50``); None: any type
    GpuType: Optional[str] = None
    #: ``socket``: the drone's cores and memory on one socket (NUMA domain)
    NumaBinding: Literal["none", "socket"] = "none"

    def check(self, path: str) -> list[str]:
        problems = self._check_gpus(path)
        try:
            walltime_seconds(self.Walltime)
        except ValueError as error:
            problems.append(f"{path}.Walltime: {error}")
        if self.Partition is not None and not self.Partition.strip():
            problems.append(
                f"{path}.Partition: empty; name a partition or remove the key "
                "to use the site's default partition"
            )
        elif self.Partition is not None:
            problems += _partition_problems(self.Partition, f"{path}.Partition")
        for name in self.SubmitOptions.short:
            if name in OWNED_SHORT:
                problems.append(
                    f"{path}.SubmitOptions.short.{name}: set by the adapter from "
                    f"{OWNED_SHORT[name]}; remove it here"
                )
        for name in self.SubmitOptions.long:
            if name in OWNED_LONG:
                problems.append(
                    f"{path}.SubmitOptions.long.{name}: set by the adapter from "
                    f"{OWNED_LONG[name]}; remove it here"
                )
        owned_short: dict[str, str] = {}
        owned_long: dict[str, str] = {}
        if self.Gpus is not None:
            owned_short.update(GPU_OWNED_SHORT)
            owned_long.update(GPU_OWNED_LONG)
        if self.NumaBinding == "socket":
            owned_short.update(NUMA_OWNED_SHORT)
            owned_long.update(NUMA_OWNED_LONG)
        for name in self.SubmitOptions.short:
            if name in owned_short:
                problems.append(
                    f"{path}.SubmitOptions.short.{name}: conflicts with "
                    f"{owned_short[name]}, which sets the job's shape; remove it "
                    f"here or remove {owned_short[name]}"
                )
        for name in self.SubmitOptions.long:
            if name in owned_long:
                problems.append(
                    f"{path}.SubmitOptions.long.{name}: conflicts with "
                    f"{owned_long[name]}, which sets the job's shape; remove it "
                    f"here or remove {owned_long[name]}"
                )
        return problems

    def _check_gpus(self, path: str) -> list[str]:
        problems = []
        if self.Gpus is not None and self.Gpus < 1:
            problems.append(
                f"{path}.Gpus: got {self.Gpus!r}; expected a whole number >= 1 "
                "(GPUs per drone); remove the key for drones without GPUs"
            )
        if self.GpuType is not None:
            if self.Gpus is None:
                problems.append(
                    f"{path}.GpuType: got {self.GpuType!r} without Gpus; set "
                    "Gpus: N (GPUs per drone) or remove GpuType"
                )
            if not _GRES_TYPE.fullmatch(self.GpuType):
                problems.append(
                    f"{path}.GpuType: got {self.GpuType!r}; expected a GRES type "
                    "name as in the site's gres.conf Type= (letters, digits, "
                    "'_', '.', '-'; no ':' or ','), e.g. mi50"
                )
        return problems

    @property
    def walltime_seconds(self) -> int:
        return walltime_seconds(self.Walltime)


_WALLTIME = re.compile(
    r"(?:(?P<days>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?"
    r"|(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)"
)


def walltime_seconds(walltime: str) -> int:
    """Seconds of a Slurm time limit (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``)."""
    match = _WALLTIME.fullmatch(str(walltime))
    if not match:
        raise ValueError(
            f"got {walltime!r}; expected format: {WALLTIME_FORMAT}; drones need "
            "a finite limit"
        )
    parts = match.groupdict()
    if parts["days"] is not None:
        seconds = (
            int(parts["days"]) * 86400
            + int(parts["dh"]) * 3600
            + int(parts["dm"] or 0) * 60
            + int(parts["ds"] or 0)
        )
    elif parts["c"] is not None:
        seconds = int(parts["a"]) * 3600 + int(parts["b"]) * 60 + int(parts["c"])
    elif parts["b"] is not None:
        seconds = int(parts["a"]) * 60 + int(parts["b"])
    else:
        seconds = int(parts["a"]) * 60
    if seconds <= 0:
        raise ValueError(f"got {walltime!r}; expected a time limit above zero")
    return seconds


# --------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------

#: squeue fields; the job name goes last so a '|' inside a name cannot shift
#: the other fields (only drones are named by us; --me lists all our jobs).
#: TimeUsed (%M) needs no time zone, unlike StartTime: with the site clock of
#: the heartbeat collection it gives a job's start for the connect deadline.
SQUEUE_FIELDS = ("JobId", "State", "Nodes", "Reason", "TimeUsed", "Name")
SQUEUE_FORMAT = "%i|%T|%N|%r|%M|%j"
_LAST_FIELD = len(SQUEUE_FIELDS) - 1


def sbatch_command(
    machine_type: SlurmMachineType,
    meta_data: MachineMetaData,
    job_name: str,
    environment: Mapping[str, str],
    export: Sequence[str] = (),
) -> str:
    """The sbatch command line for one drone; the script goes on stdin.

    Every word is quoted with shlex, so no configured value
    can inject shell syntax on the login node. ``--export`` lists exactly the
    drone's values and the site's ``export_environment`` entries, never
    ``ALL``: the submitting environment (the COBalD daemon's, tokens included)
    stays out of the job. ``--no-requeue`` keeps Slurm from re-running a drone
    TARDIS already counted as gone (a node failure or preemption ends a drone;
    COBalD asks for a new one); ``SubmitOptions.long.requeue`` opts out.
    """
    for name, value in environment.items():
        if "," in value or "," in name:
            raise ValueError(
                f"environment {name}={value!r}: commas cannot pass through --export"
            )
    exported = [*(f"{k}={v}" for k, v in environment.items()), *export]
    words = [
        "sbatch",
        "--parsable",
        f"--job-name={job_name}",
        f"--export={','.join(exported)}",
        "-N",
        "1",
        "-n",
        str(meta_data.Cores),
        f"--mem={meta_data.memory_mb}M",
        "-t",
        machine_type.Walltime,
    ]
    if machine_type.Partition is not None:
        words += ["-p", machine_type.Partition]
    words += resource_words(machine_type, meta_data)
    if not {"requeue", "no-requeue"} & set(machine_type.SubmitOptions.long):
        words.append("--no-requeue")
    words += machine_type.SubmitOptions.tokens()
    return shlex.join(words)


def resource_words(
    machine_type: SlurmMachineType, meta_data: MachineMetaData
) -> list[str]:
    """sbatch options for the machine type's GPUs and NUMA binding.

    ``Gpus``/``GpuType`` give ``--gres=gpu[:TYPE]:N``: GRES, which any Slurm
    with GPUs in gres.conf schedules, not ``--gpus``, which needs
    select/cons_tres (Slurm >= 19.05).

    ``NumaBinding: socket`` asks for the drone's cores on one socket
    (``--sockets-per-node=1 --cores-per-socket=<Cores>``) and memory local to
    those cores (``--mem-bind=local``).
    No ``--cpu-bind``: sbatch of Slurm 22.05 refuses it ("unrecognized
    option"; it is an srun option). The batch script itself is bound to the
    job's allocated cores by the node's task plugin (task/affinity or
    task/cgroup); ``--mem-bind`` reaches srun steps inside the job through
    ``SLURM_MEM_BIND``, while the script's own memory follows the kernel's
    local-node default for a process whose CPUs are on one node.
    """
    words: list[str] = []
    if machine_type.Gpus is not None:
        kind = f"{machine_type.GpuType}:" if machine_type.GpuType else ""
        words.append(f"--gres=gpu:{kind}{machine_type.Gpus}")
    if machine_type.NumaBinding == "socket":
        words += [
            "--sockets-per-node=1",
            f"--cores-per-socket={meta_data.Cores}",
            "--mem-bind=local",
        ]
    return words


#: the job name of ``check --probe``'s job (not a drone's: the adapter and
#: ``status`` look only at names starting with the site's name)
PROBE_JOB_NAME = "tna-check"
#: its time limit (minutes): the checks take seconds
PROBE_JOB_MINUTES = 2
#: SubmitOptions a probe job takes over (what the site requires of every job:
#: the account, QOS, reservation, node features), long and short spellings
PROBE_JOB_LONG = ("account", "qos", "reservation", "constraint")
PROBE_JOB_SHORT = ("A", "q", "C")


def srun_probe_command(machine_type: SlurmMachineType) -> str:
    """``srun`` of one task on one node of the machine type's partition,
    running ``/bin/sh -s`` with the script on its stdin (srun forwards its
    stdin to the task); srun waits for it and prints its output.

    Only PATH and HOME are exported: the submitting environment stays out of
    the job, as with sbatch's ``--export``. Of SubmitOptions only what admits
    a job (account, QOS, reservation, constraint) is taken over; the others
    shape a drone's job (output files, requeue), not a two-minute check.
    """
    words = [
        "srun",
        f"--job-name={PROBE_JOB_NAME}",
        "--export=HOME,PATH",
        "--quiet",
        "-N",
        "1",
        "-n",
        "1",
        "-t",
        str(PROBE_JOB_MINUTES),
    ]
    if machine_type.Partition is not None:
        words += ["-p", machine_type.Partition]
    options = machine_type.SubmitOptions
    kept = OptionSet(
        short={k: v for k, v in options.short.items() if k in PROBE_JOB_SHORT},
        long={k: v for k, v in options.long.items() if k in PROBE_JOB_LONG},
    )
    words += kept.tokens()
    words += ["/bin/sh", "-s"]
    return shlex.join(words)


def scancel_command(job_id: str, options: OptionSet) -> str:
    """scancel for one job, options and id quoted."""
    return shlex.join(["scancel", *options.tokens(), str(job_id)])


def squeue_command() -> str:
    """One squeue for every job of the submitting user, finished ones included.

    ``--me`` (Slurm >= 20.11) instead of ``--job=<ids>``: one call answers
    every drone of the site, and its length does not grow with the drones.
    ``-t all`` keeps jobs finished within MinJobAge visible with their state.
    """
    return shlex.join(
        ["squeue", "--me", "--noheader", "--states=all", f"--format={SQUEUE_FORMAT}"]
    )


# --------------------------------------------------------------------------
# output parsing
# --------------------------------------------------------------------------


#: sbatch or squeue answered with output we cannot interpret
SlurmOutputError = BatchOutputError


#: a job id as Slurm prints it: 1234, array task 1234_7, pending array
#: 1234_[1-5%2], heterogeneous component 1234+0.
_JOB_ID = re.compile(r"\d+(?:_(?:\d+|\[[0-9,\-%:]+\]))?(?:\+\d+)?")
_PARSABLE = re.compile(r"(\d+)(?:;[A-Za-z0-9_.\-]+)?")
_CLASSIC = re.compile(r"Submitted batch job (\d+)(?:\s+on cluster\s+\S+)?\s*")


def parse_sbatch_output(stdout: str, stderr: str = "") -> str:
    """Job id from ``sbatch --parsable`` (``1234`` / ``1234;cluster``) or the classic line.

    Warnings may precede the id (site wrappers, ``sbatch: warning: ...``);
    the id is the last line that matches. Anything else raises
    SlurmOutputError: a drone must not be tracked under a guessed id.
    """
    found: Optional[str] = None
    for raw in (stdout or "").splitlines():
        line = raw.strip()
        match = _PARSABLE.fullmatch(line) or _CLASSIC.fullmatch(line)
        if match:
            found = match.group(1)
    if found is None:
        raise SlurmOutputError("sbatch printed no job id", stdout, stderr)
    return found


_STATE_WORD = re.compile(r"[A-Z][A-Z_]*")


def parse_squeue_output(stdout: str) -> dict[str, JobRecord]:
    """Jobs by id from :data:`SQUEUE_FORMAT` lines; anything else makes the listing untrusted.

    Every non-blank line must be a whole job line: a line cut short
    (``1001|RUNN``), a warning or an error printed with exit status 0 raises
    SlurmOutputError, because reading the rest as the full truth would report
    the job on that line as gone. (Login banners before squeue's output are
    cut off by the poller's markers, not here.)
    """
    jobs: dict[str, JobRecord] = {}
    for raw in (stdout or "").splitlines():
        line = raw.strip()
        if not line:
            continue
        parts = line.split("|", _LAST_FIELD)
        words = parts[1].split() if len(parts) > 1 else ()
        state = words[0].rstrip("+").upper() if words else ""
        job_id = parts[0].strip()
        if (
            len(parts) != len(SQUEUE_FIELDS)
            or not _JOB_ID.fullmatch(job_id)
            or not _STATE_WORD.fullmatch(state)
        ):
            raise SlurmOutputError(
                f"squeue printed a line that is not a job line: {line!r}", stdout
            )
        jobs[job_id] = JobRecord(
            job_id,
            parts[5].strip(),
            state,
            _STATUS.get(state),
            parse_elapsed(parts[4]),
            parts[2].strip(),
            parts[3].strip(),
            state in FAILURE_STATES,
        )
    return jobs


def parse_elapsed(text: str) -> Optional[float]:
    """Seconds from squeue's ``%M`` (TimeUsed: ``[days-][hours:]minutes:seconds``).

    None for anything else. Plain string operations, not a regular
    expression: this runs for every job in every listing (measured: the
    regex version was the largest single cost of a 5,000-job listing).
    """
    days, dash, clock = text.strip().rpartition("-")
    parts = clock.split(":")
    if not 2 <= len(parts) <= 3 or not all(part.isdigit() for part in parts):
        return None
    if dash and not days.isdigit():
        return None
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    return float(seconds + (int(days) * 86400 if days else 0))


# --------------------------------------------------------------------------
# states
# --------------------------------------------------------------------------

#: Every job state of Slurm 22.05 (squeue(1), JOB STATE CODES).
#: Finished jobs are Deleted: the resource is gone and TARDIS goes straight to
#: DownState (Error would send it through Cleanup, which only repeats scancel
#: on a finished job until squeue forgets it). Held states that never run by
#: themselves are Stopped, so TARDIS cleans them up (scancel). Error is kept
#: for states this table does not know.
STATE_MAP: StaticMapping = StaticMapping(
    BOOT_FAIL=ResourceStatus.Deleted,
    CANCELLED=ResourceStatus.Deleted,
    COMPLETED=ResourceStatus.Deleted,
    COMPLETING=ResourceStatus.Running,
    CONFIGURING=ResourceStatus.Booting,
    DEADLINE=ResourceStatus.Deleted,
    FAILED=ResourceStatus.Deleted,
    NODE_FAIL=ResourceStatus.Deleted,
    OUT_OF_MEMORY=ResourceStatus.Deleted,
    PENDING=ResourceStatus.Booting,
    PREEMPTED=ResourceStatus.Deleted,
    RUNNING=ResourceStatus.Running,
    RESV_DEL_HOLD=ResourceStatus.Stopped,
    REQUEUE_FED=ResourceStatus.Booting,
    REQUEUE_HOLD=ResourceStatus.Stopped,
    REQUEUED=ResourceStatus.Booting,
    RESIZING=ResourceStatus.Running,
    REVOKED=ResourceStatus.Deleted,
    SIGNALING=ResourceStatus.Running,
    SPECIAL_EXIT=ResourceStatus.Stopped,
    STAGE_OUT=ResourceStatus.Running,
    STOPPED=ResourceStatus.Stopped,
    SUSPENDED=ResourceStatus.Stopped,
    TIMEOUT=ResourceStatus.Deleted,
)

#: finished states that mean the drone failed; logged so operators see them.
FAILURE_STATES = frozenset(
    {"BOOT_FAIL", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED"}
)


#: STATE_MAP as a plain dict: looked up once per job and listing
_STATUS: dict[str, ResourceStatus] = dict(STATE_MAP)


def map_state(state: str) -> Optional[ResourceStatus]:
    """ResourceStatus of a Slurm state; None for a state this table does not know.

    An unknown word (a newer Slurm, a state cut short) says nothing about the
    job, so the caller keeps the drone's previous state instead of guessing.
    """
    return _STATUS.get(state)


_GONE = ("already completing or completed", "invalid job id")


class SlurmDriver(BatchDriver):
    """Slurm (>= 20.11, for ``squeue --me``) over the site's TARDIS executor."""

    adapter_name = "NetSlurm"
    system = "Slurm"
    job_id_variable = "SLURM_JOB_ID"
    site_commands = ("sbatch", "squeue", "scancel")
    machine_type_options = SlurmMachineType

    def submit_command(
        self,
        options: SlurmMachineType,
        meta_data: MachineMetaData,
        job_name: str,
        environment: Mapping[str, str],
        export: Sequence[str] = (),
    ) -> str:
        return sbatch_command(options, meta_data, job_name, environment, export)

    def parse_submit(self, stdout: str, stderr: str = "") -> str:
        return parse_sbatch_output(stdout, stderr)

    def cancel_command(self, job_id: str, options: SlurmMachineType) -> str:
        return scancel_command(job_id, options.TerminateOptions)

    def already_gone(self, text: str) -> bool:
        """scancel's wording for a job that finished or was purged already."""
        text = (text or "").lower()
        return any(phrase in text for phrase in _GONE)

    def list_command(self) -> str:
        return squeue_command()

    def parse_listing(self, text: str) -> dict[str, JobRecord]:
        return parse_squeue_output(text)

    def walltime_seconds(self, options: SlurmMachineType) -> int:
        return options.walltime_seconds

    def probe_job_command(self, options: SlurmMachineType) -> Optional[str]:
        return srun_probe_command(options)
