"""Several login nodes (issue 11): the first hop's alternatives.

One route per first-hop host in the ssh_config (read back with ``ssh -G``),
the TUNNEL_TARGETS / TUNNEL_FIRST_HOPS settings, the rotation by job id that
spreads drones over the routes (tunnel_order_targets), and the failover of
the bash supervisor to the next route when ssh fails (status 255).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import profiles
import pytest

from tardis_netadapter import render
from tardis_netadapter.config import load_profile
from tardis_netadapter.keepalive import derive_budget
from tardis_netadapter.modes.socks import MODE


def problems_of(data: Any) -> list[str]:
    """The problems, with the key paths of a site named ``S``."""
    return profiles.problems_of(data, "S.Network")


LOGIN = {"host": "login01", "user": "drone", "alternatives": ["login02", "10.0.0.3"]}
GATEWAY = {"host": "gw.example.org", "port": 443}
BASE: dict[str, Any] = {
    "firewall": {"idle_timeout": 20},
    "tunnel": {"hops": [LOGIN, GATEWAY]},
    "pool": {"collector": "10.66.2.1:9618"},
}


def with_hops(*hops: dict[str, Any]) -> dict[str, Any]:
    return {**BASE, "tunnel": {"hops": list(hops)}}


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


# -- validation ------------------------------------------------------------------


def test_alternatives_are_validated_like_the_host() -> None:
    (problem,) = problems_of(with_hops({"host": "l1", "alternatives": ["l2", "a b"]}))
    assert problem == (
        "S.Network.tunnel.hops[0].alternatives[1]: got 'a b'; expected a host "
        "name or an IP address"
    )


def test_duplicate_alternatives_are_refused() -> None:
    problems = problems_of(
        with_hops({"host": "l1", "alternatives": ["L1", "l2", "l2"]})
    )
    assert problems == [
        "S.Network.tunnel.hops[0].alternatives[0]: got 'L1' twice (host and "
        "alternatives must all differ); remove the repeated entry",
        "S.Network.tunnel.hops[0].alternatives[2]: got 'l2' twice (host and "
        "alternatives must all differ); remove the repeated entry",
    ]


def test_alternatives_on_a_later_hop_are_refused_with_the_fix() -> None:
    (problem,) = problems_of(
        with_hops({"host": "l1"}, {**GATEWAY, "alternatives": ["gw2"]})
    )
    assert problem == (
        "S.Network.tunnel.hops[1].alternatives: got ['gw2']; only the first hop "
        "(the login node) may list alternatives: move them to "
        "S.Network.tunnel.hops[0].alternatives, or remove them"
    )


def test_alternatives_must_be_a_list_of_strings() -> None:
    (problem,) = problems_of(with_hops({"host": "l1", "alternatives": "l2"}))
    assert problem.startswith("S.Network.tunnel.hops[0].alternatives: got 'l2';")


# -- rendering -------------------------------------------------------------------


def ssh_settings(config: str, host: str, tmp_path: Path) -> dict[str, list[str]]:
    if shutil.which("ssh") is None:
        pytest.skip("ssh is not installed")
    path = tmp_path / "ssh_config"
    path.write_text(config)
    output = subprocess.run(
        ["ssh", "-G", "-F", str(path), host],
        capture_output=True,
        text=True,
        check=True,
        env={"HOME": str(tmp_path), "PATH": os.environ["PATH"]},
    ).stdout
    settings: dict[str, list[str]] = {}
    for line in output.splitlines():
        key, _, value = line.partition(" ")
        settings.setdefault(key, []).append(value)
    return settings


def test_every_alternative_is_a_complete_route(tmp_path: Path) -> None:
    profile = profile_of(BASE)
    config = render.ssh_config_text(profile, derive_budget(profile))
    expected = {
        "tardis-hop": "login01",  # route 0 keeps its names
        "tardis-r1-hop": "login02",
        "tardis-r2-hop": "10.0.0.3",
    }
    for prefix, login in expected.items():
        first = ssh_settings(config, f"{prefix}-1", tmp_path)
        assert first["hostname"] == [login]
        assert first["user"] == ["drone"]
        assert first["port"] == ["22"]
        assert "proxyjump" not in first
        last = ssh_settings(config, f"{prefix}-2", tmp_path)
        assert last["hostname"] == ["gw.example.org"]
        assert last["port"] == ["443"]
        assert last["proxyjump"] == [f"{prefix}-1"]  # its own route's login node


def test_settings_list_the_routes_in_configured_order() -> None:
    script = script_of(BASE)
    assert "TUNNEL_TARGET=tardis-hop-2\n" in script
    assert "TUNNEL_TARGETS=(tardis-hop-2 tardis-r1-hop-2 tardis-r2-hop-2)\n" in script
    assert "TUNNEL_FIRST_HOPS=(login01:22 login02:22 10.0.0.3:22)\n" in script
    assert "drone@login01:22 (or login02, 10.0.0.3) -> gw.example.org:443" in script


def test_one_login_node_is_one_route() -> None:
    script = script_of(with_hops({"host": "fe80::1", "port": 2222}))
    assert "TUNNEL_TARGETS=(tardis-hop-1)\n" in script
    assert "TUNNEL_FIRST_HOPS=('[fe80::1]:2222')\n" in script
    assert "tardis-r1" not in script


def test_probe_checks_known_hosts_of_every_alternative() -> None:
    lines = "\n".join(MODE.probe_lines(profile_of(BASE)))
    for name in ("login01", "login02", "10.0.0.3", "'[gw.example.org]:443'"):
        assert f"ssh-keygen -F {name} " in lines


# -- bash: order and failover ------------------------------------------------------

ORDER = 'tunnel_order_targets >/dev/null 2>&1; echo "$TUNNEL_TARGET|${TUNNEL_TARGETS[*]}|${TUNNEL_FIRST_HOPS[*]}"'


@pytest.mark.parametrize(
    ("job", "first"),
    [("6", 0), ("7", 1), ("8", 2), ("9", 0), ("100000000001", 2)],
)
def test_drones_start_on_route_job_id_mod_routes(
    tmp_path: Path, job: str, first: int
) -> None:
    targets = ["tardis-hop-2", "tardis-r1-hop-2", "tardis-r2-hop-2"]
    hops = ["login01:22", "login02:22", "10.0.0.3:22"]
    out = sourced(script_of(BASE), ORDER, tmp_path, SLURM_JOB_ID=job)
    rotated = targets[first:] + targets[:first]
    assert out == (
        f"{rotated[0]}|{' '.join(rotated)}|{' '.join(hops[first:] + hops[:first])}\n"
    )


def test_ordering_twice_rotates_once(tmp_path: Path) -> None:
    """The stage orders the routes; a supervisor that orders them as well
    (lib/supervise.sh's caller) must not rotate them a second time."""
    twice = f"tunnel_order_targets >/dev/null 2>&1; {ORDER}"
    out = sourced(script_of(BASE), twice, tmp_path, SLURM_JOB_ID="7")
    assert out.startswith("tardis-r1-hop-2|tardis-r1-hop-2 tardis-r2-hop-2 ")


def test_without_a_job_id_the_uuid_decides_the_same_way_every_time(
    tmp_path: Path,
) -> None:
    script = script_of(BASE)
    seen = {
        uuid: sourced(script, ORDER, tmp_path, TardisDroneUuid=uuid)
        for uuid in ("drone-a", "drone-b", "drone-c", "drone-d", "drone-e")
    }
    assert seen == {
        uuid: sourced(script, ORDER, tmp_path, TardisDroneUuid=uuid) for uuid in seen
    }
    assert len(set(seen.values())) > 1  # spread, not all on one route


FAKE_SSH = """#!/bin/bash
# the target is the last argument; the first route's login node is down
printf '%s %s\\n' "$(date +%s%N)" "${!#}" >>"$FAKE_SSH_LOG"
if [[ ${!#} == tardis-hop-2 ]]; then
    echo "ssh: connect to host 10.0.0.1 port 22: Connection refused" >&2
    exit 255
fi
exec sleep 30
"""


def test_the_supervisor_moves_to_the_next_route_when_the_login_node_refuses(
    tmp_path: Path,
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(FAKE_SSH)
    (bin_dir / "ssh").chmod(0o755)
    calls = tmp_path / "calls"
    body = (
        f"DRONE_DIR={tmp_path}; TUNNEL_SUPERVISOR=loop; TUNNEL_PORTS=(21000);"
        " tunnel_order_targets; tunnel_supervise & pid=$!; sleep 1.5;"
        ' kill "$pid"; wait "$pid"'
    )
    started = time.monotonic()
    sourced(
        script_of(BASE),
        body,
        tmp_path,
        SLURM_JOB_ID="9",  # starts on route 0, whose ssh fails at once
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        FAKE_SSH_LOG=str(calls),
    )
    assert time.monotonic() - started < 10
    targets = [line.split()[1] for line in calls.read_text().splitlines()]
    assert targets == ["tardis-hop-2", "tardis-r1-hop-2"]  # then it stays
    first, second = (int(line.split()[0]) for line in calls.read_text().splitlines())
    assert (second - first) / 1e9 < 1.0  # the supervisor's first delay is 0.2 s
    assert (tmp_path / "tunnel.restarts").read_text().count("\n") == 1


def test_alternatives_with_autossh_are_warned_about() -> None:
    """autossh retries its one route: the drones would spread but not fail over."""
    assert MODE.warnings(profile_of(BASE)) == []
    autossh = {**BASE, "tunnel": {**BASE["tunnel"], "supervisor": "autossh"}}
    (problem, fix), *rest = MODE.warnings(profile_of(autossh))
    assert not rest
    assert "alternatives with tunnel.supervisor autossh" in problem
    assert "never fail over" in problem
    assert fix == "set tunnel.supervisor: builtin (the default)"
    plain = with_hops({"host": "login01"})
    plain["tunnel"]["supervisor"] = "autossh"
    assert MODE.warnings(profile_of(plain)) == []
