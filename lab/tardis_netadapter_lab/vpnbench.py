"""Throughput through the DMZ's VPN at 1 Gbit/s (issue 13, decision 1 (A)).

Not a CI test: a measurement. With worker1's link shaped by
`lab.limit_bandwidth` (tbf on both ends), iperf3 from worker1 through
openconnect in a drone-like namespace (vpnclient.VpnClient) to an iperf3 on
outside (10.66.2.1), with DTLS and with `--no-dtls` (TLS only, TCP over TCP),
beside direct worker1 -> login iperf3 (port 60050: the login firewall lets
the srun range in). 1 and 10 streams by default.

    python -m tardis_netadapter_lab.vpnbench --name vpnlab [--rate 1gbit]
        [--streams 1 10] [--seconds 5] [--json out.json]

Uses a lab of that name if it is up, else brings one up and down again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import Lab
from . import layout as L
from .vpnclient import VpnClient

OUTSIDE_PORT = 5201
LOGIN_PORT = 60050  # in SrunPortRange: open from the workers on login


def _iperf(
    run: Callable[[list[str]], Any],
    server: str,
    port: int,
    streams: int,
    seconds: int,
    reverse: bool,
) -> float:
    argv = [
        "iperf3",
        "-c",
        server,
        "-p",
        str(port),
        "-P",
        str(streams),
        "-t",
        str(seconds),
        "-J",
    ]
    if reverse:
        argv.append("-R")
    result = run(argv)
    if result.returncode != 0:
        raise RuntimeError(f"iperf3 failed: {result.stdout[-500:]} {result.stderr}")
    data = json.loads(result.stdout)
    if "sum_received" not in data.get("end", {}):
        raise RuntimeError(f"iperf3: {data.get('error') or result.stdout[-800:]}")
    return data["end"]["sum_received"]["bits_per_second"] / 1e6


def _cpu_seconds(pids: Sequence[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def _descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found += children
        todo += children
    return found


def measure(
    lab: Lab,
    rate: str | None,
    streams: Sequence[int],
    seconds: int,
    reverse: bool = False,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    servers = [
        lab.popen(
            "outside",
            ["iperf3", "-s", "-B", L.OUTSIDE_HTTP, "-p", str(OUTSIDE_PORT)],
            stdout=subprocess.DEVNULL,
        ),
        lab.popen(
            "login",
            ["iperf3", "-s", "-B", L.LOGIN_SITE, "-p", str(LOGIN_PORT)],
            stdout=subprocess.DEVNULL,
        ),
    ]
    time.sleep(0.5)
    lab.limit_bandwidth("worker1", rate)
    try:

        def direct(argv: list[str]) -> Any:
            return lab.run("worker1", argv, timeout=seconds + 30)

        for n in streams:
            rows.append(
                {
                    "path": "direct worker1 -> login",
                    "streams": n,
                    "mbit": _iperf(
                        direct, L.LOGIN_SITE, LOGIN_PORT, n, seconds, reverse
                    ),
                }
            )
        for label, extra in (("vpn dtls", []), ("vpn tls (--no-dtls)", ["--no-dtls"])):
            with VpnClient(lab, "worker1", extra=extra) as client:
                client.wait_up(dtls=not extra)

                def through(argv: list[str], client: VpnClient = client) -> Any:
                    return client.run(argv, timeout=seconds + 30)

                ocserv = lab.status()["services"]["ocserv"]["pid"]
                parts = {
                    "openconnect": [client.ns_pid],
                    "pasta": [client.pasta_pid or 0],
                    "ocserv": [ocserv, *_descendants(ocserv)],
                }
                for n in streams:
                    before = {k: _cpu_seconds(v) for k, v in parts.items()}
                    mbit = _iperf(
                        through, L.OUTSIDE_HTTP, OUTSIDE_PORT, n, seconds, reverse
                    )
                    cpu = {
                        k: round((_cpu_seconds(v) - before[k]) / seconds, 2)
                        for k, v in parts.items()
                    }
                    rows.append(
                        {
                            "path": label,
                            "streams": n,
                            "mbit": mbit,
                            "cpu_cores": cpu,
                        }
                    )
    finally:
        lab.limit_bandwidth("worker1", None)
        for server in servers:
            server.terminate()
            server.wait(timeout=5)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default="vpnbench")
    parser.add_argument("--rate", default="1gbit", help="tbf rate; 'none' for no limit")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--reverse", action="store_true", help="iperf3 -R (download)")
    parser.add_argument("--json", help="write the rows here too")
    args = parser.parse_args(argv)
    rate = None if args.rate == "none" else args.rate
    lab = Lab(name=args.name, workers=1)
    own = not lab.is_up()
    if own:
        lab.up()
    else:
        lab = Lab.attach(args.name)
    try:
        rows = measure(lab, rate, args.streams, args.seconds, args.reverse)
    finally:
        if own:
            lab.down()
    direct = {
        row["streams"]: row["mbit"] for row in rows if row["path"].startswith("direct")
    }
    print(
        f"rate {args.rate}, {args.seconds} s, {'download' if args.reverse else 'upload'}"
    )
    for row in rows:
        share = 100 * row["mbit"] / direct[row["streams"]]
        cpu = " ".join(f"{k} {v:.2f}" for k, v in row.get("cpu_cores", {}).items())
        print(
            f"{row['path']:<22} {row['streams']:>3} streams {row['mbit']:7.1f} Mbit/s"
            f" {share:5.1f} %" + (f"  cores: {cpu}" if cpu else "")
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
