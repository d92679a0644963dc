"""The rendered router pair working together: VRRP failover keeps a flow with
conntrackd and loses it without (root, slow: about 40 s).

A small topology of network namespaces of its own (``snf<pid>-*``, addresses
10.77.x, torn down afterwards): a worker, routers nat1 and nat2 (keepalived,
conntrackd and the ruleset rendered by site-nat, started as their units
start them), and an outside host with an echo service. The lab's
tests/lab/test_site_nat.py measures the same with drones and the pool; this
test guards the rendered files themselves.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_sitenat_config import load, nat_section
from test_sitenat_render import lab_paths

from tardis_netadapter.sitenat.render import (
    conntrackd_argv,
    install,
    keepalived_argv,
    render_router,
    render_worker,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0
        or not all(shutil.which(t) for t in ("ip", "nft", "keepalived", "conntrackd")),
        reason="needs root, ip, nft, keepalived and conntrackd",
    ),
]

PREFIX = f"snf{os.getpid()}"
ROUTERS = {"nat1": ("10.77.1.251", "10.77.2.13"), "nat2": ("10.77.1.252", "10.77.2.14")}

#: the outside host: a health port and an echo service saying who called
SERVER = r"""
import socket, threading
def serve(port, echo):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(50)
    while True:
        c, a = s.accept()
        def handle(c=c, a=a):
            try:
                c.sendall(f"peer={a[0]}\n".encode())
                while echo:
                    data = c.recv(4096)
                    if not data:
                        break
                    c.sendall(data)
            except OSError:
                pass
            c.close()
        threading.Thread(target=handle, daemon=True).start()
threading.Thread(target=serve, args=(9618, False), daemon=True).start()
serve(9000, True)
"""

#: the drone user's long-lived connection: a round trip every 0.2 s
CLIENT = r"""
import socket, sys, time
s = socket.create_connection(("10.77.2.1", 9000), timeout=4)
f = s.makefile("rb")
print(f.readline().decode().strip(), flush=True)
start = time.monotonic()
try:
    while time.monotonic() - start < float(sys.argv[1]):
        s.sendall(b"x\n")
        if not f.readline():
            print("closed", flush=True); sys.exit(1)
        time.sleep(0.2)
except OSError as error:
    print(f"died: {error!r}", flush=True); sys.exit(1)
print("alive", flush=True)
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def netns(name: str, *argv: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        ["ip", "netns", "exec", f"{PREFIX}-{name}", *argv],
        start_new_session=True,
        **kwargs,
    )


