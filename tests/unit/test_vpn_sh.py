"""drone_scripts/lib/vpn.sh (mode vpn) runs for real against a real ocserv.

Like tests/unit/test_netns_sh.py: a throwaway network + mount namespace made
here as root is the "worker" (documentation addresses only, a 0666 tun node
bind-mounted in that mount namespace only). In it, as root, run Debian's
ocserv (certificates made with certtool into the test's directory, an
ocpasswd file) on 198.51.100.1:443 (TCP and UDP) and a stand-in collector on
203.0.113.5:9618 that answers with the address it sees. The drone runs as
nobody: keeper, init (openconnect, supervised) and drone roles of the
script, with pasta as the outer link, so openconnect's TLS and DTLS go
through pasta to ocserv, and the payload's connections through tun0.

The script is assembled here from the libraries and hand-written settings
(group vpn, as tardis_netadapter/modes/vpn.py renders them), so these tests
exercise the bash alone.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostcheck import NOBODY, unavailable
from procs import leftovers

from tardis_netadapter.connectivity.heartbeat import parse_record

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "drone_scripts" / "lib"
SERVER = "198.51.100.1"
COLLECTOR = "203.0.113.5"
POOL = "10.99.8"
DNS = "203.0.113.53"
TOOLS = ("unshare", "setpriv", "nft", "ip", "pasta", "openconnect", "ocserv")
TOOLS += ("ocpasswd", "certtool")


WHY_NOT = unavailable(TOOLS, "for a throwaway network namespace, tun node and ocserv")
#: the tests that run a real ocserv and drone (the watchdog's tests need nothing)
real = pytest.mark.skipif(bool(WHY_NOT), reason=WHY_NOT or "runs")

# the vpn guard as modes/vpn.py renders it through write_capture_nft
NFT = """table inet tna_guard {
    counter leaks_udp {
    }
    counter leaks_other {
    }
    set localnet {
        type ipv4_addr
        flags interval
        elements = { 127.0.0.0/8 }
    }
    set hops {
        type ipv4_addr . inet_service
        elements = { @TARDIS_HOPS@ }
    }
    chain out {
        type filter hook output priority 0; policy drop;
        oif "lo" accept
        oifname "tun0" accept
        ip daddr @localnet accept
        ip daddr . tcp dport @hops accept
        ip daddr . udp dport @hops accept
        meta l4proto udp counter name "leaks_udp" drop
        counter name "leaks_other" drop
    }
}
"""


def settings(**changes: str) -> str:
    """The settings block (the common groups, capture, vpn); values as bash words."""
    values = {
        "SITE_NAME": "S",
        "MACHINE_TYPE": "cpu",
        "NETWORK_MODE": "vpn",
        "SUPERVISE_PROBE_MIN_MS": "300",
        "SUPERVISE_PROBE_MAX_MS": "600",
        "SUPERVISE_PROBE_TIMEOUT_MS": "1000",
        "SUPERVISE_SPREAD_MS": "300",
        "SUPERVISE_BACKOFF_BASE_MS": "200",
        "SUPERVISE_BACKOFF_CAP_MS": "2000",
        "CAPTURE_METHOD": "namespace",
        "ISOLATION": "preferred",
        "NS_OUTER": "pasta",
        "NS_MTU": "65520",
        "NS_CIDR": "100.64.99.0/24",
        "NS_READY_TIMEOUT_MS": "10000",
        "NS_LOCALNET": "(127.0.0.0/8)",
        "NS_FIRST_HOPS": f"({SERVER}:443)",
        "CHAIN_RESOLVER": "''",
        "CHAIN_RESOLVER_ROUTE": "chain",
        "CHAIN_REDSOCKS": "''",
        "CHAIN_TOOL": "proxychains",
        "VPN_SERVER": SERVER,
        "VPN_PORT": "443",
        "VPN_SERVERCERT": "@PIN@",
        "VPN_USER": "drone",
        "VPN_PASSWORD_FILE": "'~/vpn.password'",
        "VPN_CERTIFICATE": "''",
        "VPN_KEY": "''",
        "VPN_AUTHGROUP": "''",
        "VPN_DTLS": "1",
        "VPN_PROTOCOL": "anyconnect",
        "VPN_MTU": "''",
        "VPN_RECONNECT_TIMEOUT": "5",
        "VPN_DPD": "5",
        "VPN_FALLBACK": "ocproxy",
        "VPN_READY_TIMEOUT_MS": "20000",
        "VPN_PROBE_HOST": COLLECTOR,
        "VPN_PROBE_PORT": "9618",
    }
    values.update(changes)
    return "".join(f"{name}={value}\n" for name, value in values.items())


# The test's main: setup, isolation and vpn as the rendered script runs them,
# then checks from inside the drone role (as the payload would run them), then
# a probe of the collector every 200 ms (for the restart test) until TERM.
MAIN = r"""main() {
    drone_setup
    isolation_stage
    vpn_stage
    unit_inside
}

