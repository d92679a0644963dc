"""Create and remove the lab's namespaces and the veth links between them.

Every interface is created directly inside its namespace (`ip -n NS link add
... peer ... netns OTHER`), so nothing of the lab ever appears in the root
namespace: no interface, no address, no route.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import layout as L
from .netns import NETNS_DIR, check_call, in_namespace


def lab_namespaces(name: str) -> list[str]:
    """Existing namespaces that belong to a lab of this name (crashed or not)."""
    pattern = L.namespace_pattern(name)
    if not NETNS_DIR.is_dir():
        return []
    return sorted(
        entry.name for entry in NETNS_DIR.iterdir() if pattern.match(entry.name)
    )


def _ip(namespace: str, *args: str) -> None:
    check_call(["ip", "-n", namespace, *args])


def _sysctls(host: str) -> list[str]:
    """IPv6 off everywhere; only dmz (VPN clients to the public net) and epngw
    (the partition to the public net) forward."""
    forward = host in ("dmz", "epngw")
    settings = [
        "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1",
        f"net.ipv4.ip_forward={1 if forward else 0}",
    ]
    return ["sysctl", "-q", "-e", "-w", *settings]


def create(lab: L.LabLayout) -> None:
    """Namespaces, bridges, veth pairs and addresses; `lo` up everywhere."""
    for host in lab.hosts:
        check_call(["ip", "netns", "add", lab.namespace(host)])
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(
            pool.map(
                lambda host: check_call(
                    in_namespace(lab.namespace_path(host), _sysctls(host))
                ),
                lab.hosts,
            )
        )
    login, login2, outside, control = (
        lab.namespace(h) for h in ("login", "login2", "outside", "control")
    )
    for host in lab.hosts:
        _ip(lab.namespace(host), "link", "set", "lo", "up")

    # public net: a bridge inside outside, service addresses on the bridge
    _ip(outside, "link", "add", L.PUBLIC_BRIDGE, "type", "bridge", "forward_delay", "0")
    for address in (L.OUTSIDE_HTTP, L.OUTSIDE_SOCKS, L.OUTSIDE_GATEWAY):
        _ip(outside, "addr", "add", f"{address}/{L.PREFIX_LEN}", "dev", L.PUBLIC_BRIDGE)
    _ip(outside, "link", "set", L.PUBLIC_BRIDGE, "up")

    # site net: a bridge inside login
    _ip(login, "link", "add", L.SITE_BRIDGE, "type", "bridge", "forward_delay", "0")
    _ip(login, "addr", "add", f"{L.LOGIN_SITE}/{L.PREFIX_LEN}", "dev", L.SITE_BRIDGE)
    _ip(login, "link", "set", L.SITE_BRIDGE, "up")

    _attach(login, L.LOGIN_PUBLIC_IF, L.LOGIN_PUBLIC, outside, "login", L.PUBLIC_BRIDGE)
    _attach(control, L.HOST_IF, L.CONTROL_PUBLIC, outside, "control", L.PUBLIC_BRIDGE)
    # the second login node: on the site bridge (in login) and the public one
    _attach(login2, L.LOGIN2_SITE_IF, L.LOGIN2_SITE, login, "login2", L.SITE_BRIDGE)
    _attach(
        login2, L.LOGIN_PUBLIC_IF, L.LOGIN2_PUBLIC, outside, "login2", L.PUBLIC_BRIDGE
    )
    # the DMZ host (issue 13), dual-homed like login2: ocserv's side of the VPN
    dmz = lab.namespace("dmz")
    _attach(dmz, L.DMZ_SITE_IF, L.DMZ_SITE, login, "dmz", L.SITE_BRIDGE)
    _attach(dmz, L.DMZ_PUBLIC_IF, L.DMZ_PUBLIC, outside, "dmz", L.PUBLIC_BRIDGE)
    # the site NAT routers (issue 14), dual-homed like dmz; forwarding, VIPs,
    # firewall and daemons come only with `lab.site_nat.up()` (sitenat.py)
    for router in L.NAT_ROUTERS:
        namespace = lab.namespace(router.name)
        _attach(
            namespace, L.NAT_SITE_IF, router.site, login, router.name, L.SITE_BRIDGE
        )
        _attach(
            namespace,
            L.NAT_PUBLIC_IF,
            router.public,
            outside,
            router.name,
            L.PUBLIC_BRIDGE,
        )
    for worker in lab.worker_hosts:
        _attach(
            lab.namespace(worker),
            L.HOST_IF,
            lab.worker_address(worker),
            login,
            _worker_port(worker),
            L.SITE_BRIDGE,
        )
    _create_partition(lab, outside)


def _create_partition(lab: L.LabLayout, outside: str) -> None:
    """The EPN partition (issue 15): epngw's br-part with the gateway address,
    epngw's public leg, one address-less `ib1` per worker on br-part (only
    containers get partition addresses, through CNI), and outside's route back
    to the partition through epngw (public addresses: no NAT)."""
    epngw = lab.namespace("epngw")
    _ip(
        epngw, "link", "add", L.PARTITION_BRIDGE, "type", "bridge", "forward_delay", "0"
    )
    _ip(
        epngw,
        "addr",
        "add",
        f"{L.PARTITION_GATEWAY}/{L.PREFIX_LEN}",
        "dev",
        L.PARTITION_BRIDGE,
    )
    _ip(epngw, "link", "set", L.PARTITION_BRIDGE, "up")
    _attach(epngw, L.EPNGW_PUBLIC_IF, L.EPNGW_PUBLIC, outside, "epngw", L.PUBLIC_BRIDGE)
    for worker in lab.worker_hosts:
        namespace = lab.namespace(worker)
        port = _partition_port(worker)
        _ip(
            namespace,
            "link",
            "add",
            L.PARTITION_IF,
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            epngw,
        )
        _ip(namespace, "link", "set", L.PARTITION_IF, "up")
        _ip(epngw, "link", "set", port, "master", L.PARTITION_BRIDGE, "up")
    _ip(outside, "route", "add", L.PARTITION_NET, "via", L.EPNGW_PUBLIC)


def _partition_port(worker: str) -> str:
    return "p" + worker.removeprefix("worker")


def _worker_port(worker: str) -> str:
    return "w" + worker.removeprefix("worker")


def _attach(
    namespace: str, ifname: str, address: str, hub: str, port: str, bridge: str
) -> None:
    """A veth from `namespace` (with `address`) to a port of `bridge` in `hub`."""
    _ip(
        namespace,
        "link",
        "add",
        ifname,
        "type",
        "veth",
        "peer",
        "name",
        port,
        "netns",
        hub,
    )
    _ip(namespace, "addr", "add", f"{address}/{L.PREFIX_LEN}", "dev", ifname)
    _ip(namespace, "link", "set", ifname, "up")
    _ip(hub, "link", "set", port, "master", bridge, "up")


def destroy(name: str) -> list[str]:
    """Delete every namespace of this lab name; veth peers vanish with them."""
    removed = []
    for namespace in lab_namespaces(name):
        subprocess.run(
            ["ip", "netns", "del", namespace], capture_output=True, check=False
        )
        removed.append(namespace)
    return removed


def link_ends(lab: L.LabLayout, host: str) -> list[tuple[str, str]]:
    """(namespace, interface) of both ends of a host's uplink.

    A worker's uplink goes to login; login's, login2's and control's go to
    the public bridge in outside; dmz's is its site leg (port `dmz` of br-site
    in login), the one the workers' VPN traffic crosses; a NAT router's
    (natN) is its public leg, the way out whose loss must move the VIPs.
    """
    if host.startswith("worker"):
        lab.namespace(host)
        return [
            (lab.namespace(host), L.HOST_IF),
            (lab.namespace("login"), _worker_port(host)),
        ]
    if host in ("login", "login2"):
        return [
            (lab.namespace(host), L.LOGIN_PUBLIC_IF),
            (lab.namespace("outside"), host),
        ]
    if host == "control":
        return [
            (lab.namespace("control"), L.HOST_IF),
            (lab.namespace("outside"), "control"),
        ]
    if host == "dmz":
        return [
            (lab.namespace("dmz"), L.DMZ_SITE_IF),
            (lab.namespace("login"), "dmz"),
        ]
    if host in lab.nat_hosts:
        return [
            (lab.namespace(host), L.NAT_PUBLIC_IF),
            (lab.namespace("outside"), host),
        ]
    raise ValueError(
        f"{host!r} has no single uplink "
        "(use login, login2, control, dmz, natN or a worker)"
    )


def set_link(lab: L.LabLayout, host: str, up: bool) -> None:
    """Take the far (hub) end of a host's uplink down or up.

    The host keeps its address and route and sees only lost packets, like a
    pulled cable or a dead switch port, which is what keepalives must detect.
    """
    hub_namespace, port = link_ends(lab, host)[1]
    _ip(hub_namespace, "link", "set", port, "up" if up else "down")


def link_is_up(lab: L.LabLayout, host: str) -> bool:
    hub_namespace, port = link_ends(lab, host)[1]
    out = check_call(["ip", "-n", hub_namespace, "-o", "link", "show", port])
    return ",UP" in out or "<UP" in out


def netns_path(namespace: str) -> Path:
    return NETNS_DIR / namespace
