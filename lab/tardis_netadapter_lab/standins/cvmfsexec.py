#!/usr/bin/python3
"""Stand-in for cvmfsexec, mountrepo and umountrepo (github.com/cvmfs/cvmfsexec).

One file, installed three times; it dispatches on the name it is run as:
  cvmfsexec [-v] [-N] [repo ...] -- [command ...]   (default command: $SHELL)
  mountrepo repo.name
  umountrepo [-z] {repo.name|-a}

Layout as in the real package: the distribution is the `dist` directory beside
the executable (env CVMFSEXEC_DIST overrides it); configuration is read from
dist/etc/cvmfs/{default.conf, default.d/*.conf, default.local,
domain.d/DOMAIN.{conf,local}, config.d/REPO.{conf,local}} (shell assignments,
later files win) and CVMFS_* environment variables win over all files.
Repositories appear under dist/cvmfs/REPO.

Honoured: what makes a site's proxy route matter. "Mounting" REPO fetches
<CVMFS_SERVER_URL>/.cvmfspublished (@fqrn@ and @org@ substituted) over HTTP
with urllib through CVMFS_HTTP_PROXY via an explicit ProxyHandler, trying
proxies in order (`;` separates fail-over groups, `|` members of a group;
DIRECT means no proxy) and then each `;`-separated server. The manifest must
look like one (a `C` root-catalog line; an `N` line, if any, naming REPO).
On success dist/cvmfs/REPO/ holds the manifest and a README. On failure:
stderr `Failed to mount REPO: REASON`, exit 16 (cvmfs's "file catalog
failure"); a missing CVMFS_HTTP_PROXY or CVMFS_SERVER_URL exits 2.
umountrepo removes what mountrepo made (exit 1 if REPO is not mounted).
cvmfsexec mounts the repositories (and CVMFS_CONFIG_REPOSITORY if set), runs
the command, forwards SIGTERM/SIGINT/SIGHUP to it, unmounts on exit and exits
with the command's status (128+N if it died of signal N). Like the real tool
it shows the repositories at /cvmfs in a private mount namespace (user
namespace when unprivileged): if /cvmfs exists it is bind-mounted over, else
the stand-in builds the real tool's "underlay" (every top-level directory
bind-mounted into a fresh root with a /cvmfs of its own, then pivot_root).
The command gets CVMFS_MOUNT_DIR=/cvmfs, CVMFSMOUNT and CVMFSUMOUNT (not with
-N). Where namespaces are unavailable (or TNA_CVMFSEXEC_NO_NAMESPACE=1) the
command runs unconfined with CVMFS_MOUNT_DIR=dist/cvmfs, and a note on stderr.

Not honoured: no FUSE, no catalogs, no file content beyond the manifest and
README, no signature checks, no cache, no WPAD (`auto` proxies are skipped),
no -m e2fs images, no pid namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Optional

VERSION = "4.51-standin"
EXIT_CATALOG = 16
EXIT_OPTIONS = 2
MARKER = ".cvmfs-standin.json"
ASSIGN = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
MS_RDONLY, MS_REC, MS_BIND, MS_PRIVATE = 1, 0x4000, 0x1000, 1 << 18
MNT_DETACH = 2
PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217}


class MountError(Exception):
    def __init__(self, message: str, code: int = EXIT_CATALOG) -> None:
        super().__init__(message)
        self.code = code


class Interrupted(Exception):
    """A stop signal arrived while cvmfsexec was still mounting."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def here() -> str:
    return os.path.abspath(os.path.dirname(sys.argv[0]))


def dist_dir() -> str:
    return os.environ.get("CVMFSEXEC_DIST") or os.path.join(here(), "dist")


# -- configuration --------------------------------------------------------------
def _unquote(value: str, known: dict[str, str]) -> str:
    value = value.strip()
    if value[:1] == "'" and value.endswith("'") and len(value) > 1:
        return value[1:-1]
    value = re.sub(r"\s+#.*$", "", value)
    if value[:1] == '"' and value.endswith('"') and len(value) > 1:
        value = value[1:-1]

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return known.get(name, os.environ.get(name, ""))

    return re.sub(
        r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", lookup, value
    )


