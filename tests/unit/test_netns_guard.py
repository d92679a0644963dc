"""The namespace's outer link publishes nothing, and nothing outlives the keeper (issue 12).

pasta's defaults forward every port bound inside the namespace to the
worker's 0.0.0.0 (design 1, item 1): the drone's tunnel would be open to
every user of the node. The flags switch that off; netns_outer_guard is the
backstop. Here the guard is made to trip: the rendered script's pasta flags
are weakened (the test edits the script text; nothing in the product can
weaken them) and the drone must fail in stage isolation with exit 15 naming
the published port. Another uid's connections to the drone's ports from the
worker's network namespace are refused as shipped (and reach them when
weakened and unguarded: the check can fail).

Also: SIGKILL of the keeper leaves no process behind (its reaper), and a
worker without a default route still gets its outer link (pasta -i DEV -g GW,
design 1, item 4).

Same setup as test_netns_sh.py: a throwaway network + mount namespace made
here as root, documentation addresses only, a 0666 tun node bind-mounted over
/dev/net/tun in that mount namespace only, the drone as nobody.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_netns_sh as base
from procs import leftovers

DRONE_LIB = Path(__file__).resolve().parents[2] / "drone_scripts" / "lib"
OTHER = 65533  # another local user of the worker
pytestmark = pytest.mark.skipif(bool(base.WHY_NOT), reason=base.WHY_NOT or "runs")

#: the flags that keep pasta from publishing anything, as rendered
SAFE_FLAGS = ("-t none -u none -T none \\\n", "-U none --no-map-gw")

# Runs as root in a throwaway network + mount namespace: the worker's side.
# ROUTE: default (a default route) or hop (only a route to the first hop's
# network). ACTION: term (TERM to the keeper after the checks), kill
# (SIGKILL, then watch its processes go) or watch (wait for the keeper to end).
HARNESS = r"""set -u
root=$1 out=$2 uid=$3 other=$4 route=$5 action=$6
ip link set lo up
ip link add d0 type veth peer name d1
ip addr add 192.0.2.1/24 dev d0
ip link set d0 up
ip link set d1 up
if [ "$route" = default ]; then
    ip route add default via 192.0.2.254 dev d0
else
    ip route add 198.51.100.0/24 via 192.0.2.254 dev d0
fi
mkdir -p "$root/tun"
mount -t tmpfs -o mode=755 tmpfs "$root/tun"
mknod -m 666 "$root/tun/tun" c 10 200
mount --bind "$root/tun/tun" /dev/net/tun
setpriv --reuid="$uid" --regid="$uid" --clear-groups \
    env -i PATH="$PATH" HOME="$root/home" TMPDIR="$root/tmp" UNIT_OUT="$out" \
    UNIT_SOCKS="$root/socks.py" TardisDroneUuid=unit-guard \
    bash "$root/drone.sh" 2>"$out/log" &
keeper=$!
as_other() { setpriv --reuid="$other" --regid="$other" --clear-groups "$@"; }
listeners() { # FILES...: "PROTO PORT" of TCP listeners and bound UDP sockets
    awk 'FNR == 1 { udp = FILENAME ~ /udp/; next }
         $4 == (udp ? "07" : "0A") { split($2, a, ":"); print (udp ? "udp " : "tcp ") a[2] }' "$@" |
        while read -r proto hex; do echo "$proto $((16#$hex))"; done | sort -u
}
descendants() { # "PID STARTTIME" of PID and everything below it
    ps -eo pid=,ppid= | awk -v top="$1" '
        { parent[$1] = $2 }
        END { for (p in parent) { q = p
                while (q != "" && q != top && q > 1) q = parent[q]
                if (q == top) print p } }' |
        while read -r pid; do
            start=$(awk '{ sub(/.*\) /, ""); print $20 }' "/proc/$pid/stat" 2>/dev/null)
            [ -n "$start" ] && echo "$pid $start"
        done
}
alive() { # the lines of FILE ("PID STARTTIME") still running (not zombies)
    while read -r pid start; do
        stat=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
        set -- $stat
        [ "$1" != Z ] && [ "${20}" = "$start" ] && echo "$pid $(cat /proc/$pid/comm)"
    done <"$1"
}
snapshot() { descendants "$keeper" >>"$out/seen"; } # for the survivors check
for i in $(seq 300); do
    [ -e "$out/ready" ] && break
    kill -0 "$keeper" 2>/dev/null || break
    [ $((i % 5)) = 0 ] && snapshot
    sleep 0.1
