"""Network mode ``socks``: an ssh tunnel out of the site and a proxy chain into it.

The worker opens a supervised ssh tunnel (``tunnel``: hops, SOCKS port,
``-L`` forwards such as a squid for CVMFS) and the unmodified payload's
connections are sent into it by an LD_PRELOAD library (``chain``:
proxychains-ng or tsocks, optionally further proxies), or, with
``chain.capture: namespace``, by the kernel inside a private network
namespace (mode part modes/netns.py: redsocks, nft). Bash: lib/netns.sh,
lib/tunnel.sh, lib/capture.sh, lib/chain.sh. docs/configuration.md (keys),
docs/drone-script.md (stages).
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

from ..paths import shell_path
from ..profile import (
    FORWARD_NAME,
    NetworkProfile,
    check_host,
    check_path,
    check_port,
    check_positive,
    proxy_elements,
)
from ..schema import ConfigurationError
from ..templates import CONTROL, render_template, template_dir
from . import netns
from .base import ConfigFile, Mode, SettingsGroup, Stage

if TYPE_CHECKING:
    from ..keepalive import KeepaliveBudget

__all__ = [
    "AUTO",
    "Chain",
    "Forward",
    "Hop",
    "Proxy",
    "SocksMode",
    "SocksProfile",
    "SupervisorTimings",
    "Tunnel",
    "reconnect_bound",
    "port_placeholder",
]

_USER = re.compile(r"[a-z_][a-z0-9_.\-]*\$?")


@dataclass(frozen=True)
class Hop:
    """One ssh hop of the tunnel; the first is usually the site's login node.

    ``alternatives`` are further hosts for the same hop (same port and user):
    a site's other login nodes. Each becomes a route of its own, so drones
    spread over them and fail over to the next when theirs is down. Only the
    first hop may have them (SocksProfile.check): a later hop is reached
    through the first, and one route per combination would multiply.
    """

    host: str
    port: int = 22
    user: Optional[str] = None
    alternatives: tuple[str, ...] = ()

    def check(self, path: str) -> list[str]:
        problems = check_host(f"{path}.host", self.host)
        problems += check_port(f"{path}.port", self.port)
        if self.user is not None and not _USER.fullmatch(self.user):
            problems.append(
                f"{path}.user: got {self.user!r}; expected a POSIX user name"
            )
        seen = {self.host.lower()}
        for index, host in enumerate(self.alternatives):
            key = f"{path}.alternatives[{index}]"
            problems += check_host(key, host)
            if host.lower() in seen:
                problems.append(
                    f"{key}: got {host!r} twice (host and alternatives must all "
                    "differ); remove the repeated entry"
                )
            seen.add(host.lower())
        return problems

    @property
    def hosts(self) -> tuple[str, ...]:
        """The host, then its alternatives: one route each, in this order."""
        return (self.host, *self.alternatives)

    @property
    def destination(self) -> str:
        """The ``[user@]host`` form ssh takes."""
        return f"{self.user}@{self.host}" if self.user else self.host


#: most ssh connections one drone may open (tunnel.parallel): each is a start
#: against the login sshd's MaxStartups and a process on the worker
MAX_PARALLEL = 16

#: a local port on the worker: a number, or ``auto`` for one chosen per drone
PortSetting = Union[int, Literal["auto"]]
AUTO = "auto"
#: default candidates for ``auto`` ports: below Linux's ephemeral range
#: (32768-60999), so outgoing connections do not take them
DEFAULT_PORT_RANGE = (20000, 32767)


@dataclass(frozen=True)
class Forward:
    """An ``ssh -L`` forward opened by the tunnel, e.g. to a squid for CVMFS.

    ``name`` lets other settings refer to the forward whatever its local port
    (``cvmfs.http_proxy: forward:NAME``), which an ``auto`` port needs.
    """

    host: str
    port: int
    listen_port: PortSetting = AUTO
    name: Optional[str] = None

    def check(self, path: str) -> list[str]:
        problems = []
        if self.listen_port != AUTO:
            problems += check_port(f"{path}.listen_port", self.listen_port)
        if self.name is not None and not FORWARD_NAME.fullmatch(self.name):
            problems.append(
                f"{path}.name: got {self.name!r}; expected a letter followed by "
                "letters, digits or _ (it becomes part of an environment variable)"
            )
        return (
            problems
            + check_host(f"{path}.host", self.host)
            + check_port(f"{path}.port", self.port)
        )


@dataclass(frozen=True)
class Tunnel:
    """The ssh tunnel from the worker node out of the site."""

    hops: tuple[Hop, ...] = ()
    identity_file: str = "~/.ssh/id_ed25519"
    known_hosts: str = "~/.ssh/known_hosts"
    strict_host_key_checking: bool = True
    socks_port: PortSetting = AUTO
    forwards: tuple[Forward, ...] = ()
    port_range: tuple[int, ...] = DEFAULT_PORT_RANGE
    ciphers: str = "auto"
    #: ``builtin`` (lib/supervise.sh; ``loop`` is a synonym) or ``autossh``
    supervisor: Literal["builtin", "loop", "autossh"] = "builtin"
    ready_timeout: float = 10.0
    parallel: int = 1

    def check(self, path: str) -> list[str]:
        return self._check_basics(path) + self._check_parallel(path)

    def _check_parallel(self, path: str) -> list[str]:
        """1..16 ssh connections: past 16 the login sshd's MaxStartups suffers."""
        if (
            isinstance(self.parallel, bool)
            or not isinstance(self.parallel, int)
            or not 1 <= self.parallel <= MAX_PARALLEL
        ):
            return [
                f"{path}.parallel: got {self.parallel!r}; expected a whole number "
                f"from 1 to {MAX_PARALLEL} (ssh connections per drone; 1 is one "
                "ssh process, more spread the payload's connections over several)"
            ]
        return []

    def _check_basics(self, path: str) -> list[str]:
        problems = check_path(
            f"{path}.identity_file", self.identity_file, "the tunnel key on the worker"
        )
        problems += check_path(
            f"{path}.known_hosts", self.known_hosts, "a known_hosts file on the worker"
        )
        if self.socks_port != AUTO:
            problems += check_port(f"{path}.socks_port", self.socks_port)
        problems += check_positive(
            f"{path}.ready_timeout", self.ready_timeout, "a time in seconds"
        )
        if not re.fullmatch(r"[A-Za-z0-9@.,\-]+", self.ciphers):
            problems.append(
                f"{path}.ciphers: got {self.ciphers!r}; expected 'auto' or an "
                "ssh cipher list such as 'aes128-gcm@openssh.com,chacha20-poly1305"
                "@openssh.com'"
            )
        fixed = [p for p in self.local_ports if p != AUTO]
        if len(set(fixed)) != len(fixed):
            listen = [f.listen_port for f in self.forwards]
            problems.append(
                f"{path}.forwards: got listen ports {listen!r} with socks_port "
                f"{self.socks_port!r}; every local port must be different (or "
                "auto: chosen per drone)"
            )
        names = [f.name.lower() for f in self.forwards if f.name]
        if len(set(names)) != len(names):
            problems.append(
                f"{path}.forwards: got names {names!r}; every forward needs its "
                "own name (compared without case)"
            )
        return problems + self._check_port_range(path)

    def _check_port_range(self, path: str) -> list[str]:
        """Room for two candidate sets at least: a drone retries on a taken port."""
        got = f"{path}.port_range: got {list(self.port_range)!r}"
        if len(self.port_range) != 2:
            return [f"{got}; expected [LOW, HIGH], e.g. [20000, 32767]"]
        low, high = self.port_range
        if not 1024 <= low < high <= 65535:
            return [
                f"{got}; expected 1024 <= LOW < HIGH <= 65535 (ports below 1024 "
                "need root)"
            ]
        if high - low + 1 < 2 * self.auto_ports:
            return [
                f"{got}; {self.auto_ports} local ports are auto, so the range needs "
                f"at least {2 * self.auto_ports} ports (better hundreds: one set "
                "per drone on a node)"
            ]
        return []

    @property
    def local_ports(self) -> tuple[PortSetting, ...]:
        """The SOCKS port, then each forward's listen port (numbers or auto)."""
        return (self.socks_port, *(f.listen_port for f in self.forwards))

    @property
    def auto_ports(self) -> int:
        """How many local ports a drone chooses at run time."""
        return sum(1 for port in self.local_ports if port == AUTO)

    def forward_index(self, name: str) -> Optional[int]:
        """Position of the forward called ``name`` (compared without case)."""
        for index, forward in enumerate(self.forwards):
            if forward.name and forward.name.lower() == name.lower():
                return index
        return None


