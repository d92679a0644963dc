#!/usr/bin/env python3
"""Throughput, short-connection cost and CPU per GB of the drone's chains, in the lab.

The worker-login link is limited with tbf (1 Gbit/s, 10 Gbit/s, or none:
veth speed). A real drone (rendered script, sbatch) brings up its tunnel on
the local ports it chose itself (``auto``), once per chain and per
``tunnel.parallel`` setting; iperf3 then runs on the worker with 1 and 8
parallel streams along each path:

  direct   worker -> iperf3 on login (a port the site firewall lets workers use)
  a        worker -> proxychains (the drone's own conf) -> ssh -D on login
           -> iperf3 on outside:443
  b        worker -> proxychains -> ssh -L on login to dante on outside:443
           -> iperf3 on outside:5201
  c        worker -> proxychains -> ssh -D on the gateway sshd on outside:443,
           reached through login (ProxyJump) -> iperf3 on outside:5201
  b4       (only when asked for) b with dante spoken to as SOCKS4

Each chain is captured as the profile's ``chain.capture`` says (``--capture``):
``preload`` (proxychains, LD_PRELOAD, in the worker's own network) and, for
the chains in ``--ns-chains`` (default b), ``namespace`` (issue 12): the
drone's ssh and payload in a private user + network namespace whose only
link to the worker is pasta, every TCP connection redirected by nft to
redsocks and on into the tunnel. Namespace rows run iperf3 and the
short-connection client INSIDE that namespace, as the drone user in the
payload's own (nested) user namespace, with no LD_PRELOAD: ``nsenter
--preserve-credentials -U -n -m -t INIT`` (the namespace's root userns,
owned by the drone user: the payload's nested one does not own the netns,
so it cannot be entered through), then ``nsenter --preserve-credentials
-U -t DRONE`` into the payload's userns. A ``direct`` row from inside the
namespace (worker -> pasta -> login, no tunnel: the site net is localnet)
shows what the outer link alone costs.

For every run the CPU time of each process on the path is read from
/proc/PID/stat (ssh on the worker, sshd on login and on the gateway, dante)
and from iperf3's own report (client and server), and given as CPU-seconds
per GB carried, beside the cost of AES-128-GCM alone on this CPU
(``openssl speed -evp aes-128-gcm``). Then each path's median cost of short
connections (connect, 32 bytes there and back, close) against an echo server.
Everything runs inside a lab of its own, torn down at the end.

    python benchmarks/chain_throughput.py [--rates 1gbit,10gbit,none]
        [--streams 1,8] [--chains a,b,c] [--parallel 1,2] [--seconds 5]
        [--short 200] [--capture preload,namespace] [--ns-chains b]

Short form (what tests/lab/test_chain_benchmark.py runs, so this cannot rot;
every chain once, through two parallel connections, and chain b once more
in namespace capture):

    python benchmarks/chain_throughput.py --rates 1gbit --streams 1
        --parallel 2 --seconds 1 --short 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple, Optional, TypeVar

from tardis_netadapter_lab import Lab, dronens
from tardis_netadapter_lab import layout as L
from tardis_netadapter_lab.netns import is_listening

from tardis_netadapter.config import load_profile
from tardis_netadapter.keepalive import derive_budget
from tardis_netadapter.render import render_drone_script

T = TypeVar("T")

DIRECT_PORT = 60050  # in the srun port range: workers may reach login there
ECHO_DIRECT_PORT = 60051
IPERF_PORT = 5201
RATES: tuple[Optional[str], ...] = ("1gbit", "10gbit", None)
STREAMS = (1, 8)
PARALLEL = (1, 2)
SHORT = 200
NODE = "worker1"
#: chain key -> the label of its rows in the table
CHAINS = {
    "a": "a: ssh -D on login",
    "b": "b: ssh -L to dante",
    "c": "c: ProxyJump gateway",
    # not in the default matrix: chain b with dante spoken to as SOCKS4 (one
    # round trip through the tunnel less per connection than SOCKS5)
    "b4": "b4: b with socks4",
}
DEFAULT_CHAINS = ("a", "b", "c")
DIRECT = "direct"
#: chain.capture methods; namespace only for NS_CHAINS (issue 12)
CAPTURES = ("preload", "namespace")
PRELOAD, NAMESPACE = CAPTURES
NS_CHAINS = ("b",)
#: the table's capture column for direct rows (no chain, nothing captured)
NO_CAPTURE = "-"
#: namespace.outer values to measure (``--outer``); auto = the product's choice
OUTERS = ("auto",)
#: direct from inside a namespace drone: worker -> outer link -> login, no tunnel
DIRECT_NS = "direct via pasta (no tunnel)"


def direct_ns(outer: str) -> str:
    """The path label of direct-from-inside rows for a namespace.outer value."""
    return (
        DIRECT_NS if outer in ("auto", "pasta") else f"direct via {outer} (no tunnel)"
    )


def capture_label(capture: str, outer: str) -> str:
    """The table's capture column: namespace rows name a chosen outer link."""
    return (
        capture if capture != NAMESPACE or outer == "auto" else f"{capture} ({outer})"
    )


