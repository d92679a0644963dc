"""The keepalive budget against the lab's idle-killing firewall (20 s).

Two drones run side by side through chain (b) (worker -> login -> dante:443 ->
collector), their pool connection otherwise idle for 120 s:
  * budgeted: the derived budget (ServerAliveInterval 6 s, CCB heartbeat 10 s)
    keeps both legs across the firewall busy -> the same connection survives;
  * control: keepalive switched off and the payload silent for 125 s -> the
    firewall has forgotten the flows, the first heartbeat dies, the payload
    has lost the pool and registers anew.
The watchdog is off in both, so only the budget differs.
A third drone, budgeted like the first, runs with `chain.capture: namespace`
(issue 12) in the same window: its ssh runs inside the drone's namespace and
leaves through pasta, whose flows the budget's keepalives must carry too. It
uses the same SOCKS port as the first (ports are private to its namespace).
A fourth, in mode `vpn` (issue 13), shares the window: openconnect in its
namespace to dmz's ocserv (tcp/443 TLS and udp/443 DTLS, whose flows dmz's
conntrack forgets after the same 20 s, TCP and UDP: lab.set_idle_timeout),
the pool connection routed through tun0 and masqueraded by dmz. Its DPD is
derived from the 20 s (10 s, rendered as --force-dpd=10): the same pool
connection, the same openconnect and DTLS must last the window.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tardis_netadapter_lab import Lab
from tardis_netadapter_lab import layout as L
from test_chain_support import COLLECTOR, DANTE, LOGIN, Drone, processes

from tardis_netadapter.config import load_profile
from tardis_netadapter.modes.vpn import dpd_interval

pytestmark = [pytest.mark.lab, pytest.mark.slow]

IDLE_TIMEOUT = 20
IDLE = 120


@pytest.fixture
def twenty_second_firewall(lab: Lab) -> Iterator[int]:
    before = lab.idle_timeout
    lab.set_idle_timeout(IDLE_TIMEOUT)
    try:
        yield IDLE_TIMEOUT
    finally:
        lab.set_idle_timeout(before)


def profile(socks_port: int, keepalive: dict, capture: str = "preload") -> dict:
    chain = {"proxies": [DANTE], "localnet": ["127.0.0.0/8", L.SITE_NET]}
    if capture != "preload":
        chain["capture"] = capture
    return {
        "firewall": {"idle_timeout": IDLE_TIMEOUT},
        "tunnel": {"hops": [LOGIN], "socks_port": socks_port},
        "chain": chain,
        "keepalive": keepalive,
        "pool": {"collector": COLLECTOR},
        "monitoring": {"enabled": False},
    }


def vpn_profile(lab: Lab) -> dict:
    """Mode vpn through dmz, keepalive derived from the 20 s (as `profile`)."""
    return {
        "mode": "vpn",
        "firewall": {"idle_timeout": IDLE_TIMEOUT},
        "vpn": {
            "server": L.DMZ_SITE,
            "servercert": lab.vpn_pin,
            "user": lab.vpn_user,
            "password_file": str(lab.vpn_password_file),
        },
        "pool": {"collector": COLLECTOR},
        "monitoring": {"enabled": False},
    }


def openconnect_argv(drone: Drone) -> list[str]:
    """The drone's openconnect (its --script lives in the drone's work dir)."""
    marker = f"tardis-drone.{drone.uuid}."
    found = [
        argv
        for _, argv in processes()
        if argv[0].endswith("openconnect") and any(marker in arg for arg in argv)
    ]
    assert len(found) == 1, found
    return found[0]


def vpn_state(drone: Drone) -> str:
    found = sorted(Path("/tmp").glob(f"tardis-drone.{drone.uuid}.*/ns/vpn.state"))
    assert found, f"no ns/vpn.state of {drone.uuid}"
    return found[0].read_text().strip()


def test_idle_pool_connection_survives_only_with_the_budget(
    lab: Lab, twenty_second_firewall: int
) -> None:
    tag = uuid.uuid4().hex[:8]
    budgeted = Drone(lab, f"netlab-ka-{tag}", profile(1080, {}))
    namespaced = Drone(lab, f"netlab-ka-ns-{tag}", profile(1080, {}, "namespace"))
    vpn = Drone(lab, f"netlab-ka-vpn-{tag}", vpn_profile(lab))
    # the DPD is derived from the 20 s: below it, for TLS's TCP and DTLS's UDP
    dpd = dpd_interval(load_profile(vpn_profile(lab)))
    assert 0 < dpd < IDLE_TIMEOUT, dpd
    control = Drone(
        lab,
        f"netlab-nokeepalive-{tag}",
        profile(
            1081,
            {"enabled": False, "condor_knobs": {"CCB_HEARTBEAT_INTERVAL": IDLE + 5}},
        ),
    )
    try:
        for drone in (budgeted, control, namespaced, vpn):
            drone.submit()
        first = {
            d.uuid: d.wait_registered(timeout=60)
            for d in (budgeted, control, namespaced, vpn)
        }
        assert first[vpn.uuid]["heartbeat_interval"] == IDLE_TIMEOUT // 2
        vpn_argv = openconnect_argv(vpn)
        assert f"--force-dpd={dpd}" in vpn_argv, vpn_argv
        vpn_before = vpn_state(vpn)
        assert vpn_before.startswith("up ") and vpn_before.endswith(" dtls"), vpn_before
        assert first[budgeted.uuid]["heartbeat_interval"] == IDLE_TIMEOUT // 2
        assert first[namespaced.uuid]["heartbeat_interval"] == IDLE_TIMEOUT // 2
        assert first[control.uuid]["heartbeat_interval"] == IDLE + 5
        time.sleep(IDLE + 5 + 10)  # the control's first heartbeat and its ack timeout
        kept, lost = budgeted.record(), control.record()
        kept_ns = namespaced.record()
        kept_vpn = vpn.record()
        vpn_after, vpn_argv_after = vpn_state(vpn), openconnect_argv(vpn)
        vpn_log = vpn.output
        # read before scancel: Slurm signals every process of the job at once,
        # so the tunnel may close under the payload before it handles SIGTERM
        budgeted_log = budgeted.output
        namespaced_log = namespaced.output
    finally:
        for drone in (budgeted, control, namespaced, vpn):
            drone.cancel()
    print(
        f"budgeted: conn {first[budgeted.uuid]['conn']} -> {kept['conn']}, "
        f"{kept['heartbeats']} heartbeats; control: connect_count "
        f"{lost['connect_count']}, reason {lost.get('disconnect_reason')!r}"
    )
    assert kept["connected"] and kept["conn"] == first[budgeted.uuid]["conn"]
    assert kept["connect_count"] == 1
    assert kept["heartbeats"] >= IDLE // (IDLE_TIMEOUT // 2) - 1
    assert "lost the pool" not in budgeted_log
    print(
        f"namespace: conn {first[namespaced.uuid]['conn']} -> {kept_ns['conn']}, "
        f"{kept_ns['heartbeats']} heartbeats"
    )
    assert kept_ns["connected"] and kept_ns["conn"] == first[namespaced.uuid]["conn"]
    assert kept_ns["connect_count"] == 1
    assert kept_ns["heartbeats"] >= IDLE // (IDLE_TIMEOUT // 2) - 1
    assert "lost the pool" not in namespaced_log
    assert "stage isolation ready" in namespaced_log, namespaced_log
    assert "lost the pool" in control.output, control.output
    assert lost["connect_count"] >= 2 or not lost["connected"], lost
    print(
        f"vpn: conn {first[vpn.uuid]['conn']} -> {kept_vpn['conn']}, "
        f"{kept_vpn['heartbeats']} heartbeats, --force-dpd={dpd}, "
        f"state {vpn_before!r} -> {vpn_after!r}"
    )
    assert kept_vpn["connected"] and kept_vpn["conn"] == first[vpn.uuid]["conn"]
    assert kept_vpn["connect_count"] == 1
    assert kept_vpn["heartbeats"] >= IDLE // (IDLE_TIMEOUT // 2) - 1
    assert "lost the pool" not in vpn_log, vpn_log
    # the same openconnect, still on DTLS: neither leg died idle
    assert vpn_after == vpn_before, vpn_log
    assert vpn_argv_after == vpn_argv
    assert len(re.findall(r"vpn: .* started \(supervisor pid", vpn_log)) == 1, vpn_log
    assert "Dead Peer Detection detected dead peer" not in vpn_log, vpn_log
