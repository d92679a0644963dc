#!/usr/bin/env python3
"""Throughput of the drone's chain against a direct path, in the lab (seed 003's table).

The worker-login link is limited with tbf (default 1 Gbit/s, as the seed's
1 Gbps links). A real drone (rendered script, sbatch) brings up its tunnel;
iperf3 then runs on the worker with 1, 2, 10 and 20 parallel streams:

  direct   worker -> iperf3 on login (a port the site firewall lets workers use)
  chain    worker -> proxychains (the drone's own conf) -> ssh -D on login
           -> iperf3 on outside:443
  +dante   the same, then dante on outside:443 -> iperf3 on outside:5201

All three cross the same limited link; the chain adds ssh's encryption and the
SOCKS hop(s). Everything runs inside a lab of its own, torn down at the end.

    python benchmarks/chain_throughput.py [--rate 1gbit] [--seconds 5]
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
from contextlib import ExitStack
from typing import Any

from tardis_netadapter_lab import Lab
from tardis_netadapter_lab import layout as L
from tardis_netadapter_lab.netns import is_listening

from tardis_netadapter.config import load_profile
from tardis_netadapter.keepalive import derive_budget
from tardis_netadapter.render import proxychains_conf_text, render_drone_script

DIRECT_PORT = 60050  # in the srun port range: workers may reach login there
IPERF_PORT = 5201
STREAMS = (1, 2, 10, 20)


def profile_data() -> dict[str, Any]:
    return {
        "firewall": {"idle_timeout": 300},
        "tunnel": {"hops": [{"host": L.LOGIN_SITE}]},
        "chain": {"localnet": ["127.0.0.0/8", L.SITE_NET]},
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


def start_drone(lab: Lab, stack: ExitStack) -> tuple[str, str]:
    """Submit the drone; return its work directory and job id once the tunnel is up."""
    drone_uuid = f"bench-{uuid.uuid4().hex[:8]}"
    profile = load_profile(profile_data())
    script = render_drone_script(
        profile,
        derive_budget(profile),
        site_name="NetLab",
        machine_type="bench",
        job_id_variable="SLURM_JOB_ID",
    )
    result = lab.run(
        "login",
        ["sbatch", "--parsable", "-w", "worker1", "-o", f"{drone_uuid}.out"]
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
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = output.read_text() if output.exists() else ""
        started = re.search(r"stage payload started", text)
        work = re.search(r"work directory (\S+)", text)
        if started and work:
            return work.group(1), job_id
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


def iperf3(
    lab: Lab, prefix: list[str], address: str, port: int, streams: int, seconds: int
) -> float:
    """Received bits per second summed over `streams` parallel streams."""
    argv = prefix + ["iperf3", "-J", "-c", address, "-p", str(port)]
    argv += ["-P", str(streams), "-t", str(seconds), "-O", "1"]
    result = lab.run("worker1", argv, user=lab.drone_user, timeout=seconds + 60)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed: {result.stdout[-500:]}{result.stderr}"
        )
    return float(json.loads(result.stdout)["end"]["sum_received"]["bits_per_second"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rate", default="1gbit", help="tbf rate of worker-login, or none (veth speed)"
    )
    parser.add_argument("--seconds", type=int, default=5, help="per measurement")
    parser.add_argument("--name", default=f"bch{os.getpid() % 1000}", help="lab name")
    args = parser.parse_args()

    lab = Lab(name=args.name, workers=1, idle_timeout=300)
    rows = []
    with ExitStack() as stack:
        lab.up()
        stack.callback(lab.down)
        if args.rate != "none":
            lab.limit_bandwidth("worker1", args.rate)
        start_server(lab, stack, "login", L.LOGIN_SITE, DIRECT_PORT)
        start_server(lab, stack, "outside", L.OUTSIDE_HTTP, L.HTTPS_PORT)
        start_server(lab, stack, "outside", L.OUTSIDE_HTTP, IPERF_PORT)
        work, _ = start_drone(lab, stack)
        conf = f"{work}/proxychains.conf"
        dante = load_profile(
            {
                **profile_data(),
                "chain": {
                    **profile_data()["chain"],
                    "proxies": [
                        {
                            "type": "socks5",
                            "host": L.OUTSIDE_SOCKS,
                            "port": L.HTTPS_PORT,
                        }
                    ],
                },
            }
        )
        dante_conf = lab.layout.home(lab.drone_user) / "bench-dante.conf"
        dante_conf.write_text(proxychains_conf_text(dante))
        cipher = subprocess.run(
            ["grep", "-h", "Ciphers", f"{work}/ssh_config"],
            capture_output=True,
            text=True,
        ).stdout.split()[-1:] or ["default"]
        paths = [
            ("direct", [], L.LOGIN_SITE, DIRECT_PORT),
            (
                "chain (ssh -D on login)",
                ["proxychains4", "-q", "-f", conf],
                L.OUTSIDE_HTTP,
                L.HTTPS_PORT,
            ),
            (
                "chain + dante:443",
                ["proxychains4", "-q", "-f", str(dante_conf)],
                L.OUTSIDE_HTTP,
                IPERF_PORT,
            ),
        ]
        for streams in STREAMS:
            direct = None
            for name, prefix, address, port in paths:
                bps = iperf3(lab, prefix, address, port, streams, args.seconds)
                direct = direct or bps
                rows.append(
                    (streams, name, bps / streams / 1e6, bps / 1e6, bps / direct)
                )
                print(
                    f"{streams:>2} {name:<26} {bps / 1e6:8.1f} Mbit/s", file=sys.stderr
                )

    print(
        f"<!-- {platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, tbf {args.rate} on worker-login, "
        f"iperf3 -t {args.seconds} -O 1, ssh cipher {cipher[0].split(',')[0]} -->"
    )
    print(
        "| xfers | path | avg per transfer (Mbit/s) | avg concurrent (Mbit/s) | vs direct |"
    )
    print("| ---: | --- | ---: | ---: | ---: |")
    for streams, name, per, total, ratio in rows:
        print(f"| {streams} | {name} | {per:.1f} | {total:.1f} | {ratio:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