done
snapshot
ns=$(ls -d "$root"/tmp/tardis-drone.*/ns 2>/dev/null | head -1)
if [ -e "$out/ready" ] && [ "$action" != watch ]; then
    unshare=$(cat "$ns/unshare.pid")
    inside=/proc/$unshare/net
    listeners "$inside/tcp" "$inside/tcp6" "$inside/udp" "$inside/udp6" >"$out/inside"
    # pasta forwards a port about 1 s after it is bound inside: give it 2.5 s
    for i in $(seq 25); do
        [ -s "$out/worker" ] && break
        listeners /proc/net/tcp /proc/net/tcp6 /proc/net/udp /proc/net/udp6 >"$out/worker"
        sleep 0.1
    done
    # another user of the node tries every TCP port of the drone
    while read -r proto port; do
        [ "$proto" = tcp ] || continue
        for address in 127.0.0.1 192.0.2.1; do
            if as_other bash -c "exec 3<>/dev/tcp/$address/$port" 2>/dev/null; then
                echo "$address:$port reached" >>"$out/other"
            else
                echo "$address:$port refused" >>"$out/other"
            fi
        done
    done <"$out/inside"
    as_other nsenter -t "$unshare" -U -n true 2>"$out/nsenter.err"
    echo $? >"$out/nsenter.status"
    tr '\0' ' ' <"/proc/$(cat "$ns/outer.child")/cmdline" >"$out/outer.cmdline"
    cp "$ns/outer.state" "$out/" 2>/dev/null
    descendants "$keeper" | tee -a "$out/seen" >"$out/processes"
    if [ "$action" = kill ]; then
        kill -KILL "$keeper"
        wait "$keeper" 2>/dev/null
        started=$(date +%s%N)
        for i in $(seq 100); do
            alive "$out/processes" >"$out/alive"
            [ -s "$out/alive" ] || break
            sleep 0.1
        done
        echo $((($(date +%s%N) - started) / 1000000)) >"$out/gone.ms"
        [ -d "$ns" ] && echo yes >"$out/dir.left"
    else
        kill -TERM "$keeper"
    fi
fi
for i in $(seq 200); do
    kill -0 "$keeper" 2>/dev/null || break
    [ $((i % 5)) = 0 ] && snapshot
    sleep 0.1
done
kill -TERM "$keeper" 2>/dev/null # watch: still up after 20 s
wait "$keeper"
echo $? >"$out/keeper.status"
# whatever of the drone still runs 2 s after the keeper ended (pasta too):
# recorded, then killed, so that a failing test leaves nothing either
sort -u "$out/seen" >"$out/seen.all"
for i in $(seq 20); do
    alive "$out/seen.all" >"$out/survivors"
    [ -s "$out/survivors" ] || break
    sleep 0.1
done
while read -r pid _; do kill -KILL "$pid" 2>/dev/null; done <"$out/survivors"
exit 0
"""


def guarded_script(*, weakened: bool = False, guard_ms: int = 0) -> str:
    """The test's drone script; pasta's safe flags dropped when ``weakened``."""
    script = base.drone_script()
    if weakened:
        for flags in SAFE_FLAGS:
            assert script.count(flags) == 1, f"rendered pasta flags changed: {flags!r}"
        script = script.replace(SAFE_FLAGS[0], "\\\n").replace(
            SAFE_FLAGS[1], "--no-map-gw"
        )
    if guard_ms:
        assert script.count("\nNS_GUARD_EVERY_MS=5000 ") == 1
        script = script.replace(
            "\nNS_GUARD_EVERY_MS=5000 ", f"\nNS_GUARD_EVERY_MS={guard_ms} "
        )
    return script


@pytest.fixture
def root() -> Iterator[Path]:
    """A directory nobody can use (the pytest tmp_path is root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="tna-unit-guard."))
    path.chmod(0o755)
    for sub in ("tmp", "home", "out"):
        (path / sub).mkdir()
        os.chown(path / sub, base.NOBODY, base.NOBODY)
    (path / "socks.py").write_text(base.SOCKS)
    yield path
    assert not leftovers(path), leftovers(path)
    shutil.rmtree(path, ignore_errors=True)


