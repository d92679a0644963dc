"""A real `cobald` daemon drives drones in mode `nat` (issue 14) end to end.

The lab's site NAT is up for this module (`lab.site_nat`: keepalived and
conntrackd on nat1/nat2, the workers' marked routing and route keepers).
COBalD/TARDIS on the control host run configs/lab-nat.yml (the lab's drone
user filled in by write_config, monitoring made fast): NetSlurm submits
two drones, one per worker; their traffic is marked by uid, routed to the
VIP and SNATed to the public VIP, so the pool sees 10.66.2.100 and their
heartbeats carry `route: ok`. Then:

1. the master router's keepalived stops: the VIPs move to nat2, and both
   drones keep their pool connection (conntrackd) and stay `connected`;
2. the routing of one drone's worker is removed (its route keeper stopped
   first, else it repairs): that drone's heartbeat names stage `route` with
   the reason, the adapter judges it lost and cancels its job, while the
   other drone stays connected.

Asserted on TARDIS's registry, Slurm (squeue), the pool stand-in, the
heartbeats and the daemon's log. A second test runs `check --probe`, whose
job runs the drone's route check on a worker through the real srun.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tardis_netadapter_lab import Lab, services
from tardis_netadapter_lab import layout as L
from tardis_netadapter_lab.daemon import (
    LAB_NAT_CONFIG,
    CobaldDaemon,
    pool_request,
    slurm_jobs,
    write_config,
)
from tardis_netadapter_lab.sitenat import SiteNatError
from test_chain_support import heartbeat

pytestmark = [pytest.mark.lab, pytest.mark.slow]

INTERVAL, GRACE = 5, 20
FAST = {
    "    Network:\n      mode: nat\n": (
        "    Network:\n"
        "      monitoring:\n"
        f"        heartbeat_interval: {INTERVAL}\n"
        f"        grace: {GRACE}\n"
        "      mode: nat\n"
    ),
    # one drone per worker: removing one worker's routing hits exactly one
    "            output: tardis-%j.out\n": (
        "            output: tardis-%j.out\n            exclusive: null\n"
    ),
}
ACTIVE = ("RUNNING", "PENDING", "COMPLETING", "CONFIGURING")


@pytest.fixture(scope="module")
def nat_lab(lab: Lab) -> Iterator[Lab]:
    """The session lab with its site NAT up for this module only: other
    modules rely on workers that reach nothing outside."""
    lab.site_nat.up()
    try:
        lab.site_nat.wait_master()
        yield lab
    finally:
        lab.site_nat.down()


def wait_for(what: str, check: Callable[[], bool], timeout: float, explain) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.5)
    pytest.fail(
        f"{what} not reached within {timeout:.0f} s\n{explain()}", pytrace=False
    )


def pool_records(lab: Lab) -> dict[str, dict[str, Any]]:
    answer = pool_request(lab, {"op": "query"})
    records = answer.get("drones", []) if isinstance(answer, dict) else []
    return {record.get("uuid"): record for record in records if record.get("uuid")}


def node_of(lab: Lab, job: str) -> str:
    result = lab.run(
        "login", ["squeue", "-h", "-j", job, "-o", "%N"], user=lab.drone_user
    )
    return result.stdout.strip()


def test_cobald_runs_nat_drones_through_a_failover_and_judges_a_broken_route(
    nat_lab: Lab, tmp_path: Path
) -> None:
    lab = nat_lab
    config = write_config(lab, tmp_path, source=LAB_NAT_CONFIG, replace=FAST)
    assert f"users: [{lab.drone_user}]" in config.read_text()
    cobald = CobaldDaemon(lab, tmp_path, config)
    ours: dict[str, str] = {}

    def explain() -> str:
        beats = {uuid: heartbeat(lab, uuid) for uuid in ours}
        return (
            f"drones={cobald.drones()}\nslurm={slurm_jobs(lab)}\n"
            f"heartbeats={json.dumps(beats)}\nnat={lab.site_nat.status()}\n"
            + "".join(
                f"--- {router} keepalived (tail)\n"
                f"{services.log_tail(lab.layout, f'{router}-keepalived', 8)}\n"
                for router in lab.layout.nat_hosts
            )
            + f"--- cobald.log (tail)\n{cobald.log_tail()}"
        )

    cobald.start()
    started = time.monotonic()
    try:
        # 0. two drones, one per worker, register through the NAT
        def two_available() -> bool:
            ours.update(cobald.busy_and_available())
            return len(ours) >= 2

        wait_for("two nat drones Available", two_available, 240, explain)
        print(f"two nat drones Available after {time.monotonic() - started:.0f} s")
        records = pool_records(lab)
        for uuid in ours:
            assert records[uuid]["remote"].startswith(f"{L.NAT_PUBLIC}:"), records
        wait_for(
            "route objects in both heartbeats",
            lambda: all((heartbeat(lab, u).get("route") or {}).get("ok") for u in ours),
            3 * INTERVAL,
            explain,
        )
        for uuid in ours:
            route = heartbeat(lab, uuid)["route"]
            assert route["via"] == L.NAT_GATEWAY, route
            assert route["seen"] == L.NAT_PUBLIC, route

        # 1. failover: the master's keepalived stops; the drones keep going
        master = lab.site_nat.master()
        assert master == lab.site_nat.preferred_master(), explain()
        before = {uuid: records[uuid]["connect_count"] for uuid in ours}
        backup = next(r for r in lab.layout.nat_hosts if r != master)
        lab.site_nat.stop_keepalived(master, wait=False)
        # wait for the backup by name: right after the SIGTERM the old master
        # may still hold both VIPs for a moment (longer on a loaded machine),
        # and "any single master" would be satisfied by it
        try:
            moved = lab.site_nat.wait_master(backup, timeout=10)
        except SiteNatError as error:
            pytest.fail(f"{error}\n{explain()}", pytrace=False)
        now_master = lab.site_nat.master()
        assert now_master == backup, explain()
        print(
            f"keepalived of {master} stopped: VIPs on {now_master} after {moved:.2f} s"
        )
        beats = {uuid: heartbeat(lab, uuid).get("time", 0) for uuid in ours}
        wait_for(
            "a fresh heartbeat of each drone after the failover",
            lambda: all(heartbeat(lab, u).get("time", 0) > beats[u] for u in ours),
            3 * INTERVAL,
            explain,
        )
        records = pool_records(lab)
        for uuid in ours:
            assert records[uuid]["connected"], (records[uuid], explain())
            assert records[uuid]["connect_count"] == before[uuid], records[uuid]
            assert heartbeat(lab, uuid).get("failing_stage") in (None, ""), explain()

        # 2. one worker's routing removed: stage route, lost, cancelled
        broken, healthy = sorted(ours)
        worker = node_of(lab, ours[broken])
        assert worker in lab.layout.worker_hosts, (worker, explain())
        lab.site_nat.stop_keeper(worker)
        lab.site_nat.routing(worker, "remove")
        cut = time.monotonic()
        wait_for(
            f"{broken}'s heartbeat naming stage route",
            lambda: heartbeat(lab, broken).get("failing_stage") == "route",
            4 * INTERVAL,
            explain,
        )
        reason = (heartbeat(lab, broken).get("route") or {}).get("reason", "")
        print(
            f"{broken} on {worker}: stage route after {time.monotonic() - cut:.1f} s: {reason}"
        )
        assert reason, explain()

        def judged_and_cancelled() -> bool:
            log = cobald.log_path.read_text(errors="replace")
            lost = re.search(rf"drone {re.escape(broken)} is lost \(", log)
            return (
                bool(lost) and slurm_jobs(lab).get(ours[broken], ("",))[0] not in ACTIVE
            )

        took = wait_for(
            f"{broken} judged lost and its job ended",
            judged_and_cancelled,
            GRACE + 4 * INTERVAL + 30,
            explain,
        )
        print(f"{broken} lost and cancelled {took:.0f} s after stage route was named")
        log = cobald.log_path.read_text(errors="replace")
        line = re.search(rf"drone {re.escape(broken)} is lost \(.*", log)
        assert line and "route" in line.group(0), line
        assert slurm_jobs(lab).get(ours[healthy], ("",))[0] == "RUNNING", explain()
        assert pool_records(lab)[healthy]["connected"], explain()
        assert not re.search(rf"drone {re.escape(healthy)} is (lost|never)", log)
        assert "Traceback" not in log and "unexpected error" not in log, explain()
    finally:
        cobald.stop()
        for worker in lab.layout.worker_hosts:  # the routing step 2 removed
            lab.site_nat.routing(worker, "apply")
        for job, (state, name) in slurm_jobs(lab).items():
            if name.startswith("netlab-") and state in ACTIVE:
                lab.run("login", ["scancel", job], user=lab.drone_user)
        if os.environ.get("TNA_KEEP_LOGS"):
            shutil.copytree(tmp_path, os.environ["TNA_KEEP_LOGS"], dirs_exist_ok=True)


def check_probe(lab: Lab, config: Path) -> Any:
    """``tardis-netadapter check --probe`` from control, as an operator runs it."""
    return lab.run(
        "control",
        [sys.executable, "-m", "tardis_netadapter.cli", "check", "--probe"]
        + ["--job-timeout", "60", str(config)],
        timeout=150,
    )


def test_check_probe_runs_the_route_check_in_a_real_slurm_job(
    nat_lab: Lab, tmp_path: Path
) -> None:
    """`check --probe` runs the drone's own route check through srun on a
    worker, as the drone user: all ok with the site's routing, the missing
    rule named (with its fix) once a worker's routing is removed."""
    lab = nat_lab
    for worker in lab.layout.worker_hosts:  # whatever an earlier test removed
        assert lab.site_nat.routing(worker, "apply").returncode == 0
    config = write_config(lab, tmp_path, source=LAB_NAT_CONFIG)
    result = check_probe(lab, config)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "[ok  ] probe job ran on a worker of machine type cpu1" in out, out
    assert re.search(r"\[ok  \] route:via: .*10\.66\.1\.250", out), out
    assert re.search(r"\[ok  \] route:address: .*10\.66\.2\.100", out), out

    # every worker without the routing: whichever node srun picks fails
    for worker in lab.layout.worker_hosts:
        lab.site_nat.stop_keeper(worker)
        lab.site_nat.routing(worker, "remove")
    result = check_probe(lab, config)
    out = result.stdout
    print(out)
    assert result.returncode == 1, out
    assert re.search(r"\[FAIL\] route:rule: ip rule: no rule fwmark 0x1", out), out
    assert "tna-nat-routing" in out  # the fix names the site's unit
