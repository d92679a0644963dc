"""The site-local apptainer with network support (issue 15, the EPN partition).

At the EPNs the admins install apptainer with setuid support, a CNI plugin
and network configuration files; the grid user points its agent at that
apptainer and gets containers with a public address on an isolated partition.
The lab builds the same shape under ``<state>/apptainer``:

- ``bin/apptainer``: the apptainer stand-in (standins/apptainer.py);
- ``etc/apptainer/apptainer.conf``: ``allow setuid = yes``, ``allow net users
  = <lab>drone``, ``allow net networks = epn-public``, ``cni plugin path =
  /usr/lib/cni``;
- ``etc/apptainer/network/epn-public.conflist``: macvlan on the worker's ib1
  (mode bridge) with host-local IPAM 10.66.9.10-.250, gateway .1, default route;
  the plugins are Debian's containernetworking-plugins in /usr/lib/cni;
- ``libexec/apptainer/bin/starter-suid``: a root-owned setuid C shim compiled
  here (like rcvbuf.py), which clears the environment and runs the root-owned
  ``libexec/apptainer/cnet_starter.py`` with ``python3 -I`` and the caller's
  real uid/gid: the policy check, the network namespace, CNI ADD/DEL, the
  drop to the caller and the lease collection (see that file);
- ``var/lib/cni/networks/``: host-local's leases, one file per address.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from . import layout as L
from .netns import in_namespace

#: where Debian's containernetworking-plugins installs the plugins
CNI_PLUGINS_DIR = "/usr/lib/cni"
STARTER_SOURCE = Path(__file__).with_name("cnet_starter.py")
STANDIN_SOURCE = Path(__file__).parent / "standins" / "apptainer.py"

SHIM_SOURCE = r"""
/* tardis-netadapter lab: apptainer's starter-suid stand-in (see cnet.py).
 * Setuid root. Keeps nothing of the caller but its real uid/gid (passed on as
 * the first two arguments) and the argv; clears the environment. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* 1 in the machine's own user namespace (the full identity map): euid 0
 * inside another user namespace is no privilege and must not pass as root */
static int in_initial_userns(void) {
    unsigned long inside, outside, count;
    FILE *map = fopen("/proc/self/uid_map", "r");
    int ok;
    if (!map)
        return 0;
    ok = fscanf(map, "%lu %lu %lu", &inside, &outside, &count) == 3
         && inside == 0 && outside == 0 && count == 4294967295UL;
    fclose(map);
    return ok;
}

int main(int argc, char **argv) {
    char uid[32], gid[32];
    char **args;
    int i;
    if (!in_initial_userns()) {
        fputs("FATAL:   starter-suid: the setuid workflow cannot run inside a "
              "user namespace\n", stderr);
        return 255;
    }
    if (geteuid() != 0) {
        fputs("FATAL:   starter-suid is not setuid root\n", stderr);
        return 255;
    }
    snprintf(uid, sizeof uid, "%u", (unsigned)getuid());
    snprintf(gid, sizeof gid, "%u", (unsigned)getgid());
    if (clearenv() != 0 || setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin", 1)
        || setresgid(0, 0, 0) != 0 || setresuid(0, 0, 0) != 0) {
        fputs("FATAL:   starter-suid: could not become root\n", stderr);
        return 255;
    }
    args = calloc(argc + 6, sizeof *args);
    if (!args)
        return 255;
    args[0] = "python3";
    args[1] = "-I";
    args[2] = STARTER_PY;
    args[3] = uid;
    args[4] = gid;
    for (i = 1; i < argc; i++)
        args[4 + i] = argv[i];
    execv("/usr/bin/python3", args);
    perror("FATAL:   starter-suid: exec python3");
    return 255;
}
"""


def starter_shim(lab: L.LabLayout) -> Path:
    return lab.apptainer_dir / "libexec" / "apptainer" / "bin" / "starter-suid"


def starter_script(lab: L.LabLayout) -> Path:
    return lab.apptainer_dir / "libexec" / "apptainer" / "cnet_starter.py"


def apptainer_conf(lab: L.LabLayout) -> str:
    return (
        "# site-local apptainer of the lab's EPN partition (tardis-netadapter lab)\n"
        "allow setuid = yes\n"
        f"allow net users = {lab.drone_user}\n"
        "allow net groups =\n"
        f"allow net networks = {L.PARTITION_NETWORK}\n"
        "# Debian's containernetworking-plugins, not apptainer's own libexec/cni\n"
        f"cni plugin path = {CNI_PLUGINS_DIR}\n"
    )


def conflist(lab: L.LabLayout) -> dict:
    """macvlan on ib1 with host-local IPAM: SR-IOV's stand-in on the partition."""
    first, last = L.PARTITION_RANGE
    return {
        "cniVersion": "1.0.0",
        "name": L.PARTITION_NETWORK,
        "plugins": [
            {
                "type": "macvlan",
                "master": L.PARTITION_IF,
                "mode": "bridge",
                "ipam": {
                    "type": "host-local",
                    "ranges": [
                        [
                            {
                                "subnet": L.PARTITION_NET,
                                "rangeStart": first,
                                "rangeEnd": last,
                                "gateway": L.PARTITION_GATEWAY,
                            }
                        ]
                    ],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(lab.cni_lease_dir),
                },
            }
        ],
    }


