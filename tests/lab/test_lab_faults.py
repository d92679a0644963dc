"""Fault hooks break the lab the way the tests of the adapter need it broken."""

from __future__ import annotations

import time

import pytest
from tardis_netadapter_lab import Lab
from tardis_netadapter_lab import layout as L
from tardis_netadapter_lab.firewall import current_idle_timeout

pytestmark = pytest.mark.lab


def _fetch(lab: Lab, host: str, path: str = "/files/hello.txt") -> tuple[int, str]:
    result = lab.run(
        host,
        ["curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{speed_download}"]
        + [f"http://{L.OUTSIDE_HTTP}{path}"],
    )
    return result.returncode, result.stdout


def test_kill_and_restart_a_service(lab: Lab) -> None:
    old_pid = lab.status()["services"]["http"]["pid"]
    assert lab.kill_service("http") is True
    assert lab.status()["services"]["http"]["alive"] is False
    assert _fetch(lab, "login")[0] != 0
    assert lab.kill_service("http") is False  # already dead: no error
    new_pid = lab.restart_service("http")
    assert new_pid != old_pid
    assert lab.status()["services"]["http"] == {
        **lab.status()["services"]["http"],
        "pid": new_pid,
        "alive": True,
    }
    assert _fetch(lab, "login")[0] == 0


def test_restart_slurmctld_keeps_the_cluster_usable(lab: Lab) -> None:
    lab.restart_service("slurmctld")
    lab.wait_nodes_idle(timeout=20)
    assert set(lab.node_states()) == {"worker1", "worker2"}


def test_cut_link_silences_a_worker_then_heals(lab: Lab) -> None:
    ssh = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=1", "login", "true"]
    lab.cut_link("worker1", 2)
    cut_at = time.monotonic()
    assert lab.link_is_up("worker1") is False
    assert lab.run("worker1", ssh, user=lab.drone_user).returncode != 0
    assert lab.run("worker2", ssh, user=lab.drone_user).returncode == 0
    while not lab.link_is_up("worker1"):
        assert time.monotonic() - cut_at < 5, "link did not come back"
        time.sleep(0.1)
    assert lab.run("worker1", ssh, user=lab.drone_user).returncode == 0


def test_set_idle_timeout_changes_the_login_conntrack(lab: Lab) -> None:
    try:
        lab.set_idle_timeout(7)
        assert current_idle_timeout(lab.layout) == 7
    finally:
        lab.set_idle_timeout(30)
    assert current_idle_timeout(lab.layout) == 30


def test_limit_bandwidth_shapes_and_unshapes_the_uplink(lab: Lab) -> None:
    try:
        lab.limit_bandwidth("login", "40mbit")
        code, speed = _fetch(lab, "login", "/files/10M.bin")
        assert code == 0
        assert float(speed) < 6e6, speed  # 40 Mbit/s = 5 MB/s
    finally:
        lab.limit_bandwidth("login", None)
    code, speed = _fetch(lab, "login", "/files/10M.bin")
    assert code == 0
    assert float(speed) > 20e6, speed
