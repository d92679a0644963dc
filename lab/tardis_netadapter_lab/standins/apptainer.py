#!/usr/bin/python3
"""Stand-in for `apptainer` / `singularity` (exec, run, shell).

Usage:
  apptainer [-q|-s|-d|-v] exec [options] IMAGE COMMAND [ARGS...]
  apptainer [-q|-s|-d|-v] run  [options] IMAGE [ARGS...]
  apptainer [-q|-s|-d|-v] shell [options] IMAGE
  apptainer version | --version
  apptainer buildcfg [KEY]
Options: -B/--bind SRC[:DST[:ro|rw]][,...] (repeatable; also APPTAINER_BIND /
SINGULARITY_BIND), --env K=V[,K2=V2] (repeatable; one CSV record, as pflag
parses it), --env-file F, -e/--cleanenv, -c/--contain, -C/--containall,
--no-home, --nv, --rocm, --pwd DIR, --net, --network NAME[,NAME],
--network-args KEY=VALUE (repeatable); accepted and ignored: -H/--home, -W/--workdir,
--writable-tmpfs, -i/--ipc, -p/--pid, -u/--userns, --no-mount. Options end at
IMAGE, as in apptainer.

Honoured: COMMAND runs in a private mount namespace (a user namespace first
when unprivileged, the current uid/gid mapped to themselves, as apptainer's
unprivileged mode does) where every bind is applied (read-only with :ro).
A missing SRC or a DST that does not exist and cannot be created fails with
apptainer's "FATAL: container creation failed: mount hook function failure".
--env/--env-file/APPTAINERENV_* set variables; the host environment passes
through unless --cleanenv (then only HOME, USER, LOGNAME, TERM, LANG, LC_ALL
and a default PATH survive). APPTAINER_CONTAINER/SINGULARITY_CONTAINER and
APPTAINER_NAME/SINGULARITY_NAME are set. --contain mounts empty tmpfs
directories over $HOME and /tmp (bind sources are opened first, so they stay
reachable), i.e. no host $HOME. --nv logs that the host's NVIDIA libraries
would be bound (there is no GPU here) and sets APPTAINER_NV=1; --rocm does
the same for AMD's ROCm libraries and /dev/kfd, /dev/dri, APPTAINER_ROCM=1.
--net (network NAME, default "bridge"; --network-args as CNI_ARGS) hands over
to the installation's setuid starter, libexec/apptainer/bin/starter-suid
beside this file's bin/ (the lab's site-local apptainer, cnet.py): it checks
apptainer.conf's allow net users/groups/networks, creates the container's
network namespace, runs CNI ADD with the real plugins and the installation's
network/NAME.conflist, drops to the caller and runs the container there, and
runs CNI DEL when it ends. Without a starter-suid (the plain stand-in on the
lab's PATH) --net fails as an unprivileged apptainer does. The command
replaces the stand-in (exec), so its exit status is apptainer's; the
stand-in's own failures exit 255, as apptainer's do.

Not honoured: there is no image root file system. IMAGE must exist (a file or
a directory; docker://, library://, oras:// and shub:// are refused) but
COMMAND runs on the host's file system with the binds; a missing DST is
therefore created on the host file system when the user may do so (apptainer
would create it in its session overlay). `run` executes
IMAGE/.singularity.d/runscript (directory images only). No SIF, no overlays,
no fakeroot, no instances, no cgroups, no GPU.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import os
import sys
from typing import Optional

VERSION = "1.3.4-standin"
CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 0x1000, 0x4000, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
STATVFS_TO_MS = {
    1: MS_RDONLY,
    2: MS_NOSUID,
    4: MS_NODEV,
    8: MS_NOEXEC,
    1024: MS_NOATIME,
    2048: MS_NODIRATIME,
    4096: MS_RELATIME,
}
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CLEANENV_KEEP = ("HOME", "USER", "LOGNAME", "TERM", "LANG", "LC_ALL")
REMOTE_IMAGES = ("docker://", "library://", "oras://", "shub://", "docker-archive:")
WITH_VALUE = {
    "-B": "bind",
    "--bind": "bind",
    "--env": "env",
    "--env-file": "env-file",
    "--pwd": "pwd",
    "-H": None,
    "--home": None,
    "-W": None,
    "--workdir": None,
    "--no-mount": None,
    "--mount": None,
    "--network": "network",
    "--network-args": "network-args",
}
FLAGS = {
    "-e": "cleanenv",
    "--cleanenv": "cleanenv",
    "-c": "contain",
    "--contain": "contain",
    "-C": "containall",
    "--containall": "containall",
    "--no-home": "no-home",
    "--nv": "nv",
    "--rocm": "rocm",
    "-n": "net",
    "--net": "net",
    "--writable-tmpfs": None,
    "-i": None,
    "--ipc": None,
    "-p": None,
    "--pid": None,
    "-u": None,
    "--userns": None,
    "--no-init": None,
    "--no-privs": None,
}


class Fatal(Exception):
    """A failure of the stand-in itself: message on stderr, exit 255."""


def prog() -> str:
    name = os.path.basename(sys.argv[0])
    return "singularity" if name.startswith("singularity") else "apptainer"


def info(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"INFO:    {message}", file=sys.stderr)


def parse_options(argv: list[str]) -> tuple[dict, list[str]]:
    """Options up to IMAGE, pflag style (`--opt=v`, `--opt v`, `-eC`)."""
    opts: dict = {
        "bind": [],
        "env": [],
        "env-file": [],
        "pwd": None,
        "network": None,
        "network-args": [],
    }
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        arg = argv[i]
        i += 1
        if arg == "--":
            break
        name, eq, inline = arg.partition("=")
        if arg[:2] in ("-B", "-H", "-W") and len(arg) > 2 and not arg.startswith("--"):
            name, eq, inline = arg[:2], "=", arg[2:]  # pflag's -Bvalue
        if name in WITH_VALUE:
            if eq:
                value = inline
            elif i < len(argv):
                value, i = argv[i], i + 1
            else:
                raise Fatal(f"flag needs an argument: {name}")
            key = WITH_VALUE[name]
            if key in ("bind", "env", "env-file", "network-args"):
                opts[key].append(value)
            elif key:
                opts[key] = value
        elif arg in FLAGS:
            if FLAGS[arg]:
                opts[FLAGS[arg]] = True
        elif not arg.startswith("--") and all(f"-{c}" in FLAGS for c in arg[1:]):
            for letter in arg[1:]:
                if FLAGS[f"-{letter}"]:
                    opts[FLAGS[f"-{letter}"]] = True
        else:
            raise Fatal(f"unknown flag: {arg}")
    if opts.get("containall"):
        opts["contain"] = opts["cleanenv"] = True
    return opts, argv[i:]


def parse_binds(specs: list[str]) -> list[tuple[str, str, bool]]:
    binds = []
    for spec in specs:
        for item in spec.split(","):
            if not item.strip():
                continue
            parts = item.strip().split(":")
            src = parts[0]
            dst = parts[1] if len(parts) > 1 and parts[1] else src
            mode = parts[2] if len(parts) > 2 else "rw"
            if mode not in ("ro", "rw") or len(parts) > 3:
                raise Fatal(f"invalid bind option {item!r}")
            binds.append((os.path.abspath(src), dst, mode == "ro"))
    return binds


def read_env_file(path: str) -> dict[str, str]:
    values = {}
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise Fatal(f"while processing {path}: {exc.strerror}") from exc
    for line in lines:
        line = line.strip()
        if line.startswith("export "):
            line = line[7:].strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def build_env(opts: dict, image: str, nv: bool, rocm: bool = False) -> dict[str, str]:
    host = dict(os.environ)
    if opts.get("cleanenv"):
        env = {k: host[k] for k in CLEANENV_KEEP if k in host}
        env["PATH"] = DEFAULT_PATH
    else:
        env = {
            k: v
            for k, v in host.items()
            if not k.startswith(("APPTAINERENV_", "SINGULARITYENV_"))
        }
    for prefix in ("SINGULARITYENV_", "APPTAINERENV_"):
        for key, value in host.items():
            if key.startswith(prefix) and len(key) > len(prefix):
                env[key[len(prefix) :]] = value
    for path in opts["env-file"]:
        env.update(read_env_file(path))
    for spec in opts["env"]:
        # pflag stringToString: one CSV record of KEY=VALUE pairs
        for item in next(csv.reader([spec]), []):
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise Fatal(f"{item} must be formatted as key=value")
            env[key] = value
    name = os.path.basename(image.rstrip("/"))
    for prefix in ("APPTAINER", "SINGULARITY"):
        env[f"{prefix}_CONTAINER"] = image
        env[f"{prefix}_NAME"] = name
    if nv:
        env["APPTAINER_NV"] = "1"
    if rocm:
        env["APPTAINER_ROCM"] = "1"
    return env


# -- namespace ------------------------------------------------------------------------
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _mount(
    libc: ctypes.CDLL, src: Optional[str], dst: str, fstype: Optional[str], flags: int
) -> None:
    result = libc.mount(
        src and src.encode(), dst.encode(), fstype and fstype.encode(), flags, None
    )
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def enter_namespace(libc: ctypes.CDLL) -> None:
    """Private mount namespace (user namespace first when unprivileged)."""
    uid, gid = os.geteuid(), os.getegid()
    flags = CLONE_NEWNS if uid == 0 else CLONE_NEWNS | CLONE_NEWUSER
    if libc.unshare(flags) != 0:
        errno = ctypes.get_errno()
        raise Fatal(f"could not create a namespace: {os.strerror(errno)}")
    if uid != 0:
        with open("/proc/self/setgroups", "w") as handle:
            handle.write("deny")
        with open("/proc/self/uid_map", "w") as handle:
            handle.write(f"{uid} {uid} 1")
        with open("/proc/self/gid_map", "w") as handle:
            handle.write(f"{gid} {gid} 1")
    try:
        _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    except OSError as exc:
        raise Fatal(f"could not make / private: {exc.strerror}") from exc


def locked_flags(path: str) -> int:
    """Flags a read-only remount must keep inside a user namespace."""
    flags = os.statvfs(path).f_flag
    return sum(ms for st, ms in STATVFS_TO_MS.items() if flags & st and ms != MS_RDONLY)


def hook_failure(src: str, dst: str, why: str) -> Fatal:
    return Fatal(
        "container creation failed: mount hook function failure: "
        f"mount {src}->{dst} error: while mounting {src}: {why}"
    )


def apply_binds(
    libc: ctypes.CDLL, binds: list[tuple[str, str, bool]], contain: bool
) -> None:
    """Open every source first, cover $HOME and /tmp if contained, then bind."""
    opened = []
    for src, dst, ro in binds:
        try:
            fd = os.open(src, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            raise hook_failure(src, dst, f"mount source {src} doesn't exist") from None
        opened.append((fd, src, dst, ro))
    if contain:
        home = os.environ.get("HOME", "")
        cwd = os.getcwd()
        for path in dict.fromkeys([home, "/tmp"]):
            if path and path != "/" and os.path.isdir(path):
                _mount(libc, "tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV)
                if cwd == path or cwd.startswith(path.rstrip("/") + "/"):
                    os.chdir(home if os.path.isdir(home) else "/")
    for fd, src, dst, ro in opened:
        source = f"/proc/self/fd/{fd}"
        if not os.path.lexists(dst):
            try:
                if os.path.isdir(source):
                    os.makedirs(dst)
                else:
                    os.makedirs(os.path.dirname(dst) or "/", exist_ok=True)
                    open(dst, "a").close()
            except OSError:
                raise hook_failure(
                    src, dst, f"destination {dst} doesn't exist in container"
                ) from None
        try:
            _mount(libc, source, dst, None, MS_BIND | MS_REC)
            if ro:
                flags = MS_BIND | MS_REMOUNT | MS_RDONLY | locked_flags(dst)
                _mount(libc, None, dst, None, flags)
        except OSError as exc:
            raise hook_failure(src, dst, exc.strerror or str(exc)) from None
        os.close(fd)


# -- network (setuid installation) ---------------------------------------------------
def strip_net_options(argv: list[str]) -> list[str]:
    """The options without --net/--network/--network-args (up to IMAGE)."""
    kept, i = [], 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        arg = argv[i]
        name = arg.partition("=")[0]
        if arg == "--":
            break
        if arg in ("-n", "--net"):
            i += 1
            continue
        if name in ("--network", "--network-args"):
            i += 1 if "=" in arg else 2
            continue
        kept.append(arg)
        if (
            name in WITH_VALUE
            and "=" not in arg
            and not (arg[:2] in ("-B", "-H", "-W") and len(arg) > 2 and arg[1] != "-")
        ):
            if i + 1 < len(argv):
                kept.append(argv[i + 1])
            i += 1
        i += 1
    return kept + argv[i:]


def network_request(verb: str, argv: list[str], opts: dict, quiet: bool) -> int:
    """Hand a --net request to the installation's setuid starter (no return)."""
    root = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    starter = os.path.join(root, "libexec", "apptainer", "bin", "starter-suid")
    network = opts.get("network") or "bridge"
    if "," in network:
        raise Fatal("the stand-in joins one network at a time")
    if os.geteuid() != 0 and not os.path.isfile(starter):
        # apptainer's words for an unprivileged request without setuid support
        raise Fatal(
            "container creation failed: network requires root or a suid "
            "installation with /etc/subuid --fakeroot; non-root users can only "
            "use --network=none unless permitted by the administrator"
        )
    if not os.path.isfile(starter):
        raise Fatal(f"no starter-suid in {root}: not a setuid installation")
    blob = "\0".join(f"{k}={v}" for k, v in os.environ.items()).encode()
    fd = os.memfd_create("apptainer-env", 0)
    os.write(fd, blob)
    os.lseek(fd, 0, os.SEEK_SET)
    os.set_inheritable(fd, True)
    args = [starter, network, str(fd)]
    for spec in opts["network-args"]:
        args += ["--network-args", spec]
    args += ["--"] + (["-q"] if quiet else []) + [verb] + strip_net_options(argv)
    os.execv(starter, args)
    return 255  # not reached


