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

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tardis_netadapter_lab import Lab
from tardis_netadapter_lab.daemon import (
    CobaldDaemon,
    pool_request,
    slurm_jobs,
    write_config,
)
from tardis_netadapter_lab.netns import terminate
from test_chain_support import control_sessions

pytestmark = [pytest.mark.lab, pytest.mark.slow]

OUTAGE = 20.0


def wait_for(what: str, check: Callable[[], bool], timeout: float, explain) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    pytest.fail(
        f"{what} not reached within {timeout:.0f} s\n{explain()}", pytrace=False
    )


def test_cobald_daemon_runs_netslurm_drones_through_the_lab(lab: Lab, tmp_path: Path):
    config = write_config(lab, tmp_path)
    cobald = CobaldDaemon(lab, tmp_path, config)
    home = lab.layout.home(lab.drone_user)

    def explain() -> str:
        outputs = "\n".join(
            f"--- {path.name}\n{path.read_text()[-1500:]}"
            for path in sorted(home.glob("tardis-*.out"))[-2:]
        )
        return (
            f"drones={cobald.drones()}\nslurm={slurm_jobs(lab)}\n"
            f"{outputs}\n--- cobald.log (tail)\n{cobald.log_tail()}"
        )

    daemon = cobald.start().process
    log_path = cobald.log_path
    ours: dict[str, str] = {}
    try:
        # 1. TARDIS submits two drones; each registers with the pool through its
        #    chain; busy drones (load 1) become Available in TARDIS.
        def two_available() -> bool:
            available = cobald.busy_and_available()
            if len(available) >= 2:
                ours.update(available)
                return True
            return False

        wait_for("two drones in AvailableState", two_available, 240, explain)
        jobs = slurm_jobs(lab)
        assert all(jobs.get(job, ("",))[0] == "RUNNING" for job in ours.values()), (
            explain()
        )

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
            return not set(ours) & set(cobald.drones())

        wait_for("our drones in DownState", ours_gone, 240, explain)
        jobs = slurm_jobs(lab)
        active = ("RUNNING", "PENDING", "COMPLETING", "CONFIGURING")
        still = {
            job: jobs[job][0]
            for job in ours.values()
            if job in jobs and jobs[job][0] in active
        }
        assert not still, f"jobs still active in Slurm: {still}\n{explain()}"
        after = log_path.read_text()
        assert "Traceback" not in after and "unexpected error" not in after, explain()
        assert len(sessions) >= 1, "the daemon's ssh session was not found on login"
    finally:
        cobald.stop()
        lab.run("login", ["scancel", "--me"], user=lab.drone_user)
        if os.environ.get("TNA_KEEP_LOGS"):
            shutil.copytree(tmp_path, os.environ["TNA_KEEP_LOGS"], dirs_exist_ok=True)
