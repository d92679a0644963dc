"""A larger UDP receive buffer for the DMZ's ocserv, without a global sysctl.

At 1 Gbit/s, DTLS lost about 16 % of its datagrams in ocserv's UDP socket
on dmz (dmz's ``RcvbufErrors`` equalled iperf3's retransmissions): ocserv
gets the kernel's default receive buffer (``net.core.rmem_default``, 208
KiB), too small for the bursts a 1 Gbit/s link delivers while ocserv's
worker is off the CPU. A real DMZ's admin raises ``net.core.rmem_default``
and ``rmem_max`` (see docs/vpn.md). The lab cannot: on this kernel (6.18)
those sysctls are read-only inside a network namespace other than the
machine's own, and the machine's own are not the lab's to change.

So the lab's ocserv runs with a tiny LD_PRELOAD library, compiled at lab
creation: every IPv4/IPv6 datagram socket it creates gets
``SO_RCVBUFFORCE`` (ocserv's main runs as root, so the force is allowed)
of ``TNLAB_UDP_RCVBUF`` bytes, what the admin's sysctl would give it. Without
a C compiler the library is not built and ocserv runs as before (the lab
still works; DTLS is just slower).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from . import layout as L

#: bytes asked for (the kernel doubles it for its bookkeeping): 4 MiB, as a
#: DMZ admin's `sysctl net.core.rmem_default=4194304` would give
UDP_RCVBUF = 4 * 1024 * 1024
ENV = "TNLAB_UDP_RCVBUF"

SOURCE = r"""
/* tardis-netadapter lab: SO_RCVBUFFORCE on every UDP socket (see rcvbuf.py) */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/socket.h>

int socket(int domain, int type, int protocol) {
    static int (*real)(int, int, int);
    int fd, size;
    const char *want;
    if (!real)
        real = (int (*)(int, int, int))dlsym(RTLD_NEXT, "socket");
    fd = real(domain, type, protocol);
    if (fd >= 0 && (domain == AF_INET || domain == AF_INET6)
        && (type & 0xf) == SOCK_DGRAM && (want = getenv("TNLAB_UDP_RCVBUF"))
        && (size = atoi(want)) > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
    return fd;
}
"""


def library(lab: L.LabLayout) -> Path:
    return lab.vpn_dir / "udp_rcvbuf.so"


def build(lab: L.LabLayout) -> Path | None:
    """Compile the library into the lab's VPN dir; None without a compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    source = lab.vpn_dir / "udp_rcvbuf.c"
    source.write_text(SOURCE)
    result = subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(library(lab)), str(source)]
        + ["-ldl"],
        capture_output=True,
        text=True,
        check=False,
    )
    return library(lab) if result.returncode == 0 else None


def wrap(lab: L.LabLayout, argv: tuple[str, ...]) -> tuple[str, ...]:
    """`argv` under the library when it was built (`env` execs: same pid)."""
    if not library(lab).exists():
        return argv
    return ("env", f"LD_PRELOAD={library(lab)}", f"{ENV}={UDP_RCVBUF}", *argv)
