"""A lab host's own name and host table, as Grid Engine needs them (issue 16).

Grid Engine identifies hosts by name: sge_qmaster resolves the peer address
of every connection and compares it with the name the client resolved for
itself, and execds are known by the name `gethostname()` gives them. All lab
namespaces share the machine's host name and its /etc/hosts, so neither
works there. Each Grid Engine process (and login's sshd while Grid Engine is
up, so that the drone user's `qsub` is "login") therefore runs in a private
mount + UTS namespace: the lab's host table is bind-mounted over /etc/hosts
and the UTS host name is the lab host's name. Debian's
/etc/default/gridengine (read by its /usr/bin/q* wrapper when SGE_ROOT and
SGE_CELL are not set) is replaced the same way by the lab's, naming the lab's
root and cell: a non-interactive `ssh login qstat` finds the lab's cell as
it finds the cell on a Debian site, with no environment from shell files. Both go away with the process
tree; the machine's /etc/hosts and host name are never changed, and the lab's
names never resolve outside these processes (so no process in the root
namespace can be sent to a lab address by name).

Kept apart from gridengine.py because services.py needs it too (login's sshd
is wrapped while the marker file exists) and must not import gridengine.py.
"""

from __future__ import annotations

from pathlib import Path

from . import layout as L

#: the wrapper: $1 host name, $2 host table, $3 "tun" for a 0666 /dev/net/tun
#: (workers: as slurmd's jobs get, services.with_tun_node), then the command.
#: unshare without --fork and `exec` keep the pid: the recorded pid is the
#: daemon's own.
HOST_VIEW_SCRIPT = (
    'set -e; mount --bind "$2" /etc/hosts; hostname "$1"; '
    'd="${2%/*}/etc-default-gridengine"; '
    'if [ -e "$d" ] && [ -e /etc/default/gridengine ]; then '
    'mount --bind "$d" /etc/default/gridengine; fi; '
    'if [ "$3" = tun ]; then '
    "mount -t tmpfs -o mode=0755,size=16k,nosuid lab-tun /dev/net; "
    "mknod -m 0666 /dev/net/tun c 10 200; fi; "
    'shift 3; exec "$@"'
)


def sge_root(lab: L.LabLayout) -> Path:
    """The lab's own SGE_ROOT (links to Debian's binaries, the lab's cell)."""
    return lab.state_dir / "sge"


def hosts_file(lab: L.LabLayout) -> Path:
    return sge_root(lab) / "hosts"


def default_file(lab: L.LabLayout) -> Path:
    """The lab's /etc/default/gridengine (bind-mounted in each host view)."""
    return sge_root(lab) / "etc-default-gridengine"


def marker(lab: L.LabLayout) -> Path:
    """Exists while the lab's Grid Engine is up: login's sshd is wrapped."""
    return sge_root(lab) / "up.json"


def hosts_table(lab: L.LabLayout) -> str:
    """/etc/hosts as the Grid Engine hosts see it: the site's names only."""
    lines = ["127.0.0.1\tlocalhost", f"{L.LOGIN_SITE}\tlogin"]
    lines += [f"{lab.address(worker, 'site')}\t{worker}" for worker in lab.worker_hosts]
    return "\n".join(lines) + "\n"


def host_view(
    lab: L.LabLayout, host: str, argv: tuple[str, ...], tun: bool = False
) -> tuple[str, ...]:
    """`argv` run as lab host `host` (its name, the lab's host table)."""
    return (
        "unshare",
        "--mount",
        "--uts",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        HOST_VIEW_SCRIPT,
        "lab-host",
        host,
        str(hosts_file(lab)),
        "tun" if tun else "-",
        *argv,
    )
