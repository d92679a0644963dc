"""Local ports chosen per drone (`auto`): rendering, validation, and real runs.

Many drones share a node (FZJ ran 64 on one JURECA node), so each picks its
own SOCKS and forward ports at run time. The runs here start real drone
scripts on this machine with a fake ssh (tests/unit/fake_ssh.py) that binds
-L/-D like ssh, speaks SOCKS5 and exits 255 when a port is taken
(ExitOnForwardFailure); the payload goes through the real proxychains-ng.
Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import profiles
import pytest
from procs import leftovers

from tardis_netadapter import render
from tardis_netadapter.config import load_profile
from tardis_netadapter.keepalive import derive_budget


def problems_of(data: Any) -> list[str]:
    """The problems, with the key paths of a site named ``S``."""
    return profiles.problems_of(data, "S.Network")


HERE = Path(__file__).resolve().parent
LOGIN = {"host": "10.66.1.1", "user": "drone"}
SQUID = {"name": "squid", "host": "127.0.0.1", "port": 3128}
AUTO: dict[str, Any] = {
    "firewall": {"idle_timeout": 20},
    "tunnel": {"hops": [LOGIN], "forwards": [SQUID]},
    "chain": {"proxies": [{"type": "socks5", "host": "10.66.2.2", "port": 443}]},
    "cvmfs": {
        "mode": "mountrepo",
        "repositories": ["cms.cern.ch"],
        "http_proxy": "forward:squid;DIRECT",
    },
    "pool": {"collector": "10.66.2.1:9618"},
}


def profile_of(data: dict[str, Any]):
    return load_profile(json.loads(json.dumps(data)))


def script_of(data: dict[str, Any]) -> str:
    profile = profile_of(data)
    return render.render_drone_script(
        profile,
        derive_budget(profile),
        site_name="S",
        machine_type="cpu",
        job_id_variable="SLURM_JOB_ID",
    )


def sourced(script: str, body: str, tmp_path: Path, **env: str) -> str:
    """Source the rendered script (main does not run) and run ``body``."""
    path = tmp_path / "drone.sh"
    path.write_text(script)
    result = subprocess.run(
        ["bash", "-c", f'source "$1"\n{body}', "test", str(path)],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


# -- rendering ---------------------------------------------------------------------


def test_auto_is_the_default_and_renders_placeholders_not_ports() -> None:
    profile = profile_of({"tunnel": {"hops": [LOGIN], "forwards": [SQUID]}})
    assert profile.tunnel.socks_port == "auto"
    assert profile.tunnel.forwards[0].listen_port == "auto"
    script = script_of(AUTO)
    assert script == script_of(AUTO)  # deterministic: once per machine type
    assert "TUNNEL_SOCKS_PORT=auto\n" in script
    assert "TUNNEL_FORWARD_PORTS=(auto)\n" in script
    assert "TUNNEL_FORWARD_NAMES=(squid)\n" in script
    assert "TUNNEL_PORT_RANGE=(20000 32767)\n" in script
    assert "CVMFS_HTTP_PROXY='http://127.0.0.1:@TARDIS_PORT_1@;DIRECT'\n" in script
    assert "CVMFS_PROXY_PER_DRONE=1\n" in script
    conf = render.proxychains_conf_text(profile_of(AUTO))
    # dante through the -L forward to it (index 2: after SOCKS and squid)
    assert conf.endswith("[ProxyList]\nsocks5 127.0.0.1 @TARDIS_PORT_2@\n")
    assert "server_port = @TARDIS_PORT_0@\n" in render.tsocks_conf_text(
        profile_of(AUTO)
    )


def test_ssh_config_has_no_forwards_only_a_note_of_them() -> None:
    profile = profile_of(AUTO)
    config = render.ssh_config_text(profile, derive_budget(profile))
    assert "DynamicForward" not in config and "LocalForward" not in config
    assert "#   -L 127.0.0.1:auto:127.0.0.1:3128 (squid)\n" in config
    assert "#   -D 127.0.0.1:auto\n" in config
    assert "ExitOnForwardFailure yes" in config


def test_numbered_ports_render_as_numbers() -> None:
    data = {
        **AUTO,
        "tunnel": {
            "hops": [LOGIN],
            "socks_port": 1080,
            "forwards": [{**SQUID, "listen_port": 3128}],
        },
    }
    script = script_of(data)
    # only the forward to dante is chosen per drone (it has no setting)
    assert set(re.findall(r"@TARDIS_PORT_\d+@", script)) == {"@TARDIS_PORT_2@"}
    without_proxy = script_of({**data, "chain": {"proxies": []}})
    assert not re.search(r"@TARDIS_PORT_\d+@", without_proxy)
    assert "TUNNEL_SOCKS_PORT=1080\n" in script
    assert "CVMFS_HTTP_PROXY='http://127.0.0.1:3128;DIRECT'\n" in script
    assert "CVMFS_PROXY_PER_DRONE=0\n" in script


def test_the_script_puts_the_chosen_ports_everywhere(tmp_path: Path) -> None:
    out = sourced(
        script_of(AUTO),
        "TUNNEL_PORTS=(21000 21001 21002); tunnel_use_ports;"
        ' printf "%s\\n" "$CVMFS_HTTP_PROXY" "$CHAIN_ROUTE" "$TUNNEL_ROUTE";'
        " with_ports \"$(write_proxychains_conf)\" | grep '^socks5 ';"
        " DRONE_DIR=/w; TUNNEL_SUPERVISOR=loop; tunnel_connection_view 1;"
        " tunnel_command | tr '\\0' ' '",
        tmp_path,
    )
    assert out.splitlines() == [
        "http://127.0.0.1:21001;DIRECT",
        "socks5 10.66.2.2:443 through ssh -L 127.0.0.1:21002",
        "ssh drone@10.66.1.1:22, SOCKS on 127.0.0.1:21000",
        "socks5 127.0.0.1 21002",
        "ssh -N -F /w/ssh_config -L 127.0.0.1:21001:127.0.0.1:3128"
        " -L 127.0.0.1:21002:10.66.2.2:443 -D 127.0.0.1:21000 tardis-hop-1 ",
    ]


def test_parallel_connections_each_get_their_ports_and_the_chain_spreads(
    tmp_path: Path,
) -> None:
    """tunnel.parallel 3 with dante: ports [socks, squid, socks2, socks3,
    dante1..3]; connection 1 binds the squid forward, each its own forward to
    dante, and proxychains picks one of the three forwards per connection."""
    data = {**AUTO, "tunnel": {**AUTO["tunnel"], "parallel": 3}}
    assert "TUNNEL_PARALLEL=3\n" in script_of(data)
    out = sourced(
        script_of(data),
        'mapfile -t wanted < <(tunnel_wanted); echo "${wanted[*]}";'
        " TUNNEL_PORTS=(21000 21001 21002 21003 21004 21005 21006);"
        " tunnel_use_ports; DRONE_DIR=/w; TUNNEL_SUPERVISOR=loop;"
        " with_ports \"$(write_proxychains_conf)\" | grep -E '^(socks5|random|chain)';"
        ' tunnel_ports_text; echo; for k in 1 2 3; do (tunnel_connection_view "$k";'
        " tunnel_command | tr '\\0' ' '; echo); done",
        tmp_path,
    )
    assert out.splitlines() == [
        "auto auto auto auto auto auto auto",
        "random_chain",
        "chain_len = 1",
        "socks5 127.0.0.1 21004",
        "socks5 127.0.0.1 21005",
        "socks5 127.0.0.1 21006",
        "socks 127.0.0.1:21000, squid 127.0.0.1:21001 -> 127.0.0.1:3128,"
        " proxy 127.0.0.1:21004 -> 10.66.2.2:443; connection 2 socks"
        " 127.0.0.1:21002, proxy 127.0.0.1:21005 -> 10.66.2.2:443; connection 3"
        " socks 127.0.0.1:21003, proxy 127.0.0.1:21006 -> 10.66.2.2:443",
        "ssh -N -F /w/ssh_config -L 127.0.0.1:21001:127.0.0.1:3128"
        " -L 127.0.0.1:21004:10.66.2.2:443 -D 127.0.0.1:21000 tardis-hop-1 ",
        "ssh -N -F /w/ssh_config -L 127.0.0.1:21005:10.66.2.2:443"
        " -D 127.0.0.1:21002 tardis-hop-1 ",
        "ssh -N -F /w/ssh_config -L 127.0.0.1:21006:10.66.2.2:443"
        " -D 127.0.0.1:21003 tardis-hop-1 ",
    ]
    plain = {**data, "chain": {"proxies": []}}
    conf = render.proxychains_conf_text(profile_of(plain))
    assert conf.endswith(
        "[ProxyList]\nsocks5 127.0.0.1 @TARDIS_PORT_0@\n"
        "socks5 127.0.0.1 @TARDIS_PORT_2@\nsocks5 127.0.0.1 @TARDIS_PORT_3@\n"
    )


def test_parallel_is_checked_with_the_chain_it_must_spread() -> None:
    tunnel = AUTO["tunnel"]
    for bad in (0, 17, "4", True):
        (problem,) = problems_of({"tunnel": {**tunnel, "parallel": bad}})
        assert problem.startswith("S.Network.tunnel.parallel: got "), problem
        assert "1 to 16" in problem or "whole number" in problem, problem
    (problem,) = problems_of(
        {"tunnel": {**tunnel, "parallel": 2}, "chain": {"tool": "tsocks"}}
    )
    assert problem.startswith("S.Network.tunnel.parallel: got 2 with chain.tool")
    two = [AUTO["chain"]["proxies"][0]] * 2
    (problem,) = problems_of(
        {"tunnel": {**tunnel, "parallel": 2}, "chain": {"proxies": two}}
    )
    assert "with 2 chain.proxies" in problem and "parallel: 1" in problem
    assert profile_of({"tunnel": {**tunnel, "parallel": 16}}).tunnel.parallel == 16


def test_candidates_come_from_the_job_id_and_skip_what_listens(
    tmp_path: Path,
) -> None:
    plain = {**AUTO, "chain": {}}  # no proxy: two ports, SOCKS and squid
    script = script_of(
        {**plain, "tunnel": {**AUTO["tunnel"], "port_range": [30000, 30999]}}
    )
    pick = 'tunnel_pick_ports; echo "${TUNNEL_PORTS[*]}"'
    first = sourced(script, pick, tmp_path, SLURM_JOB_ID="7")
    second = sourced(script, pick, tmp_path, SLURM_JOB_ID="8")
    assert first == "30014 30015\n"  # set 7 of 500 two-port sets
    assert second == "30016 30017\n"  # the next job: the next set
    with socket.socket() as busy:  # something else listens on set 7
        busy.bind(("127.0.0.1", 30015))
        busy.listen()
        assert sourced(script, pick, tmp_path, SLURM_JOB_ID="7") == "30016 30017\n"
    numbered = {**AUTO["tunnel"], "socks_port": 30016, "port_range": [30000, 30999]}
    out = sourced(
        script_of({**plain, "tunnel": numbered}), pick, tmp_path, SLURM_JOB_ID="16"
    )
    assert out == "30016 30017\n"  # only the forward is auto; 30016 is numbered


# -- validation ------------------------------------------------------------------------


def test_bad_port_settings_name_the_key_and_the_fix() -> None:
    (problem,) = problems_of({"tunnel": {"hops": [LOGIN], "socks_port": "any"}})
    assert problem == (
        "S.Network.tunnel.socks_port: got 'any'; expected a whole number or one of 'auto'"
    )
    (problem,) = problems_of(
        {"tunnel": {"hops": [LOGIN], "forwards": [{**SQUID, "listen_port": 0}]}}
    )
    assert "forwards[0].listen_port: got 0; expected a TCP port" in problem
    for port_range, expected in (
        ([20000], "expected [LOW, HIGH]"),
        ([30000, 20000], "expected 1024 <= LOW < HIGH <= 65535"),
        ([80, 2000], "ports below 1024 need root"),
        ([20000, 20002], "2 local ports are auto, so the range needs at least 4"),
    ):
        data = {
            "tunnel": {"hops": [LOGIN], "forwards": [SQUID], "port_range": port_range}
        }
        (problem,) = problems_of(data)
        assert (
            problem.startswith("S.Network.tunnel.port_range: got ")
            and expected in problem
        )


def test_forward_names_must_be_usable_and_unique() -> None:
    (problem,) = problems_of(
        {"tunnel": {"hops": [LOGIN], "forwards": [{**SQUID, "name": "my-squid"}]}}
    )
    assert "forwards[0].name: got 'my-squid'; expected a letter followed by" in problem
    (problem,) = problems_of(
        {"tunnel": {"hops": [LOGIN], "forwards": [SQUID, {**SQUID, "name": "SQUID"}]}}
    )
    assert "every forward needs its own name" in problem


def test_cvmfs_proxy_refers_to_forwards_by_name() -> None:
    data = json.loads(json.dumps(AUTO))
    data["cvmfs"]["http_proxy"] = "forward:frontier"
    (problem,) = problems_of(data)
    assert (
        "cvmfs.http_proxy: got 'forward:frontier'; no forward of that name" in problem
    )
    assert "named forwards: ['squid']" in problem
    # the old way, a loopback port, cannot reach an auto forward: refused
    data["cvmfs"]["http_proxy"] = "http://127.0.0.1:3128"
    (problem,) = problems_of(data)
    assert "no forward listens on port 3128" in problem and "forward:NAME" in problem
    # ...but it still works with a numbered forward, as before
    data["tunnel"]["forwards"] = [{**SQUID, "listen_port": 3128}]
    assert profile_of(data).cvmfs.http_proxy == "http://127.0.0.1:3128"
    direct = {"mode": "direct", "chain": {"tool": "none"}, "cvmfs": AUTO["cvmfs"]}
    (problem,) = problems_of(direct)
    assert "without a tunnel (mode direct)" in problem


def test_shipped_configs_use_auto_ports() -> None:
    root = HERE.parents[1] / "configs"
    for name in ("lab.yml", "fzj-jureca.yml"):
        text = (root / name).read_text()
        assert "http_proxy: forward:squid" in text, name
        assert "exclusive: null" not in text, name


# -- real runs: two drones on one "node" at once ----------------------------------------

PROXYCHAINS = shutil.which("proxychains4")


class Collector:
    """A TCP server standing in for the pool: records each client's first line."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.lines: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(100)
                    if not chunk:
                        break
                    data += chunk
                if data.strip():  # the chain stage's probe sends nothing
                    self.lines.append(data.decode().strip())

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    instance = Collector()
    yield instance
    instance.close()


