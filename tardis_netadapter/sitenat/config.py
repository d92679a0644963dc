"""The ``Network.nat`` section: one description of a site's NAT path (mode ``nat``).

GSI's way (seed 001): on each worker the drone users' packets are marked by an
owner match and policy-routed to a virtual gateway address held by one of two
or three NAT routers (keepalived, VRRP). The same section feeds both sides: the
drone's route check (modes/nat.py reads ``gateway``, ``mark``, ``table``,
``public_address``, ``address_echo``, ``check_target``) and the files
``tardis-netadapter site-nat`` renders for the workers and the routers
(sitenat/render.py). Every value that reaches a rendered bash script, nft
ruleset or daemon configuration is checked here with a full match, so the
renderers can place it without further escaping.

Like every profile section (profile.py, modes/vpn.py) these are frozen
dataclasses the schema validator builds (schema.py); ``check(path)`` names the
key path, the bad value and the fix. docs/configuration.md (the ``nat``
section) and docs/site-nat.md document the keys; keep them in step.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from ..schema import load_partial

__all__ = [
    "MARK_MAX",
    "PROTOCOLS",
    "Keeper",
    "NatSection",
    "Router",
    "Vrrp",
    "parse_mark",
    "split_target",
]

#: the largest fwmark (the mark is 32 bits; 0 means "no mark")
MARK_MAX = 2**32 - 1
#: what the worker's ruleset may mark (nft ``meta l4proto``)
PROTOCOLS = ("tcp", "udp", "icmp")
#: routing tables 253 (default), 254 (main), 255 (local) and 0 (unspec) are the
#: kernel's own
_TABLE_RANGES = ((1, 252), (256, 2**31))

_TABLE_NAME = re.compile(r"[a-z][a-z0-9_]{0,30}")
_ROUTER_NAME = re.compile(r"[a-z][a-z0-9-]{0,30}")
#: a user or group name as nft resolves it (getpwnam/getgrnam at load time):
#: no quotes, spaces or '$', not starting with '-' or a digit
_ACCOUNT = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
#: a network interface name (IFNAMSIZ 16 incl. NUL; no '/', ':' or spaces)
_INTERFACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}")
_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")
_HEX_MARK = re.compile(r"0[xX][0-9A-Fa-f]{1,8}")
_ECHO_URL = re.compile(
    r"http://([A-Za-z0-9.-]+)(?::([0-9]{1,5}))?(/[A-Za-z0-9._~/-]*)?"
)


def parse_mark(value: Union[int, str]) -> Optional[int]:
    """The fwmark as a number (``1`` or ``"0x1"``); None when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 1 <= value <= MARK_MAX else None
    if _HEX_MARK.fullmatch(value):
        number = int(value, 16)
        return number if number >= 1 else None
    if value.isdigit() and value.isascii():
        number = int(value)
        return number if 1 <= number <= MARK_MAX else None
    return None


def split_target(target: str) -> Optional[tuple[str, int]]:
    """``HOST:PORT`` as (host, port) when HOST is an IPv4 address or a host
    name and PORT a TCP port; None otherwise. Bash's /dev/tcp takes both."""
    host, colon, port = target.rpartition(":")
    if not colon or not port.isdigit() or not port.isascii():
        return None
    if not 1 <= int(port) <= 65535:
        return None
    if _ipv4(host) is None and not _HOST_NAME.fullmatch(host):
        return None
    return host, int(port)


def _ipv4(value: str) -> Optional[ipaddress.IPv4Address]:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        return None


def _check_ipv4(path: str, value: str, what: str, example: str) -> list[str]:
    if not value:
        return [f"{path}: missing; give {what} (an IPv4 address such as {example})"]
    if _ipv4(value) is None:
        return [
            f"{path}: got {value!r}; expected {what} as an IPv4 address such as "
            f"{example} (the NAT path is IPv4 only)"
        ]
    return []


def _check_int(path: str, value: int, low: int, high: int, what: str) -> list[str]:
    if isinstance(value, bool) or not low <= value <= high:
        return [f"{path}: got {value!r}; expected {what}, a whole number {low}..{high}"]
    return []


