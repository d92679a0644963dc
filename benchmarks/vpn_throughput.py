#!/usr/bin/env python3
"""Throughput and CPU per GB through the site's VPN (mode ``vpn``), in the lab.

Reproduces the table of seed 003 (Notre Dame: direct 871.98 Mbit/s, namespace
VPN 333.59, SOCKS 196.61 for one stream on 1 Gbit/s links) side by side in one
run. The worker's link to the site (and so to the DMZ) is limited with tbf
(``lab.limit_bandwidth``, 1 Gbit/s by default); iperf3 runs on the worker with
1, 2, 10 and 20 parallel streams along:

  direct        worker -> iperf3 on login (a port the site firewall lets
                workers use), no VPN
  vpn dtls      a real drone in mode ``vpn`` (rendered script, sbatch):
                openconnect in its private namespace, the payload's TCP in
                DTLS (UDP) through the outer link to ocserv on dmz, routed on
                to iperf3 on outside; the client runs INSIDE the drone's
                namespace as its payload would (chain_throughput's nsenter)
  vpn tls       the same drone with ``vpn.dtls: false`` (TCP over TCP, what
                the seed ran: its client always passed ``--no-dtls``)
  ocproxy       the fallback without namespaces (the seed's "userspace
                stack" row): a vpn drone whose job cannot make a user
                namespace (``dronens.userns_limited_job``, isolation
                preferred, vpn.fallback ocproxy): openconnect without tun,
                ocproxy's lwIP stack as SOCKS5 on the worker's 127.0.0.1;
                iperf3 runs on the worker as the drone user with the drone's
                own preload chain (LD_PRELOAD and proxychains.conf of its work
                directory, read from the payload's environment)
  chain b       this project's ssh chain (ssh -L to dante), namespace capture
                (issue 12): the seed's "socks" row

For every run the CPU time of each process on the path is read from
/proc/PID/stat (openconnect, every ocserv process on dmz, the outer link
slirp4netns/pasta or, in the fallback, ocproxy, and for chain b ssh, sshd,
dante, redsocks) and from
iperf3's own report (client and server), and given as CPU-seconds per GB
carried. dmz's UDP receive-buffer drops (``RcvbufErrors`` of its namespace,
where DTLS lost packets at ocserv's socket before the lab's fix) are counted
per run. The load averages before and after go with the table: two shared
cores. Everything runs in a lab of its own, torn down at the end.

    python benchmarks/vpn_throughput.py [--rate 1gbit] [--streams 1,2,10,20]
        [--paths direct,dtls,tls,ocproxy,chain-b] [--seconds 5] [--outer auto]
        [--mtu N]

Short form (what tests/lab/test_vpn_benchmark.py runs, so this cannot rot;
one stream along each path, one second each):

    python benchmarks/vpn_throughput.py --streams 1 --seconds 1
"""

from __future__ import annotations

import argparse
import os
import platform
import pwd
import re
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))  # chain_throughput beside

import chain_throughput as chain  # noqa: E402
from tardis_netadapter_lab import Lab, dronens  # noqa: E402
from tardis_netadapter_lab import layout as L  # noqa: E402

from tardis_netadapter.config import load_profile  # noqa: E402
from tardis_netadapter.keepalive import derive_budget  # noqa: E402
from tardis_netadapter.render import render_drone_script  # noqa: E402

NODE = chain.NODE
STREAMS = (1, 2, 10, 20)
RATE = "1gbit"
#: path key -> the label of its rows (the seed's "VPN client" column)
PATHS = {
    "direct": "direct",
    "dtls": "namespace VPN, DTLS",
    "tls": "namespace VPN, TLS only",
    "ocproxy": "ocproxy fallback (userspace stack), preload",
    "chain-b": "chain b (ssh -L to dante), namespace",
}
DEFAULT_PATHS = tuple(PATHS)
#: process roles on the paths, in table order
ROLES = (
    "iperf3 client",
    "openconnect",
    "ocproxy",
    "redsocks",
    "ssh (worker)",
    "outer link",
    "ocserv",
    "sshd (login)",
    "dante",
    "iperf3 server",
)
#: the seed's figures (Mbit/s summed over the streams), for the report
SEED = {
    1: {"direct": 871.98, "namespace VPN": 333.59, "socks": 196.61},
    2: {"direct": 926.84, "namespace VPN": 597.36, "socks": 381.09},
    10: {"direct": 890.56, "namespace VPN": 882.64, "socks": 868.87},
    20: {"direct": 846.01, "namespace VPN": 884.90, "socks": 871.35},
}