#: the drone's log line naming the local ports it chose (drone_scripts/lib/tunnel.sh)
LOCAL_PORTS = re.compile(r"tunnel: local ports socks 127\.0\.0\.1:(\d+)")
DANTE = {"type": "socks5", "host": L.OUTSIDE_SOCKS, "port": L.HTTPS_PORT}
LOGIN = {"host": L.LOGIN_SITE}
GATEWAY = {"host": L.OUTSIDE_GATEWAY, "port": L.HTTPS_PORT}
#: process roles on the path, in table order
ROLES = (
    "iperf3 client",
    "redsocks",
    "pasta",
    "ssh (worker)",
    "sshd (login)",
    "sshd (gateway)",
    "dante",
    "iperf3 server",
)

#: the short-connection client, run on the worker (under the chain's proxychains)
SHORT_CLIENT = """
import socket, statistics, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
times = []
for _ in range(count):
    t0 = time.perf_counter()
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"x" * 32)
        got = b""
        while len(got) < 32:
            chunk = s.recv(64)
            if not chunk:
                sys.exit("echo closed early")
            got += chunk
    times.append(time.perf_counter() - t0)
print(statistics.median(times) * 1000)
"""

#: a threaded TCP echo server (the short connections' peer)
ECHO_SERVER = """
import socketserver, sys
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)
class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
Server((sys.argv[1], int(sys.argv[2])), Echo).serve_forever()
"""


@dataclass(frozen=True)
class Row:
    """One measurement: `bps` received, summed over `streams` parallel streams.

    `cpu` is CPU-seconds per GB carried, by process role (ROLES).
    """

    rate: Optional[str]
    streams: int
    path: str
    parallel: int
    bps: float
    direct_bps: float
    cpu: dict[str, float] = field(default_factory=dict)
    capture: str = NO_CAPTURE


@dataclass(frozen=True)
class Short:
    """Median milliseconds of one short connection along `path`."""

    path: str
    parallel: int
    median_ms: float
    direct_ms: float
    capture: str = NO_CAPTURE


@dataclass(frozen=True)
class Drone:
    """What the benchmark needs of the running drone."""

    work: str
    job_id: str
    socks_port: int
    chain: str
    parallel: int
    capture: str = PRELOAD
    #: namespace.outer of the profile (namespace capture only)
    outer: str = "auto"
    #: namespace capture: host pid of the namespace's init (its root userns)
    #: and the payload role's pid as the namespace sees it (nested userns)
    ns_init: int = 0
    ns_drone: int = 0


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    shorts: list[Short] = field(default_factory=list)
    cipher: str = "default"
    aes_gcm_s_per_gb: float = 0.0
    load: list[str] = field(default_factory=list)


def profile_data(
    idle_timeout: int,
    chain: str = "a",
    parallel: int = 1,
    capture: str = PRELOAD,
    outer: str = "auto",
    mtu: Optional[int] = None,
) -> dict:
    """The drone's profile for a chain; socks_port stays ``auto`` as on a real site."""
    hops = [LOGIN, GATEWAY] if chain == "c" else [LOGIN]
    proxies = {"b": [DANTE], "b4": [{**DANTE, "type": "socks4"}]}.get(chain, [])
    section: dict[str, Any] = {
        "localnet": ["127.0.0.0/8", L.SITE_NET],
        "proxies": proxies,
    }
    if capture == NAMESPACE:
        # required: a fallback to preload would measure the wrong thing
        section["capture"] = NAMESPACE
    data = {
        "firewall": {"idle_timeout": idle_timeout},
        "tunnel": {"hops": hops, "parallel": parallel},
        "chain": section,
        "pool": {"collector": ""},  # nothing to probe: iperf3 is the payload's peer
        "monitoring": {"enabled": False},
        "payload": {"command": ["sleep", "3600"]},
    }
    if capture == NAMESPACE:
        data["isolation"] = "required"
        namespace: dict[str, Any] = {"outer": outer}
        if mtu:
            namespace["mtu"] = mtu
        data["namespace"] = namespace
    return data


