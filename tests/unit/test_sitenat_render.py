"""The rendered site-NAT files, checked by the tools that will read them.

shellcheck and ``bash -n`` on the scripts, ``nft -c -f`` on both rulesets,
``keepalived -t`` on keepalived.conf with the interfaces present, conntrackd
started on its configuration and asked for its statistics, and the notify and
health scripts run against stand-ins. The tools run inside ``unshare -n`` (a
fresh network namespace) and need root; without them a test skips, naming
what is missing.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from test_sitenat_config import load, nat_section

from tardis_netadapter.sitenat.render import (
    InstallPaths,
    conntrackd_argv,
    install,
    keepalived_argv,
    render_router,
    render_worker,
)

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for unshare -n")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (scripts/install-system-deps)")
    return path


def lab_paths(base: Path) -> InstallPaths:
    """Lab-like paths: everything under one state directory."""
    return InstallPaths(
        sbin=str(base / "sbin"),
        etc=str(base / "etc"),
        run=str(base / "run"),
        systemd=str(base / "systemd"),
        rt_tables=str(base / "rt_tables.d"),
    )


def in_netns(script: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run bash ``script`` as root in a new network namespace."""
    unshare = tool("unshare")
    return subprocess.run(
        [unshare, "-n", "bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# users and groups that exist on any Debian: nft resolves names when loading
EXISTING = {"users": ["nobody", 0], "groups": ["nogroup"]}

LINKS = (
    "ip link set lo up\n"
    "ip link add site0 type veth peer name site0p\n"
    "ip link add pub0 type veth peer name pub0p\n"
    "for l in site0 site0p pub0 pub0p; do ip link set $l up; done\n"
)


# ------------------------------------------------------------ worker files


def test_worker_files_and_where_they_go(tmp_path: Path) -> None:
    files = render_worker(load(nat_section()), InstallPaths())
    assert {name: (f.mode, f.install) for name, f in files.items()} == {
        "tna-nat-routing": (0o755, "/usr/local/sbin/tna-nat-routing"),
        "tna-nat.nft": (0o644, "/etc/tardis-netadapter/site-nat/tna-nat.nft"),
        "tna-nat-routing.service": (
            0o644,
            "/etc/systemd/system/tna-nat-routing.service",
        ),
        "tna-nat-route-keeper.service": (
            0o644,
            "/etc/systemd/system/tna-nat-route-keeper.service",
        ),
        "rt_tables.conf": (0o644, "/etc/iproute2/rt_tables.d/tna_nat.conf"),
    }
    assert files["rt_tables.conf"].text.splitlines()[-1] == "201 tna_nat"


def test_worker_ruleset_marks_only_the_drone_owners_and_not_the_site() -> None:
    nat = load(nat_section(users=["aliprod", 1234], groups=["alice"], mark="0x2a"))
    text = render_worker(nat, InstallPaths())["tna-nat.nft"].text
    lines = [line.strip() for line in text.splitlines()]
    assert "type route hook output priority mangle; policy accept;" in lines
    stay = lines.index("ip daddr { 127.0.0.0/8, 10.66.1.0/24 } return")
    uid = lines.index(
        'meta skuid { "aliprod", 1234 } meta l4proto { tcp, udp } meta mark set 0x2a'
    )
    gid = lines.index(
        'meta skgid { "alice" } meta l4proto { tcp, udp } meta mark set 0x2a'
    )
    # the site's networks return before anything is marked
    assert stay < uid < gid
    assert sum("meta mark set" in line for line in lines) == 2


def test_worker_ruleset_without_groups_has_no_group_rule() -> None:
    text = render_worker(load(nat_section(groups=[])), InstallPaths())[
        "tna-nat.nft"
    ].text
    assert "skuid" in text and "skgid" not in text


def test_worker_units_run_the_script_from_the_install_paths(tmp_path: Path) -> None:
    paths = lab_paths(tmp_path)
    files = render_worker(load(nat_section()), paths)
    routing = files["tna-nat-routing.service"].text.splitlines()
    script = f"{tmp_path}/sbin/tna-nat-routing"
    assert "Type=oneshot" in routing and "RemainAfterExit=yes" in routing
    assert f"ExecStart={script} apply" in routing
    assert f"ExecStop={script} remove" in routing
    keeper = files["tna-nat-route-keeper.service"].text.splitlines()
    assert f"ExecStart={script} keep" in keeper and "Restart=always" in keeper
    # stopping the routing must stop the keeper, or it would undo the remove
    assert "PartOf=tna-nat-routing.service" in keeper
    assert f"NFT_FILE='{tmp_path}/etc/tna-nat.nft'" in files["tna-nat-routing"].text


def test_no_default_path_leaks_into_files_rendered_for_other_paths(
    tmp_path: Path,
) -> None:
    nat = load(nat_section())
    paths = lab_paths(tmp_path)
    files = {**render_worker(nat, paths), **render_router(nat, "nat1", paths)}
    for name, rendered in files.items():
        for default in ("/usr/local/sbin", "/etc/tardis-netadapter", "/run/tardis"):
            assert default not in rendered.text, (name, default)
        assert rendered.install.startswith(str(tmp_path)), name


def test_scripts_pass_shellcheck_and_bash_n(tmp_path: Path) -> None:
    shellcheck = tool("shellcheck")
    nat = load(nat_section())
    files = {
        **render_worker(nat, InstallPaths()),
        **render_router(nat, "nat1", InstallPaths()),
    }
    scripts = [name for name, f in files.items() if f.text.startswith("#!/bin/bash")]
    assert sorted(scripts) == ["tna-nat-health", "tna-nat-notify", "tna-nat-routing"]
    for name in scripts:
        path = tmp_path / name
        path.write_text(files[name].text)
        subprocess.run(["bash", "-n", str(path)], check=True)
        result = subprocess.run(
            [shellcheck, "--shell=bash", str(path)], capture_output=True, text=True
        )
        assert result.returncode == 0, f"{name}:\n{result.stdout}"


@ROOT_ONLY
def test_worker_ruleset_passes_nft_check_and_loads_twice_as_one_table(
    tmp_path: Path,
) -> None:
    tool("nft")
    nat = load(nat_section(**EXISTING))
    install(render_worker(nat, lab_paths(tmp_path)))
    nft = tmp_path / "etc" / "tna-nat.nft"
    result = in_netns(
        f"nft -c -f {nft} && nft -f {nft} && nft -f {nft} && nft list ruleset"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("table inet tna_nat {") == 1
    assert "meta mark set 0x00000001" in result.stdout


# ------------------------------------------------------------ router files


def test_router_units_run_the_daemons_as_the_lab_does(tmp_path: Path) -> None:
    paths = lab_paths(tmp_path)
    files = render_router(load(nat_section()), "nat1", paths)
    keepalived = files["tna-nat-keepalived.service"].text.splitlines()
    conntrackd = files["tna-nat-conntrackd.service"].text.splitlines()
    assert f"ExecStart={shlex.join(keepalived_argv(paths))}" in keepalived
    assert f"ExecStart={shlex.join(conntrackd_argv(paths))}" in conntrackd
    assert f"ExecStartPre=rm -f {tmp_path}/run/conntrackd.lock" in conntrackd
    router = files["tna-nat-router.service"].text.splitlines()
    nft, sysctl = (
        router.index(f"ExecStart=nft -f {tmp_path}/etc/tna-nat-router.nft"),
        (router.index(f"ExecStart=sysctl -q -p {tmp_path}/etc/sysctl.conf")),
    )
    assert nft < sysctl  # the ruleset loads nf_conntrack, whose sysctl follows


def test_router_files_and_where_they_go() -> None:
    files = render_router(load(nat_section()), "nat1", InstallPaths())
    assert sorted(files) == [
        "conntrackd.conf",
        "keepalived.conf",
        "sysctl.conf",
        "tna-nat-conntrackd.service",
        "tna-nat-health",
        "tna-nat-keepalived.service",
        "tna-nat-notify",
        "tna-nat-router.nft",
        "tna-nat-router.service",
    ]
    sysctl = files["sysctl.conf"].text.splitlines()
    assert "net.ipv4.ip_forward = 1" in sysctl
    assert "net.netfilter.nf_conntrack_tcp_loose = 0" in sysctl
    without_sync = render_router(
        load(nat_section(conntrack_sync=False)), "nat1", InstallPaths()
    )
    assert "tna-nat-conntrackd.service" not in without_sync
    assert "CONNTRACK_SYNC='no'" in without_sync["tna-nat-notify"].text


def test_an_unknown_router_is_named() -> None:
    with pytest.raises(KeyError, match="no router 'nat9'.*nat1, nat2"):
        render_router(load(nat_section()), "nat9", InstallPaths())


def test_router_ruleset_forwards_site_to_public_and_snats_to_the_vip() -> None:
    text = render_router(load(nat_section()), "nat2", InstallPaths())[
        "tna-nat-router.nft"
    ].text
    lines = [line.strip() for line in text.splitlines()]
    assert "type filter hook forward priority filter; policy drop;" in lines
    assert (
        'iifname "site0" oifname "pub0" ip saddr { 10.66.1.0/24 } ct state new accept'
        in lines
    )
    assert 'iifname "pub0" oifname "site0" ct state established,related accept' in lines
    # nothing new is accepted from the public side
    assert not any(
        line.startswith('iifname "pub0"') and "new" in line for line in lines
    )
    assert 'oifname "pub0" ip saddr { 10.66.1.0/24 } snat to 10.66.2.100' in lines
    assert "masquerade" not in text


@ROOT_ONLY
def test_router_ruleset_passes_nft_check_and_loads_twice(tmp_path: Path) -> None:
    tool("nft")
    install(render_router(load(nat_section()), "nat1", lab_paths(tmp_path)))
    nft = tmp_path / "etc" / "tna-nat-router.nft"
    result = in_netns(
        LINKS + f"nft -c -f {nft} && nft -f {nft} && nft -f {nft} && nft list ruleset"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("table inet tna_nat_router {") == 1
    assert result.stdout.count("table ip tna_nat_router_nat {") == 1
    assert "snat to 10.66.2.100" in result.stdout


def keepalived_lines(nat: Any, name: str) -> list[str]:
    text = render_router(nat, name, InstallPaths())["keepalived.conf"].text
    return [line.strip() for line in text.splitlines()]


def test_keepalived_conf_holds_both_vips_unicast_peers_and_checks() -> None:
    lines = keepalived_lines(load(nat_section()), "nat1")
    for expected in (
        "interface site0",
        "virtual_router_id 51",
        "priority 150",
        "advert_int 1",
        "unicast_src_ip 10.66.1.251",
        "10.66.1.250/32 dev site0",
        "10.66.2.100/32 dev pub0",
        'script "/usr/local/sbin/tna-nat-health"',
        'notify "/usr/local/sbin/tna-nat-notify"',
        "fall 2",
        "rise 2",
    ):
        assert expected in lines, expected
    peers = lines[
        lines.index("unicast_peer {") + 1 : lines.index("virtual_ipaddress {")
    ]
    assert peers == ["10.66.1.252", "}"]
    tracked = lines[lines.index("track_interface {") + 1]
    assert tracked == "pub0"
    assert lines[lines.index("track_script {") + 1] == "tna_nat_health"


def three_routers() -> list[dict[str, Any]]:
    routers = nat_section()["routers"]
    return [
        *routers,
        {**routers[1], "name": "nat3", "site_address": "10.66.1.253", "priority": 50},
    ]


def test_three_routers_have_two_peers_and_conntrackd_multicast() -> None:
    nat = load(nat_section(routers=three_routers()))
    lines = keepalived_lines(nat, "nat3")
    peers = lines[
        lines.index("unicast_peer {") + 1 : lines.index("virtual_ipaddress {")
    ]
    assert peers == ["10.66.1.251", "10.66.1.252", "}"]
    conntrackd = render_router(nat, "nat3", InstallPaths())["conntrackd.conf"].text
    assert "Multicast {" in conntrackd and "UDP {" not in conntrackd
    assert "IPv4_interface 10.66.1.253" in conntrackd


def test_conntrackd_conf_is_ftfw_unicast_with_run_paths(tmp_path: Path) -> None:
    paths = lab_paths(tmp_path)
    lines = [
        line.strip()
        for line in render_router(load(nat_section()), "nat2", paths)[
            "conntrackd.conf"
        ].text.splitlines()
    ]
    for expected in (
        "Mode FTFW {",
        "UDP {",
        "IPv4_address 10.66.1.252",
        "IPv4_Destination_Address 10.66.1.251",
        "Interface site0",
        f"LockFile {tmp_path}/run/conntrackd.lock",
        f"Path {tmp_path}/run/conntrackd.ctl",
    ):
        assert expected in lines, expected


@ROOT_ONLY
def test_keepalived_accepts_the_configuration(tmp_path: Path) -> None:
    tool("keepalived")
    paths = lab_paths(tmp_path)
    install(render_router(load(nat_section()), "nat1", paths))
    conf = tmp_path / "etc" / "keepalived.conf"
    # the unit's own command line, with -t: the test of the configuration
    argv = keepalived_argv(paths)
    assert f"{tmp_path}/etc/keepalived.conf" in argv
    command = shlex.join([*argv, "-t", "--log-console", "--log-detail"])
    result = in_netns(LINKS + command)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for complaint in ("Unknown keyword", "WARNING", "insecure", "rror"):
        assert complaint not in output, output
    # the test can fail: a misspelt keyword is reported by the same run
    conf.write_text(conf.read_text().replace("advert_int", "advert_intx"))
    output = "".join(
        in_netns(LINKS + command).__dict__[k] for k in ("stdout", "stderr")
    )
    assert "Unknown keyword 'advert_intx'" in output


@ROOT_ONLY
@pytest.mark.parametrize("count", [2, 3])
def test_conntrackd_runs_with_the_configuration(tmp_path: Path, count: int) -> None:
    """Two routers: unicast UDP; three: multicast. conntrackd starts, answers
    on its socket and commits; a bad keyword makes it refuse to start."""
    tool("conntrackd")
    paths = lab_paths(tmp_path)
    conntrackd = shlex.join(conntrackd_argv(paths)[:1])
    routers = three_routers()[:count]
    install(render_router(load(nat_section(routers=routers)), "nat1", paths))
    (tmp_path / "run").mkdir()
    conf = tmp_path / "etc" / "conntrackd.conf"
    script = (
        LINKS
        + "ip addr add 10.66.1.251/24 dev site0\n"
        + f"{conntrackd} -C {conf} >/dev/null 2>&1 & pid=$!\n"
        + "for i in $(seq 50); do "
        + f"{conntrackd} -C {conf} -s >/dev/null 2>&1 && break; sleep 0.1; done\n"
        + f"{conntrackd} -C {conf} -s; rc=$?\n"
        + f"{conntrackd} -C {conf} -c; c=$?\n"
        + 'kill "$pid"; wait "$pid"\n'
        + 'echo "stats=$rc commit=$c"\n'
    )
    result = in_netns(script)
    assert "stats=0 commit=0" in result.stdout, result.stdout + result.stderr
    assert "cache internal" in result.stdout
    log = (tmp_path / "run" / "conntrackd.log").read_text()
    assert "initialization completed" in log
    conf.write_text(conf.read_text().replace("StartupResync", "StartupResyncx"))
    broken = in_netns(LINKS + f"timeout 5 {conntrackd} -C {conf}; echo rc=$?")
    assert "rc=0" not in broken.stdout and "rc=124" not in broken.stdout, broken


# ------------------------------------------------------------ router scripts


def fake_conntrackd(tmp_path: Path, answers: bool = True) -> Path:
    """A conntrackd on PATH that records its arguments (and fails -s if told)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    fake = bin_dir / "conntrackd"
    fail = "" if answers else 'if [ "$3" = -s ]; then exit 1; fi\n'
    fake.write_text(f'#!/bin/sh\necho "$*" >>{calls}\n{fail}exit 0\n')
    fake.chmod(0o755)
    return bin_dir


def run_notify(tmp_path: Path, state: str, **changes: Any) -> list[str]:
    paths = lab_paths(tmp_path)
    install(render_router(load(nat_section(**changes)), "nat1", paths))
    (tmp_path / "run").mkdir(exist_ok=True)
    bin_dir = tmp_path / "bin"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    subprocess.run(
        [f"{paths.sbin}/tna-nat-notify", "INSTANCE", "tna_nat", state, "150"],
        check=True,
        env=env,
        timeout=10,
    )
    calls = tmp_path / "calls"
    conf = f"-C {paths.etc}/conntrackd.conf "
    return (
        [c.replace(conf, "") for c in calls.read_text().splitlines()]
        if calls.exists()
        else []
    )


def test_notify_on_master_commits_then_flushes_resyncs_and_bulk_sends(
    tmp_path: Path,
) -> None:
    fake_conntrackd(tmp_path)
    assert run_notify(tmp_path, "MASTER") == ["-c", "-f", "-R", "-B"]
    assert (tmp_path / "run" / "vrrp-state").read_text() == "MASTER\n"
    assert "nat1: state MASTER" in (tmp_path / "run" / "notify.log").read_text()


@pytest.mark.parametrize("state", ["BACKUP", "FAULT"])
def test_notify_on_backup_or_fault_asks_for_a_resync(
    tmp_path: Path, state: str
) -> None:
    fake_conntrackd(tmp_path)
    assert run_notify(tmp_path, state) == ["-s", "-t", "-n"]


def test_notify_says_when_conntrackd_does_not_answer(tmp_path: Path) -> None:
    fake_conntrackd(tmp_path, answers=False)
    assert run_notify(tmp_path, "BACKUP") == ["-s"]
    assert "does not answer" in (tmp_path / "run" / "notify.log").read_text()


def test_notify_without_sync_leaves_conntrackd_alone(tmp_path: Path) -> None:
    fake_conntrackd(tmp_path)
    assert run_notify(tmp_path, "MASTER", conntrack_sync=False) == []
    assert (tmp_path / "run" / "vrrp-state").read_text() == "MASTER\n"


def run_health(tmp_path: Path, target: str) -> tuple[int, float]:
    vrrp = dict(nat_section()["vrrp"], health_target=target)
    paths = lab_paths(tmp_path)
    install(render_router(load(nat_section(vrrp=vrrp)), "nat1", paths))
    start = time.monotonic()
    result = subprocess.run([f"{paths.sbin}/tna-nat-health"], timeout=10)
    return result.returncode, time.monotonic() - start


def test_health_check_passes_on_a_listening_target(tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        code, _ = run_health(tmp_path, f"127.0.0.1:{server.getsockname()[1]}")
    assert code == 0


def test_health_check_fails_on_a_closed_port(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: refused
        code, _ = run_health(tmp_path, f"127.0.0.1:{port}")
    assert code != 0


@ROOT_ONLY
def test_health_check_gives_up_on_a_silent_target_within_its_interval(
    tmp_path: Path,
) -> None:
    vrrp = dict(nat_section()["vrrp"], health_target="10.66.2.1:9618")
    paths = lab_paths(tmp_path)
    install(render_router(load(nat_section(vrrp=vrrp)), "nat1", paths))
    # the route exists, the packets vanish (a cut public link beyond the router)
    result = in_netns(
        LINKS
        + "ip addr add 10.66.2.13/24 dev pub0\n"
        + "ip link set pub0p down\n"
        + "start=$(date +%s%N)\n"
        + f"{paths.sbin}/tna-nat-health; rc=$?\n"
        + 'echo "rc=$rc ms=$(( ($(date +%s%N) - start) / 1000000 ))"\n'
    )
    words = dict(item.split("=") for item in result.stdout.split())
    assert words["rc"] != "0", result.stdout
    assert int(words["ms"]) < 2500, result.stdout


def test_every_configured_value_is_a_single_quoted_assignment() -> None:
    nat = load(nat_section())
    files = {
        **render_worker(nat, InstallPaths()),
        **render_router(nat, "nat1", InstallPaths()),
    }
    for name in ("tna-nat-routing", "tna-nat-health", "tna-nat-notify"):
        text = files[name].text
        block = text.split("# --- configuration ---\n")[1].split("# --- end")[0]
        lines = block.splitlines()
        assert lines, name
        for line in lines:
            assert re.fullmatch(r"[A-Z_]+='[^'\n]*'", line), (name, line)
    assert "GATEWAY='10.66.1.250'" in files["tna-nat-routing"].text
    assert "TARGET_PORT='9618'" in files["tna-nat-health"].text


@pytest.mark.parametrize("bad", ["/a b", "relative", "/a/", "/a/../b", "/x\n", "/a'b"])
def test_install_paths_must_be_plain_absolute_paths(bad: str) -> None:
    with pytest.raises(
        ValueError, match=r"InstallPaths\.run: got .*; expected an absolute"
    ):
        InstallPaths(run=bad)
