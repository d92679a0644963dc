"""Helpers for the chain lab tests: drones rendered from a profile and run with sbatch.

Everything runs through the lab API inside the lab's namespaces; the only
processes signalled are the drone's own ssh (by pid, found by its unique work
directory) and the extra pool this module starts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest
from tardis_netadapter_lab import Lab
from tardis_netadapter_lab import layout as L
from tardis_netadapter_lab.daemon import wait_for
from tardis_netadapter_lab.netns import is_listening, pids_in_namespaces
from tardis_netadapter_lab.services import pool_state

from tardis_netadapter.config import load_profile
from tardis_netadapter.keepalive import derive_budget
from tardis_netadapter.render import render_drone_script

READY = re.compile(r"stage tunnel ready after ([\d.]+)s \(([\d.]+)s since start\)")
COLLECTOR = f"{L.OUTSIDE_HTTP}:{L.COLLECTOR_PORT}"
LOGIN = {"host": L.LOGIN_SITE}
GATEWAY = {"host": L.OUTSIDE_GATEWAY, "port": L.HTTPS_PORT}
DANTE = {"type": "socks5", "host": L.OUTSIDE_SOCKS, "port": L.HTTPS_PORT}
SQUID_ON_LOGIN = {"listen_port": 3128, "host": "127.0.0.1", "port": L.SQUID_PORT}


def cvmfs_section(mode: str, repositories: tuple[str, ...] = ("lab.cern.ch",)) -> dict:
    """cvmfsexec's stand-in in the drone's home, proxy = the -L forward to a squid."""
    return {
        "mode": mode,
        "dist": "~/cvmfsexec/dist",
        "repositories": list(repositories),
        "http_proxy": "http://127.0.0.1:3128",
        "server_url": f"http://{L.OUTSIDE_HTTP}/cvmfs/@fqrn@",
    }


def install_cvmfsexec(lab: Lab) -> Path:
    """~drone/cvmfsexec: the lab installs it at lab up, as makedist would."""
    tools = lab.layout.home(lab.drone_user) / "cvmfsexec"
    assert (tools / "mountrepo").exists() and (tools / "dist").is_dir(), tools
    return tools


@dataclass
class Drone:
    """One drone job: rendered, submitted, watched in the pool, cancelled."""

    lab: Lab
    uuid: str
    profile: dict[str, Any]
    state: Path = field(default=Path())
    job_id: str = ""
    #: further sbatch options, e.g. ("-w", "worker1") to pick the node
    sbatch_options: tuple[str, ...] = ()

    def submit(self) -> Drone:
        profile = load_profile(json.loads(json.dumps(self.profile)))
        script = render_drone_script(
            profile,
            derive_budget(profile),
            site_name="NetLab",
            machine_type="cpu1",
            job_id_variable="SLURM_JOB_ID",
        )
        exports = (
            f"ALL,TardisDroneUuid={self.uuid},TardisDroneCores=1,TardisDroneMemory=200"
        )
        result = self.lab.run(
            "login",
            [
                "sbatch",
                "--parsable",
                "-o",
                f"drone-{self.uuid}.out",
                "--export",
                exports,
                *self.sbatch_options,
            ],
            user=self.lab.drone_user,
            input=script,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        self.job_id = result.stdout.strip().split(";")[0]
        if self.state == Path():
            self.state = pool_state(self.lab.layout)
        return self

    @property
    def output(self) -> str:
        path = self.lab.layout.home(self.lab.drone_user) / f"drone-{self.uuid}.out"
        return path.read_text() if path.exists() else "(no job output yet)"

    def record(self) -> Optional[dict[str, Any]]:
        try:
            drones = json.loads(self.state.read_text()).get("drones", {})
        except (OSError, ValueError):
            return None
        return next((r for r in drones.values() if r.get("uuid") == self.uuid), None)

    def wait_registered(self, timeout: float = 40, count: int = 1) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.record()
            if record and record.get("connected") and record["connect_count"] >= count:
                return record
            time.sleep(0.1)
        raise AssertionError(f"{self.uuid} not registered (#{count}):\n{self.output}")

    def node(self) -> str:
        result = self.lab.run(
            "login",
            ["squeue", "-h", "-j", self.job_id, "-o", "%N"],
            user=self.lab.drone_user,
        )
        return result.stdout.strip()

    def tunnel_ready(self) -> tuple[float, float]:
        """(seconds the tunnel stage took, seconds since the script started)."""
        match = READY.search(self.output)
        assert match, self.output
        return float(match.group(1)), float(match.group(2))

    def ssh_pid(self) -> int:
        """The tunnel's own ssh (not autossh, not a ProxyJump helper)."""
        for pid, argv in processes():
            if (
                (argv[0] == "ssh" or argv[0].endswith("/ssh"))
                and "-N" in argv
                and any(f"tardis-drone.{self.uuid}." in arg for arg in argv)
            ):
                return pid
        raise AssertionError(f"no tunnel ssh of {self.uuid}")

    def work_file(self, name: str) -> str:
        for _, argv in processes():
            for arg in argv:
                if f"tardis-drone.{self.uuid}." in arg and arg.endswith("/ssh_config"):
                    return arg.replace("/ssh_config", f"/{name}")
        raise AssertionError(f"no work directory of {self.uuid}")

    def cancel(self, timeout: float = 20) -> None:
        if not self.job_id:
            return
        self.lab.run("login", ["scancel", self.job_id], user=self.lab.drone_user)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            queue = self.lab.run(
                "login", ["squeue", "-h", "-j", self.job_id], user=self.lab.drone_user
            )
            if not queue.stdout.strip():
                return
            time.sleep(0.2)
        raise AssertionError(f"job {self.job_id} still in the queue after scancel")

    def leftovers(self) -> list[str]:
        """Processes and work directories of this drone still around."""
        found = [
            f"{pid}: {' '.join(argv)}"
            for pid, argv in processes()
            if any(self.uuid in arg for arg in argv)
        ]
        found += [str(p) for p in Path("/tmp").glob(f"tardis-drone.{self.uuid}.*")]
        return found


