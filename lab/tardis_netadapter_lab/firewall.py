"""The login node's firewall, modelled on FZJ JURECA, and its idle timeout.

Towards outside only new TCP to 80/443 leaves login; from the workers only
ssh and Slurm come in; from the public side only ssh. Idle flows die: the
conntrack established timeout is set per namespace, `nf_conntrack_tcp_loose=0`
stops conntrack from re-adopting a flow it forgot, and the then "invalid"
packets are answered with a TCP reset (so both ends notice quickly; a silent
outage is what `cut_link` models).

The DMZ host (issue 13) has a table of its own (`dmz_ruleset`): workers reach
it on tcp/443 and udp/443 only, and it routes only VPN clients, to the public
net. The idle timeout covers its TCP and UDP flows too.
"""

from __future__ import annotations

from . import layout as L
from .netns import check_call, in_namespace

TABLE = "tnlab_login"
#: the login nodes that carry this firewall, and their site-side interface
LOGIN_HOSTS = {"login": L.SITE_BRIDGE, "login2": L.LOGIN2_SITE_IF}
DMZ_TABLE = "tnlab_dmz"
DMZ_NAT_TABLE = "tnlab_dmz_nat"


# The order matters: resets (including the ones the reject rules below
# generate) must pass before `ct state invalid` would eat them.
_COMMON = """
        tcp flags & rst == rst accept
        icmp type destination-unreachable accept
        ct state invalid meta l4proto tcp reject with tcp reset
        ct state invalid drop
        ct state established,related accept"""


def ruleset(host: str = "login") -> str:
    """The nft ruleset loaded into a login namespace (one table, atomic).

    login2 is login without Slurm: from the workers only ssh comes in. login
    also lets the workers' Grid Engine execds reach sge_qmaster (6444), as a
    site running Grid Engine does; nothing listens there until
    ``lab.gridengine.up()``.
    """
    site_if = LOGIN_HOSTS[host]
    worker_ports = (
        f"{L.SSH_PORT}, {L.SLURMCTLD_PORT}, {L.SGE_QMASTER_PORT}, "
        f"{L.SRUN_PORTS[0]}-{L.SRUN_PORTS[1]}"
        if host == "login"
        else f"{L.SSH_PORT}"
    )
    common = _COMMON
    return f"""
table inet {TABLE} {{
    chain input {{
        type filter hook input priority filter; policy drop;
        iif "lo" accept{common}
        iifname "{site_if}" tcp dport {{ {worker_ports} }} ct state new accept
        iifname "{L.LOGIN_PUBLIC_IF}" tcp dport {L.SSH_PORT} ct state new accept
        meta l4proto tcp reject with tcp reset
        reject with icmpx admin-prohibited
    }}
    chain output {{
        type filter hook output priority filter; policy drop;
        oif "lo" accept{common}
        oifname "{site_if}" accept
        oifname "{L.LOGIN_PUBLIC_IF}" tcp dport {{ {L.HTTP_PORT}, {L.HTTPS_PORT} }} \
ct state new accept
        meta l4proto tcp reject with tcp reset
        reject with icmpx admin-prohibited
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname "{L.LOGIN_PUBLIC_IF}" drop
        oifname "{L.LOGIN_PUBLIC_IF}" drop
    }}
}}
"""


def dmz_ruleset() -> str:
    """The DMZ host's firewall (issue 13): the site's rules for its VPN server.

    In: only new tcp/443 and udp/443 (ocserv: TLS and DTLS), from the site
    and the public side; every other port is refused at once (reset/ICMP) so
    probes fail fast. Forward: VPN clients (ocserv's vpns* tun devices) to the
    public net only, masqueraded to 10.66.2.12; nothing from the site or the
    public net is routed. Out to the site: replies only, so when the idle
    timeout (set_idle_timeout) has dropped a flow's conntrack entry the
    server's next datagram is dropped too, as a site firewall drops a
    forgotten UDP flow: DTLS then depends on the client's keepalives.
    """
    return f"""
table inet {DMZ_TABLE} {{
    chain input {{
        type filter hook input priority filter; policy drop;
        iif "lo" accept{_COMMON}
        iifname {{ "{L.DMZ_SITE_IF}", "{L.DMZ_PUBLIC_IF}" }} meta l4proto {{ tcp, udp }} \
th dport {L.HTTPS_PORT} ct state new accept
        iifname "{L.VPN_DEVICE}*" icmp type echo-request accept
        meta l4proto tcp reject with tcp reset
        reject with icmpx admin-prohibited
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "{L.VPN_DEVICE}*" oifname "{L.DMZ_PUBLIC_IF}" accept
        counter
    }}
    chain output {{
        type filter hook output priority filter; policy accept;
        oifname "{L.DMZ_SITE_IF}" tcp flags & rst == rst accept
        oifname "{L.DMZ_SITE_IF}" icmp type destination-unreachable accept
        oifname "{L.DMZ_SITE_IF}" ct state established,related accept
        oifname "{L.DMZ_SITE_IF}" counter drop
    }}
}}
table ip {DMZ_NAT_TABLE} {{
    chain postrouting {{
        type nat hook postrouting priority srcnat;
        oifname "{L.DMZ_PUBLIC_IF}" ip saddr {L.VPN_POOL} masquerade
    }}
}}
"""


def idle_sysctls(idle_timeout: int) -> list[str]:
    """Per-namespace conntrack settings that make idle TCP flows expire."""
    return [
        f"net.netfilter.nf_conntrack_tcp_timeout_established={int(idle_timeout)}",
        "net.netfilter.nf_conntrack_tcp_loose=0",
        # window tracking off: a legitimate flow must never be reset because of
        # an out-of-window packet; only forgotten flows become invalid
        "net.netfilter.nf_conntrack_tcp_be_liberal=1",
    ]


def install(lab: L.LabLayout, idle_timeout: int) -> None:
    """Load the ruleset, then the conntrack sysctls (they exist once ct is used)."""
    for host in LOGIN_HOSTS:
        namespace = lab.namespace_path(host)
        check_call(in_namespace(namespace, ["nft", "-f", "-"]), input=ruleset(host))
    check_call(
        in_namespace(lab.namespace_path("dmz"), ["nft", "-f", "-"]),
        input=dmz_ruleset(),
    )
    set_idle_timeout(lab, idle_timeout)


def set_idle_timeout(lab: L.LabLayout, idle_timeout: int) -> None:
    """Change how long an idle established flow through login (and login2) survives,
    and how long dmz remembers a VPN client's TCP and UDP flows (issue 13).

    Takes effect for a flow at its next packet (conntrack re-arms the timer
    with the current value).
    """
    if idle_timeout < 1:
        raise ValueError("idle timeout must be at least 1 second")
    argv = ["sysctl", "-q", "-w", *idle_sysctls(idle_timeout)]
    for host in LOGIN_HOSTS:
        check_call(in_namespace(lab.namespace_path(host), argv))
    dmz_argv = argv + [
        f"net.netfilter.nf_conntrack_udp_timeout={int(idle_timeout)}",
        f"net.netfilter.nf_conntrack_udp_timeout_stream={int(idle_timeout)}",
    ]
    check_call(in_namespace(lab.namespace_path("dmz"), dmz_argv))


def current_idle_timeout(lab: L.LabLayout) -> int:
    argv = ["sysctl", "-n", "net.netfilter.nf_conntrack_tcp_timeout_established"]
    return int(check_call(in_namespace(lab.namespace_path("login"), argv)).strip())
