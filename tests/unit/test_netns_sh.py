"""drone_scripts/lib/netns.sh and capture.sh run for real (issue 12).

The keeper, init and drone roles of the rendered script come up with pasta
(and once with slirp4netns) as an unprivileged user (nobody) inside a
throwaway network and mount namespace made here as root: a dummy interface
(a veth pair) with documentation addresses (192.0.2.0/24,
198.51.100.0/24, 203.0.113.0/24) is its only "outside", and a 0666 tun node is bind-mounted over /dev/net/tun
in that mount namespace only (the machine's own stays 0600). Inside the
drone's namespace a tiny SOCKS5 server stands in for ssh's -D port, so the
real redsocks and the nft rules are exercised without any traffic leaving.

The fallback runs the keeper in a user namespace whose own
user.max_user_namespaces is 1 (design 1, item 5): the machine-wide value is
never touched. Skipped, with the reason, where this host cannot do it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostcheck import NOBODY, unavailable
from procs import leftovers

from tardis_netadapter import render
from tardis_netadapter.config import load_profile
from tardis_netadapter.keepalive import derive_budget

HOP = "198.51.100.1"
COLLECTOR = "203.0.113.5"
PROFILE = {
    "tunnel": {"hops": [{"host": HOP, "user": "drone"}]},
    "pool": {"collector": f"{COLLECTOR}:9618"},
}
TOOLS = ("unshare", "setpriv", "nft", "ip", "pasta", "slirp4netns", "redsocks")


WHY_NOT = unavailable(TOOLS, "to make a throwaway network namespace and tun node")
pytestmark = pytest.mark.skipif(bool(WHY_NOT), reason=WHY_NOT or "runs")

# The test's main: the drone's first stage, then checks from inside the
# drone role (as the payload would run them), then wait for the end.
MAIN = r"""main() {
    drone_setup
    isolation_stage
    unit_inside
}

unit_inside() {
    local out=$UNIT_OUT line i
    printf '%s\n' "$CAPTURE_METHOD" >"$out/method"
    cp -- "$DRONE_DIR/ns/isolation" "$out/isolation" 2>/dev/null
    [[ $CAPTURE_METHOD == namespace ]] || exit 0
    id -u >"$out/uid"
    cat /proc/sys/net/ipv4/tcp_retries2 >"$out/tcp_retries2"
    ip -o link show >"$out/links"
    if nft flush ruleset 2>"$out/nft.err"; then
        echo flushed >"$out/nft"
    else
        echo refused >"$out/nft"
    fi
    # ssh -D's stand-in: a SOCKS5 server that answers with the destination
    python3 "$UNIT_SOCKS" 20000 "$out/socks.log" "$DRONE_DIR" &
    TUNNEL_PORTS=(20000)
    wait_until 5000 port_open 20000
    chain_stage
    PAYLOAD_ENV=()
    chain_environment
    printf '%s\n' "${PAYLOAD_ENV[@]}" >"$out/env"
    { exec 3<>"/dev/tcp/203.0.113.5/9618" && read -r -t 5 line <&3 &&
        printf '%s\n' "$line"; } >"$out/tcp" 2>&1
    for i in 1 2 3; do
        if (printf x >/dev/udp/203.0.113.5/9999) 2>>"$out/udp.err"; then
            echo sent >>"$out/udp"
        fi
    done
    echo ready >"$out/ready"
    sleep 600 &
    wait $!
}
"""
SOCKS = r"""
import socket, struct, sys, threading
port, log = int(sys.argv[1]), sys.argv[2]
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", port))
server.listen(16)

