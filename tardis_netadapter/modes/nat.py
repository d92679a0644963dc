"""Network mode ``nat``: the site routes the drone users' traffic through its NAT.

GSI's way (seed 001, issue 14): on every worker the packets of the drone users
are marked (nftables, owner match) and policy-routed through their own table
to a virtual gateway held by two or three NAT routers (keepalived), which SNAT
them to one public address. The site sets that up (``tardis-netadapter
site-nat`` renders it from the same ``Network.nat`` section; docs/site-nat.md);
the drone adds nothing to the path (no tunnel, no LD_PRELOAD) and only checks,
as the drone user, at start and in every heartbeat round, that its traffic
takes the NAT path: stage ``route`` (drone_scripts/lib/route.sh). A site whose
routing broke (a worker's link flapped and nobody re-applied the rules) shows
``route`` as the failing stage, with what is wrong, and the adapter's verdict
follows it like any stage's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..profile import NetworkProfile
from ..sitenat.config import NatSection
from ..templates import template_dir
from .base import Mode, SettingsGroup, Stage
from .checkpath import check_endpoint, path_problems

if TYPE_CHECKING:
    from ..keepalive import KeepaliveBudget

__all__ = ["CHECK_TIMEOUT_S", "READY_TIMEOUT_MS", "NatMode", "NatProfile", "target"]

#: how long stage route waits for the route before it reports it failed (ms):
#: the site's route keeper repairs within seconds (keeper.interval)
READY_TIMEOUT_MS = 15_000
#: each connect of the check (the target, the address echo), as the watchdog's
#: own probes (TNA_PROBE_TIMEOUT)
CHECK_TIMEOUT_S = 5
#: the here-document end of ``check --probe``'s job script
PROBE_EOF = "TNA_ROUTE_EOF"


@dataclass(frozen=True)
class NatProfile(NetworkProfile):
    """The ``Network`` profile of a site-NAT site: the common sections and ``nat``."""

    nat: NatSection = field(default_factory=NatSection)

    def check(self, path: str) -> list[str]:
        problems = super().check(path)
        problems += path_problems(
            self,
            path,
            "nat",
            "nat",
            self.nat.check_target,
            " (reached through the NAT, or on the site)",
            "the drone's route check needs HOST:PORT to connect to through the NAT",
        )
        return problems


def target(profile: NatProfile) -> tuple[str, int]:
    """What the route check connects to: ``nat.check_target``, else the
    pool's collector."""
    return check_endpoint(profile, profile.nat.check_target)


def route_settings(profile: NatProfile) -> SettingsGroup:
    """The values lib/route.sh reads (the drone script's and the probe job's)."""
    nat = profile.nat
    host, port = target(profile)
    return SettingsGroup(
        "nat: the site's NAT path the drone checks (lib/route.sh); the site "
        "applies it (tardis-netadapter site-nat)",
        (
            ("NAT_GATEWAY", nat.gateway),
            ("NAT_PUBLIC_ADDRESS", nat.public_address),
            ("NAT_MARK", nat.mark_value),
            ("NAT_TABLE", nat.table),
            ("NAT_TABLE_NAME", nat.table_name),
            ("NAT_USERS", [str(user) for user in nat.users]),
            ("NAT_GROUPS", [str(group) for group in nat.groups]),
            ("NAT_CHECK_HOST", host),
            ("NAT_CHECK_PORT", port),
            ("NAT_ADDRESS_ECHO", nat.address_echo),
            ("NAT_CHECK_TIMEOUT_S", CHECK_TIMEOUT_S),
            ("NAT_READY_TIMEOUT_MS", READY_TIMEOUT_MS),
        ),
    )


def nat_route(profile: NatProfile) -> str:
    """Human wording of the path for log lines and the keepalive budget."""
    nat = profile.nat
    return f"fwmark {nat.mark_hex} -> table {nat.table_name} -> {nat.gateway}"


