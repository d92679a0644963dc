"""Network mode ``container-net``: the payload's container gets its own network.

The ALICE EPN way (seed 000, issue 15): the worker host never has the public
address; the site-local setuid apptainer (``container.apptainer``) gives the
payload's container one on an isolated partition, through the site's
apptainer network configuration (``--net --network NAME``, a CNI plugin
such as ib-sriov-cni behind it). The drone adds no tunnel and no
LD_PRELOAD: it puts the network options on the container's command line
(lib/container.sh's generic ``CONTAINER_EXTRA_OPTIONS``), runs one short
probe container first so that a user the site does not allow gets a clear
error in stage ``container-net`` (exit 45) instead of a half-configured
payload container, and checks from inside the container that it reaches the
pool with the container's own address (drone_scripts/lib/container_net.sh).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..profile import NetworkProfile, check_positive
from ..sitenat.config import split_target
from ..templates import template_dir
from .base import Mode, SettingsGroup, Stage
from .checkpath import check_endpoint, path_problems

if TYPE_CHECKING:
    from ..keepalive import KeepaliveBudget

__all__ = ["ContainerNetMode", "ContainerNetProfile", "ContainerNetSection"]

#: each connect of the reporter (the target, the address echo), as the
#: watchdog's own probes
CHECK_TIMEOUT_S = 5
#: the here-document end of ``check --probe``'s job script
PROBE_EOF = "TNA_CNET_EOF"
#: an apptainer network configuration name (its file is NAME.conflist)
NETWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: one ``--network-args`` value as apptainer takes it (``portmap=80/tcp``,
#: ``IP=10.66.9.20``): no spaces, quotes or shell characters
NETWORK_ARG = re.compile(r"[A-Za-z0-9_.:/=,@+-]+")
_ECHO_URL = re.compile(
    r"http://([A-Za-z0-9.-]+)(?::([0-9]{1,5}))?(/[A-Za-z0-9._~/-]*)?"
)


@dataclass(frozen=True)
class ContainerNetSection:
    """``Network.container_net``: the site's container network and the checks."""

    network: str = ""
    network_args: tuple[str, ...] = ()
    subnet: str = ""
    check_target: str = ""
    address_echo: str = ""
    ready_timeout: int = 60

    def check(self, path: str) -> list[str]:
        problems = []
        if not self.network:
            problems.append(
                f"{path}.network: missing; give the name of the site's apptainer "
                "network configuration (its file is <apptainer sysconfdir>/"
                "network/NAME.conflist), e.g. epn-public"
            )
        elif not NETWORK_NAME.fullmatch(self.network):
            problems.append(
                f"{path}.network: got {self.network!r}; expected a network "
                "configuration name of letters, digits, '_', '.', '-' (e.g. "
                "epn-public)"
            )
        for index, arg in enumerate(self.network_args):
            if not NETWORK_ARG.fullmatch(arg):
                problems.append(
                    f"{path}.network_args[{index}]: got {arg!r}; expected one "
                    "apptainer --network-args value without spaces or quotes, "
                    "e.g. portmap=8080:80/tcp"
                )
        if not self.subnet:
            problems.append(
                f"{path}.subnet: missing; give the partition's public IPv4 "
                "network the container's address must be in, e.g. 10.66.9.0/24"
            )
        else:
            try:
                ipaddress.IPv4Network(self.subnet, strict=True)
            except ValueError as error:
                problems.append(
                    f"{path}.subnet: got {self.subnet!r}; expected an IPv4 network "
                    f"as ADDRESS/LENGTH with no host bits, e.g. 10.66.9.0/24 ({error})"
                )
        if self.check_target and split_target(self.check_target) is None:
            problems.append(
                f"{path}.check_target: got {self.check_target!r}; expected "
                "HOST:PORT (an IPv4 address or a host name, a TCP port), e.g. "
                "10.66.2.1:9618, or empty for pool.collector"
            )
        if self.address_echo:
            match = _ECHO_URL.fullmatch(self.address_echo)
            if not match or (match.group(2) and not 1 <= int(match.group(2)) <= 65535):
                problems.append(
                    f"{path}.address_echo: got {self.address_echo!r}; expected "
                    "http://HOST[:PORT][/PATH] of a service answering with the "
                    "caller's address, or empty"
                )
        problems += check_positive(
            f"{path}.ready_timeout", self.ready_timeout, "a time in seconds"
        )
        return problems


@dataclass(frozen=True)
class ContainerNetProfile(NetworkProfile):
    """The ``Network`` profile of a container-net site: the common sections and
    ``container_net``."""

    container_net: ContainerNetSection = field(default_factory=ContainerNetSection)

    def check(self, path: str) -> list[str]:
        problems = super().check(path)
        if self.container.runtime == "none":
            problems.append(
                f"{path}.container.runtime: got 'none' with mode container-net; "
                "the network is the container's: set runtime: apptainer, "
                "container.image and (for the site's setuid installation) "
                "container.apptainer"
            )
        problems += path_problems(
            self,
            path,
            "container-net",
            "container_net",
            self.container_net.check_target,
            "",
            "the container's check needs HOST:PORT to connect to",
        )
        return problems


