#!/usr/bin/python3
"""The privileged half of the lab's site-local apptainer (`--net --network`).

Started only by the setuid-root C shim ``libexec/apptainer/bin/starter-suid``
(see cnet.py), which clears the environment, becomes root fully and execs
``python3 -I`` on this root-owned file with the caller's real uid and gid as
the first two arguments (taken from getuid()/getgid(), never from the caller).
It does what apptainer's starter-suid does for a network request:

1. checks apptainer.conf: ``allow setuid = yes``, the network in ``allow net
   networks``, the caller in ``allow net users`` or one of its groups in ``allow
   net groups`` (root may always); otherwise apptainer's own FATAL (and for a
   network not listed its ERROR line first), exit 255;
2. collects leases whose holder is gone (CNI DEL, e.g. after a SIGKILL);
3. forks the container process, which unshares a new network namespace;
4. runs CNI ADD of every plugin of the network configuration named NAME in
   ``cni configuration path`` (default <prefix>/etc/apptainer/network) with the
   plugins in ``cni plugin path`` (the lab: /usr/lib/cni), CNI_* environment,
   the network config on stdin;
5. lets the child drop to the caller's uid/gid/groups and exec the (unprivileged)
   apptainer stand-in with the caller's environment and the remaining options;
6. waits, forwarding SIGTERM/SIGINT/SIGHUP, then runs CNI DEL with the
   namespace it held open since ADD (so the macvlan link goes even when strays
   of the container keep the namespace alive). The namespace ends with its
   last process.

The container ID of each lease is ``apptainer-<pid>-<start time>-<uid>`` (this
process, the caller), so a later start (or the lab's teardown) can tell that the holder
is gone. The container process dies with its holder (parent-death signal).

Usage (from the shim): starter UID GID NETWORK ENV_FD [--network-args A]... -- ARGV...
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pwd
import re
import signal
import subprocess
import sys
from pathlib import Path

CNI_PATH = "/usr/lib/cni"
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
CONTAINER_IFNAME = "eth0"
ID_RE = re.compile(r"^apptainer-(\d+)-(\d+)-(\d+)$")  # holder pid, start, uid
ARG_RE = re.compile(r"^[A-Za-z0-9_]+=[A-Za-z0-9_.:/,-]*$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SAFE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class Fatal(Exception):
    """apptainer's FATAL: message on stderr, exit 255."""


def install_root() -> Path:
    """<prefix> of the installation: this file is <prefix>/libexec/apptainer/."""
    return Path(__file__).resolve().parent.parent.parent


def sysconfdir(root: Path) -> Path:
    return root / "etc" / "apptainer"


def lease_dir(root: Path) -> Path:
    return root / "var" / "lib" / "cni" / "networks"


def read_conf(path: Path) -> dict[str, list[str]]:
    """apptainer.conf as `key -> values` (comma separated lists split)."""
    values: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" not in line:
            continue
        key, _, value = line.partition("=")
        items = [item.strip() for item in value.split(",") if item.strip()]
        values.setdefault(key.strip().lower(), []).extend(items)
    return values


#: apptainer's own words (container_linux.go, prepareNetworkSetup)
NOT_PERMITTED = "Network {} is not permitted for unprivileged users."
REQUIRES_ROOT = (
    "container creation failed: network requires root or a suid installation "
    "with /etc/subuid --fakeroot; non-root users can only use --network=none "
    "unless permitted by the administrator"
)


def check_allowed(conf: dict[str, list[str]], uid: int, gid: int, network: str) -> None:
    """apptainer's policy for unprivileged network requests (root may always):
    the caller in `allow net users` or one of its groups in `allow net groups`,
    and every requested network in `allow net networks`."""
    if conf.get("allow setuid", ["yes"])[-1].lower() != "yes":
        raise Fatal(REQUIRES_ROOT)
    if uid == 0:
        return
    import grp

    entry = pwd.getpwuid(uid)
    groups = {gid, *os.getgrouplist(entry.pw_name, gid)}
    group_names = {str(group) for group in groups}
    for group in groups:
        with contextlib.suppress(KeyError):
            group_names.add(grp.getgrgid(group).gr_name)
    users = set(conf.get("allow net users", []))
    user_ok = entry.pw_name in users or str(uid) in users
    group_ok = bool(group_names & set(conf.get("allow net groups", [])))
    network_ok = network in conf.get("allow net networks", [])
    if not network_ok:
        print(f"ERROR:   {NOT_PERMITTED.format(network)}", file=sys.stderr)
    if not ((user_ok or group_ok) and network_ok):
        raise Fatal(REQUIRES_ROOT)


