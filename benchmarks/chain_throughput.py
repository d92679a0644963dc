#!/usr/bin/env python3
"""Throughput of the drone's chain against a direct path, in the lab (seed 003's table).

The worker-login link is limited with tbf (default 1 Gbit/s, as the seed's
1 Gbps links). A real drone (rendered script, sbatch) brings up its tunnel,
on the local SOCKS port it chose itself (``auto``); iperf3 then runs on the
worker with 1, 2, 10 and 20 parallel streams along each path, side by side:

  direct   worker -> iperf3 on login (a port the site firewall lets workers use)
  a        worker -> proxychains (the drone's own conf) -> ssh -D on login
           -> iperf3 on outside:443
  b        the same, then dante on outside:443 -> iperf3 on outside:5201

All of them cross the same limited link; the chains add ssh's encryption and
the SOCKS hop(s). Everything runs inside a lab of its own, torn down at the end.

    python benchmarks/chain_throughput.py [--rate 1gbit] [--seconds 5]
        [--streams 1,2,10,20] [--chains a,b]

Short form (what tests/lab/test_chain_benchmark.py runs, so this cannot rot):

    python benchmarks/chain_throughput.py --seconds 1 --streams 1
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
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tardis_netadapter_lab import Lab
from tardis_netadapter_lab import layout as L
from tardis_netadapter_lab.netns import is_listening

from tardis_netadapter.config import load_profile
from tardis_netadapter.keepalive import derive_budget
from tardis_netadapter.render import proxychains_conf_text, render_drone_script

DIRECT_PORT = 60050  # in the srun port range: workers may reach login there
IPERF_PORT = 5201
STREAMS = (1, 2, 10, 20)
NODE = "worker1"
#: chain key -> the label of its rows in the table
CHAINS = {"a": "chain (ssh -D on login)", "b": "chain + dante:443"}
DIRECT = "direct"
#: the drone's log line naming the local ports it chose (drone_scripts/lib/tunnel.sh)
LOCAL_PORTS = re.compile(r"tunnel: local ports socks 127\.0\.0\.1:(\d+)")
DANTE = {"type": "socks5", "host": L.OUTSIDE_SOCKS, "port": L.HTTPS_PORT}


@dataclass(frozen=True)
class Row:
    """One measurement: `bps` received, summed over `streams` parallel streams."""

    streams: int
    path: str
    bps: float
    direct_bps: float


@dataclass(frozen=True)
class Drone:
    """What the benchmark needs of the running drone."""

    work: str
    job_id: str
    socks_port: int


def profile_data(idle_timeout: int, proxies: Sequence[dict[str, Any]] = ()) -> dict:
    """The drone's profile; socks_port stays ``auto`` as on a real site."""
    return {
        "firewall": {"idle_timeout": idle_timeout},
        "tunnel": {"hops": [{"host": L.LOGIN_SITE}]},
        "chain": {"localnet": ["127.0.0.0/8", L.SITE_NET], "proxies": list(proxies)},
        "pool": {"collector": ""},  # nothing to probe: iperf3 is the payload's peer
        "monitoring": {"enabled": False},
        "payload": {"command": ["sleep", "3600"]},
    }


