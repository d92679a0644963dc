"""Issue 11 in the lab: a changed login host key is refused and named as such.

A drone is submitted by hand (tests/lab/test_chain_support.py) with a
``tunnel.known_hosts`` whose entry for the login node holds another key, as
after a reinstall of the login node or an attack. Asserted: ssh refuses, the
drone's supervisor keeps refusing (several ssh starts, the tunnel never up,
the job still RUNNING), and the path ``tardis-netadapter status`` takes from
the heartbeat to its table (the shared home's records, ``SiteMonitor``,
``make_row``, ``render_table``) shows ``host key mismatch`` for the drone.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Optional

import pytest
from tardis_netadapter_lab import Lab
from tardis_netadapter_lab import layout as L
from test_chain_support import COLLECTOR, DANTE, LOGIN, Drone

from tardis_netadapter.connectivity.collect import BEGIN, END, parse_collection
from tardis_netadapter.connectivity.monitor import SiteMonitor
from tardis_netadapter.connectivity.report import make_row, render_table
from tardis_netadapter.connectivity.verdict import JobView, Timing

pytestmark = pytest.mark.lab

#: the drone's records, each 2 s; the mismatch must show within this
WAIT = 90


def changed_known_hosts(lab: Lab, tmp_path: Path) -> str:
    """A known_hosts in the drone's home naming the login node with a new key."""
    key = tmp_path / "other_host_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key)],
        check=True,
    )
    kind, blob = key.with_suffix(".pub").read_text().split()[:2]
    dot_ssh = lab.layout.home(lab.drone_user) / ".ssh"
    path = dot_ssh / f"known_hosts.changed-{tmp_path.name[-8:]}"
    path.write_text(f"login,{L.LOGIN_SITE},{L.LOGIN_PUBLIC} {kind} {blob}\n")
    shutil.chown(path, lab.drone_user, lab.drone_user)
    return f"~/.ssh/{path.name}"


def record_of(lab: Lab, drone_uuid: str) -> Optional[dict[str, Any]]:
    path = (
        lab.layout.home(lab.drone_user)
        / ".tardis-netadapter/heartbeats"
        / f"{drone_uuid}.json"
    )
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # not yet, or replaced while read
        return None


def test_changed_login_host_key_is_refused_and_status_says_so(
    lab: Lab, tmp_path: Path, drones: list[Drone]
) -> None:
    known_hosts = changed_known_hosts(lab, tmp_path)
    drone = Drone(
        lab,
        f"netlab-hostkey-{uuid.uuid4().hex[:8]}",
        {
            "firewall": {"idle_timeout": lab.idle_timeout},
            "tunnel": {"hops": [LOGIN], "known_hosts": known_hosts},
            "chain": {"proxies": [DANTE], "localnet": ["127.0.0.0/8", L.SITE_NET]},
            "pool": {"collector": COLLECTOR},
            "monitoring": {"heartbeat_interval": 2},
        },
    ).submit()
    drones.append(drone)
    started = time.time()
    record: Optional[dict[str, Any]] = None
    while time.time() - started < WAIT:
        record = record_of(lab, drone.uuid)
        error = (record or {}).get("path_error") or {}
        if error.get("class") == "host key mismatch" and record["restarts"] >= 2:
            break
        time.sleep(1)
    assert record is not None, drone.output
    seen = round(time.time() - started, 1)
    print(f"{drone.uuid}: path_error {record['path_error']} after {seen} s")
    assert record["path_error"]["class"] == "host key mismatch", (record, drone.output)
    assert "has changed" in record["path_error"]["detail"], record
    # the supervisor keeps refusing: several starts, never up, the job lives
    assert record["restarts"] >= 2, (record, drone.output)
    assert record["failing_stage"] == "tunnel" and record["last_ok"] is None, record
    assert drone.output.count("REMOTE HOST IDENTIFICATION HAS CHANGED") >= 2
    assert "stage tunnel ready" not in drone.output
    queue = lab.run(
        "login", ["squeue", "-h", "-j", drone.job_id, "-o", "%T"], user=lab.drone_user
    )
    assert queue.stdout.strip() == "RUNNING", queue

    # what `status` shows: the same records through the adapter's monitor
    monitor = SiteMonitor("~/.tardis-netadapter/heartbeats", Timing(2, 60, 300))
    now = time.time()
    collection = parse_collection(f"{BEGIN} {now}\n{json.dumps(record)}\n{END}")
    monitor.store.update(collection)
    judgement = monitor.judge({drone.uuid: JobView(True, started)})[drone.uuid]
    row = make_row(
        drone.uuid, drone.job_id, "RUNNING", judgement, monitor.store.get(drone.uuid)
    )
    table = render_table([row], "NetLab")
    print(table)
    assert row.path_error == "host key mismatch", row
    assert "host key mismatch" in table
    assert judgement.reason.startswith("host key mismatch: "), judgement
