"""A rendered mode-nat drone run for real on a stand-in worker (issue 14).

The worker is the throwaway network namespace of test_route_sh.py (made here
as root: nft marks user nobody's packets, ip rule/route send the mark to the
stand-in NAT router, which SNATs to 203.0.113.100 and holds the "pool" at
203.0.113.5:9618 and an address echo). The drone script is rendered from a
nat profile, run as nobody with `sleep` as its payload and the watchdog on a
2 s heartbeat: its records must show the route ok, then stage ``route``
failing with the reason once the ip rule is deleted (as a worker's link flap
deletes it), then ok again once it is back, while the drone keeps running.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from test_nat_check import ROUTER_SNAT
from test_route_sh import NOBODY, SETUP, WHY_NOT

from tardis_netadapter import render
from tardis_netadapter.config import load_profile_and_budget

pytestmark = pytest.mark.skipif(bool(WHY_NOT), reason=WHY_NOT or "runs")

UUID = "natsite-e2e0001"

# In the worker namespace: start the drone as nobody, follow its heartbeat
# record through the phases, stop the drone by its pid.
DRIVE = r"""
hb=$WORK/hb/$UUID.json
setpriv --reuid={nobody} --regid={nobody} --clear-groups env -i PATH="$PATH" \
    HOME="$WORK" TMPDIR="$WORK" TardisDroneUuid="$UUID" \
    bash "$WORK/drone.sh" >"$WORK/drone.log" 2>&1 &
drone=$!
# wait_for PHASE PATTERN: until the record matches (at most 30 s), print it
wait_for() {{
    local i
    for i in $(seq 150); do
        if grep -q -- "$2" "$hb" 2>/dev/null; then
            printf '%s %s\n' "$1" "$(cat "$hb")"
            return 0
        fi
        sleep 0.2
    done
    printf '%s TIMEOUT %s\n' "$1" "$(cat "$hb" 2>/dev/null)"
}}
wait_for ok '"failing_stage":null.*"route":{{"ok":true'
ip rule del fwmark 1 table 201
wait_for broken '"failing_stage":"route"'
ip rule add fwmark 1 table 201
wait_for healed '"failing_stage":null.*"route":{{"ok":true'
kill -0 "$drone" && echo "drone alive"
kill -TERM "$drone"
wait "$drone"
echo "drone exit $?"
"""


@pytest.fixture
def work():
    """A directory nobody can use (pytest's own tmp_path is root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="tna-nat-drone-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_nat_drone_reports_its_route_in_every_heartbeat(work: Path) -> None:
    (work / "hb").mkdir(parents=True)
    work.chmod(0o777)
    (work / "hb").chmod(0o777)
    profile, budget = load_profile_and_budget(
        {
            "mode": "nat",
            "nat": {
                "gateway": "10.66.1.250",
                "public_address": "203.0.113.100",
                "users": ["nobody"],
                "site_subnets": ["10.66.1.0/24"],
                "address_echo": "http://203.0.113.5:8080/",
            },
            "pool": {"collector": "203.0.113.5:9618", "ccb": False},
            "payload": {"command": ["sleep", "60"]},
            "monitoring": {"heartbeat_dir": str(work / "hb"), "heartbeat_interval": 2},
        }
    )
    script = render.render_drone_script(
        profile, budget, site_name="natsite", machine_type="cpu", job_id_variable="JOB"
    )
    (work / "drone.sh").write_text(script)
    result = subprocess.run(
        [
            "unshare",
            "-n",
            "bash",
            "-c",
            SETUP + ROUTER_SNAT + DRIVE.format(nobody=NOBODY),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env={
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "WORK": str(work),
            "UUID": UUID,
        },
    )
    log = (work / "drone.log").read_text() if (work / "drone.log").exists() else ""
    assert result.returncode == 0, result.stdout + result.stderr + log
    phases = {}
    for line in result.stdout.splitlines():
        phase, _, rest = line.partition(" ")
        phases[phase] = rest
    for phase in ("ok", "broken", "healed"):
        assert not phases[phase].startswith("TIMEOUT"), (phase, phases, log)
    ok = json.loads(phases["ok"])
    assert ok["route"] == {
        "ok": True,
        "via": "10.66.1.250",
        "seen": "203.0.113.100",
        "reason": "",
    }
    assert ok["stages"]["route"] == "ok" and ok["stages"]["tunnel"] == "skipped"
    broken = json.loads(phases["broken"])
    assert broken["stages"]["route"] == "failed"
    assert broken["route"]["ok"] is False
    assert broken["last_error"].startswith("ip rule: no rule fwmark 0x1 lookup tna_nat")
    healed = json.loads(phases["healed"])
    assert healed["last_ok"] >= broken["time"] and healed["stages"]["route"] == "ok"
    assert "drone alive" in result.stdout, log
    assert "stage route ready after" in log
    assert "the pool sees us as 203.0.113.100" in log
    assert "failing at stage route: ip rule: no rule" in log
