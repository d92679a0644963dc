"""The Grid Engine driver: qsub, qstat -xml and qdel, their answers and Grid Engine's job states.

Written against Son of Grid Engine 8.1.9 (Debian bookworm's gridengine), whose
qstat/qsub/qdel are those of Sun Grid Engine 6.2 and the Univa/Altair line in
everything used here. Every function is pure; :class:`GridEngineDriver`
bundles them as the driver the batch-neutral adapter, poller and CLI take.

No site-level Grid Engine setting: the commands run in the login node's
non-interactive SSH shell, which must find qsub/qstat/qdel and the cell
(``SGE_ROOT``/``SGE_CELL``, or Debian's wrapper defaults); docs/adapter.md.
"""

from __future__ import annotations

import calendar
import functools
import re
import shlex
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping, Sequence
from typing import Optional

from tardis.interfaces.siteadapter import ResourceStatus

from ..machine import MachineMetaData
from .driver import BatchDriver, BatchOutputError, JobRecord
from .gridengine_options import GridEngineMachineType, hms, option_words

__all__ = [
    "GridEngineDriver",
    "GridEngineMachineType",
    "map_state",
    "parse_qstat_xml",
    "parse_qsub_output",
    "qdel_command",
    "qstat_command",
    "qsub_command",
]

# --------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------


def qsub_command(
    machine_type: GridEngineMachineType,
    meta_data: MachineMetaData,
    job_name: str,
    environment: Mapping[str, str],
    export: Sequence[str] = (),
) -> str:
    """The qsub command line for one drone; the script goes on stdin.

    Every word is quoted with shlex. ``-v`` lists exactly the drone's values
    and the site's ``export_environment`` entries, never ``-V``: the
    submitting environment (the COBalD daemon's, tokens included) stays out
    of the job. The drone values are sizes, a walltime and the uuid, which
    ``qstat -j`` shows to the site anyway; nothing secret goes on the line.
    ``-S /bin/bash``: a queue's default shell is often csh. ``-r n`` keeps
    Grid Engine from re-running a drone TARDIS already counted as gone,
    ``-j y`` merges its stderr into the one output file; SubmitOptions may
    set ``-r``/``-j`` themselves.
    """
    for name, value in environment.items():
        if "," in value or "," in name:
            raise ValueError(
                f"environment {name}={value!r}: commas cannot pass through qsub -v"
            )
    exported = [*(f"{k}={v}" for k, v in environment.items()), *export]
    resources = [f"h_rt={hms(machine_type.walltime_seconds)}"]
    if machine_type.MemoryPerSlot is not None:
        resources.append(f"h_vmem={machine_type.MemoryPerSlot}")
    if machine_type.MemFree is not None:
        resources.append(f"mem_free={machine_type.MemFree}")
    words = [
        "qsub",
        "-terse",
        "-N",
        job_name,
        "-S",
        "/bin/bash",
        "-v",
        ",".join(exported),
        "-l",
        ",".join(resources),
    ]
    if machine_type.Queue is not None:
        words += ["-q", machine_type.Queue]
    if machine_type.ParallelEnvironment is not None:
        words += [
            "-pe",
            machine_type.ParallelEnvironment,
            str(machine_type.slots(meta_data)),
        ]
    if machine_type.Project is not None:
        words += ["-P", machine_type.Project]
    chosen = set(machine_type.SubmitOptions.short) | set(
        machine_type.SubmitOptions.long
    )
    if "r" not in chosen:
        words += ["-r", "n"]
    if "j" not in chosen:
        words += ["-j", "y"]
    words += option_words(machine_type.SubmitOptions)
    return shlex.join(words)


#: the job name of ``check --probe``'s job (not a drone's)
PROBE_JOB_NAME = "tna-check"
#: its time limit: the checks take seconds
PROBE_JOB_SECONDS = 120


def qrsh_probe_command(machine_type: GridEngineMachineType) -> str:
    """``qrsh`` of ``/bin/sh -s`` in the machine type's queue; qrsh forwards its
    stdin (the script) and prints the output. ``-now no``: wait in the queue
    like a drone instead of failing when no slot is free this instant."""
    words = [
        "qrsh",
        "-now",
        "no",
        "-N",
        PROBE_JOB_NAME,
        "-l",
        f"h_rt={hms(PROBE_JOB_SECONDS)}",
    ]
    if machine_type.Queue is not None:
        words += ["-q", machine_type.Queue]
    if machine_type.Project is not None:
        words += ["-P", machine_type.Project]
    words += ["/bin/sh", "-s"]
    return shlex.join(words)