def cni_paths(root: Path, conf: dict[str, list[str]]) -> tuple[Path, str]:
    """`cni configuration path` and `cni plugin path` of apptainer.conf, with
    apptainer's defaults (<sysconfdir>/apptainer/network, <libexec>/apptainer/cni)."""
    confdir = conf.get("cni configuration path", [])
    plugins = conf.get("cni plugin path", [])
    return (
        Path(confdir[-1]) if confdir else sysconfdir(root) / "network",
        plugins[-1] if plugins else str(root / "libexec" / "apptainer" / "cni"),
    )


def load_conflist(root: Path, network: str) -> dict:
    """The network configuration named `network` in the CNI configuration dir
    (as libcni finds it: by the `name` inside, NAME.conflist tried first)."""
    conf = read_conf(sysconfdir(root) / "apptainer.conf")
    confdir, plugin_path = cni_paths(root, conf)
    candidates = [confdir / f"{network}.conflist"]
    if confdir.is_dir():
        candidates += sorted(
            p for p in confdir.iterdir() if p.suffix in (".conflist", ".conf", ".json")
        )
    for path in candidates:
        try:
            conflist = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if conflist.get("name") != network:
            continue
        if "plugins" not in conflist:  # a single-plugin .conf
            conflist = {
                "name": network,
                "cniVersion": conflist.get("cniVersion", "1.0.0"),
                "plugins": [conflist],
            }
        conflist["_plugin_path"] = plugin_path
        return conflist
    raise Fatal(
        "container creation failed: network setup failed: "
        f'no net configuration with name "{network}" in {confdir}'
    )


