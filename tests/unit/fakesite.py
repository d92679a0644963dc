"""A fake Slurm site for adapter unit tests: executor, site section, TARDIS config.

The executor answers sbatch, squeue and scancel like a login node and records
every call; ``configure`` loads a site into TARDIS's Configuration borg and
restores it afterwards; ``renders`` replaces the drone-script renderer.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import sys
import tempfile
import time
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import pytest
from tardis.configuration.configuration import Configuration
from tardis.exceptions.executorexceptions import CommandExecutionFailure
from tardis.utilities.attributedict import AttributeDict

import tardis_netadapter
from tardis_netadapter import siteadapter
from tardis_netadapter.batch import slurm
from tardis_netadapter.siteadapter import NetSlurmAdapter

HTCONDOR = AttributeDict(Cores=1, Memory=1024, Disk=1024 * 1024)


def first_command(command: str) -> list[str]:
    """The words of the batch command in ``command``, as a shell splits them.

    Skips the adapter's wrappers: ``printf`` marker lines before it (``&&``
    lists) and the login node's ``timeout -k K N`` in front of it.
    """
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&")
    lexer.whitespace_split = True
    segments: list[list[str]] = [[]]
    for word in lexer:
        if word in (";", "&&"):
            segments.append([])
        else:
            segments[-1].append(word)
    for words in segments:
        if words and words[0] == "timeout":
            words = words[4:]  # timeout -k K N
        if words and words[0] != "printf":
            return words
    return segments[0]


def squeue_output(lines: list[str]) -> str:
    """squeue's lines between the poller's markers, as the login node prints them."""
    return "\n".join([slurm.SQUEUE_BEGIN, *lines, slurm.SQUEUE_END])


class FakeExecutor:
    """A site's login node: sbatch, squeue and scancel answers, every call recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []
        self.jobs: dict[str, str] = {}
        self.next_id = 100
        self.sbatch_stdout: str | None = None
        self.fail: Exception | None = None
        self.latency = 0.0

    async def run_command(self, command: str, stdin_input: str | None = None):
        self.calls.append((command, stdin_input))
        if self.latency:
            await asyncio.sleep(self.latency)
        if self.fail is not None:
            raise self.fail
        words = first_command(command)
        if words[0] == "sbatch":
            job_id = str(self.next_id)
            self.next_id += 1
            name = next(w for w in words if w.startswith("--job-name=")).split("=", 1)[
                1
            ]
            self.jobs[job_id] = f"PENDING|{name}"
            stdout = job_id if self.sbatch_stdout is None else self.sbatch_stdout
            return AttributeDict(stdout=stdout + "\n", stderr="", exit_code=0)
        if words[0] == "squeue":
            lines = []
            for job_id, entry in self.jobs.items():
                state, name = entry.split("|")
                lines.append(f"{job_id}|{state}|worker1|None|{name}")
            return AttributeDict(stdout=squeue_output(lines), stderr="", exit_code=0)
        if words[0] == "scancel":
            job_id = words[-1]
            state = self.jobs.get(job_id, "|").split("|")[0]
            if job_id not in self.jobs or state in ("COMPLETED", "CANCELLED"):
                raise CommandExecutionFailure(
                    message=f"Run command {command} failed",
                    exit_code=1,
                    stdout="",
                    stderr=f"scancel: error: Kill job error on job id {job_id}: "
                    "Job/step already completing or completed",
                )
            self.jobs[job_id] = self.jobs[job_id].replace(state, "CANCELLED")
            return AttributeDict(stdout="", stderr="", exit_code=0)
        raise AssertionError(f"unexpected command {command}")

    def count(self, program: str) -> int:
        return sum(
            1 for command, _ in self.calls if first_command(command)[0] == program
        )


NETWORK = {
    "tunnel": {"hops": [{"host": "10.66.1.1", "user": "drone"}]},
    "firewall": {"idle_timeout": 30},
    "pool": {"collector": "10.66.2.1:9618"},
}


