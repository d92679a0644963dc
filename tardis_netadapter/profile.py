"""The common part of the ``Network`` profile: the sections every network mode has.

A site's ``Network`` section is this common profile plus the sections of its
network mode (tardis_netadapter/modes/: ``socks`` adds ``tunnel`` and
``chain``). Each section is a frozen dataclass the schema validator builds
(schema.py); its ``check()`` names the key path, the bad value and the fix.
This module imports nothing of the modes, so the modes can build on it;
loading a whole profile (common + mode) is config.load_profile.
docs/configuration.md documents every key; keep the two in step.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from .paths import path_problem

__all__ = [
    "Container",
    "Cvmfs",
    "Firewall",
    "Keepalive",
    "Monitoring",
    "Namespace",
    "NetworkProfile",
    "Payload",
    "Pool",
    "check_host",
    "check_path",
    "check_port",
    "check_positive",
    "proxy_elements",
]

_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.\-]*[A-Za-z0-9])?")
_KNOB = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_REPO = re.compile(r"[a-z0-9][a-z0-9.\-]*")


#: an IPv6 zone (``fe80::1%eth0``): ipaddress accepts any text after the ``%``
_ZONE = re.compile(r"[A-Za-z0-9_.\-]+")


def check_host(path: str, host: str) -> list[str]:
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


def check_port(path: str, port: int) -> list[str]:
    if 1 <= port <= 65535:
        return []
    return [f"{path}: got {port!r}; expected a TCP port between 1 and 65535"]


def check_bind_address(path: str, address: str) -> list[str]:
    """An address a local server can bind: an IP literal, never a name.

    A name would be resolved at bind time and might bind somewhere unexpected
    (or fail only once the daemon runs); the exporter binds exactly this.
    """
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return [
            f"{path}: got {address!r}; expected an IP address of this host to "
            "bind: 127.0.0.1 (the default, local scrapes only), one of the "
            "host's addresses, or 0.0.0.0 / :: for all"
        ]
    return []


def check_path(path: str, value: str, what: str) -> list[str]:
    """A configured path that reaches shell commands: plain, absolute or ``~/``."""
    problem = path_problem(value)
    if problem is None:
        return []
    return [f"{path}: got {value!r}; {what}: {problem}"]


def check_positive(path: str, value: Optional[float], what: str) -> list[str]:
    if value is None or value > 0:
        return []
    return [f"{path}: got {value!r}; expected {what} greater than 0"]


@dataclass(frozen=True)
class Keepalive:
    """Keepalive settings; unset values are derived from the firewall idle timeout."""

    enabled: bool = True
    server_alive_interval: Optional[int] = None
    server_alive_count_max: int = 3
    condor_knobs: dict[str, int] = field(default_factory=dict)

    def check(self, path: str) -> list[str]:
        problems = check_positive(
            f"{path}.server_alive_interval", self.server_alive_interval, "seconds"
        )
        problems += check_positive(
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
        return check_positive(
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
        problems = check_path(
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

    def forward_references(self) -> list[tuple[str, str]]:
        """(proxy, NAME) for every ``forward:NAME`` in http_proxy: a mode with
        forwards resolves them, any other mode refuses them."""
        found = []
        for proxy in proxy_elements(self.http_proxy):
            reference = FORWARD_REF.fullmatch(proxy)
            if reference:
                found.append((proxy, reference.group(1)))
        return found


#: the NAME of a forward (modes with forwards): part of an environment variable
FORWARD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
#: ``forward:NAME`` in cvmfs.http_proxy: the tunnel's forward of that name
FORWARD_REF = re.compile(r"forward:(.*)", re.DOTALL)


def proxy_elements(http_proxy: str) -> list[str]:
    """The proxies of a CVMFS_HTTP_PROXY value, without the ';' and '|' between."""
    return re.split(r"[;|]", http_proxy)


def _check_numeric_proxy(path: str, proxy: str) -> list[str]:
    """cvmfs resolves names itself (c-ares), past proxychains: proxies must be numeric."""
    if proxy in ("DIRECT", "auto"):
        return []
    reference = FORWARD_REF.fullmatch(proxy)
    if reference:
        if FORWARD_NAME.fullmatch(reference.group(1)):
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
    return check_port(path, int(match.group(2)))


@dataclass(frozen=True)
class Container:
    """The container the payload runs in, or none."""

    runtime: Literal["none", "apptainer", "singularity"] = "none"
    image: Optional[str] = None
    binds: tuple[str, ...] = ()
    #: ``nvidia`` renders ``--nv``, ``amd`` ``--rocm``; the old booleans still
    #: mean nvidia (true) and none (false), so existing profiles keep working
    gpu: Union[bool, Literal["nvidia", "amd", "none"]] = "none"
    contain: bool = False
    #: the site-local apptainer (an absolute path, as at the ALICE EPNs where
    #: the setuid installation that may configure networks is not the one on
    #: PATH); empty: ``runtime`` found on PATH
    apptainer: str = ""

    @property
    def gpu_kind(self) -> str:
        """The GPU vendor the container gets: ``nvidia``, ``amd`` or ``none``."""
        if self.gpu is True:
            return "nvidia"
        if self.gpu is False:
            return "none"
        return self.gpu

    def check(self, path: str) -> list[str]:
        problems = []
        if self.apptainer:
            if not self.apptainer.startswith("/"):
                problems.append(
                    f"{path}.apptainer: got {self.apptainer!r}; expected the "
                    "absolute path of the site's apptainer (e.g. "
                    "/opt/apptainer/bin/apptainer), or leave it empty to use "
                    "runtime from PATH"
                )
            else:
                problems += check_path(
                    f"{path}.apptainer", self.apptainer, "the site's apptainer"
                )
            if self.runtime == "none":
                problems.append(
                    f"{path}.apptainer: set to {self.apptainer!r} with runtime "
                    "'none'; set runtime: apptainer (or singularity), or remove "
                    "apptainer"
                )
        if self.gpu_kind != "none" and self.runtime == "none":
            problems.append(
                f"{path}.gpu: got {self.gpu!r} with runtime 'none'; the GPU "
                "options (--nv, --rocm) are the container's: set runtime and "
                "image, or gpu: none"
            )
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
    return check_host(path, host) + check_port(path, int(port))


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
    #: serve Prometheus metrics of the verdicts on metrics_address:PORT (unset: off)
    metrics_port: Optional[int] = None
    #: the address the exporter binds: loopback unless exposed on purpose (as
    #: TARDIS's own Prometheus plugin's ``addr``; 0.0.0.0 or :: for every address)
    metrics_address: str = "127.0.0.1"

    def check(self, path: str) -> list[str]:
        problems = []
        for key in ("heartbeat_interval", "grace", "connect_deadline"):
            problems += check_positive(f"{path}.{key}", getattr(self, key), "seconds")
        if self.metrics_port is not None:
            problems += check_port(f"{path}.metrics_port", self.metrics_port)
        problems += check_bind_address(f"{path}.metrics_address", self.metrics_address)
        problems += check_path(
            f"{path}.heartbeat_dir",
            self.heartbeat_dir,
            "a directory of its own on the shared filesystem (find and rm run on it)",
        )
        return problems


#: MTU bounds of the namespace's outer link (IPv6 minimum .. pasta's maximum)
NAMESPACE_MTU = (1280, 65520)


@dataclass(frozen=True)
class Namespace:
    """The private user + network namespace a drone may run in (mode part netns).

    Common, because every mode that captures with a namespace (socks'
    ``chain.capture: namespace``, later vpn) reads it; a mode that does not
    use a namespace ignores it. ``outer`` is the one link out of the
    namespace (slirp4netns, else pasta); ``cidr`` is slirp4netns' own
    network (pasta copies the worker's address), ``ready_timeout`` how long
    the outer link may take to come up (s).
    """

    outer: Literal["auto", "pasta", "slirp4netns"] = "auto"
    mtu: int = 65520
    cidr: str = "100.64.99.0/24"
    ready_timeout: float = 5.0

    def check(self, path: str) -> list[str]:
        problems = []
        low, high = NAMESPACE_MTU
        if not low <= self.mtu <= high:
            problems.append(
                f"{path}.mtu: got {self.mtu!r}; expected a whole number from "
                f"{low} to {high} (65520, the default, is fastest through pasta)"
            )
        network = self.network
        if network is None:
            problems.append(
                f"{path}.cidr: got {self.cidr!r}; expected an IPv4 network such "
                "as 100.64.99.0/24 (slirp4netns' network inside the namespace)"
            )
        elif network.prefixlen > 30:
            problems.append(
                f"{path}.cidr: got {self.cidr!r}; the network needs room for the "
                "namespace, its gateway and a resolver address: use /30 or "
                "larger, e.g. 100.64.99.0/24"
            )
        return problems + check_positive(
            f"{path}.ready_timeout", self.ready_timeout, "a time in seconds"
        )

    @property
    def network(self) -> Optional[ipaddress.IPv4Network]:
        """``cidr`` as a network, or None when it is not an IPv4 network."""
        try:
            network = ipaddress.ip_network(self.cidr, strict=False)
        except ValueError:
            return None
        return network if isinstance(network, ipaddress.IPv4Network) else None


@dataclass(frozen=True)
class NetworkProfile:
    """The sections every site has, whatever its network mode.

    A mode's profile is a subclass adding the mode's own sections (see
    tardis_netadapter/modes/); ``mode`` names it and is checked against the
    registered modes by config.load_profile.
    """

    mode: str = "socks"
    firewall: Firewall = field(default_factory=Firewall)
    keepalive: Keepalive = field(default_factory=Keepalive)
    cvmfs: Cvmfs = field(default_factory=Cvmfs)
    container: Container = field(default_factory=Container)
    pool: Pool = field(default_factory=Pool)
    payload: Payload = field(default_factory=Payload)
    monitoring: Monitoring = field(default_factory=Monitoring)
    #: whether a mode that can isolate the drone's network must (``required``)
    #: or falls back to an unisolated way and says so (``preferred``)
    isolation: Literal["preferred", "required"] = "preferred"
    namespace: Namespace = field(default_factory=Namespace)

    def check(self, path: str) -> list[str]:
        """Rules across the common sections; a mode's profile adds its own."""
        problems = []
        if self.cvmfs.mode == "singcvmfs" and self.container.runtime == "none":
            problems.append(
                f"{path}.cvmfs.mode: got 'singcvmfs' with container.runtime 'none'; "
                "singcvmfs mounts CVMFS inside a container: set container.runtime "
                "and container.image, or choose another cvmfs.mode"
            )
        return problems
