"""Mode part ``netns``: capture in a private user + network namespace per drone.

A mode that has a tunnel (``socks``; later ``vpn``) composes this part when
its profile asks for ``capture: namespace``: the drone script creates an
unprivileged user + network namespace, runs the tunnel and the payload
inside it with one outer link (pasta or slirp4netns) and sends every TCP
connection through redsocks into the tunnel (nft ``redirect``); UDP and
anything else is dropped and counted. Why a part, not a mode: the namespace
is how a mode's tunnel is used, not a way to reach the pool of its own.

The part knows nothing of a mode's sections: the mode hands it a
:class:`Capture` (its localnet, resolver, redsocks upstreams ...), and the
part returns the settings group ``capture``, the configuration files
(``write_capture_nft``, ``write_redsocks_conf``), the checks, the probe
lines and the keepalive legs. Bash: lib/netns.sh (roles keeper, init,
drone), lib/capture.sh (redsocks). docs/configuration.md (keys),
/work/notes issue 12 design (why).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Optional

from ..profile import NetworkProfile
from ..templates import render_template
from .base import ConfigFile, SettingsGroup, Stage

if TYPE_CHECKING:
    from ..keepalive import KeepaliveBudget

__all__ = [
    "CAPTURE_PORT_BASE",
    "DNS_PORT",
    "STAGE",
    "Capture",
    "capture_nft_text",
    "config_files",
    "legs",
    "namespace_localnet",
    "probe_fix",
    "probe_lines",
    "redsocks_conf_text",
    "settings",
]

#: redsocks section k listens on 127.0.0.1:CAPTURE_PORT_BASE+k inside the
#: namespace (fixed: the namespace's ports are its own, no drone shares them)
CAPTURE_PORT_BASE = 12345
#: redsocks' dnstc: answers UDP DNS with "truncated, retry over TCP"
DNS_PORT = 5300
#: the namespace's loopback: always local, never captured
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")

#: the stage that sets the namespace up (a ``network`` stage, first of the
#: mode's); with capture preload it only logs ``skipped: capture preload``,
#: so the stage list stays static (modes/stages.py)
STAGE = Stage("isolation", "isolation_stage", phase="network")

#: what redsocks calls the upstream proxy types (``http`` proxies are CONNECT)
UPSTREAM_TYPES = {"socks5": "socks5", "socks4": "socks4", "http": "http-connect"}

CaptureMethod = Literal["preload", "namespace"]


@dataclass(frozen=True)
class Capture:
    """What a mode tells the part about its capture, in plain values.

    ``upstream_ports`` has one entry per tunnel connection: the local port
    (a number, or ``@TARDIS_PORT_<i>@``) redsocks section k passes its
    connections to; ``upstream_type`` is the protocol spoken there.
    ``fallback_tool`` is the preload tool used when the namespace cannot be
    made (``none``: there is no fallback).
    """

    method: CaptureMethod = "preload"
    localnet: tuple[str, ...] = ()
    resolver: Optional[str] = None
    resolver_route: Literal["chain", "direct"] = "chain"
    redsocks: Optional[str] = None
    upstream_type: str = "socks5"
    upstream_ports: tuple[str, ...] = ()
    route: str = ""
    fallback_tool: str = "none"

    @property
    def namespace(self) -> bool:
        return self.method == "namespace"

    @property
    def listen_ports(self) -> list[int]:
        """redsocks' local ports, one per upstream (tunnel connection)."""
        return [CAPTURE_PORT_BASE + k for k in range(len(self.upstream_ports))]


def namespace_localnet(localnet: tuple[str, ...]) -> list[ipaddress.IPv4Network]:
    """The IPv4 networks that stay direct inside the namespace, loopback first.

    IPv6 entries are left out (the namespace drops IPv6; the mode's check
    refuses them with capture namespace); overlapping entries are merged so
    nft's interval set accepts them.
    """
    nets: list[ipaddress.IPv4Network] = [LOOPBACK]
    for text in localnet:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            continue
        if isinstance(net, ipaddress.IPv4Network):
            nets.append(net)
    return list(ipaddress.collapse_addresses(nets))


