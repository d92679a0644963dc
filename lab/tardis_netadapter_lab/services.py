"""The lab's daemons: what runs where, starting, readiness and stopping by pid.

Every daemon runs in the foreground inside its namespace (nsenter + exec, so
the pid we record is the daemon's own), with its output in the lab's log dir
and its pid and kernel start time in the lab's run dir. A pid is only ever
signalled when its start time still matches, so a recycled pid is never hit.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import gehost, rcvbuf
from . import layout as L
from .netns import in_namespace, is_alive, is_listening, reap, start_time, terminate

PYTHON = "/usr/bin/python3"
READY_TIMEOUT = 15.0

# Real EL/Debian compute nodes have a /dev/net/tun every user may open (0666);
# this machine's is 0600 root, and unprivileged pasta/slirp4netns (the outer
# link of a drone's private network namespace, issue 12) need it. The machine's
# node is never touched: each worker's slurmd runs in a private mount namespace
# whose /dev/net is a small tmpfs holding its own 0666 tun node. Jobs inherit
# that mount namespace from slurmd; everything outside it keeps the real one.
TUN_NODE_SCRIPT = (
    "set -e; mount -t tmpfs -o mode=0755,size=16k,nosuid lab-tun /dev/net; "
    'mknod -m 0666 /dev/net/tun c 10 200; exec "$@"'
)


def with_tun_node(argv: tuple[str, ...]) -> tuple[str, ...]:
    """`argv` run in a private mount namespace with a 0666 /dev/net/tun.

    unshare without --fork and `exec` keep the pid: the recorded pid is still
    the daemon's own, and the mount namespace dies with it and its children.
    """
    return (
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        TUN_NODE_SCRIPT,
        "lab-tun",
        *argv,
    )


# Popen objects of the daemons this process started, so we can reap them.
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class Service:
    """One daemon of the lab."""

    name: str
    host: str
    argv: tuple[str, ...]
    address: str
    port: int
    what: str
    # the daemon's own pid file: removed before a start, since a daemon that
    # was killed leaves it behind and may refuse to start ("already running")
    own_pid_file: str | None = None
    # "udp": ready when a UDP socket is bound to address:port
    protocol: str = "tcp"

    def to_dict(self) -> dict[str, object]:
        return {
            "host": self.host,
            "address": self.address,
            "port": self.port,
            "protocol": self.protocol,
            "what": self.what,
        }


def squid_service(lab: L.LabLayout, role: str) -> str:
    """squid's ``-n`` service name: it names squid's shared memory segments
    (/dev/shm/NAME-cf__*.shm), which are not per network namespace. With the
    default name every squid of every lab on the machine would share (and,
    exiting, unlink) the same segments, and a squid starting meanwhile dies."""
    return f"{lab.name}{role}"  # alphanumeric, as squid requires


def service_table(lab: L.LabLayout) -> dict[str, Service]:
    """Every service of a lab by name, derived from the layout alone."""
    ssh, d = lab.ssh_dir, lab.state_dir
    services = [
        Service(
            "login-sshd",
            "login",
            login_sshd_argv(lab),
            "0.0.0.0",
            L.SSH_PORT,
            "OpenSSH sshd of the login node",
        ),
        Service(
            "login2-sshd",
            "login2",
            ("/usr/sbin/sshd", "-D", "-e", "-f", str(ssh / "login2_sshd_config")),
            "0.0.0.0",
            L.SSH_PORT,
            "OpenSSH sshd of the second login node (no Slurm there)",
        ),
        Service(
            "slurmctld",
            "login",
            ("slurmctld", "-D", "-i", "-f", str(lab.slurm_conf)),
            "0.0.0.0",
            L.SLURMCTLD_PORT,
            "Slurm controller",
        ),
        Service(
            "login-squid",
            "login",
            (
                "squid",
                "-N",
                "-n",
                squid_service(lab, "login"),
                "-f",
                str(d / "squid" / "login" / "squid.conf"),
            ),
            "127.0.0.1",
            L.SQUID_PORT,
            "squid on the login node (reach it with ssh -L)",
            str(d / "squid" / "login" / "squid.pid"),
        ),
        Service(
            "login2-squid",
            "login2",
            (
                "squid",
                "-N",
                "-n",
                squid_service(lab, "login2"),
                "-f",
                str(d / "squid" / "login2" / "squid.conf"),
            ),
            "127.0.0.1",
            L.SQUID_PORT,
            "squid on login2, like login's (a drone's -L forward is per login node)",
            str(d / "squid" / "login2" / "squid.pid"),
        ),
        Service(
            "http",
            "outside",
            (PYTHON, "-m", "http.server", "--bind", L.OUTSIDE_HTTP)
            + ("--directory", str(lab.www_dir), str(L.HTTP_PORT)),
            L.OUTSIDE_HTTP,
            L.HTTP_PORT,
            "HTTP server with /files/*.bin and /cvmfs/<repo>/.cvmfspublished",
        ),
        Service(
            "squid",
            "outside",
            (
                "squid",
                "-N",
                "-n",
                squid_service(lab, "outside"),
                "-f",
                str(d / "squid" / "outside" / "squid.conf"),
            ),
            L.OUTSIDE_HTTP,
            L.SQUID_PORT,
            "CVMFS/Frontier squid proxy",
            str(d / "squid" / "outside" / "squid.pid"),
        ),
        Service(
            "dante",
            "outside",
            ("danted", "-f", str(d / "dante" / "danted.conf"))
            + ("-p", str(lab.run_dir / "danted.own.pid")),
            L.OUTSIDE_SOCKS,
            L.HTTPS_PORT,
            "dante SOCKS5 proxy of a partner site",
            str(lab.run_dir / "danted.own.pid"),
        ),
        Service(
            "gateway-sshd",
            "outside",
            ("/usr/sbin/sshd", "-D", "-e", "-f", str(ssh / "gateway_sshd_config")),
            L.OUTSIDE_GATEWAY,
            L.HTTPS_PORT,
            "sshd gateway on port 443 (ssh hops across the firewall)",
        ),
        Service(
            "echo",
            "outside",
            # one handler per connection; `nofork` hands it the socket itself
            (
                "socat",
                f"TCP4-LISTEN:{L.ECHO_PORT},bind={L.OUTSIDE_HTTP},"
                "reuseaddr,fork,backlog=1024",
                f"EXEC:{echo_handler(lab)},nofork",
            ),
            L.OUTSIDE_HTTP,
            L.ECHO_PORT,
            "address echo: answers HTTP with the caller's address as seen outside",
        ),
        Service(
            "echo-udp",
            "outside",
            # each datagram answered with the sender's address
            (PYTHON, str(echo_handler(lab, "udp"))),
            L.OUTSIDE_HTTP,
            L.ECHO_PORT,
            "address echo for UDP: answers each datagram with the sender's address",
            protocol="udp",
        ),
        Service(
            "pool",
            "outside",
            (PYTHON, str(lab.bin_dir / "pool"), "--listen")
            + (f"{L.OUTSIDE_HTTP}:{L.COLLECTOR_PORT}", "--state", str(pool_state(lab))),
            L.OUTSIDE_HTTP,
            L.COLLECTOR_PORT,
            "HTCondor pool stand-in (collector/CCB)",
        ),
    ]
    services.append(
        Service(
            "ocserv",
            "dmz",
            # a larger UDP receive buffer for DTLS (rcvbuf.py)
            rcvbuf.wrap(
                lab, ("/usr/sbin/ocserv", "-f", "-c", str(lab.vpn_dir / "ocserv.conf"))
            ),
            "0.0.0.0",
            L.HTTPS_PORT,
            "Debian's ocserv, the site's VPN server in the DMZ (tcp+udp 443)",
            str(lab.run_dir / "ocserv.own.pid"),
        )
    )
    services += [
        Service(
            f"slurmd-{worker}",
            worker,
            with_tun_node(("slurmd", "-D", "-N", worker, "-f", str(lab.slurm_conf))),
            "0.0.0.0",
            L.SLURMD_PORT,
            f"Slurm node daemon of {worker} (jobs see a 0666 /dev/net/tun)",
        )
        for worker in lab.worker_hosts
    ]
    return {service.name: service for service in services}


def login_sshd_argv(lab: L.LabLayout) -> tuple[str, ...]:
    """login's sshd; while the lab's Grid Engine is up it runs as host "login"
    with the lab's host table (gehost.py), so the drone user's qsub/qstat/qdel
    over ssh are what Grid Engine knows as the submit host "login". A restart
    (fault hooks, outage tests) keeps whichever form is current."""
    argv = ("/usr/sbin/sshd", "-D", "-e", "-f", str(lab.ssh_dir / "login_sshd_config"))
    if gehost.marker(lab).exists():
        return gehost.host_view(lab, "login", argv)
    return argv


def echo_handler(lab: L.LabLayout, protocol: str = "tcp") -> Path:
    """The address echo's per-connection (per-datagram) script (configs.echo_script)."""
    return lab.echo_dir / ("answer.sh" if protocol == "tcp" else "udp_echo.py")


