"""A toy batch system, "Toy", as a third party would add one: this file and one register call.

Its commands are small shell scripts (:func:`install`): ``toysub`` reads the
job script on stdin and answers ``job <id> accepted``; ``toyq`` lists
``id name state seconds`` lines (states Q, R, D); ``toydel`` cancels, or
says ``no such job``. The job's id reaches it as ``TOY_JOB_ID``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tardis.interfaces.siteadapter import ResourceStatus

from tardis_netadapter.batch.driver import BatchDriver, BatchOutputError, JobRecord


@dataclass(frozen=True)
class ToyMachineType:
    """``MachineTypeConfiguration.<type>`` for Toy: a time limit in minutes."""

    Minutes: int
    Queue: str = "default"

    def check(self, path: str) -> list[str]:
        if self.Minutes <= 0:
            return [f"{path}.Minutes: got {self.Minutes!r}; expected minutes above 0"]
        return []


STATES = {
    "Q": ResourceStatus.Booting,
    "R": ResourceStatus.Running,
    "D": ResourceStatus.Deleted,
}
_LINE = re.compile(r"(\d+) (\S+) ([A-Z]) (\d+)")


class ToyDriver(BatchDriver):
    adapter_name = "NetToy"
    system = "Toy"
    job_id_variable = "TOY_JOB_ID"
    site_commands = ("toysub", "toyq", "toydel")
    machine_type_options = ToyMachineType

    def submit_command(
        self,
        options: ToyMachineType,
        meta_data: object,
        job_name: str,
        environment: Mapping[str, str],
        export: Sequence[str] = (),
    ) -> str:
        pairs = [f"{k}={v}" for k, v in environment.items()] + list(export)
        return shlex.join(
            [
                "toysub",
                "--name",
                job_name,
                "--queue",
                options.Queue,
                "--env",
                ",".join(pairs),
            ]
        )

    def parse_submit(self, stdout: str, stderr: str = "") -> str:
        match = re.fullmatch(r"job (\d+) accepted", (stdout or "").strip())
        if not match:
            raise BatchOutputError("toysub printed no job id", stdout, stderr)
        return match.group(1)

    def cancel_command(self, job_id: str, options: ToyMachineType) -> str:
        return shlex.join(["toydel", str(job_id)])

    def already_gone(self, text: str) -> bool:
        return "no such job" in (text or "")

    def list_command(self) -> str:
        return "toyq"

    def parse_listing(self, text: str) -> dict[str, JobRecord]:
        jobs = {}
        for line in (text or "").splitlines():
            if not line.strip():
                continue
            match = _LINE.fullmatch(line.strip())
            if not match:
                raise BatchOutputError(f"toyq printed {line!r}", text)
            job_id, name, state, seconds = match.groups()
            jobs[job_id] = JobRecord(
                job_id, name, state, STATES.get(state), elapsed=float(seconds)
            )
        return jobs

    def walltime_seconds(self, options: ToyMachineType) -> int:
        return options.Minutes * 60


def install(bin_dir: Path, state: Path) -> None:
    """The toy batch system's commands, keeping their jobs in ``state``."""
    jobs = state / "jobs"
    jobs.mkdir(parents=True, exist_ok=True)
    scripts = {
        "toysub": f"""#!/bin/sh
n=$(ls {jobs} | wc -l); id=$((n + 1))
name=$2
cat > {jobs}/$id.script
printf '%s Q 0\\n' "$name" > {jobs}/$id
echo "job $id accepted"
""",
        "toyq": f"""#!/bin/sh
for f in {jobs}/*; do
  case $f in *.script) continue;; esac
  [ -f "$f" ] || continue
  printf '%s %s\\n' "$(basename "$f")" "$(cat "$f")"
done
""",
        "toydel": f"""#!/bin/sh
if [ ! -f {jobs}/$1 ]; then echo "toydel: no such job $1" >&2; exit 1; fi
read -r name state seconds < {jobs}/$1
printf '%s D %s\\n' "$name" "$seconds" > {jobs}/$1
""",
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)


def set_state(state: Path, job_id: str, letter: str, seconds: int = 0) -> None:
    """Move a toy job to Q, R or D, having run ``seconds``."""
    path = state / "jobs" / job_id
    name = path.read_text().split()[0]
    path.write_text(f"{name} {letter} {seconds}\n")


def script_of(state: Path, job_id: str) -> Optional[str]:
    path = state / "jobs" / f"{job_id}.script"
    return path.read_text() if path.exists() else None
