"""Mode part ``netns``: capture in a private user + network namespace per drone.

A mode that has a tunnel (``socks``, ``vpn``) composes this part when
its profile asks for ``capture: namespace``: the drone script creates an
unprivileged user + network namespace, runs the tunnel and the payload
inside it with one outer link (pasta or slirp4netns) and sends every TCP
connection through redsocks into the tunnel (nft ``redirect``); UDP and
anything else is dropped and counted. Why a part, not a mode: the namespace
is how a mode's tunnel is used, not a way to reach the pool of its own.

The way out of the namespace is the capture's ``exit``: ``redsocks`` (socks:
TCP redirected into the ssh tunnel, conf/capture.nft.j2) or ``tun`` (vpn: the
namespace's default route is a tun device the mode's init role creates, so
TCP and UDP are routed, nothing redirected; conf/vpn.nft.j2 only guards).
Both rule sets reach the script through the same function,
``write_capture_nft``, so lib/netns.sh loads either the same way.

The part knows nothing of a mode's sections: the mode hands it a
:class:`Capture` (its localnet, resolver, redsocks upstreams ...), and the
part returns the settings group ``capture``, the configuration files
(``write_capture_nft``, ``write_redsocks_conf``), the checks, the probe
lines and the keepalive legs. Bash: lib/netns.sh (roles keeper, init,
drone), lib/capture.sh (redsocks). docs/configuration.md (keys),
docs/capture.md (why, and what each method catches).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from shlex import quote as q
from typing import TYPE_CHECKING, Literal, Optional

from ..paths import shell_path
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
    "check_resolver",
    "config_files",
    "legs",
    "namespace_localnet",
    "probe_fix",
    "probe_lines",
    "problems",
    "redsocks_conf_text",
    "settings",
    "warnings",
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
    made (``none``: there is no fallback). ``exit`` is how traffic leaves the
    namespace: ``redsocks`` (redirected into a SOCKS/HTTP tunnel) or ``tun``
    (routed out of the tun device ``interface``, e.g. a VPN's; no redsocks,
    and names resolve through the DNS the tunnel hands out).
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
    exit: Literal["redsocks", "tun"] = "redsocks"
    interface: str = "tun0"

    @property
    def namespace(self) -> bool:
        return self.method == "namespace"

    @property
    def routed(self) -> bool:
        """Traffic leaves through a tun device (no redsocks, no redirect)."""
        return self.exit == "tun"

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


# -- checks ---------------------------------------------------------------------


def check_resolver(path: str, resolver: Optional[str]) -> list[str]:
    """``resolver``: null, ``none`` or an IPv4 address (the namespace is IPv4 only,
    and a name would need a resolver to find the resolver)."""
    if resolver in (None, "none"):
        return []
    try:
        address = ipaddress.ip_address(resolver)
    except ValueError:
        address = None
    if isinstance(address, ipaddress.IPv4Address):
        return []
    return [
        f"{path}: got {resolver!r}; expected an IPv4 address (names inside "
        "resolve through it), or none"
    ]


def problems(
    path: str, chain_path: str, profile: NetworkProfile, capture: Capture
) -> list[str]:
    """The rules of the part across the profile: key path, bad value, fix.

    ``path`` is the profile's (``Network``), ``chain_path`` the key under
    which the mode keeps ``capture``, ``localnet`` and ``resolver``
    (``Network.chain``). ``isolation: required`` is refused with preload;
    everything else is checked only with capture namespace.
    """
    found = []
    if profile.isolation == "required" and not capture.namespace:
        found.append(
            f"{path}.isolation: got 'required' with {_tail(chain_path)}.capture "
            f"{capture.method!r}; a preload chain cannot keep other users off "
            f"the drone's ports: set {_tail(chain_path)}.capture: namespace, or "
            "isolation: preferred"
        )
    if not capture.namespace:
        return found
    for index, text in enumerate(capture.localnet):
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            continue  # the mode's own check names it
        if net.version == 6:
            found.append(
                f"{chain_path}.localnet[{index}]: got {text!r} with capture "
                "'namespace'; inside the namespace only IPv4 stays direct (IPv6 "
                "is dropped): remove it, or set capture: preload"
            )
    found += _check_resolver_route(chain_path, capture)
    found += _check_cidr(path, chain_path, profile, capture)
    return found + _check_pool_names(path, chain_path, profile, capture)


def _tail(chain_path: str) -> str:
    """``Network.chain`` -> ``chain``: how a message names a sibling key."""
    return chain_path.rsplit(".", 1)[-1]


def _check_resolver_route(chain_path: str, capture: Capture) -> list[str]:
    """A direct resolver must be one the namespace reaches without the chain."""
    if capture.resolver_route != "direct":
        return []
    if capture.resolver is None:
        return [
            f"{chain_path}.resolver_route: got 'direct' without a resolver; set "
            f"{_tail(chain_path)}.resolver to a DNS server in localnet, or "
            "resolver_route: chain"
        ]
    try:
        address = ipaddress.IPv4Address(capture.resolver)
    except ValueError:
        return []  # check_resolver names it
    if any(address in net for net in namespace_localnet(capture.localnet)):
        return []
    return [
        f"{chain_path}.resolver_route: got 'direct' with resolver "
        f"{capture.resolver} outside {_tail(chain_path)}.localnet; a direct "
        "resolver must be in localnet: add its network to localnet, or set "
        "resolver_route: chain"
    ]


#: candidates for another slirp4netns network, all in 100.64.0.0/10 (RFC 6598)
_CIDR_CANDIDATES = tuple(f"100.64.{n}.0/24" for n in (99, 98, 97, 123, 200))


def _check_cidr(
    path: str, chain_path: str, profile: NetworkProfile, capture: Capture
) -> list[str]:
    """slirp4netns' network must not hide a localnet range behind its gateway."""
    own = profile.namespace.network
    if own is None:
        return []
    local = [n for n in namespace_localnet(capture.localnet) if n != LOOPBACK]
    clashes = [net for net in local if net.overlaps(own)]
    if not clashes:
        return []
    free = [
        c
        for c in _CIDR_CANDIDATES
        if not any(ipaddress.IPv4Network(c).overlaps(n) for n in local)
    ]
    example = free[0] if free else "a private /24 outside every localnet range"
    return [
        f"{path}.namespace.cidr: got {profile.namespace.cidr!r}, which overlaps "
        f"{_tail(chain_path)}.localnet {str(clashes[0])!r}; choose another, "
        f"e.g. {example}"
    ]