unit_inside() {
    local out=$UNIT_OUT line
    id -u >"$out/uid"
    if nft flush ruleset 2>"$out/nft.err"; then echo flushed >"$out/nft"; else echo refused >"$out/nft"; fi
    ip -4 -o addr show dev tun0 >"$out/tun0" 2>&1
    cat /etc/resolv.conf >"$out/resolv.conf"
    cp -- "$DRONE_DIR/ns/vpn.state" "$out/vpn.state"
    { exec 3<>"/dev/tcp/203.0.113.5/9618" && read -r -t 5 line <&3 &&
        printf '%s\n' "$line"; exec 3<&-; } >"$out/tcp" 2>&1
    # UDP to the server's other ports must not leave through the outer link
    if (printf x >/dev/udp/198.51.100.1/9) 2>>"$out/udp.err"; then echo sent >>"$out/udp"; fi
    echo ready >"$out/ready"
    while :; do
        if timeout 1 bash -c 'exec 3<>/dev/tcp/203.0.113.5/9618' 2>/dev/null; then
            echo "$EPOCHREALTIME ok" >>"$out/probes"
        else
            echo "$EPOCHREALTIME fail" >>"$out/probes"
        fi
        sleep 0.2
    done
}
"""

COLLECTOR_PY = r"""
import socket, sys, threading
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen(64)
while True:
    conn, peer = server.accept()
    try:
        conn.sendall(f"peer {peer[0]}\n".encode())
    except OSError:
        pass
    conn.close()
"""

OCSERV_CONF = """auth = "plain[passwd={d}/ocpasswd]"
listen-host = {server}
tcp-port = 443
udp-port = 443
run-as-user = nobody
run-as-group = nogroup
socket-file = {d}/ocserv.sock
use-occtl = false
pid-file = {d}/ocserv.pid
server-cert = {d}/server.pem
server-key = {d}/server.key
isolate-workers = false
restrict-user-to-routes = false
max-clients = 16
max-same-clients = 0
rate-limit-ms = 0
max-ban-score = 0
keepalive = 30
dpd = 10
mobile-dpd = 10
try-mtu-discovery = false
auth-timeout = 60
cookie-timeout = 60
deny-roaming = false
use-utmp = false
log-level = 2
device = vpns
predictable-ips = true
ping-leases = false
ipv4-network = {pool}.0/24
dns = {dns}
route = default
cisco-client-compat = true
dtls-legacy = true
"""

# Runs as root in a throwaway network + mount namespace: the worker (with
# ocserv and the collector on a second veth's addresses).
HARNESS = r"""set -u
root=$1 out=$2 uid=$3 action=$4
ip link set lo up
ip link add d0 type veth peer name d1
ip addr add 192.0.2.1/24 dev d0
ip addr add 198.51.100.1/32 dev d1
ip addr add 203.0.113.5/32 dev d1
ip link set d0 up
ip link set d1 up
ip route add default via 192.0.2.254 dev d0
mkdir -p "$root/tun"
mount -t tmpfs -o mode=755 tmpfs "$root/tun"
mknod -m 666 "$root/tun/tun" c 10 200
mount --bind "$root/tun/tun" /dev/net/tun
start_ocserv() {
    ocserv -f -c "$root/vpn/ocserv.conf" >>"$out/ocserv.log" 2>&1 &
    ocserv_pid=$!
    for i in $(seq 100); do
        awk 'FNR > 1 && $2 == "016433C6:01BB" && $4 == "0A"' /proc/net/tcp | grep -q . && break
        sleep 0.05
    done
}
stop_ocserv() {
    kill -TERM "$ocserv_pid" 2>/dev/null
    for i in $(seq 100); do kill -0 "$ocserv_pid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$ocserv_pid" 2>/dev/null
    wait "$ocserv_pid" 2>/dev/null
    # its sec-mod and workers end with it
    for i in $(seq 100); do
        awk 'FNR > 1 && $2 == "016433C6:01BB"' /proc/net/tcp | grep -q . || break
        sleep 0.05
    done
}
start_ocserv
python3 "$root/collector.py" 203.0.113.5 9618 &
collector=$!
PATH=$PATH:/usr/sbin:/sbin setpriv --reuid="$uid" --regid="$uid" --clear-groups \
    env -i PATH="$PATH:/usr/sbin:/sbin" HOME="$root/home" TMPDIR="$root/tmp" \
    UNIT_OUT="$out" TardisDroneUuid=unit-vpn bash "$root/drone.sh" 2>"$out/log" &
keeper=$!
echo "$keeper" >"$out/keeper.pid"
for i in $(seq 400); do
    [ -e "$out/ready" ] && break
    kill -0 "$keeper" 2>/dev/null || break
    sleep 0.1
