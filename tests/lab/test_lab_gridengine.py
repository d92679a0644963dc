"""The lab's real Grid Engine (issue 16): Debian's sge_qmaster on login and
sge_execd on the workers, used by the drone user exactly as the adapter will
(a non-interactive ssh command from control), in a cell of the lab's own.

One lab for the module (``TNA_GE_LAB``, default gel2); one test adds a small
second lab (gel1) to show two cells side by side.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from tardis_netadapter_lab import Lab, gehost, services, teardown
from test_chain_support import ssh_login

pytestmark = pytest.mark.lab

LAB_NAME = os.environ.get("TNA_GE_LAB", "gel2")
SECOND_LAB = "gel1"
NEEDED = ("sshd", "slurmctld", "nsenter", "setpriv", "unshare", "nft")
GE_BINARIES = ("/usr/lib/gridengine/sge_qmaster", "/usr/lib/gridengine/sge_execd")
#: the job the adapter would run: where it is, as whom, what it sees
PROBE_JOB = """#!/bin/bash
echo "host=$(hostname) user=$(id -un) job=$JOB_ID cwd=$PWD"
echo "path=$PATH"
echo "tun=$(stat -c %a /dev/net/tun)"
echo "uuid=$TardisDroneUuid"
command -v condor_master
"""


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "lab tests need root"
    missing = [path for path in GE_BINARIES if not Path(path).exists()]
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    missing += [name for name in NEEDED if not shutil.which(name, path=search)]
    if missing:
        return f"needs {', '.join(missing)}: run scripts/install-system-deps"
    return None


def _skip_or_fail() -> None:
    reason = _unavailable()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)


def _netns() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    _skip_or_fail()
    teardown(LAB_NAME)
    lab = Lab(name=LAB_NAME, workers=2)
    try:
        lab.up()
        started = time.monotonic()
        lab.gridengine.up()
        print(f"gridengine up in {time.monotonic() - started:.1f} s")
        yield lab
    finally:
        lab.down()
        assert not [ns for ns in _netns() if ns.startswith(f"{LAB_NAME}-")]


def qsub(lab: Lab, script: str, options: str = "") -> str:
    result = ssh_login(lab, f"qsub -terse -N t{time.monotonic_ns()} {options}", script)
    assert result.returncode == 0, result.stdout + result.stderr
    job = result.stdout.strip()
    assert re.fullmatch(r"\d+", job), result.stdout
    return job


def wait_state(lab: Lab, job: str, want: str, timeout: float = 20) -> str:
    state = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = lab.gridengine.jobs().get(job)
        if state == want:
            return state
        time.sleep(0.3)
    raise AssertionError(f"job {job} in {state!r}, not {want!r} after {timeout} s")


def wait_gone(lab: Lab, job: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if job not in lab.gridengine.jobs():
            return
        time.sleep(0.3)
    raise AssertionError(f"job {job} still listed: {lab.gridengine.jobs()}")


def uts_name(pid: int) -> str:
    result = subprocess.run(
        ["nsenter", f"--uts=/proc/{pid}/ns/uts", "hostname"],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def same_netns(pid: int, path: Path) -> bool:
    return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(path).st_ino


def test_daemons_run_in_lab_namespaces_under_lab_host_names(lab: Lab) -> None:
    status = lab.gridengine.status()
    assert status["up"] and status["sge_cell"] == LAB_NAME
    daemons = status["daemons"]
    qmaster = daemons["sge-qmaster"]["pid"]
    assert qmaster and same_netns(qmaster, lab.layout.namespace_path("login"))
    assert not same_netns(qmaster, Path("/proc/self/ns/net"))
    assert uts_name(qmaster) == "login"
    assert Path(f"/proc/{qmaster}/exe").resolve().name == "sge_qmaster"
    # started as root, runs as Debian's admin user like a site's
    assert Path(f"/proc/{qmaster}").stat().st_uid == pwd.getpwnam("sgeadmin").pw_uid
    for worker in lab.layout.worker_hosts:
        pid = daemons[f"sge-execd-{worker}"]["pid"]
        assert pid and same_netns(pid, lab.layout.namespace_path(worker))
        assert uts_name(pid) == worker
    # the machine keeps its own name and host table
    assert (
        os.uname().nodename
        == subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    )
    assert "login" not in Path("/etc/hosts").read_text().split()
    assert status["queues"] == {f"all.q@{w}": "" for w in lab.layout.worker_hosts}


def test_adapter_session_finds_the_cell_without_environment(lab: Lab) -> None:
    result = ssh_login(lab, "hostname; env | grep ^SGE_ || true; qconf -sq all.q")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "login"
    assert not [line for line in lines if line.startswith("SGE_")]
    assert re.search(r"^slots\s+2$", result.stdout, re.M), result.stdout
    assert re.search(r"^shell_start_mode\s+unix_behavior$", result.stdout, re.M)


def test_job_runs_on_a_worker_as_the_drone_user_with_worker_environment(
    lab: Lab,
) -> None:
    job = qsub(lab, PROBE_JOB, "-S /bin/bash -r n -j y -v TardisDroneUuid=abc123")
    wait_gone(lab, job)
    home = lab.layout.home(lab.drone_user)
    output = next(home.glob(f"*.o{job}")).read_text()
    fields = dict(
        line.split("=", 1) for line in output.splitlines() if "=" in line[:10]
    )
    assert re.fullmatch(r"worker\d", fields["host"].split()[0]), output
    assert f"user={lab.drone_user}" in output and f"job={job}" in output
    assert f"cwd={home}" in output
    assert fields["path"].split(":")[1] == str(lab.layout.bin_dir), output
    assert fields["tun"] == "666"
    assert fields["uuid"] == "abc123"
    assert output.strip().endswith(str(lab.layout.bin_dir / "condor_master"))


def test_two_one_slot_jobs_per_worker_at_once(lab: Lab) -> None:
    jobs = [qsub(lab, "sleep 30\n") for _ in range(5)]
    try:
        for job in jobs[:4]:
            wait_state(lab, job, "r")
        assert lab.gridengine.jobs()[jobs[4]] == "qw"
        listing = ET.fromstring(lab.gridengine.qstat_xml())
        queues = [job.findtext("queue_name") for job in listing.iter("job_list")]
        assert sorted(q for q in queues if q) == sorted(
            [f"all.q@{w}" for w in lab.layout.worker_hosts] * 2
        )
    finally:
        ssh_login(lab, "qdel " + " ".join(jobs))
    for job in jobs:
        wait_gone(lab, job)


def test_held_error_suspended_and_deleted_states(lab: Lab) -> None:
    held = qsub(lab, "sleep 60\n", "-h")
    broken = qsub(lab, "sleep 60\n", "-wd /nonexistent/dir")
    running = qsub(lab, "sleep 60\n")
    try:
        wait_state(lab, held, "hqw")
        wait_state(lab, broken, "Eqw")
        wait_state(lab, running, "r")
        assert ssh_login(lab, f"qhold {running}").returncode == 0
        wait_state(lab, running, "hr")
        assert ssh_login(lab, f"qrls {running}; qmod -sj {running}").returncode == 0
        wait_state(lab, running, "s")
        # a deletion the execd cannot acknowledge stays "d" (dr/ds)
        worker = lab.gridengine.queue_of(running)
        lab.gridengine.freeze_execd(worker)
        try:
            first = ssh_login(lab, f"qdel {running}")
            again = ssh_login(lab, f"qdel {running}")
            state = wait_state(lab, running, "ds")
            assert state == "ds"
        finally:
            lab.gridengine.thaw_execd(worker)
        assert "has registered the job" in first.stdout and first.returncode == 0
        assert "is already in deletion" in again.stdout, again.stdout
        wait_gone(lab, running)
        gone = ssh_login(lab, f"qdel {running}")
        assert gone.returncode == 1
        assert gone.stdout.strip() == f'denied: job "{running}" does not exist'
    finally:
        ssh_login(lab, f"qdel {held} {broken} {running}")


def test_qrsh_needs_the_connect_back_port(lab: Lab) -> None:
    # qrsh ignores SIGTERM: only timeout's -k (SIGKILL, 137) ends it
    command = "timeout -k 2 6 qrsh -now no -N tna-check -l h_rt=0:02:00 /bin/sh -s"
    script = "hostname; echo qrsh-ok\n"
    # (alone, timeout dies by the SIGKILL itself and ssh exits 255: keep a shell)
    blocked = ssh_login(lab, f"{command}; echo rc=$?", script)
    assert blocked.stdout.split() == ["rc=137"], blocked.stdout + blocked.stderr
    ssh_login(lab, "qdel -u $(id -un)")
    lab.gridengine.allow_qrsh(True)
    try:
        open_ = ssh_login(lab, command, script)
        assert open_.returncode == 0, open_.stdout + open_.stderr
        assert open_.stdout.split() == [open_.stdout.split()[0], "qrsh-ok"]
    finally:
        lab.gridengine.allow_qrsh(False)
    assert not lab.gridengine.qrsh_allowed()


def test_two_labs_have_their_own_cells(lab: Lab) -> None:
    teardown(SECOND_LAB)
    other = Lab(name=SECOND_LAB, workers=1)
    try:
        other.up()
        other.gridengine.up()
        mine = qsub(lab, "sleep 20\n")
        theirs = other.gridengine.run(
            "login",
            ["qsub", "-terse", "-N", "other"],
            user=other.drone_user,
            input="sleep 20\n",
            check=True,
        ).stdout.strip()
        assert other.gridengine.jobs() == {theirs: other.gridengine.jobs()[theirs]}
        assert mine in lab.gridengine.jobs()
        assert (
            lab.gridengine.status()["gid_range"]
            != other.gridengine.status()["gid_range"]
        )
        assert other.gridengine.root != lab.gridengine.root
        ssh_login(lab, f"qdel {mine}")
    finally:
        other.down()
    assert not [ns for ns in _netns() if ns.startswith(f"{SECOND_LAB}-")]
    assert lab.gridengine.status()["daemons"]["sge-qmaster"]["alive"]


def test_down_restores_login_and_up_again_works(lab: Lab) -> None:
    lab.gridengine.down()
    status = lab.gridengine.status()
    assert not status["up"]
    assert not any(d["alive"] for d in status["daemons"].values())
    assert not gehost.sge_root(lab.layout).exists()
    sshd = services.recorded_pid(lab.layout, "login-sshd")
    assert sshd and uts_name(sshd) == os.uname().nodename
    assert ssh_login(lab, "hostname").stdout.strip() == os.uname().nodename
    started = time.monotonic()
    lab.gridengine.up()
    print(f"gridengine up again in {time.monotonic() - started:.1f} s")
    job = qsub(lab, "true\n")
    wait_gone(lab, job)
