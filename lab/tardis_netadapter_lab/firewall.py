"""The login node's firewall, modelled on FZJ JURECA, and its idle timeout.

Towards outside only new TCP to 80/443 leaves login; from the workers only
ssh and Slurm come in; from the public side only ssh. Idle flows die: the
conntrack established timeout is set per namespace, `nf_conntrack_tcp_loose=0`
stops conntrack from re-adopting a flow it forgot, and the then "invalid"
packets are answered with a TCP reset (so both ends notice quickly; a silent
outage is what `cut_link` models).
"""

from __future__ import annotations

from . import layout as L
from .netns import check_call, in_namespace

TABLE = "tnlab_login"
#: the login nodes that carry this firewall, and their site-side interface
LOGIN_HOSTS = {"login": L.SITE_BRIDGE, "login2": L.LOGIN2_SITE_IF}


def ruleset(host: str = "login") -> str:
    """The nft ruleset loaded into a login namespace (one table, atomic).

    login2 is login without Slurm: from the workers only ssh comes in.
    """
    site_if = LOGIN_HOSTS[host]
    worker_ports = (
        f"{L.SSH_PORT}, {L.SLURMCTLD_PORT}, {L.SRUN_PORTS[0]}-{L.SRUN_PORTS[1]}"
        if host == "login"
        else f"{L.SSH_PORT}"
    )
    # The order matters: resets (including the ones the reject rules below
    # generate) must pass before `ct state invalid` would eat them.
    common = """
        tcp flags & rst == rst accept
        icmp type destination-unreachable accept
        ct state invalid meta l4proto tcp reject with tcp reset
        ct state invalid drop
        ct state established,related accept"""
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
    set_idle_timeout(lab, idle_timeout)


def set_idle_timeout(lab: L.LabLayout, idle_timeout: int) -> None:
    """Change how long an idle established flow through login (and login2) survives.

    Takes effect for a flow at its next packet (conntrack re-arms the timer
    with the current value).
    """
    if idle_timeout < 1:
        raise ValueError("idle timeout must be at least 1 second")
    argv = ["sysctl", "-q", "-w", *idle_sysctls(idle_timeout)]
    for host in LOGIN_HOSTS:
        check_call(in_namespace(lab.namespace_path(host), argv))


def current_idle_timeout(lab: L.LabLayout) -> int:
    argv = ["sysctl", "-n", "net.netfilter.nf_conntrack_tcp_timeout_established"]
    return int(check_call(in_namespace(lab.namespace_path("login"), argv)).strip())