def node(tmp_path: Path, delay: float = 0.3) -> dict[str, str]:
    """A fake node: ssh on PATH, the cvmfsexec fakes, the environment of a drone."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "ssh"
    fake.write_text(f"#!{sys.executable}\n" + (HERE / "fake_ssh.py").read_text())
    fake.chmod(0o755)
    tools = tmp_path / "cvmfsexec"
    (tools / "dist").mkdir(parents=True, exist_ok=True)
    # mountrepo: reads the configuration as cvmfs does (through sh)
    (tools / "mountrepo").write_text(
        '#!/bin/sh\nd=$(dirname "$0")/dist\n'
        'for f in "$d"/etc/cvmfs/default.d/*.conf; do . "$f"; done\n'
        'echo "$CVMFS_HTTP_PROXY" > "$d/proxy.$TardisDroneUuid"\n'
        'mkdir -p "$d/cvmfs/$1"\n'
    )
    (tools / "umountrepo").write_text(
        '#!/bin/sh\nrmdir "$(dirname "$0")/dist/cvmfs/$1"\n'
    )
    for name in ("mountrepo", "umountrepo"):
        (tools / name).chmod(0o755)
    return {
        "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
        "FAKE_SSH_DELAY": str(delay),
        "FAKE_SSH_LOG": str(tmp_path / "ssh.log"),
    }


def drone_profile(collector: Collector, tmp_path: Path) -> dict[str, Any]:
    """Through the chain to a collector with a name (remote DNS: proxychains
    sends it through the SOCKS port, where the fake ssh maps it to 127.0.0.1)."""
    return {
        "firewall": {"idle_timeout": 20},
        "tunnel": {
            "hops": [{"host": "127.0.0.1", "port": 1}],
            "forwards": [SQUID],
            "ready_timeout": 10,
            "identity_file": str(tmp_path / "no-key"),
        },
        "chain": {"tool": "proxychains"},
        "cvmfs": {
            "mode": "mountrepo",
            "dist": "~/cvmfsexec/dist",
            "repositories": ["cms.cern.ch"],
            "http_proxy": "forward:squid",
        },
        "pool": {"collector": f"pool.example.org:{collector.port}"},
        "monitoring": {"enabled": False},
        "payload": {
            "command": [
                "bash",
                "-c",
                'exec 3<>"/dev/tcp/pool.example.org/$1" || exit 7;'
                ' echo "$TardisDroneUuid $TARDIS_SOCKS_PORT $TARDIS_FORWARD_PORT_SQUID" >&3;'
                ' exec 3>&-; until [ -e "$HOME/release" ]; do sleep 0.1; done',
                "payload",
                str(collector.port),
            ]
        },
    }


def start(
    script: Path, env: dict[str, str], uuid: str, **extra: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["bash", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "TardisDroneUuid": uuid, **extra},
        cwd=env["HOME"],
        start_new_session=True,
    )


def chosen_ports(err: str) -> tuple[int, int]:
    match = re.search(
        r"tunnel: local ports socks 127\.0\.0\.1:(\d+), squid 127\.0\.0\.1:(\d+) ", err
    )
    assert match, err
    return int(match.group(1)), int(match.group(2))


def run_together(
    tmp_path: Path, collector: Collector, envs: list[dict[str, str]], on_start=None
) -> list[tuple[str, int, int]]:
    """Start one drone per env at once; wait until every payload reported, end them."""
    env = node(tmp_path)
    script = tmp_path / "drone.sh"
    script.write_text(script_of(drone_profile(collector, tmp_path)))
    procs = [start(script, env, f"drone-{i}", **extra) for i, extra in enumerate(envs)]
    results = []
    try:
        if on_start is not None:
            on_start()
        deadline = time.monotonic() + 30
        while len(collector.lines) < len(procs):
            for proc in procs:
                if proc.poll() is not None:
                    pytest.fail(f"a drone ended early:\n{proc.communicate()[1]}")
            assert time.monotonic() < deadline, collector.lines
            time.sleep(0.1)
        (tmp_path / "release").touch()
        for index, proc in enumerate(procs):
            _, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            socks, squid = chosen_ports(err)
            proxy = (
                tmp_path / "cvmfsexec" / "dist" / f"proxy.drone-{index}"
            ).read_text()
            assert proxy == f"http://127.0.0.1:{squid}\n"  # its own forward
            results.append((err, socks, squid))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert sorted(line.split()[0] for line in collector.lines) == [
        f"drone-{i}" for i in range(len(procs))
    ]
    # each payload's connection went through its own drone's SOCKS port
    ssh_log = (tmp_path / "ssh.log").read_text()
    for line in collector.lines:
        uuid, socks, squid = line.split()
        index = int(uuid.rsplit("-", 1)[1])
        assert (int(socks), int(squid)) == results[index][1:]
        assert f"socks {socks} pool.example.org:{collector.port}" in ssh_log
    assert leftovers(tmp_path) == []
    assert list(tmp_path.glob("tardis-drone.*")) == []
    return results


needs_tools = pytest.mark.skipif(
    PROXYCHAINS is None or shutil.which("autossh") is None,
    reason="needs proxychains4 and autossh (scripts/install-system-deps)",
)


@needs_tools
def test_two_drones_at_once_pick_different_ports(
    tmp_path: Path, collector: Collector
) -> None:
    results = run_together(
        tmp_path, collector, [{"SLURM_JOB_ID": "41"}, {"SLURM_JOB_ID": "42"}]
    )
    ports = [port for _, socks, squid in results for port in (socks, squid)]
    assert len(set(ports)) == 4, ports
    assert ports == [20082, 20083, 20084, 20085]  # sets 41 and 42 of the range


@needs_tools
def test_two_drones_with_the_same_first_choice_still_get_their_own_ports(
    tmp_path: Path, collector: Collector
) -> None:
    """Both start on the same candidates (same seed) at the same moment: one
    ssh binds them, the other drone sees they are not its own and moves on."""
    results = run_together(
        tmp_path, collector, [{"SLURM_JOB_ID": "5"}, {"SLURM_JOB_ID": "5"}]
    )
    ports = [port for _, socks, squid in results for port in (socks, squid)]
    assert len(set(ports)) == 4, ports
    assert (20010, 20011) in [result[1:] for result in results]
    moved = [err for err, _, _ in results if "trying other ports" in err]
    print(f"{len(moved)} of 2 drones found their first ports taken by the other")


@needs_tools
def test_a_port_taken_while_ssh_starts_is_noticed_and_others_are_tried(
    tmp_path: Path, collector: Collector
) -> None:
    """Another process binds the SOCKS port after the drone chose it, before
    its ssh could: the drone must not take that listener for its tunnel."""
    log = tmp_path / "ssh.log"
    intruder = socket.socket()

    def take_the_socks_port() -> None:
        deadline = time.monotonic() + 10
        while not (log.exists() and "start" in log.read_text()):
            assert time.monotonic() < deadline, "fake ssh did not start"
            time.sleep(0.01)
        port = int(re.search(r"-D (\d+)", log.read_text()).group(1))
        intruder.bind(("127.0.0.1", port))
        intruder.listen()

    try:
        ((err, socks, _),) = run_together(
            tmp_path, collector, [{"SLURM_JOB_ID": "3"}], on_start=take_the_socks_port
        )
    finally:
        intruder.close()
    assert (
        "tunnel: 127.0.0.1:20006 was taken by another process; trying other ports"
        in err
    )
    assert socks == 20008


def _chain_connect(env: dict[str, str], conf: Path, port: int) -> bool:
    """One connection to the collector through the drone's own proxychains.conf."""
    result = subprocess.run(
        [PROXYCHAINS or "proxychains4", "-q", "-f", str(conf), "bash", "-c"]
        + ['exec 3<>"/dev/tcp/pool.example.org/$1"', "probe", str(port)],
        env=env,
        capture_output=True,
        timeout=20,
    )
    return result.returncode == 0


