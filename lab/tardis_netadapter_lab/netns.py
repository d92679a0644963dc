"""Run things inside lab namespaces and find, check and stop lab processes.

Safety: every command that may send a packet to a lab address runs through
`in_namespace`, and processes are only ever signalled by pid after checking
that they live in one of the lab's namespaces (or match a recorded start time).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

NETNS_DIR = Path("/run/netns")


class LabCommandError(RuntimeError):
    """A setup command failed; carries its output so the cause is visible."""


def check_call(argv: Sequence[str], *, input: str | None = None) -> str:
    """Run a setup command (no shell), raise with its stderr when it fails."""
    result = subprocess.run(
        list(argv), input=input, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise LabCommandError(
            f"{' '.join(argv)} failed ({result.returncode}): "
            f"{(result.stderr or result.stdout).strip()}"
        )
    return result.stdout


def in_namespace(
    namespace_path: Path, argv: Sequence[str], user: str | None = None
) -> list[str]:
    """Argv that runs `argv` in a network namespace, optionally as `user`.

    nsenter (not `ip netns exec`) keeps /sys and the cgroup tree visible, which
    slurmd needs; setpriv drops to the user without PAM or a login shell.
    """
    prefix = ["nsenter", f"--net={namespace_path}", "--"]
    if user is not None:
        prefix += ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"]
    return prefix + list(argv)


def user_env(user: str | None, base: dict[str, str]) -> dict[str, str]:
    """A clean environment for `user` (root when None) on top of `base`."""
    entry = pwd.getpwnam(user or "root")
    env = {
        "HOME": entry.pw_dir,
        "USER": entry.pw_name,
        "LOGNAME": entry.pw_name,
        "SHELL": entry.pw_shell or "/bin/sh",
        "LANG": "C.UTF-8",
    }
    env.update(base)
    return env


def namespace_ids(paths: Iterable[Path]) -> dict[tuple[int, int], Path]:
    """Device/inode identity of each namespace file that exists."""
    ids = {}
    for path in paths:
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            continue
        ids[(stat.st_dev, stat.st_ino)] = path
    return ids


def pids_in_namespaces(paths: Iterable[Path]) -> list[int]:
    """Pids of every process whose network namespace is one of `paths`."""
    wanted = namespace_ids(paths)
    if not wanted:
        return []
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:
            continue
        if (stat.st_dev, stat.st_ino) in wanted:
            found.append(int(entry.name))
    return found


def pids_of_uids(uids: Iterable[int]) -> list[int]:
    """Pids of every process whose real uid is one of `uids`.

    For the lab's own users only: a drone in a private network namespace
    (issue 12) is in none of the lab's namespaces, but all its processes
    (namespace root included) run as the lab's drone user on the machine.
    """
    wanted = {str(uid) for uid in uids}
    if not wanted:
        return []
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry.name}/status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("Uid:"):
                if line.split()[1] in wanted:
                    found.append(int(entry.name))
                break
    return found


def start_time(pid: int) -> int | None:
    """Kernel start time of a pid (field 22 of /proc/PID/stat), None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return int(fields[19])


def is_alive(pid: int) -> bool:
    """True for a running (not zombie) process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return raw.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def reap(pid: int) -> None:
    """Collect an exited child of ours so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def terminate(pids: Iterable[int], grace: float = 1.5) -> None:
    """SIGTERM the given pids, SIGKILL whatever is left after `grace` seconds."""
    pids = [pid for pid in pids if pid > 1 and pid != os.getpid()]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        for pid in pids:
            reap(pid)
        if not any(is_alive(pid) for pid in pids):
            return
        time.sleep(0.05)
    for pid in pids:
        if is_alive(pid):
            _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and any(is_alive(pid) for pid in pids):
        for pid in pids:
            reap(pid)
        time.sleep(0.02)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def listening_ports(pid: int, protocol: str = "tcp") -> set[tuple[str, int]]:
    """(address, port) of TCP listeners (or bound, unconnected UDP sockets,
    ``protocol="udp"``) in the network namespace of `pid`.

    Reads /proc/PID/net/tcp (udp), which shows the sockets of that process's
    network namespace: readiness checks without sending any packet.
    """
    try:
        lines = Path(f"/proc/{pid}/net/{protocol}").read_text().splitlines()[1:]
    except OSError:
        return set()
    # TCP_LISTEN; for UDP TCP_CLOSE (07) is an unconnected, bound socket
    wanted = "0A" if protocol == "tcp" else "07"
    found = set()
    for line in lines:
        fields = line.split()
        if fields[3] != wanted:
            continue
        hex_addr, hex_port = fields[1].split(":")
        raw = bytes.fromhex(hex_addr)[::-1]
        found.add((".".join(str(byte) for byte in raw), int(hex_port, 16)))
    return found


def is_listening(pid: int, address: str, port: int, protocol: str = "tcp") -> bool:
    listeners = listening_ports(pid, protocol)
    return (address, port) in listeners or ("0.0.0.0", port) in listeners