@dataclass(frozen=True)
class Proxy:
    """A proxy hop after the ssh tunnel's SOCKS port, e.g. dante at a partner site."""

    type: Literal["socks5", "socks4", "http"]
    host: str
    port: int

    def check(self, path: str) -> list[str]:
        return check_host(f"{path}.host", self.host) + check_port(
            f"{path}.port", self.port
        )


@dataclass(frozen=True)
class Chain:
    """How the unmodified payload's connections are sent into the tunnel."""

    tool: Literal["proxychains", "tsocks", "none"] = "proxychains"
    proxies: tuple[Proxy, ...] = ()
    localnet: tuple[str, ...] = ("127.0.0.0/8",)
    remote_dns: bool = True
    quiet: bool = True
    library: Optional[str] = None
    #: ``preload``: LD_PRELOAD (``tool``); ``namespace``: a private network
    #: namespace with redsocks (mode part netns), ``tool`` its fallback
    capture: Literal["preload", "namespace"] = "preload"
    #: IPv4 address of the DNS server used inside the namespace (null or
    #: ``none``: names do not resolve inside, they fail at once)
    resolver: Optional[str] = None
    resolver_route: Literal["chain", "direct"] = "chain"
    #: redsocks on the worker (null: found on PATH)
    redsocks: Optional[str] = None

    def check(self, path: str) -> list[str]:
        problems = []
        if self.library is not None:
            problems += check_path(
                f"{path}.library",
                self.library,
                "libproxychains.so.4 / libtsocks.so on the worker",
            )
        for index, net in enumerate(self.localnet):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                problems.append(
                    f"{path}.localnet[{index}]: got {net!r}; expected a network "
                    "such as 10.0.0.0/8"
                )
        if self.redsocks is not None:
            problems += check_path(
                f"{path}.redsocks", self.redsocks, "the redsocks program on the worker"
            )
        problems += netns.check_resolver(f"{path}.resolver", self.resolver)
        if self.tool == "tsocks" and len(self.proxies) > 0:
            problems.append(
                f"{path}.proxies: got {len(self.proxies)} proxies with tool "
                "'tsocks'; tsocks speaks only to the tunnel's SOCKS port: use "
                "tool 'proxychains' for further proxy hops"
            )
        return problems

    @property
    def localnets(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(n, strict=False) for n in self.localnet)

    @property
    def resolver_address(self) -> Optional[str]:
        """The resolver inside the namespace, or None (``none`` is None too)."""
        return None if self.resolver in (None, "none") else self.resolver


