"""The lab's Grid Engine shape (issue 16) without a lab: the host view every
Grid Engine process runs in, the host table, per-lab tracking groups, login's
sshd form and the firewall port.

tests/lab/test_lab_gridengine.py runs all of it against a real lab.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tardis_netadapter_lab import firewall, gehost, gridengine, services
from tardis_netadapter_lab import layout as L


def test_host_table_names_login_and_every_worker_by_site_address() -> None:
    lab = L.LabLayout(name="gel1", workers=3)
    rows = [line.split("\t") for line in gehost.hosts_table(lab).splitlines()]
    assert rows == [
        ["127.0.0.1", "localhost"],
        ["10.66.1.1", "login"],
        ["10.66.1.11", "worker1"],
        ["10.66.1.12", "worker2"],
        ["10.66.1.13", "worker3"],
    ]


def test_host_view_keeps_the_pid_and_passes_name_table_and_tun() -> None:
    lab = L.LabLayout(name="gel1")
    argv = gehost.host_view(lab, "worker2", ("sge_execd",), tun=True)
    # unshare without --fork, then exec: the recorded pid is the daemon's
    assert argv[:6] == ("unshare", "--mount", "--uts", "--propagation", "private", "--")
    assert "--fork" not in argv and 'exec "$@"' in gehost.HOST_VIEW_SCRIPT
    assert argv[-4:] == ("worker2", str(gehost.hosts_file(lab)), "tun", "sge_execd")
    plain = gehost.host_view(lab, "login", ("sshd",))
    assert plain[-2:] == ("-", "sshd")
    # the lab's /etc/default/gridengine sits beside the host table
    assert gehost.default_file(lab).parent == gehost.hosts_file(lab).parent


def test_each_lab_has_its_own_tracking_groups() -> None:
    ranges = {name: gridengine.gid_range(name) for name in ("gel1", "gel2", "tnt7")}
    assert len(set(ranges.values())) == 3
    for text in ranges.values():
        low, high = map(int, text.split("-"))
        assert high - low == 99 and low >= 20000 and high < 60000


def test_login_sshd_runs_in_the_host_view_only_while_grid_engine_is_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    lab = L.LabLayout(name="gel1")
    marker = tmp_path / "up.json"
    monkeypatch.setattr(gehost, "marker", lambda layout: marker)
    plain = services.login_sshd_argv(lab)
    assert plain[0] == "/usr/sbin/sshd"
    marker.write_text("{}")
    argv = services.login_sshd_argv(lab)
    assert argv[0] == "unshare" and argv[-len(plain) :] == plain
    assert argv[-len(plain) - 3 : -len(plain)][0] == "login"
    assert services.service_table(lab)["login-sshd"].argv == argv


def test_daemons_are_lab_services_in_their_namespaces() -> None:
    lab = L.LabLayout(name="gel1", workers=2)
    table = gridengine.GridEngine(lab).services()
    assert [(s.name, s.host, s.port) for s in table] == [
        ("sge-qmaster", "login", L.SGE_QMASTER_PORT),
        ("sge-execd-worker1", "worker1", L.SGE_EXECD_PORT),
        ("sge-execd-worker2", "worker2", L.SGE_EXECD_PORT),
    ]
    qmaster = table[0].argv
    assert "SGE_CELL=gel1" in qmaster and "SGE_ND=true" in qmaster
    assert qmaster[-1] == "/usr/sbin/sge_qmaster" and "-" in qmaster  # no tun
    assert "tun" in table[1].argv


def test_login_firewall_lets_workers_reach_qmaster_login2_does_not() -> None:
    assert f"{L.SGE_QMASTER_PORT}" in firewall.ruleset("login")
    assert f"{L.SGE_QMASTER_PORT}" not in firewall.ruleset("login2")
