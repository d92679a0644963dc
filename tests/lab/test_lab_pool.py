"""A payload in a Slurm job registers with the pool stand-in through its chain."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from tardis_netadapter_lab import Lab
from tardis_netadapter_lab import layout as L
from tardis_netadapter_lab.services import pool_state

pytestmark = pytest.mark.lab

# ssh -D to login, then proxychains through the partner site's dante on 443:
# login itself may not open the collector port 9618.
PAYLOAD_JOB = f"""#!/bin/bash
port=$((20000 + RANDOM % 20000))
ssh -N -D 127.0.0.1:$port -o BatchMode=yes -o ExitOnForwardFailure=yes \\
    -o ServerAliveInterval=5 login &
tunnel=$!
for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
    sleep 0.1
done
conf=$(mktemp)
printf '%s\\n' strict_chain quiet_mode 'localnet 127.0.0.0/255.0.0.0' '[ProxyList]' \\
    "socks5 127.0.0.1 $port" "socks5 {L.OUTSIDE_SOCKS} {L.HTTPS_PORT}" >"$conf"
export CONDOR_CONFIG=ONLY_ENV
export _CONDOR_COLLECTOR_HOST={L.OUTSIDE_HTTP}:{L.COLLECTOR_PORT}
export _CONDOR_TardisDroneUuid="$DRONE_UUID"
export _CONDOR_CCB_HEARTBEAT_INTERVAL=2
timeout 8 proxychains4 -q -f "$conf" condor_master -f
echo "payload exit $?"
kill $tunnel
"""


def _drone(lab: Lab, drone_uuid: str) -> dict | None:
    try:
        state = json.loads(pool_state(lab.layout).read_text())
    except (OSError, ValueError):
        return None
    for record in state.get("drones", {}).values():
        if record.get("uuid") == drone_uuid:
            return record
    return None


def test_pool_sees_payload_registered_through_the_chain(lab: Lab) -> None:
    if not (lab.layout.bin_dir / "condor_master").exists():
        pytest.xfail("payload stand-in (standins/payload.py) not written yet")
    drone_uuid = f"labtest-{uuid.uuid4().hex[:8]}"
    submitted = lab.run(
        "login",
        ["sbatch", "--parsable", "-o", "payload-%j.out", "--export", "ALL,DRONE_UUID"],
        user=lab.drone_user,
        env={"DRONE_UUID": drone_uuid},
        input=PAYLOAD_JOB,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    deadline = time.monotonic() + 30
    record = None
    try:
        while time.monotonic() < deadline:
            record = _drone(lab, drone_uuid)
            if record and record.get("connected"):
                break
            time.sleep(0.3)
    finally:
        lab.run("login", ["scancel", job_id], user=lab.drone_user)
    output = lab.layout.home(lab.drone_user) / f"payload-{job_id}.out"
    log = output.read_text() if output.exists() else "(no output yet)"
    assert record is not None and record.get("connected"), log
    assert record.get("last_heard")