done
if [ -e "$out/ready" ]; then
    ns=$(ls -d "$root"/tmp/tardis-drone.* | head -1)/ns
    sleep 1
    # every process's command line and environment, for the credential scan
    for p in /proc/[0-9]*; do
        tr '\0' ' ' <"$p/cmdline" 2>/dev/null; echo
        tr '\0' '\n' <"$p/environ" 2>/dev/null
    done >"$out/procs"
    ps -eo pid,user,args >"$out/ps"
    awk 'FNR > 1 && $4 == "0A"' /proc/net/tcp /proc/net/tcp6 >"$out/outer.tcp"
    if [ "$action" = restart ]; then
        date +%s.%N >"$out/restart.start"
        stop_ocserv
        start_ocserv
        date +%s.%N >"$out/restart.up"
        for i in $(seq 300); do
            read -r state _ <"$ns/vpn.state" 2>/dev/null
            tail -n 1 "$out/probes" | grep -q ok && [ "$state" = up ] &&
                [ "$(date +%s)" -gt "$(cut -d. -f1 "$out/restart.up")" ] && break
            sleep 0.1
        done
        sleep 1
        cp "$ns/vpn.restarts" "$out/" 2>/dev/null
    fi
    cp "$ns/vpn.state" "$out/vpn.state.end" 2>/dev/null
    cp "$ns/vpn.script" "$ns/isolation" "$ns/init.pid" "$ns/vpn.child" \
        "$ns/unshare.pid" "$ns/rules.nft" "$out/" 2>/dev/null
    kill -TERM "$keeper"
fi
for i in $(seq 200); do
    kill -0 "$keeper" 2>/dev/null || break
    sleep 0.1
done
wait "$keeper"
echo $? >"$out/keeper.status"
sleep 0.5 # the BYE reaches ocserv
cp "$out/ocserv.log" "$out/ocserv.log.end" 2>/dev/null
stop_ocserv
kill -TERM "$collector"; wait "$collector" 2>/dev/null
for f in unshare.pid init.pid; do  # (vpn.child is a pid inside the namespace)
    [ -r "$out/$f" ] || continue
    pid=$(cat "$out/$f")
    state=$(awk '{ sub(/.*\) /, ""); print $1 }' "/proc/$pid/stat" 2>/dev/null)
    if [ -n "$state" ] && [ "$state" != Z ]; then echo "$f $pid $state" >>"$out/alive"; fi
done
"""

CA_TMPL = 'cn = "unit ca"\nca\ncert_signing_key\nexpiration_days = 30\n'
SERVER_TMPL = (
    f'cn = "{SERVER}"\nip_address = "{SERVER}"\ntls_www_server\n'
    "encryption_key\nsigning_key\nexpiration_days = 30\n"
)


def certtool(*args: str) -> str:
    return subprocess.run(
        ["certtool", *args], capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture(scope="module")
def vpn_files() -> Iterator[tuple[Path, str, str]]:
    """CA, server certificate and key, the ocpasswd file: (dir, pin, password)."""
    d = Path(tempfile.mkdtemp(prefix="tna-unit-vpnca."))
    certtool("--generate-privkey", "--key-type=ecdsa", "--outfile", str(d / "ca.key"))
    (d / "ca.tmpl").write_text(CA_TMPL)
    certtool(
        "--generate-self-signed",
        "--load-privkey",
        str(d / "ca.key"),
        "--template",
        str(d / "ca.tmpl"),
        "--outfile",
        str(d / "ca.pem"),
    )
    certtool(
        "--generate-privkey", "--key-type=ecdsa", "--outfile", str(d / "server.key")
    )
    (d / "server.tmpl").write_text(SERVER_TMPL)
    certtool(
        "--generate-certificate",
        "--load-privkey",
        str(d / "server.key"),
        "--load-ca-certificate",
        str(d / "ca.pem"),
        "--load-ca-privkey",
        str(d / "ca.key"),
        "--template",
        str(d / "server.tmpl"),
        "--outfile",
        str(d / "server.pem"),
    )
    info = certtool("--certificate-info", "--infile", str(d / "server.pem"))
    pin = re.search(r"pin-sha256:[A-Za-z0-9+/=]+", info)
    assert pin, info
    password = "pw-" + secrets.token_urlsafe(12)
    subprocess.run(
        ["ocpasswd", "-c", str(d / "ocpasswd"), "drone"],
        input=f"{password}\n{password}\n",
        text=True,
        check=True,
    )
    yield d, pin.group(0), password
    shutil.rmtree(d, ignore_errors=True)


def drone_script(pin: str, **changes: str) -> str:
    """Settings, the guard's config function, the libraries, the test's main."""
    parts = [
        "#!/bin/bash\nset -o pipefail\n",
        settings(**changes).replace("@PIN@", pin),
    ]
    parts.append(f"write_capture_nft() {{\n    cat <<'EOF'\n{NFT}EOF\n}}\n")
    for name in ("common.sh", "supervise.sh", "netns.sh", "vpn.sh"):
        parts.append((LIB / name).read_text())
    parts.append(MAIN)
    parts.append('if ! (return 0 2>/dev/null); then\n    main "$@"\nfi\n')
    return "\n".join(parts)


@pytest.fixture
def root(vpn_files: tuple[Path, str, str]) -> Iterator[Path]:
    """A directory nobody can use, with the VPN server's files and the
    drone user's 0600 password file in its home."""
    path = Path(tempfile.mkdtemp(prefix="tna-unit-vpn."))
    path.chmod(0o755)
    for sub in ("tmp", "home", "out"):
        (path / sub).mkdir()
        os.chown(path / sub, NOBODY, NOBODY)
    shutil.copytree(vpn_files[0], path / "vpn")
    (path / "vpn").chmod(0o755)  # ocserv's workers (nobody) use its socket there
    (path / "vpn" / "ocserv.conf").write_text(
        OCSERV_CONF.format(d=path / "vpn", server=SERVER, pool=POOL, dns=DNS)
    )
    (path / "collector.py").write_text(COLLECTOR_PY)
    password = path / "home" / "vpn.password"
    password.write_text(vpn_files[2] + "\n")
    password.chmod(0o600)
    os.chown(password, NOBODY, NOBODY)
    yield path
    assert not leftovers(path), leftovers(path)
    shutil.rmtree(path, ignore_errors=True)


def run_harness(
    root: Path, script: str, action: str = "", timeout: float = 90
) -> dict[str, str]:
    (root / "drone.sh").write_text(script)
    (root / "harness.sh").write_text(HARNESS)
    out = root / "out"
    subprocess.run(
        ["unshare", "-n", "-m", "--propagation", "private", "--"]
        + ["bash", str(root / "harness.sh"), str(root), str(out), str(NOBODY), action],
        timeout=timeout,
        check=True,
    )
    return {p.name: p.read_text(errors="replace") for p in out.iterdir() if p.is_file()}


@real
def test_vpn_up_through_pasta_with_dtls(
    root: Path, vpn_files: tuple[Path, str, str]
) -> None:
    _, pin, password = vpn_files
    started = time.monotonic()
    found = run_harness(root, drone_script(pin))
    log = found.get("log", "")
    assert "ready" in found, log + found.get("ocserv.log", "")
    # the payload's side: the real uid, no say over the rules, a VPN address
    assert found["uid"].strip() == str(NOBODY), log
    assert found["nft"].strip() == "refused", found.get("nft.err")
    assert re.search(rf"inet {POOL}\.\d+/32", found["tun0"]), found["tun0"]
    state = found["vpn.state"].split()
    assert state[0] == "up" and state[1].startswith(f"{POOL}.") and state[2] == "dtls"
    # the collector sees the VPN address: the connection went through tun0
    assert found["tcp"].strip() == f"peer {state[1]}", (found["tcp"], log)
    # the pushed DNS server; UDP past the VPN refused (and counted)
    assert found["resolv.conf"].strip() == f"nameserver {DNS}"
    assert "udp" not in found and "Operation not permitted" in found["udp.err"]
    assert found["isolation"] == "namespace\tpasta\t\n"
    # nothing of the drone listens on the worker (only ocserv and the collector)
    listening = {line.split()[1] for line in found["outer.tcp"].splitlines()}
    assert listening <= {"016433C6:01BB", "057100CB:2592"}, found["outer.tcp"]
    assert "stage isolation ready after" in log
    assert re.search(
        r"vpn: tun0 10\.99\.8\.\d+ through 198\.51\.100\.1:443 \(dtls\)", log
    )
    assert "stage vpn ready after" in log
    # the password: in no command line, environment or log line
    assert password not in found["procs"]
    assert password not in found["ps"] and password not in log
    assert "--passwd-on-stdin" in found["procs"]  # openconnect was seen
    # TERM to the keeper: openconnect said BYE, nothing is left
    assert found["keeper.status"].strip() == "143", log
    assert "alive" not in found, found["alive"]
    assert "user disconnected" in found["ocserv.log.end"]
    assert time.monotonic() - started < 60


@real
def test_no_dtls_runs_over_tls(root: Path, vpn_files: tuple[Path, str, str]) -> None:
    found = run_harness(root, drone_script(vpn_files[1], VPN_DTLS="0"))
    log = found.get("log", "")
    assert "ready" in found, log
    state = found["vpn.state"].split()
    assert state[0] == "up" and state[2] == "tls", found["vpn.state"]
    assert found["tcp"].strip() == f"peer {state[1]}"
    assert "--no-dtls" in found["procs"]