# -- commands -------------------------------------------------------------------------
def action(verb: str, argv: list[str], quiet: bool) -> int:
    opts, rest = parse_options(argv)
    if opts.get("net"):
        return network_request(verb, argv, opts, quiet)
    if not rest:
        raise Fatal(f"{verb} requires an image")
    image, args = rest[0], rest[1:]
    if image.startswith(REMOTE_IMAGES):
        raise Fatal(f"the stand-in cannot pull {image}: use a local image path")
    if not os.path.exists(image):
        raise Fatal(
            f"could not open image {image}: failed to retrieve path for {image}: "
            f"lstat {image}: no such file or directory"
        )
    image = os.path.abspath(image)
    if verb == "exec":
        if not args:
            raise Fatal("exec requires a command")
        command = args
    elif verb == "shell":
        command = [os.environ.get("SHELL", "/bin/sh")]
    else:
        runscript = os.path.join(image, ".singularity.d", "runscript")
        if not (os.path.isdir(image) and os.path.isfile(runscript)):
            raise Fatal(
                f"no runscript in {image}: the stand-in runs only directory images "
                "with .singularity.d/runscript"
            )
        head = [runscript] if os.access(runscript, os.X_OK) else ["/bin/sh", runscript]
        command = head + args
    binds = parse_binds(opts["bind"])
    for var in ("APPTAINER_BIND", "SINGULARITY_BIND"):
        if os.environ.get(var):
            binds = parse_binds([os.environ[var]]) + binds
    nv = bool(opts.get("nv"))
    if nv:
        info("--nv: would bind the host's NVIDIA libraries and /dev/nvidia*", quiet)
        info("--nv: no GPU on this host (stand-in); APPTAINER_NV=1 set", quiet)
    rocm = bool(opts.get("rocm"))
    if rocm:
        info(
            "--rocm: would bind the host's ROCm libraries, /dev/kfd and /dev/dri", quiet
        )
        info("--rocm: no GPU on this host (stand-in); APPTAINER_ROCM=1 set", quiet)
    env = build_env(opts, image, nv, rocm)
    contain = bool(opts.get("contain") or opts.get("no-home"))
    libc = _libc()
    enter_namespace(libc)
    apply_binds(libc, binds, contain)
    if opts["pwd"]:
        try:
            os.chdir(opts["pwd"])
        except OSError as exc:
            raise Fatal(
                f"could not set working directory {opts['pwd']}: {exc}"
            ) from exc
    try:
        os.execvpe(command[0], command, env)
    except OSError:
        raise Fatal(f'"{command[0]}": executable file not found in $PATH') from None
    return 255  # not reached


