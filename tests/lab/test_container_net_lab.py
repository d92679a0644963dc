"""The lab's EPN partition and its site-local setuid apptainer (issue 15), by hand.

As the EPNs do it: the drone user runs the site-local apptainer with
``--net --network epn-public``; its setuid starter checks apptainer.conf,
gives the container its own network namespace and a public address on the
partition through the real CNI plugins (macvlan on the worker's address-less
ib1, host-local IPAM), and removes both when the container ends. The worker
host itself is never on the partition. One lab for the whole module.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tardis_netadapter_lab import Lab, cnet, configs, teardown
from tardis_netadapter_lab import layout as L
from test_chain_support import lab_unavailable, skip_unless_runnable

pytestmark = pytest.mark.lab

LAB_NAME = os.environ.get("TNA_CNET_LAB", "cnl2")
WORKER = "worker1"
PARTITION = ipaddress.ip_network(L.PARTITION_NET)
ECHO = f"http://{L.OUTSIDE_HTTP}:{L.ECHO_PORT}/"
NEEDED = ("cc", "curl", "nsenter", "setpriv", "ip")


def _unavailable() -> str | None:
    reason = lab_unavailable(NEEDED)
    if reason is None and not Path(cnet.CNI_PLUGINS_DIR, "macvlan").exists():
        reason = "needs containernetworking-plugins: run scripts/install-system-deps"
    return reason


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    skip_unless_runnable(_unavailable())
    teardown(LAB_NAME)
    lab = Lab(name=LAB_NAME, workers=1)
    try:
        lab.up()
        yield lab
    finally:
        removed = lab.down()
        assert not [ns for ns in _lab_netns() if ns.startswith(f"{LAB_NAME}-")]
        print(f"teardown collected: {removed.get('leases')}")
        # a lease left by a SIGKILLed holder (the last test) is collected
        assert removed.get("leases") == LEFT_FOR_TEARDOWN, removed


#: lease names the last test leaves behind for the teardown to collect
LEFT_FOR_TEARDOWN: list[str] = []


def _lab_netns() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def image(lab: Lab) -> str:
    return str(lab.layout.home(lab.drone_user) / "image")


def container(lab: Lab, *command: str) -> list[str]:
    """The site-local apptainer joining the partition, running `command`."""
    return [
        str(lab.apptainer),
        "exec",
        "--net",
        "--network",
        L.PARTITION_NETWORK,
        image(lab),
        *command,
    ]


def run_container(
    lab: Lab, *command: str, user: str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return lab.run(
        WORKER, container(lab, *command), user=user or lab.drone_user, timeout=timeout
    )


def partition_addresses(text: str) -> list[str]:
    """Host addresses on the partition in `ip -4 -o addr` (or any) output
    (not the broadcast address `ip` prints as "brd")."""
    found = []
    for word in text.replace("/", " ").split():
        try:
            address = ipaddress.ip_address(word)
        except ValueError:
            continue
        if address in PARTITION and address != PARTITION.broadcast_address:
            found.append(str(address))
    return found


def macvlan_links(lab: Lab) -> str:
    """macvlan links left in the worker's namespace (CNI creates them there)."""
    out = lab.run(WORKER, ["ip", "-o", "-d", "link", "show", "type", "macvlan"])
    return out.stdout.strip()


def starters(lab: Lab) -> list[int]:
    """Processes of the lab's setuid starter (root, in the worker's namespace)."""
    script = str(cnet.starter_script(lab.layout))
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if script.encode() in argv:
            found.append(int(entry.name))
    return found


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(word) for word in text.split()]


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def assert_nothing_left(lab: Lab) -> None:
    assert lab.partition_leases() == []
    assert macvlan_links(lab) == ""
    assert starters(lab) == []
    ours = [ns for ns in _lab_netns() if ns.startswith(f"{LAB_NAME}-")]
    assert sorted(ours) == sorted(lab.namespace(h) for h in lab.hosts)