@real
def test_wrong_pin_fails_stage_vpn_with_25(
    root: Path, vpn_files: tuple[Path, str, str]
) -> None:
    wrong = "pin-sha256:" + "A" * 43 + "="
    started = time.monotonic()
    found = run_harness(root, drone_script(vpn_files[1], VPN_SERVERCERT=wrong))
    log = found.get("log", "")
    assert "ready" not in found
    assert found["keeper.status"].strip() == "25", log
    line = re.search(r"stage vpn failed: server certificate mismatch: (.*)", log)
    assert line, log
    # the line names the pin the server has, and the one configured
    assert vpn_files[1] in line.group(1) and wrong in line.group(1)
    assert time.monotonic() - started < 30
    assert "alive" not in found, found["alive"]


@real
def test_readable_password_file_is_refused(
    root: Path, vpn_files: tuple[Path, str, str]
) -> None:
    (root / "home" / "vpn.password").chmod(0o644)
    found = run_harness(root, drone_script(vpn_files[1]))
    log = found.get("log", "")
    assert found["keeper.status"].strip() == "25", log
    assert re.search(
        r"stage vpn failed: credentials: vpn.password_file \S+/home/vpn.password has "
        r"mode 0644; .*chmod 600",
        log,
    ), log
    assert "openconnect" not in found.get("ocserv.log", "")
    assert "user logged in" not in found.get("ocserv.log.end", "")


@real
def test_ocserv_restart_heals_within_10_s(
    root: Path, vpn_files: tuple[Path, str, str]
) -> None:
    found = run_harness(root, drone_script(vpn_files[1]), action="restart")
    log = found.get("log", "")
    assert "ready" in found, log
    stopped = float(found["restart.start"])
    back = float(found["restart.up"])  # the new ocserv listens
    probes = [line.split() for line in found["probes"].splitlines()]
    after = [(float(t), result) for t, result in probes if float(t) > stopped]
    failed = [t for t, result in after if result == "fail"]
    assert failed, found["probes"]  # the VPN did go down
    healed = [t for t, result in after if result == "ok" and t > failed[0]]
    assert healed, (found["probes"], log)
    # from the new ocserv's start to the payload's next successful connection
    # (its probes time out after 1 s while the tun is down)
    print(
        f"ocserv restarted: stopped in {back - stopped:.2f} s, the payload's "
        f"connections work {healed[0] - back:.2f} s after it listens again"
    )
    assert healed[0] - back < 10, log
    # once openconnect sleeps before its next try, the watcher must wake it
    # (not its 10 s sleep). When ocserv is back before openconnect's first
    # retry (a CI run, 1.6 s), it reconnects at once, never sleeps, and
    # nothing needs waking.
    if "remaining timeout" in log:
        assert "openconnect reconnects now" in log, log
    assert found["vpn.state.end"].startswith("up "), found["vpn.state.end"]
    assert "vpn.restarts" in found, log


# -- the fallback without a namespace (ocproxy + the preload chain) ----------------

FALLBACK_MAIN = r"""main() {
    drone_setup
    isolation_stage
    vpn_stage
    unit_fallback
}

unit_fallback() {
    local out=$UNIT_OUT line
    PAYLOAD_ENV=()
    chain_environment
    printf '%s\n' "${PAYLOAD_ENV[@]}" >"$out/payload.env"
    cp -- "$DRONE_DIR/ns/isolation" "$DRONE_DIR/ns/vpn.state" "$out/"
    cp -- "$DRONE_DIR/proxychains.conf" "$out/"
    printf '%s\n' "$VPN_SOCKS_PORT" >"$out/port"
    # as the payload connects: under the preload, to the collector's address
    env "${PAYLOAD_ENV[@]}" bash -c 'exec 3<>/dev/tcp/203.0.113.5/9618 &&
        read -r -t 5 line <&3 && printf "%s\n" "$line"' >"$out/tcp" 2>&1
    # and without it: nothing routes the worker to the VPN's pool
    ip -4 -o addr >"$out/addrs"
    echo ready >"$out/ready"
    while :; do sleep 1; done
}
"""

