"""The lab's site-NAT shape (issue 14) without a lab: layout, the nat section,
where rendered files go and how the lab reads the rendered units.

tests/lab/test_site_nat.py runs all of it against a real lab.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from tardis_netadapter_lab import configs, sitenat, topology
from tardis_netadapter_lab import layout as L

from tardis_netadapter.sitenat.render import (
    conntrackd_argv,
    keepalived_argv,
    render_router,
    render_worker,
)


@dataclass(frozen=True)
class TmpLayout(L.LabLayout):
    """A lab layout whose state dir is a temporary directory."""

    root: Path = Path("/nonexistent")

    @property
    def state_dir(self) -> Path:
        return self.root


def test_routers_are_dual_homed_hosts_of_every_lab() -> None:
    lab = L.LabLayout(name="natx", workers=2)
    assert lab.nat_hosts == ["nat1", "nat2"]
    assert set(lab.nat_hosts) <= set(lab.hosts)
    site = ipaddress.ip_network(L.SITE_NET)
    public = ipaddress.ip_network(L.PUBLIC_NET)
    used = {address for host in lab.hosts for address in lab.addresses(host).values()}
    for router in L.NAT_ROUTERS:
        addresses = lab.addresses(router.name)
        assert ipaddress.ip_address(addresses["site"]) in site
        assert ipaddress.ip_address(addresses["public"]) in public
        assert lab.namespace(router.name) == f"natx-{router.name}"
        assert L.namespace_pattern("natx").match(f"natx-{router.name}")
    # the VIPs belong to no host, and no two hosts share an address
    assert L.NAT_GATEWAY not in used and L.NAT_PUBLIC not in used
    assert ipaddress.ip_address(L.NAT_GATEWAY) in site
    assert ipaddress.ip_address(L.NAT_PUBLIC) in public
    every = [a for host in lab.hosts for a in lab.addresses(host).values()]
    assert len(every) == len(set(every))
    # distinct priorities, the first router preferred
    priorities = [router.priority for router in L.NAT_ROUTERS]
    assert len(set(priorities)) == len(priorities)
    assert max(L.NAT_ROUTERS, key=lambda r: r.priority).name == "nat1"
    # a router's fault link is its public leg (the way out)
    assert topology.link_ends(lab, "nat1") == [
        ("natx-nat1", L.NAT_PUBLIC_IF),
        ("natx-outside", "nat1"),
    ]
    assert not L.namespace_pattern("natx").match("natx-natural")


def test_the_lab_nat_section_is_valid_for_the_product() -> None:
    lab = L.LabLayout(name="natx")
    for sync in (True, False):
        section = sitenat.nat_section(lab, conntrack_sync=sync)
        assert section.conntrack_sync is sync
        assert section.gateway == L.NAT_GATEWAY
        assert section.public_address == L.NAT_PUBLIC
        assert tuple(section.users) == (lab.drone_user,)
        assert [r.name for r in section.routers] == lab.nat_hosts
        assert section.address_echo == configs.echo_url()
    raw = configs.nat_section(lab)
    assert raw["site_subnets"] == [L.SITE_NET]


def test_rendered_files_land_under_the_state_dir(tmp_path: Path) -> None:
    lab = TmpLayout(name="natx", root=tmp_path)
    nat = sitenat.nat_section(lab)
    for host, files in (
        ("nat1", render_router(nat, "nat1", sitenat.install_paths(lab, "nat1"))),
        ("worker1", render_worker(nat, sitenat.install_paths(lab, "worker1"))),
    ):
        paths = sitenat.install_paths(lab, host)
        written = sitenat.write_files(paths, files)
        for name, path in written.items():
            assert path.is_relative_to(tmp_path / "nat" / host), path
            assert path.read_text() == files[name].text
            assert path.stat().st_mode & 0o777 == files[name].mode
        # every path named inside the files is the lab's, none machine-wide
        for rendered in files.values():
            for word in rendered.text.split():
                if word.startswith(("/etc/", "/run/", "/usr/local/")):
                    pytest.fail(f"{host}: machine-wide path {word} in a file")


def test_the_lab_runs_what_the_rendered_units_say(tmp_path: Path) -> None:
    lab = TmpLayout(name="natx", root=tmp_path)
    nat = sitenat.nat_section(lab)
    router = render_router(nat, "nat1", sitenat.install_paths(lab, "nat1"))
    units = [
        sitenat.unit_commands(f.text)
        for n, f in router.items()
        if n.endswith(".service")
    ]
    programs = {unit.program for unit in units}
    assert {"keepalived", "conntrackd", "nft"} <= programs
    paths = sitenat.install_paths(lab, "nat1")
    keepalived = next(unit for unit in units if unit.program == "keepalived")
    conntrackd = next(unit for unit in units if unit.program == "conntrackd")
    # the lab runs the units' command lines: the product's own argv for them
    assert keepalived.start[0] == keepalived_argv(paths)
    assert conntrackd.start[0] == conntrackd_argv(paths)
    assert "--dont-fork" in keepalived.start[0]
    worker = render_worker(nat, sitenat.install_paths(lab, "worker1"))
    actions = {
        sitenat.unit_commands(f.text).start[-1][-1]
        for n, f in worker.items()
        if n.endswith(".service")
    }
    assert actions == {"apply", "keep"}


def test_unit_commands_strip_systemd_prefixes() -> None:
    unit = sitenat.unit_commands(
        "[Service]\nExecStartPre=-/bin/mkdir -p '/x y'\nExecStart=@/bin/true a\n"
        "ExecStop=+/bin/false\n# ExecStart=ignored\nExecStart=\n"
    )
    assert unit.start_pre == [["/bin/mkdir", "-p", "/x y"]]
    assert unit.start == [["/bin/true", "a"]]
    assert unit.stop == [["/bin/false"]]
    assert unit.program == "true"


def test_echo_handler_answers_with_the_peer_address(tmp_path: Path) -> None:
    lab = TmpLayout(name="natx", root=tmp_path)
    handler = tmp_path / "answer.sh"
    handler.write_text(configs.echo_script(lab))
    lab.echo_dir.mkdir()
    result = subprocess.run(
        ["bash", str(handler)],
        input=b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
        capture_output=True,
        env={**os.environ, "SOCAT_PEERADDR": "10.66.2.100"},
        timeout=10,
        check=True,
    )
    head, _, body = result.stdout.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.0 200 OK\r\n")
    assert "Content-Length: 12" in head
    assert body == "10.66.2.100\n"
    assert configs.echo_log(lab).read_text() == "10.66.2.100\n"


def test_udp_echo_answers_each_datagram_with_its_sender(tmp_path: Path) -> None:
    """The UDP echo's server, bound to loopback here instead of the lab's address."""
    lab = TmpLayout(name="natx", root=tmp_path)
    lab.echo_dir.mkdir()
    script = configs.echo_script(lab, "udp").replace(
        repr(L.OUTSIDE_HTTP), "'127.0.0.1'"
    )
    script = script.replace(f", {L.ECHO_PORT})", ", 0)")
    # report the port the kernel picked, then serve
    script = script.replace(
        "with open(", "print(server.getsockname()[1], flush=True)\nwith open(", 1
    )
    server = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        answers = []
        for _ in range(3):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.settimeout(5)
                client.sendto(b"who am I", ("127.0.0.1", port))
                answers.append(client.recv(100))
        assert answers == [b"127.0.0.1\n"] * 3
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if configs.echo_log(lab, "udp").read_text().count("\n") == 3:
                break
            time.sleep(0.05)
        assert configs.echo_log(lab, "udp").read_text() == "127.0.0.1\n" * 3
    finally:
        server.kill()
        server.wait()