def qdel_command(job_id: str) -> str:
    """qdel for one job (all its tasks), id quoted."""
    return shlex.join(["qdel", str(job_id)])


#: the listing: the login node's clock (epoch seconds) on the first line, then
#: qstat's XML with its times in UTC. qstat prints JAT_start_time in the local
#: time of the login node without a zone (sge_ctimeXML); with TZ=UTC and the
#: node's own clock the elapsed time needs no time zone and no clock agreement.
#: ``-s prsz``: pending, running and suspended jobs (qstat's default) and the
#: "zombies", the last ``finished_jobs`` (sge_conf(5), default 100) jobs of
#: the cell that ended, as state ``z``: a drone's end is then seen as such,
#: like Slurm's ``--states=all``, instead of only as a job that went missing.
#: ``-s`` and ``-u`` (the login user) are explicit, so a site's or user's
#: sge_qstat defaults file cannot narrow or widen the listing.
QSTAT_SCRIPT = 'date +%s && TZ=UTC exec qstat -xml -s prsz -u "$(id -un)"'


def qstat_command() -> str:
    """One qstat for every job of the drone user (one simple command: the adapter wraps it in ``timeout``)."""
    return shlex.join(["sh", "-c", QSTAT_SCRIPT])


# --------------------------------------------------------------------------
# output parsing
# --------------------------------------------------------------------------

#: ``qsub -terse``: ``123``, or ``123.1-10:1`` for an array job
_TERSE = re.compile(r"(\d+)(?:\.\d+(?:-\d+(?::\d+)?)?)?")


def parse_qsub_output(stdout: str, stderr: str = "") -> str:
    """The job id from ``qsub -terse`` (the last line that is an id).

    Site wrappers and JSV scripts may print lines first; an array's
    ``123.1-10:1`` gives ``123`` (qdel of it ends every task). Anything else
    raises BatchOutputError: a drone must not be tracked under a guessed id.
    """
    found: Optional[str] = None
    for raw in (stdout or "").splitlines():
        match = _TERSE.fullmatch(raw.strip())
        if match:
            found = match.group(1)
    if found is None:
        raise BatchOutputError("qsub printed no job id", stdout, stderr)
    return found


def parse_qstat_xml(text: str) -> dict[str, JobRecord]:
    """Jobs by id from :func:`qstat_command`'s output; anything unexpected is untrusted.

    The first line must be the login node's clock, the rest one whole
    ``<job_info>`` document; every ``<job_list>`` (running ones under
    ``queue_info``, pending ones under the inner ``job_info``, or inside
    ``Queue-List`` with a site's ``-f`` default) needs a numeric
    ``JB_job_number``, a ``state`` and a ``JB_name``. Output cut short or a
    warning in the XML's place raises BatchOutputError, because reading the
    rest as the whole truth would report the jobs it hides as gone.
    """
    clock, _, document = (text or "").strip().partition("\n")
    clock = clock.strip()
    if not clock.isdigit():
        raise BatchOutputError(
            f"the listing does not start with the login node's clock: {clock[:80]!r}",
            text,
        )
    now = int(clock)
    collector = _JobLists()
    parser = ElementTree.XMLParser(target=collector)
    try:
        parser.feed(_BETWEEN_TAGS.sub("><", document.strip()))
        parser.close()
    except ElementTree.ParseError as error:
        raise BatchOutputError(
            f"qstat -xml printed no whole XML ({error})", text
        ) from None
    if collector.root != "job_info":
        raise BatchOutputError(
            f"qstat -xml printed <{collector.root}>, not <job_info>", text
        )
    jobs: dict[str, JobRecord] = {}
    for fields in collector.jobs:
        record = _record(fields, now, text)
        known = jobs.get(record.job_id)
        if known is None or _RANK[record.status] < _RANK[known.status]:
            jobs[record.job_id] = record  # array tasks: the liveliest task speaks
    return jobs


#: the blanks between tags: dropped before parsing, since each blank run was
#: one more parser callback (about 20 per job, half of the parse's time)
_BETWEEN_TAGS = re.compile(r">\s+<")