def pool_state(lab: L.LabLayout) -> Path:
    return lab.state_dir / "pool" / "state.json"


def pid_file(lab: L.LabLayout, name: str) -> Path:
    return lab.run_dir / f"{name}.pid"


def daemon_env(lab: L.LabLayout) -> dict[str, str]:
    return {
        "PATH": lab.default_path(),
        "SLURM_CONF": str(lab.slurm_conf),
        "HOME": "/root",
        "LANG": "C.UTF-8",
    }


def start(lab: L.LabLayout, service: Service) -> int:
    """Start a daemon in its namespace; record pid and start time."""
    if service.own_pid_file:
        Path(service.own_pid_file).unlink(missing_ok=True)
    argv = in_namespace(lab.namespace_path(service.host), service.argv)
    with open(lab.log_dir / f"{service.name}.log", "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=daemon_env(lab),
            cwd=str(lab.state_dir),
        )
    _children[proc.pid] = proc
    pid_file(lab, service.name).write_text(f"{proc.pid} {start_time(proc.pid) or 0}\n")
    return proc.pid


def recorded_pid(lab: L.LabLayout, name: str) -> int | None:
    """The pid of a service if it is still the process we started."""
    try:
        pid_text, started = pid_file(lab, name).read_text().split()
    except (OSError, ValueError):
        return None
    pid = int(pid_text)
    if not is_alive(pid) or str(start_time(pid)) != started:
        return None
    return pid