def _check_target(path: str, value: str, what: str) -> list[str]:
    if split_target(value) is None:
        return [
            f"{path}: got {value!r}; expected {what} as HOST:PORT (an IPv4 address "
            "or a host name, and a TCP port 1..65535), e.g. 10.66.2.1:9618"
        ]
    return []


@dataclass(frozen=True)
class Keeper:
    """The workers' route keeper (``tna-nat-routing keep``): besides reacting
    to netlink events it re-checks everything every ``interval`` seconds, in
    case an event was missed (the monitor restarted, a rule deleted by hand)."""

    interval: float = 2.0

    def check(self, path: str) -> list[str]:
        if isinstance(self.interval, bool) or not 0.1 <= self.interval <= 3600:
            return [
                f"{path}.interval: got {self.interval!r}; expected the full "
                "re-check period in seconds, 0.1..3600 (e.g. 2)"
            ]
        return []


@dataclass(frozen=True)
class Vrrp:
    """The routers' keepalived VRRP instance and its health check.

    ``health_target`` is a HOST:PORT reached through the public side; a router
    that cannot connect to it ``fall`` times in a row gives up mastership (VRRP
    state FAULT) until it succeeds ``rise`` times.
    """

    router_id: int = 51
    advert_interval: int = 1
    health_target: str = ""
    health_interval: int = 1
    fall: int = 2
    rise: int = 2

    def check(self, path: str) -> list[str]:
        problems = _check_int(
            f"{path}.router_id",
            self.router_id,
            1,
            255,
            "the VRRP virtual_router_id, unique on the site network",
        )
        problems += _check_int(
            f"{path}.advert_interval",
            self.advert_interval,
            1,
            255,
            "the VRRP advertisement interval in seconds (failover takes about 3-4 of them)",
        )
        problems += _check_int(
            f"{path}.health_interval",
            self.health_interval,
            1,
            3600,
            "the health check's period in seconds",
        )
        for key in ("fall", "rise"):
            problems += _check_int(
                f"{path}.{key}",
                getattr(self, key),
                1,
                100,
                "how many checks in a row change the health state",
            )
        if self.health_target:
            problems += _check_target(
                f"{path}.health_target",
                self.health_target,
                "a service beyond the public side (the pool's collector)",
            )
        return problems


@dataclass(frozen=True)
class Router:
    """One NAT router: its interfaces, its own site address and VRRP priority."""

    name: str = ""
    site_interface: str = ""
    site_address: str = ""
    public_interface: str = ""
    priority: int = 100

    def check(self, path: str) -> list[str]:
        problems = []
        if not _ROUTER_NAME.fullmatch(self.name):
            problems.append(
                f"{path}.name: got {self.name!r}; expected the router's name: a "
                "lower-case letter, then letters, digits or '-' (e.g. nat1), at "
                "most 31 characters"
            )
        for key in ("site_interface", "public_interface"):
            value = getattr(self, key)
            if not _INTERFACE.fullmatch(value):
                problems.append(
                    f"{path}.{key}: got {value!r}; expected a network interface "
                    "name on this router (e.g. eth0, at most 15 characters, no "
                    "'/', ':' or spaces)"
                )
        if self.site_interface and self.site_interface == self.public_interface:
            problems.append(
                f"{path}.public_interface: got {self.public_interface!r}, the same "
                "as site_interface; a NAT router routes between two interfaces: "
                "name the public one"
            )
        problems += _check_ipv4(
            f"{path}.site_address",
            self.site_address,
            "the router's own address on the site network (VRRP and conntrackd talk over it)",
            "10.66.1.251",
        )
        problems += _check_int(
            f"{path}.priority",
            self.priority,
            1,
            254,
            "the VRRP priority (the highest healthy router holds the addresses)",
        )
        return problems