# Runs as root in a throwaway network + mount namespace (as HARNESS): ocserv
# and the collector, then the drone as nobody in a user namespace that allows
# no further one (tests/unit/test_netns_sh.py's fallback wrapper).
FALLBACK_HARNESS = r"""set -u
root=$1 out=$2 uid=$3
ip link set lo up
ip link add d0 type veth peer name d1
ip addr add 192.0.2.1/24 dev d0
ip addr add 198.51.100.1/32 dev d1
ip addr add 203.0.113.5/32 dev d1
ip link set d0 up
ip link set d1 up
ip route add default via 192.0.2.254 dev d0
mkdir -p "$root/tun"
mount -t tmpfs -o mode=755 tmpfs "$root/tun"
mknod -m 666 "$root/tun/tun" c 10 200
mount --bind "$root/tun/tun" /dev/net/tun
ocserv -f -c "$root/vpn/ocserv.conf" >>"$out/ocserv.log" 2>&1 &
ocserv_pid=$!
for i in $(seq 100); do
    awk 'FNR > 1 && $2 == "016433C6:01BB" && $4 == "0A"' /proc/net/tcp | grep -q . && break
    sleep 0.05
done
python3 "$root/collector.py" 203.0.113.5 9618 &
collector=$!
wrapper='echo 1 >/proc/sys/user/max_user_namespaces || exit 99
exec unshare -U --map-user="$1" --map-group="$1" -- bash "$2"'
PATH=$PATH:/usr/sbin:/sbin setpriv --reuid="$uid" --regid="$uid" --clear-groups \
    env -i PATH="$PATH:/usr/sbin:/sbin" HOME="$root/home" TMPDIR="$root/tmp" \
    UNIT_OUT="$out" TardisDroneUuid=unit-vpnfb \
    unshare -Ur sh -c "$wrapper" wrapper "$uid" "$root/drone.sh" 2>"$out/log" &
keeper=$!
for i in $(seq 400); do
    [ -e "$out/ready" ] && break
    kill -0 "$keeper" 2>/dev/null || break
    sleep 0.1
done
if [ -e "$out/ready" ]; then
    sleep 1
    for p in /proc/[0-9]*; do
        tr '\0' ' ' <"$p/cmdline"; echo
        tr '\0' '\n' <"$p/environ"
    done >"$out/procs" 2>/dev/null
    awk 'FNR > 1 && $4 == "0A" { print $2, $8 }' /proc/net/tcp >"$out/listen.tcp"
    kill -TERM "$keeper"
fi
for i in $(seq 200); do
    kill -0 "$keeper" 2>/dev/null || break
    sleep 0.1
done
wait "$keeper"
echo $? >"$out/keeper.status"
sleep 0.5
cp "$out/ocserv.log" "$out/ocserv.log.end" 2>/dev/null
kill -TERM "$ocserv_pid"
for i in $(seq 100); do kill -0 "$ocserv_pid" 2>/dev/null || break; sleep 0.05; done
kill -KILL "$ocserv_pid" 2>/dev/null
wait "$ocserv_pid" 2>/dev/null
kill -TERM "$collector"; wait "$collector" 2>/dev/null
sleep 0.3
here=$(readlink /proc/self/ns/net)
for p in /proc/[0-9]*; do  # the drone's processes (in this network namespace): none left
    [ "$(readlink "$p/ns/net")" = "$here" ] && [ "$(stat -c %u "$p")" = "$uid" ] &&
        tr '\0' ' ' <"$p/cmdline" && echo
done >"$out/alive" 2>/dev/null
[ -s "$out/alive" ] || rm -f "$out/alive"
exit 0
"""


def fallback_script(pin: str, **changes: str) -> str:
    """The vpn drone as rendered for the fallback: settings, the guard and the
    fallback's proxychains configuration (from modes/vpn.py), the libraries
    with lib/chain.sh, the test's main."""
    from tardis_netadapter.config import load_profile
    from tardis_netadapter.modes.vpn import fallback_proxychains_conf_text

    profile = load_profile(
        {
            "mode": "vpn",
            "vpn": {"server": SERVER, "servercert": pin, "user": "drone"}
            | {"password_file": "~/vpn.password"},
            "pool": {"collector": f"{COLLECTOR}:9618"},
        }
    )
    values = {
        "CONTAINER_RUNTIME": "none",
        "VPN_SOCKS_PORT_RANGE": "(20000 32767)",
        "CHAIN_LIBRARY": "''",
        "CHAIN_QUIET": "1",
    }
    values.update(changes)
    parts = ["#!/bin/bash\nset -o pipefail\n", settings(**values).replace("@PIN@", pin)]
    parts.append(f"write_capture_nft() {{\n    cat <<'EOF'\n{NFT}EOF\n}}\n")
    conf = fallback_proxychains_conf_text(profile)
    parts.append(f"write_proxychains_conf() {{\n    cat <<'EOF'\n{conf}EOF\n}}\n")
    for name in ("common.sh", "supervise.sh", "netns.sh", "chain.sh", "vpn.sh"):
        parts.append((LIB / name).read_text())
    parts.append(FALLBACK_MAIN)
    parts.append('if ! (return 0 2>/dev/null); then\n    main "$@"\nfi\n')
    return "\n".join(parts)


def run_fallback(root: Path, script: str, timeout: float = 90) -> dict[str, str]:
    (root / "drone.sh").write_text(script)
    (root / "harness.sh").write_text(FALLBACK_HARNESS)
    out = root / "out"
    subprocess.run(
        ["unshare", "-n", "-m", "--propagation", "private", "--"]
        + ["bash", str(root / "harness.sh"), str(root), str(out), str(NOBODY)],
        timeout=timeout,
        check=True,
    )
    return {p.name: p.read_text(errors="replace") for p in out.iterdir() if p.is_file()}


