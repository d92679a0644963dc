"""Issue 12: a private network namespace per drone (`chain.capture: namespace`).

One lab (the session's), two long-running drones shared by the module, both
through chain (b) (worker -> ssh -L on login -> dante on outside:443 ->
collector :9618) with a squid forward, and each checked for several facts:

  * `preload` on worker2: today's LD_PRELOAD chain. The lab's other user on
    worker2 rides its SOCKS port, its squid forward and its forward to dante
    (today's hole, recorded); its payload's static busybox misses the chain
    and its UDP reaches a sink on worker2 (what LD_PRELOAD misses).
  * `namespace` on worker1: the same attempts by the other user are refused,
    nsenter into the drone's namespaces gets EPERM, nothing of the drone listens
    on worker1; a static busybox and an unmodified python3 reach the pool
    through dante with no LD_PRELOAD; UDP to the sink never arrives and the
    heartbeat counts it; killing the tunnel's ssh (host pid from its namespace
    pid, `dronens`) heals within 5 s.

The payload of both is `nscheck.sh` (written to the drone's home): it runs the
clients, writes what happened to ~/nscheck-<uuid>.out, then execs the
condor_master stand-in. The fallback drones (user namespaces unavailable:
`dronens.userns_limited_job`) run side by side on worker2.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tardis_netadapter_lab import Lab, dronens
from tardis_netadapter_lab import layout as L
from tardis_netadapter_lab.daemon import wait_for
from tardis_netadapter_lab.services import pool_state
from test_chain_support import (
    COLLECTOR,
    DANTE,
    LOGIN,
    Drone,
    check_result,
    cvmfs_section,
    heartbeat,
    pool_records,
    processes,
)

from tardis_netadapter.config import load_profile
from tardis_netadapter.keepalive import derive_budget
from tardis_netadapter.render import render_drone_script

pytestmark = pytest.mark.lab

NS_NODE = "worker1"
PRELOAD_NODE = "worker2"
SINK_PORT = 5999
SQUID = {"name": "squid", "host": "127.0.0.1", "port": L.SQUID_PORT}
HELLO = "hello from outside"
HELLO_URL = f"http://{L.OUTSIDE_HTTP}:{L.HTTP_PORT}/files/hello.txt"
PORTS = re.compile(
    r"tunnel: local ports socks 127\.0\.0\.1:(\d+), squid 127\.0\.0\.1:(\d+) .*"
    r"proxy 127\.0\.0\.1:(\d+) -> " + re.escape(f"{L.OUTSIDE_SOCKS}:{L.HTTPS_PORT}")
)
UDP_DATAGRAMS = 5
OUTER_LINKS = ("pasta", "passt", "slirp4netns")
OK = re.compile(r'"ok":\s*true')
#: the keeper's (the batch job's) last line; the namespace roles name theirs
KEEPER_EXIT = re.compile(r"exiting with status \d+$", re.MULTILINE)

# The payload: clients first (each bounded by a timeout), then the startd.
NSCHECK = r"""#!/bin/bash
# nscheck.sh UUID SINK_ADDR SINK_PORT: what a payload's own clients can reach
uuid=$1 sink=$2 port=$3
out=$HOME/nscheck-$uuid.out
register() {  # one pool registration line for a client named $1
  printf '{"op":"register","uuid":"%s","name":"%s","host":"nscheck","cpus":1,"memory":1,"heartbeat_interval":600}\n' "$1" "$1"
}
{
  echo "ld_preload=${LD_PRELOAD:-none}"
  echo "uid=$(id -u)"
  reply=$(register "$uuid-busybox" | timeout 5 /usr/bin/busybox nc -w 3 __POOL_ADDR__ __POOL_PORT__ 2>&1 | head -n 1)
  echo "busybox_nc=$reply"
  echo "busybox_wget=$(timeout 5 /usr/bin/busybox wget -q -O - '__HELLO_URL__?busybox-'"$uuid" 2>&1 | head -n 1)"
  /usr/bin/python3 - "$uuid" <<'PY'
import json, socket, sys
uuid = sys.argv[1]
try:
    s = socket.create_connection(("__POOL_ADDR__", __POOL_PORT__), timeout=5)
    s.sendall((json.dumps({"op": "register", "uuid": uuid + "-python",
        "name": uuid + "-python", "host": "nscheck", "cpus": 1, "memory": 1,
        "heartbeat_interval": 600}) + "\n").encode())
    print("python=" + s.makefile().readline().strip())
except OSError as error:
    print(f"python=error {error}")
PY
  /usr/bin/python3 - "$uuid" "$sink" "$port" <<'PY'
import socket, sys
uuid, sink, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
results = []
for i in range(__UDP_DATAGRAMS__):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(f"{uuid} {i}".encode(), (sink, port))
        results.append("sent")
    except OSError as error:
        results.append(error.strerror or str(error))
    finally:
        s.close()
print("udp=" + ",".join(results))
PY
  echo "done"
} >"$out" 2>&1
exec condor_master -f
"""


def nscheck_text() -> str:
    return (
        NSCHECK.replace("__POOL_ADDR__", L.OUTSIDE_HTTP)
        .replace("__POOL_PORT__", str(L.COLLECTOR_PORT))
        .replace("__HELLO_URL__", HELLO_URL)
        .replace("__UDP_DATAGRAMS__", str(UDP_DATAGRAMS))
    )


def profile(capture: str, **extra: Any) -> dict[str, Any]:
    """Chain (b) with a squid forward; localnet without the site net, so UDP
    to another worker is a leak for the namespace's rules to stop."""
    chain: dict[str, Any] = {"proxies": [DANTE], "localnet": ["127.0.0.0/8"]}
    if capture != "preload":
        chain["capture"] = capture
    result: dict[str, Any] = {
        "firewall": {"idle_timeout": 30},
        "tunnel": {"hops": [LOGIN], "forwards": [SQUID]},  # ports: auto
        "chain": chain,
        "pool": {"collector": COLLECTOR},
        "monitoring": {"heartbeat_interval": 5},
    }
    result.update(extra)
    return result