def processes() -> Iterator[tuple[int, list[str]]]:
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry.name}/cmdline").read_bytes()
        except OSError:
            continue
        if raw:
            yield (
                int(entry.name),
                raw.rstrip(b"\0").decode(errors="replace").split("\0"),
            )


def pool_records(lab: Lab) -> dict[str, dict[str, Any]]:
    """The pool stand-in's records of drones, by their TardisDroneUuid."""
    state = json.loads((lab.layout.state_dir / "pool" / "state.json").read_text())
    return {record.get("uuid"): record for record in state.get("drones", {}).values()}


def heartbeat(lab: Lab, uuid: str) -> dict[str, Any]:
    """A drone's last heartbeat record ({} when none or half-written)."""
    path = lab.layout.home(lab.drone_user) / ".tardis-netadapter" / "heartbeats"
    try:
        return json.loads((path / f"{uuid}.json").read_text())
    except (OSError, ValueError):
        return {}


def check_result(
    lab: Lab, drone: Drone, name: str, timeout: float = 30
) -> dict[str, str]:
    """The ``key=value`` lines a payload check script (``name``: nscheck,
    vpncheck, ...) wrote to ~/NAME-UUID.out, once it wrote ``done``."""
    path = lab.layout.home(lab.drone_user) / f"{name}-{drone.uuid}.out"
    wait_for(
        f"{drone.uuid}'s {name}",
        lambda: path.exists() and "done" in path.read_text(),
        timeout,
        lambda: path.read_text() if path.exists() else drone.output,
        0.2,
    )
    values = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = value
    return values


def wait_gone(drone: Drone, timeout: float = 30) -> None:
    """Until Slurm no longer lists the drone's job."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queue = drone.lab.run(
            "login", ["squeue", "-h", "-j", drone.job_id], user=drone.lab.drone_user
        )
        if not queue.stdout.strip():
            return
        time.sleep(0.3)
    raise AssertionError(f"{drone.uuid} still queued:\n{drone.output}")


def descendants(root: int) -> set[int]:
    """Every process below ``root`` (by /proc parent links)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def chain_connects(lab: Lab, node: str, conf: str, address: str, port: int) -> bool:
    """One TCP connect through the drone's own proxychains.conf, from its node."""
    result = lab.run(
        node,
        [
            "proxychains4",
            "-q",
            "-f",
            conf,
            "bash",
            "-c",
            f"exec 3<>/dev/tcp/{address}/{port}",
        ],
        user=lab.drone_user,
        timeout=15,
    )
    return result.returncode == 0


@contextmanager
def extra_pool(lab: Lab, address: str, port: int, state: Path) -> Iterator[Path]:
    """A second pool stand-in in outside (e.g. on 443, which login may reach)."""
    proc = lab.popen(
        "outside",
        ["/usr/bin/python3", str(lab.layout.bin_dir / "pool")]
        + ["--listen", f"{address}:{port}", "--state", str(state), "--fresh"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not is_listening(proc.pid, address, port):
            assert proc.poll() is None, "extra pool exited"
            assert time.monotonic() < deadline, "extra pool not listening"
            time.sleep(0.05)
        yield state
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ssh_login(lab: Lab, command: str, input: str | None = None, timeout: float = 30):
    """``command`` on login as the adapter runs it: non-interactive ssh from
    control as the drone user, host key checked."""
    status = lab.status()["ssh"]
    argv = [
        "ssh",
        "-i",
        status["control_key"],
        "-o",
        f"UserKnownHostsFile={status['known_hosts']}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        f"{lab.drone_user}@{L.LOGIN_PUBLIC}",
        command,
    ]
    return lab.run("control", argv, timeout=timeout, input=input)


def control_sessions(lab: Lab) -> list[int]:
    """Pids of the login sshd processes serving the control host's connection
    (what an sshd outage test kills besides the listener)."""
    result = lab.run(
        "login",
        [
            "ss",
            "-Htnp",
            "state",
            "established",
            f"( sport = :22 and dst {L.CONTROL_PUBLIC} )",
        ],
    )
    pids = {int(pid) for pid in re.findall(r"pid=(\d+)", result.stdout)}
    in_login = set(pids_in_namespaces([lab.layout.namespace_path("login")]))
    return sorted(pids & in_login)


def lab_unavailable(needed: tuple[str, ...]) -> str | None:
    """Why a module that builds its own lab cannot run here (None: it can):
    not root, or one of the ``needed`` programs is missing."""
    if os.geteuid() != 0:
        return "lab tests need root"
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    missing = [name for name in needed if not shutil.which(name, path=path)]
    if missing:
        return f"needs {', '.join(missing)}: run scripts/install-system-deps"
    return None


def skip_unless_runnable(reason: str | None) -> None:
    """Skip for ``reason``; under CI=true fail instead (CI must run every lab test)."""
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