def run_in(name: str, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ip", "netns", "exec", f"{PREFIX}-{name}", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def build_topology() -> None:
    for name in ("br", "w", "nat1", "nat2", "o"):
        ip("netns", "add", f"{PREFIX}-{name}")
        ip("-n", f"{PREFIX}-{name}", "link", "set", "lo", "up")
    for bridge in ("brs", "brp"):
        ip("-n", f"{PREFIX}-br", "link", "add", bridge, "type", "bridge")
        ip("-n", f"{PREFIX}-br", "link", "set", bridge, "up")
    legs = [
        ("w", "w0", "brs", "pw"),
        ("nat1", "site0", "brs", "ps1"),
        ("nat1", "pub0", "brp", "pp1"),
        ("nat2", "site0", "brs", "ps2"),
        ("nat2", "pub0", "brp", "pp2"),
        ("o", "o0", "brp", "po"),
    ]
    for host, link, bridge, port in legs:
        ip("link", "add", port, "netns", f"{PREFIX}-br", "type", "veth", "peer",
           "name", link, "netns", f"{PREFIX}-{host}")  # fmt: skip
        ip("-n", f"{PREFIX}-br", "link", "set", port, "master", bridge, "up")
        ip("-n", f"{PREFIX}-{host}", "link", "set", link, "up")
    addresses = [
        ("w", "10.77.1.5/24", "w0"),
        ("o", "10.77.2.1/24", "o0"),
        *((r, f"{site}/24", "site0") for r, (site, _) in ROUTERS.items()),
        *((r, f"{public}/24", "pub0") for r, (_, public) in ROUTERS.items()),
    ]
    for host, address, link in addresses:
        ip("-n", f"{PREFIX}-{host}", "addr", "add", address, "dev", link)
    # the worker's usual default gateway, which leads nowhere
    ip("-n", f"{PREFIX}-w", "route", "add", "default", "via", "10.77.1.1")


class Site:
    """The running topology: processes by pid, stopped by pid."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.processes: list[subprocess.Popen] = []
        self.keepalived: dict[str, subprocess.Popen] = {}
        self.conntrackd: dict[str, subprocess.Popen] = {}

    def start(self, sync: bool) -> None:
        nat = load(
            nat_section(
                gateway="10.77.1.250",
                public_address="10.77.2.100",
                users=["nobody"],
                site_subnets=["10.77.1.0/24"],
                conntrack_sync=sync,
                vrrp=dict(nat_section()["vrrp"], health_target="10.77.2.1:9618"),
                routers=[
                    {**router, "site_address": ROUTERS[router["name"]][0]}
                    for router in nat_section()["routers"]
                ],
            )
        )
        (self.base / "server.py").write_text(SERVER)
        self.processes.append(netns("o", sys.executable, str(self.base / "server.py")))
        worker = lab_paths(self.base / "w")
        install(render_worker(nat, worker))
        for name in ROUTERS:
            paths = lab_paths(self.base / name)
            install(render_router(nat, name, paths))
            Path(paths.run).mkdir(parents=True)
            assert (
                run_in(name, "nft", "-f", paths.config("tna-nat-router.nft")).returncode
                == 0
            )
            assert (
                run_in(
                    name, "sysctl", "-q", "-p", paths.config("sysctl.conf")
                ).returncode
                == 0
            )
            if sync:
                self.conntrackd[name] = netns(
                    name, *conntrackd_argv(paths), stdout=subprocess.DEVNULL
                )
        time.sleep(0.5)
        for name in ROUTERS:
            self.start_keepalived(name)
        assert run_in("w", f"{worker.sbin}/tna-nat-routing", "apply").returncode == 0
        self.wait_for_state("nat1", "MASTER")

    def start_keepalived(self, name: str) -> None:
        self.keepalived[name] = netns(
            name, *keepalived_argv(lab_paths(self.base / name)), "--log-console",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def state(self, name: str) -> str:
        path = Path(lab_paths(self.base / name).state("vrrp-state"))
        return path.read_text().strip() if path.exists() else ""

    def wait_for_state(self, name: str, state: str, limit: float = 15) -> float:
        start = time.monotonic()
        while self.state(name) != state:
            assert time.monotonic() - start < limit, f"{name} not {state}"
            time.sleep(0.05)
        return time.monotonic() - start

    def client(self, seconds: float) -> subprocess.Popen:
        # the code on the command line and the system's python: nobody cannot
        # read pytest's tmp_path or the virtualenv
        python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
        return netns(
            "w", "runuser", "-u", "nobody", "--", python, "-c", CLIENT,
            str(seconds), stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def stop(self) -> None:
        for process in [
            *self.keepalived.values(),
            *self.conntrackd.values(),
            *self.processes,
        ]:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    base = tmp_path / "site"
    base.mkdir()
    running = Site(base)
    try:
        build_topology()
        yield running
    finally:
        running.stop()
        for name in ("w", "nat1", "nat2", "o", "br"):
            subprocess.run(
                ["ip", "netns", "del", f"{PREFIX}-{name}"], capture_output=True
            )


def failover(site: Site, fault: str = "keepalived") -> tuple[str, float]:
    """Break the master under a running flow: stop its keepalived, or cut its
    public link; (client's verdict, seconds until nat2 is MASTER)."""
    client = site.client(8)
    assert client.stdout is not None
    assert client.stdout.readline().strip() == "peer=10.77.2.100"
    time.sleep(1.5)
    start = time.monotonic()
    if fault == "keepalived":
        site.keepalived["nat1"].terminate()
        site.keepalived["nat1"].wait(timeout=10)
    else:  # the bridge port of nat1's public leg: its pub0 loses carrier
        ip("-n", f"{PREFIX}-br", "link", "set", "pp1", "down")
    site.wait_for_state("nat2", "MASTER")
    took = time.monotonic() - start
    verdict = client.stdout.read().strip()
    client.wait(timeout=20)
    return verdict, took


@pytest.mark.parametrize("fault", ["keepalived", "public link"])
def test_a_failover_keeps_the_flow_with_conntrackd(site: Site, fault: str) -> None:
    site.start(sync=True)
    verdict, took = failover(site, fault)
    print(f"nat2 MASTER {took:.2f} s after nat1's {fault} went; flow: {verdict}")
    assert verdict == "alive"
    assert took < 4
    if fault == "public link":
        assert site.state("nat1") == "FAULT"


def test_without_conntrackd_the_flow_dies(site: Site) -> None:
    """The control run: the same failover, no state sync."""
    site.start(sync=False)
    verdict, took = failover(site)
    print(f"nat2 MASTER {took:.2f} s after nat1's keepalived went; flow: {verdict}")
    assert verdict.startswith(("died", "closed")), verdict