class Sink:
    """A UDP sink on worker2's site address: what arrives, by sender uuid."""

    def __init__(self, lab: Lab) -> None:
        self.address = lab.address(PRELOAD_NODE)
        code = (
            "import socket, sys\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.bind(({self.address!r}, {SINK_PORT}))\n"
            "print('ready', flush=True)\n"
            "while True:\n"
            "    data, peer = s.recvfrom(4096)\n"
            "    print(peer[0], data.decode(errors='replace'), flush=True)\n"
        )
        self.log = lab.layout.log_dir / "nscheck-udp-sink.log"
        with open(self.log, "w") as log:
            self.proc = lab.popen(
                PRELOAD_NODE, ["/usr/bin/python3", "-c", code], stdout=log
            )
        wait_for(
            "UDP sink", lambda: "ready" in self.log.read_text(), 10, self.text, 0.05
        )

    def text(self) -> str:
        return self.log.read_text()

    def received(self, tag: str) -> int:
        return sum(1 for line in self.text().splitlines() if f" {tag} " in line + " ")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def sink(lab: Lab) -> Iterator[Sink]:
    udp = Sink(lab)
    try:
        yield udp
    finally:
        udp.stop()


@pytest.fixture(scope="module")
def nscheck(lab: Lab) -> Path:
    path = lab.layout.home(lab.drone_user) / "nscheck.sh"
    path.write_text(nscheck_text())
    os.chmod(path, 0o755)
    entry = pwd.getpwnam(lab.drone_user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def start_checked_drone(
    lab: Lab, capture: str, node: str, nscheck: Path, sink: Sink
) -> Drone:
    tag = f"netlab-ns{capture[:3]}-{uuid.uuid4().hex[:8]}"
    extra: dict[str, Any] = {
        "payload": {
            "command": ["bash", str(nscheck), tag, sink.address, str(SINK_PORT)]
        }
    }
    if capture == "namespace":
        # cvmfsexec nests its own namespace in the drone's (as in
        # configs/capture-namespace.yml), through the squid forward inside
        extra["cvmfs"] = {**cvmfs_section("cvmfsexec"), "http_proxy": "forward:squid"}
    drone = Drone(
        lab,
        tag,
        profile(capture, **extra),
        sbatch_options=("-w", node),
    )
    return drone.submit()


def stop_drone(drone: Drone, check: bool = True) -> list[str]:
    """scancel; with `check`, fail when processes or the work dir are left."""
    drone.cancel()
    deadline = time.monotonic() + 10
    while drone.leftovers() and time.monotonic() < deadline:
        time.sleep(0.2)
    left = drone.leftovers()
    assert not (check and left), left
    return left


@pytest.fixture(scope="module")
def preload_drone(lab: Lab, nscheck: Path, sink: Sink) -> Iterator[Drone]:
    drone = start_checked_drone(lab, "preload", PRELOAD_NODE, nscheck, sink)
    try:
        drone.wait_registered(timeout=60)
        yield drone
    finally:
        stop_drone(drone)


def cvmfs_scaffolds(uid: int) -> set[Path]:
    """The cvmfsexec stand-in's /tmp/cvmfsexec-root-* of one uid."""
    scaffolds = Path(tempfile.gettempdir()).glob("cvmfsexec-root-*")
    return {path for path in scaffolds if path.stat().st_uid == uid}


@pytest.fixture(scope="module")
def old_scaffolds(lab: Lab) -> set[Path]:
    """Scaffolds already there before this module's drones ran: lab users'
    uids are reused by later labs, so one left by an earlier lab may carry
    this lab's drone uid."""
    return cvmfs_scaffolds(pwd.getpwnam(lab.drone_user).pw_uid)


@pytest.fixture(scope="module")
def ns_drone(
    lab: Lab, nscheck: Path, sink: Sink, old_scaffolds: set[Path]
) -> Iterator[Drone]:
    drone = start_checked_drone(lab, "namespace", NS_NODE, nscheck, sink)
    try:
        drone.wait_registered(timeout=60)
        yield drone
    finally:
        drone.cancel()  # what is left afterwards: the module's last test


# -- helpers -------------------------------------------------------------------


def ports_of(drone: Drone) -> dict[str, int]:
    """The drone's SOCKS port, its squid forward and its -L forward to dante."""
    match = PORTS.search(drone.output)
    assert match, drone.output
    return dict(zip(("socks", "squid", "dante"), map(int, match.groups())))


def other_user_attempts(
    lab: Lab, node: str, ports: dict[str, int]
) -> dict[str, tuple[int, str]]:
    """What the lab's other user gets through each of a drone's local ports."""
    attempts = {
        "socks": ["--socks5-hostname", f"127.0.0.1:{ports['socks']}"],
        "squid": ["-x", f"http://127.0.0.1:{ports['squid']}"],
        "dante": ["--socks5-hostname", f"127.0.0.1:{ports['dante']}"],
    }
    results = {}
    for name, options in attempts.items():
        result = lab.run(
            node,
            ["curl", "-sS", "--max-time", "5", *options, HELLO_URL],
            user=lab.other_user,
            timeout=15,
        )
        results[name] = (result.returncode, (result.stdout + result.stderr).strip())
    return results


def drone_dir(drone: Drone) -> str:
    return drone.work_file("ssh_config").removesuffix("/ssh_config")


def worker_pid(lab: Lab, node: str) -> int:
    """A process in the worker's network namespace (its slurmd)."""
    pid = lab.status()["services"][f"slurmd-{node}"]["pid"]
    assert pid, f"slurmd of {node} not running"
    return int(pid)


# -- today: a preload drone ------------------------------------------------------


def test_other_user_rides_a_preload_drone_today(lab: Lab, preload_drone: Drone) -> None:
    """Today's hole (recorded): every local port of a preload drone is open to
    any user of its worker, and leads out of the site."""
    results = other_user_attempts(lab, PRELOAD_NODE, ports_of(preload_drone))
    print(f"preload drone, other user on {PRELOAD_NODE}: {results}")
    for name, (code, text) in results.items():
        assert code == 0 and HELLO in text, (name, code, text)


def test_preload_payload_misses_static_clients_and_udp(
    lab: Lab, preload_drone: Drone, sink: Sink
) -> None:
    """What LD_PRELOAD misses: a static binary goes direct (and fails on a
    worker without a route); UDP leaves the worker."""
    result = check_result(lab, preload_drone, "nscheck")
    print(f"preload payload: {result}")
    assert "proxychains" in result["ld_preload"] or "tsocks" in result["ld_preload"]
    assert not OK.search(result["busybox_nc"]), result  # no route: not captured
    assert not result["busybox_wget"].startswith(HELLO), result
    assert OK.search(result["python"]), result  # dynamic: captured by LD_PRELOAD
    assert result["udp"] == ",".join(["sent"] * UDP_DATAGRAMS), result
    wait_for(
        "preload UDP at the sink",
        lambda: sink.received(preload_drone.uuid) == UDP_DATAGRAMS,
        5,
        sink.text,
        0.1,
    )


# -- capture namespace -----------------------------------------------------------


def test_other_user_refused_by_a_namespace_drone(lab: Lab, ns_drone: Drone) -> None:
    """Done when 1: every attempt that succeeds today is refused; the drone's
    namespaces cannot be entered; nothing of it listens on the worker."""
    ports = ports_of(ns_drone)
    results = other_user_attempts(lab, NS_NODE, ports)
    print(f"namespace drone, other user on {NS_NODE}: {results}")
    for name, (code, text) in results.items():
        # 7: curl could not connect (refused at once: nothing listens there)
        assert code == 7 and "after 0 ms" in text, (name, code, text)
    init = dronens.ns_init_pid(drone_dir(ns_drone))
    assert init, f"no namespace init of {ns_drone.uuid}"
    entered = lab.run(
        NS_NODE,
        ["nsenter", "-t", str(init), "-U", "-n", "true"],
        user=lab.other_user,
    )
    print(
        f"other user: nsenter -t {init} -U -n: {entered.returncode} {entered.stderr.strip()}"
    )
    assert entered.returncode != 0
    assert re.search(r"Operation not permitted|Permission denied", entered.stderr)
    drone_uid = pwd.getpwnam(lab.drone_user).pw_uid
    listeners = dronens.tcp_listeners(worker_pid(lab, NS_NODE))
    outer = [
        pid
        for pid, argv in processes()
        if os.path.basename(argv[0]) in OUTER_LINKS and _uid(pid) == drone_uid
    ]
    assert outer, "no outer link (pasta/slirp4netns) of the drone found"
    outer_sockets = set().union(*(dronens.socket_inodes(pid) for pid in outer))
    owned = [
        entry
        for entry in listeners
        if entry.uid == drone_uid or entry.inode in outer_sockets
    ]
    print(f"{NS_NODE} listeners: {[(e.address, e.port, e.uid) for e in listeners]}")
    assert not owned, owned


def _uid(pid: int) -> int:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return -1


def test_static_and_python_clients_captured_by_the_namespace(
    lab: Lab, ns_drone: Drone
) -> None:
    """Done when 2: busybox-static and python3 reach the pool through dante."""
    result = check_result(lab, ns_drone, "nscheck")
    print(f"namespace payload: {result}")
    assert result["ld_preload"] == "none", result
    assert result["uid"] == str(pwd.getpwnam(lab.drone_user).pw_uid), result
    assert OK.search(result["busybox_nc"]), result
    assert result["busybox_wget"] == HELLO, result
    assert OK.search(result["python"]), result
    records = pool_records(lab)
    for client in ("busybox", "python"):
        record = records.get(f"{ns_drone.uuid}-{client}")
        assert record, f"pool has no {client} registration: {sorted(records)}"
        assert record["remote"].startswith(f"{L.OUTSIDE_SOCKS}:"), record  # via dante
    payload = records[ns_drone.uuid]
    assert payload["remote"].startswith(f"{L.OUTSIDE_SOCKS}:"), payload
    assert "stage cvmfs ready after" in ns_drone.output, ns_drone.output
    # the ssh, redsocks and payload all run inside the drone's namespace
    inside = {
        os.path.basename(p.argv[0])
        for p in dronens.ns_processes(drone_dir(ns_drone))
        if p.argv
    }
    print(f"inside the namespace: {sorted(inside)}")
    assert {"ssh", "redsocks"} <= inside, inside


def test_udp_does_not_leave_and_is_counted(
    lab: Lab, ns_drone: Drone, sink: Sink
) -> None:
    """Done when 3: UDP to another worker never arrives; the heartbeat counts it."""
    result = check_result(lab, ns_drone, "nscheck")
    assert "sent" not in result["udp"].split(","), result  # EPERM from the rules
    assert sink.received(ns_drone.uuid) == 0, sink.text()
    seen: dict[str, Any] = {}

    def counted() -> bool:
        seen.update(heartbeat(lab, ns_drone.uuid))
        isolation = seen.get("isolation") or {}
        return (isolation.get("leaks_blocked") or 0) >= UDP_DATAGRAMS

    took = wait_for(
        "leaks_blocked in the heartbeat", counted, 20, lambda: json.dumps(seen), 0.5
    )
    print(f"heartbeat isolation {seen.get('isolation')} ({took:.1f}s)")
    assert seen["isolation"]["method"] == "namespace", seen
    assert sink.received(ns_drone.uuid) == 0, sink.text()


class LimitedDrone(Drone):
    """A drone whose job runs where user namespaces are unavailable to it
    (`dronens.userns_limited_job`): as on JURECA, without unprivileged userns."""

    def submit(self) -> Drone:
        profile = load_profile(json.loads(json.dumps(self.profile)))
        script = render_drone_script(
            profile,
            derive_budget(profile),
            site_name="NetLab",
            machine_type="cpu1",
            job_id_variable="SLURM_JOB_ID",
        )
        entry = pwd.getpwnam(self.lab.drone_user)
        job = dronens.userns_limited_job(script, entry.pw_uid, entry.pw_gid)
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


def job_exit_code(lab: Lab, job_id: str) -> str:
    """ExitCode=N:S of a finished job (slurmctld keeps it for MinJobAge)."""
    shown = lab.run("login", ["scontrol", "show", "job", job_id])
    match = re.search(r"ExitCode=(\d+:\d+)", shown.stdout)
    return match.group(1) if match else shown.stdout + shown.stderr


def test_fallback_preferred_works_required_exits_15(lab: Lab) -> None:
    """Done when 4: user namespaces unavailable (max_user_namespaces=1 in a
    throwaway user namespace around the job; the machine's setting untouched)."""
    machine = Path("/proc/sys/user/max_user_namespaces").read_text()
    tag = uuid.uuid4().hex[:8]
    preferred = LimitedDrone(
        lab,
        f"netlab-nsfbp-{tag}",
        profile("namespace", isolation="preferred"),
        sbatch_options=("-w", PRELOAD_NODE),
    )
    required = LimitedDrone(
        lab,
        f"netlab-nsfbr-{tag}",
        profile("namespace", isolation="required"),
        sbatch_options=("-w", PRELOAD_NODE),
    )
    try:
        preferred.submit()
        required.submit()
        record = preferred.wait_registered(timeout=60)
        assert record["remote"].startswith(f"{L.OUTSIDE_SOCKS}:"), record
        wait_for(
            "the required drone's end",
            lambda: "exiting with status" in required.output,
            30,
            lambda: required.output,
            0.2,
        )
        seen: dict[str, Any] = {}

        def fell_back() -> bool:
            seen.update(heartbeat(lab, preferred.uuid))
            return bool((seen.get("isolation") or {}).get("reason"))

        wait_for(
            "the fallback in the heartbeat",
            fell_back,
            20,
            lambda: json.dumps(seen),
            0.5,
        )
    finally:
        for drone in (preferred, required):
            stop_drone(drone)
    isolation = seen["isolation"]
    print(f"preferred: heartbeat isolation {isolation}")
    print("required: " + " | ".join(required.output.splitlines()[-3:]))
    assert isolation["method"] == "preload", isolation
    assert isolation["tool"] == "proxychains", isolation
    assert "falls back to preload" in preferred.output, preferred.output
    assert "stage isolation failed" in required.output, required.output
    assert "exiting with status 15" in required.output, required.output
    assert job_exit_code(lab, required.job_id) == "15:0"
    assert Path("/proc/sys/user/max_user_namespaces").read_text() == machine


def test_killed_tunnel_ssh_heals_within_5_s(lab: Lab, ns_drone: Drone) -> None:
    """Done when 5 (first half): the tunnel's ssh runs inside the namespace;
    killed by its host pid (mapped from the namespace), the chain is back
    within 5 s and the payload registers again."""
    directory = drone_dir(ns_drone)
    inside = dronens.ns_processes(directory)
    ssh = [
        p
        for p in inside
        if p.argv and os.path.basename(p.argv[0]) == "ssh" and "-N" in p.argv
    ]
    payload = [p for p in inside if any("condor_master" in arg for arg in p.argv)]
    assert len(ssh) == 1 and payload, inside
    init = dronens.ns_init_pid(directory)
    assert init
    assert dronens.host_pid(directory, ssh[0].ns_pid) == ssh[0].host_pid
    assert ssh[0].ns_pid != ssh[0].host_pid  # a pid file inside would lie outside
    assert pool_through_chain(lab, init)
    count = (pool_records(lab).get(ns_drone.uuid) or {}).get("connect_count", 1)
    os.kill(ssh[0].host_pid, signal.SIGKILL)
    t0 = time.monotonic()
    while not pool_through_chain(lab, init):
        assert time.monotonic() - t0 < 5, ns_drone.output
        time.sleep(0.05)
    back = time.monotonic() - t0
    ns_drone.wait_registered(timeout=20, count=count + 1)
    again = time.monotonic() - t0
    print(
        f"{ns_drone.uuid}: chain usable {back:.2f}s, payload registered {again:.2f}s after kill -9 ssh"
    )
    after = [
        p
        for p in dronens.ns_processes(directory)
        if p.argv and os.path.basename(p.argv[0]) == "ssh" and "-N" in p.argv
    ]
    assert after and after[0].host_pid != ssh[0].host_pid


def test_killed_outer_link_heals_within_5_s(lab: Lab, ns_drone: Drone) -> None:
    """The namespace's one outer link (pasta) killed: its supervisor starts it
    again, the tunnel reconnects through it, and the chain is back within 5 s."""
    directory = drone_dir(ns_drone)
    init = dronens.ns_init_pid(directory)
    assert init and pool_through_chain(lab, init)
    child = Path(directory, "ns", "outer.child").read_text().split()[0]
    outer = int(child)
    # pasta runs as /usr/bin/passt.avx2 where the CPU has AVX2
    assert os.path.basename(os.readlink(f"/proc/{outer}/exe")).startswith(OUTER_LINKS)
    os.kill(outer, signal.SIGKILL)
    t0 = time.monotonic()
    while not pool_through_chain(lab, init):
        assert time.monotonic() - t0 < 5, ns_drone.output
        time.sleep(0.05)
    back = time.monotonic() - t0
    print(f"{ns_drone.uuid}: chain usable {back:.2f}s after kill -9 of the outer link")
    again = int(Path(directory, "ns", "outer.child").read_text().split()[0])
    assert again != outer
    assert "outer link" in ns_drone.output, ns_drone.output


INFO = (
    "import socket, sys\n"
    "s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)\n"
    's.sendall(b\'{"op":"info"}\\n\')\n'
    "print(s.makefile().readline())\n"
)


def pool_through_chain(lab: Lab, init: int) -> bool:
    """One pool request from inside the drone's network namespace, as the
    drone user (entering through the namespace's own user namespace, which the
    drone user owns): captured like the payload's connections. A connect alone
    proves nothing (redsocks accepts before its upstream is asked)."""
    result = lab.run(
        NS_NODE,
        # --preserve-credentials: the namespace denies setgroups (unshare -r)
        ["nsenter", "-t", str(init), "-U", "-n", "--preserve-credentials"]
        + ["/usr/bin/python3", "-c", INFO, L.OUTSIDE_HTTP, str(L.COLLECTOR_PORT)],
        user=lab.drone_user,
        timeout=10,
    )
    return result.returncode == 0 and bool(OK.search(result.stdout))


def test_namespace_drone_leaves_nothing_on_scancel(
    lab: Lab, ns_drone: Drone, old_scaffolds: set[Path]
) -> None:
    """Last: scancel (SIGTERM to every process of the job, SIGKILL after the
    lab's KillWait=2 s) ends the namespace, pasta and the work directory."""
    directory = drone_dir(ns_drone)
    t0 = time.monotonic()
    left = stop_drone(ns_drone, check=False)
    took = time.monotonic() - t0
    print(f"{ns_drone.uuid}: scancel -> {took:.1f}s, left {left}")
    assert not dronens.ns_processes(directory)
    assert not left, left
    # every role stopped what it started and said so, the keeper (which
    # removes the work directory) last, inside Slurm's KillWait
    assert KEEPER_EXIT.search(ns_drone.output), ns_drone.output
    for role in ("init", "drone"):
        assert f"exiting with status 143 (namespace role {role})" in ns_drone.output
    # cvmfsexec inside the namespace had time to clean up after itself
    uid = pwd.getpwnam(lab.drone_user).pw_uid
    left = sorted(cvmfs_scaffolds(uid) - old_scaffolds)
    assert not left, f"{left}\n{ns_drone.output}"