def site_section(executor, **overrides) -> dict:
    section = {
        "executor": executor,
        "MachineTypes": ["small", "large"],
        "MachineTypeConfiguration": {
            "small": {"Walltime": "60", "Partition": "batch"},
            "large": {
                "Walltime": "1-00:00:00",
                "SubmitOptions": {"long": {"account": "a b;rm -rf /"}},
                "TerminateOptions": {"long": {"full": None}},
            },
        },
        "MachineMetaData": {
            "small": {"Cores": 2, "Memory": 4, "Disk": 10},
            "large": {"Cores": 8, "Memory": 32, "Disk": 100},
        },
        "Network": NETWORK,
    }
    section.update(overrides)
    return section


@pytest.fixture
def renders(monkeypatch) -> list[tuple]:
    """A stand-in for render.render_drone_script (the drone-scripts work), counting calls."""
    calls: list[tuple] = []

    def render_drone_script(profile, budget, site_name, machine_type, **_):
        calls.append((site_name, machine_type))
        return f"#!/bin/bash\n# {site_name} {machine_type} {profile.mode}\nexec true\n"

    fake = types.ModuleType("tardis_netadapter.render")
    fake.render_drone_script = render_drone_script
    monkeypatch.setitem(sys.modules, "tardis_netadapter.render", fake)
    monkeypatch.setattr(tardis_netadapter, "render", fake, raising=False)
    return calls


@pytest.fixture
def configure(renders):
    """Load a TARDIS configuration into the Configuration borg; restore it afterwards."""
    saved = dict(Configuration._shared_state)
    siteadapter.reset_caches()

    def apply(section: dict, site: str = "NetLab", **entry) -> None:
        """``entry``: more keys of the site's ``Sites`` entry (drone_minimum_lifetime...)."""
        Configuration._shared_state.clear()
        Configuration().update_config(
            {
                "Sites": [{"name": site, "adapter": "NetSlurm", "quota": 8, **entry}],
                site: section,
            }
        )

    yield apply
    Configuration._shared_state.clear()
    Configuration._shared_state.update(saved)
    siteadapter.reset_caches()


@pytest.fixture
def executor() -> FakeExecutor:
    return FakeExecutor()


@pytest.fixture
def adapter(configure, executor) -> NetSlurmAdapter:
    configure(site_section(executor))
    return NetSlurmAdapter(machine_type="small", site_name="NetLab")


def drone(uuid: str = "netlab-0123456789", job_id=None) -> AttributeDict:
    return AttributeDict(
        drone_uuid=uuid,
        remote_resource_uuid=job_id,
        obs_machine_meta_data_translation_mapping=HTCONDOR,
    )


# --------------------------------------------------------------------------
# a misbehaving login node: a real /bin/sh with fake Slurm commands
# --------------------------------------------------------------------------
#
# FakeExecutor above answers in Python and so has to know the exact shape of
# the adapter's commands. ScriptedLoginNode runs every command in a real
# /bin/sh whose PATH starts with fake sbatch/squeue/scancel (and every other
# Slurm command, answering "not available"), so wrappers the adapter adds
# (``timeout -k 5 N``, markers, heartbeat probes, ``$?`` juggling) run for real
# and only Slurm itself is faked. Each call can be scripted to misbehave the
# way real login nodes do: submit and then never answer, print undecodable
# bytes, exit 255, print an empty/truncated/garbage listing, hang, or have the
# executor raise (TardisAuthError from an MFA prompt, a lost connection...).

#: every program of Debian's slurm-client; unscripted ones answer "not available"
SLURM_PROGRAMS = [
    "sacct",
    "sacctmgr",
    "salloc",
    "sattach",
    "sbatch",
    "sbcast",
    "scancel",
    "scontrol",
    "sdiag",
    "sinfo",
    "sprio",
    "squeue",
    "sreport",
    "srun",
    "sshare",
    "sstat",
    "strigger",
]

#: Slurm states squeue lists without ``--states`` (jobs not yet finished)
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "SUSPENDED",
        "COMPLETING",
        "CONFIGURING",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "REQUEUED",
        "STOPPED",
    }
)
_SHORT_STATES = {"PD": "PENDING", "R": "RUNNING", "CG": "COMPLETING", "S": "SUSPENDED"}

