"""A drone's private namespaces seen from the machine (issue 12, capture namespace).

A drone with `chain.capture: namespace` runs its ssh, redsocks and payload in
its own user + network + PID namespace (init = PID 1 there). Its pid files
hold PIDs of that namespace, which mean nothing (or another process!) on the
machine; tests that must signal, say, the tunnel's ssh map them to host PIDs
here, through the `NSpid:` line of /proc/PID/status (outermost first).

Also here: the wrapper that makes user namespaces unavailable to one command
(the fallback test) without touching the machine-wide setting, and the
listener view a test needs to show that nothing of a drone listens on the
worker. Only reads /proc; signals nothing.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class NsProcess:
    """One process of a drone's PID namespace (or one nested in it)."""

    host_pid: int
    #: its PID as the drone sees it (in the drone's PID namespace)
    ns_pid: int
    #: real uid on the machine
    uid: int
    argv: tuple[str, ...]


def _status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _ns_pid_chain(status: dict[str, str]) -> list[int]:
    return [int(x) for x in status.get("NSpid", "").split()]


def _argv(pid: int) -> tuple[str, ...]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ()
    return tuple(raw.rstrip(b"\0").decode(errors="replace").split("\0")) if raw else ()


def _environ_has(pid: int, entry: str) -> bool:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return entry.encode() in raw.split(b"\0")


def _pids() -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def ns_init_pid(drone_dir: str | Path) -> int | None:
    """Host PID of the drone's namespace init (PID 1 there), None if none runs.

    Found without trusting any file of the drone: a process that is PID 1 of a
    PID namespace and carries the drone's directory (TNA_NS_DIR in its
    environment, or the path in its command line). A cvmfsexec or container
    nested inside may be PID 1 of a deeper namespace with the same
    environment: the outermost one (shortest NSpid) is the drone's.
    """
    drone_dir = str(drone_dir).rstrip("/")
    best: tuple[int, int] | None = None
    for pid in _pids():
        chain = _ns_pid_chain(_status(pid))
        if len(chain) < 2 or chain[-1] != 1:
            continue
        if not (
            _environ_has(pid, f"TNA_NS_DIR={drone_dir}")
            or any(drone_dir in arg for arg in _argv(pid))
        ):
            continue
        if best is None or len(chain) < best[0]:
            best = (len(chain), pid)
    return None if best is None else best[1]


def ns_processes(drone_dir: str | Path) -> list[NsProcess]:
    """Every process of the drone's namespace: init and all its descendants."""
    init = ns_init_pid(drone_dir)
    if init is None:
        return []
    level = len(_ns_pid_chain(_status(init))) - 1
    parents: dict[int, int] = {}
    statuses: dict[int, dict[str, str]] = {}
    for pid in _pids():
        status = _status(pid)
        if status:
            statuses[pid] = status
            parents[pid] = int(status.get("PPid", "0"))
    found = []
    for pid, status in statuses.items():
        ancestor = pid
        while ancestor not in (0, 1, init):
            ancestor = parents.get(ancestor, 0)
        chain = _ns_pid_chain(status)
        if ancestor != init or len(chain) <= level:
            continue
        found.append(
            NsProcess(
                host_pid=pid,
                ns_pid=chain[level],
                uid=int(status.get("Uid", "0").split()[0]),
                argv=_argv(pid),
            )
        )
    return sorted(found, key=lambda p: p.ns_pid)


def ns_pids(drone_dir: str | Path) -> dict[int, int]:
    """The drone's namespace PIDs mapped to host PIDs ({ns_pid: host_pid})."""
    return {proc.ns_pid: proc.host_pid for proc in ns_processes(drone_dir)}


def host_pid(drone_dir: str | Path, ns_pid: int) -> int:
    """Host PID of the drone's process `ns_pid` (e.g. from its ssh pid file)."""
    mapping = ns_pids(drone_dir)
    if ns_pid not in mapping:
        raise LookupError(
            f"no process {ns_pid} in the namespace of {drone_dir}: {mapping}"
        )
    return mapping[ns_pid]


# -- user namespaces unavailable to one command ------------------------------

#: Inside a throwaway user namespace (whose root is the caller), set that
#: namespace's own max_user_namespaces to 1, then map back to the caller's
#: uid/gid in a child namespace: the command runs as itself, and every further
#: `unshare -U` below it fails with ENOSPC. 0 would also forbid the re-mapping
#: step. The machine-wide setting is never written; reading the sysctl inside
#: shows the machine's value, so products must probe by trying.
LIMIT_SCRIPT = (
    "echo 1 >/proc/sys/user/max_user_namespaces || exit 70; "
    'exec unshare -U --map-user="$1" --map-group="$2" -- "${@:3}"'
)


def userns_limited(argv: Sequence[str], uid: int, gid: int) -> list[str]:
    """`argv` run as uid/gid where no further user namespace can be created."""
    return [
        "unshare",
        "--user",
        "--map-root-user",
        "--",
        "bash",
        "-c",
        LIMIT_SCRIPT,
        "userns-limited",
        str(uid),
        str(gid),
        *argv,
    ]


def userns_limited_job(script: str, uid: int, gid: int) -> str:
    """A batch script that runs `script` (a rendered drone) under the limit.

    The drone script is written to a file in the job's /tmp first (the keeper
    wants to read its own script), run as a child (Slurm signals every process
    of the job on scancel) and removed afterwards.
    """
    inner = shlex.join(userns_limited([], uid, gid)) + ' bash "$f"'
    marker = "TNA_LIMITED_DRONE_EOF"
    if marker in script:
        raise ValueError(f"the script contains the heredoc marker {marker}")
    return (
        "#!/bin/bash\n"
        "# the drone below, run where user namespaces are unavailable to it\n"
        'f="${TMPDIR:-/tmp}/tna-limited.${SLURM_JOB_ID:-$$}.sh"\n'
        f"cat >\"$f\" <<'{marker}'\n{script.rstrip()}\n{marker}\n"
        "trap 'rm -f \"$f\"' EXIT\n"
        "trap 'exit 143' TERM\n"
        f"{inner}\n"
    )


# -- listeners ---------------------------------------------------------------


@dataclass(frozen=True)
class Listener:
    """A listening TCP socket of one network namespace (from /proc/PID/net/tcp)."""

    address: str
    port: int
    uid: int
    inode: int


def tcp_listeners(pid: int) -> list[Listener]:
    """TCP listeners (IPv4 and IPv6) of the network namespace `pid` is in."""
    found = []
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            hex_addr, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_addr)
            if len(raw) == 4:
                address = ".".join(str(b) for b in raw[::-1])
            else:
                address = ":".join(raw[i : i + 4][::-1].hex() for i in range(0, 16, 4))
            found.append(
                Listener(address, int(hex_port, 16), int(fields[7]), int(fields[9]))
            )
    return found


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets `pid` holds (root reads any process's fds)."""
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes
