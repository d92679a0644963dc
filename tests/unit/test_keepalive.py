"""The keepalive budget: derived intervals beat the firewall, impossible ones are refused."""

from __future__ import annotations

from typing import Any

import pytest

from tardis_netadapter import condor_knobs
from tardis_netadapter.config import ConfigurationError, load_profile
from tardis_netadapter.keepalive import CONDOR_DEFAULTS, derive_budget
from tardis_netadapter.modes.socks import SUPERVISOR, reconnect_bound

HEARTBEATS = (
    "CCB_HEARTBEAT_INTERVAL",
    "UPDATE_INTERVAL",
    "ALIVE_INTERVAL",
    "STARTER_UPDATE_INTERVAL",
)


def profile(**sections: Any):
    data = {
        "tunnel": {"hops": [{"host": "10.66.1.1"}]},
        "pool": {"collector": "10.66.2.1:9618"},
    }
    data.update(sections)
    return load_profile(data)


def problems(**sections: Any) -> list[str]:
    with pytest.raises(ConfigurationError) as caught:
        profile(**sections)
    return caught.value.problems


@pytest.mark.parametrize("timeout", [3, 10, 20, 60, 90, 600, 3600])
def test_every_leg_carries_traffic_more_often_than_the_timeout(timeout: int) -> None:
    budget = derive_budget(profile(firewall={"idle_timeout": timeout}))
    assert budget.enabled and budget.idle_timeout == timeout
    assert 1 <= budget.server_alive_interval < timeout
    assert budget.server_alive_interval <= 30
    for knob in HEARTBEATS:
        value = int(budget.condor_knobs[knob])
        assert value < timeout or timeout == 1
        assert value <= CONDOR_DEFAULTS[knob]  # never longer than HTCondor's own
        assert value == min(CONDOR_DEFAULTS[knob], max(1, timeout // 2))
    assert budget.condor_knobs["CCB_ADDRESS"] == "10.66.2.1:9618"


def test_twenty_second_firewall_of_the_lab() -> None:
    budget = derive_budget(profile(firewall={"idle_timeout": 20}))
    assert budget.server_alive_interval == 6
    assert budget.server_alive_count_max == 3
    assert budget.dead_tunnel_detection == 18
    assert {k: budget.condor_knobs[k] for k in HEARTBEATS} == dict.fromkeys(
        HEARTBEATS, "10"
    )
    assert budget.condor_knobs["TCP_KEEPALIVE_INTERVAL"] == "10"


def test_no_declared_timeout_keeps_htcondor_defaults() -> None:
    budget = derive_budget(profile())
    assert budget.idle_timeout is None
    assert budget.server_alive_interval == 30
    assert set(budget.condor_knobs) == {"CCB_ADDRESS"}


def test_disabled_keepalive_is_the_control_case() -> None:
    budget = derive_budget(
        profile(firewall={"idle_timeout": 20}, keepalive={"enabled": False})
    )
    assert not budget.enabled
    assert budget.server_alive_interval == 0  # ssh: ServerAliveInterval 0 = off
    assert not any(knob in budget.condor_knobs for knob in HEARTBEATS)
    assert budget.legs() == [("all legs", "nothing: keepalive is switched off")]


def test_explicit_settings_below_the_timeout_are_kept() -> None:
    budget = derive_budget(
        profile(
            firewall={"idle_timeout": 60},
            keepalive={
                "server_alive_interval": 15,
                "server_alive_count_max": 2,
                "condor_knobs": {"ccb_heartbeat_interval": 20},
            },
        )
    )
    assert budget.server_alive_interval == 15
    assert budget.server_alive_count_max == 2
    assert budget.condor_knobs["CCB_HEARTBEAT_INTERVAL"] == "20"
    assert budget.condor_knobs["UPDATE_INTERVAL"] == "30"


def test_server_alive_interval_not_below_the_timeout_is_refused() -> None:
    (problem,) = problems(
        firewall={"idle_timeout": 20}, keepalive={"server_alive_interval": 20}
    )
    assert problem.startswith("Network.keepalive.server_alive_interval: got 20")
    assert "firewall.idle_timeout=20" in problem
    assert "Use at most 10" in problem


def test_heartbeat_knob_not_below_the_timeout_is_refused() -> None:
    (problem,) = problems(
        firewall={"idle_timeout": 20},
        keepalive={"condor_knobs": {"CCB_HEARTBEAT_INTERVAL": 1200}},
    )
    assert "keepalive.condor_knobs.CCB_HEARTBEAT_INTERVAL: got 1200" in problem
    assert "idles out" in problem and "Use at most 10" in problem


def test_tcp_keepalive_knob_is_not_relied_upon_so_not_refused() -> None:
    budget = derive_budget(
        profile(
            firewall={"idle_timeout": 20},
            keepalive={"condor_knobs": {"TCP_KEEPALIVE_INTERVAL": 360}},
        )
    )
    assert budget.condor_knobs["TCP_KEEPALIVE_INTERVAL"] == "360"


def test_all_problems_are_reported_at_once() -> None:
    found = problems(
        firewall={"idle_timeout": 20},
        keepalive={
            "server_alive_interval": 25,
            "condor_knobs": {"UPDATE_INTERVAL": 300, "ALIVE_INTERVAL": 30},
        },
        monitoring={"heartbeat_interval": 30, "grace": 10},
    )
    assert len(found) == 4
    assert any("monitoring.grace: got 10" in p for p in found)


def test_disabled_keepalive_accepts_long_intervals() -> None:
    budget = derive_budget(
        profile(
            firewall={"idle_timeout": 20},
            keepalive={"enabled": False, "server_alive_interval": 60},
        )
    )
    assert budget.server_alive_interval == 0


def test_no_ccb_means_no_ccb_address() -> None:
    budget = derive_budget(
        profile(
            firewall={"idle_timeout": 20},
            pool={"collector": "10.66.2.1:9618", "ccb": False},
        )
    )
    assert "CCB_ADDRESS" not in budget.condor_knobs


def test_watchdog_grace_covers_a_dead_tunnel_a_reconnect_and_two_heartbeats() -> None:
    budget = derive_budget(profile(firewall={"idle_timeout": 20}))
    assert budget.watchdog_interval == 10
    assert budget.dead_tunnel_detection == 6 * 3
    # the supervisor's worst case: ConnectTimeout 10 s (ready_timeout) + back-off
    # cap 10 s + probe interval 0.6 s + spread 1 s + the longest wait for the
    # node's start slot 8 s, rounded up: 30 s
    assert (
        reconnect_bound(load_profile({"tunnel": {"hops": [{"host": "h"}]}}).tunnel)
        == 30
    )
    assert budget.grace == 2 * 10 + 18 + 30 == 68
    assert budget.connect_deadline >= 300


def test_reconnect_bound_follows_the_ready_timeout_and_the_timings() -> None:
    slow = load_profile({"tunnel": {"hops": [{"host": "h"}], "ready_timeout": 30}})
    assert reconnect_bound(slow.tunnel) == 30 + 20
    t = SUPERVISOR
    assert t.probe_max_ms + t.spread_ms + 1000 <= 3000  # the 3 s return target
    assert (
        derive_budget(slow).grace
        == derive_budget(load_profile({"tunnel": {"hops": [{"host": "h"}]}})).grace + 20
    )


def test_legs_name_what_protects_each_leg() -> None:
    legs = dict(derive_budget(profile(firewall={"idle_timeout": 20})).legs())
    assert legs["worker -> login ssh"] == "ServerAliveInterval=6s"
    assert legs["login -> pool (sshd-opened legs)"] == "CCB_HEARTBEAT_INTERVAL=10s"
    assert legs["starter -> shadow"] == "STARTER_UPDATE_INTERVAL=10s"


@pytest.mark.parametrize("timeout", [5, 20, 600])
def test_htcondor_reads_the_derived_knobs_as_generated(timeout: int) -> None:
    pytest.importorskip("htcondor2")
    budget = derive_budget(profile(firewall={"idle_timeout": timeout}))
    assert condor_knobs.mismatches(budget.condor_knobs) == []


def test_the_knob_check_notices_a_knob_htcondor_reads_differently() -> None:
    pytest.importorskip("htcondor2")
    found = condor_knobs.mismatches({"UPDATE_INTERVAL": "$(UNDEFINED_KNOB_XYZ)"})
    assert found and found[0].startswith("UPDATE_INTERVAL: generated")


def test_idle_timeouts_below_the_minimum_are_refused_with_reason_and_minimum() -> None:
    from tardis_netadapter.keepalive import MIN_IDLE_TIMEOUT

    assert MIN_IDLE_TIMEOUT == 2
    (problem,) = problems(firewall={"idle_timeout": 1})
    assert problem.startswith("Network.firewall.idle_timeout: got 1;")
    assert "strictly below" in problem and "use at least 2" in problem


def test_every_accepted_idle_timeout_gets_intervals_strictly_below_it() -> None:
    for timeout in range(2, 2000):
        budget = derive_budget(profile(firewall={"idle_timeout": timeout}))
        assert 1 <= budget.server_alive_interval < timeout, timeout
        for knob in HEARTBEATS:
            assert 1 <= int(budget.condor_knobs[knob]) < timeout, (timeout, knob)


def test_config_and_keepalive_import_in_either_order_without_a_cycle() -> None:
    import subprocess
    import sys

    for first in ("keepalive", "config"):
        code = f"import tardis_netadapter.{first}"
        subprocess.run([sys.executable, "-c", code], check=True)
    import tardis_netadapter.keepalive as keepalive

    assert "NetworkProfile" not in vars(keepalive)  # a hint only, no runtime import