def settings(profile: NetworkProfile, capture: Capture) -> SettingsGroup:
    """The settings group ``capture`` read by lib/netns.sh and lib/capture.sh.

    Rendered with every capture method: the keeper reads CAPTURE_METHOD and
    ISOLATION to decide, and reports the method it used.
    """
    namespace = profile.namespace
    return SettingsGroup(
        "capture: preload (LD_PRELOAD chain) or namespace (private user + network "
        "namespace, redsocks; lib/netns.sh, lib/capture.sh)",
        (
            ("CAPTURE_METHOD", capture.method),
            ("ISOLATION", profile.isolation),
            ("NS_OUTER", namespace.outer),
            ("NS_MTU", namespace.mtu),
            ("NS_CIDR", namespace.cidr),
            ("NS_READY_TIMEOUT_MS", int(namespace.ready_timeout * 1000)),
            ("NS_LOCALNET", [str(n) for n in namespace_localnet(capture.localnet)]),
            ("CHAIN_RESOLVER", capture.resolver or ""),
            ("CHAIN_RESOLVER_ROUTE", capture.resolver_route),
            ("CHAIN_REDSOCKS", capture.redsocks or ""),
            ("CAPTURE_UPSTREAM_TYPE", capture.upstream_type),
            ("CAPTURE_UPSTREAM_PORTS", list(capture.upstream_ports)),
            ("CAPTURE_PORT_BASE", CAPTURE_PORT_BASE),
        ),
    )


def capture_nft_text(capture: Capture) -> str:
    """The namespace's nft rules (``@TARDIS_HOPS@``: the first hops, filled
    by the keeper once it resolved them)."""
    direct = capture.resolver if capture.resolver_route == "direct" else None
    return render_template(
        "conf/capture.nft.j2",
        route=capture.route,
        localnet=[str(n) for n in namespace_localnet(capture.localnet)],
        ports=capture.listen_ports,
        dns_port=DNS_PORT,
        direct_resolver=direct,
    )


def redsocks_conf_text(capture: Capture) -> str:
    """redsocks' configuration: one section per tunnel connection, and dnstc."""
    return render_template(
        "conf/redsocks.conf.j2",
        route=capture.route,
        sections=list(zip(capture.listen_ports, capture.upstream_ports)),
        type=capture.upstream_type,
        dns_port=DNS_PORT,
    )


def config_files(capture: Capture) -> list[ConfigFile]:
    """The two files, only when the namespace is asked for."""
    if not capture.namespace:
        return []
    return [
        ConfigFile("write_capture_nft", capture_nft_text(capture)),
        ConfigFile("write_redsocks_conf", redsocks_conf_text(capture)),
    ]


def legs(
    profile: NetworkProfile, budget: KeepaliveBudget, capture: Capture
) -> list[tuple[str, str]]:
    """The namespace's own legs of the keepalive budget (none with preload)."""
    if not capture.namespace:
        return []
    return [
        (
            f"worker namespace -> outer link ({_outer_name(profile)})",
            "carried inside the ssh connection "
            f"(ServerAliveInterval={budget.server_alive_interval}s); pasta's own "
            "idle limit is 2 h",
        ),
        (
            "payload -> redsocks -> tunnel",
            "local, inside the namespace: no firewall",
        ),
    ]


def _outer_name(profile: NetworkProfile) -> str:
    outer = profile.namespace.outer
    return "pasta, else slirp4netns" if outer == "auto" else outer


def probe_lines(profile: NetworkProfile, capture: Capture) -> list[str]:
    """``check --probe`` lines (placeholder until the probe is built)."""
    return []


def probe_fix(name: str) -> Optional[str]:
    """The fix for a failed probe item of the part, or None."""
    return None
