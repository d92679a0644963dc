"""The per-site ``Network`` profile: every key a site operator may set, with defaults.

The profile lives in the site's own section of the TARDIS configuration, beside
``executor`` and ``MachineTypes``. It is validated once, when the adapter is
built, so a bad profile stops the daemon at start with a message naming the key.
docs/configuration.md documents every key; keep the two in step.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from .keepalive import derive_budget
from .paths import path_problem
from .schema import ConfigurationError, load_partial, untainted

__all__ = [
    "AUTO",
    "ConfigurationError",
    "NetworkProfile",
    "PortSetting",
    "load_profile",
    "proxy_elements",
]

_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.\-]*[A-Za-z0-9])?")
_USER = re.compile(r"[a-z_][a-z0-9_.\-]*\$?")
_KNOB = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_REPO = re.compile(r"[a-z0-9][a-z0-9.\-]*")


#: an IPv6 zone (``fe80::1%eth0``): ipaddress accepts any text after the ``%``
_ZONE = re.compile(r"[A-Za-z0-9_.\-]+")


def _check_host(path: str, host: str) -> list[str]:
    """A host name or an address, matched whole: ``re.match``'s ``$`` would let a
    trailing newline through, which then breaks proxychains' and ssh's files."""
    if _HOSTNAME.fullmatch(host):
        return []
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return [f"{path}: got {host!r}; expected a host name or an IP address"]
    _, percent, zone = host.partition("%")
    if percent and not _ZONE.fullmatch(zone):
        return [
            f"{path}: got {host!r}; an IPv6 zone after '%' may hold only letters, "
            "digits, '.', '_' or '-'"
        ]
    return []


def _check_port(path: str, port: int) -> list[str]:
    if 1 <= port <= 65535:
        return []
    return [f"{path}: got {port!r}; expected a TCP port between 1 and 65535"]


def _check_path(path: str, value: str, what: str) -> list[str]:
    """A configured path that reaches shell commands: plain, absolute or ``~/``."""
    problem = path_problem(value)
    if problem is None:
        return []
    return [f"{path}: got {value!r}; {what}: {problem}"]


def _check_positive(path: str, value: Optional[float], what: str) -> list[str]:
    if value is None or value > 0:
        return []
    return [f"{path}: got {value!r}; expected {what} greater than 0"]


@dataclass(frozen=True)
class Hop:
    """One ssh hop of the tunnel; the first is usually the site's login node."""

    host: str
    port: int = 22
    user: Optional[str] = None

    def check(self, path: str) -> list[str]:
        problems = _check_host(f"{path}.host", self.host)
        problems += _check_port(f"{path}.port", self.port)
        if self.user is not None and not _USER.fullmatch(self.user):
            problems.append(
                f"{path}.user: got {self.user!r}; expected a POSIX user name"
            )
        return problems

    @property
    def destination(self) -> str:
        """The ``[user@]host`` form ssh takes."""
        return f"{self.user}@{self.host}" if self.user else self.host