@dataclass(frozen=True)
class Row:
    """`bps` received, summed over `streams`; `cpu` CPU-s per GB by role."""

    streams: int
    path: str
    bps: float
    direct_bps: float
    cpu: dict[str, float] = field(default_factory=dict)
    #: dmz's UDP receive-buffer errors during the run (ocserv's socket)
    rcvbuf_errors: int = 0
    #: DTLS datagrams dmz received during the run
    udp_in: int = 0
    detail: str = ""
    #: the iperf3 sender's TCP retransmissions (packets lost on the path)
    retransmits: int = 0


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    load: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class VpnDrone:
    work: str
    job_id: str
    ns_init: int
    ns_drone: int
    outer: str
    transport: str
    mtu: str


def vpn_profile(lab: Lab, dtls: bool, outer: str, mtu: Optional[int]) -> dict:
    """A vpn drone whose payload just sleeps: iperf3 is run in its namespace."""
    vpn: dict[str, Any] = {
        "server": L.DMZ_SITE,
        "servercert": lab.vpn_pin,
        "user": lab.vpn_user,
        "password_file": str(lab.vpn_password_file),
        "dtls": dtls,
    }
    if mtu:
        vpn["mtu"] = mtu
    return {
        "mode": "vpn",
        "firewall": {"idle_timeout": lab.idle_timeout},
        "vpn": vpn,
        "namespace": {"outer": outer},
        "isolation": "required",
        # the lab's pool: stage vpn is ready once it answers through tun0
        "pool": {"collector": f"{L.OUTSIDE_HTTP}:{L.COLLECTOR_PORT}"},
        "monitoring": {"enabled": False},
        "payload": {"command": ["sleep", "3600"]},
    }


@dataclass(frozen=True)
class FallbackDrone:
    """A vpn drone on ocproxy: `env` is its payload's preload chain."""

    work: str
    job_id: str
    transport: str
    port: str
    env: tuple[str, ...]


def fallback_profile(lab: Lab, mtu: Optional[int]) -> dict:
    """A vpn drone that may fall back (isolation preferred, vpn.fallback
    ocproxy); its job is run where it cannot make a user namespace."""
    profile = vpn_profile(lab, True, "auto", mtu)
    del profile["namespace"]
    profile["isolation"] = "preferred"
    profile["vpn"]["fallback"] = "ocproxy"
    return profile


def submit(
    lab: Lab, stack: ExitStack, profile_data: dict, limited: bool = False
) -> tuple[str, Path]:
    """sbatch a rendered drone to worker1 (with `limited`: under
    ``dronens.userns_limited_job``, no user namespace for it); (job id, its
    output file). Both are cleaned up by `stack`."""
    drone_uuid = f"vbench-{uuid.uuid4().hex[:8]}"
    profile = load_profile(profile_data)
    script = render_drone_script(
        profile,
        derive_budget(profile),
        site_name="NetLab",
        machine_type="bench",
        job_id_variable="SLURM_JOB_ID",
    )
    if limited:
        entry = pwd.getpwnam(lab.drone_user)
        script = dronens.userns_limited_job(script, entry.pw_uid, entry.pw_gid)
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
    stack.callback(chain.cancel, lab, job_id)
    output = lab.layout.home(lab.drone_user) / f"{drone_uuid}.out"
    stack.callback(output.unlink, missing_ok=True)
    return job_id, output