def stop(lab: L.LabLayout, name: str) -> bool:
    """Stop one service by its recorded pid; False when it was not running."""
    pid = recorded_pid(lab, name)
    pid_file(lab, name).unlink(missing_ok=True)
    if pid is None:
        return False
    terminate([pid])
    _children.pop(pid, None)
    return True


def wait_ready(
    lab: L.LabLayout, services: list[Service], timeout: float = READY_TIMEOUT
) -> None:
    """Block until each service listens on its port; fail fast if one dies."""
    pending = {service.name: service for service in services}
    deadline = time.monotonic() + timeout
    while pending:
        for name, service in list(pending.items()):
            pid = recorded_pid(lab, name)
            if pid is None:
                reap_all()
                raise RuntimeError(
                    f"{name} exited during start:\n{log_tail(lab, name)}"
                )
            if is_listening(pid, service.address, service.port, service.protocol):
                del pending[name]
        if not pending:
            return
        if time.monotonic() > deadline:
            names = ", ".join(pending)
            raise RuntimeError(f"not ready after {timeout:.0f} s: {names}")
        time.sleep(0.05)


def log_tail(lab: L.LabLayout, name: str, lines: int = 15) -> str:
    try:
        text = (lab.log_dir / f"{name}.log").read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def reap_all() -> None:
    """Collect exited daemons started by this process."""
    for pid in list(_children):
        reap(pid)
        if not is_alive(pid):
            _children.pop(pid, None)
