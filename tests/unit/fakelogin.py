"""A fake login node for unit tests: a real /bin/sh, a fake squeue, a heartbeat dir.

Only squeue is faked; the adapter's combined status command, the heartbeat
collection and the cleanup run for real in the shell.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest


def record(uuid: str, time_: float, ok: bool = True, **extra) -> dict:
    data = {
        "v": 1,
        "uuid": uuid,
        "time": time_,
        "seq": 1,
        "probes": [
            {"endpoint": "cm:9618", "ok": ok, "latency_ms": 8.5 if ok else None}
        ],
        "last_ok": time_ if ok else extra.pop("last_ok", None),
        "failing_stage": None if ok else "chain",
    }
    data.update(extra)
    return data


class ShellExecutor:
    """Runs commands like TARDIS's ShellExecutor (sh, stdout stripped), counting calls."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.calls = 0

    async def run_command(self, command: str, stdin_input=None):
        self.calls += 1
        result = subprocess.run(
            ["/bin/sh", "-c", command],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return SimpleNamespace(
            stdout=result.stdout.strip(), stderr=result.stderr, exit_code=0
        )


@pytest.fixture
def login(tmp_path: Path) -> dict:
    """A fake login node: squeue on PATH (id|state|name|elapsed lines), a heartbeat dir."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    jobs = tmp_path / "jobs.txt"  # id|state|name|elapsed
    (bin_dir / "squeue").write_text(
        f'#!/bin/sh\nawk -F\'|\' \'{{print $1"|"$2"|wn1|None|"$4"|"$3}}\' {jobs}\n'
    )
    (bin_dir / "squeue").chmod(0o755)
    home = tmp_path / "home"
    (home / "hb").mkdir(parents=True)
    env = {"HOME": str(home), "PATH": f"{bin_dir}:/usr/bin:/bin"}
    return {"jobs": jobs, "hb": home / "hb", "env": env, "tmp": tmp_path}


def write_heartbeat(login: dict, data: dict) -> None:
    (login["hb"] / f"{data['uuid']}.json").write_text(json.dumps(data) + "\n")


#: a one-site cobald.yml for the CLI on the fake login node ({hb}: heartbeat dir)
CONFIG = """\
Sites:
  - name: NetLab
    adapter: NetSlurm
    quota: 10
NetLab:
  executor: !TardisShellExecutor {{}}
  MachineTypes: [small]
  MachineTypeConfiguration:
    small: {{Walltime: "60", Partition: batch}}
  MachineMetaData:
    small: {{Cores: 1, Memory: 2, Disk: 4}}
  Network:
    mode: direct
    chain: {{tool: none}}
    pool: {{collector: "cm.example.org:9618"}}
    monitoring: {{heartbeat_dir: "{hb}"}}
"""
