"""An openconnect session by hand from a worker, built like a drone's (issue 13).

For the lab's own tests and measurements of the DMZ's ocserv, before (and
beside) the product's `vpn` mode: as the lab's drone user, inside the worker's
slurmd mount namespace (where /dev/net/tun is 0666, services.with_tun_node),
an unprivileged `unshare -Urnm` namespace gets its outer link from pasta
(every port forward off, `-i eth0 -g <dmz>`: the workers have no default
route), and its ns-root runs the real openconnect with a small `--script`
that sets tun0's address, MTU and the default route with `ip`, keeps the
route to the server on the outer link and writes `vpn.state`. What runs in
the namespace afterwards is entered by root with `nsenter -t PID -n`.

Files live in a directory of the drone user's home: outer.sh, inner.sh,
vpn-script.sh, ns.pid, pasta.pid, vpn.state, openconnect.log. Processes are
stopped by the pids this object started or recorded, never by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import layout as L
from . import services
from .netns import is_alive, user_env

#: openconnect's --script: reason connect/reconnect/disconnect (vpnc-script API)
VPN_SCRIPT = r"""#!/bin/bash
# openconnect --script of a lab VPN client (tardis_netadapter_lab.vpnclient)
dir=$(dirname "$0")
case $reason in
connect)
    # keep the way to the server on the outer link before the default moves
    route=$(ip -o -4 route get "$VPNGATEWAY")
    dev=$(awk '{for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1)}' <<<"$route")
    via=$(awk '{for (i = 1; i < NF; i++) if ($i == "via") print $(i + 1)}' <<<"$route")
    ip route replace "$VPNGATEWAY/32" ${via:+via "$via"} dev "$dev"
    ;&
reconnect)
    ip link set dev "$TUNDEV" up mtu "${INTERNAL_IP4_MTU:-1400}"
    ip addr replace "$INTERNAL_IP4_ADDRESS/32" dev "$TUNDEV"
    ip route replace default dev "$TUNDEV"
    echo "up $INTERNAL_IP4_ADDRESS $TUNDEV" >"$dir/vpn.state"
    ;;
disconnect)
    echo "down" >"$dir/vpn.state"
    ;;
esac
exit 0
"""

# ns-root of the private namespace: wait for pasta's address, then openconnect
INNER = r"""#!/bin/bash
dir=$1 stdin=$2 server=$3
shift 3
for _ in $(seq 200); do  # pasta's address and routes, then openconnect
    ip -4 route get "$server" >/dev/null 2>&1 && break
    sleep 0.05
done
ip -4 route get "$server" >/dev/null || { echo "no route to $server: pasta failed"; exit 70; }
exec openconnect "$@" <"$stdin"
"""

# as the drone user in the worker's netns + slurmd's mount namespace
OUTER = r"""#!/bin/bash
dir=$1 gateway=$2
shift 2
unshare -Urnm -- bash "$dir/inner.sh" "$dir" "$@" &  # "$@": stdin server args
ns=$!
echo "$ns" >"$dir/ns.pid"
# pasta joins the namespaces of $ns: only once unshare has made them (before,
# $ns is still in ours and pasta fails "Couldn't enter user namespace")
own=$(readlink /proc/self/ns/net)
for _ in $(seq 200); do
    [[ $(readlink "/proc/$ns/ns/net" 2>/dev/null) != "$own" ]] && break
    sleep 0.01
done
pasta -4 -f -q --config-net -t none -u none -T none -U none --no-map-gw \
    -i eth0 -g "$gateway" "$ns" &