class NatMode(Mode):
    """The site's NAT carries the drone users' traffic; the drone checks it."""

    name = "nat"
    summary = (
        "the site marks and routes the drone users' traffic through its NAT "
        "routers; the drone checks the route (no tunnel, no LD_PRELOAD)"
    )
    profile_class = NatProfile
    stages = (
        Stage("tunnel", phase="network", skipped="network mode nat"),
        Stage("route", "nat_route_stage", phase="network"),
        Stage("chain", phase="path", skipped="network mode nat"),
    )

    # -- the keepalive budget ----------------------------------------------------

    def legs(
        self, profile: NetworkProfile, budget: KeepaliveBudget
    ) -> list[tuple[str, str]]:
        # the NAT routers keep a conntrack entry per flow, dropped after the
        # site's firewall.idle_timeout of silence: the pool connection is kept
        # alive as mode direct's is, by HTCondor's own CCB heartbeat
        assert isinstance(profile, NatProfile)
        nat = profile.nat
        timeout = profile.firewall.idle_timeout
        limit = f"; conntrack idle timeout {timeout}s" if timeout else ""
        return [
            (
                f"worker -> NAT {nat.gateway} -> pool as {nat.public_address} "
                f"(CCB{limit})",
                budget.knob_text("CCB_HEARTBEAT_INTERVAL"),
            )
        ]

    # -- the drone script --------------------------------------------------------

    def libraries(self, profile: NetworkProfile) -> list[Path]:
        return [template_dir() / "lib" / "route.sh"]

    def settings(
        self, profile: NetworkProfile, budget: KeepaliveBudget
    ) -> list[SettingsGroup]:
        assert isinstance(profile, NatProfile)
        return [route_settings(profile)]

    # -- tardis-netadapter check -------------------------------------------------

    def warnings(self, profile: NetworkProfile) -> list[tuple[str, str]]:
        assert isinstance(profile, NatProfile)
        found = []
        if not profile.nat.address_echo:
            found.append(
                (
                    "nat.address_echo is empty: the drone checks the route to "
                    f"{profile.nat.gateway} but cannot see that the pool sees "
                    f"{profile.nat.public_address} (a router that forwards "
                    "without its SNAT passes the check)",
                    "run a service beyond the NAT that answers with the caller's "
                    "address and set nat.address_echo: http://HOST:PORT/",
                )
            )
        host, port = target(profile)
        try:
            address: Optional[ipaddress.IPv4Address] = ipaddress.IPv4Address(host)
        except ValueError:
            address = None
        if address is not None and any(address in n for n in profile.nat.networks):
            found.append(
                (
                    f"the route check's target {host}:{port} is in nat.site_subnets: "
                    "traffic to it stays on the main table and is never marked, so "
                    "the check cannot see the NAT path",
                    "set nat.check_target to a HOST:PORT beyond the NAT (the pool's "
                    "collector, outside the site)",
                )
            )
        if profile.isolation == "required":
            found.append(
                (
                    "isolation: required with mode nat: a nat drone has no tunnel "
                    "to isolate; the site's own rules mark the drone users' "
                    "traffic (ignored)",
                    "remove isolation",
                )
            )
        return found

    def probe_lines(self, profile: NetworkProfile) -> list[str]:
        # the login node is no worker: what it can show is that the workers'
        # tools exist there too; the route itself is checked by the probe job
        return [
            'p=$(PATH="$PATH:/usr/sbin:/sbin" command -v ip 2>/dev/null)',
            'if [ -n "$p" ]; then mark cmd:ip ok "$p"; '
            "else mark cmd:ip fail missing; fi",
            "have timeout",
            "have bash",
        ]

    def probe_job_lines(self, profile: NetworkProfile) -> list[str]:
        """The drone's own route check (lib/route.sh, its settings as the
        drone script renders them), run by bash inside a short job on a
        worker; every check becomes one ``mark route:NAME ...`` line."""
        from ..render import _setting_line

        assert isinstance(profile, NatProfile)
        library = (template_dir() / "lib" / "route.sh").read_text(encoding="utf-8")
        group = route_settings(profile)
        body = [_setting_line(name, value) for name, value in group.settings]
        body += library.splitlines()
        body.append("nat_route_probe")
        if PROBE_EOF in body:
            raise ValueError(f"lib/route.sh contains the here-document end {PROBE_EOF}")
        return [
            'mark job-host ok "$(hostname) as $(id -un)"',
            'PATH="$PATH:/usr/sbin:/sbin"; export PATH',
            "if ! command -v bash >/dev/null 2>&1; then mark cmd:bash fail missing; "
            "else",
            f"bash -s <<'{PROBE_EOF}' | while read -r n s d; do mark "
            '"$n" "$s" "$d"; done',
            *body,
            PROBE_EOF,
            "fi",
        ]

    def probe_fix(self, name: str) -> Optional[str]:
        return _PROBE_FIXES.get(name)


_PROBE_FIXES = {
    "cmd:ip": "install iproute2 on the workers (the route check runs ip rule and "
    "ip route get)",
    "cmd:bash": "install bash on the workers (the drone script needs bash >= 4.4)",
    "route:user": "add the drone user to Network.nat.users (or its group to "
    "nat.groups), re-render with tardis-netadapter site-nat and re-apply "
    "tna-nat-routing on the workers",
    "route:rule": "apply the workers' routing: tna-nat-routing apply (systemctl "
    "start tna-nat-routing; docs/site-nat.md), and run its route keeper",
    "route:via": "the marked table must route to Network.nat.gateway: re-apply "
    "tna-nat-routing on the worker; check that the gateway is in site_subnets",
    "route:connect": "the NAT routers must forward to the check target: check "
    "keepalived (which router holds the gateway), the routers' nft rules, and "
    "that the worker's main table has a route to the target (connect() needs it "
    "before the packet is marked)",
    "route:address": "the pool must see Network.nat.public_address: check the "
    "routers' SNAT (tna-nat-router.nft) and nat.address_echo",
}

MODE = NatMode()