def start_vpn_drone(
    lab: Lab, stack: ExitStack, dtls: bool, outer: str, mtu: Optional[int]
) -> VpnDrone:
    """Submit a vpn drone; return it once the VPN is up and the payload runs."""
    job_id, output = submit(lab, stack, vpn_profile(lab, dtls, outer, mtu))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = output.read_text() if output.exists() else ""
        work = re.search(r"work directory (\S+)", text)
        if re.search(r"stage payload started", text) and work:
            path = work.group(1)
            state = _read(Path(path, "ns", "vpn.state")).split()
            if state[:1] == ["up"]:
                init, payload = chain.namespace_pids(path)
                return VpnDrone(
                    path,
                    job_id,
                    init,
                    payload,
                    chain._outer_tool(path, outer),
                    state[2] if len(state) > 2 else "?",
                    _tun_mtu(init),
                )
        time.sleep(0.2)
    raise RuntimeError(f"vpn drone did not start:\n{_read(output)}")


FALLBACK = re.compile(r"capture falls back to preload \(ocproxy\)")
OCPROXY_PORT = re.compile(r"vpn: ocproxy 127\.0\.0\.1:(\d+), ")
#: the payload's preload chain (lib/vpn.sh's CHAIN_ENV)
PRELOAD_ENV = ("LD_PRELOAD", "PROXYCHAINS_CONF_FILE", "PROXYCHAINS_QUIET_MODE")