@dataclass(frozen=True)
class SocksProfile(NetworkProfile):
    """The ``Network`` profile of a socks site: the common sections, a tunnel, a chain."""

    tunnel: Tunnel = field(default_factory=Tunnel)
    chain: Chain = field(default_factory=Chain)

    def check(self, path: str) -> list[str]:
        problems = super().check(path)
        if not self.tunnel.hops:
            problems.append(
                f"{path}.tunnel.hops: empty with mode 'socks'; list at least the "
                "login node (host, port, user), or use mode: direct"
            )
        for index, hop in enumerate(self.tunnel.hops[1:], start=1):
            if hop.alternatives:
                problems.append(
                    f"{path}.tunnel.hops[{index}].alternatives: got "
                    f"{list(hop.alternatives)!r}; only the first hop (the login "
                    "node) may list alternatives: move them to "
                    f"{path}.tunnel.hops[0].alternatives, or remove them"
                )
        problems += _check_parallel_chain(path, self)
        problems += _check_capture(path, self)
        return problems + _check_forward_references(f"{path}.cvmfs", self)


def _check_capture(path: str, profile: SocksProfile) -> list[str]:
    """The namespace capture's rules: the part's own, then what the socks
    chain can give redsocks (one upstream) and the outer link (IPv4)."""
    chain = profile.chain
    problems = netns.problems(path, f"{path}.chain", profile, capture(profile))
    if chain.capture != "namespace":
        return problems
    if profile.isolation == "preferred" and chain.tool == "none":
        problems.append(
            f"{path}.chain.tool: got 'none' with chain.capture 'namespace' and "
            "isolation 'preferred'; the fallback needs a preload tool: set "
            "chain.tool: proxychains, or isolation: required"
        )
    if len(chain.proxies) > 1:
        problems.append(
            f"{path}.chain.proxies: got {len(chain.proxies)} proxies with "
            "chain.capture 'namespace'; redsocks has one upstream: one proxy after "
            "the tunnel (reached through ssh -L); make further hops ssh hops "
            "(tunnel.hops), or chain.capture: preload"
        )
    if profile.tunnel.hops:
        first = profile.tunnel.hops[0]
        keys = ["host"] + [f"alternatives[{i}]" for i in range(len(first.alternatives))]
        for key, host in zip(keys, first.hosts):
            if ":" in host:
                problems.append(
                    f"{path}.tunnel.hops[0].{key}: got {host!r} with chain.capture "
                    "'namespace'; the namespace's outer link is IPv4 only: give "
                    "an IPv4 address or a host name with an IPv4 address"
                )
    return problems


def _check_parallel_chain(path: str, profile: SocksProfile) -> list[str]:
    """What the chain can spread over ``tunnel.parallel`` connections.

    proxychains-ng spreads with random_chain (chain_len 1), which cannot keep
    a fixed order after the spread hop: one proxy after the tunnel at most.
    tsocks has one server, so it would use one connection of N.
    """
    parallel = profile.tunnel.parallel
    if not isinstance(parallel, int) or parallel < 2:
        return []
    chain = profile.chain
    got = f"{path}.tunnel.parallel: got {parallel}"
    if chain.tool == "tsocks":
        return [
            f"{got} with chain.tool 'tsocks'; tsocks speaks to one SOCKS port "
            "only: set chain.tool: proxychains, or parallel: 1"
        ]
    if len(chain.proxies) > 1:
        return [
            f"{got} with {len(chain.proxies)} chain.proxies; connections are "
            "spread with one proxy after the tunnel at most (proxychains-ng's "
            "random_chain keeps no order): list one proxy, or set parallel: 1"
        ]
    return []


def _check_forward_references(path: str, profile: SocksProfile) -> list[str]:
    """``forward:NAME`` must name a forward; a loopback proxy must not dangle.

    The rule: ``http://127.0.0.1:PORT`` is taken literally. It reaches a
    forward only when that forward's listen_port is the number PORT; an
    ``auto`` forward has a different port on every drone, so it must be
    referred to as ``forward:NAME``. A loopback proxy that matches no
    numbered forward while some forward is auto is that mistake.
    """
    problems = []
    tunnel = profile.tunnel
    for proxy, name in profile.cvmfs.forward_references():
        if tunnel.forward_index(name) is None:
            names = [f.name for f in tunnel.forwards if f.name]
            problems.append(
                f"{path}.http_proxy: got {proxy!r}; no forward of that name "
                f"(named forwards: {names or 'none'}): add name: "
                f"{name} to its tunnel.forwards entry"
            )
    fixed = {f.listen_port for f in tunnel.forwards if f.listen_port != AUTO}
    auto = [f for f in tunnel.forwards if f.listen_port == AUTO]
    for proxy in proxy_elements(profile.cvmfs.http_proxy):
        loopback = re.fullmatch(r"http://127\.[0-9.]+:(\d+)/?", proxy)
        if loopback and auto and int(loopback.group(1)) not in fixed:
            problems.append(
                f"{path}.http_proxy: got {proxy!r}, but no forward listens on "
                f"port {loopback.group(1)}: forwards with listen_port auto get "
                "a port per drone; refer to one as forward:NAME (e.g. name: "
                "squid, http_proxy: forward:squid)"
            )
    return problems