def target(profile: ContainerNetProfile) -> tuple[str, int]:
    """What the reporter connects to: ``check_target``, else the collector."""
    return check_endpoint(profile, profile.container_net.check_target)


def cnet_settings(profile: ContainerNetProfile, interval: int = 30) -> SettingsGroup:
    """The values lib/container_net.sh reads (drone script and probe job)."""
    section = profile.container_net
    host, port = target(profile)
    return SettingsGroup(
        "container_net: the container's own network (lib/container_net.sh)",
        (
            ("CNET_NETWORK", section.network),
            ("CNET_NETWORK_ARGS", section.network_args),
            ("CNET_SUBNET", section.subnet),
            ("CNET_CHECK_HOST", host),
            ("CNET_CHECK_PORT", port),
            ("CNET_ADDRESS_ECHO", section.address_echo),
            ("CNET_CHECK_TIMEOUT_S", CHECK_TIMEOUT_S),
            ("CNET_READY_TIMEOUT_MS", section.ready_timeout * 1000),
            ("CNET_INTERVAL_S", interval),
        ),
    )


class ContainerNetMode(Mode):
    """The site's apptainer gives the payload's container a public address."""

    name = "container-net"
    summary = (
        "the site-local setuid apptainer gives the payload's container its own "
        "public address (--net --network NAME); the host has none (no tunnel, "
        "no LD_PRELOAD)"
    )
    profile_class = ContainerNetProfile
    stages = (
        Stage("tunnel", phase="network", skipped="network mode container-net"),
        Stage("chain", phase="path", skipped="network mode container-net"),
        Stage("container-net", "container_net_stage", phase="path"),
    )

    def legs(
        self, profile: NetworkProfile, budget: KeepaliveBudget
    ) -> list[tuple[str, str]]:
        assert isinstance(profile, ContainerNetProfile)
        return [
            (
                f"container on {profile.container_net.network} "
                f"({profile.container_net.subnet}) -> pool (CCB)",
                budget.knob_text("CCB_HEARTBEAT_INTERVAL"),
            )
        ]

    def libraries(self, profile: NetworkProfile) -> list[Path]:
        return [template_dir() / "lib" / "container_net.sh"]

    def settings(
        self, profile: NetworkProfile, budget: KeepaliveBudget
    ) -> list[SettingsGroup]:
        assert isinstance(profile, ContainerNetProfile)
        return [cnet_settings(profile, budget.watchdog_interval)]

    def warnings(self, profile: NetworkProfile) -> list[tuple[str, str]]:
        assert isinstance(profile, ContainerNetProfile)
        found = []
        if not profile.container_net.address_echo:
            found.append(
                (
                    "container_net.address_echo is empty: the drone checks that "
                    "its container has an address in "
                    f"{profile.container_net.subnet} and reaches the pool, but "
                    "cannot see which address the pool sees",
                    "run a service beyond the gateway that answers with the "
                    "caller's address and set container_net.address_echo",
                )
            )
        if not profile.container.apptainer:
            found.append(
                (
                    "container.apptainer is empty: the drone runs "
                    f"{profile.container.runtime} from PATH, which is often not "
                    "the site's setuid installation that may configure networks",
                    "set container.apptainer to the site-local apptainer, e.g. "
                    "/opt/apptainer/bin/apptainer",
                )
            )
        if profile.isolation == "required":
            found.append(
                (
                    "isolation: required with mode container-net: the container's "
                    "own network namespace is the isolation (ignored)",
                    "remove isolation",
                )
            )
        return found

    def probe_lines(self, profile: NetworkProfile) -> list[str]:
        return ["have bash"]

    def probe_job_lines(self, profile: NetworkProfile) -> list[str]:
        """The site's apptainer as a worker shows it (lib/container_net.sh's
        cnet_site_probe, run by bash in a short job): setuid, the allow-net
        lists of apptainer.conf for the job's user, the network's conflist.
        Each becomes one ``mark cnet:NAME ...`` line."""
        from ..render import _setting_line

        assert isinstance(profile, ContainerNetProfile)
        library = (template_dir() / "lib" / "container_net.sh").read_text(
            encoding="utf-8"
        )
        group = cnet_settings(profile)
        body = [_setting_line(name, value) for name, value in group.settings]
        body.append(_setting_line("CONTAINER_RUNTIME", profile.container.runtime))
        body.append(_setting_line("CONTAINER_APPTAINER", profile.container.apptainer))
        body += library.splitlines()
        body.append("cnet_site_probe")
        if PROBE_EOF in body:
            raise ValueError(f"lib/container_net.sh contains {PROBE_EOF}")
        return [
            'mark job-host ok "$(hostname) as $(id -un)"',
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
    "cmd:bash": "install bash on the workers (the drone script needs bash >= 4.4)",
    "cnet:setuid": "container networks need apptainer's setuid starter: install "
    "the site-local apptainer with setuid support (starter-suid owned by root, "
    "mode 4755) and point container.apptainer at it",
    "cnet:allow": "add the drone user to 'allow net users' (or its group to "
    "'allow net groups') and the network to 'allow net networks' in the site "
    "apptainer's apptainer.conf",
    "cnet:network": "install the network configuration as <apptainer "
    "sysconfdir>/network/NAME.conflist on the workers, or fix "
    "Network.container_net.network",
}

MODE = ContainerNetMode()