@dataclass(frozen=True)
class NatSection:
    """The ``Network.nat`` section: the drone-facing keys and the site's NAT.

    ``gateway`` is the site-side virtual address the workers' marked table
    routes to; ``public_address`` the public virtual address the routers SNAT
    to, which the pool sees. ``routers`` may be empty when the site runs its
    own NAT routers (then ``site-nat`` renders the workers' files only).
    """

    gateway: str = ""
    public_address: str = ""
    mark: Union[int, str] = 1
    table: int = 201
    table_name: str = "tna_nat"
    users: tuple[Union[int, str], ...] = ()
    groups: tuple[Union[int, str], ...] = ()
    protocols: tuple[Literal["tcp", "udp", "icmp"], ...] = ("tcp", "udp")
    site_subnets: tuple[str, ...] = ()
    address_echo: str = ""
    check_target: str = ""
    keeper: Keeper = field(default_factory=Keeper)
    vrrp: Vrrp = field(default_factory=Vrrp)
    conntrack_sync: bool = True
    routers: tuple[Router, ...] = ()

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], path: str = "Network.nat"
    ) -> tuple[Optional[NatSection], list[str]]:
        """Validate a mapping as the section without raising: (section or None,
        every problem). The section is built even with problems (defaults stand
        in for what could not be read); use it only when the list is empty."""
        section, problems, _ = load_partial(cls, data, path)
        return section, problems

    @property
    def mark_value(self) -> int:
        """The fwmark as a number (valid sections only)."""
        number = parse_mark(self.mark)
        if number is None:
            raise ValueError(f"invalid mark {self.mark!r}")
        return number

    @property
    def mark_hex(self) -> str:
        """The fwmark as ``ip rule`` prints it (``0x1``)."""
        return hex(self.mark_value)

    @property
    def gateway_network(self) -> Optional[ipaddress.IPv4Network]:
        """The site subnet holding the gateway (its prefix length is the VIP's)."""
        gateway = _ipv4(self.gateway)
        for net in self.networks:
            if gateway is not None and gateway in net:
                return net
        return None

    @property
    def networks(self) -> tuple[ipaddress.IPv4Network, ...]:
        """``site_subnets`` as networks (the valid ones)."""
        found = []
        for text in self.site_subnets:
            try:
                found.append(ipaddress.IPv4Network(text, strict=False))
            except ValueError:
                continue
        return tuple(found)

    def router(self, name: str) -> Router:
        """The router called ``name``; KeyError naming the configured ones."""
        for router in self.routers:
            if router.name == name:
                return router
        known = ", ".join(r.name for r in self.routers) or "none"
        raise KeyError(f"no router {name!r} in nat.routers (configured: {known})")

    def peers(self, name: str) -> tuple[Router, ...]:
        """The other routers of the group, in configuration order."""
        return tuple(r for r in self.routers if r.name != name)

    def check(self, path: str) -> list[str]:
        problems = _check_ipv4(
            f"{path}.gateway",
            self.gateway,
            "the virtual address on the site network the workers route the drone's "
            "traffic to",
            "10.66.1.250",
        )
        problems += _check_ipv4(
            f"{path}.public_address",
            self.public_address,
            "the NAT's public (virtual) address, the one the pool sees",
            "10.66.2.100",
        )
        if parse_mark(self.mark) is None:
            problems.append(
                f"{path}.mark: got {self.mark!r}; expected the fwmark as a whole "
                f'number 1..{MARK_MAX} or a hex string such as "0x1"'
            )
        if isinstance(self.table, bool) or not any(
            low <= self.table <= high for low, high in _TABLE_RANGES
        ):
            problems.append(
                f"{path}.table: got {self.table!r}; expected a routing table number "
                "1..252 or 256..2147483648 (0 and 253-255 are the kernel's own), "
                "e.g. 201"
            )
        if not _TABLE_NAME.fullmatch(self.table_name) or self.table_name in (
            "main",
            "local",
            "default",
            "unspec",
        ):
            problems.append(
                f"{path}.table_name: got {self.table_name!r}; expected the table's "
                "name for rt_tables.d: a lower-case letter, then lower-case letters, "
                "digits or '_' (not main, local, default), e.g. tna_nat"
            )
        problems += self._check_owners(path)
        if not self.protocols:
            problems.append(
                f"{path}.protocols: empty; list what is marked, e.g. [tcp, udp]"
            )
        elif len(set(self.protocols)) != len(self.protocols):
            problems.append(
                f"{path}.protocols: got {list(self.protocols)!r}; list each "
                "protocol once"
            )
        problems += self._check_subnets(path)
        if self.address_echo and not _ECHO_URL.fullmatch(self.address_echo):
            problems.append(
                f"{path}.address_echo: got {self.address_echo!r}; expected an "
                "http://HOST[:PORT]/[PATH] URL of a service answering with the "
                'caller\'s address, or "" for none'
            )
        if self.check_target:
            problems += _check_target(
                f"{path}.check_target",
                self.check_target,
                "the service the drone's route check connects to",
            )
        return problems + self._check_routers(path)

    def _check_owners(self, path: str) -> list[str]:
        problems = []
        for key in ("users", "groups"):
            for index, owner in enumerate(getattr(self, key)):
                if isinstance(owner, int):
                    if isinstance(owner, bool) or not 0 <= owner < 2**32 - 1:
                        problems.append(
                            f"{path}.{key}[{index}]: got {owner!r}; expected a "
                            "numeric id 0..4294967294 or a name"
                        )
                elif not _ACCOUNT.fullmatch(owner):
                    problems.append(
                        f"{path}.{key}[{index}]: got {owner!r}; expected a "
                        f"{key[:-1]} name (letters, digits, '_', '.', '-', not "
                        "starting with '-' or a digit, at most 32) or a numeric id"
                    )
        if not self.users and not self.groups:
            problems.append(
                f"{path}.users: empty, and groups is empty too; list the drone "
                "users (e.g. users: [aliprod]) or their groups whose traffic takes "
                "the NAT path"
            )
        return problems

    def _check_subnets(self, path: str) -> list[str]:
        problems = []
        for index, text in enumerate(self.site_subnets):
            try:
                network = ipaddress.ip_network(text, strict=True)
            except ValueError:
                network = None
            if not isinstance(network, ipaddress.IPv4Network):
                problems.append(
                    f"{path}.site_subnets[{index}]: got {text!r}; expected an IPv4 "
                    "network with its host bits zero, e.g. 10.66.1.0/24"
                )
        if not self.site_subnets:
            problems.append(
                f"{path}.site_subnets: empty; list the site's own networks (the "
                "workers' subnet at least, e.g. [10.66.1.0/24]): they stay on the "
                "main table and the routers forward only from them"
            )
        elif _ipv4(self.gateway) is not None and self.gateway_network is None:
            problems.append(
                f"{path}.gateway: got {self.gateway!r}, which is in none of "
                f"site_subnets {list(self.site_subnets)!r}; the gateway is on the "
                "workers' own network: add that network to site_subnets"
            )
        public = _ipv4(self.public_address)
        if public is not None and any(public in net for net in self.networks):
            problems.append(
                f"{path}.public_address: got {self.public_address!r}, inside "
                "site_subnets; the public address is on the routers' public side, "
                "not the site network"
            )
        return problems

    def _check_routers(self, path: str) -> list[str]:
        if not self.routers:
            return []
        problems = []
        if not 2 <= len(self.routers) <= 3:
            problems.append(
                f"{path}.routers: got {len(self.routers)} router(s); expected two "
                "or three (one VRRP group), or none when the site runs its own NAT"
            )
        for key, what in (
            ("name", "names"),
            ("site_address", "site addresses"),
            ("priority", "priorities"),
        ):
            values = [getattr(r, key) for r in self.routers]
            for index, value in enumerate(values):
                if value in values[:index]:
                    problems.append(
                        f"{path}.routers[{index}].{key}: got {value!r} again; the "
                        f"routers need distinct {what}"
                    )
        for index, router in enumerate(self.routers):
            address = _ipv4(router.site_address)
            if address is None:
                continue
            if str(address) in (self.gateway, self.public_address):
                problems.append(
                    f"{path}.routers[{index}].site_address: got "
                    f"{router.site_address!r}, a virtual address; give the "
                    "router's own fixed address on the site network"
                )
            elif self.networks and not any(address in n for n in self.networks):
                problems.append(
                    f"{path}.routers[{index}].site_address: got "
                    f"{router.site_address!r}, in none of site_subnets; the "
                    "routers' site legs are on the site network"
                )
        if not self.vrrp.health_target:
            problems.append(
                f"{path}.vrrp.health_target: missing; give HOST:PORT of a service "
                "beyond the public side (e.g. the pool's collector, "
                "10.66.2.1:9618): a router that cannot reach it gives up the "
                "addresses"
            )
        return problems