def run(
    root: Path, script: str, *, route: str = "default", action: str = "term"
) -> dict[str, str]:
    """Run the harness; the files it wrote, by name."""
    (root / "drone.sh").write_text(script)
    (root / "harness.sh").write_text(HARNESS)
    out = root / "out"
    subprocess.run(
        ["unshare", "-n", "-m", "--propagation", "private", "--", "bash"]
        + [str(root / "harness.sh"), str(root), str(out), str(base.NOBODY)]
        + [str(OTHER), route, action],
        timeout=60,
        check=True,
    )
    found = {p.name: p.read_text() for p in out.iterdir() if p.is_file()}
    assert found["survivors"] == "", found["survivors"]
    return found


def test_guard_fails_the_drone_when_pasta_publishes(root: Path) -> None:
    """pasta without its flags publishes the drone's ports: exit 15, port named."""
    started = time.monotonic()
    found = run(root, guarded_script(weakened=True, guard_ms=1000), action="watch")
    log = found.get("log", "")
    assert found["keeper.status"].strip() == "15", log
    failed = re.search(
        r"stage isolation failed: pasta \(pid \d+\) published the drone's ports on"
        r" \S+: ((?:tcp|udp) 0\.0\.0\.0:\d+(?:, )?)+; refusing",
        log,
    )
    assert failed, log
    # the ports are the drone's own: the SOCKS stand-in, redsocks, dnstc
    ports = set(re.findall(r"0\.0\.0\.0:(\d+)", failed.group(0)))
    assert ports and ports <= {"20000", "12345", "5300"}, failed.group(0)
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("weakened", [False, True], ids=["shipped", "weakened"])
def test_other_user_cannot_reach_the_drone(root: Path, weakened: bool) -> None:
    """As another uid, from the worker's netns: every port of the drone refused.

    Weakened and unguarded (the guard looks only every 10 minutes), the same
    attempts reach the drone: the check sees what the guard is for.
    """
    script = guarded_script(weakened=weakened, guard_ms=600000 if weakened else 0)
    found = run(root, script)
    log = found.get("log", "")
    assert "ready" in found, log
    inside = found["inside"].split("\n")
    assert "tcp 20000" in inside and "tcp 12345" in inside, found["inside"]
    attempts = found["other"].split("\n")[:-1]
    assert len(attempts) >= 4, attempts
    # nobody else may enter the drone's namespaces
    assert found["nsenter.status"].strip() != "0"
    # (it cannot even open /proc/PID/ns/user: not its process)
    assert re.search(
        "Permission denied|Operation not permitted", found["nsenter.err"]
    ), found["nsenter.err"]
    if not weakened:
        assert all(a.endswith(" refused") for a in attempts), attempts
        assert found["worker"] == "", found["worker"]
        assert found["keeper.status"].strip() == "143", log
    else:
        assert "127.0.0.1:20000 reached" in attempts, (attempts, found["worker"])
        assert "192.0.2.1:20000 reached" in attempts, attempts
        assert "tcp 20000" in found["worker"].split("\n")


def test_keeper_sigkill_leaves_nothing_behind(root: Path) -> None:
    """SIGKILL of the batch job's shell: the reaper ends init and pasta."""
    found = run(root, guarded_script(), action="kill")
    log = found.get("log", "")
    processes = found["processes"].split("\n")[:-1]
    # keeper, reaper, unshare, init, drone, pasta's supervisor and pasta, ...
    assert len(processes) >= 6, found["processes"]
    assert found["alive"] == "", found["alive"]
    assert int(found["gone.ms"]) < 5000, found["gone.ms"]
    assert "stage isolation ready after" in log