def exact(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data

def serve(conn):
    try:
        _, count = exact(conn, 2)
        exact(conn, count)
        conn.sendall(b"\x05\x00")
        _, _, _, kind = exact(conn, 4)
        if kind == 1:
            host = socket.inet_ntoa(exact(conn, 4))
        else:
            host = exact(conn, exact(conn, 1)[0]).decode()
        (dport,) = struct.unpack("!H", exact(conn, 2))
        with open(log, "a") as out:
            out.write(f"{host}:{dport}\n")
        conn.sendall(b"\x05\x00\x00\x01" + bytes(6))
        conn.sendall(f"socks {host}:{dport}\n".encode())
    except (OSError, EOFError):
        pass
    finally:
        conn.close()

while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""
# Runs as root in a throwaway network + mount namespace: the worker's side.
HARNESS = r"""set -u
root=$1 out=$2 uid=$3
ip link set lo up
ip link add d0 type veth peer name d1
ip addr add 192.0.2.1/24 dev d0
ip link set d0 up
ip link set d1 up
ip route add default via 192.0.2.254 dev d0
mkdir -p "$root/tun"
mount -t tmpfs -o mode=755 tmpfs "$root/tun"
mknod -m 666 "$root/tun/tun" c 10 200
mount --bind "$root/tun/tun" /dev/net/tun
setpriv --reuid="$uid" --regid="$uid" --clear-groups \
    env -i PATH="$PATH" HOME="$root/home" TMPDIR="$root/tmp" UNIT_OUT="$out" \
    UNIT_SOCKS="$root/socks.py" TardisDroneUuid=unit-ns \
    bash "$root/drone.sh" 2>"$out/log" &
keeper=$!
echo "$keeper" >"$out/keeper.pid"
for i in $(seq 300); do
    [ -e "$out/ready" ] && break
    kill -0 "$keeper" 2>/dev/null || break
    sleep 0.1
done
if [ -e "$out/ready" ]; then
    ns=$(ls -d "$root"/tmp/tardis-drone.* | head -1)/ns
    for i in $(seq 80); do # the init role writes ns/leaks every 5 s
        read -r udp other <"$ns/leaks" 2>/dev/null && [ "${udp:-0}" -ge 4 ] && break
        sleep 0.1
    done
    # what listens in the worker's network namespace (nothing may), seconds
    # after the drone's listeners came up (pasta -t auto scans every second)
    awk 'FNR > 1 && $4 == "0A"' /proc/net/tcp /proc/net/tcp6 >"$out/outer.tcp"
    awk 'FNR > 1 && $4 == "07"' /proc/net/udp /proc/net/udp6 >"$out/outer.udp"
    cp "$ns/leaks" "$ns/isolation" "$ns/outer.state" "$ns/unshare.pid" \
        "$ns/init.pid" "$ns/outer.child" "$out/" 2>/dev/null
    ls /proc/"$(cat "$ns/init.pid")"/task/*/children >/dev/null 2>&1
    kill -TERM "$keeper"
fi
for i in $(seq 200); do
    kill -0 "$keeper" 2>/dev/null || break
    sleep 0.1
done
wait "$keeper"
echo $? >"$out/keeper.status"
for f in unshare.pid init.pid outer.child; do
    [ -r "$out/$f" ] || continue
    pid=$(cat "$out/$f")
    # a zombie is gone (its new parent reaps it)
    state=$(awk '{ sub(/.*\) /, ""); print $1 }' "/proc/$pid/stat" 2>/dev/null)
    if [ -n "$state" ] && [ "$state" != Z ]; then echo "$f $pid $state" >>"$out/alive"; fi
done
"""


def drone_script(outer: str = "pasta", isolation: str = "preferred") -> str:
    """The rendered socks script with capture namespace, and the test's main."""
    data = json.loads(json.dumps(PROFILE))
    data["chain"] = {"capture": "namespace"}
    data["isolation"] = isolation
    data["namespace"] = {"outer": outer}
    profile = load_profile(data)
    text = render.render_drone_script(
        profile,
        derive_budget(profile),
        site_name="S",
        machine_type="cpu",
        job_id_variable="SLURM_JOB_ID",
    )
    assert "CAPTURE_METHOD=namespace\n" in text
    start = text.index("main() {")
    end = text.index("# run unless sourced")
    return text[:start] + MAIN + "\n" + text[end:]


@pytest.fixture
def root() -> Iterator[Path]:
    """A directory nobody can use (the pytest tmp_path is root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="tna-unit-ns."))
    path.chmod(0o755)
    for sub in ("tmp", "home", "out"):
        (path / sub).mkdir()
        os.chown(path / sub, NOBODY, NOBODY)
    (path / "socks.py").write_text(SOCKS)
    yield path
    assert not leftovers(path), leftovers(path)
    shutil.rmtree(path, ignore_errors=True)


def run_harness(root: Path, script: str, timeout: float = 60) -> dict[str, str]:
    (root / "drone.sh").write_text(script)
    (root / "harness.sh").write_text(HARNESS)
    out = root / "out"
    subprocess.run(
        ["unshare", "-n", "-m", "--propagation", "private", "--"]
        + ["bash", str(root / "harness.sh"), str(root), str(out), str(NOBODY)],
        timeout=timeout,
        check=True,
    )
    return {p.name: p.read_text() for p in out.iterdir() if p.is_file()}


@pytest.mark.parametrize("tool", ["pasta", "slirp4netns"])
def test_roles_capture_and_isolate(root: Path, tool: str) -> None:
    started = time.monotonic()
    found = run_harness(root, drone_script(outer=tool))
    log = found.get("log", "")
    assert "ready" in found, log
    # the drone role runs as the real uid and cannot touch the rules
    assert found["uid"].strip() == str(NOBODY), log
    assert found["nft"].strip() == "refused", found.get("nft.err")
    # TCP to the outside went to redsocks, then to the SOCKS server (the
    # tunnel's stand-in), with its original destination: no LD_PRELOAD
    assert found["tcp"].strip() == f"socks {COLLECTOR}:9618", (found["tcp"], log)
    assert f"{COLLECTOR}:9618" in found["socks.log"]
    assert "LD_PRELOAD" not in found.get("env", "")
    # UDP to the outside is refused and counted (1 from the stage's own
    # check, 3 from the payload)
    assert "udp" not in found, found.get("udp")
    assert "Operation not permitted" in found["udp.err"]
    udp, other = map(int, found["leaks"].split())
    assert udp >= 4, found["leaks"]
    assert found["isolation"] == f"namespace\t{tool}\t\n"
    # a stalled tunnel connection fails in ~25 s, not 15 min (NS_TCP_RETRIES2)
    assert found["tcp_retries2"].strip() == "6"
    # slirp4netns is capped at 16384 (slower above it); pasta keeps 65520
    mtu = re.search(r"^\d+: (?!lo:)\S+ .*? mtu (\d+)", found["links"], re.M)
    wanted = 16384 if tool == "slirp4netns" else 65520
    assert mtu and int(mtu.group(1)) == wanted, found["links"]
    assert found["outer.state"].strip() == "up"
    # nothing of the drone (nor the outer link) listens on the worker
    assert found["outer.tcp"] == "" and found["outer.udp"] == "", found
    assert "stage isolation ready after" in log
    assert "stage chain ready after" in log
    # TERM to the keeper ends init, drone and the outer link: no pid left
    assert found["keeper.status"].strip() == "143", log
    assert "alive" not in found, found["alive"]
    stopping = re.findall(
        r"T(\d\d):(\d\d):(\d\d\.\d+)\S* .*?: (received SIGTERM|exiting)", log
    )
    seconds = [int(h) * 3600 + int(m) * 60 + float(s) for h, m, s, _ in stopping]
    assert seconds[-1] - seconds[0] < 3, stopping  # not a grace period run out
    assert time.monotonic() - started < 45


def test_auto_prefers_slirp4netns() -> None:
    """outer auto: slirp4netns first (bookworm's pasta collapses with many
    streams behind a rate limit, docs/benchmarks.md), pasta when alone."""
    lib = Path(__file__).resolve().parents[2] / "drone_scripts" / "lib" / "netns.sh"
    script = f'source "{lib}"; NS_OUTER=auto; netns_outer_tool'
    bin_dir = Path(tempfile.mkdtemp(prefix="tna-unit-outer."))
    try:
        found = {}
        for present in (("pasta", "slirp4netns"), ("pasta",)):
            for old in bin_dir.iterdir():
                old.unlink()
            for tool in present:
                (bin_dir / tool).write_text("#!/bin/sh\n")
                (bin_dir / tool).chmod(0o755)
            result = subprocess.run(
                ["/bin/bash", "-c", script],
                env={"PATH": str(bin_dir)},
                capture_output=True,
                text=True,
                check=False,
            )
            found[present] = result.stdout
    finally:
        for old in bin_dir.iterdir():
            old.unlink()
        bin_dir.rmdir()
    assert found == {("pasta", "slirp4netns"): "slirp4netns", ("pasta",): "pasta"}


def run_fallback(root: Path, isolation: str) -> subprocess.CompletedProcess:
    """The keeper in a user namespace that allows only one more (design 1.5)."""
    (root / "drone.sh").write_text(drone_script(isolation=isolation))
    wrapper = textwrap.dedent(
        """\
        echo 1 >/proc/sys/user/max_user_namespaces || exit 99
        exec unshare -U --map-user="$1" --map-group="$1" -- bash "$2"
        """
    )
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        + ["env", "-i", f"PATH={os.environ['PATH']}", f"HOME={root / 'home'}"]
        + [f"TMPDIR={root / 'tmp'}", f"UNIT_OUT={root / 'out'}"]
        + ["TardisDroneUuid=unit-fallback"]
        + ["unshare", "-Ur", "sh", "-c", wrapper, "wrapper"]
        + [str(NOBODY), str(root / "drone.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_fallback_preferred_logs_and_uses_preload(root: Path) -> None:
    result = run_fallback(root, "preferred")
    assert result.returncode == 0, result.stderr
    assert re.search(
        r"stage isolation skipped: unprivileged network namespace not possible: "
        r".*; capture falls back to preload \(proxychains\)",
        result.stderr,
    ), result.stderr
    out = root / "out"
    assert (out / "method").read_text() == "preload\n"
    method, tool, reason = (out / "isolation").read_text().rstrip("\n").split("\t")
    assert (method, tool) == ("preload", "proxychains")
    assert "unshare" in reason


def test_fallback_required_fails_in_stage_isolation(root: Path) -> None:
    result = run_fallback(root, "required")
    assert result.returncode == 15, result.stderr
    assert "stage isolation failed: unprivileged network namespace" in result.stderr
    assert not (root / "out" / "method").exists()
