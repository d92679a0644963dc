"""A real `cobald` daemon drives NetGridEngine drones on the lab's real Grid
Engine (issue 16), as tests/lab/test_cobald_daemon.py does for NetSlurm.

configs/lab-gridengine.yml (configs/lab.yml's chain (b) with `adapter:
NetGridEngine`) runs under the installed COBalD daemon in the `control`
namespace; TARDIS's SSHExecutor reaches login as the drone user and runs the
driver's qsub/qstat/qdel there, against Debian's sge_qmaster on login and
sge_execd on the workers (lab.gridengine). The drones register with the pool
stand-in through worker -> ssh -D on login -> dante on 443 -> collector.

Asserted on TARDIS's own records (SqliteRegistry) and on Grid Engine (qstat):
two drones Available; a 20 s outage of login's sshd survived; `qdel` of a
running drone is seen as its end (TARDIS moves the drone on, no job or
payload left); the rest drained. A second test lists held, error and
suspended jobs through the driver's own listing command over ssh and checks
their mapping against docs/adapter.md's table.

One Grid Engine for the module, on the session's lab.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tardis.interfaces.siteadapter import ResourceStatus
from tardis_netadapter_lab import Lab
from tardis_netadapter_lab.daemon import (
    CobaldDaemon,
    lab_config,
    pool_request,
    write_config,
)
from tardis_netadapter_lab.netns import pids_in_namespaces, terminate
from test_chain_support import control_sessions, ssh_login

from tardis_netadapter.batch.gridengine import GridEngineDriver

pytestmark = [pytest.mark.lab, pytest.mark.slow]

OUTAGE = 20.0
GE_BINARY = Path("/usr/lib/gridengine/sge_qmaster")


@pytest.fixture(scope="module")
def ge(lab: Lab) -> Iterator[Lab]:
    """The session's lab with Grid Engine up for this module."""
    if not GE_BINARY.exists():
        reason = (
            "needs gridengine-master/-exec/-client: run scripts/install-system-deps"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    lab.gridengine.up()
    try:
        yield lab
    finally:
        lab.gridengine.down()


def wait_for(what: str, check: Callable[[], bool], timeout: float, explain) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    pytest.fail(
        f"{what} not reached within {timeout:.0f} s\n{explain()}", pytrace=False
    )


def ge_jobs(lab: Lab) -> dict[str, tuple[str, str]]:
    """job id -> (job name, state) of the drone user, from the real qstat."""
    listing = GridEngineDriver().parse_listing(
        ssh_login(lab, GridEngineDriver().list_command()).stdout
    )
    return {job: (record.name, record.state) for job, record in listing.items()}


def drone_processes(lab: Lab, drone_uuid: str) -> list[int]:
    """Processes on the workers whose environment names this drone."""
    needle = f"TardisDroneUuid={drone_uuid}".encode()
    workers = [lab.layout.namespace_path(w) for w in lab.layout.worker_hosts]
    found = []
    for pid in pids_in_namespaces(workers):
        try:
            if needle in Path(f"/proc/{pid}/environ").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def test_cobald_runs_gridengine_drones_through_the_lab(ge: Lab, tmp_path: Path):
    lab = ge
    config = write_config(lab, tmp_path, source=lab_config("lab-gridengine.yml"))
    cobald = CobaldDaemon(lab, tmp_path, config)
    home = lab.layout.home(lab.drone_user)

    def explain() -> str:
        outputs = "\n".join(
            f"--- {path.name}\n{path.read_text()[-1500:]}"
            for path in sorted(home.glob("*.o*"), key=lambda p: p.stat().st_mtime)[-2:]
        )
        return (
            f"drones={cobald.drones()}\nqstat={ge_jobs(lab)}\n"
            f"{outputs}\n--- cobald.log (tail)\n{cobald.log_tail()}"
        )

    daemon = cobald.start().process
    log_path = cobald.log_path
    ours: dict[str, str] = {}
    try:
        # 1. two drones submitted with qsub, registered through chain (b), Available
        started = time.monotonic()

        def two_available() -> bool:
            available = cobald.busy_and_available()
            if len(available) >= 2:
                ours.update(available)
                return True
            return False

        wait_for("two drones in AvailableState", two_available, 240, explain)
        print(f"two drones Available after {time.monotonic() - started:.0f} s")
        jobs = ge_jobs(lab)
        for drone_uuid, job in ours.items():
            assert jobs.get(job) == (drone_uuid, "r"), explain()

        # 2. login's sshd goes away for 20 s, the daemon's session with it
        assert lab.kill_service("login-sshd")
        sessions = control_sessions(lab)
        terminate(sessions)
        outage_end = time.monotonic() + OUTAGE
        while time.monotonic() < outage_end:
            assert daemon.poll() is None, "cobald died during the outage\n" + explain()
            time.sleep(1)
        lab.restart_service("login-sshd")
        assert ssh_login(lab, "hostname").stdout.strip() == "login"
        assert daemon.poll() is None, explain()
        time.sleep(10)  # a few status cycles through a new connection
        after_outage = cobald.drones()
        for drone_uuid, job in ours.items():
            assert after_outage.get(drone_uuid) == (job, "AvailableState"), explain()
        assert len(sessions) >= 1, "the daemon's ssh session was not found on login"

        # 3. qdel of a running drone: TARDIS sees its end and moves it on
        victim, victim_job = next(iter(ours.items()))
        deleted = ssh_login(lab, f"qdel {victim_job}")
        assert "has registered the job" in deleted.stdout, deleted.stdout
        qdel_at = time.monotonic()
        wait_for(
            "the qdel'd drone gone from TARDIS",
            lambda: victim not in cobald.drones(),
            120,
            explain,
        )
        print(f"qdel'd drone left TARDIS after {time.monotonic() - qdel_at:.0f} s")
        active = {
            job: state for job, (name, state) in ge_jobs(lab).items() if name == victim
        }
        assert not [s for s in active.values() if s != "z"], active
        assert not drone_processes(lab, victim), "the qdel'd drone left processes"
        del ours[victim]

        # 4. demand drops: the pool reports every drone idle, TARDIS drains them
        def all_gone() -> bool:
            assert daemon.poll() is None, f"cobald exited ({daemon.returncode})"
            current = cobald.drones()
            for drone_uuid in current:
                pool_request(lab, {"op": "set_load", "uuid": drone_uuid, "load": 0.0})
            return not set(ours) & set(current)

        wait_for("our drones in DownState", all_gone, 240, explain)
        still = {
            job: state
            for job, (name, state) in ge_jobs(lab).items()
            if name in ours and state != "z"
        }
        assert not still, f"jobs still in Grid Engine: {still}\n{explain()}"
        text = log_path.read_text()
        assert "Traceback" not in text and "unexpected error" not in text, explain()
    finally:
        cobald.stop()
        ssh_login(lab, "qdel -u $(id -un)")
        if os.environ.get("TNA_KEEP_LOGS"):
            shutil.copytree(tmp_path, os.environ["TNA_KEEP_LOGS"], dirs_exist_ok=True)


def test_held_error_and_suspended_jobs_map_as_documented(ge: Lab) -> None:
    """The driver's own listing command over ssh, parsed by the driver: the
    states docs/adapter.md promises for jobs a person or the site touched."""
    lab = ge
    driver = GridEngineDriver()
    # TARDIS names drones <site>-<hex> (Grid Engine refuses names that start
    # with a digit: "is not a valid object name (cannot start with a digit)")
    names = {
        kind: f"netlab-{uuidlib.uuid4().hex[:10]}"
        for kind in ("held", "error", "hr", "s")
    }
    options = {
        "held": "-h",
        "error": "-wd /nonexistent/dir",
        "hr": "",
        "s": "",
    }
    jobs = {}
    for kind, name in names.items():
        result = ssh_login(
            lab, f"qsub -terse -N {name} {options[kind]}", input="sleep 120\n"
        )
        jobs[kind] = driver.parse_submit(result.stdout, result.stderr)
    try:

        def states() -> dict[str, str]:
            listing = driver.parse_listing(ssh_login(lab, driver.list_command()).stdout)
            return {
                kind: listing[job].state for kind, job in jobs.items() if job in listing
            }

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
            states().get("hr") == "r" and states().get("s") == "r"
        ):
            time.sleep(0.5)
        ssh_login(lab, f"qhold {jobs['hr']}; qmod -sj {jobs['s']}")
        want = {"held": "hqw", "error": "Eqw", "hr": "hr", "s": "s"}
        deadline = time.monotonic() + 20
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            seen = states()
            if seen == want:
                break
            time.sleep(0.5)
        assert seen == want
        listing = driver.parse_listing(ssh_login(lab, driver.list_command()).stdout)
        statuses = {kind: listing[job].status for kind, job in jobs.items()}
        assert statuses == {
            "held": ResourceStatus.Stopped,  # held while pending: never starts alone
            "error": ResourceStatus.Error,
            "hr": ResourceStatus.Running,  # a hold does not stop a running job
            "s": ResourceStatus.Stopped,
        }
        assert all(listing[job].name == names[kind] for kind, job in jobs.items())
        assert listing[jobs["hr"]].elapsed is not None
    finally:
        ssh_login(lab, "qdel " + " ".join(jobs.values()))