def _check_pool_names(
    path: str, chain_path: str, profile: NetworkProfile, capture: Capture
) -> list[str]:
    """Without a resolver no name resolves inside: pool endpoints need addresses
    (unless the tunnel hands out its own DNS, as a VPN does)."""
    if capture.resolver is not None or capture.routed:
        return []
    pool = profile.pool
    named = [("collector", pool.collector)] if pool.collector else []
    named += [(f"schedds[{i}]", s) for i, s in enumerate(pool.schedds)]
    found = []
    for key, endpoint in named:
        host = endpoint.rpartition(":")[0] or endpoint
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            found.append(
                f"{path}.pool.{key}: got {host!r}; inside the namespace names "
                f"resolve only through {_tail(chain_path)}.resolver: set it (e.g. "
                "the login node's resolver) or give an address"
            )
    return found


def warnings(profile: NetworkProfile, capture: Capture) -> list[tuple[str, str]]:
    """(what, fix) for a namespace capture that works but misses something."""
    if not capture.namespace:
        return []
    found = []
    if profile.cvmfs.mode == "mountrepo":
        found.append(
            (
                "cvmfs.mode mountrepo with capture namespace: fusermount's setuid "
                "bit is ignored inside the drone's user namespace, so mountrepo "
                "cannot mount there",
                "set cvmfs.mode: cvmfsexec (or auto, which tries cvmfsexec first)",
            )
        )
    if capture.resolver is None and not capture.routed:
        found.append(
            (
                "capture namespace without a resolver: host names do not resolve "
                "inside the drone (lookups fail at once, nothing leaks)",
                "set chain.resolver to a DNS server the chain's exit reaches "
                "(or one in chain.localnet with resolver_route: direct)",
            )
        )
    return found