def test_container_gets_a_partition_address_that_the_pool_sees(lab: Lab) -> None:
    script = (
        "ip -4 -o addr show eth0; "
        f"curl -s -m 5 {ECHO}; echo; "
        f"exec 3<>/dev/tcp/{L.OUTSIDE_HTTP}/{L.COLLECTOR_PORT} && echo pool-ok; "
        # the partition leads to the public net only, not into the site
        f"timeout 3 bash -c 'exec 4<>/dev/tcp/{L.LOGIN_SITE}/{L.SSH_PORT}' "
        "2>/dev/null && echo site-reached || echo site-unreachable"
    )
    result = run_container(lab, "bash", "-c", script)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    (address,) = partition_addresses(lines[0])
    assert lines[1].strip() == address  # the echo outside saw the container's own
    assert "pool-ok" in lines
    assert "site-unreachable" in lines
    assert address in configs.echo_log(lab.layout).read_text()
    assert f"network {L.PARTITION_NETWORK}: {address}/24" in result.stderr
    assert_nothing_left(lab)


def test_the_site_local_apptainer_is_a_setuid_installation(lab: Lab) -> None:
    """What `check --probe` looks at: setuid starter, conf, conflist."""
    shim = cnet.starter_shim(lab.layout)
    info = shim.stat()
    assert info.st_uid == 0 and info.st_mode & 0o4000
    cfg = lab.run(WORKER, [str(lab.apptainer), "buildcfg"], user=lab.drone_user)
    values = dict(line.split("=", 1) for line in cfg.stdout.splitlines())
    assert values["APPTAINER_SUID_INSTALL"] == "1"
    confdir = Path(values["APPTAINER_CONFDIR"])
    assert (confdir / "apptainer.conf") == lab.layout.apptainer_conf
    assert (confdir / "network" / f"{L.PARTITION_NETWORK}.conflist").exists()


def test_worker_host_is_not_on_the_partition_and_cannot_reach_outside(
    lab: Lab,
) -> None:
    addresses = lab.run(WORKER, ["ip", "-4", "-o", "addr"]).stdout
    assert partition_addresses(addresses) == []
    ib1 = lab.run(WORKER, ["ip", "-o", "addr", "show", "dev", L.PARTITION_IF])
    assert ib1.returncode == 0 and "inet" not in ib1.stdout
    direct = lab.run(
        WORKER, ["curl", "-s", "-m", "3", ECHO], user=lab.drone_user, timeout=10
    )
    assert direct.returncode != 0 and direct.stdout == ""