def build(lab: L.LabLayout) -> Path:
    """Install the site-local apptainer; returns its path. Needs cc and root."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise FileNotFoundError(
            "no C compiler (cc/gcc): the lab's setuid apptainer starter cannot be "
            "built; run scripts/install-system-deps"
        )
    root = lab.apptainer_dir
    for sub in ("bin", "etc/apptainer/network", "libexec/apptainer/bin", "var"):
        (root / sub).mkdir(parents=True, exist_ok=True, mode=0o755)
    for path in [root, *root.rglob("*")]:
        if path.is_dir():
            os.chmod(path, 0o755)
    lab.cni_lease_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = STANDIN_SOURCE.read_text()
    body = text.split("\n", 1)[1] if text.startswith("#!") else text
    lab.apptainer.write_text("#!/usr/bin/python3\n" + body)
    os.chmod(lab.apptainer, 0o755)
    shutil.copyfile(STARTER_SOURCE, starter_script(lab))
    os.chmod(starter_script(lab), 0o644)
    lab.apptainer_conf.write_text(apptainer_conf(lab))
    lab.partition_conflist.write_text(json.dumps(conflist(lab), indent=2) + "\n")
    source = root / "libexec" / "apptainer" / "starter-suid.c"
    source.write_text(SHIM_SOURCE)
    shim = starter_shim(lab)
    subprocess.run(
        [
            compiler,
            "-O2",
            "-Wall",
            f'-DSTARTER_PY="{starter_script(lab)}"',
            "-o",
            str(shim),
            str(source),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    os.chown(shim, 0, 0)
    os.chmod(shim, 0o4755)
    return lab.apptainer


def leases(lab: L.LabLayout) -> list[Path]:
    """The partition's IPAM lease files (one per address in use)."""
    base = lab.cni_lease_dir
    if not base.is_dir():
        return []
    return [
        path
        for net in sorted(base.iterdir())
        if net.is_dir()
        for path in sorted(net.iterdir())
        if path.name != "lock" and not path.name.startswith("last_reserved_ip")
    ]


def containers(lab: L.LabLayout) -> dict[int, int]:
    """Running containers on the partition: starter (holder) pid -> container pid.

    A holder is a process running this lab's starter script; its one child,
    once CNI ADD is done, is the container process (in its own netns)."""
    script = str(starter_script(lab)).encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            kids = (entry / "task" / entry.name / "children").read_text().split()
        except OSError:
            continue
        if script in argv and len(kids) == 1:
            found[int(entry.name)] = int(kids[0])
    return found


def collect(lab: L.LabLayout) -> list[str]:
    """CNI DEL of every lease whose holder is gone (teardown; as root).

    Runs in a worker's namespace, where the plugins ran ADD: the macvlan
    plugin looks its master (ib1) up even for a DEL. Without a worker
    namespace (a crashed lab) nothing is collected; the state dir goes anyway.
    """
    workers = [
        lab.namespace_path(host)
        for host in lab.worker_hosts
        if lab.namespace_path(host).exists()
    ]
    if not starter_script(lab).exists() or not workers:
        return []
    result = subprocess.run(
        in_namespace(
            workers[0], ["python3", "-I", str(starter_script(lab)), "--collect"]
        ),
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    return result.stdout.split()
