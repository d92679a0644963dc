"""A real `cobald` daemon on the lab's control host drives NetSlurm drones end to end.

configs/lab.yml (with the lab's name filled in) runs under the installed
COBalD daemon in the `control` namespace. The adapter reaches the login node
with TARDIS's real SSHExecutor and submits to the lab's real Slurm; the drone
script's payload registers with the pool stand-in through the chain (worker ->
ssh -D on login -> dante on 443 -> collector), so TARDIS's HTCondor adapter
sees it Available through the condor_status stand-in. The test then takes the
login node's sshd away for 20 s (listener and the daemon's own session), and
finally lowers the pool's load so TARDIS drains and removes the drones, which
needs status tracking to work again after the outage.

Asserted on TARDIS's own records (SqliteRegistry) and on Slurm (squeue).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tardis_netadapter.lab import Lab
from tardis_netadapter.lab import layout as L
from tardis_netadapter.lab.netns import pids_in_namespaces, terminate

pytestmark = [pytest.mark.lab, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
COBALD = Path(sys.executable).parent / "cobald"
POOL = f"{L.OUTSIDE_HTTP}:{L.COLLECTOR_PORT}"
OUTAGE = 20.0


def prepare_site(lab: Lab) -> None:
    """What an operator does once per site: install cvmfsexec in the drone's home.

    configs/lab.yml keeps cvmfs.dist at its default ~/cvmfsexec/dist; the lab
    ships the cvmfsexec stand-in in its bin dir, so copy its three commands
    beside an (empty) dist, as `makedist` would leave them.
    """
    tools = lab.layout.home(lab.drone_user) / "cvmfsexec"
    if (tools / "mountrepo").exists():
        return
    (tools / "dist").mkdir(parents=True, exist_ok=True)
    for name in ("cvmfsexec", "mountrepo", "umountrepo"):
        shutil.copy2(lab.layout.bin_dir / name, tools / name)
    for path in (tools, tools / "dist", *tools.iterdir()):
        shutil.chown(path, lab.drone_user, lab.drone_user)


def write_config(lab: Lab, directory: Path) -> Path:
    """configs/lab.yml with ${lab} replaced by this lab's name."""
    text = (ROOT / "configs" / "lab.yml").read_text().replace("${lab}", lab.name)
    assert "${" not in text
    path = directory / "cobald.yml"
    path.write_text(text)
    return path


def drones(db: Path) -> dict[str, tuple[str, str]]:
    """drone uuid -> (Slurm job id, TARDIS state) from the SqliteRegistry."""
    if not db.exists():
        return {}
    try:
        with sqlite3.connect(db, timeout=5) as con:
            rows = con.execute(
                "SELECT R.drone_uuid, R.remote_resource_uuid, S.state FROM Resources R "
                "JOIN ResourceStates S ON R.state_id = S.state_id"
            ).fetchall()
    except sqlite3.Error:
        return {}
    return {uuid: (str(job), state) for uuid, job, state in rows}


def slurm_jobs(lab: Lab) -> dict[str, str]:
    """job id -> state of the drone user's jobs, as squeue on login sees them."""
    result = lab.run(
        "login", ["squeue", "-h", "-t", "all", "-o", "%i %T"], user=lab.drone_user
    )
    return dict(line.split()[:2] for line in result.stdout.splitlines() if line.split())


def pool_request(lab: Lab, request: dict) -> dict:
    result = lab.run("control", ["pool", "--request", POOL, json.dumps(request)])
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"ok": False, "error": result.stderr.strip()}


def wait_for(what: str, check: Callable[[], bool], timeout: float, explain) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    pytest.fail(
        f"{what} not reached within {timeout:.0f} s\n{explain()}", pytrace=False
    )


def control_sessions(lab: Lab) -> list[int]:
    """Pids of the login sshd processes serving the control host's connection."""
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


def test_cobald_daemon_runs_netslurm_drones_through_the_lab(lab: Lab, tmp_path: Path):
    if not COBALD.exists():
        pytest.skip(f"cobald console script not found at {COBALD}")
    prepare_site(lab)
    config = write_config(lab, tmp_path)
    db = tmp_path / "drones.db"
    log_path = tmp_path / "cobald.log"
    home = lab.layout.home(lab.drone_user)

    def explain() -> str:
        outputs = "\n".join(
            f"--- {path.name}\n{path.read_text()[-1500:]}"
            for path in sorted(home.glob("tardis-*.out"))[-2:]
        )
        tail = log_path.read_text()[-4000:] if log_path.exists() else ""
        return (
            f"drones={drones(db)}\nslurm={slurm_jobs(lab)}\n"
            f"{outputs}\n--- cobald.log (tail)\n{tail}"
        )

    with open(log_path, "w") as log:
        daemon = lab.popen(
            "control",
            [str(COBALD), str(config)],
            cwd=str(tmp_path),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    ours: dict[str, str] = {}
    try:
        # 1. TARDIS submits two drones; each registers with the pool through its
        #    chain; busy drones (load 1) become Available in TARDIS.
        loaded: set[str] = set()

        def two_available() -> bool:
            assert daemon.poll() is None, f"cobald exited ({daemon.returncode})"
            for uuid in drones(db):
                if uuid not in loaded and pool_request(
                    lab, {"op": "set_load", "uuid": uuid, "load": 1.0}
                ).get("ok"):
                    loaded.add(uuid)
            available = {
                uuid: job
                for uuid, (job, state) in drones(db).items()
                if state == "AvailableState"
            }
            if len(available) >= 2:
                ours.update(available)
                return True
            return False

        wait_for("two drones in AvailableState", two_available, 240, explain)
        jobs = slurm_jobs(lab)
        assert all(jobs.get(job) == "RUNNING" for job in ours.values()), explain()

        # 2. The login node's sshd goes away for 20 s, the daemon's session with it.
        assert lab.kill_service("login-sshd")
        sessions = control_sessions(lab)
        terminate(sessions)
        outage_end = time.monotonic() + OUTAGE
        while time.monotonic() < outage_end:
            assert daemon.poll() is None, (
                "cobald died during the sshd outage\n" + explain()
            )
            time.sleep(1)
        lab.restart_service("login-sshd")
        assert daemon.poll() is None, explain()
        text = log_path.read_text()
        assert "NetLab: " in text and "Traceback" not in text, explain()

        # 3. Demand drops: the pool reports our drones idle, TARDIS drains them and
        #    removes them, which needs squeue through a new SSH connection.
        for uuid in ours:
            pool_request(lab, {"op": "set_load", "uuid": uuid, "load": 0.0})

        def ours_gone() -> bool:
            assert daemon.poll() is None, f"cobald exited ({daemon.returncode})"
            return not set(ours) & set(drones(db))

        wait_for("our drones in DownState", ours_gone, 240, explain)
        jobs = slurm_jobs(lab)
        still = {
            job: jobs.get(job)
            for job in ours.values()
            if jobs.get(job) in ("RUNNING", "PENDING", "COMPLETING", "CONFIGURING")
        }
        assert not still, f"jobs still active in Slurm: {still}\n{explain()}"
        after = log_path.read_text()
        assert "Traceback" not in after and "unexpected error" not in after, explain()
        assert len(sessions) >= 1, "the daemon's ssh session was not found on login"
    finally:
        if daemon.poll() is None:
            daemon.terminate()
            try:
                daemon.wait(15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(5)
        lab.run("login", ["scancel", "--me"], user=lab.drone_user)
        if os.environ.get("TNA_KEEP_LOGS"):
            shutil.copytree(tmp_path, os.environ["TNA_KEEP_LOGS"], dirs_exist_ok=True)