def start_server(
    lab: Lab, stack: ExitStack, host: str, address: str, port: int
) -> None:
    proc = lab.popen(
        host,
        ["iperf3", "-s", "-B", address, "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stack.callback(_stop, proc)
    deadline = time.monotonic() + 10
    while not is_listening(proc.pid, address, port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"iperf3 server on {host} {address}:{port} did not start"
            )
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[Any]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_drone(lab: Lab, stack: ExitStack) -> Drone:
    """Submit the drone; return it once its tunnel is up and the payload runs."""
    drone_uuid = f"bench-{uuid.uuid4().hex[:8]}"
    profile = load_profile(profile_data(lab.idle_timeout))
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
            return Drone(work.group(1), job_id, int(port.group(1)))
        time.sleep(0.2)
    raise RuntimeError(
        f"drone did not start:\n{output.read_text() if output.exists() else ''}"
    )


def cancel(lab: Lab, job_id: str) -> None:
    """scancel, then wait for the drone's own cleanup before the lab goes down."""
    lab.run("login", ["scancel", job_id], user=lab.drone_user)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        queue = lab.run("login", ["squeue", "-h", "-j", job_id], user=lab.drone_user)
        if not queue.stdout.strip():
            return
        time.sleep(0.2)


def dante_conf(lab: Lab, drone: Drone) -> str:
    """proxychains.conf for chain (b): the drone's tunnel, then dante.

    Rendered from the profile, the tunnel's SOCKS port is the placeholder
    @TARDIS_PORT_0@, which the drone script replaces with the port it chose at
    run time; this conf is not the drone's, so the benchmark puts that port
    in itself (left in, proxychains fails on every connection).
    """
    text = proxychains_conf_text(
        load_profile(profile_data(lab.idle_timeout, [DANTE]))
    ).replace("@TARDIS_PORT_0@", str(drone.socks_port))
    if "@TARDIS_PORT_" in text:
        raise RuntimeError(f"a port placeholder left in the dante conf:\n{text}")
    return text


def iperf3(
    lab: Lab, prefix: list[str], address: str, port: int, streams: int, seconds: int
) -> float:
    """Received bits per second summed over `streams` parallel streams."""
    argv = prefix + ["iperf3", "-J", "-c", address, "-p", str(port)]
    argv += ["-P", str(streams), "-t", str(seconds), "-O", "1"]
    result = lab.run(NODE, argv, user=lab.drone_user, timeout=seconds + 60)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed: {result.stdout[-500:]}{result.stderr}"
        )
    return float(json.loads(result.stdout)["end"]["sum_received"]["bits_per_second"])


def measure(
    lab: Lab,
    *,
    rate: Optional[str],
    seconds: int,
    streams: Sequence[int] = STREAMS,
    chains: Sequence[str] = tuple(CHAINS),
) -> tuple[list[Row], str]:
    """Direct and each chain, per stream count, on a running lab; rows and cipher.

    The tbf limit (None: veth speed) is removed again at the end, so a lab
    shared with other tests is left as found.
    """
    rows: list[Row] = []
    with ExitStack() as stack:
        if rate is not None:
            lab.limit_bandwidth(NODE, rate)
            stack.callback(lab.limit_bandwidth, NODE, None)
        start_server(lab, stack, "login", L.LOGIN_SITE, DIRECT_PORT)
        start_server(lab, stack, "outside", L.OUTSIDE_HTTP, L.HTTPS_PORT)
        if "b" in chains:
            start_server(lab, stack, "outside", L.OUTSIDE_HTTP, IPERF_PORT)
        drone = start_drone(lab, stack)
        conf_b = lab.layout.home(lab.drone_user) / f"bench-dante-{drone.job_id}.conf"
        conf_b.write_text(dante_conf(lab, drone))
        stack.callback(conf_b.unlink, missing_ok=True)
        ssh_config = Path(drone.work, "ssh_config")
        ciphers = re.findall(r"^\s*Ciphers\s+(\S+)", ssh_config.read_text(), re.M)
        cipher = ciphers[-1].split(",")[0] if ciphers else "default"
        paths = {
            DIRECT: ([], L.LOGIN_SITE, DIRECT_PORT),
            "a": (
                ["proxychains4", "-q", "-f", f"{drone.work}/proxychains.conf"],
                L.OUTSIDE_HTTP,
                L.HTTPS_PORT,
            ),
            "b": (
                ["proxychains4", "-q", "-f", str(conf_b)],
                L.OUTSIDE_HTTP,
                IPERF_PORT,
            ),
        }
        for count in streams:
            direct = 0.0
            for key in (DIRECT, *chains):
                prefix, address, port = paths[key]
                bps = iperf3(lab, prefix, address, port, count, seconds)
                direct = direct or bps
                name = CHAINS.get(key, DIRECT)
                rows.append(Row(count, name, bps, direct))
                print(f"{count:>2} {name:<26} {bps / 1e6:8.1f} Mbit/s", file=sys.stderr)
    return rows, cipher


def table(rows: Sequence[Row], rate: Optional[str], seconds: int, cipher: str) -> str:
    """The Markdown table of docs/benchmarks.md, with the run's setting above it."""
    lines = [
        f"<!-- {platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, tbf {rate or 'none'} on "
        f"worker-login, iperf3 -t {seconds} -O 1, ssh cipher {cipher} -->",
        "| xfers | path | avg per transfer (Mbit/s) | avg concurrent (Mbit/s) "
        "| vs direct |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row.streams} | {row.path} | {row.bps / row.streams / 1e6:.1f} "
            f"| {row.bps / 1e6:.1f} | {row.bps / row.direct_bps:.0%} |"
        )
    return "\n".join(lines)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"got {text!r}; expected stream counts >= 1, comma-separated, e.g. 1,10"
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


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rate", default="1gbit", help="tbf rate of worker-login, or none (veth speed)"
    )
    parser.add_argument("--seconds", type=int, default=5, help="per measurement")
    parser.add_argument(
        "--streams",
        type=_int_list,
        default=STREAMS,
        help="parallel stream counts, comma-separated (default 1,2,10,20)",
    )
    parser.add_argument(
        "--chains",
        type=_chain_list,
        default=tuple(CHAINS),
        help="chains to measure beside direct, comma-separated (default a,b)",
    )
    parser.add_argument("--name", default=f"bch{os.getpid() % 1000}", help="lab name")
    args = parser.parse_args(argv)
    if args.seconds < 1:
        parser.error(f"--seconds: got {args.seconds}; expected at least 1")
    args.rate = None if args.rate == "none" else args.rate
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    lab = Lab(name=args.name, workers=1, idle_timeout=300)
    with ExitStack() as stack:
        stack.callback(lab.down)
        lab.up()
        rows, cipher = measure(
            lab,
            rate=args.rate,
            seconds=args.seconds,
            streams=args.streams,
            chains=args.chains,
        )
    print(table(rows, args.rate, args.seconds, cipher))
    return 0


if __name__ == "__main__":
    sys.exit(main())