def _stop(proc: subprocess.Popen[Any]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_server(
    lab: Lab, stack: ExitStack, host: str, address: str, port: int, argv: list[str]
) -> subprocess.Popen[Any]:
    """A server on a lab host, stopped by `stack`; returns once it listens."""
    proc = lab.popen(host, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stack.callback(_stop, proc)
    deadline = time.monotonic() + 10
    while not is_listening(proc.pid, address, port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{argv[0]} on {host} {address}:{port} did not start")
        time.sleep(0.05)
    return proc


def iperf3_server(lab: Lab, stack: ExitStack, host: str, address: str, port: int):
    argv = ["iperf3", "-s", "-B", address, "-p", str(port)]
    return start_server(lab, stack, host, address, port, argv)


def echo_server(lab: Lab, stack: ExitStack, host: str, address: str, port: int):
    argv = ["/usr/bin/python3", "-c", ECHO_SERVER, address, str(port)]
    return start_server(lab, stack, host, address, port, argv)


def start_drone(
    lab: Lab,
    stack: ExitStack,
    chain: str,
    parallel: int,
    capture: str = PRELOAD,
    outer: str = "auto",
    mtu: Optional[int] = None,
) -> Drone:
    """Submit the drone; return it once its tunnel is up and the payload runs."""
    drone_uuid = f"bench-{uuid.uuid4().hex[:8]}"
    data = profile_data(lab.idle_timeout, chain, parallel, capture, outer, mtu)
    profile = load_profile(data)
    script = render_drone_script(
        profile,
        derive_budget(profile),
        site_name="NetLab",
        machine_type="bench",
        job_id_variable="SLURM_JOB_ID",
    )
    result = lab.run(
        "login",
        ["sbatch", "--parsable", "-w", NODE, "-o", f"{drone_uuid}.out"]
        + ["--export", f"ALL,TardisDroneUuid={drone_uuid}"],
        user=lab.drone_user,
        input=script,
        timeout=30,
    )
    if result.returncode != 0:
        raise RuntimeError(f"sbatch failed: {result.stderr}")
    job_id = result.stdout.strip().split(";")[0]
    stack.callback(cancel, lab, job_id)
    output = lab.layout.home(lab.drone_user) / f"{drone_uuid}.out"
    stack.callback(output.unlink, missing_ok=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = output.read_text() if output.exists() else ""
        started = re.search(r"stage payload started", text)
        work = re.search(r"work directory (\S+)", text)
        port = LOCAL_PORTS.search(text)
        if started and work and port:
            drone = Drone(work.group(1), job_id, int(port.group(1)), chain, parallel)
            if capture == NAMESPACE:
                init, payload = namespace_pids(drone.work)
                drone = replace(
                    drone,
                    capture=capture,
                    outer=_outer_tool(drone.work, outer),
                    ns_init=init,
                    ns_drone=payload,
                )
            return drone
        time.sleep(0.2)
    raise RuntimeError(
        f"drone did not start:\n{output.read_text() if output.exists() else ''}"
    )


def _outer_tool(work: str, asked: str) -> str:
    """The outer link the drone chose (ns/isolation: METHOD TAB TOOL TAB
    REASON), so that rows of ``auto`` name the tool."""
    try:
        fields = Path(work, "ns", "isolation").read_text().split("\t")
    except OSError:
        return asked
    return fields[1].strip() if len(fields) > 1 and fields[1].strip() else asked


def namespace_pids(work: str) -> tuple[int, int]:
    """(host pid of the namespace's init, the payload role's pid inside).

    The payload role is the first process of the namespace whose environment
    says TNA_NS_ROLE=drone (netns.sh starts it under ``unshare -U
    --map-user``): its user namespace is the payload's.
    """
    init = dronens.ns_init_pid(work)
    if init is None:
        raise RuntimeError(f"no namespace init carries {work}")
    for process in dronens.ns_processes(work):
        try:
            environ = Path(f"/proc/{process.host_pid}/environ").read_bytes()
        except OSError:
            continue
        if b"TNA_NS_ROLE=drone" in environ.split(b"\0"):
            return init, process.ns_pid
    raise RuntimeError(f"no payload role in the namespace of {work}")


def cancel(lab: Lab, job_id: str) -> None:
    """scancel, then wait for the drone's own cleanup before the lab goes down."""
    lab.run("login", ["scancel", job_id], user=lab.drone_user)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        queue = lab.run("login", ["squeue", "-h", "-j", job_id], user=lab.drone_user)
        if not queue.stdout.strip():
            return
        time.sleep(0.2)


# -- CPU of the processes on the path -------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> Optional[float]:
    """utime + stime of a live process and of its children it has reaped
    (cutime + cstime: dante's children that end within a run), in seconds
    (None: gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return sum(int(value) for value in fields[11:15]) / CLOCK_TICKS


def _netns_pids(lab: Lab, host: str) -> list[int]:
    result = subprocess.run(
        ["ip", "netns", "pids", lab.namespace(host)],
        capture_output=True,
        text=True,
        check=False,
    )
    return [int(pid) for pid in result.stdout.split()]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _owner(pid: int) -> int:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return -1


def path_processes(lab: Lab, drone: Drone) -> dict[int, str]:
    """pid -> role of every process of this lab that carries the chain's bytes:
    the drone's ssh (and a ProxyJump's ssh -W: both read the drone's
    ssh_config), the drone user's sshd sessions on login and on the gateway,
    and every dante process; with namespace capture also the namespace's
    redsocks and its outer link (pasta or slirp4netns, role "pasta", in the
    worker's network namespace, named by the pid of the namespace's unshare
    among its last two arguments)."""
    import pwd

    uid = pwd.getpwnam(lab.drone_user).pw_uid
    roles: dict[int, str] = {}
    marker = f"{drone.work}/ssh_config".encode()
    worker = _netns_pids(lab, NODE)
    if drone.capture == NAMESPACE:
        inside = [p.host_pid for p in dronens.ns_processes(drone.work)]
        for pid in inside:
            if _comm(pid) == "redsocks":
                roles[pid] = "redsocks"
        unshare = _parent(drone.ns_init)
        for pid in worker:
            argv = _argv(pid)
            # pasta names the pid last, slirp4netns before the tap device
            if _comm(pid).startswith(("pasta", "passt", "slirp4netns")) and (
                str(unshare) in argv[-2:]
            ):
                roles[pid] = "pasta"
    else:
        inside = worker
    for pid in inside:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if _comm(pid) == "ssh" and marker in argv:
            roles[pid] = "ssh (worker)"
    for host, role in (("login", "sshd (login)"), ("outside", "sshd (gateway)")):
        for pid in _netns_pids(lab, host):
            if _comm(pid) == "sshd" and _owner(pid) == uid:
                roles[pid] = role
    for pid in _netns_pids(lab, "outside"):
        if _comm(pid) == "danted":
            roles[pid] = "dante"
    return roles


def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.rstrip(b"\0").decode(errors="replace").split("\0") if raw else []


def _parent(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^PPid:\s*(\d+)", status, re.M)
    return int(match.group(1)) if match else 0


@contextmanager
def cpu_meter(lab: Lab, drone: Drone) -> Iterator[dict[str, float]]:
    """CPU-seconds each role used inside the block (filled in at its end).

    The processes are listed again at the end: dante forks children for new
    connections, and a process that started inside the block counts whole.
    """
    roles = path_processes(lab, drone)
    before = {pid: _cpu_seconds(pid) for pid in roles}
    used: dict[str, float] = {}
    yield used
    after = path_processes(lab, drone)
    for pid, role in after.items():
        start, end = before.get(pid, 0.0), _cpu_seconds(pid)
        if start is not None and end is not None:
            used[role] = used.get(role, 0.0) + end - start
    for pid, start in before.items():
        # a dante child that ended inside the block: the mother's reaped time
        # (cutime) grew by its whole life, of which `start` was before it
        if pid not in after and roles[pid] == "dante" and start is not None:
            used["dante"] = used.get("dante", 0.0) - start


def aes_gcm_seconds_per_gb() -> float:
    """CPU-seconds to encrypt 1 GB with AES-128-GCM alone (openssl, 16 KiB blocks)."""
    result = subprocess.run(
        ["openssl", "speed", "-evp", "aes-128-gcm", "-seconds", "1", "-bytes", "16384"],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"^AES-128-GCM\s+([\d.]+)k", result.stdout, re.M)
    if not match:
        return float("nan")
    return 1e9 / (float(match.group(1)) * 1000)


# -- measurements -----------------------------------------------------------------


class IperfRun(NamedTuple):
    """One iperf3 client run, as its JSON report says."""

    #: received bits/s
    bps: float
    #: bytes over the whole run, the omitted first second included
    carried: float
    #: CPU-seconds of iperf3's client and server
    cpu: dict[str, float]
    #: the sender's TCP retransmissions (through a VPN: packets lost on the way)
    retransmits: int


def iperf3(
    lab: Lab, prefix: list[str], address: str, port: int, streams: int, seconds: int
) -> IperfRun:
    """Run iperf3 as the drone user on NODE (through ``prefix``); RuntimeError
    says why a run failed (iperf3 -J reports it in "error", with exit 1 or 0)."""
    argv = prefix + ["iperf3", "-J", "-c", address, "-p", str(port)]
    argv += ["-P", str(streams), "-t", str(seconds), "-O", "1"]
    result = lab.run(NODE, argv, user=lab.drone_user, timeout=seconds + 20)
    try:
        report = json.loads(result.stdout)
    except ValueError:
        report = {}
    end = report.get("end", {})
    if result.returncode != 0 or report.get("error") or "sum_received" not in end:
        raise RuntimeError(
            report.get("error")
            or f"{' '.join(argv)} failed: {result.stdout[-500:]}{result.stderr}"
        )
    received = end["sum_received"]
    # CPU is metered over the whole run, the omitted first second (-O 1)
    # included, so the bytes it is divided by must include that second too
    intervals = [interval["sum"] for interval in report.get("intervals", [])]
    carried = sum(float(item["bytes"]) for item in intervals) or received["bytes"]
    duration = sum(float(item["seconds"]) for item in intervals) or received["seconds"]
    usage = end.get("cpu_utilization_percent", {})
    cpu = {
        "iperf3 client": usage.get("host_total", 0.0) / 100 * duration,
        "iperf3 server": usage.get("remote_total", 0.0) / 100 * duration,
    }
    retransmits = int(end.get("sum_sent", {}).get("retransmits", 0))
    return IperfRun(float(received["bits_per_second"]), carried, cpu, retransmits)


def in_own_lab(name: str, work: Callable[[Lab], T]) -> T:
    """``work`` on a fresh one-worker lab (idle timeout 300 s: iperf3's runs
    must not be cut), always torn down."""
    lab = Lab(name=name, workers=1, idle_timeout=300)
    with ExitStack() as stack:
        stack.callback(lab.down)
        lab.up()
        return work(lab)


#: rounds of short connections per path; the lowest median is reported (the
#: round least disturbed by other work on these CPUs)
SHORT_ROUNDS = 3


def short_connections(
    lab: Lab, prefix: list[str], address: str, port: int, count: int
) -> float:
    """Median milliseconds of one connect + 32-byte exchange + close (the
    lowest of SHORT_ROUNDS rounds of `count` connections)."""
    argv = prefix + ["/usr/bin/python3", "-c", SHORT_CLIENT, address, str(port)]
    medians = []
    for _ in range(SHORT_ROUNDS):
        result = lab.run(NODE, argv + [str(count)], user=lab.drone_user, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"short connections failed: {result.stderr[-500:]}")
        medians.append(float(result.stdout.split()[-1]))
    return min(medians)


def _chain_prefix(drone: Drone) -> list[str]:
    """How a client on the worker takes this drone's chain: under its
    proxychains (preload), or inside its namespace as its payload would be,
    with no LD_PRELOAD (namespace)."""
    if drone.capture == NAMESPACE:
        return namespace_prefix(drone)
    return ["proxychains4", "-q", "-f", f"{drone.work}/proxychains.conf"]


def namespace_prefix(drone: Drone) -> list[str]:
    """Into the drone's network + mount namespace, as the drone user in the
    payload's own user namespace.

    Two steps, because the payload's nested user namespace does not own the
    network namespace (nsenter through it gets EPERM on -n): first the
    namespace's root userns, which the drone user owns (--preserve-credentials:
    it denies setgroups), with its network and mount namespaces (its /proc is
    the drone's PID namespace); from there into the payload's userns by the
    pid the namespace gives it. Processes started so run as the drone user
    without capabilities, as the payload does.
    """
    return [
        "nsenter",
        "--preserve-credentials",
        "-U",
        "-n",
        "-m",
        "-p",  # its /proc is the drone's PID namespace: /proc/self must be there
        "-t",
        str(drone.ns_init),
        "--",
        "nsenter",
        "--preserve-credentials",
        "-U",
        "-t",
        str(drone.ns_drone),
        "--",
        "env",
        "-u",
        "LD_PRELOAD",
    ]


def _target(chain: str) -> tuple[str, int]:
    """Where a chain's iperf3 client connects: login itself may open only 443."""
    if chain == "a":
        return L.OUTSIDE_HTTP, L.HTTPS_PORT
    return L.OUTSIDE_HTTP, IPERF_PORT  # b, b4, c: dante or the gateway opens it


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _load() -> str:
    """The 1, 5 and 15 minute load averages (other work on these CPUs)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def measure(
    lab: Lab,
    *,
    rates: Sequence[Optional[str]] = RATES,
    seconds: int = 5,
    streams: Sequence[int] = STREAMS,
    chains: Sequence[str] = DEFAULT_CHAINS,
    parallel: Sequence[int] = PARALLEL,
    short: int = SHORT,
    captures: Sequence[str] = (PRELOAD,),
    ns_chains: Sequence[str] = NS_CHAINS,
    outers: Sequence[str] = OUTERS,
    mtu: Optional[int] = None,
) -> Results:
    """The whole matrix on a running lab. The tbf limit is removed again at the
    end, so a lab shared with other tests is left as found. `captures` as
    ``--capture`` (namespace only for `ns_chains`); the default, preload only,
    is what callers from before namespace capture expect."""
    results = Results(aes_gcm_s_per_gb=aes_gcm_seconds_per_gb())
    results.load.append(_load())
    direct: dict[tuple[Optional[str], int], float] = {}
    with ExitStack() as stack:
        stack.callback(lab.limit_bandwidth, NODE, None)
        iperf3_server(lab, stack, "login", L.LOGIN_SITE, DIRECT_PORT)
        echo_server(lab, stack, "login", L.LOGIN_SITE, ECHO_DIRECT_PORT)
        iperf3_server(lab, stack, "outside", L.OUTSIDE_HTTP, IPERF_PORT)
        for rate in rates:
            lab.limit_bandwidth(NODE, rate)
            for count in streams:
                bps = iperf3(lab, [], L.LOGIN_SITE, DIRECT_PORT, count, seconds).bps
                direct[rate, count] = bps
                results.rows.append(Row(rate, count, DIRECT, 1, bps, bps))
                _log(f"{rate or 'none':>6} {count:>2} {DIRECT:<24} {bps / 1e6:8.1f}")
        lab.limit_bandwidth(NODE, None)

        def direct_short() -> float:
            """Direct, measured again just before each chain's: short
            connections feel the other work on these CPUs at that moment."""
            return short_connections(lab, [], L.LOGIN_SITE, ECHO_DIRECT_PORT, short)

        if short:
            direct_ms = direct_short()
            results.shorts.append(Short(DIRECT, 1, direct_ms, direct_ms))
        for key in chains:
            variants = [
                (capture, outer)
                for capture in captures
                for outer in (outers if capture == NAMESPACE else ("auto",))
                if capture != NAMESPACE or key in ns_chains
            ]
            for capture, outer in variants:
                for connections in parallel:
                    with ExitStack() as drone_stack:
                        drone = start_drone(
                            lab, drone_stack, key, connections, capture, outer, mtu
                        )
                        # short connections first: a throughput run that
                        # breaks the chain (seen: namespace, 10 streams)
                        # must not take them down too
                        if short:
                            results.shorts.append(
                                _short_through(lab, drone, short, direct_short())
                            )
                            if capture == NAMESPACE:
                                results.shorts.append(
                                    _short_direct_ns(lab, drone, short, direct_short())
                                )
                        _measure_drone(
                            lab, drone, results, direct, rates, streams, seconds
                        )
        if short and any(key.startswith("b") for key in chains):
            results.shorts.append(_short_dante_alone(lab, short, direct_short()))
    results.load.append(_load())
    return results


DANTE_ALONE = "dante alone, from login (no tunnel)"


def _short_dante_alone(lab: Lab, count: int, direct_ms: float) -> Short:
    """Short connections from login through dante only: what the partner
    site's proxy costs by itself, without the worker's tunnel."""
    conf = lab.layout.home(lab.drone_user) / "bench-dante-alone.conf"
    conf.write_text(
        "strict_chain\nquiet_mode\nlocalnet 127.0.0.0/255.0.0.0\n[ProxyList]\n"
        f"socks5 {L.OUTSIDE_SOCKS} {L.HTTPS_PORT}\n"
    )
    conf.chmod(0o644)
    address, port = L.OUTSIDE_HTTP, IPERF_PORT + 1
    try:
        with ExitStack() as stack:
            echo_server(lab, stack, "outside", address, port)
            argv = ["proxychains4", "-q", "-f", str(conf), "/usr/bin/python3"]
            argv += ["-c", SHORT_CLIENT, address, str(port), str(count)]
            medians = []
            for _ in range(SHORT_ROUNDS):
                result = lab.run("login", argv, user=lab.drone_user, timeout=120)
                if result.returncode != 0:
                    raise RuntimeError(f"dante alone failed: {result.stderr[-500:]}")
                medians.append(float(result.stdout.split()[-1]))
            median = min(medians)
    finally:
        conf.unlink(missing_ok=True)
    _log(f"short {DANTE_ALONE}: {median:.2f} ms")
    return Short(DANTE_ALONE, 1, median, direct_ms, PRELOAD)


def _measure_drone(
    lab: Lab,
    drone: Drone,
    results: Results,
    direct: dict[tuple[Optional[str], int], float],
    rates: Sequence[Optional[str]],
    streams: Sequence[int],
    seconds: int,
) -> None:
    """The drone's chain at every rate and stream count; for a namespace drone
    also direct from inside it (pasta alone, no tunnel)."""
    prefix = _chain_prefix(drone)
    address, port = _target(drone.chain)
    name = CHAINS[drone.chain]
    config = Path(drone.work, "ssh_config").read_text()
    ciphers = re.findall(r"^\s*Ciphers\s+(\S+)", config, re.M)
    results.cipher = ciphers[-1].split(",")[0] if ciphers else "default"
    paths = [(name, address, port)]
    if drone.capture == NAMESPACE:
        paths.append((direct_ns(drone.outer), L.LOGIN_SITE, DIRECT_PORT))
    label = capture_label(drone.capture, drone.outer)
    with ExitStack() as stack:
        if drone.chain == "a":  # login may open 443 only: a server there for a
            iperf3_server(lab, stack, "outside", address, port)
        for rate in rates:
            lab.limit_bandwidth(NODE, rate)
            for count in streams:
                for path, target, target_port in paths:
                    try:
                        with cpu_meter(lab, drone) as used:
                            bps, carried, iperf_cpu, _ = iperf3(
                                lab, prefix, target, target_port, count, seconds
                            )
                    except (RuntimeError, subprocess.TimeoutExpired) as error:
                        # a path that fails or hangs is a result (0 bit/s),
                        # not the end of a run that measures the others
                        _log(f"{path} {label} {count} streams failed: {error}")
                        bps, carried, iperf_cpu, used = 0.0, 0.0, {}, {}
                    used.update(iperf_cpu)
                    per_gb = (
                        {role: s / (carried / 1e9) for role, s in used.items()}
                        if carried
                        else {}
                    )
                    if path == direct_ns(drone.outer):  # no tunnel: outer link, iperf3
                        keep = ("pasta", "iperf3 client", "iperf3 server")
                        per_gb = {r: v for r, v in per_gb.items() if r in keep}
                    results.rows.append(
                        Row(
                            rate,
                            count,
                            path,
                            drone.parallel,
                            bps,
                            direct[rate, count],
                            per_gb,
                            label,
                        )
                    )
                    _log(
                        f"{rate or 'none':>6} {count:>2} {path:<24} {label}"
                        f" x{drone.parallel} {bps / 1e6:8.1f} Mbit/s, CPU s/GB "
                        + ", ".join(f"{r} {v:.2f}" for r, v in per_gb.items())
                    )
        lab.limit_bandwidth(NODE, None)


def _short_through(lab: Lab, drone: Drone, count: int, direct_ms: float) -> Short:
    """Short connections along a chain to an echo server where iperf3 was."""
    address, port = _target(drone.chain)
    with ExitStack() as stack:
        if drone.chain == "a":
            # chain a can reach 443 only, where its iperf3 server was (stopped)
            echo_server(lab, stack, "outside", address, port)
        else:
            port = IPERF_PORT + 1
            echo_server(lab, stack, "outside", address, port)
        median = short_connections(lab, _chain_prefix(drone), address, port, count)
    name = CHAINS[drone.chain]
    label = capture_label(drone.capture, drone.outer)
    _log(f"short {name} {label} x{drone.parallel}: {median:.2f} ms")
    return Short(name, drone.parallel, median, direct_ms, label)


def _short_direct_ns(lab: Lab, drone: Drone, count: int, direct_ms: float) -> Short:
    """Short connections from inside a namespace drone straight to login's
    echo server (localnet: through pasta, no tunnel): the outer link's share."""
    prefix = _chain_prefix(drone)
    median = short_connections(lab, prefix, L.LOGIN_SITE, ECHO_DIRECT_PORT, count)
    path, label = direct_ns(drone.outer), capture_label(drone.capture, drone.outer)
    _log(f"short {path}: {median:.2f} ms")
    return Short(path, drone.parallel, median, direct_ms, label)


# -- the report -----------------------------------------------------------------


def table(results: Results, seconds: int, short: int) -> str:
    """The Markdown tables of docs/benchmarks.md, with the run's setting above them."""
    lines = [
        f"<!-- {platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, iperf3 -t {seconds} -O 1, "
        f"ssh cipher {results.cipher}, load before/after {results.load} -->",
        "| link | streams | path | capture | parallel | Gbit/s | vs direct "
        + "".join(f"| {role} " for role in ROLES)
        + "| CPU s/GB total |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: "
        + "| ---: " * len(ROLES)
        + "| ---: |",
    ]
    for row in results.rows:
        cpu = "".join(
            f"| {row.cpu[role]:.2f} " if role in row.cpu else "| " for role in ROLES
        )
        total = f"{sum(row.cpu.values()):.2f}" if row.cpu else ""
        lines.append(
            f"| {row.rate or 'none'} | {row.streams} | {row.path} | {row.capture} "
            f"| {row.parallel} "
            f"| {row.bps / 1e9:.2f} | {row.bps / row.direct_bps:.0%} {cpu}| {total} |"
        )
    lines += [
        "",
        f"AES-128-GCM alone on this CPU (openssl speed, one core): "
        f"{results.aes_gcm_s_per_gb:.3f} CPU-seconds per GB.",
    ]
    if results.shorts:
        lines += [
            "",
            f"| path | capture | parallel | median of {short} short connections "
            f"(ms, lowest of {SHORT_ROUNDS} rounds) "
            "| direct just before (ms) | vs direct |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for item in results.shorts:
            lines.append(
                f"| {item.path} | {item.capture} | {item.parallel} "
                f"| {item.median_ms:.2f} "
                f"| {item.direct_ms:.2f} | {item.median_ms / item.direct_ms:.1f}x |"
            )
    return "\n".join(lines)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"got {text!r}; expected whole numbers >= 1, comma-separated, e.g. 1,8"
        )
    return values


def _chain_list(text: str) -> tuple[str, ...]:
    values = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [value for value in values if value not in CHAINS]
    if not values or unknown:
        raise argparse.ArgumentTypeError(
            f"got {text!r}; expected chains among {', '.join(CHAINS)}, "
            "comma-separated (direct is always measured)"
        )
    return values


def _capture_list(text: str) -> tuple[str, ...]:
    values = tuple(part.strip() for part in text.split(",") if part.strip())
    if not values or any(value not in CAPTURES for value in values):
        raise argparse.ArgumentTypeError(
            f"got {text!r}; expected chain.capture methods among "
            f"{', '.join(CAPTURES)}, comma-separated"
        )
    return values


def _outer_list(text: str) -> tuple[str, ...]:
    values = tuple(part.strip() for part in text.split(",") if part.strip())
    allowed = ("auto", "pasta", "slirp4netns")
    if not values or any(value not in allowed for value in values):
        raise argparse.ArgumentTypeError(
            f"got {text!r}; expected namespace.outer values among "
            f"{', '.join(allowed)}, comma-separated"
        )
    return values


def _rate_list(text: str) -> tuple[Optional[str], ...]:
    values = tuple(part.strip() for part in text.split(",") if part.strip())
    bad = [v for v in values if v != "none" and not re.fullmatch(r"\d+[kmg]bit", v)]
    if not values or bad:
        raise argparse.ArgumentTypeError(
            f"got {text!r}; expected tbf rates such as 1gbit,10gbit or none "
            "(veth speed), comma-separated"
        )
    return tuple(None if v == "none" else v for v in values)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rates",
        type=_rate_list,
        default=RATES,
        help="tbf rates of worker-login, comma-separated; none = veth speed "
        "(default 1gbit,10gbit,none)",
    )
    parser.add_argument("--seconds", type=int, default=5, help="per measurement")
    parser.add_argument(
        "--streams",
        type=_int_list,
        default=STREAMS,
        help="parallel stream counts, comma-separated (default 1,8)",
    )
    parser.add_argument(
        "--chains",
        type=_chain_list,
        default=DEFAULT_CHAINS,
        help="chains to measure beside direct, comma-separated (default a,b,c; "
        "b4 is b with dante spoken to as SOCKS4)",
    )
    parser.add_argument(
        "--parallel",
        type=_int_list,
        default=PARALLEL,
        help="tunnel.parallel settings, comma-separated (default 1,2)",
    )
    parser.add_argument(
        "--short",
        type=int,
        default=SHORT,
        help="short connections per path (0: none; default 200)",
    )
    parser.add_argument(
        "--capture",
        type=_capture_list,
        default=CAPTURES,
        help="chain.capture methods, comma-separated (default preload,namespace; "
        "namespace only for the chains in --ns-chains)",
    )
    parser.add_argument(
        "--ns-chains",
        type=_chain_list,
        default=NS_CHAINS,
        help="chains also measured with capture namespace (default b)",
    )
    parser.add_argument(
        "--outer",
        type=_outer_list,
        default=OUTERS,
        help="namespace.outer values the namespace rows are measured with, "
        "comma-separated (default auto: the product's choice; e.g. pasta,slirp4netns)",
    )
    parser.add_argument(
        "--mtu",
        type=int,
        default=None,
        help="namespace.mtu of namespace drones (default: the product's, 65520)",
    )
    parser.add_argument("--name", default=f"bch{os.getpid() % 1000}", help="lab name")
    args = parser.parse_args(argv)
    if args.seconds < 1:
        parser.error(f"--seconds: got {args.seconds}; expected at least 1")
    if max(args.parallel) > 16:
        parser.error(f"--parallel: got {args.parallel}; tunnel.parallel is 1..16")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    results = in_own_lab(
        args.name,
        lambda lab: measure(
            lab,
            rates=args.rates,
            seconds=args.seconds,
            streams=args.streams,
            chains=args.chains,
            parallel=args.parallel,
            short=args.short,
            captures=args.capture,
            ns_chains=args.ns_chains,
            outers=args.outer,
            mtu=args.mtu,
        ),
    )
    print(table(results, args.seconds, args.short))
    return 0


if __name__ == "__main__":
    sys.exit(main())