_FAKE_SLURM_SCRIPT = """#!/bin/sh
# a fake Slurm command: prints the answer ScriptedLoginNode prepared for this call
prog=${0##*/}
if [ "$prog" = sbatch ]; then cat >/dev/null; fi
n=$(grep -n -x -F -e "$prog $*" "$FAKE_CALL/index" | head -n 1 | cut -d: -f1)
if [ -z "$n" ]; then
    echo "$prog: error: this fake login node has no answer for: $*" >&2
    exit 1
fi
cat "$FAKE_CALL/out.$n"
cat "$FAKE_CALL/err.$n" >&2
exit "$(cat "$FAKE_CALL/rc.$n")"
"""


@dataclass
class Job:
    """One job in the fake site's queue."""

    job_id: str
    name: str
    state: str = "PENDING"
    started: Optional[float] = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


class FakeSlurm:
    """The site's queue: outlives any executor (and any COBalD daemon restart)."""

    def __init__(self, first_id: int = 1001) -> None:
        self.jobs: dict[str, Job] = {}
        self.next_id = first_id

    def submit(self, name: str, state: str = "PENDING") -> Job:
        job = Job(str(self.next_id), name)
        self.next_id += 1
        self.jobs[job.job_id] = job
        self.set_state(job.job_id, state)
        return job

    def set_state(self, job_id: str, state: str) -> None:
        job = self.jobs[str(job_id)]
        job.state = state
        if state == "RUNNING" and job.started is None:
            job.started = time.time()

    def purge(self, job_id: str) -> None:
        """The job leaves squeue altogether (MinJobAge passed, or purged)."""
        del self.jobs[str(job_id)]

    def named(self, name: str) -> list[Job]:
        return [job for job in self.jobs.values() if job.name == name]

    def cancel(self, job_id: str) -> Optional[str]:
        """Cancel like scancel; returns scancel's error message, None on success."""
        job = self.jobs.get(str(job_id))
        if job is None:
            return f"scancel: error: Invalid job id specified: {job_id}"
        if not job.active:
            return (
                f"scancel: error: Kill job error on job id {job_id}: "
                "Job/step already completing or completed"
            )
        job.state = "CANCELLED"
        return None

    def squeue(self, args: Sequence[str]) -> str:
        """squeue's answer to ``args`` (states, names, job ids and format honoured)."""
        options = _options(
            args,
            {
                "-o": "--format",
                "-t": "--states",
                "-n": "--name",
                "-j": "--jobs",
                "--job": "--jobs",
            },
        )
        fmt = options.get("--format", "%i|%T|%N|%r|%j")
        states = {
            _SHORT_STATES.get(s.upper(), s.upper())
            for s in options.get("--states", "").split(",")
            if s
        }
        names = set(filter(None, options.get("--name", "").split(",")))
        ids = set(filter(None, options.get("--jobs", "").split(",")))
        lines = []
        for job in self.jobs.values():
            if "ALL" in states or not states:
                if not states and not job.active:
                    continue
            elif job.state not in states:
                continue
            if (names and job.name not in names) or (ids and job.job_id not in ids):
                continue
            lines.append(_format_job(fmt, job))
        return "".join(line + "\n" for line in lines)


def _options(args: Sequence[str], aliases: dict[str, str]) -> dict[str, str]:
    """``--key=value``, ``--key value`` and ``-k value`` options, by long name."""
    options: dict[str, str] = {}
    words = list(args)
    while words:
        word = words.pop(0)
        if word.startswith("--") and "=" in word:
            key, value = word.split("=", 1)
            options[aliases.get(key, key)] = value
        elif word in aliases or word in aliases.values():
            if words and not words[0].startswith("-"):
                options[aliases.get(word, word)] = words.pop(0)
        elif len(word) > 2 and word[:2] in aliases and word[1] != "-":
            options[aliases[word[:2]]] = word[2:]
    return options


_FIELD = re.compile(r"%\.?\d*([A-Za-z])")


def _format_job(fmt: str, job: Job) -> str:
    elapsed = int(time.time() - job.started) if job.started else 0
    fields = {
        "i": job.job_id,
        "A": job.job_id,
        "T": job.state,
        "t": job.state[:2],
        "N": "node1" if job.state == "RUNNING" else "",
        "r": "None" if job.state == "RUNNING" else "Priority",
        "j": job.name,
        "M": f"{elapsed // 60}:{elapsed % 60:02d}",
        "u": "drone",
        "P": "batch",
    }
    return _FIELD.sub(lambda match: fields.get(match.group(1), ""), fmt)