pasta=$!
echo "$pasta" >"$dir/pasta.pid"
trap 'kill -TERM "$ns" "$pasta" 2>/dev/null' TERM INT
wait "$ns"
rc=$?
kill -TERM "$pasta" 2>/dev/null
wait
exit "$rc"
"""


class VpnClientError(RuntimeError):
    """The session did not come up (the message holds openconnect's output)."""


class VpnClient:
    """One openconnect session from a worker of a running lab.

    auth: "password" (lab.vpn_password_file on stdin) or "certificate"
    (lab.vpn_client_cert/key, nothing on stdin). `servercert` defaults to the
    lab's pin; pass a wrong one to see the refusal. `extra` goes to openconnect
    (e.g. ["--no-dtls"]).
    """

    def __init__(
        self,
        lab: Any,
        host: str = "worker1",
        *,
        auth: str = "password",
        servercert: str | None = None,
        extra: Sequence[str] = (),
        server: str = L.DMZ_SITE,
    ) -> None:
        if auth not in ("password", "certificate"):
            raise ValueError(f"auth {auth!r}: use 'password' or 'certificate'")
        self.lab = lab
        self.layout: L.LabLayout = lab.layout
        self.host = host
        self.auth = auth
        self.servercert = servercert or lab.vpn_pin
        self.extra = list(extra)
        self.server = server
        self.user = self.layout.drone_user
        self.dir = self.layout.home(self.user) / f"vpnclient-{uuid.uuid4().hex[:8]}"
        self.proc: subprocess.Popen[bytes] | None = None

    # files ------------------------------------------------------------------
    @property
    def log(self) -> Path:
        return self.dir / "openconnect.log"

    @property
    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def state(self) -> str:
        try:
            return (self.dir / "vpn.state").read_text().strip()
        except FileNotFoundError:
            return ""

    def _pid_file(self, name: str) -> int | None:
        try:
            return int((self.dir / f"{name}.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    @property
    def ns_pid(self) -> int:
        """Host pid of the namespace's root (openconnect itself)."""
        pid = self._pid_file("ns")
        if pid is None:
            raise VpnClientError(f"no namespace yet:\n{self.output}")
        return pid

    @property
    def pasta_pid(self) -> int | None:
        return self._pid_file("pasta")

    @property
    def address(self) -> str | None:
        words = self.state().split()
        return words[1] if len(words) >= 2 and words[0] == "up" else None

    # lifecycle --------------------------------------------------------------
    def argv(self) -> list[str]:
        """openconnect's arguments (no credential: the password comes on stdin)."""
        args = [
            "--non-inter",
            "--servercert",
            self.servercert,
            "--script",
            str(self.dir / "vpn-script.sh"),
            "--reconnect-timeout",
            "30",
        ]
        if self.auth == "password":
            args += ["--passwd-on-stdin", "-u", self.user]
        else:
            args += [
                "-c",
                str(self.layout.vpn_client_cert),
                "-k",
                str(self.layout.vpn_client_key),
            ]
        return args + self.extra + [f"https://{self.server}"]

    def start(self) -> VpnClient:
        self.dir.mkdir(mode=0o755)
        for name, text in (
            ("outer.sh", OUTER),
            ("inner.sh", INNER),
            ("vpn-script.sh", VPN_SCRIPT),
        ):
            (self.dir / name).write_text(text)
            os.chmod(self.dir / name, 0o755)
        shutil.chown(self.dir, self.user, self.user)
        stdin = (
            self.layout.vpn_password_file if self.auth == "password" else "/dev/null"
        )
        slurmd = services.recorded_pid(self.layout, f"slurmd-{self.host}")
        if slurmd is None:
            raise VpnClientError(f"slurmd of {self.host} is not running")
        argv = [
            "nsenter",
            "-t",
            str(slurmd),
            "--mount",
            "--net",
            "--",
            "setpriv",
            f"--reuid={self.user}",
            f"--regid={self.user}",
            "--init-groups",
            "bash",
            str(self.dir / "outer.sh"),
            str(self.dir),
            self.server,
            str(stdin),
            self.server,
            *self.argv(),
        ]
        env = user_env(self.user, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(self.dir),
                start_new_session=True,
            )
        return self

    def wait_up(self, timeout: float = 20.0, dtls: bool = True) -> str:
        """Block until tun0 has its address (and DTLS is up when `dtls`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.address and (
                not dtls or "Established DTLS connection" in self.output
            ):
                return self.address
            if self.proc is not None and self.proc.poll() is not None:
                raise VpnClientError(
                    f"openconnect exited ({self.proc.returncode}):\n{self.output}"
                )
            time.sleep(0.05)
        raise VpnClientError(f"VPN not up after {timeout:.0f} s:\n{self.output}")

    def wait_exit(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def command(self, argv: Sequence[str]) -> list[str]:
        """Argv that runs `argv` (as root) in the session's network namespace."""
        return ["nsenter", "-t", str(self.ns_pid), "--net", "--", *argv]

    def run(
        self, argv: Sequence[str], timeout: float = 30, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,
        )

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM to the session (openconnect says BYE), SIGKILL what stays."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        for name in ("ns", "pasta"):
            pid = self._pid_file(name)
            if pid is not None and is_alive(pid) and _is_child_of_ours(pid, self.dir):
                os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> VpnClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _is_child_of_ours(pid: int, directory: Path) -> bool:
    """The pid still belongs to this session (its command line names `directory`
    or it is the session's pasta): guards against a recycled pid."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return str(directory) in cmdline or "pasta" in cmdline or "openconnect" in cmdline
