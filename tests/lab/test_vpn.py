"""Issue 13: a drone in mode `vpn` through the lab's DMZ ocserv.

One lab for the module (its own name, one worker, torn down at the end). A
vpn drone is submitted with sbatch like the other lab tests' drones
(test_chain_support.Drone): openconnect runs in its private namespace on
worker1, through pasta to dmz (10.66.1.3) on tcp/udp 443, and the payload
(`vpncheck.sh`, then the condor_master stand-in) reaches the pool on the
outside through tun0. Checked:

  * tun0 has a 10.66.8.x address, DTLS is in use (heartbeat `vpn` object);
    the payload registers with the pool, and so does a static busybox client;
    the pool sees them from dmz's public address (masquerade), not the worker;
  * the lab's other user on worker1 has no tun0, cannot enter the drone's
    namespace and reaches nothing outside;
  * the password (the file's content) is in no rendered script, no `ps`
    line, no /proc/PID/environ of the drone user's processes, not in the
    job's log or heartbeat;
  * a wrong pin ends the drone in stage vpn with exit 25 and a line naming
    the pin the server has;
  * ocserv restarted mid-run: the VPN and a registration through it are back
    within 10 s;
  * the drone mounts the stand-in CVMFS with cvmfsexec (nested in its
    namespace) through the outside's squid, reached only through the VPN:
    squid logs the request from dmz's public address.
  * where user namespaces are unavailable (`dronens.userns_limited_job`),
    isolation preferred falls back to ocproxy: openconnect without a tun,
    ocproxy's SOCKS port on the worker's 127.0.0.1 and the payload's preload
    chain; the payload registers through it (from dmz's address), and the
    heartbeat says `preload`/`ocproxy` with the reason.

TNA_VPN_LAB names the module's lab (default `vpnbash`), so that two
checkouts can run this module at once without tearing down each other's lab.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tardis_netadapter_lab import Lab, dronens, teardown
from tardis_netadapter_lab import layout as L
from tardis_netadapter_lab.daemon import wait_for
from tardis_netadapter_lab.services import pool_state
from test_chain_support import (
    COLLECTOR,
    Drone,
    check_result,
    cvmfs_section,
    heartbeat,
    pool_records,
    processes,
    wait_gone,
)

from tardis_netadapter.config import load_profile
from tardis_netadapter.keepalive import derive_budget
from tardis_netadapter.render import render_drone_script

pytestmark = pytest.mark.lab

LAB_NAME = os.environ.get("TNA_VPN_LAB", "vpnbash")
NODE = "worker1"
NEEDED = ("ocserv", "ocpasswd", "openconnect", "certtool", "pasta", "nft", "slurmd")
OK = re.compile(r'"ok":\s*true')
POOL_PREFIX = L.VPN_POOL.rsplit(".", 1)[0] + "."  # "10.66.8."
#: the outside's squid (numeric: cvmfs resolves names itself), which a vpn
#: drone reaches only through the VPN (dmz masquerades onto the public net)
VPN_SQUID = f"http://{L.OUTSIDE_HTTP}:{L.SQUID_PORT}"

# The payload: what its own clients see, then the startd stand-in.
VPNCHECK = r"""#!/bin/bash
# vpncheck.sh UUID: the payload's view of the VPN
uuid=$1
out=$HOME/vpncheck-$uuid.out
{
  echo "uid=$(id -u)"
  echo "ld_preload=${LD_PRELOAD:-none}"
  echo "tun0=$(ip -4 -o addr show dev tun0 2>&1 | awk '{print $4}')"
  printf '{"op":"register","uuid":"%s","name":"%s","host":"vpncheck","cpus":1,"memory":1,"heartbeat_interval":600}\n' \
    "$uuid-busybox" "$uuid-busybox" >"$HOME/vpncheck-$uuid.req"
  echo "busybox_nc=$(timeout 5 /usr/bin/busybox nc -w 3 __POOL_ADDR__ __POOL_PORT__ <"$HOME/vpncheck-$uuid.req" 2>&1 | head -n 1)"
  rm -f "$HOME/vpncheck-$uuid.req"
  echo "done"
} >"$out" 2>&1
exec condor_master -f
"""

REGISTER = r"""
import json, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
s.sendall((json.dumps({"op": "register", "uuid": sys.argv[3], "name": sys.argv[3],
    "host": "vpn", "cpus": 1, "memory": 1, "heartbeat_interval": 600}) + "\n").encode())