def read_config(repo: str) -> dict[str, str]:
    """cvmfs's file order, then CVMFS_* environment variables on top."""
    etc = os.path.join(dist_dir(), "etc", "cvmfs")
    domain = repo.split(".", 1)[1] if "." in repo else repo
    files = [os.path.join(etc, "default.conf")]
    default_d = os.path.join(etc, "default.d")
    if os.path.isdir(default_d):
        files += [
            os.path.join(default_d, name)
            for name in sorted(os.listdir(default_d))
            if name.endswith(".conf")
        ]
    files += [os.path.join(etc, "default.local")]
    for sub, name in (("domain.d", domain), ("config.d", repo)):
        files += [
            os.path.join(etc, sub, f"{name}.conf"),
            os.path.join(etc, sub, f"{name}.local"),
        ]
    values: dict[str, str] = {}
    for path in files:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                lines = handle.read().splitlines()
        except OSError:
            continue
        for line in lines:
            match = ASSIGN.match(line)
            if match and not line.lstrip().startswith("#"):
                values[match.group(1)] = _unquote(match.group(2), values)
    values.update({k: v for k, v in os.environ.items() if k.startswith("CVMFS_")})
    return values


def proxy_list(spec: str) -> list[str]:
    """CVMFS_HTTP_PROXY: `;` separates fail-over groups, `|` group members."""
    proxies = []
    for group in spec.split(";"):
        for member in group.split("|"):
            member = member.strip()
            if not member or member.lower() == "auto":
                continue
            if member.upper() == "DIRECT":
                proxies.append("DIRECT")
            else:
                proxies.append(member if "://" in member else f"http://{member}")
    return proxies


def fetch_manifest(repo: str, config: dict[str, str]) -> tuple[bytes, str, str]:
    """Return (manifest, url, proxy) from the first proxy/server pair that works."""
    servers = [
        s.strip() for s in config.get("CVMFS_SERVER_URL", "").split(";") if s.strip()
    ]
    if not servers:
        raise MountError("CVMFS_SERVER_URL is not set", EXIT_OPTIONS)
    if not config.get("CVMFS_HTTP_PROXY", "").strip():
        raise MountError("CVMFS_HTTP_PROXY is not set", EXIT_OPTIONS)
    proxies = proxy_list(config["CVMFS_HTTP_PROXY"])
    if not proxies:
        raise MountError("no usable proxy in CVMFS_HTTP_PROXY (WPAD is not supported)")
    org = repo.split(".", 1)[0]
    errors = []
    for proxy in proxies:
        direct = proxy == "DIRECT"
        handler = urllib.request.ProxyHandler({} if direct else {"http": proxy})
        opener = urllib.request.build_opener(handler)
        timeout = float(
            config.get("CVMFS_TIMEOUT_DIRECT" if direct else "CVMFS_TIMEOUT", 0)
        )
        timeout = timeout or (10.0 if direct else 5.0)
        for server in servers:
            base = server.replace("@fqrn@", repo).replace("@org@", org).rstrip("/")
            url = f"{base}/.cvmfspublished"
            try:
                with opener.open(url, timeout=timeout) as response:
                    data = response.read(1 << 20)
                check_manifest(repo, data)
                return data, url, proxy
            except urllib.error.HTTPError as exc:
                errors.append(f"{url} via {proxy}: HTTP {exc.code} {exc.reason}")
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", None) or exc
                errors.append(f"{url} via {proxy}: {reason}")
    raise MountError("; ".join(errors))


def check_manifest(repo: str, data: bytes) -> None:
    lines = data.decode("latin-1").split("\n--\n", 1)[0].splitlines()
    if not any(line.startswith("C") and len(line) > 1 for line in lines):
        raise ValueError("not a repository manifest (no root catalog line)")
    names = [line[1:].strip() for line in lines if line.startswith("N")]
    if names and names[0] != repo:
        raise ValueError(f"manifest is for {names[0]}, not {repo}")