@dataclass
class Misbehave:
    """What one call (or every call) of a Slurm program does instead of answering.

    ``effect``: the command does its work on the site first (sbatch queues the
    job, scancel cancels it); then ``hang`` (never answer, so the adapter's
    timeout fires), ``raises`` (the executor raises this), or answer with
    ``stdout`` (text, bytes, or a function of the true answer), ``stderr`` and
    exit status ``rc`` instead of the true ones.
    """

    effect: bool = True
    hang: bool = False
    raises: Optional[BaseException] = None
    stdout: Union[str, bytes, Callable[[str], str], None] = None
    stderr: Optional[str] = None
    rc: Optional[int] = None


def hang(effect: bool = True) -> Misbehave:
    return Misbehave(effect=effect, hang=True)


def raising(error: BaseException, effect: bool = False) -> Misbehave:
    return Misbehave(effect=effect, raises=error)


def answer(stdout="", rc: int = 0, stderr: str = "", effect: bool = True):
    return Misbehave(effect=effect, stdout=stdout, rc=rc, stderr=stderr)


def truncated(job_id: str) -> Callable[[str], str]:
    """squeue output cut off inside ``job_id``'s line, e.g. ``1001|RUNN``."""

    def cut(listing: str) -> str:
        lines = listing.splitlines()
        ours = [line for line in lines if line.startswith(f"{job_id}|")]
        rest = [line for line in lines if not line.startswith(f"{job_id}|")]
        if not ours:
            return listing
        head, _, tail = ours[0].partition("|")
        return "".join(line + "\n" for line in rest) + f"{head}|{tail[:4]}\n"

    return cut


def with_state(job_id: str, state: str) -> Callable[[str], str]:
    """squeue output with ``job_id`` in a state of Slurm's choosing (even unknown)."""

    def replace(listing: str) -> str:
        out = []
        for line in listing.splitlines():
            parts = line.split("|")
            if parts[0] == job_id and len(parts) > 1:
                parts[1] = state
            out.append("|".join(parts))
        return "".join(line + "\n" for line in out)

    return replace


@dataclass
class Call:
    """One executor call: the Slurm programs it ran, the command, its stdin."""

    programs: list[str]
    command: str
    stdin: Optional[str]


