"""Two drones on the same worker, each with its own local tunnel ports.

Drones pack nodes (FZJ ran 64 on one JURECA node), so the SOCKS port and the
squid forward are `auto`: each drone picks free loopback ports at run time.
Both drones here are sent to worker1 (sbatch -w) at once, through chain (b)
(worker -> ssh -L on login -> dante on outside:443 -> collector :9618) with
CVMFS through `forward:squid`; both must bring up their tunnels on different
ports and register with the pool stand-in, each through its own chain.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from tardis_netadapter_lab import Lab
from tardis_netadapter_lab import layout as L
from test_chain_support import (
    COLLECTOR,
    DANTE,
    LOGIN,
    Drone,
    chain_connects,
    cvmfs_section,
    install_cvmfsexec,
)

pytestmark = pytest.mark.lab

NODE = "worker1"
SQUID = {"name": "squid", "host": "127.0.0.1", "port": L.SQUID_PORT}
PORTS = re.compile(
    r"tunnel: local ports socks 127\.0\.0\.1:(\d+), squid 127\.0\.0\.1:(\d+) .*"
    r"proxy 127\.0\.0\.1:(\d+) -> " + re.escape(f"{L.OUTSIDE_SOCKS}:{L.HTTPS_PORT}")
)


def ports_of(drone: Drone) -> tuple[int, int, int]:
    """The drone's SOCKS port, its squid forward and its -L forward to dante."""
    match = PORTS.search(drone.output)
    assert match, drone.output
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


def test_two_drones_on_one_worker_each_get_their_own_ports(
    lab: Lab, drones: list[Drone]
) -> None:
    install_cvmfsexec(lab)
    profile = {
        "firewall": {"idle_timeout": lab.idle_timeout},
        "tunnel": {"hops": [LOGIN], "forwards": [SQUID]},  # ports: auto
        "chain": {"proxies": [DANTE], "localnet": ["127.0.0.0/8", L.SITE_NET]},
        "cvmfs": {**cvmfs_section("mountrepo"), "http_proxy": "forward:squid"},
        "pool": {"collector": COLLECTOR},
    }
    tag = uuid.uuid4().hex[:6]
    pair = [
        Drone(lab, f"netlab-ports{i}-{tag}", profile, sbatch_options=("-w", NODE))
        for i in (1, 2)
    ]
    for drone in pair:
        drones.append(drone.submit())
    records = [drone.wait_registered() for drone in pair]
    assert [drone.node() for drone in pair] == [NODE, NODE]  # side by side
    for drone, record in zip(pair, records):
        assert record["remote"].startswith(f"{L.OUTSIDE_SOCKS}:"), drone.output
        assert "stage tunnel ready after" in drone.output
        assert "stage cvmfs ready after" in drone.output
        assert "is already in use" not in drone.output
    ports = [port for drone in pair for port in ports_of(drone)]
    print(f"{NODE}: drone ports (socks, squid, dante): {ports[:3]} and {ports[3:]}")
    assert len(set(ports)) == 6, ports
    # each drone's own chain works, through its own forward to dante (the
    # chain reaches its first proxy through an ssh -L forward)
    for drone in pair:
        conf = drone.work_file("proxychains.conf")
        proxy = ports_of(drone)[2]
        assert f"socks5 127.0.0.1 {proxy}\n" in Path(conf).read_text()
        assert chain_connects(lab, NODE, conf, L.OUTSIDE_HTTP, L.COLLECTOR_PORT)
