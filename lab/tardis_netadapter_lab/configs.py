"""Configuration files of the lab's real daemons (text only, no side effects)."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from . import layout as L

# Longer than any idle timeout the lab uses, so sshd's own keepalives do not
# mask the firewall's idle kill; short enough to clear orphaned sessions.
CLIENT_ALIVE_INTERVAL = 60


def sshd_config(
    lab: L.LabLayout, *, host_key: Path, listen: str, port: int, login_node: bool
) -> str:
    """sshd for the login node (port 22) or the outside gateway (port 443).

    On login, `SetEnv` (sshd_config, OpenSSH >= 8.7) gives every session -
    also non-interactive `ssh login sbatch ...` - the lab's SLURM_CONF and a
    PATH with the lab's fault wrappers (faults.py) and the stand-ins first,
    without touching machine-wide files.
    """
    lines = [
        f"ListenAddress {listen}:{port}",
        f"HostKey {host_key}",
        "PidFile none",
        "UsePAM no",
        "PermitRootLogin no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        f"AuthorizedKeysFile {lab.ssh_dir}/authorized/%u",
        f"AllowUsers {' '.join(lab.users)}",
        "StrictModes yes",
        "AllowTcpForwarding yes",
        "GatewayPorts no",
        "X11Forwarding no",
        "PrintMotd no",
        "UseDNS no",
        f"ClientAliveInterval {CLIENT_ALIVE_INTERVAL}",
        "ClientAliveCountMax 3",
        "MaxStartups 200:30:400",
        "MaxSessions 200",
        "LogLevel INFO",
        "Subsystem sftp internal-sftp",
    ]
    if login_node:
        lines.append(f"SetEnv SLURM_CONF={lab.slurm_conf} PATH={lab.login_path()}")
    return "\n".join(lines) + "\n"


#: the GRES type and count of every lab worker's stand-in GPUs (slurm_conf)
LAB_GPU_TYPE = "mi50"
LAB_GPUS_PER_NODE = 2
#: first number of the stand-in GPU device nodes (AMD's /dev/dri/renderD128...)
LAB_GPU_FIRST_MINOR = 128


def write_gres(lab: L.LabLayout) -> None:
    """gres.conf beside slurm.conf and the stand-in GPU device nodes it names.

    Slurm 22.05 counts no GPU without a device file ("Ignoring file-less
    GPU"; Count= alone registers 0 and the node goes INVAL), and wants a
    character device. The nodes are /dev/null's (1:3) under the lab's Slurm
    directory, so nothing on the machine changes and opening one is harmless.
    """
    dev = lab.slurm_dir / "dev"
    dev.mkdir(exist_ok=True)
    first = LAB_GPU_FIRST_MINOR
    last = first + LAB_GPUS_PER_NODE - 1
    for number in range(first, last + 1):
        node = dev / f"renderD{number}"
        if not node.exists():
            os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (lab.slurm_conf.parent / "gres.conf").write_text(
        f"# tardis-netadapter lab {lab.name}: generated, do not edit\n"
        "AutoDetect=off\n"
        f"Name=gpu Type={LAB_GPU_TYPE} File={dev}/renderD[{first}-{last}]\n"
    )


def slurm_conf(lab: L.LabLayout) -> str:
    """Slurm 22.05 without systemd, munge or accounting (see LAB-NOTES.md).

    slurmctld refuses to start unless SlurmctldHost names this machine, so the
    machine's hostname is used with the login node's site address.

    Each worker is two sockets of one core (the machine's 2 CPUs, declared as
    an EPN node's two NUMA domains; config_overrides lets slurmd accept the
    declared layout) with task/affinity, which binds every job to its
    allocated cores without cgroups, so two NUMA-bound drones
    (NumaBinding: socket) share a worker on different CPUs. Each worker also
    has 2 GPUs of GRES type LAB_GPU_TYPE backed by stand-in device nodes
    (write_gres: Slurm 22.05 counts no GPU without a device file): Slurm
    schedules them and sets the jobs' GPU variables, nothing more.
    """
    d = lab.slurm_dir
    nodes = "\n".join(
        f"NodeName={worker} NodeAddr={lab.worker_address(worker)} "
        f"NodeHostname={worker} CPUs=2 Boards=1 SocketsPerBoard=2 "
        f"CoresPerSocket=1 ThreadsPerCore=1 RealMemory=512 "
        f"Gres=gpu:{LAB_GPU_TYPE}:{LAB_GPUS_PER_NODE} State=UNKNOWN"
        for worker in lab.worker_hosts
    )
    return f"""# tardis-netadapter lab {lab.name}: generated, do not edit
ClusterName={lab.name}
SlurmctldHost={socket.gethostname().split(".")[0]}({L.LOGIN_SITE})
SlurmctldPort={L.SLURMCTLD_PORT}
SlurmdPort={L.SLURMD_PORT}
SrunPortRange={L.SRUN_PORTS[0]}-{L.SRUN_PORTS[1]}
AuthType=auth/none
CredType=cred/none
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
GresTypes=gpu
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
SlurmdParameters=config_overrides
SlurmctldTimeout=30
SlurmdTimeout=300
InactiveLimit=0
KillWait=2
MinJobAge=300
SchedulerParameters=sched_interval=2
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={lab.run_dir}/slurmctld.slurm.pid
SlurmdPidFile={lab.run_dir}/slurmd-%n.slurm.pid
SlurmctldLogFile={lab.log_dir}/slurmctld.log
SlurmdLogFile={lab.log_dir}/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
{nodes}
PartitionName=batch Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:2
"""


def danted_conf(lab: L.LabLayout) -> str:
    """The partner site's SOCKS5 proxy (dante needs multi-line blocks)."""
    return f"""logoutput: {lab.log_dir}/dante.log
internal: {L.OUTSIDE_SOCKS} port = {L.HTTPS_PORT}
external: {L.OUTSIDE_SOCKS}
clientmethod: none
socksmethod: none
user.privileged: root
user.unprivileged: nobody
client pass {{
    from: 0.0.0.0/0 to: 0.0.0.0/0
    log: error
}}
socks pass {{
    from: 0.0.0.0/0 to: 0.0.0.0/0
    command: connect
    log: error
}}
"""


def squid_conf(lab: L.LabLayout, *, role: str, listen: str, port: int) -> str:
    """A memory-only caching proxy (the CVMFS/Frontier squid)."""
    work = lab.state_dir / "squid" / role
    return f"""# tardis-netadapter lab {lab.name}: {role} squid
http_port {listen}:{port}
visible_hostname {lab.name}-{role}
acl lab_clients src 10.66.0.0/16 127.0.0.0/8
http_access allow lab_clients
http_access deny all
cache_mem 16 MB
maximum_object_size_in_memory 8 MB
cache_effective_user proxy
pid_filename {work}/squid.pid
access_log stdio:{work}/access.log
cache_log {work}/cache.log
cache_store_log none
coredump_dir {work}
pinger_enable off
shutdown_lifetime 0 seconds
dns_nameservers 127.0.0.1
forwarded_for on
"""


#: ocserv's liveness settings, in seconds (the drone's keepalive budget must fit
#: the lab firewall's idle timeout, default 30 s, so these stay well below it)
OCSERV_DPD = 10
OCSERV_KEEPALIVE = 10
#: a session without any payload traffic this long is ended by ocserv; longer
#: than any lab test idles on purpose (DPD and keepalives do not count)
OCSERV_IDLE_TIMEOUT = 3600


def ocserv_conf(lab: L.LabLayout) -> str:
    """Debian's ocserv as the site's DMZ VPN server (issue 13, decision 4).

    Password (ocpasswd) or client certificate (enable-auth, user from the
    certificate's UID); one user for all drones, so no per-user client limit
    and no score banning (a test's wrong password must not lock out the other
    drones of a worker); tunnel-all into the pool 10.66.8.0/24, which dmz
    masquerades onto the public net (firewall.dmz_ruleset). No DNS server in
    the lab, so none is pushed.
    """
    d = lab.vpn_dir
    return f"""# tardis-netadapter lab {lab.name}: ocserv of the DMZ host, generated
auth = "plain[passwd={d}/ocpasswd]"
enable-auth = "certificate"
cert-user-oid = 0.9.2342.19200300.100.1.1
tcp-port = {L.HTTPS_PORT}
udp-port = {L.HTTPS_PORT}
run-as-user = nobody
run-as-group = nogroup
socket-file = {lab.run_dir}/ocserv.sock
use-occtl = true
occtl-socket-file = {lab.run_dir}/occtl.sock
pid-file = {lab.run_dir}/ocserv.own.pid
server-cert = {d}/server.pem
server-key = {d}/server.key
ca-cert = {d}/ca.pem
isolate-workers = false
restrict-user-to-routes = false
max-clients = 1024
max-same-clients = 0
rate-limit-ms = 0
max-ban-score = 0
keepalive = {OCSERV_KEEPALIVE}
dpd = {OCSERV_DPD}
mobile-dpd = {OCSERV_DPD}
idle-timeout = {OCSERV_IDLE_TIMEOUT}
mobile-idle-timeout = {OCSERV_IDLE_TIMEOUT}
switch-to-tcp-timeout = 25
try-mtu-discovery = false
tls-priorities = "NORMAL:%SERVER_PRECEDENCE:%COMPAT:-VERS-SSL3.0:-VERS-TLS1.0:-VERS-TLS1.1:-VERS-TLS1.3"
auth-timeout = 240
cookie-timeout = 300
deny-roaming = false
rekey-time = 172800
rekey-method = ssl
use-utmp = false
log-level = 2
device = {L.VPN_DEVICE}
predictable-ips = true
ping-leases = false
ipv4-network = {L.VPN_POOL}
route = default
cisco-client-compat = true
dtls-legacy = true
"""


# --------------------------------------------------------------------------
# the address echo (issue 14) and the site NAT's configuration section
# --------------------------------------------------------------------------

#: what the drone's route check and the tests read: the caller's address as
#: the outside sees it (after any NAT), the body of a plain HTTP answer
ECHO_SCRIPT = r"""#!/bin/bash
# tardis-netadapter lab {name}: the address echo (configs.echo_script), run by
# socat for each connection on {listen}. Answers an HTTP request with the
# peer's address and records it, one line per connection, in {log}.
# Reads the request head first (up to its empty line, at most 2 s), so the
# answer is never followed by a reset for unread request bytes.
while IFS= read -r -t 2 line; do
    line=${{line%$'\r'}}
    [ -z "$line" ] && break
done
peer=${{SOCAT_PEERADDR:-unknown}}
printf '%s\n' "$peer" >> {log}
head='HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n'
printf "$head"'Content-Length: %d\r\n\r\n%s\n' "$(( ${{#peer}} + 1 ))" "$peer"
"""


#: the UDP side of the address echo, a small Python server (one process):
#: socat's UDP4-RECVFROM with fork races under load (a slow child lets the
#: parent hand the same datagram out twice and answer another sender's with it)
ECHO_UDP_SCRIPT = r"""# tardis-netadapter lab {name}: the UDP address echo (configs.echo_script) on
# udp {listen}: answers each datagram with the sender's address and records
# it, one line per datagram, in {log}.
import os
import socket
import stat
server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
server.bind(({address!r}, {port}))
with open({log_text!r}, "a", buffering=1) as log:
    while True:
        _, (peer, port) = server.recvfrom(2048)
        log.write(peer + "\n")
        server.sendto((peer + "\n").encode(), (peer, port))
"""


def echo_log(lab: L.LabLayout, protocol: str = "tcp") -> Path:
    """One line per connection (datagram) the echo answered: the peer it saw."""
    return lab.echo_dir / ("peers.log" if protocol == "tcp" else "peers-udp.log")


def echo_script(lab: L.LabLayout, protocol: str = "tcp") -> str:
    """The address echo's handler: per TCP connection (socat EXEC, bash), or the
    UDP server (python3)."""
    template = ECHO_SCRIPT if protocol == "tcp" else ECHO_UDP_SCRIPT
    return template.format(
        name=lab.name,
        listen=f"{L.OUTSIDE_HTTP}:{L.ECHO_PORT}",
        log=echo_log(lab, protocol),
        log_text=str(echo_log(lab, protocol)),
        address=L.OUTSIDE_HTTP,
        port=L.ECHO_PORT,
    )


def echo_url() -> str:
    """The address echo as the nat section's ``address_echo`` names it."""
    return f"http://{L.OUTSIDE_HTTP}:{L.ECHO_PORT}/"


def nat_section(lab: L.LabLayout, conntrack_sync: bool = True) -> dict[str, object]:
    """The lab site's ``Network.nat`` section (mode nat, issue 14).

    The one source for the lab (sitenat.py renders the routers' and workers'
    files from it) and for the tests and configs that drive drones in mode
    nat against the lab: the routers are the layout's natN hosts, the drone
    user is the lab's, the pool is the route check's and the routers'
    health target, the address echo answers on the outside.
    """
    pool = f"{L.OUTSIDE_HTTP}:{L.COLLECTOR_PORT}"
    return {
        "gateway": L.NAT_GATEWAY,
        "public_address": L.NAT_PUBLIC,
        "mark": 1,
        "table": 201,
        "table_name": "tna_nat",
        "users": [lab.drone_user],
        "groups": [],
        "protocols": ["tcp", "udp"],
        "site_subnets": [L.SITE_NET],
        "address_echo": echo_url(),
        "check_target": pool,
        "keeper": {"interval": 2},
        "vrrp": {
            "router_id": 51,
            "advert_interval": 1,
            "health_target": pool,
            "health_interval": 1,
            "fall": 2,
            "rise": 2,
        },
        "conntrack_sync": conntrack_sync,
        "routers": [
            {
                "name": router.name,
                "site_interface": L.NAT_SITE_IF,
                "site_address": router.site,
                "public_interface": L.NAT_PUBLIC_IF,
                "priority": router.priority,
            }
            for router in L.NAT_ROUTERS
        ],
    }


def container_net_section(lab: L.LabLayout) -> dict[str, object]:
    """The lab site's ``Network.container_net`` section (mode container-net,
    issue 15): the network the site-local apptainer's conf allows, the
    partition's subnet, the pool as check target and the address echo, which
    must see the container's own address."""
    return {
        "network": L.PARTITION_NETWORK,
        "network_args": [],
        "subnet": L.PARTITION_NET,
        "check_target": f"{L.OUTSIDE_HTTP}:{L.COLLECTOR_PORT}",
        "address_echo": echo_url(),
        "ready_timeout": 60,
    }


def container_section(lab: L.LabLayout, gpu: str = "amd") -> dict[str, object]:
    """The ``Network.container`` keys mode container-net needs in the lab: the
    site-local setuid apptainer (not the plain stand-in on PATH) and the
    drone user's directory image (toolbox.install_site_software)."""
    return {
        "runtime": "apptainer",
        "image": str(lab.home(lab.drone_user) / "image"),
        "apptainer": str(lab.apptainer),
        "gpu": gpu,
    }