fallback = pytest.mark.skipif(
    bool(WHY_NOT) or shutil.which("ocproxy") is None,
    reason=WHY_NOT or "needs ocproxy (scripts/install-system-deps)",
)


@fallback
def test_fallback_reaches_the_collector_through_ocproxy(
    root: Path, vpn_files: tuple[Path, str, str]
) -> None:
    _, pin, password = vpn_files
    started = time.monotonic()
    found = run_fallback(root, fallback_script(pin))
    log = found.get("log", "")
    assert "ready" in found, log + found.get("ocserv.log", "")
    # reported like socks' fallback: the log line and ns/isolation
    assert re.search(
        r"stage isolation skipped: unprivileged network namespace not possible: "
        r".*; capture falls back to preload \(ocproxy\)",
        log,
    ), log
    method, tool, reason = found["isolation"].rstrip("\n").split("\t")
    assert (method, tool) == ("preload", "ocproxy") and "unshare" in reason
    # no tun: the VPN's address is ocproxy's (lwIP's), no interface has it
    # (only ocserv's vpns0 names it, as its peer)
    state = found["vpn.state"].split()
    assert state[0] == "up" and state[1].startswith(f"{POOL}.") and state[2] == "dtls"
    assert f"inet {state[1]}/" not in found["addrs"], found["addrs"]
    assert "tun0" not in found["addrs"], found["addrs"]
    # the payload's preload, to ocproxy's port on 127.0.0.1 only
    port = int(found["port"])
    assert 20000 <= port <= 32767
    env = found["payload.env"].splitlines()
    assert "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libproxychains.so.4" in env or any(
        line.startswith("LD_PRELOAD=") and "proxychains" in line for line in env
    ), env
    assert f"socks5 127.0.0.1 {port}\n" in found["proxychains.conf"]
    assert f"{port:04X}" in {
        line.split()[0].split(":")[1] for line in found["listen.tcp"].splitlines()
    }
    assert f"0100007F:{port:04X} {NOBODY}" in found["listen.tcp"], found["listen.tcp"]
    # the collector sees the VPN address: through ocproxy and ocserv
    assert found["tcp"].strip() == f"peer {state[1]}", (found["tcp"], log)
    assert "stage vpn ready after" in log
    assert re.search(rf"vpn: ocproxy 127\.0\.0\.1:{port}, 10\.99\.8\.\d+ through", log)
    assert "--script-tun" in found["procs"] and "ocproxy -D" in found["procs"]
    assert password not in found["procs"] and password not in log
    assert found["keeper.status"].strip() == "143", log
    assert "alive" not in found, found["alive"]  # ocproxy too
    assert "No such file" not in log, log  # nothing wrote after the cleanup
    assert "user disconnected" in found["ocserv.log.end"]
    print(
        f"fallback: vpn up and the collector reached in {time.monotonic() - started:.1f} s"
    )
    assert time.monotonic() - started < 60


@fallback
def test_fallback_none_without_namespace_exits_25(
    root: Path, vpn_files: tuple[Path, str, str]
) -> None:
    found = run_fallback(root, fallback_script(vpn_files[1], VPN_FALLBACK="none"))
    log = found.get("log", "")
    assert found["keeper.status"].strip() == "25", log
    assert re.search(
        r"stage vpn failed: no private namespace .*vpn\.fallback is none", log
    )
    assert "user logged in" not in found.get("ocserv.log.end", "")


@fallback
def test_fallback_required_exits_15(
    root: Path, vpn_files: tuple[Path, str, str]
) -> None:
    found = run_fallback(root, fallback_script(vpn_files[1], ISOLATION="required"))
    log = found.get("log", "")
    assert found["keeper.status"].strip() == "15", log
    assert "stage isolation failed: unprivileged network namespace" in log


# -- the watchdog's side (lib/watchdog.sh): the record's vpn object ---------------

WATCHDOG = LIB / "watchdog.sh"


def watchdog_round(tmp_path: Path, state: str | None, stage: str = "ok") -> dict:
    """One watchdog round of a vpn drone whose ns/vpn.state holds STATE
    (None: no file yet), its stage vpn STAGE, the pool unreachable."""
    ns = tmp_path / "ns"
    ns.mkdir(exist_ok=True)
    if state is not None:
        (ns / "vpn.state").write_text(state + "\n")
    script = (
        "set -euo pipefail\n"
        f"source {WATCHDOG}\n"
        f"TNA_DRONE_UUID=u1 TNA_HEARTBEAT_DIR={tmp_path}/hb TNA_RUN_DIR={tmp_path}/run\n"
        "TNA_POOL_ENDPOINTS=127.0.0.1:1 TNA_PROBE_TIMEOUT=2 TNA_CONDOR_PING=off\n"
        f"TNA_VPN_STATE_FILE={ns}/vpn.state\n"
        "TNA_STAGES=(cvmfs isolation vpn payload)\n"
        f"tna_stage cvmfs ok\ntna_stage isolation ok\ntna_stage vpn {stage}\n"
        "tna_watchdog_once\n"
    )
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "hb" / "u1.json").read_text()
    assert parse_record(text) is not None, text
    return json.loads(text)