def test_worker_without_default_route_names_the_hop_interface(root: Path) -> None:
    """No default route on the worker: pasta gets -i DEV -g GW of the first hop."""
    found = run(root, guarded_script(), route="hop")
    log = found.get("log", "")
    assert "ready" in found, log
    assert " -i d0 -g 192.0.2.254 " in found["outer.cmdline"], found["outer.cmdline"]
    assert found["outer.state"].strip() == "up"
    assert "stage chain ready after" in log
    assert found["keeper.status"].strip() == "143", log


PUBLISHED = r"""set -u
source "$1/common.sh"
source "$1/netns.sh"
inside=$2
# a pasta-style forward: nobody's wildcard listener on a port bound inside
listen() { # UID ADDRESS PORT [udp]
    setpriv --reuid="$1" --regid="$1" --clear-groups /usr/bin/python3 -c '
import socket, sys, time
udp = len(sys.argv) > 3
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET,
                  socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
s.bind((sys.argv[1], int(sys.argv[2])))
udp or s.listen()
time.sleep(30)' "$2" "$3" ${4:+"$4"} &
}
inode() { # FILE PORT: the socket inode bound to PORT
    awk -v port="$(printf %04X "$2")" 'FNR > 1 && $2 ~ ":" port "$" { print $10 }' "$1"
}
ip link set lo up
listen 65534 0.0.0.0 7778
listen 65534 :: 7781
# the same uid on loopback (a preload drone's ssh -D): not pasta's
listen 65534 127.0.0.1 7779
# another uid's wildcard listener on a port bound inside: not the drone's
listen 65533 0.0.0.0 7780
# the drone's uid on a port nothing inside uses
listen 65534 0.0.0.0 7782
# as the tool's own sockets (rule 1, another uid so that rule 2 is silent):
# a TCP listener on any port, a UDP socket on a port bound inside, and a
# UDP socket on a port unused inside (slirp4netns' NAT flow: not published)
listen 65532 127.0.0.1 7783
listen 65532 0.0.0.0 7784 udp
listen 65532 0.0.0.0 7785 udp
sleep 0.5
echo "own: [$(netns_published 65534 "$inside" "")]"
echo "other: [$(netns_published 65533 "$inside" "")]"
tool="$(inode /proc/net/tcp 7783) $(inode /proc/net/udp 7784) $(inode /proc/net/udp 7785)"
echo "tool: [$(netns_published 65534 /nonexistent "$tool")]"
echo "tool+inside: [$(netns_published 65531 "$inside" "$tool")]"
kill $(jobs -p)
"""


def test_published_ports_found_without_the_tools_fds(tmp_path: Path) -> None:
    """netns_published's two rules on hand-made listeners (rule 2: pasta's case)."""
    inside = tmp_path / "net"
    inside.mkdir()
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when"
    rows = [  # 127.0.0.1 listeners on 7778..7780, a connected one on 7782
        f"   {i}: 0100007F:{port:04X} 00000000:0000 {st} 0:0 0:0 0 65534 0 {9 + i} 1"
        for i, (port, st) in enumerate(
            [(7778, "0A"), (7779, "0A"), (7780, "0A"), (7782, "01")]
        )
    ]
    (inside / "tcp").write_text("\n".join([header, *rows]) + "\n")
    v6 = (
        f"   0: {'0' * 24}0100007F:{7781:04X} {'0' * 32}:0000 0A 0:0 0:0 0 65534 0 20 1"
    )
    (inside / "tcp6").write_text(f"{header}\n{v6}\n")
    udp = f"   0: 0100007F:{7784:04X} 00000000:0000 07 0:0 0:0 0 65534 0 30 2"
    (inside / "udp").write_text(f"{header}\n{udp}\n")
    (tmp_path / "published.sh").write_text(PUBLISHED)
    result = subprocess.run(
        ["unshare", "-n", "--", "bash", str(tmp_path / "published.sh")]
        + [str(DRONE_LIB), str(inside)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "own: [tcp 0.0.0.0:7778, tcp [::]:7781]\n" in result.stdout, result
    assert "other: [tcp 0.0.0.0:7780]\n" in result.stdout, result
    assert "tool: [tcp 127.0.0.1:7783]\n" in result.stdout, result
    assert "tool+inside: [tcp 127.0.0.1:7783, udp 0.0.0.0:7784]\n" in result.stdout
    assert "7785" not in result.stdout