def cni(
    conflist: dict,
    command: str,
    container_id: str,
    netns: str,
    ifname: str,
    cni_args: str = "",
) -> dict | None:
    """Run CNI `command` (ADD/DEL) through every plugin; the last result."""
    plugins = list(conflist["plugins"])
    if command == "DEL":
        plugins.reverse()
    result = None
    for plugin in plugins:
        config = {k: v for k, v in plugin.items() if k != "_plugin_path"}
        config["name"] = conflist["name"]
        config["cniVersion"] = conflist.get("cniVersion", "1.0.0")
        if command == "ADD" and result is not None:
            config["prevResult"] = result
        env = {
            "PATH": SAFE_PATH,
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": netns,
            "CNI_IFNAME": ifname,
            "CNI_PATH": conflist.get("_plugin_path", CNI_PATH),
        }
        if cni_args:
            env["CNI_ARGS"] = cni_args
        binary = os.path.join(env["CNI_PATH"], str(config["type"]))
        done = subprocess.run(
            [binary],
            input=json.dumps(config),
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if done.returncode != 0:
            raise Fatal(
                f"plugin type={config['type']!r} failed ({command}): "
                f"{(done.stdout or done.stderr).strip()}"
            )
        if command == "ADD" and done.stdout.strip():
            result = json.loads(done.stdout)
    return result


def start_time(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(raw.rsplit(")", 1)[1].split()[19])


def leases(root: Path, network: str | None = None) -> list[Path]:
    """Lease files of host-local IPAM (one per address; not its lock/last files)."""
    base = lease_dir(root)
    nets = [base / network] if network else sorted(base.glob("*"))
    found = []
    for net in nets:
        if net.is_dir():
            found += [
                p
                for p in sorted(net.iterdir())
                if p.name != "lock" and not p.name.startswith("last_reserved_ip")
            ]
    return found


def netns_holding(address: str, uid: int) -> str:
    """A /proc/PID/ns/net of a process of `uid` (the container's user) whose
    namespace still has `address` as a local address (strays of a killed
    container), or "" when none has. Only the caller's own processes: another
    lab's containers may hold the same address in namespaces of their own.

    Read from each namespace's /proc/PID/net/fib_trie (once per namespace):
    no packet is sent and no namespace entered."""
    if uid == 0:
        return ""
    seen = set()
    pattern = re.compile(rf"\|-- {re.escape(address)}\n\s+/32 host LOCAL")
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        path = f"/proc/{entry.name}/ns/net"
        try:
            if os.stat(f"/proc/{entry.name}").st_uid != uid:
                continue
            info = os.stat(path)
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            with open(f"/proc/{entry.name}/net/fib_trie") as handle:
                if pattern.search(handle.read()):
                    return path
        except OSError:
            continue
    return ""


def collect_stale(root: Path) -> list[str]:
    """CNI DEL for every lease whose holder (pid + start time) is gone; in the
    namespace that still has the address, if any, so its link goes too."""
    collected = []
    for lease in leases(root):
        try:
            holder, _, ifname = lease.read_text().partition("\n")
        except OSError:
            continue
        match = ID_RE.match(holder.strip())
        if not match:
            continue
        pid, started, uid = (int(group) for group in match.groups())
        if start_time(pid) == started:
            continue
        network = lease.parent.name
        try:
            conflist = load_conflist(root, network)
            netns = netns_holding(lease.name, uid)
            cni(conflist, "DEL", holder.strip(), netns, ifname.strip() or "eth0")
        except Fatal as exc:
            print(f"WARNING: could not collect {lease}: {exc}", file=sys.stderr)
            continue
        collected.append(lease.name)
    return collected


def run(argv: list[str]) -> int:
    uid, gid = int(argv[0]), int(argv[1])
    network, env_fd = argv[2], int(argv[3])
    rest = argv[4:]
    net_args: list[str] = []
    while rest and rest[0] == "--network-args":
        net_args.append(rest[1])
        rest = rest[2:]
    if not rest or rest[0] != "--":
        raise Fatal("starter: malformed request")
    container_argv = rest[1:]
    if not NAME_RE.match(network):
        raise Fatal(f"network {network!r}: not a valid network name")
    cni_items = []
    for spec in net_args:
        for item in spec.split(";"):
            if item and not ARG_RE.match(item):
                raise Fatal(f"--network-args {item!r}: use KEY=VALUE")
            if item:
                cni_items.append(item)
    root = install_root()
    check_allowed(read_conf(sysconfdir(root) / "apptainer.conf"), uid, gid, network)
    conflist = load_conflist(root, network)
    with os.fdopen(env_fd, "rb") as handle:
        env = dict(
            item.split("=", 1)
            for item in handle.read().decode().split("\0")
            if "=" in item
        )
    collect_stale(root)

    container_id = f"apptainer-{os.getpid()}-{start_time(os.getpid())}-{uid}"
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(to_child_w)
        os.close(to_parent_r)
        _child(to_child_r, to_parent_w, uid, gid, env, root, container_argv)
    os.close(to_child_r)
    os.close(to_parent_w)
    if os.read(to_parent_r, 1) != b"r":
        os.waitpid(child, 0)
        raise Fatal("could not create the container's network namespace")
    cni_args = ";".join(["IgnoreUnknown=1", *cni_items]) if cni_items else ""
    try:
        result = cni(
            conflist,
            "ADD",
            container_id,
            f"/proc/{child}/ns/net",
            CONTAINER_IFNAME,
            cni_args,
        )
    except Fatal:
        os.write(to_child_w, b"x")
        os.waitpid(child, 0)
        with contextlib.suppress(Fatal):
            cni(conflist, "DEL", container_id, "", CONTAINER_IFNAME, cni_args)
        raise
    # hold the container's netns (as apptainer binds it into its session dir):
    # DEL then also removes the link, even if strays of the container keep
    # the namespace alive after its main process ended
    netns_fd = os.open(f"/proc/{child}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    address = ",".join(ip["address"] for ip in (result or {}).get("ips", []))
    if container_argv[:1] != ["-q"]:
        print(f"INFO:    network {network}: {address or 'no address'}", file=sys.stderr)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: _forward(child, signum))
    os.write(to_child_w, b"g")
    os.close(to_child_w)
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    held = f"/proc/{os.getpid()}/fd/{netns_fd}"
    with contextlib.suppress(Fatal):
        cni(conflist, "DEL", container_id, held, CONTAINER_IFNAME, cni_args)
    os.close(netns_fd)
    return os.waitstatus_to_exitcode(status) % 256


def _forward(child: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(child, signum)


def _child(
    from_parent: int,
    to_parent: int,
    uid: int,
    gid: int,
    env: dict[str, str],
    root: Path,
    argv: list[str],
) -> None:
    """The container process: new netns, wait for CNI, drop privileges, exec."""
    code = 255
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        parent = os.getppid()
        if libc.unshare(CLONE_NEWNET) != 0:
            os._exit(255)
        subprocess.run(["ip", "link", "set", "lo", "up"], env={"PATH": SAFE_PATH})
        os.write(to_parent, b"r")
        if os.read(from_parent, 1) != b"g":
            os._exit(255)
        entry = pwd.getpwuid(uid)
        os.setgroups(os.getgrouplist(entry.pw_name, gid))
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        # set after the uid change (which clears it): dies with its holder
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(255)
        apptainer = str(root / "bin" / "apptainer")
        os.execve(apptainer, [apptainer, *argv], env)
    except BaseException as exc:  # noqa: BLE001 - the child must never return
        with contextlib.suppress(Exception):
            print(f"FATAL:   container process: {exc}", file=sys.stderr)
    os._exit(code)


def main() -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        if len(sys.argv) >= 2 and sys.argv[1] == "--collect":
            for name in collect_stale(install_root()):
                print(name)
            return 0
        return run(sys.argv[1:])
    except Fatal as exc:
        print(f"FATAL:   {exc}", file=sys.stderr)
        return 255


if __name__ == "__main__":
    sys.exit(main())