# -- the drone script ------------------------------------------------------------


def settings(profile: NetworkProfile, capture: Capture) -> SettingsGroup:
    """The settings group ``capture`` read by lib/netns.sh and lib/capture.sh.

    Rendered with every capture method: the keeper reads CAPTURE_METHOD and
    ISOLATION to decide, and reports the method it used.
    """
    namespace = profile.namespace
    # redsocks' upstreams: read by lib/capture.sh, which a routed mode lacks
    redsocks = (
        ()
        if capture.routed
        else (
            ("CAPTURE_UPSTREAM_TYPE", capture.upstream_type),
            ("CAPTURE_UPSTREAM_PORTS", list(capture.upstream_ports)),
            ("CAPTURE_PORT_BASE", CAPTURE_PORT_BASE),
        )
    )
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
            *redsocks,
        ),
    )


def capture_nft_text(capture: Capture) -> str:
    """The namespace's nft rules (``@TARDIS_HOPS@``: the first hops, filled
    by the keeper once it resolved them): redirect and guard, or only the
    guard when traffic is routed out of a tun device."""
    if capture.routed:
        return render_template(
            "conf/vpn.nft.j2",
            route=capture.route,
            interface=capture.interface,
            localnet=[str(n) for n in namespace_localnet(capture.localnet)],
        )
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
    """The two files (one when routed: no redsocks), only when the namespace
    is asked for."""
    if not capture.namespace:
        return []
    if capture.routed:
        return [ConfigFile("write_capture_nft", capture_nft_text(capture))]
    return [
        ConfigFile("write_capture_nft", capture_nft_text(capture)),
        ConfigFile("write_redsocks_conf", redsocks_conf_text(capture)),
    ]


def legs(
    profile: NetworkProfile,
    budget: KeepaliveBudget,
    capture: Capture,
    carrier: Optional[str] = None,
) -> list[tuple[str, str]]:
    """The namespace's own legs of the keepalive budget (none with preload).

    ``carrier`` says what keeps the outer link's flows alive when it is not
    the ssh connection (a VPN's DPD); a routed capture has no redsocks leg.
    """
    if not capture.namespace:
        return []
    if capture.routed:
        return [
            (
                f"worker namespace -> outer link ({_outer_name(profile)})",
                f"{carrier or 'the tunnel'}; pasta's own idle limit is 2 h",
            )
        ]
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
    return "slirp4netns, else pasta" if outer == "auto" else outer


#: where nft, ip and redsocks live when a user's PATH lacks the sbin directories
_SBIN = "/usr/sbin:/sbin"
#: the user + network namespace test: the namespace must give its root the
#: capabilities to configure it (AppArmor may allow the unshare but not that)
_USERNS_TEST = "ip link set lo up && nft add table inet tna_probe"


