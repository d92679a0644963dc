"""Names, addresses and paths of one lab instance: pure data, no side effects.

Everything else in the lab derives its namespace names, interface names,
addresses, ports and file locations from here, so the picture in docs/lab.md
has exactly one source.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_NAME = "tnlab"
STATE_ROOT = Path("/run/tardis-netadapter/lab")

SITE_NET = "10.66.1.0/24"
PUBLIC_NET = "10.66.2.0/24"
PREFIX_LEN = 24

LOGIN_SITE = "10.66.1.1"
LOGIN_PUBLIC = "10.66.2.10"
# a second login node (issue 11: failover between login nodes); no Slurm
LOGIN2_SITE = "10.66.1.2"
LOGIN2_PUBLIC = "10.66.2.11"
CONTROL_PUBLIC = "10.66.2.20"
# the site's DMZ host (issue 13: the vpn mode): ocserv on 443 tcp+udp, reachable
# from the workers on those two ports only; routes VPN clients to the public net
DMZ_SITE = "10.66.1.3"
DMZ_PUBLIC = "10.66.2.12"
VPN_POOL = "10.66.8.0/24"
# the site's NAT router pair (issue 14: the nat mode, GSI): two dual-homed
# routers holding, in one VRRP instance, the gateway VIP the workers' marked
# traffic is routed to and the public VIP it is SNATed to
NAT_GATEWAY = "10.66.1.250"
# the EPN "partition" (issue 15: the container-net mode, ALICE EPN): an isolated
# link only containers join (through CNI macvlan on each worker's address-less
# ib1), routed without NAT to the public net by the IB-ETH gateway `epngw`
PARTITION_NET = "10.66.9.0/24"
PARTITION_GATEWAY = "10.66.9.1"  # on br-part in epngw
PARTITION_RANGE = ("10.66.9.10", "10.66.9.250")  # the CNI host-local pool
EPNGW_PUBLIC = "10.66.2.15"  # epngw's public leg; outside routes the partition here
PARTITION_NETWORK = "epn-public"  # the apptainer network (CNI conflist) name
NAT_PUBLIC = "10.66.2.100"
OUTSIDE_HTTP = "10.66.2.1"  # http 80, squid 3128, pool 9618, address echo 8080
OUTSIDE_SOCKS = "10.66.2.2"  # dante 443
OUTSIDE_GATEWAY = "10.66.2.3"  # sshd 443

SSH_PORT = 22
HTTP_PORT = 80
HTTPS_PORT = 443
SQUID_PORT = 3128
COLLECTOR_PORT = 9618
SLURMCTLD_PORT = 6817
SLURMD_PORT = 6818
SRUN_PORTS = (60001, 60100)
# Grid Engine (issue 16): IANA's sge_qmaster / sge_execd, as in /etc/services
SGE_QMASTER_PORT = 6444
SGE_EXECD_PORT = 6445
ECHO_PORT = 8080  # outside: answers an HTTP request with the caller's address

# Interface names live inside the namespaces only, so they never clash with
# the root namespace or another lab; all stay well below 15 characters.
SITE_BRIDGE = "br-site"  # in login
PUBLIC_BRIDGE = "br-pub"  # in outside
LOGIN_PUBLIC_IF = "pub0"  # in login, peer "login" on br-pub (login2: "login2")
LOGIN2_SITE_IF = "site0"  # in login2, peer "login2" on br-site (in login)
HOST_IF = "eth0"  # the single link of a worker or of control
DMZ_SITE_IF = "site0"  # in dmz, peer "dmz" on br-site (in login)
DMZ_PUBLIC_IF = "pub0"  # in dmz, peer "dmz" on br-pub (in outside)
VPN_DEVICE = "vpns"  # ocserv's tun devices in dmz: vpns0, vpns1, ...
NAT_SITE_IF = "site0"  # in natN, peer "natN" on br-site (in login)
NAT_PUBLIC_IF = "pub0"  # in natN, peer "natN" on br-pub (in outside)
PARTITION_BRIDGE = "br-part"  # in epngw
PARTITION_IF = "ib1"  # in each worker, no address; peer "pN" on br-part
EPNGW_PUBLIC_IF = "pub0"  # in epngw, peer "epngw" on br-pub (in outside)


@dataclass(frozen=True)
class NatRouter:
    """One router of the site NAT pair: its host name, addresses and priority."""

    name: str
    site: str
    public: str
    priority: int


NAT_ROUTERS = (
    NatRouter("nat1", "10.66.1.251", "10.66.2.13", 150),
    NatRouter("nat2", "10.66.1.252", "10.66.2.14", 100),
)

MAX_WORKERS = 200
_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,9}$")


def validate_name(name: str) -> str:
    """Refuse names that would make unsafe or over-long namespace/user names."""
    if not _NAME_RE.match(name):
        raise ValueError(
            f"lab name {name!r}: use 1-10 lowercase letters/digits starting "
            "with a letter (it prefixes namespaces and user names)"
        )
    return name


@dataclass(frozen=True)
class LabLayout:
    """Where every host, address and file of one lab lives."""

    name: str = DEFAULT_NAME
    workers: int = 2

    def __post_init__(self) -> None:
        validate_name(self.name)
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"workers must be 1..{MAX_WORKERS}, got {self.workers}")

    # hosts and namespaces -------------------------------------------------
    @property
    def worker_hosts(self) -> list[str]:
        return [f"worker{index}" for index in range(1, self.workers + 1)]

    @property
    def hosts(self) -> list[str]:
        return [
            "login",
            "login2",
            *self.worker_hosts,
            "outside",
            "control",
            "dmz",
            *self.nat_hosts,
            "epngw",
        ]

    @property
    def nat_hosts(self) -> list[str]:
        """The site NAT routers (issue 14); their daemons run only when asked."""
        return [router.name for router in NAT_ROUTERS]

    def namespace(self, host: str) -> str:
        if host not in self.hosts:
            raise KeyError(f"lab {self.name} has no host {host!r} ({self.hosts})")
        return f"{self.name}-{host}"

    def namespace_path(self, host: str) -> Path:
        return Path("/run/netns") / self.namespace(host)

    # addresses --------------------------------------------------------------
    def worker_address(self, host: str) -> str:
        index = int(host.removeprefix("worker"))
        return f"10.66.1.{10 + index}"

    def addresses(self, host: str) -> dict[str, str]:
        """Addresses of a host by network name ("site" or "public")."""
        if host == "login":
            return {"site": LOGIN_SITE, "public": LOGIN_PUBLIC}
        if host == "login2":
            return {"site": LOGIN2_SITE, "public": LOGIN2_PUBLIC}
        if host == "control":
            return {"public": CONTROL_PUBLIC}
        if host == "outside":
            return {"public": OUTSIDE_HTTP}
        if host == "dmz":
            return {"site": DMZ_SITE, "public": DMZ_PUBLIC}
        if host == "epngw":
            return {"partition": PARTITION_GATEWAY, "public": EPNGW_PUBLIC}
        for router in NAT_ROUTERS:
            if host == router.name:
                return {"site": router.site, "public": router.public}
        self.namespace(host)
        return {"site": self.worker_address(host)}

    def address(self, host: str, net: str | None = None) -> str:
        """One address of a host; `net` is needed for the dual-homed ones."""
        addresses = self.addresses(host)
        if net is None:
            if len(addresses) > 1:
                raise ValueError(f"{host} has several networks: pass net= {addresses}")
            return next(iter(addresses.values()))
        if net not in addresses:
            raise KeyError(f"{host} is not on network {net!r} ({addresses})")
        return addresses[net]

    # users ------------------------------------------------------------------
    @property
    def drone_user(self) -> str:
        return f"{self.name}drone"

    @property
    def other_user(self) -> str:
        return f"{self.name}other"

    @property
    def users(self) -> list[str]:
        return [self.drone_user, self.other_user]

    # files ------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return STATE_ROOT / self.name

    @property
    def bin_dir(self) -> Path:
        return self.state_dir / "bin"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "log"

    @property
    def ssh_dir(self) -> Path:
        return self.state_dir / "ssh"

    @property
    def slurm_dir(self) -> Path:
        return self.state_dir / "slurm"

    @property
    def slurm_conf(self) -> Path:
        return self.slurm_dir / "slurm.conf"

    @property
    def www_dir(self) -> Path:
        return self.state_dir / "www"

    @property
    def known_hosts(self) -> Path:
        return self.ssh_dir / "known_hosts"

    @property
    def control_key(self) -> Path:
        return self.ssh_dir / "control_ed25519"

    @property
    def config_file(self) -> Path:
        return self.state_dir / "lab.json"

    def home(self, user: str) -> Path:
        return self.state_dir / "home" / user

    @property
    def drone_key(self) -> Path:
        return self.home(self.drone_user) / ".ssh" / "id_ed25519"

    def default_path(self) -> str:
        """PATH for lab commands and jobs: the stand-ins come first."""
        return f"{self.bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    # the DMZ's VPN server (issue 13) ----------------------------------------
    @property
    def vpn_dir(self) -> Path:
        """ocserv's config, the lab CA, the server cert and the ocpasswd file."""
        return self.state_dir / "vpn"

    @property
    def vpn_user_dir(self) -> Path:
        """The drone user's own VPN credentials (0700, owned by the user)."""
        return self.home(self.drone_user) / ".tardis-netadapter"

    @property
    def vpn_password_file(self) -> Path:
        return self.vpn_user_dir / "vpn.password"

    @property
    def vpn_client_cert(self) -> Path:
        return self.vpn_user_dir / "vpn-client.pem"

    @property
    def vpn_client_key(self) -> Path:
        return self.vpn_user_dir / "vpn-client.key"

    @property
    def echo_dir(self) -> Path:
        """The address echo's handler script and its log of peers (issue 14)."""
        return self.state_dir / "echo"

    @property
    def nat_dir(self) -> Path:
        """Rendered site-NAT files, one InstallPaths tree per host (sitenat.py)."""
        return self.state_dir / "nat"

    @property
    def faults_dir(self) -> Path:
        """Fault switches (mode files) of this lab, read by its wrappers/stand-ins."""
        return self.state_dir / "faults"

    @property
    def fault_bin_dir(self) -> Path:
        """Wrappers of Slurm commands that can be told to misbehave (faults.py)."""
        return self.faults_dir / "bin"

    @property
    def apptainer_dir(self) -> Path:
        """The site-local apptainer installation (issue 15): bin/, etc/, libexec/,
        var/ (the CNI leases), as an EPN admin installs it with setuid support."""
        return self.state_dir / "apptainer"

    @property
    def apptainer(self) -> Path:
        return self.apptainer_dir / "bin" / "apptainer"

    @property
    def apptainer_conf(self) -> Path:
        return self.apptainer_dir / "etc" / "apptainer" / "apptainer.conf"

    @property
    def partition_conflist(self) -> Path:
        return (
            self.apptainer_dir
            / "etc"
            / "apptainer"
            / "network"
            / f"{PARTITION_NETWORK}.conflist"
        )

    @property
    def cni_lease_dir(self) -> Path:
        """host-local IPAM's dataDir; one directory per network, a file per lease."""
        return self.apptainer_dir / "var" / "lib" / "cni" / "networks"

    def login_path(self) -> str:
        """PATH of sessions of login's sshd: the fault wrappers, then default_path.

        Only what arrives through sshd (the COBalD daemon's executor) sees the
        wrappers; ``Lab.run`` keeps ``default_path`` and so sees the truth.
        """
        return f"{self.fault_bin_dir}:{self.default_path()}"


def namespace_pattern(name: str) -> re.Pattern[str]:
    """Matches exactly the namespaces a lab of this name may have created."""
    return re.compile(
        rf"^{re.escape(name)}-(login|login2|outside|control|dmz|epngw|nat[0-9]|worker[0-9]+)$"
    )