#: a local port on the worker: a number, or ``auto`` for one chosen per drone
PortSetting = Union[int, Literal["auto"]]
AUTO = "auto"
#: default candidates for ``auto`` ports: below Linux's ephemeral range
#: (32768-60999), so outgoing connections do not take them
DEFAULT_PORT_RANGE = (20000, 32767)
_FORWARD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


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
            problems += _check_port(f"{path}.listen_port", self.listen_port)
        if self.name is not None and not _FORWARD_NAME.fullmatch(self.name):
            problems.append(
                f"{path}.name: got {self.name!r}; expected a letter followed by "
                "letters, digits or _ (it becomes part of an environment variable)"
            )
        return (
            problems
            + _check_host(f"{path}.host", self.host)
            + _check_port(f"{path}.port", self.port)
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
    supervisor: Literal["autossh", "loop"] = "autossh"
    ready_timeout: float = 10.0

    def check(self, path: str) -> list[str]:
        problems = _check_path(
            f"{path}.identity_file", self.identity_file, "the tunnel key on the worker"
        )
        problems += _check_path(
            f"{path}.known_hosts", self.known_hosts, "a known_hosts file on the worker"
        )
        if self.socks_port != AUTO:
            problems += _check_port(f"{path}.socks_port", self.socks_port)
        problems += _check_positive(
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
        return _check_host(f"{path}.host", self.host) + _check_port(
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

    def check(self, path: str) -> list[str]:
        problems = []
        if self.library is not None:
            problems += _check_path(
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


@dataclass(frozen=True)
class Keepalive:
    """Keepalive settings; unset values are derived from the firewall idle timeout."""

    enabled: bool = True
    server_alive_interval: Optional[int] = None
    server_alive_count_max: int = 3
    condor_knobs: dict[str, int] = field(default_factory=dict)

    def check(self, path: str) -> list[str]:
        problems = _check_positive(
            f"{path}.server_alive_interval", self.server_alive_interval, "seconds"
        )
        problems += _check_positive(
            f"{path}.server_alive_count_max", self.server_alive_count_max, "a count"
        )
        for knob in self.condor_knobs:
            if not _KNOB.fullmatch(knob):
                problems.append(
                    f"{path}.condor_knobs.{knob}: not an HTCondor knob name"
                )
        return problems


@dataclass(frozen=True)
class Firewall:
    """What the site's firewall does to long-lived connections."""

    idle_timeout: Optional[int] = None

    def check(self, path: str) -> list[str]:
        return _check_positive(
            f"{path}.idle_timeout", self.idle_timeout, "a time in seconds (or null)"
        )


@dataclass(frozen=True)
class Cvmfs:
    """How CVMFS is mounted on the worker without privileges (cvmfsexec)."""

    mode: Literal["auto", "mountrepo", "cvmfsexec", "singcvmfs", "none"] = "none"
    dist: str = "~/cvmfsexec/dist"
    repositories: tuple[str, ...] = ()
    http_proxy: str = "DIRECT"
    server_url: Optional[str] = None

    def check(self, path: str) -> list[str]:
        problems = _check_path(
            f"{path}.dist", self.dist, "the cvmfsexec distribution directory"
        )
        for index, repo in enumerate(self.repositories):
            if not _REPO.fullmatch(repo):
                problems.append(
                    f"{path}.repositories[{index}]: got {repo!r}; expected a "
                    "repository name such as cms.cern.ch"
                )
        if self.mode != "none" and not self.repositories:
            problems.append(
                f"{path}.repositories: empty with mode {self.mode!r}; list the "
                "repositories to mount, or set mode: none"
            )
        for proxy in proxy_elements(self.http_proxy):
            problems += _check_numeric_proxy(f"{path}.http_proxy", proxy)
        return problems

    def check_forwards(self, path: str, tunnel: Tunnel, socks: bool) -> list[str]:
        """``forward:NAME`` must name a forward; a loopback proxy must not dangle.

        The rule: ``http://127.0.0.1:PORT`` is taken literally. It reaches a
        forward only when that forward's listen_port is the number PORT; an
        ``auto`` forward has a different port on every drone, so it must be
        referred to as ``forward:NAME``. A loopback proxy that matches no
        numbered forward while some forward is auto is that mistake.
        """
        problems = []
        fixed = {f.listen_port for f in tunnel.forwards if f.listen_port != AUTO}
        auto = [f for f in tunnel.forwards if f.listen_port == AUTO]
        for proxy in proxy_elements(self.http_proxy):
            reference = _FORWARD_REF.fullmatch(proxy)
            if reference and not socks:
                problems.append(
                    f"{path}.http_proxy: got {proxy!r} without a tunnel (mode "
                    "direct): there is no forward to use"
                )
            elif reference and tunnel.forward_index(reference.group(1)) is None:
                names = [f.name for f in tunnel.forwards if f.name]
                problems.append(
                    f"{path}.http_proxy: got {proxy!r}; no forward of that name "
                    f"(named forwards: {names or 'none'}): add name: "
                    f"{reference.group(1)} to its tunnel.forwards entry"
                )
            loopback = re.fullmatch(r"http://127\.[0-9.]+:(\d+)/?", proxy)
            if loopback and auto and int(loopback.group(1)) not in fixed:
                problems.append(
                    f"{path}.http_proxy: got {proxy!r}, but no forward listens on "
                    f"port {loopback.group(1)}: forwards with listen_port auto get "
                    "a port per drone; refer to one as forward:NAME (e.g. name: "
                    "squid, http_proxy: forward:squid)"
                )
        return problems


#: ``forward:NAME`` in cvmfs.http_proxy: the tunnel's forward of that name
_FORWARD_REF = re.compile(r"forward:(.*)", re.DOTALL)


def proxy_elements(http_proxy: str) -> list[str]:
    """The proxies of a CVMFS_HTTP_PROXY value, without the ';' and '|' between."""
    return re.split(r"[;|]", http_proxy)


def _check_numeric_proxy(path: str, proxy: str) -> list[str]:
    """cvmfs resolves names itself (c-ares), past proxychains: proxies must be numeric."""
    if proxy in ("DIRECT", "auto"):
        return []
    reference = _FORWARD_REF.fullmatch(proxy)
    if reference:
        if _FORWARD_NAME.fullmatch(reference.group(1)):
            return []
        return [
            f"{path}: got {proxy!r}; expected forward:NAME with the name of a "
            "tunnel.forwards entry"
        ]
    match = re.fullmatch(r"http://([^/:]+):(\d+)/?", proxy)
    if not match:
        return [
            f"{path}: got {proxy!r}; expected http://ADDRESS:PORT or DIRECT, "
            "separated by ';' or '|'"
        ]
    try:
        ipaddress.ip_address(match.group(1))
    except ValueError:
        return [
            f"{path}: got {proxy!r}; use a numeric address: cvmfs resolves host "
            "names itself, outside the chain, and fails on a restricted worker"
        ]
    return _check_port(path, int(match.group(2)))


@dataclass(frozen=True)
class Container:
    """The container the payload runs in, or none."""

    runtime: Literal["none", "apptainer", "singularity"] = "none"
    image: Optional[str] = None
    binds: tuple[str, ...] = ()
    gpu: bool = False
    contain: bool = False

    def check(self, path: str) -> list[str]:
        problems = []
        if self.runtime != "none" and not self.image:
            problems.append(
                f"{path}.image: missing for runtime {self.runtime!r}; set the "
                "image path or URI, or runtime: none"
            )
        for index, bind in enumerate(self.binds):
            if not re.fullmatch(r"[^:,\s]+(:[^:,\s]+(:(ro|rw))?)?", bind):
                problems.append(
                    f"{path}.binds[{index}]: got {bind!r}; expected SRC[:DST[:ro|rw]]"
                )
        return problems


@dataclass(frozen=True)
class Pool:
    """Where the payload registers: the collector and the schedds it must reach."""

    collector: str = ""
    schedds: tuple[str, ...] = ()
    ccb: bool = True

    def check(self, path: str) -> list[str]:
        problems = []
        named = [("collector", self.collector)] if self.collector else []
        for key, endpoint in named + [
            (f"schedds[{i}]", s) for i, s in enumerate(self.schedds)
        ]:
            problems += _check_endpoint(f"{path}.{key}", endpoint)
        return problems

    @property
    def endpoints(self) -> tuple[tuple[str, int], ...]:
        """(host, port) of every pool service the drone must reach."""
        return tuple(_split_endpoint(e) for e in (self.collector, *self.schedds) if e)


def _split_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    if not host:
        return endpoint, 9618
    return host, int(port)


def _check_endpoint(path: str, endpoint: str) -> list[str]:
    if not endpoint:
        return [f"{path}: required; expected HOST:PORT of the pool's collector"]
    host, port = endpoint.rpartition(":")[0], endpoint.rpartition(":")[2]
    if not host:
        host, port = endpoint, "9618"
    if not port.isdigit():
        return [f"{path}: got {endpoint!r}; expected HOST or HOST:PORT"]
    return _check_host(path, host) + _check_port(path, int(port))


@dataclass(frozen=True)
class Payload:
    """The unmodified payload: a glidein startup or condor_master."""

    command: Union[str, tuple[str, ...]] = "condor_master -f"
    environment: dict[str, str] = field(default_factory=dict)

    def check(self, path: str) -> list[str]:
        problems = []
        if not self.argv:
            problems.append(f"{path}.command: empty; give the payload's command")
        for name in self.environment:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                problems.append(
                    f"{path}.environment.{name}: not a valid environment variable name"
                )
        return problems

    @property
    def argv(self) -> tuple[str, ...]:
        if isinstance(self.command, str):
            return tuple(shlex.split(self.command))
        return tuple(self.command)


@dataclass(frozen=True)
class Monitoring:
    """The drone-side watchdog and the adapter's verdicts; unset values are derived."""

    enabled: bool = True
    heartbeat_interval: Optional[int] = None
    grace: Optional[int] = None
    connect_deadline: Optional[int] = None
    heartbeat_dir: str = "~/.tardis-netadapter/heartbeats"
    #: serve Prometheus metrics of the verdicts on 127.0.0.1:PORT (unset: off)
    metrics_port: Optional[int] = None

    def check(self, path: str) -> list[str]:
        problems = []
        for key in ("heartbeat_interval", "grace", "connect_deadline"):
            problems += _check_positive(f"{path}.{key}", getattr(self, key), "seconds")
        if self.metrics_port is not None:
            problems += _check_port(f"{path}.metrics_port", self.metrics_port)
        problems += _check_path(
            f"{path}.heartbeat_dir",
            self.heartbeat_dir,
            "a directory of its own on the shared filesystem (find and rm run on it)",
        )
        return problems


@dataclass(frozen=True)
class NetworkProfile:
    """Everything the drone script needs to reach the pool from this site."""

    mode: Literal["socks", "direct"] = "socks"
    firewall: Firewall = field(default_factory=Firewall)
    tunnel: Tunnel = field(default_factory=Tunnel)
    chain: Chain = field(default_factory=Chain)
    keepalive: Keepalive = field(default_factory=Keepalive)
    cvmfs: Cvmfs = field(default_factory=Cvmfs)
    container: Container = field(default_factory=Container)
    pool: Pool = field(default_factory=Pool)
    payload: Payload = field(default_factory=Payload)
    monitoring: Monitoring = field(default_factory=Monitoring)

    def check(self, path: str) -> list[str]:
        problems = []
        if self.mode == "socks" and not self.tunnel.hops:
            problems.append(
                f"{path}.tunnel.hops: empty with mode 'socks'; list at least the "
                "login node (host, port, user), or use mode: direct"
            )
        if self.cvmfs.mode == "singcvmfs" and self.container.runtime == "none":
            problems.append(
                f"{path}.cvmfs.mode: got 'singcvmfs' with container.runtime 'none'; "
                "singcvmfs mounts CVMFS inside a container: set container.runtime "
                "and container.image, or choose another cvmfs.mode"
            )
        problems += self.cvmfs.check_forwards(
            f"{path}.cvmfs", self.tunnel, socks=self.mode == "socks"
        )
        if self.mode == "direct" and self.chain.tool != "none":
            problems.append(
                f"{path}.chain.tool: got {self.chain.tool!r} with mode 'direct'; "
                "a direct site has no tunnel to chain into: set chain.tool: none"
            )
        return problems


def load_profile(data: Any, path: str = "Network") -> NetworkProfile:
    """Validate a ``Network`` section; raise ConfigurationError naming every bad key.

    The keepalive budget is checked here too, so an impossible combination of
    explicit settings stops the daemon at start, not a drone at 3 a.m. It is
    checked even when other keys are wrong (all errors at once), leaving out
    what it would say about a section that could not be read as written.
    """
    profile, problems, tainted = load_partial(NetworkProfile, _plain(data), path)
    if profile is not None:
        try:
            derive_budget(profile, path=path)
        except ConfigurationError as error:
            problems += untainted(error.problems, path, set(tainted))
    if problems or profile is None:
        raise ConfigurationError(problems or [f"{path}: invalid"])
    return profile


def _plain(data: Any) -> Any:
    """Turn TARDIS AttributeDicts (and tuples) into plain dicts and lists."""
    if isinstance(data, dict) or hasattr(data, "items"):
        return {key: _plain(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_plain(item) for item in data]
    return data
