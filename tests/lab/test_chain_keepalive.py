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
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from tardis_netadapter_lab import Lab
from tardis_netadapter_lab import layout as L
from test_chain_support import COLLECTOR, DANTE, LOGIN, Drone

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


def test_idle_pool_connection_survives_only_with_the_budget(
    lab: Lab, twenty_second_firewall: int
) -> None:
    tag = uuid.uuid4().hex[:8]
    budgeted = Drone(lab, f"netlab-ka-{tag}", profile(1080, {}))
    namespaced = Drone(lab, f"netlab-ka-ns-{tag}", profile(1080, {}, "namespace"))
    control = Drone(
        lab,
        f"netlab-nokeepalive-{tag}",
        profile(
            1081,
            {"enabled": False, "condor_knobs": {"CCB_HEARTBEAT_INTERVAL": IDLE + 5}},
        ),
    )
    try:
        for drone in (budgeted, control, namespaced):
            drone.submit()
        first = {d.uuid: d.wait_registered() for d in (budgeted, control, namespaced)}
        assert first[budgeted.uuid]["heartbeat_interval"] == IDLE_TIMEOUT // 2
        assert first[namespaced.uuid]["heartbeat_interval"] == IDLE_TIMEOUT // 2
        assert first[control.uuid]["heartbeat_interval"] == IDLE + 5
        time.sleep(IDLE + 5 + 10)  # the control's first heartbeat and its ack timeout
        kept, lost = budgeted.record(), control.record()
        kept_ns = namespaced.record()
        # read before scancel: Slurm signals every process of the job at once,
        # so the tunnel may close under the payload before it handles SIGTERM
        budgeted_log = budgeted.output
        namespaced_log = namespaced.output
    finally:
        for drone in (budgeted, control, namespaced):
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