class _JobLists:
    """An ElementTree parser target keeping only each ``<job_list>``'s fields.

    Why not ``ElementTree.fromstring``: building the whole tree took twice
    the time for a 5,000-job listing (benchmarks/adapter_scale.py), and only
    the job lists' leaf texts are read. The parser is still expat through
    ElementTree: a document cut short or not XML raises ParseError.
    """

    __slots__ = ("root", "jobs", "_fields", "_text", "_depth")

    def __init__(self) -> None:
        self.root: Optional[str] = None
        self.jobs: list[dict[str, str]] = []
        self._fields: Optional[dict[str, str]] = None
        self._text: list[str] = []
        self._depth = 0  # elements open inside the current job_list

    def start(self, tag: str, attrib: Mapping[str, str]) -> None:
        if self.root is None:
            self.root = tag
        if tag == "job_list":
            self._fields, self._depth = {}, 0
        elif self._fields is not None:
            self._depth += 1
        self._text = []

    def data(self, data: str) -> None:
        if self._fields is not None:
            self._text.append(data)

    def end(self, tag: str) -> None:
        fields = self._fields
        if fields is None:
            return
        if tag == "job_list":
            self.jobs.append(fields)
            self._fields = None
        else:
            if self._depth == 1:  # a field of the job, not something nested in one
                fields[tag] = "".join(self._text).strip()
            self._depth -= 1
            self._text = []

    def close(self) -> None:
        return None


def _record(fields: Mapping[str, str], now: int, text: str) -> JobRecord:
    job_id = fields.get("JB_job_number", "")
    state = fields.get("state", "")
    name = fields.get("JB_name")
    if not job_id.isdigit() or not state or name is None:
        raise BatchOutputError(
            f"qstat -xml printed a job_list that is not a whole job: {fields!r}", text
        )
    status, failed = _STATES.get(state) or _classify(state)
    elapsed = None
    if status is ResourceStatus.Running:
        started = parse_time(fields.get("JAT_start_time", ""))
        if started is not None:
            elapsed = float(max(0, now - started))
    return JobRecord(
        job_id,
        name,
        state,
        status,
        elapsed,
        fields.get("queue_name", ""),
        "",
        failed,
    )


@functools.lru_cache(maxsize=16384)
def parse_time(text: str) -> Optional[int]:
    """Epoch seconds of ``YYYY-MM-DDTHH:MM:SS`` (UTC; fractions ignored); None otherwise.

    Slicing, not ``strptime``, and cached: this runs for every running job of
    every listing, and a job's start time is the same in each.
    """
    if len(text) < 19 or text[4] != "-" or text[10] != "T" or text[13] != ":":
        return None
    try:
        parts = (
            int(text[0:4]),
            int(text[5:7]),
            int(text[8:10]),
            int(text[11:13]),
            int(text[14:16]),
            int(text[17:19]),
        )
    except ValueError:
        return None
    return calendar.timegm((*parts, 0, 0, 0))


# --------------------------------------------------------------------------
# states
# --------------------------------------------------------------------------

#: every letter of a Grid Engine job state (sge_status(5), qstat(1))
STATE_LETTERS = frozenset("dEhRqwrtsSTz")

#: the rules, first match wins: a letter of the state -> ResourceStatus, failed.
#: Why each (docs/adapter.md has the table with every combination):
#:  d  deletion was asked (qdel, or a running job's h_rt ran out) but the job
#:     is still listed, so it may still run (a deletion stuck on an
#:     unreachable execd lasts forever): Stopped, so TARDIS cleans it up
#:     (its qdel answers "already in deletion", which counts as done) and
#:     the drone is Down only once the job has left the listing or is z;
#:     Deleted here could leave a running drone nobody tracks
#:  E  the job failed to start and waits for a person (qmod -cj); TARDIS cleans
#:     it up (qdel); logged as a failure for the operator
#:  s S T  suspended by the user, its queue, or a load alarm: the drone's
#:     startd is frozen; TARDIS cleans it up, as Slurm's SUSPENDED
#:  r  running (also Rr, hr: a hold does not stop a running job)
#:  t  being transferred to the execution host: the script has not started
#:  h  held while pending: a drone has no dependency, so it will not start
#:     until a person releases it; TARDIS cleans it up, as Slurm's held states
#:  q w  waiting in the queue (also Rq: re-queued)
#:  z  finished (listed only with qstat -s z)
_RULES: tuple[tuple[str, ResourceStatus, bool], ...] = (
    ("d", ResourceStatus.Stopped, False),
    ("E", ResourceStatus.Error, True),
    ("s", ResourceStatus.Stopped, False),
    ("S", ResourceStatus.Stopped, False),
    ("T", ResourceStatus.Stopped, False),
    ("r", ResourceStatus.Running, False),
    ("t", ResourceStatus.Booting, False),
    ("h", ResourceStatus.Stopped, False),
    ("q", ResourceStatus.Booting, False),
    ("w", ResourceStatus.Booting, False),
    ("z", ResourceStatus.Deleted, False),
)


