"""A real `cobald` daemon drives one drone in mode `vpn` (issue 13) end to end.

Like test_cobald_daemon.py, but with configs/lab-vpn.yml (the lab's name and
its ocserv's pin filled in by write_config): COBalD/TARDIS on the control host
submit through the real SSHExecutor to the lab's Slurm; the drone logs in to
dmz's ocserv with openconnect inside its namespace, mounts the stand-in CVMFS
through the VPN (cvmfsexec, the outside's squid), and its payload registers
with the pool through tun0, so TARDIS sees it Available. Then the pool
reports it idle: TARDIS drains it and Slurm's job ends. One drone (the
config's maximum), to keep the added time small.

Asserted on TARDIS's registry, Slurm (squeue), the pool stand-in (the drone's
connection comes from dmz's public address, where dmz masquerades the VPN
pool), the drone's heartbeat (`vpn` object: a 10.66.8.x address over DTLS)
and its job output (stages vpn and cvmfs ready).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tardis_netadapter_lab import Lab
from tardis_netadapter_lab import layout as L
from tardis_netadapter_lab.daemon import (
    LAB_VPN_CONFIG,
    CobaldDaemon,
    pool_request,
    slurm_jobs,
    write_config,
)
from test_chain_support import heartbeat

pytestmark = [pytest.mark.lab, pytest.mark.slow]

POOL_PREFIX = L.VPN_POOL.rsplit(".", 1)[0] + "."  # "10.66.8."


def wait_for(what: str, check: Callable[[], bool], timeout: float, explain) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    pytest.fail(
        f"{what} not reached within {timeout:.0f} s\n{explain()}", pytrace=False
    )


def pool_record(lab: Lab, uuid: str) -> dict[str, Any]:
    answer = pool_request(lab, {"op": "query"})
    for record in answer.get("drones", []) if isinstance(answer, dict) else []:
        if record.get("uuid") == uuid:
            return record
    return {}


def test_cobald_daemon_runs_a_vpn_drone(lab: Lab, tmp_path: Path) -> None:
    config = write_config(lab, tmp_path, source=LAB_VPN_CONFIG)
    assert lab.vpn_pin in config.read_text()
    cobald = CobaldDaemon(lab, tmp_path, config)
    home = lab.layout.home(lab.drone_user)
    ours: dict[str, str] = {}

    def job_output() -> str:
        paths = [home / f"tardis-{job}.out" for job in ours.values()]
        return "\n".join(p.read_text() for p in paths if p.exists())

    def explain() -> str:
        outputs = "\n".join(
            f"--- {path.name}\n{path.read_text()[-2000:]}"
            for path in sorted(home.glob("tardis-*.out"))[-1:]
        )
        return (
            f"drones={cobald.drones()}\nslurm={slurm_jobs(lab)}\n"
            f"{outputs}\n--- cobald.log (tail)\n{cobald.log_tail()}"
        )

    daemon = cobald.start().process
    started = time.monotonic()
    try:
        # 1. TARDIS submits the drone; its payload registers through the VPN;
        #    busy (load 1), it becomes Available in TARDIS.
        def available() -> bool:
            ours.update(cobald.busy_and_available())
            return bool(ours)

        wait_for("a vpn drone in AvailableState", available, 180, explain)
        up_after = time.monotonic() - started
        ((uuid, job),) = ours.items()
        assert slurm_jobs(lab).get(job, ("",))[0] == "RUNNING", explain()
        record = pool_record(lab, uuid)
        # dmz masquerades the VPN pool onto the public net: the pool sees dmz
        assert record.get("connected"), (record, explain())
        assert record["remote"].startswith(f"{L.DMZ_PUBLIC}:"), record
        wait_for(
            "a heartbeat with the vpn object",
            lambda: bool((heartbeat(lab, uuid).get("vpn") or {}).get("address")),
            30,
            lambda: json.dumps(heartbeat(lab, uuid)) + "\n" + explain(),
        )
        vpn = heartbeat(lab, uuid)["vpn"]
        assert vpn["address"].startswith(POOL_PREFIX), vpn
        assert vpn["transport"] == "dtls", vpn
        output = job_output()
        stages = re.findall(r"stage (\w+) ready after", output)
        assert {"isolation", "vpn", "cvmfs"} <= set(stages), output
        assert stages.index("vpn") < stages.index("cvmfs"), stages
        print(
            f"vpn drone {uuid} (job {job}) Available after {up_after:.0f} s:"
            f" tun0 {vpn['address']} over {vpn['transport']}, pool sees"
            f" {record['remote']}"
        )

        # 2. Demand drops: the pool reports the drone idle, TARDIS drains it
        #    and removes it.
        drain_start = time.monotonic()
        pool_request(lab, {"op": "set_load", "uuid": uuid, "load": 0.0})

        def gone() -> bool:
            assert daemon.poll() is None, f"cobald exited ({daemon.returncode})"
            return uuid not in cobald.drones()

        wait_for("the vpn drone drained and gone", gone, 180, explain)
        active = ("RUNNING", "PENDING", "COMPLETING", "CONFIGURING")
        assert slurm_jobs(lab).get(job, ("",))[0] not in active, explain()
        print(f"drained and gone after {time.monotonic() - drain_start:.0f} s")
        log = cobald.log_tail(1_000_000)
        assert "Traceback" not in log and "unexpected error" not in log, explain()
    finally:
        cobald.stop()
        for job in ours.values():
            lab.run("login", ["scancel", job], user=lab.drone_user)
        # a drone submitted but never Available: not in `ours`
        for job, (state, name) in slurm_jobs(lab).items():
            if name.startswith("netlab-") and state in ("RUNNING", "PENDING"):
                lab.run("login", ["scancel", job], user=lab.drone_user)
        if os.environ.get("TNA_KEEP_LOGS"):
            shutil.copytree(tmp_path, os.environ["TNA_KEEP_LOGS"], dirs_exist_ok=True)