@needs_tools
def test_parallel_connections_spread_and_a_dead_one_is_skipped(
    tmp_path: Path, collector: Collector
) -> None:
    """tunnel.parallel 3: three ssh processes (each its own SOCKS port and
    supervisor, all under the one TUNNEL_PID); with one of them dead and its
    supervisor held, every connection through the chain still gets through
    (random_chain skips it), and SIGTERM ends all three."""
    env = node(tmp_path, delay=0.1)
    data = drone_profile(collector, tmp_path)
    data["tunnel"]["parallel"] = 3
    data["payload"]["command"] = ["sleep", "600"]
    script = tmp_path / "drone.sh"
    script.write_text(script_of(data))
    proc = start(script, env, "drone-p", SLURM_JOB_ID="9")
    log = tmp_path / "ssh.log"
    try:
        deadline = time.monotonic() + 30
        conf = None
        while conf is None:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the payload did not start"
            found = list(tmp_path.glob("tardis-drone.drone-p.*/proxychains.conf"))
            if found and log.exists() and log.read_text().count("bound") >= 3:
                conf = found[0]
            time.sleep(0.1)
        starts = [line.split() for line in log.read_text().splitlines()]
        socks = sorted(int(f[3]) for f in starts if f[1] == "start")
        assert len(socks) == 3, starts  # three ssh, each with its own -D port
        listed = re.findall(r"^socks5 127\.0\.0\.1 (\d+)$", conf.read_text(), re.M)
        assert sorted(map(int, listed)) == socks
        assert "random_chain" in conf.read_text()
        for _ in range(6):
            assert _chain_connect(env, conf, collector.port)
        used = {
            int(f[2])
            for f in map(str.split, log.read_text().splitlines())
            if f[1] == "socks"
        }
        assert len(used) >= 2, used  # spread over the connections (random)

        # connection 2 dies and its supervisor cannot restart it
        victim = next(
            int(f[0]) for f in starts if f[1] == "start" and int(f[3]) == socks[1]
        )
        supervisor = int(
            Path(f"/proc/{victim}/stat").read_text().rsplit(")", 1)[1].split()[1]
        )
        os.kill(supervisor, signal.SIGSTOP)
        try:
            os.kill(victim, signal.SIGKILL)
            time.sleep(0.2)
            for _ in range(8):
                assert _chain_connect(env, conf, collector.port)
        finally:
            os.kill(supervisor, signal.SIGCONT)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its session: no leftovers
            _, err = proc.communicate()
            pytest.fail(f"the drone did not end on SIGTERM:\n{err}")
    assert "connection 3 socks 127.0.0.1:" in err, err
    deadline = time.monotonic() + 10
    while leftovers(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leftovers(tmp_path) == []