def _classify(state: str) -> tuple[Optional[ResourceStatus], bool]:
    """ResourceStatus and failed flag of a state word by its letters (None: unknown)."""
    if not state or not set(state) <= STATE_LETTERS:
        return None, False
    for letter, status, failed in _RULES:
        if letter in state:
            return status, failed
    return None, False


def map_state(state: str) -> Optional[ResourceStatus]:
    """ResourceStatus of a Grid Engine state word; None for a word with an unknown letter.

    An unknown letter (a newer or vendor Grid Engine) says nothing certain,
    so the caller keeps the drone's previous state instead of guessing.
    """
    return (_STATES.get(state) or _classify(state))[0]


#: every combination sge_status(5) of 8.1.9 lists, classified once (looked up
#: per job and listing); others go through :func:`_classify`
DOCUMENTED_STATES = (
    "qw", "hqw", "hRwq", "Rq", "Rwq",
    "r", "hr", "t", "Rr", "Rt",
    "s", "ts", "S", "tS", "T", "tT", "Rs", "Rts", "RS", "RtS", "RT", "RtT",
    "Eqw", "Ehqw", "EhRqw",
    "dr", "dt", "dRr", "dRt", "ds", "dS", "dT", "dRs", "dRS", "dRT",
    "z",
)  # fmt: skip
_STATES: dict[str, tuple[Optional[ResourceStatus], bool]] = {
    state: _classify(state) for state in DOCUMENTED_STATES
}
#: which record of an array job's tasks speaks for the job
_RANK: dict[Optional[ResourceStatus], int] = {
    ResourceStatus.Running: 0,
    ResourceStatus.Booting: 1,
    ResourceStatus.Stopped: 2,
    ResourceStatus.Error: 3,
    None: 4,
    ResourceStatus.Deleted: 5,
}

#: qdel's words for a job that has ended or is being deleted already
#: (SGE 8.1.9: MSG_SGETEXT_DOESNOTEXIST_SS, MSG_SGETEXT_DEL_JOB_SS,
#: MSG_JOB_ALREADYDELETED_U), matched in lower case
_GONE = (
    re.compile(r'denied: job "?\d+"? does not exist'),
    re.compile(r"the job \d+ of user\(s\) .* does not exist"),
    re.compile(r"job \d+ is already in deletion"),
)


class GridEngineDriver(BatchDriver):
    """Grid Engine (SGE 6.2 / Son of Grid Engine 8.x / Univa) over the site's TARDIS executor."""

    adapter_name = "NetGridEngine"
    system = "Grid Engine"
    job_id_variable = "JOB_ID"
    site_commands = ("qsub", "qstat", "qdel", "qrsh")
    machine_type_options = GridEngineMachineType

    def submit_command(
        self,
        options: GridEngineMachineType,
        meta_data: MachineMetaData,
        job_name: str,
        environment: Mapping[str, str],
        export: Sequence[str] = (),
    ) -> str:
        return qsub_command(options, meta_data, job_name, environment, export)

    def parse_submit(self, stdout: str, stderr: str = "") -> str:
        return parse_qsub_output(stdout, stderr)

    def cancel_command(self, job_id: str, options: GridEngineMachineType) -> str:
        return qdel_command(job_id)

    def already_gone(self, text: str) -> bool:
        """qdel's wording for a job that finished, was purged or is being deleted."""
        text = (text or "").lower()
        return any(pattern.search(text) for pattern in _GONE)

    def list_command(self) -> str:
        return qstat_command()

    def parse_listing(self, text: str) -> dict[str, JobRecord]:
        return parse_qstat_xml(text)

    def walltime_seconds(self, options: GridEngineMachineType) -> int:
        return options.walltime_seconds

    def probe_job_command(self, options: GridEngineMachineType) -> Optional[str]:
        return qrsh_probe_command(options)
