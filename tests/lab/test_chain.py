"""A rendered drone script in the lab: CVMFS through the squid route, the tunnel,
the chain, and the payload registered with the pool through each of

  (a) worker -> ssh -D on login -> a pool on outside:443 (login may open 443)
  (b) worker -> ssh -D on login -> dante on outside:443 -> collector :9618
  (c) worker -> login -> ssh gateway on outside:443 (ProxyJump), -D there

and after the tunnel's ssh is killed: chain back within 5 s, payload again.
Measured times are printed (pytest -s) and reported in docs/drone-script.md.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest
from tardis_netadapter_lab import Lab
from tardis_netadapter_lab import layout as L
from test_chain_support import (
    COLLECTOR,
    DANTE,
    GATEWAY,
    LOGIN,
    SQUID_ON_LOGIN,
    Drone,
    chain_connects,
    cvmfs_section,
    extra_pool,
    install_cvmfsexec,
)

pytestmark = pytest.mark.lab

SITE_NET = ["127.0.0.0/8", L.SITE_NET]


@pytest.fixture(scope="module")
def cvmfsexec(lab: Lab) -> Path:
    return install_cvmfsexec(lab)


def new_uuid(tag: str) -> str:
    return f"netlab-{tag}-{uuid.uuid4().hex[:8]}"


def squid_saw(lab: Lab, repo: str, since: float) -> bool:
    """The login squid's access log shows this repository's manifest fetched."""
    log = lab.state_dir / "squid" / "login" / "access.log"
    for line in log.read_text().splitlines():
        fields = line.split()
        if float(fields[0]) >= since - 1 and f"/cvmfs/{repo}/.cvmfspublished" in line:
            return True
    return False


def assert_ready_in_time(drone: Drone) -> None:
    stage, since_start = drone.tunnel_ready()
    print(
        f"{drone.uuid}: tunnel ready after {stage:.2f}s, {since_start:.2f}s after start"
    )
    assert since_start <= 2.0, drone.output


def test_b_two_hop_chain_through_dante_with_mountrepo(
    lab: Lab, cvmfsexec: Path, drones: list[Drone]
) -> None:
    started = time.time()
    drone = Drone(
        lab,
        new_uuid("b"),
        {
            "firewall": {"idle_timeout": lab.idle_timeout},
            "tunnel": {"hops": [LOGIN], "forwards": [SQUID_ON_LOGIN]},
            "chain": {"proxies": [DANTE], "localnet": SITE_NET},
            "cvmfs": cvmfs_section("mountrepo", ("lab.cern.ch", "cms.cern.ch")),
            "pool": {"collector": COLLECTOR},
        },
    )
    drones.append(drone.submit())
    record = drone.wait_registered()
    assert record["remote"].startswith(f"{L.OUTSIDE_SOCKS}:")  # via dante
    assert record["heartbeat_interval"] == lab.idle_timeout // 2
    assert record["cpus"] == 1 and record["memory"] == 200
    assert record["name"] == drone.uuid
    assert "stage cvmfs ready after" in drone.output
    assert squid_saw(lab, "cms.cern.ch", started)
    assert_ready_in_time(drone)


def test_a_socks_on_login_to_a_service_on_443_with_cvmfsexec_and_container(
    lab: Lab, cvmfsexec: Path, drones: list[Drone], tmp_path: Path
) -> None:
    started = time.time()
    with extra_pool(
        lab, L.OUTSIDE_HTTP, L.HTTPS_PORT, tmp_path / "pool443.json"
    ) as state:
        drone = Drone(
            lab,
            new_uuid("a"),
            {
                "firewall": {"idle_timeout": lab.idle_timeout},
                "tunnel": {"hops": [LOGIN], "forwards": [SQUID_ON_LOGIN]},
                "chain": {"localnet": SITE_NET},
                "cvmfs": cvmfs_section("auto"),
                "container": {"runtime": "apptainer", "image": "~/image"},
                "pool": {"collector": f"{L.OUTSIDE_HTTP}:{L.HTTPS_PORT}"},
            },
            state=state,
        )
        drones.append(drone.submit())
        record = drone.wait_registered()
        assert record["remote"].startswith(f"{L.LOGIN_PUBLIC}:")  # sshd on login
        output = drone.output
        assert "stage cvmfs prepared: cvmfsexec" in output
        assert "stage cvmfs ready after" in output  # seen inside the container
        assert "stage container ready" in output
        assert squid_saw(lab, "lab.cern.ch", started)
        assert_ready_in_time(drone)
        drone.cancel()


def test_c_ssh_chain_to_the_gateway_on_443_and_a_killed_ssh(
    lab: Lab, cvmfsexec: Path, drones: list[Drone]
) -> None:
    squid_outside = {"listen_port": 3128, "host": L.OUTSIDE_HTTP, "port": L.SQUID_PORT}
    drone = Drone(
        lab,
        new_uuid("c"),
        {
            "firewall": {"idle_timeout": lab.idle_timeout},
            "tunnel": {"hops": [LOGIN, GATEWAY], "forwards": [squid_outside]},
            "chain": {"localnet": SITE_NET},
            "cvmfs": cvmfs_section("mountrepo"),
            "pool": {"collector": COLLECTOR},
        },
    )
    drones.append(drone.submit())
    record = drone.wait_registered()
    # the gateway's sshd connects from outside's own address, not via login or dante
    assert record["remote"].startswith(f"{L.OUTSIDE_HTTP}:")
    assert_ready_in_time(drone)

    node, conf = drone.node(), drone.work_file("proxychains.conf")
    assert chain_connects(lab, node, conf, L.OUTSIDE_HTTP, L.COLLECTOR_PORT)
    killed = drone.ssh_pid()
    os.kill(killed, signal.SIGKILL)
    t0 = time.monotonic()
    while not chain_connects(lab, node, conf, L.OUTSIDE_HTTP, L.COLLECTOR_PORT):
        assert time.monotonic() - t0 < 5, drone.output
        time.sleep(0.05)
    back = time.monotonic() - t0
    drone.wait_registered(timeout=20, count=2)
    again = time.monotonic() - t0
    print(
        f"{drone.uuid}: chain usable {back:.2f}s, payload registered {again:.2f}s after kill -9 ssh"
    )
    assert back < 5
    assert drone.ssh_pid() != killed