def buildcfg(keys: list[str]) -> int:
    """apptainer's `buildcfg`: the installation's directories (from this file's
    place, <prefix>/bin/apptainer) and whether it is a setuid installation."""
    prefix = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    starter = os.path.join(prefix, "libexec", "apptainer", "bin", "starter-suid")
    values = {
        "PREFIX": prefix,
        "BINDIR": os.path.join(prefix, "bin"),
        "LIBEXECDIR": os.path.join(prefix, "libexec"),
        "SYSCONFDIR": os.path.join(prefix, "etc"),
        "LOCALSTATEDIR": os.path.join(prefix, "var"),
        "APPTAINER_CONFDIR": os.path.join(prefix, "etc", "apptainer"),
        "APPTAINER_SUID_INSTALL": "1" if os.path.isfile(starter) else "0",
        "CNI_CONFIGURATION_DIR": os.path.join(prefix, "etc", "apptainer", "network"),
        "CNI_PLUGIN_DIR": "/usr/lib/cni",
    }
    if keys:
        if keys[0] not in values:
            raise Fatal(f"no variable named {keys[0]}")
        print(values[keys[0]])
    else:
        for key, value in values.items():
            print(f"{key}={value}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    quiet = False
    while argv and argv[0] in (
        "-q",
        "--quiet",
        "-s",
        "--silent",
        "-d",
        "--debug",
        "-v",
    ):
        quiet = quiet or argv[0] in ("-q", "--quiet", "-s", "--silent")
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(f"Usage: {prog()} [global options] exec|run|shell [options] IMAGE ...")
        return 0 if argv else 255
    if argv[0] in ("--version", "version"):
        print(f"{prog()} version {VERSION}")
        return 0
    verb = argv[0]
    try:
        if verb == "buildcfg":
            return buildcfg(argv[1:])
        if verb not in ("exec", "run", "shell"):
            raise Fatal(f"unknown command {verb!r} (the stand-in has exec, run, shell)")
        return action(verb, argv[1:], quiet)
    except Fatal as exc:
        print(f"FATAL:   {exc}", file=sys.stderr)
        return 255
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