def start_fallback_drone(
    lab: Lab, stack: ExitStack, mtu: Optional[int]
) -> FallbackDrone:
    """Submit a vpn drone without user namespaces; return it once ocproxy is
    up and the payload runs, with the payload's preload chain."""
    job_id, output = submit(lab, stack, fallback_profile(lab, mtu), limited=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = _read(output)
        work = re.search(r"work directory (\S+)", text)
        if "stage payload started" in text and work:
            if not FALLBACK.search(text):
                raise RuntimeError(f"the drone did not fall back to ocproxy:\n{text}")
            path = work.group(1)
            state = _read(Path(path, "ns", "vpn.state")).split()
            port = OCPROXY_PORT.search(text)
            env = payload_preload(lab, path)
            if state[:1] == ["up"] and port and env:
                transport = state[2] if len(state) > 2 else "?"
                return FallbackDrone(path, job_id, transport, port.group(1), env)
        time.sleep(0.2)
    raise RuntimeError(f"fallback vpn drone did not start:\n{_read(output)}")


def payload_preload(lab: Lab, work: str) -> tuple[str, ...]:
    """NAME=VALUE of the preload chain the drone gave its payload, read from
    the environment of the payload's process (its proxychains.conf is in the
    work directory), so iperf3 is captured exactly as the payload is."""
    conf = f"PROXYCHAINS_CONF_FILE={work}/proxychains.conf".encode()
    for pid in chain._netns_pids(lab, NODE):
        if chain._comm(pid) != "sleep":
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if conf in environ:
            return tuple(
                item.decode()
                for item in environ
                if item.split(b"=", 1)[0].decode() in PRELOAD_ENV
            )
    return ()


def fallback_processes(lab: Lab, drone: FallbackDrone) -> dict[int, str]:
    """pid -> role: the drone's openconnect (its --script is the work
    directory's ns/vpn.fallback) and ocproxy (the pid that script recorded
    before becoming it) on the worker, every ocserv process on dmz."""
    roles: dict[int, str] = {}
    script = f"{drone.work}/ns/vpn.fallback"
    for pid in chain._netns_pids(lab, NODE):
        if chain._comm(pid) == "openconnect" and any(
            script in arg for arg in chain._argv(pid)
        ):
            roles[pid] = "openconnect"
    ocproxy = _read(Path(drone.work, "ns", "vpn.ocproxy")).strip()
    if ocproxy.isdigit() and chain._comm(int(ocproxy)) == "ocproxy":
        roles[int(ocproxy)] = "ocproxy"
    for pid in chain._netns_pids(lab, "dmz"):
        if chain._comm(pid).startswith("ocserv"):
            roles[pid] = "ocserv"
    return roles


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _tun_mtu(init: int) -> str:
    """tun0's MTU as the namespace sees it (what openconnect negotiated)."""
    result = chain.subprocess.run(
        ["nsenter", "-t", str(init), "-n", "--", "ip", "-o", "link", "show", "tun0"],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"mtu (\d+)", result.stdout)
    return match.group(1) if match else "?"


def vpn_processes(lab: Lab, drone: VpnDrone) -> dict[int, str]:
    """pid -> role: openconnect in the namespace, its outer link on the worker
    (named by the pid of the namespace's unshare among its last arguments),
    every ocserv process on dmz (main, sec-mod, the session's worker)."""
    roles: dict[int, str] = {}
    for process in dronens.ns_processes(drone.work):
        if chain._comm(process.host_pid) == "openconnect":
            roles[process.host_pid] = "openconnect"
    unshare = chain._parent(drone.ns_init)
    for pid in chain._netns_pids(lab, NODE):
        if chain._comm(pid).startswith(("pasta", "passt", "slirp4netns")) and (
            str(unshare) in chain._argv(pid)[-2:]
        ):
            roles[pid] = "outer link"
    for pid in chain._netns_pids(lab, "dmz"):
        if chain._comm(pid).startswith("ocserv"):
            roles[pid] = "ocserv"
    return roles


def udp_counters(lab: Lab) -> tuple[int, int]:
    """(InDatagrams, RcvbufErrors) of dmz's UDP, from its namespace's netstat."""
    result = lab.run("dmz", ["cat", "/proc/net/snmp"], timeout=10)
    lines = [
        line.split() for line in result.stdout.splitlines() if line.startswith("Udp:")
    ]
    if len(lines) < 2:
        return 0, 0
    values = dict(zip(lines[0][1:], (int(v) for v in lines[1][1:])))
    return values.get("InDatagrams", 0), values.get("RcvbufErrors", 0)


def _metered(
    lab: Lab,
    processes: Any,
    prefix: list[str],
    address: str,
    port: int,
    streams: int,
    seconds: int,
) -> tuple[float, dict[str, float], int, int, int, str]:
    """One iperf3 run: (bits/s, CPU-s per GB by role, dmz UDP in, dmz rcvbuf
    errors, TCP retransmissions, why it failed or "")."""
    roles = processes()
    before = {pid: chain._cpu_seconds(pid) for pid in roles}
    udp_before = udp_counters(lab)
    try:
        bps, carried, iperf_cpu, retransmits = chain.iperf3(
            lab, prefix, address, port, streams, seconds
        )
    except RuntimeError as error:
        chain._log(f"iperf3 {streams} streams failed: {error}")
        return 0.0, {}, 0, 0, 0, str(error)
    except chain.subprocess.TimeoutExpired as error:
        chain._log(f"iperf3 {streams} streams failed: {error}")
        return 0.0, {}, 0, 0, 0, f"iperf3 -t {seconds} hung ({error.timeout:.0f} s)"
    udp_after = udp_counters(lab)
    used: dict[str, float] = dict(iperf_cpu)
    for pid, role in processes().items():
        start, end = before.get(pid, 0.0), chain._cpu_seconds(pid)
        if start is not None and end is not None:
            used[role] = used.get(role, 0.0) + end - start
    per_gb = {role: s / (carried / 1e9) for role, s in used.items()} if carried else {}
    return (
        bps,
        per_gb,
        udp_after[0] - udp_before[0],
        udp_after[1] - udp_before[1],
        retransmits,
        "",
    )


def _chain_b_processes(lab: Lab, drone: chain.Drone) -> dict[int, str]:
    roles = chain.path_processes(lab, drone)
    return {pid: ("outer link" if r == "pasta" else r) for pid, r in roles.items()}


def _start_path(
    lab: Lab,
    stack: ExitStack,
    key: str,
    outer: str,
    mtu: Optional[int],
    results: Results,
) -> tuple[Callable[[], dict[int, str]], list[str], str]:
    """Start the drone of path `key` (stopped by `stack`): (its processes to
    meter, the prefix iperf3 runs under, the row's detail)."""
    if key in ("dtls", "tls"):
        drone = start_vpn_drone(lab, stack, key == "dtls", outer, mtu)
        if key == "dtls" and drone.transport != "dtls":
            results.notes.append(f"{PATHS[key]}: transport {drone.transport}")
        return (
            lambda: vpn_processes(lab, drone),
            chain.namespace_prefix(drone),  # type: ignore[arg-type]
            f"{drone.transport} via {drone.outer}, tun0 mtu {drone.mtu}",
        )
    if key == "ocproxy":
        fdrone = start_fallback_drone(lab, stack, mtu)
        if fdrone.transport != "dtls":
            results.notes.append(f"{PATHS[key]}: transport {fdrone.transport}")
        return (
            lambda: fallback_processes(lab, fdrone),
            ["env", *fdrone.env],
            f"{fdrone.transport} via ocproxy 127.0.0.1:{fdrone.port}, preload",
        )
    cdrone = chain.start_drone(lab, stack, "b", 1, chain.NAMESPACE, outer, mtu)
    return (
        lambda: _chain_b_processes(lab, cdrone),
        chain.namespace_prefix(cdrone),
        f"via {cdrone.outer}",
    )


def measure(
    lab: Lab,
    *,
    rate: Optional[str] = RATE,
    streams: Sequence[int] = STREAMS,
    paths: Sequence[str] = DEFAULT_PATHS,
    seconds: int = 5,
    outer: str = "auto",
    mtu: Optional[int] = None,
) -> Results:
    """Every path at every stream count on a running lab; the tbf limit is
    removed again at the end (a lab shared with other tests is left as found)."""
    results = Results()
    results.load.append(chain._load())
    direct: dict[int, float] = {}
    with ExitStack() as stack:
        stack.callback(lab.limit_bandwidth, NODE, None)
        chain.iperf3_server(lab, stack, "login", L.LOGIN_SITE, chain.DIRECT_PORT)
        server = chain.iperf3_server(
            lab, stack, "outside", L.OUTSIDE_HTTP, chain.IPERF_PORT
        )
        lab.limit_bandwidth(NODE, rate)
        for count in streams:
            bps, _, cpu, retransmits = chain.iperf3(
                lab, [], L.LOGIN_SITE, chain.DIRECT_PORT, count, seconds
            )
            direct[count] = bps
            results.rows.append(
                Row(count, PATHS["direct"], bps, bps, retransmits=retransmits)
            )
            chain._log(f"{count:>2} {PATHS['direct']:<40} {bps / 1e6:8.1f} Mbit/s")
        for key in paths:
            if key == "direct":
                continue
            with ExitStack() as path_stack:
                drone_stack: Optional[ExitStack] = None
                for count in streams:
                    if drone_stack is None:
                        drone_stack = path_stack.enter_context(ExitStack())
                        processes, prefix, detail = _start_path(
                            lab, drone_stack, key, outer, mtu, results
                        )
                    bps, per_gb, udp_in, drops, retransmits, error = _metered(
                        lab,
                        processes,
                        prefix,
                        L.OUTSIDE_HTTP,
                        chain.IPERF_PORT,
                        count,
                        seconds,
                    )
                    row = Row(
                        count,
                        PATHS[key],
                        bps,
                        direct[count],
                        per_gb,
                        drops,
                        udp_in,
                        f"{detail}; failed: {error}" if error else detail,
                        retransmits,
                    )
                    results.rows.append(row)
                    chain._log(
                        f"{count:>2} {PATHS[key]:<40} {bps / 1e6:8.1f} Mbit/s "
                        f"{bps / direct[count]:4.0%} ({row.detail}; dmz udp in "
                        f"{udp_in}, rcvbuf errors {drops}, retransmits {retransmits})"
                        " CPU s/GB "
                        + ", ".join(f"{r} {v:.2f}" for r, v in per_gb.items())
                    )
                    if error:
                        # the drone's state after a failed run is unknown (a
                        # stalled ocproxy stays stalled), and the server still
                        # holds the dead test (busy until its own timeout): the
                        # next count gets a fresh drone and a fresh server
                        results.notes.append(
                            f"{PATHS[key]}, {count} streams: {error}; a new drone "
                            "and iperf3 server for the next stream count"
                        )
                        drone_stack.close()
                        drone_stack = None
                        chain._stop(server)
                        server = chain.iperf3_server(
                            lab, stack, "outside", L.OUTSIDE_HTTP, chain.IPERF_PORT
                        )
    results.load.append(chain._load())
    return results


def table(results: Results, rate: Optional[str], seconds: int) -> str:
    """The Markdown table of docs/benchmarks.md, with the run's setting above it."""
    lines = [
        f"<!-- {platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, link {rate or 'none'}, "
        f"iperf3 -t {seconds} -O 1, load before/after {results.load} -->",
        "| streams | path | Mbit/s | per stream | vs direct | transport "
        "| TCP retransmits | dmz rcvbuf drops "
        + "".join(f"| {role} " for role in ROLES)
        + "| CPU s/GB total |",
        "| ---: | --- | ---: | ---: | ---: | --- | ---: | ---: "
        + "| ---: " * len(ROLES)
        + "| ---: |",
    ]
    for row in results.rows:
        cpu = "".join(
            f"| {row.cpu[role]:.2f} " if role in row.cpu else "| " for role in ROLES
        )
        total = f"{sum(row.cpu.values()):.2f}" if row.cpu else ""
        drops = (
            f"{row.rcvbuf_errors} of {row.udp_in}"
            if row.path != PATHS["direct"]
            else ""
        )
        lines.append(
            f"| {row.streams} | {row.path} | {row.bps / 1e6:.1f} "
            f"| {row.bps / 1e6 / row.streams:.1f} "
            f"| {row.bps / row.direct_bps:.0%} | {row.detail} | {row.retransmits} "
            f"| {drops} {cpu}| {total} |"
        )
    lines += ["", *(f"Note: {note}" for note in results.notes)]
    return "\n".join(lines).rstrip()


def _int_list(text: str) -> tuple[int, ...]:
    return chain._int_list(text)


def _path_list(text: str) -> tuple[str, ...]:
    values = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [value for value in values if value not in PATHS]
    if not values or unknown:
        raise argparse.ArgumentTypeError(
            f"got {text!r}; expected paths among {', '.join(PATHS)}, "
            "comma-separated (direct is always measured)"
        )
    return values


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rate", default=RATE, help="tbf rate of worker-site; none = veth speed"
    )
    parser.add_argument("--seconds", type=int, default=5, help="per measurement")
    parser.add_argument(
        "--streams",
        type=_int_list,
        default=STREAMS,
        help="parallel stream counts, comma-separated (default 1,2,10,20)",
    )
    parser.add_argument(
        "--paths",
        type=_path_list,
        default=DEFAULT_PATHS,
        help="paths, comma-separated (default direct,dtls,tls,ocproxy,chain-b)",
    )
    parser.add_argument(
        "--outer",
        choices=("auto", "pasta", "slirp4netns"),
        default="auto",
        help="namespace.outer of the drones (default auto: the product's choice)",
    )
    parser.add_argument(
        "--mtu", type=int, default=None, help="vpn.mtu of the vpn drones"
    )
    parser.add_argument("--name", default=f"vpb{os.getpid() % 1000}", help="lab name")
    args = parser.parse_args(argv)
    if args.seconds < 1:
        parser.error(f"--seconds: got {args.seconds}; expected at least 1")
    if args.rate == "none":
        args.rate = None
    else:
        chain._rate_list(args.rate)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    results = chain.in_own_lab(
        args.name,
        lambda lab: measure(
            lab,
            rate=args.rate,
            streams=args.streams,
            paths=args.paths,
            seconds=args.seconds,
            outer=args.outer,
            mtu=args.mtu,
        ),
    )
    print(table(results, args.rate, args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