class ScriptedLoginNode:
    """A TARDIS executor whose login node is a real /bin/sh and a FakeSlurm.

    Results follow TARDIS's ShellExecutor: stdout/stderr decoded strictly and
    stripped; exit 0 and 255 are returned (ShellExecutor's quirk) unless
    ``exit_255_raises`` (as TARDIS's SSHExecutor does); other exit statuses
    raise CommandExecutionFailure.
    """

    def __init__(
        self, slurm: FakeSlurm, root: Path, exit_255_raises: bool = False
    ) -> None:
        self.slurm = slurm
        self.root = root
        self.exit_255_raises = exit_255_raises
        self.calls: list[Call] = []
        self.processes = 0  # shells started
        self._next: dict[str, list[Misbehave]] = {}
        self._always: dict[str, Misbehave] = {}
        self.bin = root / "bin"
        self.home = root / "home"
        self.bin.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        fake = self.bin / "fake-slurm"
        fake.write_text(_FAKE_SLURM_SCRIPT)
        fake.chmod(0o755)
        for program in SLURM_PROGRAMS:
            link = self.bin / program
            if not link.exists():
                link.symlink_to("fake-slurm")

    # -- scripting ------------------------------------------------------------
    def then(self, program: str, *behaviours: Misbehave) -> None:
        """The next calls of ``program`` misbehave like this, one call each."""
        self._next.setdefault(program, []).extend(behaviours)

    def always(self, program: str, behaviour: Optional[Misbehave]) -> None:
        """Every call of ``program`` misbehaves like this (None: answer truly)."""
        if behaviour is None:
            self._always.pop(program, None)
        else:
            self._always[program] = behaviour

    def count(self, program: str) -> int:
        return sum(1 for call in self.calls if program in call.programs)

    # -- the executor -----------------------------------------------------------
    async def run_command(self, command: str, stdin_input: Optional[str] = None):
        runs = invocations(command)
        programs = [program for program, _ in runs]
        self.calls.append(Call(programs, command, stdin_input))
        chosen = {}
        for program in dict.fromkeys(programs):
            queued = self._next.get(program)
            chosen[program] = (
                queued.pop(0) if queued else self._always.get(program, Misbehave())
            )
        call_dir = Path(tempfile.mkdtemp(prefix="call-", dir=self.root))
        index = []
        for number, (program, args) in enumerate(runs, start=1):
            behaviour = chosen[program]
            stdout, stderr, rc = self._answer(program, args, behaviour)
            if behaviour.raises is not None:
                raise behaviour.raises
            if behaviour.hang:
                await asyncio.Event().wait()  # cancelled by the adapter's timeout
            index.append(f"{program} {' '.join(args)}")
            (call_dir / f"out.{number}").write_bytes(
                stdout if isinstance(stdout, bytes) else stdout.encode()
            )
            (call_dir / f"err.{number}").write_text(stderr)
            (call_dir / f"rc.{number}").write_text(str(rc))
        (call_dir / "index").write_text("".join(line + "\n" for line in index))
        return await self._shell(command, stdin_input, call_dir)

    def _answer(self, program: str, args: list[str], behaviour: Misbehave):
        stdout: Union[str, bytes] = ""
        stderr, rc = "", 0
        if program == "sbatch":
            if behaviour.effect:
                options = _options(args, {"-J": "--job-name"})
                job = self.slurm.submit(options.get("--job-name", "sbatch"))
                stdout = f"{job.job_id}\n"
        elif program == "squeue":
            stdout = self.slurm.squeue(args)
        elif program == "scancel":
            if behaviour.effect:
                error = self.slurm.cancel(args[-1] if args else "")
                if error is not None:
                    stderr, rc = error + "\n", 1
        else:
            stderr, rc = f"{program}: error: not available on this site\n", 1
        if callable(behaviour.stdout):
            stdout = behaviour.stdout(stdout)
        elif behaviour.stdout is not None:
            stdout = behaviour.stdout
        if behaviour.stderr is not None:
            stderr = behaviour.stderr
        if behaviour.rc is not None:
            rc = behaviour.rc
        return stdout, stderr, rc

    async def _shell(self, command: str, stdin_input: Optional[str], call_dir: Path):
        env = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "HOME": str(self.home),
            "FAKE_CALL": str(call_dir),
            "LC_ALL": "C",
        }
        self.processes += 1
        process = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            # b"" rather than None: communicate() closes stdin only when given input
            out, err = await process.communicate((stdin_input or "").encode())
        except BaseException:
            if process.returncode is None:
                process.kill()
                await process.wait()
            raise
        rc = process.returncode
        stdout, stderr = out.decode().strip(), err.decode().strip()
        if rc == 0 or (rc == 255 and not self.exit_255_raises):
            return AttributeDict(stdout=stdout, stderr=stderr, exit_code=rc)
        raise CommandExecutionFailure(
            message=f"Run command {command} via ScriptedLoginNode failed",
            exit_code=rc,
            stdout=stdout,
            stderr=stderr,
            stdin=stdin_input,
        )


_REDIRECT = re.compile(r"^[<>&]*[<>][<>&]*$")


def invocations(command: str) -> list[tuple[str, list[str]]]:
    """The Slurm programs a shell command runs, each with its arguments as sh passes them."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars="();<>|&\n")
    lexer.whitespace = " \t\r"
    lexer.whitespace_split = True
    tokens = list(lexer)
    found: list[tuple[str, list[str]]] = []
    index = 0
    while index < len(tokens):
        if tokens[index] not in SLURM_PROGRAMS:
            index += 1
            continue
        program, args = tokens[index], []
        index += 1
        while index < len(tokens):
            token = tokens[index]
            if _REDIRECT.match(token):
                if args and args[-1].isdigit():
                    args.pop()
                index += 2  # the operator and its target
                continue
            if set(token) <= set("();|&\n"):
                break
            args.append(token)
            index += 1
        found.append((program, args))
    return found