def test_two_containers_get_their_own_addresses_and_cannot_enter_each_other(
    lab: Lab,
) -> None:
    home = lab.layout.home(lab.drone_user)
    files = [
        home / f"cnet-{tag}.{kind}"
        for tag in "ab"
        for kind in ("addr", "target", "tried")
    ]
    holders = []
    for tag in ("a", "b"):
        # each container reports its address, waits to be told the other's pid,
        # tries to enter the other's network namespace and reports how it went
        script = (
            f"cd $HOME; ip -4 -o addr show eth0 > cnet-{tag}.tmp; "
            f"mv cnet-{tag}.tmp cnet-{tag}.addr; "
            f"while [ ! -s cnet-{tag}.target ]; do sleep 0.05; done; "
            f"nsenter --net=/proc/$(cat cnet-{tag}.target)/ns/net ip -4 -o addr "
            f"> cnet-{tag}.out 2>&1; echo rc=$? >> cnet-{tag}.out; "
            f"mv cnet-{tag}.out cnet-{tag}.tried; sleep 30"
        )
        holders.append(
            lab.popen(
                WORKER,
                container(lab, "bash", "-c", script),
                user=lab.drone_user,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )
    try:
        addresses = []
        for tag in ("a", "b"):
            path = home / f"cnet-{tag}.addr"
            wait_for(path.exists, what=f"container {tag}")
            (address,) = partition_addresses(path.read_text())
            addresses.append(address)
        assert addresses[0] != addresses[1]
        assert len(lab.partition_leases()) == 2
        # each holder (the starter, root) has one child: the container process
        inner = [children(holder.pid) for holder in holders]
        assert all(len(kids) == 1 for kids in inner), inner
        pids = {"a": inner[0][0], "b": inner[1][0]}
        assert set(lab.container_netns()) == set(pids.values())
        for tag, other in (("a", "b"), ("b", "a")):
            (home / f"cnet-{tag}.target").write_text(f"{pids[other]}\n")
        for tag, other in (("a", "b"), ("b", "a")):
            tried = home / f"cnet-{tag}.tried"
            wait_for(tried.exists, what=f"container {tag}'s nsenter")
            text = tried.read_text()
            assert "rc=0" not in text, text
            assert partition_addresses(text) == [], text
            # nor from the worker host as the drone user
            direct = lab.run(
                WORKER,
                ["nsenter", f"--net=/proc/{pids[other]}/ns/net", "true"],
                user=lab.drone_user,
            )
            assert direct.returncode != 0
            assert "Operation not permitted" in direct.stderr
    finally:
        for holder in holders:
            holder.send_signal(signal.SIGTERM)
        for holder in holders:
            holder.wait(timeout=10)
        for path in files:
            path.unlink(missing_ok=True)
    assert_nothing_left(lab)


def test_the_other_user_is_not_allowed_and_nothing_is_left(lab: Lab) -> None:
    result = run_container(lab, "true", user=lab.other_user)
    # apptainer's own words: the user is not in allow net users/groups
    assert result.returncode == 255
    assert result.stderr.startswith("FATAL:   container creation failed: network")
    assert "unless permitted by the administrator" in result.stderr
    assert_nothing_left(lab)


def test_a_network_not_allowed_is_refused_before_anything_is_made(lab: Lab) -> None:
    argv = container(lab, "true")
    argv[argv.index(L.PARTITION_NETWORK)] = "bridge"
    result = lab.run(WORKER, argv, user=lab.drone_user)
    assert result.returncode == 255
    assert "ERROR:   Network bridge is not permitted for unprivileged users." in (
        result.stderr
    )
    assert "FATAL:   container creation failed: network" in result.stderr
    assert_nothing_left(lab)


def test_a_killed_holders_lease_is_collected_by_the_next_start(lab: Lab) -> None:
    marker = lab.layout.home(lab.drone_user) / "cnet-held"

    def start_holder() -> subprocess.Popen:
        """A container that runs (CNI ADD done) once `marker` exists."""
        marker.unlink(missing_ok=True)
        holder = lab.popen(
            WORKER,
            container(lab, "bash", "-c", f"touch {marker}; exec sleep 30"),
            user=lab.drone_user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(marker.exists, what="the container to run")
        assert len(lab.partition_leases()) == 1
        return holder

    holder = start_holder()
    (inner,) = children(holder.pid)
    holder.send_signal(signal.SIGKILL)  # as Slurm's SIGKILL of the job: no CNI DEL
    holder.wait(timeout=5)
    # the container process dies with its holder (parent-death signal)
    wait_for(lambda: not Path(f"/proc/{inner}").exists(), what="container end")
    (stale,) = lab.partition_leases()
    result = run_container(lab, "true")
    assert result.returncode == 0, result.stderr
    assert lab.partition_leases() == []
    assert_nothing_left(lab)

    # what teardown does with a lease left behind: collect it (CNI DEL)
    holder = start_holder()
    (lease,) = lab.partition_leases()
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=5)
    wait_for(lambda: not children(holder.pid), what="container end")
    assert cnet.collect(lab.layout) == [lease.name]
    assert lab.partition_leases() == []
    assert stale.name  # the first address was a real lease file
    marker.unlink(missing_ok=True)


def test_a_stray_left_in_the_namespace_loses_the_link_and_lease(lab: Lab) -> None:
    """The container's main process ends but a background process stays: the
    DEL must still remove the address (the lease) and the link it would use."""
    stray_file = lab.layout.home(lab.drone_user) / "cnet-stray"
    stray_file.unlink(missing_ok=True)
    script = f"sleep 30 >/dev/null 2>&1 & echo $! > {stray_file}; exit 0"
    result = run_container(lab, "bash", "-c", script)
    assert result.returncode == 0, result.stderr
    stray = int(stray_file.read_text())
    try:
        assert Path(f"/proc/{stray}").exists()
        assert lab.partition_leases() == []
        links = subprocess.run(
            ["nsenter", f"--net=/proc/{stray}/ns/net", "ip", "-o", "link"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "eth0" not in links and "lo" in links, links
    finally:
        os.kill(stray, signal.SIGKILL)
        stray_file.unlink(missing_ok=True)
    assert_nothing_left(lab)


def test_strays_of_a_killed_holder_lose_the_link_when_collected(lab: Lab) -> None:
    stray_file = lab.layout.home(lab.drone_user) / "cnet-stray"
    stray_file.unlink(missing_ok=True)
    script = f"sleep 30 >/dev/null 2>&1 & echo $! > {stray_file}; exec sleep 30"
    holder = lab.popen(
        WORKER,
        container(lab, "bash", "-c", script),
        user=lab.drone_user,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: stray_file.exists() and stray_file.read_text().strip())
        stray = int(stray_file.read_text())
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=5)
        wait_for(lambda: not children(holder.pid), what="container end")

        def links() -> str:
            return subprocess.run(
                ["nsenter", f"--net=/proc/{stray}/ns/net", "ip", "-o", "link"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout

        assert "eth0" in links()  # the stray keeps the namespace and its link
        assert len(lab.partition_leases()) == 1
        result = run_container(lab, "true")
        assert result.returncode == 0, result.stderr
        assert lab.partition_leases() == []
        assert "eth0" not in links()
    finally:
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.kill(int(stray_file.read_text()), signal.SIGKILL)
        stray_file.unlink(missing_ok=True)
    assert_nothing_left(lab)


def test_inside_a_user_namespace_the_setuid_workflow_refuses(lab: Lab) -> None:
    """As in cvmfsexec's namespace: "root" there is no privilege; the starter
    must not treat it as root (which passes every policy check)."""
    argv = ["unshare", "-Urm", *container(lab, "true")]
    result = lab.run(WORKER, argv, user=lab.drone_user)
    assert result.returncode == 255
    assert "cannot run inside a user namespace" in result.stderr
    assert_nothing_left(lab)


def test_twenty_start_stop_cycles_leave_no_netns_link_or_lease(lab: Lab) -> None:
    seen = set()
    started = time.monotonic()
    for _ in range(20):
        result = run_container(lab, "ip", "-4", "-o", "addr", "show", "eth0")
        assert result.returncode == 0, result.stderr
        seen.update(partition_addresses(result.stdout))
    elapsed = time.monotonic() - started
    print(f"20 container start/stop cycles in {elapsed:.1f} s, addresses {len(seen)}")
    assert seen
    assert_nothing_left(lab)


def test_a_lease_left_at_the_end_is_collected_by_teardown(lab: Lab) -> None:
    """Last in the module: the fixture's `lab.down()` must collect this lease."""
    marker = lab.layout.home(lab.drone_user) / "cnet-last"
    holder = lab.popen(
        WORKER,
        container(lab, "bash", "-c", f"touch {marker}; exec sleep 30"),
        user=lab.drone_user,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(marker.exists, what="the container to run")
    (lease,) = lab.partition_leases()
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=5)
    wait_for(lambda: not children(holder.pid), what="container end")
    assert lab.partition_leases() == [lease]
    LEFT_FOR_TEARDOWN.append(lease.name)