def test_record_vpn_object_while_up(tmp_path: Path) -> None:
    data = watchdog_round(tmp_path, f"up {POOL}.7 dtls")
    assert data["vpn"] == {"transport": "dtls", "address": f"{POOL}.7"}
    assert data["stages"]["vpn"] == "ok"
    assert data["failing_stage"] == "chain"  # up, but the pool does not answer
    record = parse_record(json.dumps(data))
    assert record.vpn.transport == "dtls" and record.vpn.address == f"{POOL}.7"


def test_vpn_down_is_blamed_on_stage_vpn(tmp_path: Path) -> None:
    data = watchdog_round(tmp_path, "down connection refused")
    assert data["vpn"] == {"transport": None, "address": None}
    assert data["stages"]["vpn"] == "restarting"
    assert data["failing_stage"] == "vpn"
    assert data["last_error"] == "vpn down: connection refused"


def test_vpn_not_up_yet_is_blamed_while_pending(tmp_path: Path) -> None:
    data = watchdog_round(tmp_path, None, stage="pending")
    assert data["stages"]["vpn"] == "pending"
    assert data["failing_stage"] == "vpn"
    assert data["last_error"] == "vpn down: starting"


def test_garbage_in_the_state_file_stays_out_of_the_record(tmp_path: Path) -> None:
    data = watchdog_round(tmp_path, 'up 10.0.0.1"} evil "x')
    assert data["vpn"] == {"transport": None, "address": None}


def test_script_sets_the_agreed_mtu_not_the_requested_one(tmp_path: Path) -> None:
    """vpn.mtu is openconnect's --base-mtu (the link's MTU); the tunnel carries
    less (DTLS's overhead): tun0 must get INTERNAL_IP4_MTU, what openconnect
    and the server agreed. tun0 at vpn.mtu itself carried nothing (9000: every
    full-size packet too big for the DTLS channel)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ip").write_text(f'#!/bin/bash\necho "$*" >>{tmp_path}/ip.log\n')
    (fake / "ip").chmod(0o755)
    ns = tmp_path / "ns"
    ns.mkdir()
    write = (
        f"source {LIB}/vpn.sh; NS_DIR={ns}; VPN_MTU=9000; NS_LOCALNET=(127.0.0.0/8);"
        " vpn_write_script"
    )
    subprocess.run(["bash", "-c", write], check=True)
    env = {
        "PATH": f"{fake}:/usr/bin:/bin",
        "reason": "connect",
        "TUNDEV": "tun0",
        "INTERNAL_IP4_ADDRESS": f"{POOL}.7",
        "INTERNAL_IP4_MTU": "8934",
    }
    result = subprocess.run(
        ["bash", str(ns / "vpn.script")], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    log = (tmp_path / "ip.log").read_text()
    assert "link set dev tun0 up mtu 8934" in log, log
    assert (ns / "vpn.state").read_text().startswith(f"up {POOL}.7 "), log
    # without the server's figure (never seen from openconnect 9): vpn.mtu
    del env["INTERNAL_IP4_MTU"]
    subprocess.run(["bash", str(ns / "vpn.script")], env=env, check=True)
    assert "link set dev tun0 up mtu 9000" in (tmp_path / "ip.log").read_text()


def test_no_collector_means_ready_once_the_vpn_is_up(tmp_path: Path) -> None:
    """pool.collector "" (e.g. a benchmark's payload talks to its own peer):
    the stage is ready when the VPN is up, instead of probing an empty
    address for its whole timeout; with a collector the probe decides."""
    probe = (
        f"source {LIB}/common.sh; source {LIB}/supervise.sh; source {LIB}/vpn.sh;"
        ' vpn_up() { true; }; supervise_probe() { echo probed "$1"; return 1; };'
        ' VPN_PROBE_PORT=9618; VPN_PROBE_HOST="$1"; vpn_ready; echo "status $?"'
    )
    empty = subprocess.run(
        ["bash", "-c", probe, "probe", ""], capture_output=True, text=True
    )
    assert empty.stdout.split() == ["status", "0"], empty.stdout + empty.stderr
    given = subprocess.run(
        ["bash", "-c", probe, "probe", "192.0.2.9"], capture_output=True, text=True
    )
    assert given.stdout.split() == ["probed", "192.0.2.9:9618", "status", "1"], (
        given.stdout + given.stderr
    )