# -- rendered text -------------------------------------------------------------


def endpoint(host: str, port: int) -> str:
    """HOST:PORT, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def port_placeholder(index: int) -> str:
    """What the script replaces with the ``index``-th local port it chose."""
    return f"@TARDIS_PORT_{index}@"


def _port(index: int, setting: PortSetting) -> str:
    """A local port in rendered text: its number, or the run-time placeholder."""
    return port_placeholder(index) if setting == AUTO else str(setting)


# -- local ports: one list, the same order in Python and in tunnel.sh ----------
#
# [0] the SOCKS port of connection 1, [1..F] the forwards (connection 1 only),
# then the SOCKS ports of connections 2..N, then (chain with a proxy) each
# connection's -L forward to the first proxy. @TARDIS_PORT_<i>@ is index i.


def proxy_forward(profile: SocksProfile) -> Optional[Proxy]:
    """The first chain proxy when the chain reaches it through ``-L`` forwards.

    proxychains then speaks to the proxy straight through the forward
    instead of first to ssh's SOCKS port (-D) and then, across the tunnel, to
    the proxy: one SOCKS handshake and one channel-open round trip less per
    connection (chain b's short-connection cost), and the only shape in which
    proxychains can spread a chain with a proxy over parallel connections.
    """
    chain = profile.chain
    if chain.proxies and (chain.tool == "proxychains" or chain.capture == "namespace"):
        return chain.proxies[0]
    return None


def local_port_settings(profile: SocksProfile) -> list[PortSetting]:
    """Every local port of the drone, in index order (numbers or auto)."""
    tunnel = profile.tunnel
    ports: list[PortSetting] = list(tunnel.local_ports)
    ports += [AUTO] * (tunnel.parallel - 1)
    if proxy_forward(profile) is not None:
        ports += [AUTO] * tunnel.parallel
    return ports


def socks_port_indices(profile: SocksProfile) -> list[int]:
    """Index of each connection's SOCKS port (connection 1 first)."""
    first_extra = 1 + len(profile.tunnel.forwards)
    return [0] + list(range(first_extra, first_extra + profile.tunnel.parallel - 1))


def proxy_forward_indices(profile: SocksProfile) -> list[int]:
    """Index of each connection's -L forward to the first proxy (or none)."""
    if proxy_forward(profile) is None:
        return []
    first = len(profile.tunnel.forwards) + profile.tunnel.parallel
    return list(range(first, first + profile.tunnel.parallel))


def tunnel_route(profile: SocksProfile) -> str:
    """Human wording of the tunnel for log lines and headers."""
    if not profile.tunnel.hops:
        return "no tunnel"
    texts = [f"{hop.destination}:{hop.port}" for hop in profile.tunnel.hops]
    alternatives = profile.tunnel.hops[0].alternatives
    if alternatives:
        texts[0] += f" (or {', '.join(alternatives)})"
    text = (
        f"ssh {' -> '.join(texts)}, SOCKS on "
        f"127.0.0.1:{_port(0, profile.tunnel.socks_port)}"
    )
    if profile.tunnel.parallel > 1:
        text += f" (and {profile.tunnel.parallel - 1} more connections)"
    return text


def chain_route(profile: SocksProfile) -> str:
    """Human wording of the proxy chain for log lines and headers."""
    parallel = profile.tunnel.parallel
    spread = f"one of {parallel} " if parallel > 1 else ""
    proxies = list(profile.chain.proxies)
    first = proxy_forward(profile)
    if first is not None:
        index = proxy_forward_indices(profile)[0]
        hops = [
            f"{first.type} {endpoint(first.host, first.port)} through {spread}"
            f"ssh -L 127.0.0.1:{port_placeholder(index)}"
        ]
        proxies = proxies[1:]
    else:
        where = f"127.0.0.1:{_port(0, profile.tunnel.socks_port)}"
        hops = [f"socks5 {where} ({spread}ssh tunnel{'s' if spread else ''})"]
    hops += [f"{proxy.type} {endpoint(proxy.host, proxy.port)}" for proxy in proxies]
    return " -> ".join(hops)


def check_paths(profile: SocksProfile, path: str = "Network") -> None:
    """Refuse tunnel paths that cannot be written into ssh_config."""
    problems = []
    for key in ("identity_file", "known_hosts"):
        value = getattr(profile.tunnel, key)
        if CONTROL.search(value) or not value:
            problems.append(
                f"{path}.tunnel.{key}: got {value!r}; expected a file path "
                "without control characters"
            )
    if problems:
        raise ConfigurationError(problems)


def cvmfs_http_proxy(profile: SocksProfile) -> str:
    """CVMFS_HTTP_PROXY with every ``forward:NAME`` turned into its local address.

    An ``auto`` forward's port becomes its placeholder, replaced at run time.
    """
    tunnel = profile.tunnel

    def resolve(part: str) -> str:
        if not part.startswith("forward:"):
            return part  # a proxy, DIRECT, or a ';' or '|' between them
        index = tunnel.forward_index(part.removeprefix("forward:"))
        if index is None:  # load_profile refuses this; a hand-built profile may not
            raise ConfigurationError([f"cvmfs.http_proxy: no forward for {part!r}"])
        return (
            f"http://127.0.0.1:{_port(index + 1, tunnel.forwards[index].listen_port)}"
        )

    return "".join(
        resolve(part) for part in re.split(r"([;|])", profile.cvmfs.http_proxy)
    )


def hop_alias(route: int, index: int) -> str:
    """ssh_config Host alias of hop ``index`` (from 1) on route ``route`` (from 0).

    Route 0 (the first hop's host) keeps the names it always had
    (tardis-hop-N); route r > 0 goes through the first hop's r-th alternative.
    """
    return f"tardis-hop-{index}" if route == 0 else f"tardis-r{route}-hop-{index}"


def tunnel_targets(profile: SocksProfile) -> list[str]:
    """The last hop's alias of every route, in configured order (TUNNEL_TARGETS)."""
    hops = profile.tunnel.hops
    if not hops:
        return []
    return [hop_alias(route, len(hops)) for route in range(len(hops[0].hosts))]


def first_hops(profile: SocksProfile) -> list[str]:
    """HOST:PORT of every route's first hop, in the order of tunnel_targets."""
    hops = profile.tunnel.hops
    if not hops:
        return []
    return [endpoint(host, hops[0].port) for host in hops[0].hosts]


def _hops(profile: SocksProfile) -> list[dict[str, Any]]:
    """One complete route per first-hop host: each route's later hops jump
    through that route's own first hop, so a route stands or falls alone."""
    tunnel_hops = profile.tunnel.hops
    hops = []
    for route, first in enumerate(tunnel_hops[0].hosts if tunnel_hops else ()):
        for index, hop in enumerate(tunnel_hops, start=1):
            hops.append(
                {
                    "alias": hop_alias(route, index),
                    "host": first if index == 1 else hop.host,
                    "port": hop.port,
                    "user": hop.user,
                    "jump": hop_alias(route, index - 1) if index > 1 else None,
                }
            )
    return hops


def _proxy_forward_target(profile: SocksProfile) -> str:
    """HOST:PORT of the first proxy for the -L forwards, or empty."""
    first = proxy_forward(profile)
    return "" if first is None else endpoint(first.host, first.port)


def _forward_lines(profile: SocksProfile) -> list[str]:
    """The -L/-D options the script gives ssh, for the ssh_config's header."""
    tunnel = profile.tunnel
    lines = [
        f"-L 127.0.0.1:{f.listen_port}:{endpoint(f.host, f.port)}"
        + (f" ({f.name})" if f.name else "")
        for f in tunnel.forwards
    ]
    return lines + [f"-D 127.0.0.1:{tunnel.socks_port}"]


def ssh_config_text(profile: SocksProfile, budget: KeepaliveBudget) -> str:
    """The tunnel's ssh_config (hops as ProxyJump chain).

    The -D/-L forwards are not in it: their local ports may be chosen per
    drone, so the script gives them on ssh's command line (tunnel_command).
    """
    check_paths(profile)
    tunnel = profile.tunnel
    return render_template(
        "conf/ssh_config.j2",
        route=tunnel_route(profile),
        hops=_hops(profile),
        forwards=_forward_lines(profile),
        strict_host_key_checking="yes" if tunnel.strict_host_key_checking else "no",
        known_hosts=tunnel.known_hosts,
        identity_file=tunnel.identity_file,
        server_alive_interval=budget.server_alive_interval,
        server_alive_count_max=budget.server_alive_count_max,
        connect_timeout=connect_timeout(tunnel),
    )


def _localnets(
    profile: SocksProfile,
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The configured local networks, loopback always first (the -L forwards)."""
    nets = [ipaddress.ip_network("127.0.0.0/8")]
    for net in profile.chain.localnets:
        if net not in nets:
            nets.append(net)
    return nets


def proxychains_conf_text(profile: SocksProfile) -> str:
    """proxychains-ng configuration: strict chain from the tunnel's SOCKS port."""
    localnet = [
        f"{net.network_address}/{net.netmask}"
        if net.version == 4
        else f"{net.network_address}/{net.prefixlen}"
        for net in _localnets(profile)
    ]
    return render_template(
        "conf/proxychains.conf.j2",
        route=chain_route(profile),
        spread=profile.tunnel.parallel > 1,
        quiet=profile.chain.quiet,
        remote_dns=profile.chain.remote_dns,
        localnet=localnet,
        proxies=_proxy_list(profile),
    )


def _proxy_list(profile: SocksProfile) -> list[Proxy]:
    """proxychains' [ProxyList]: the tunnel's way in (one per connection), then
    the further proxies (parallel 1 only: a spread chain has none after it)."""
    tunnel = profile.tunnel
    first = proxy_forward(profile)
    if first is None:
        ports = [
            _port(0, tunnel.socks_port) if index == 0 else port_placeholder(index)
            for index in socks_port_indices(profile)
        ]
        entries = [Proxy("socks5", "127.0.0.1", port) for port in ports]  # type: ignore[arg-type]
        return entries + list(profile.chain.proxies)
    entries = [
        Proxy(first.type, "127.0.0.1", port_placeholder(index))  # type: ignore[arg-type]
        for index in proxy_forward_indices(profile)
    ]
    return entries + list(profile.chain.proxies[1:])


def tsocks_conf_text(profile: SocksProfile) -> str:
    """tsocks configuration: the tunnel's SOCKS port, IPv4 local networks."""
    localnet = [
        f"{net.network_address}/{net.netmask}"
        for net in _localnets(profile)
        if net.version == 4
    ]
    return render_template(
        "conf/tsocks.conf.j2",
        route=chain_route(profile),
        localnet=localnet,
        socks_port=_port(0, profile.tunnel.socks_port),
    )


@dataclass(frozen=True)
class SupervisorTimings:
    """The builtin supervisor's timings (ms), rendered as SUPERVISE_* settings.

    One place for the numbers drone_scripts/lib/supervise.sh uses and the
    grace derivation (keepalive.py) adds as its worst-case reconnect delay.
    The spread keeps drones that see the login node return at the same
    moment from reaching sshd's ``MaxStartups`` (default 10:30:100) together;
    probe interval + spread + one ssh handshake stay under 3 s, the target
    for a tunnel's return after sshd's.
    """

    probe_min_ms: int = 300
    probe_max_ms: int = 600
    probe_timeout_ms: int = 1000
    spread_ms: int = 1000
    backoff_base_ms: int = 200
    backoff_cap_ms: int = 10_000
    #: starts of this user's drones on one node between start and "up" at
    #: once (flock slots): drones starting together on a node take turns
    node_starts: int = 5
    #: the longest wait for a slot (then the start goes ahead anyway)
    slot_wait_ms: int = 8000
    #: a start still not up after this gives its slot back
    slot_hold_ms: int = 3000


SUPERVISOR = SupervisorTimings()


def supervisor_settings(ready_timeout_ms: int) -> SettingsGroup:
    """The settings lib/supervise.sh reads, for any mode that supervises a
    connection with it (socks' tunnel, vpn's openconnect)."""
    t = SUPERVISOR
    return SettingsGroup(
        "supervisor (lib/supervise.sh; times in ms)",
        (
            ("SUPERVISE_PROBE_MIN_MS", t.probe_min_ms),
            ("SUPERVISE_PROBE_MAX_MS", t.probe_max_ms),
            ("SUPERVISE_PROBE_TIMEOUT_MS", t.probe_timeout_ms),
            ("SUPERVISE_SPREAD_MS", t.spread_ms),
            ("SUPERVISE_BACKOFF_BASE_MS", t.backoff_base_ms),
            ("SUPERVISE_BACKOFF_CAP_MS", t.backoff_cap_ms),
            ("SUPERVISE_NODE_STARTS", t.node_starts),
            ("SUPERVISE_SLOT_WAIT_MS", t.slot_wait_ms),
            ("SUPERVISE_SLOT_HOLD_MS", t.slot_hold_ms),
            ("SUPERVISE_READY_TIMEOUT_MS", ready_timeout_ms),
        ),
    )


def connect_timeout(tunnel: Tunnel) -> int:
    """ssh's ConnectTimeout (s): the tunnel's ready timeout, whole seconds."""
    return max(1, math.ceil(tunnel.ready_timeout))


def reconnect_bound(tunnel: Tunnel) -> int:
    """Worst case (s) from the first hop's return to a new ssh start.

    An attempt in flight may hang for ssh's ConnectTimeout, or a back-off
    of at most its cap may just have begun; then one probe interval, the
    spread and the wait for a node start slot: connect_timeout + backoff_cap
    + probe_max + spread + slot_wait, rounded up.
    (Autossh has no bound of its own to speak of; the same figure is used.)
    """
    t = SUPERVISOR
    ms = t.backoff_cap_ms + t.probe_max_ms + t.spread_ms + t.slot_wait_ms
    return connect_timeout(tunnel) + math.ceil(ms / 1000)


def capture(profile: SocksProfile) -> netns.Capture:
    """The chain as the netns part sees it: redsocks' upstream is each
    connection's ``-D`` port (chain a: socks5) or its ``-L`` forward to the
    first proxy (chain b: that proxy's type), the one-handshake path
    proxychains takes too."""
    chain = profile.chain
    first = proxy_forward(profile)
    if first is None:
        socks_port = profile.tunnel.socks_port
        ports = [
            _port(0, socks_port) if index == 0 else port_placeholder(index)
            for index in socks_port_indices(profile)
        ]
        kind = "socks5"
    else:
        ports = [port_placeholder(index) for index in proxy_forward_indices(profile)]
        kind = netns.UPSTREAM_TYPES[first.type]
    return netns.Capture(
        method=chain.capture,
        localnet=chain.localnet,
        resolver=chain.resolver_address,
        resolver_route=chain.resolver_route,
        redsocks=chain.redsocks,
        upstream_type=kind,
        upstream_ports=tuple(ports),
        route=chain_route(profile),
        fallback_tool=chain.tool,
    )


#: the chain gets at least this long to reach the collector (ms)
MIN_CHAIN_READY_TIMEOUT_MS = 30_000

#: the chain tool's configuration: (bash function, text of the profile)
_CHAIN_CONFIGS = {
    "proxychains": ("write_proxychains_conf", proxychains_conf_text),
    "tsocks": ("write_tsocks_conf", tsocks_conf_text),
}


# -- the mode -------------------------------------------------------------------


class SocksMode(Mode):
    """ssh tunnel + LD_PRELOAD proxy chain (FZJ, CINECA)."""

    name = "socks"
    summary = "ssh tunnel from the worker out of the site, LD_PRELOAD proxy chain"
    profile_class = SocksProfile
    stages = (
        netns.STAGE,
        Stage("tunnel", "tunnel_stage", phase="network"),
        Stage("chain", "chain_stage", phase="path"),
    )

    def refuse(self, key: str, value: Any, path: str, chosen: str) -> list[str]:
        # `chain: {tool: none}` says "no chain": every direct site wrote it
        # while the chain was a common section, so it stays accepted
        if key == "chain" and isinstance(value, dict):
            tool = value.get("tool", "proxychains")
            if value.get("capture", "preload") != "preload":
                return [
                    f"{path}.chain.capture: got {value['capture']!r} with mode "
                    f"{chosen!r}; capture sends the payload's connections into a "
                    "tunnel, and this mode has none: remove chain.capture, or set "
                    "mode: socks"
                ]
            if tool == "none":
                return []
            return [
                f"{path}.chain.tool: got {tool!r} with mode {chosen!r}; the chain "
                "belongs to mode 'socks' (a tunnel to chain into): set chain.tool: "
                "none or remove chain, or set mode: socks"
            ]
        return super().refuse(key, value, path, chosen)

    def legs(
        self, profile: NetworkProfile, budget: KeepaliveBudget
    ) -> list[tuple[str, str]]:
        assert isinstance(profile, SocksProfile)
        return [
            (
                "worker -> login ssh",
                f"ServerAliveInterval={budget.server_alive_interval}s",
            ),
            *netns.legs(profile, budget, capture(profile)),
            (
                "login -> pool (sshd-opened legs)",
                budget.knob_text("CCB_HEARTBEAT_INTERVAL"),
            ),
        ]

    def reconnect_delay(self, profile: NetworkProfile) -> int:
        assert isinstance(profile, SocksProfile)
        return reconnect_bound(profile.tunnel)

    def libraries(self, profile: NetworkProfile) -> list[Path]:
        # netns.sh and capture.sh always: the isolation stage is static (it
        # logs "skipped: capture preload"), and both are small when unused
        lib = template_dir() / "lib"
        names = ("supervise.sh", "netns.sh", "tunnel.sh", "capture.sh", "chain.sh")
        return [lib / name for name in names]

    def settings(
        self, profile: NetworkProfile, budget: KeepaliveBudget
    ) -> list[SettingsGroup]:
        assert isinstance(profile, SocksProfile)
        tunnel, chain = profile.tunnel, profile.chain
        ready_ms = int(tunnel.ready_timeout * 1000)
        supervisor = "autossh" if tunnel.supervisor == "autossh" else "builtin"
        endpoints = profile.pool.endpoints
        probe_host, probe_port = endpoints[0] if profile.pool.collector else ("", "")
        return [
            SettingsGroup(
                "tunnel: local ports are a number, or auto (chosen per drone from "
                "TUNNEL_PORT_RANGE); @TARDIS_PORT_<i>@ in other settings stands "
                "for the i-th port chosen",
                (
                    ("TUNNEL_TARGET", hop_alias(0, len(tunnel.hops))),
                    # one route per first-hop host; tunnel_order_targets
                    # rotates both by job id, the supervisor fails over
                    ("TUNNEL_TARGETS", tunnel_targets(profile)),
                    ("TUNNEL_FIRST_HOPS", first_hops(profile)),
                    ("TUNNEL_KNOWN_HOSTS", tunnel.known_hosts),
                    ("TUNNEL_ROUTE", tunnel_route(profile)),
                    ("TUNNEL_SUPERVISOR", supervisor),
                    ("TUNNEL_CIPHERS", tunnel.ciphers),
                    ("TUNNEL_SOCKS_PORT", tunnel.socks_port),
                    ("TUNNEL_FORWARD_NAMES", [f.name or "" for f in tunnel.forwards]),
                    ("TUNNEL_FORWARD_PORTS", [f.listen_port for f in tunnel.forwards]),
                    (
                        "TUNNEL_FORWARD_TARGETS",
                        [endpoint(f.host, f.port) for f in tunnel.forwards],
                    ),
                    ("TUNNEL_PORT_RANGE", list(tunnel.port_range)),
                    ("TUNNEL_READY_TIMEOUT_MS", ready_ms),
                    ("TUNNEL_PARALLEL", tunnel.parallel),
                    ("TUNNEL_PROXY_FORWARD", _proxy_forward_target(profile)),
                ),
            ),
            # autossh waits on its own: never end it for being slow
            supervisor_settings(3 * ready_ms if supervisor == "builtin" else 2**31 - 1),
            SettingsGroup(
                "chain",
                (
                    ("CHAIN_TOOL", chain.tool),
                    ("CHAIN_LIBRARY", chain.library or ""),
                    ("CHAIN_QUIET", chain.quiet),
                    ("CHAIN_ROUTE", chain_route(profile)),
                    ("CHAIN_PROBE_HOST", probe_host),
                    ("CHAIN_PROBE_PORT", probe_port),
                    (
                        "CHAIN_READY_TIMEOUT_MS",
                        max(ready_ms, MIN_CHAIN_READY_TIMEOUT_MS),
                    ),
                ),
            ),
            netns.settings(profile, capture(profile)),
        ]

    def config_files(
        self, profile: NetworkProfile, budget: KeepaliveBudget
    ) -> list[ConfigFile]:
        assert isinstance(profile, SocksProfile)
        files = [ConfigFile("write_ssh_config", ssh_config_text(profile, budget))]
        if profile.chain.tool in _CHAIN_CONFIGS:  # only the chosen tool's
            function, text = _CHAIN_CONFIGS[profile.chain.tool]
            files.append(ConfigFile(function, text(profile)))
        return files + netns.config_files(capture(profile))

    def cvmfs_http_proxy(self, profile: NetworkProfile) -> str:
        assert isinstance(profile, SocksProfile)
        return cvmfs_http_proxy(profile)

    def warnings(self, profile: NetworkProfile) -> list[tuple[str, str]]:
        assert isinstance(profile, SocksProfile)
        tunnel, found = profile.tunnel, []
        if not tunnel.strict_host_key_checking:
            found.append(
                (
                    "tunnel.strict_host_key_checking is false: host keys are not "
                    "verified",
                    "add the hops' keys to tunnel.known_hosts and remove the key",
                )
            )
        if (
            tunnel.supervisor == "autossh"
            and tunnel.hops
            and tunnel.hops[0].alternatives
        ):
            found.append(
                (
                    "tunnel.hops[0].alternatives with tunnel.supervisor autossh: "
                    "drones spread over the login nodes but never fail over "
                    "(autossh retries its one route)",
                    "set tunnel.supervisor: builtin (the default)",
                )
            )
        return found + netns.warnings(profile, capture(profile))

    def probe_lines(self, profile: NetworkProfile) -> list[str]:
        assert isinstance(profile, SocksProfile)
        from shlex import quote as q

        lines = ["have ssh"]
        if profile.tunnel.supervisor == "autossh":
            lines.append("have autossh")
        else:  # the builtin supervisor probes the first hop under timeout
            lines.append("have timeout")
        tool = {"proxychains": "proxychains4", "tsocks": "tsocks"}.get(
            profile.chain.tool
        )
        # with isolation required a namespace drone never falls back to it
        fallback = not (
            profile.chain.capture == "namespace" and profile.isolation == "required"
        )
        if tool and fallback:
            lines.append(f"have {q(tool)}")
        lines += netns.probe_lines(profile, capture(profile))
        lines += [
            f"f={shell_path(profile.tunnel.identity_file)}",
            'if [ -r "$f" ]; then mark key ok "$f"; else mark key fail "$f"; fi',
            f"k={shell_path(profile.tunnel.known_hosts)}",
        ]
        hosts = [(host, hop.port) for hop in profile.tunnel.hops for host in hop.hosts]
        for host, port in hosts:
            name = host if port == 22 else f"[{host}]:{port}"
            lines.append(
                f'if ssh-keygen -F {q(name)} -f "$k" >/dev/null 2>&1; then '
                f'mark {q("known_hosts:" + name)} ok "$k"; else '
                f'mark {q("known_hosts:" + name)} fail "$k"; fi'
            )
        out = _first_hop_out(profile)
        if out is not None:
            host, port, role = out
            lines.append(
                f"if timeout 5 bash -c {q(f'exec 3<>/dev/tcp/{host}/{port}')} "
                f"2>/dev/null; then mark {q(f'outbound:{host}:{port}')} ok {q(role)}; "
                f"else mark {q(f'outbound:{host}:{port}')} fail {q(role)}; fi"
            )
        return lines

    def probe_fix(self, name: str) -> Optional[str]:
        if name.startswith("known_hosts:"):
            host = name.split(":", 1)[1]
            return (
                f"add the host key of {host} to Network.tunnel.known_hosts "
                f"(compare ssh-keyscan with the key the site publishes)"
            )
        if name.startswith("outbound:"):
            return (
                "the login node cannot open this port: ask the site, or reach it "
                "through an ssh hop on 443"
            )
        return _PROBE_FIXES.get(name) or netns.probe_fix(name)


def _first_hop_out(profile: SocksProfile) -> Optional[tuple[str, int, str]]:
    """(host, port, role) the login node itself must open for the chain to work."""
    hops = profile.tunnel.hops
    if len(hops) > 1:
        return hops[1].host, hops[1].port, "second ssh hop"
    if profile.chain.proxies:
        first = profile.chain.proxies[0]
        return first.host, first.port, f"{first.type} proxy"
    return None


_PROBE_FIXES = {
    "cmd:ssh": "install openssh-client on the workers (checked here on the login node)",
    "cmd:autossh": "install autossh, or set Network.tunnel.supervisor: builtin",
    "cmd:timeout": "install coreutils (timeout) on the workers: the tunnel "
    "supervisor probes the login node's port with it",
    "cmd:proxychains4": "install proxychains4 (proxychains-ng) or set Network.chain.library",
    "cmd:tsocks": "install tsocks or set Network.chain.library",
    "key": "create the tunnel key (ssh-keygen -t ed25519) at Network.tunnel.identity_file "
    "and authorize it on the login node (restrict,port-forwarding)",
}

MODE = SocksMode()