# -- mountrepo / umountrepo --------------------------------------------------------
def mountpoint(repo: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", repo):
        raise MountError(f"invalid repository name {repo!r}", EXIT_OPTIONS)
    return os.path.join(dist_dir(), "cvmfs", repo)


def read_marker(path: str) -> Optional[dict]:
    try:
        with open(os.path.join(path, MARKER), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def mount(repo: str) -> str:
    """Fetch the manifest through the proxy and materialise dist/cvmfs/REPO."""
    target = mountpoint(repo)
    data, url, proxy = fetch_manifest(repo, read_config(repo))
    old = read_marker(target)
    session = os.environ.get("CVMFSEXEC_SESSION", "")
    owner = old.get("session", "") if old else session
    os.makedirs(target, exist_ok=True)
    with open(os.path.join(target, ".cvmfspublished"), "wb") as handle:
        handle.write(data)
    with open(os.path.join(target, "README"), "w", encoding="utf-8") as handle:
        handle.write(
            f"{repo}: cvmfsexec stand-in mount (no file content).\n"
            f"manifest: {url}\nproxy: {proxy}\nmounted: {time.ctime()}\n"
        )
    marker = {"repo": repo, "url": url, "proxy": proxy, "session": owner}
    with open(os.path.join(target, MARKER), "w", encoding="utf-8") as handle:
        json.dump(dict(marker, mounted_at=time.time()), handle)
    return target


def umount(repo: str) -> None:
    target = mountpoint(repo)
    if read_marker(target) is None:
        raise MountError(f"fusermount: entry for {target} not found in /etc/mtab", 1)
    print(f"Unmounting {target}")
    shutil.rmtree(target, ignore_errors=True)


def mounted_repos() -> list[str]:
    base = os.path.join(dist_dir(), "cvmfs")
    if not os.path.isdir(base):
        return []
    return sorted(r for r in os.listdir(base) if read_marker(os.path.join(base, r)))


def mountrepo_main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("Usage: mountrepo repo.name", file=sys.stderr)
        return 1
    repo = argv[0]
    try:
        target = mount(repo)
    except MountError as exc:
        print(f"Failed to mount {repo}: {exc}", file=sys.stderr)
        return exc.code
    except OSError as exc:
        print(f"Failed to mount {repo}: {exc}", file=sys.stderr)
        return EXIT_CATALOG
    print("CernVM-FS: loading Fuse module... done")
    print(f"CernVM-FS: mounted cvmfs on {target}")
    return 0


def umountrepo_main(argv: list[str]) -> int:
    if argv[:1] == ["-z"]:
        argv = argv[1:]
    if len(argv) != 1:
        print("Usage: umountrepo [-z] {repo.name|-a}", file=sys.stderr)
        return 1
    repos = mounted_repos() if argv[0] == "-a" else argv
    status = 0
    for repo in repos:
        try:
            umount(repo)
        except MountError as exc:
            print(str(exc), file=sys.stderr)
            status = exc.code
    return status


# -- cvmfsexec -----------------------------------------------------------------------
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(libc: ctypes.CDLL, src: Optional[str], dst: str, flags: int) -> None:
    _check(
        libc.mount(src and src.encode(), dst.encode(), None, flags, None),
        f"mount {src} on {dst}",
    )


def enter_namespace(libc: ctypes.CDLL) -> None:
    """Private mount namespace; a user namespace first when not root."""
    uid, gid = os.geteuid(), os.getegid()
    flags = CLONE_NEWNS if uid == 0 else CLONE_NEWNS | CLONE_NEWUSER
    _check(libc.unshare(flags), "unshare")
    if uid != 0:
        with open("/proc/self/setgroups", "w") as handle:
            handle.write("deny")
        with open("/proc/self/uid_map", "w") as handle:
            handle.write(f"{uid} {uid} 1")
        with open("/proc/self/gid_map", "w") as handle:
            handle.write(f"{gid} {gid} 1")
    _mount(libc, None, "/", MS_REC | MS_PRIVATE)


def underlay(libc: ctypes.CDLL, repos_dir: str, newroot: str) -> None:
    """The real cvmfsexec's trick: a new root with every / entry bound, own /cvmfs."""
    _mount(libc, newroot, newroot, MS_BIND | MS_REC)
    for name in os.listdir("/"):
        if name == "cvmfs":
            continue
        source, target = f"/{name}", os.path.join(newroot, name)
        if os.path.islink(source):
            os.symlink(os.readlink(source), target)
        elif os.path.isdir(source):
            os.mkdir(target)
            _mount(libc, source, target, MS_BIND | MS_REC)
        else:
            open(target, "a").close()
            _mount(libc, source, target, MS_BIND)
    os.mkdir(os.path.join(newroot, "cvmfs"))
    _mount(libc, repos_dir, os.path.join(newroot, "cvmfs"), MS_BIND | MS_REC)
    number = PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise OSError(f"pivot_root: unknown syscall number on {platform.machine()}")
    cwd = os.getcwd()
    os.chdir(newroot)
    os.mkdir(".old-root")
    _check(libc.syscall(number, b".", b".old-root"), "pivot_root")
    os.chdir("/")
    libc.umount2(b"/.old-root", MNT_DETACH)
    try:
        os.chdir(cwd)
    except OSError:
        os.chdir("/")


def clean_scaffold(path: str) -> None:
    """Remove the underlay's empty mount points; never anything with content."""
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            full = os.path.join(root, name)
            if os.path.islink(full) or os.path.getsize(full) == 0:
                os.unlink(full)
        for name in dirs:
            full = os.path.join(root, name)
            if os.path.islink(full):
                os.unlink(full)
            else:
                with contextlib.suppress(OSError):
                    os.rmdir(full)
    with contextlib.suppress(OSError):
        os.rmdir(path)


def run_child(command: list[str], env: dict[str, str], scaffold: str) -> None:
    """In the forked child: build the /cvmfs view, then exec the command."""
    repos_dir = os.path.join(dist_dir(), "cvmfs")
    confined = os.environ.get("TNA_CVMFSEXEC_NO_NAMESPACE") != "1"
    if confined:
        try:
            libc = _libc()
            enter_namespace(libc)
            if os.path.isdir("/cvmfs") and not os.path.islink("/cvmfs"):
                _mount(libc, repos_dir, "/cvmfs", MS_BIND | MS_REC)
            else:
                underlay(libc, repos_dir, scaffold)
            env["CVMFS_MOUNT_DIR"] = "/cvmfs"
        except OSError as exc:
            print(f"cvmfsexec stand-in: no private /cvmfs ({exc})", file=sys.stderr)
            confined = False
    if not confined:
        env["CVMFS_MOUNT_DIR"] = repos_dir
        print(
            f"cvmfsexec stand-in: repositories are under {repos_dir} "
            "(CVMFS_MOUNT_DIR), not /cvmfs",
            file=sys.stderr,
        )
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        print(f"cvmfsexec: {command[0]}: {exc.strerror}", file=sys.stderr)
        os._exit(127)


def cvmfsexec_main(argv: list[str]) -> int:
    usage = "Usage: cvmfsexec [-vN] [repo ...] -- [command]"
    nesting = True
    while argv and argv[0].startswith("-") and argv[0] != "--":
        option = argv.pop(0)
        for letter in option[1:]:
            if letter == "v":
                print(VERSION)
                return 0
            if letter == "N":
                nesting = False
            else:
                print(usage, file=sys.stderr)
                return 1
    if "--" not in argv:
        print(usage, file=sys.stderr)
        return 1
    split = argv.index("--")
    repos = list(dict.fromkeys(argv[:split]))
    command = argv[split + 1 :] or [os.environ.get("SHELL", "/bin/sh")]
    config_repo = read_config("").get("CVMFS_CONFIG_REPOSITORY")
    if config_repo and config_repo not in repos:
        repos.insert(0, config_repo)

    session = str(os.getpid())
    os.environ["CVMFSEXEC_SESSION"] = session
    mine: list[str] = []

    def interrupted(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, interrupted)
    try:
        for repo in repos:
            target = mountpoint(repo)
            fresh = read_marker(target) is None
            try:
                mount(repo)
            except (MountError, OSError) as exc:
                print(f"Failed to mount {repo}: {exc}", file=sys.stderr)
                for done in reversed(mine):
                    umount_quietly(done)
                return getattr(exc, "code", EXIT_CATALOG)
            if fresh:
                mine.append(repo)
    except Interrupted as stop:
        for done in reversed(mine):
            umount_quietly(done)
        return 128 + stop.signum
    except MountError as exc:
        print(f"Failed to mount: {exc}", file=sys.stderr)
        return exc.code

    env = dict(os.environ)
    if nesting:
        env["CVMFSMOUNT"] = os.path.join(here(), "mountrepo")
        env["CVMFSUMOUNT"] = os.path.join(here(), "umountrepo")
    scaffold = tempfile.mkdtemp(prefix="cvmfsexec-root-")
    pid = os.fork()
    if pid == 0:
        try:
            run_child(command, env, scaffold)
        finally:
            os._exit(127)

    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    clean_scaffold(scaffold)
    for repo in mounted_repos():
        marker = read_marker(os.path.join(dist_dir(), "cvmfs", repo)) or {}
        if repo in mine or marker.get("session") == session:
            umount_quietly(repo)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def umount_quietly(repo: str) -> None:
    with contextlib.suppress(MountError):
        shutil.rmtree(mountpoint(repo), ignore_errors=True)


def main() -> int:
    name = os.path.basename(sys.argv[0])
    argv = sys.argv[1:]
    if name.startswith("mountrepo"):
        return mountrepo_main(argv)
    if name.startswith("umountrepo"):
        return umountrepo_main(argv)
    return cvmfsexec_main(argv)


if __name__ == "__main__":
    sys.exit(main())