print(s.makefile().readline().strip())
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """This module's own one-worker lab with the DMZ, always torn down."""
    if os.geteuid() != 0:
        pytest.skip("lab tests need root")
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    missing = [name for name in NEEDED if not shutil.which(name, path=path)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}: run scripts/install-system-deps")
    teardown(LAB_NAME)
    instance = Lab(name=LAB_NAME, workers=1, idle_timeout=30)
    try:
        instance.up()
        yield instance
    finally:
        instance.down()
        teardown(LAB_NAME)


@pytest.fixture(scope="module")
def vpncheck(lab: Lab) -> Path:
    path = lab.layout.home(lab.drone_user) / "vpncheck.sh"
    path.write_text(
        VPNCHECK.replace("__POOL_ADDR__", L.OUTSIDE_HTTP).replace(
            "__POOL_PORT__", str(L.COLLECTOR_PORT)
        )
    )
    os.chmod(path, 0o755)
    entry = pwd.getpwnam(lab.drone_user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def vpn_profile(lab: Lab, **vpn: Any) -> dict[str, Any]:
    return {
        "mode": "vpn",
        "firewall": {"idle_timeout": 30},
        "vpn": {
            "server": L.DMZ_SITE,
            "servercert": lab.vpn_pin,
            "user": lab.vpn_user,
            "password_file": str(lab.vpn_password_file),
            **vpn,
        },
        "pool": {"collector": COLLECTOR},
        "monitoring": {"heartbeat_interval": 5},
    }


def rendered(profile: dict[str, Any]) -> str:
    parsed = load_profile(json.loads(json.dumps(profile)))
    return render_drone_script(
        parsed,
        derive_budget(parsed),
        site_name="NetLab",
        machine_type="cpu1",
        job_id_variable="SLURM_JOB_ID",
    )


def work_dir(drone: Drone) -> Path:
    found = sorted(Path("/tmp").glob(f"tardis-drone.{drone.uuid}.*"))
    assert found, f"no work directory of {drone.uuid}"
    return found[0]


def register_inside(init: int, tag: str) -> str:
    """One registration from inside the drone's network namespace (root)."""
    result = subprocess.run(
        ["nsenter", "-t", str(init), "-n", "--", "/usr/bin/python3", "-c", REGISTER]
        + [L.OUTSIDE_HTTP, str(L.COLLECTOR_PORT), tag],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else ""


@pytest.fixture(scope="module")
def vpn_drone(lab: Lab, vpncheck: Path) -> Iterator[Drone]:
    tag = f"vpnbash-{uuid.uuid4().hex[:8]}"
    profile = vpn_profile(lab)
    profile["payload"] = {"command": ["bash", str(vpncheck), tag]}
    # cvmfsexec nests its own namespace in the drone's, and fetches through
    # the squid on the outside: only the VPN leads there
    profile["cvmfs"] = {**cvmfs_section("cvmfsexec"), "http_proxy": VPN_SQUID}
    drone = Drone(lab, tag, profile, sbatch_options=("-w", NODE)).submit()
    try:
        drone.wait_registered(timeout=60)
        yield drone
    finally:
        drone.cancel()
        deadline = time.monotonic() + 10
        while drone.leftovers() and time.monotonic() < deadline:
            time.sleep(0.2)
        # nothing: no process, no work directory (the roles stop inside
        # Slurm's KillWait, 2 s in the lab)
        assert not drone.leftovers(), f"{drone.leftovers()}\n{drone.output}"


def test_vpn_address_registration_and_static_client(lab: Lab, vpn_drone: Drone) -> None:
    result = check_result(lab, vpn_drone, "vpncheck")
    print(f"vpn payload: {result}")
    assert result["uid"] == str(pwd.getpwnam(lab.drone_user).pw_uid), result
    assert result["ld_preload"] == "none", result
    assert result["tun0"].startswith(POOL_PREFIX), result
    assert OK.search(result["busybox_nc"]), result  # a static client, no preload
    records = pool_records(lab)
    for name in (vpn_drone.uuid, f"{vpn_drone.uuid}-busybox"):
        record = records.get(name)
        assert record, f"pool has no {name}: {sorted(records)}"
        # dmz masquerades the VPN pool onto the public net
        assert record["remote"].startswith(f"{L.DMZ_PUBLIC}:"), record
    output = vpn_drone.output
    assert "stage isolation ready after" in output, output
    match = re.search(
        r"stage vpn ready after ([\d.]+)s \(([\d.]+)s since start\)", output
    )
    assert match, output
    print(f"stage vpn ready after {match.group(1)} s ({match.group(2)} s since start)")
    assert re.search(rf"vpn: tun0 {re.escape(POOL_PREFIX)}\d+ through ", output)
    wait_for(
        "a heartbeat with the vpn object",
        lambda: (heartbeat(lab, vpn_drone.uuid).get("vpn") or {}).get("address"),
        15,
        lambda: json.dumps(heartbeat(lab, vpn_drone.uuid)),
        0.5,
    )
    beat = heartbeat(lab, vpn_drone.uuid)
    print(f"heartbeat vpn: {beat['vpn']}, failing_stage {beat.get('failing_stage')}")
    assert beat["vpn"]["address"] == result["tun0"].split("/")[0], beat
    assert beat["vpn"]["transport"] == "dtls", beat
    assert beat["isolation"]["method"] == "namespace", beat


def test_cvmfs_mounts_through_the_vpn(lab: Lab, vpn_drone: Drone) -> None:
    # the script logs cvmfs ready once it sees the mount, which may come after
    # the payload inside it registered
    wait_for(
        "stage cvmfs ready in the log",
        lambda: "stage cvmfs ready after" in vpn_drone.output,
        20,
        lambda: vpn_drone.output,
        0.2,
    )
    output = vpn_drone.output
    stages = re.findall(r"stage (\w+) ready after", output)
    assert "cvmfs" in stages, output
    # the VPN comes first: cvmfs fetches through it
    assert stages.index("vpn") < stages.index("cvmfs"), stages
    match = re.search(r"stage cvmfs ready after ([\d.]+)s", output)
    assert match, output
    log = lab.layout.state_dir / "squid" / "outside" / "access.log"
    fetches = [
        line
        for line in (log.read_text().splitlines() if log.exists() else [])
        if ".cvmfspublished" in line and "lab.cern.ch" in line
    ]
    print(f"stage cvmfs ready after {match.group(1)} s; squid: {fetches[-1:]}")
    # squid's client column: dmz's public address (the VPN's masquerade),
    # never the worker (which cannot reach the outside at all)
    assert any(line.split()[2] == L.DMZ_PUBLIC for line in fetches), fetches
    assert "lost the pool" not in output, output


def test_other_user_cannot_use_the_vpn(lab: Lab, vpn_drone: Drone) -> None:
    links = lab.run(NODE, ["ip", "-o", "link"], user=lab.other_user)
    assert links.returncode == 0 and "tun0" not in links.stdout, links.stdout
    init = dronens.ns_init_pid(work_dir(vpn_drone))
    assert init, f"no namespace init of {vpn_drone.uuid}"
    entered = lab.run(
        NODE, ["nsenter", "-t", str(init), "-U", "-n", "true"], user=lab.other_user
    )
    assert entered.returncode != 0
    assert re.search(r"Operation not permitted|Permission denied", entered.stderr)
    reach = lab.run(
        NODE,
        ["/usr/bin/python3", "-c", REGISTER, L.OUTSIDE_HTTP, str(L.COLLECTOR_PORT)]
        + ["other-user"],
        user=lab.other_user,
        timeout=15,
    )
    print(f"other user: nsenter {entered.returncode}, pool {reach.returncode}")
    assert reach.returncode != 0, reach.stdout


def test_no_credential_in_script_ps_environ_or_log(lab: Lab, vpn_drone: Drone) -> None:
    secret = lab.vpn_password_file.read_text().strip()
    assert len(secret) >= 12
    assert secret not in rendered(vpn_drone.profile)
    ps = subprocess.run(
        ["ps", "-eo", "pid,user,args"], capture_output=True, text=True, check=True
    )
    assert secret not in ps.stdout
    uid = pwd.getpwnam(lab.drone_user).pw_uid
    scanned = 0
    openconnect = False
    for pid, argv in processes():
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        scanned += 1
        openconnect |= os.path.basename(argv[0]) == "openconnect"
        assert secret.encode() not in environ, (pid, argv)
        assert secret not in " ".join(argv), (pid, argv)
    print(f"scanned {scanned} processes of {lab.drone_user}")
    assert openconnect, "openconnect of the drone not found"
    assert secret not in vpn_drone.output
    assert secret not in json.dumps(heartbeat(lab, vpn_drone.uuid))


def test_ocserv_restart_heals_within_10_s(lab: Lab, vpn_drone: Drone) -> None:
    ns = work_dir(vpn_drone) / "ns"
    init = dronens.ns_init_pid(ns.parent)
    assert init
    assert register_inside(init, f"{vpn_drone.uuid}-before"), "no registration before"
    restarts_before = (
        (ns / "vpn.restarts").read_text() if (ns / "vpn.restarts").exists() else ""
    )
    started = time.monotonic()
    lab.restart_service("ocserv")
    listening = time.monotonic() - started
    healed = None
    n = 0
    while time.monotonic() - started < 30:
        state = (ns / "vpn.state").read_text().split()
        restarts = (
            (ns / "vpn.restarts").read_text() if (ns / "vpn.restarts").exists() else ""
        )
        if state[:1] == ["up"] and restarts != restarts_before:
            n += 1
            if register_inside(init, f"{vpn_drone.uuid}-after{n}"):
                healed = time.monotonic() - started
                break
        time.sleep(0.1)
    print(
        f"ocserv restarted (listening after {listening:.2f} s): VPN and a"
        f" registration through it back after {healed} s"
    )
    assert healed is not None, vpn_drone.output
    assert healed < 10, vpn_drone.output
    vpn_drone.wait_registered(timeout=15)  # the payload's own registration


def test_killed_outer_link_under_the_vpn_heals_within_10_s(
    lab: Lab, vpn_drone: Drone
) -> None:
    """The namespace's outer link (pasta or slirp4netns) killed under a VPN:
    the keeper starts it again and sends openconnect SIGUSR2 (reconnect now),
    so the VPN is back without waiting for dead peer detection (15 s here)."""
    ns = work_dir(vpn_drone) / "ns"
    init = dronens.ns_init_pid(ns.parent)
    assert init
    assert register_inside(init, f"{vpn_drone.uuid}-outer-before")
    outer = int((ns / "outer.child").read_text().split()[0])
    os.kill(outer, signal.SIGKILL)
    started = time.monotonic()
    healed = None
    n = 0
    while time.monotonic() - started < 30:
        n += 1
        if register_inside(init, f"{vpn_drone.uuid}-outer-after{n}"):
            healed = time.monotonic() - started
            break
        time.sleep(0.2)
    print(f"outer link killed: a registration through the VPN back after {healed} s")
    assert healed is not None, vpn_drone.output
    assert re.search(
        r"told the tunnel to reconnect .*openconnect \d+", vpn_drone.output
    ), vpn_drone.output
    assert healed < 10, vpn_drone.output


def test_wrong_pin_fails_in_stage_vpn_with_25(lab: Lab, vpncheck: Path) -> None:
    wrong = "pin-sha256:" + "A" * 43 + "="
    tag = f"vpnbash-pin-{uuid.uuid4().hex[:8]}"
    profile = vpn_profile(lab, servercert=wrong)
    profile["payload"] = {"command": ["bash", str(vpncheck), tag]}
    drone = Drone(lab, tag, profile, sbatch_options=("-w", NODE)).submit()
    started = time.monotonic()
    wait_gone(drone, 40)
    output = drone.output
    print(f"wrong pin: job ended after {time.monotonic() - started:.1f} s")
    line = re.search(r"stage vpn failed: server certificate mismatch: (.*)", output)
    assert line, output
    assert lab.vpn_pin in line.group(1) and wrong in line.group(1), line.group(0)
    assert re.search(r"exiting with status 25\s*$", output), output
    assert not drone.leftovers(), drone.leftovers()


UDP_BLOCK = f"""
table inet tna_test_udp_block {{
    chain input {{
        type filter hook input priority filter - 10; policy accept;
        iifname "{L.DMZ_SITE_IF}" udp dport {L.HTTPS_PORT} drop
    }}
}}
"""


def test_dtls_blocked_falls_back_to_tls(lab: Lab, vpncheck: Path) -> None:
    """A site firewall that drops UDP to the VPN server: openconnect stays on
    TLS, the payload registers all the same, and the heartbeat says tls."""
    blocked = lab.run("dmz", ["nft", "-f", "-"], input=UDP_BLOCK)
    assert blocked.returncode == 0, blocked.stderr
    tag = f"vpnbash-tls-{uuid.uuid4().hex[:8]}"
    profile = vpn_profile(lab)
    profile["payload"] = {"command": ["bash", str(vpncheck), tag]}
    drone = Drone(lab, tag, profile, sbatch_options=("-w", NODE)).submit()
    try:
        drone.wait_registered(timeout=60)
        wait_for(
            "a heartbeat with the vpn transport",
            lambda: (heartbeat(lab, drone.uuid).get("vpn") or {}).get("transport"),
            15,
            lambda: json.dumps(heartbeat(lab, drone.uuid)),
            0.5,
        )
        beat = heartbeat(lab, drone.uuid)
        print(f"UDP/443 dropped: heartbeat vpn {beat['vpn']}")
        assert beat["vpn"]["transport"] == "tls", beat
        assert pool_records(lab)[tag]["remote"].startswith(f"{L.DMZ_PUBLIC}:")
    finally:
        lab.run("dmz", ["nft", "delete", "table", "inet", "tna_test_udp_block"])
        drone.cancel()
        wait_gone(drone)


class LimitedDrone(Drone):
    """A drone whose job runs where user namespaces are unavailable to it
    (`dronens.userns_limited_job`, as tests/lab/test_capture_namespace.py)."""

    def submit(self) -> Drone:
        entry = pwd.getpwnam(self.lab.drone_user)
        job = dronens.userns_limited_job(
            rendered(self.profile), entry.pw_uid, entry.pw_gid
        )
        exports = (
            f"ALL,TardisDroneUuid={self.uuid},TardisDroneCores=1,TardisDroneMemory=200"
        )
        result = self.lab.run(
            "login",
            ["sbatch", "--parsable", "-o", f"drone-{self.uuid}.out"]
            + ["--export", exports, *self.sbatch_options],
            user=self.lab.drone_user,
            input=job,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        self.job_id = result.stdout.strip().split(";")[0]
        self.state = pool_state(self.lab.layout)
        return self


def test_fallback_without_namespaces_registers_through_ocproxy(
    lab: Lab, vpncheck: Path
) -> None:
    machine = Path("/proc/sys/user/max_user_namespaces").read_text()
    tag = f"vpnfb-{uuid.uuid4().hex[:8]}"
    profile = vpn_profile(lab)
    profile["payload"] = {"command": ["bash", str(vpncheck), tag]}
    drone = LimitedDrone(lab, tag, profile, sbatch_options=("-w", NODE))
    started = time.monotonic()
    seen: dict[str, Any] = {}
    try:
        drone.submit()
        record = drone.wait_registered(timeout=60)
        registered = time.monotonic() - started
        result = check_result(lab, drone, "vpncheck")

        def reported() -> bool:
            seen.update(heartbeat(lab, drone.uuid))
            return bool((seen.get("vpn") or {}).get("address")) and bool(
                (seen.get("isolation") or {}).get("reason")
            )

        wait_for(
            "the fallback in the heartbeat", reported, 20, lambda: json.dumps(seen), 0.5
        )
    finally:
        drone.cancel()
        deadline = time.monotonic() + 10
        while drone.leftovers() and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [entry for entry in drone.leftovers() if not entry.startswith("/tmp/")]
        assert not left, left
    output = drone.output
    print(f"fallback: registered {registered:.1f} s after submit; payload {result}")
    print(f"heartbeat isolation {seen['isolation']}, vpn {seen['vpn']}")
    # through the VPN: dmz masquerades the pool's view of it
    assert record["remote"].startswith(f"{L.DMZ_PUBLIC}:"), record
    assert re.search(
        r"stage isolation skipped: unprivileged network namespace not possible: "
        r".*; capture falls back to preload \(ocproxy\)",
        output,
    ), output
    match = re.search(r"vpn: ocproxy 127\.0\.0\.1:(\d+), (\S+) through ", output)
    assert match and match.group(2).startswith(POOL_PREFIX), output
    assert "stage vpn ready after" in output, output
    # the payload runs under the preload chain, without a tun device; a static
    # client is not captured (the fallback's documented limit)
    assert "libproxychains" in result["ld_preload"], result
    assert not result["tun0"].startswith(POOL_PREFIX), result
    assert not OK.search(result["busybox_nc"]), result
    isolation = seen["isolation"]
    assert (isolation["method"], isolation["tool"]) == ("preload", "ocproxy"), isolation
    assert "unshare" in isolation["reason"], isolation
    assert seen["vpn"]["address"] == match.group(2), seen
    assert seen["vpn"]["transport"] == "dtls", seen
    assert Path("/proc/sys/user/max_user_namespaces").read_text() == machine