def probe_lines(profile: NetworkProfile, capture: Capture) -> list[str]:
    """``check --probe`` lines (POSIX sh, on the login node) for capture namespace.

    Each tool and the namespace test are one item; their reasons collect in
    ``ns_why``. The verdict ``isolation`` says what a drone would do: the
    namespace, the fallback to preload with the reasons (preferred), or a
    failure (required). With ``preferred`` a missing piece is not a failure of
    the check (the fallback works), so only the pieces found are marked and
    the reasons are in the verdict.
    """
    if not capture.namespace:
        return []
    required = profile.isolation == "required"
    lines = [
        "ns_why=''",
        # nsmark NAME ok|fail DETAIL: a failure is a reason for the verdict
        'nsmark() { if [ "$2" = ok ]; then mark "$1" ok "$3"; else '
        'ns_why="${ns_why:+$ns_why; }$1: $3"; '
        + ('mark "$1" fail "$3"; ' if required else "")
        + "fi; }",
        # nshave NAME: on PATH or in the sbin directories (nft, ip, redsocks)
        f'nshave() {{ p=$(PATH="$PATH:{_SBIN}" command -v "$1" 2>/dev/null); '
        'if [ -n "$p" ]; then nsmark "cmd:$1" ok "$p"; '
        'else nsmark "cmd:$1" fail missing; fi; }',
        "nshave unshare",
        "nshave nft",
        "nshave ip",
    ]
    outer = profile.namespace.outer
    if outer == "auto":
        lines += [
            # the drone's order (lib/netns.sh netns_outer_tool)
            f'p=$(PATH="$PATH:{_SBIN}" command -v slirp4netns 2>/dev/null || '
            f'PATH="$PATH:{_SBIN}" command -v pasta 2>/dev/null)',
            'if [ -n "$p" ]; then nsmark outer ok "$p"; '
            'else nsmark outer fail "neither pasta nor slirp4netns found"; fi',
        ]
    else:
        lines.append(f"nshave {q(outer)}")
    if not capture.routed:  # routed out of a tun device: no redsocks
        lines += _redsocks_probe(capture)
    lines += [
        f'e=$(PATH="$PATH:{_SBIN}" unshare -U -r -n -m sh -c {q(_USERNS_TEST)} '
        "2>&1 >/dev/null)",
        'if [ $? -eq 0 ]; then nsmark userns ok "unshare -U -r -n -m, nft inside"; '
        'else nsmark userns fail "$(printf %s "${e:-failed}" | head -n 1)"; fi',
        "if [ -r /dev/net/tun ] && [ -w /dev/net/tun ]; then "
        'nsmark tun ok /dev/net/tun; else nsmark tun fail "/dev/net/tun: not '
        'readable and writable (the outer link needs it)"; fi',
        'if [ -z "$ns_why" ]; then mark isolation ok namespace; else '
        + (
            'mark isolation fail "$ns_why"; fi'
            if required
            else (
                f'mark isolation ok "falls back to preload '
                f'({capture.fallback_tool}): $ns_why"; fi'
            )
        ),
    ]
    return lines


def _redsocks_probe(capture: Capture) -> list[str]:
    """The redsocks item: the configured binary, else one on PATH."""
    if capture.redsocks:
        return [
            f"p={shell_path(capture.redsocks)}",
            'if [ -x "$p" ]; then nsmark redsocks ok "$p"; '
            'else nsmark redsocks fail "$p: not an executable file"; fi',
        ]
    return ["nshave redsocks"]


_PROBE_FIXES = {
    "cmd:unshare": "install util-linux (unshare) on the workers",
    "cmd:nft": "install nftables (nft) on the workers",
    "cmd:ip": "install iproute2 (ip) on the workers",
    "cmd:pasta": "install passt (pasta) on the workers, or set "
    "Network.namespace.outer: auto",
    "cmd:slirp4netns": "install slirp4netns on the workers, or set "
    "Network.namespace.outer: auto",
    "outer": "install passt (pasta) or slirp4netns on the workers",
    "cmd:redsocks": "install redsocks on the workers, or set Network.chain.redsocks "
    "to a redsocks binary on the shared file system",
    "redsocks": "make Network.chain.redsocks an executable redsocks on the workers",
    "userns": "the site forbids unprivileged user namespaces (or their "
    "capabilities): ask for user.max_user_namespaces > 0, or use "
    "isolation: preferred (falls back to preload capture)",
    "tun": "ask the site for a 0666 /dev/net/tun on the workers (as on most EL "
    "and Debian nodes), or use isolation: preferred",
    "isolation": "a drone cannot isolate its network here: fix the items above, "
    "or set Network.isolation: preferred (falls back to preload capture)",
}


def probe_fix(name: str) -> Optional[str]:
    """The fix for a failed probe item of the part, or None."""
    return _PROBE_FIXES.get(name)
