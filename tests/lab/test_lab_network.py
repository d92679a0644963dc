"""The site's network really restricts what a FZJ-JURECA-like site restricts."""

from __future__ import annotations

import subprocess
import time

import pytest
from tardis_netadapter_lab import Lab
from tardis_netadapter_lab import layout as L
from tardis_netadapter_lab.netns import is_listening

pytestmark = pytest.mark.lab

ECHO_SERVER = r"""
import socket, sys, threading
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen()
def echo(conn):
    while True:
        data = conn.recv(100)
        if not data:
            return
        conn.sendall(data)
while True:
    conn, _ = server.accept()
    threading.Thread(target=echo, args=(conn,), daemon=True).start()
"""

# idle: one exchange, silence for SECONDS, then one more exchange;
# active: an exchange every second for SECONDS, then one more.
ECHO_CLIENT = r"""
import socket, sys, time
address, port, mode, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
conn = socket.create_connection((address, port), timeout=3)
conn.sendall(b"a"); assert conn.recv(10) == b"a"
started = time.monotonic()
try:
    while time.monotonic() - started < seconds:
        time.sleep(seconds if mode == "idle" else 1)
        if mode == "active":
            conn.sendall(b"b"); assert conn.recv(10) == b"b"
    conn.sendall(b"c")
    print("alive" if conn.recv(10) == b"c" else "dead: closed")
except OSError as error:
    print(f"dead: {error}")
"""


def test_worker_has_no_route_out(lab: Lab, probe) -> None:
    routes = lab.run("worker1", ["ip", "route"]).stdout
    assert "default" not in routes
    for address, port in [
        (L.OUTSIDE_HTTP, L.HTTP_PORT),
        (L.OUTSIDE_SOCKS, L.HTTPS_PORT),
        (L.OUTSIDE_GATEWAY, L.HTTPS_PORT),
        (L.LOGIN_PUBLIC, L.SSH_PORT),
    ]:
        assert probe("worker1", address, port).startswith("error"), (address, port)
    curl = lab.run("worker1", ["curl", "-sS", "-m", "3", f"http://{L.OUTSIDE_HTTP}/"])
    assert curl.returncode != 0


def test_workers_reach_login_only_for_ssh_and_slurm(lab: Lab, probe) -> None:
    assert probe("worker2", L.LOGIN_SITE, L.SSH_PORT) == "open"
    assert probe("worker2", L.LOGIN_SITE, L.SLURMCTLD_PORT) == "open"
    assert probe("worker2", L.LOGIN_SITE, L.SQUID_PORT) == "refused"
    assert probe("worker2", L.LOGIN_SITE, 8080) == "refused"


def test_second_login_node_is_a_login_node_without_slurm(lab: Lab, probe) -> None:
    """login2: ssh from the workers (with the drone's key and known_hosts) and
    from the public side, out only on 80/443, no Slurm, no forwarding."""
    assert probe("worker1", L.LOGIN2_SITE, L.SSH_PORT) == "open"
    assert probe("worker1", L.LOGIN2_SITE, L.SLURMCTLD_PORT) == "refused"
    assert probe("control", L.LOGIN2_PUBLIC, L.SSH_PORT) == "open"
    assert probe("login2", L.OUTSIDE_SOCKS, L.HTTPS_PORT) == "open"
    assert probe("control", L.OUTSIDE_HTTP, L.COLLECTOR_PORT) == "open"
    assert probe("login2", L.OUTSIDE_HTTP, L.COLLECTOR_PORT) == "refused"
    assert probe("worker1", L.LOGIN2_PUBLIC, L.SSH_PORT).startswith("error")
    ssh = lab.run(
        "worker2",
        ["ssh", "-o", "BatchMode=yes", "login2", "cat /proc/sys/net/ipv4/ip_forward"],
        user=lab.drone_user,
        timeout=20,
    )
    assert ssh.returncode == 0 and ssh.stdout.strip() == "0", ssh.stderr


def test_login_reaches_outside_only_on_80_and_443(lab: Lab, probe) -> None:
    for address, port in [
        (L.OUTSIDE_HTTP, L.HTTP_PORT),
        (L.OUTSIDE_SOCKS, L.HTTPS_PORT),
        (L.OUTSIDE_GATEWAY, L.HTTPS_PORT),
    ]:
        assert probe("login", address, port) == "open", (address, port)
    # these services listen (control sees them) but the firewall rejects them
    for address, port in [
        (L.OUTSIDE_HTTP, L.COLLECTOR_PORT),
        (L.OUTSIDE_HTTP, L.SQUID_PORT),
    ]:
        assert probe("control", address, port) == "open", (address, port)
        assert probe("login", address, port) == "refused", (address, port)
    udp = lab.run(
        "login",
        [
            "/usr/bin/python3",
            "-c",
            "import socket; s=socket.socket(2,2); "
            "s.connect(('10.66.2.1', 53)); s.send(b'x'); s.settimeout(2); s.recv(1)",
        ],
    )
    assert udp.returncode != 0


def test_control_reaches_login_ssh_and_outside(lab: Lab, probe) -> None:
    assert probe("control", L.LOGIN_PUBLIC, L.SSH_PORT) == "open"
    assert probe("control", L.LOGIN_PUBLIC, L.SLURMCTLD_PORT) == "refused"
    assert probe("control", L.OUTSIDE_HTTP, L.HTTP_PORT) == "open"
    assert probe("control", L.LOGIN_SITE, L.SSH_PORT).startswith("error")


def test_idle_flow_through_login_dies_active_one_survives(lab: Lab) -> None:
    server = lab.popen(
        "outside",
        ["/usr/bin/python3", "-c", ECHO_SERVER, L.OUTSIDE_HTTP, str(L.HTTPS_PORT)],
    )
    lab.set_idle_timeout(4)
    try:
        deadline = time.monotonic() + 5
        while not is_listening(server.pid, L.OUTSIDE_HTTP, L.HTTPS_PORT):
            assert time.monotonic() < deadline, "echo server did not start"
            time.sleep(0.05)
        clients = {
            mode: lab.popen(
                "login",
                ["/usr/bin/python3", "-c", ECHO_CLIENT, L.OUTSIDE_HTTP]
                + [str(L.HTTPS_PORT), mode, "7"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for mode in ("idle", "active")
        }
        results = {
            mode: proc.communicate(timeout=30)[0].strip()
            for mode, proc in clients.items()
        }
    finally:
        lab.set_idle_timeout(30)
        server.kill()
        server.wait()
    assert results["active"] == "alive", results
    assert results["idle"].startswith("dead"), results
