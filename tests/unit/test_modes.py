"""Network modes as plug-in units: the registry, section ownership, the one stage
list, only the chosen tool's configuration, and a toy mode added from tests."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from procs import leftovers
from profiles import problems_of, script_for
from toys import toy_mode

from tardis_netadapter import modes
from tardis_netadapter.commands.check import _fix
from tardis_netadapter.config import load_profile_and_budget
from tardis_netadapter.connectivity.heartbeat import STAGES, parse_record
from tardis_netadapter.keepalive import derive_budget
from tardis_netadapter.modes.stages import main_stages, record_stages, watched_stages
from tardis_netadapter.profile import NetworkProfile
from tardis_netadapter.templates import template_dir

LOGIN = {"hops": [{"host": "10.66.1.1", "user": "drone"}]}
POOL = {"collector": "127.0.0.1:9618"}
UUID = "site-0123456789"


def main_body(script: str) -> list[str]:
    body = re.search(r"^main\(\) \{\n(.*?)^\}", script, re.MULTILINE | re.DOTALL)
    assert body, "no main() in the script"
    return [line.strip() for line in body.group(1).splitlines()]


@pytest.fixture
def toy() -> Iterator[modes.Mode]:
    """The toy mode of tests/unit/toys, registered for one test."""
    mode = modes.register(toy_mode)
    yield mode
    modes.unregister("toy")


# -- the registry -----------------------------------------------------------------


def test_socks_direct_and_vpn_are_registered() -> None:
    assert modes.names()[:3] == ("socks", "direct", "vpn")
    assert modes.get("socks").sections() == ("tunnel", "chain")
    assert modes.get("direct").sections() == ()
    assert modes.get("vpn").sections() == ("vpn",)
    assert modes.owner_of("tunnel") is modes.get("socks")
    assert modes.owner_of("vpn") is modes.get("vpn")
    assert modes.owner_of("pool") is None  # common
    with pytest.raises(KeyError, match="registered: \\('socks', 'direct', 'vpn'"):
        modes.get("wireguard")


def test_a_mode_is_registered_once_and_owns_its_sections(toy) -> None:
    assert modes.get("toy") is toy and modes.owner_of("toy") is toy
    with pytest.raises(ValueError, match="already registered"):
        modes.register(toy_mode)

    @dataclass(frozen=True)
    class Thief(NetworkProfile):
        tunnel: dict[str, int] = field(default_factory=dict)
        pool: dict[str, int] = field(default_factory=dict)

    class ThiefMode(modes.Mode):
        name = "thief"
        profile_class = Thief

    with pytest.raises(ValueError) as caught:
        modes.register(ThiefMode())
    assert "section 'tunnel' belongs to mode 'socks'" in str(caught.value)
    assert "'pool' is part of the common profile" in str(caught.value)
    assert "thief" not in modes.names()
    with pytest.raises(ValueError, match="not a network mode"):
        modes.register(object())  # type: ignore[arg-type]


def test_an_unknown_mode_names_the_registered_ones(toy) -> None:
    (problem,) = problems_of({"mode": "wireguard"})
    assert problem == (
        "Site.Network.mode: got 'wireguard'; allowed: one of 'socks', 'direct', "
        "'vpn', 'nat', 'container-net', 'toy'"
    )


# -- sections of another mode --------------------------------------------------------


def test_a_section_of_another_mode_is_refused_naming_its_mode(toy) -> None:
    problems = problems_of({"mode": "direct", "tunnel": LOGIN, "pool": POOL})
    assert problems == [
        "Site.Network.tunnel: belongs to mode 'socks', but this site's mode is "
        "'direct'; remove tunnel, or set mode: socks"
    ]
    (problem,) = problems_of({"tunnel": LOGIN, "toy": {"greeting": "hi"}})
    assert problem.startswith("Site.Network.toy: belongs to mode 'toy'")
    (problem,) = problems_of({"mode": "toy", "chain": {"tool": "tsocks"}})
    assert problem.startswith("Site.Network.chain.tool: got 'tsocks' with mode 'toy'")
    assert "belongs to mode 'socks'" in problem


def test_a_refused_section_still_reports_its_own_errors() -> None:
    problems = problems_of({"mode": "direct", "tunnel": {"hops": [{"host": "a b"}]}})
    assert problems[0].startswith("Site.Network.tunnel: belongs to mode 'socks'")
    assert any("tunnel.hops[0].host: got 'a b'" in p for p in problems)


def test_chain_tool_none_still_means_no_chain_in_any_mode() -> None:
    profile, _ = load_profile_and_budget({"mode": "direct", "chain": {"tool": "none"}})
    assert profile.mode == "direct" and not hasattr(profile, "chain")


def test_a_mode_section_is_validated_with_the_mode(toy) -> None:
    (problem,) = problems_of({"mode": "toy", "toy": {"level": 0}})
    assert problem == "Site.Network.toy.level: got 0; expected a level above 0"
    profile, budget = load_profile_and_budget({"mode": "toy", "toy": {"level": 3}})
    assert profile.toy.level == 3
    assert budget.legs()[0] == ("worker -> toy", "nothing at all")


# -- the stage list, defined once -----------------------------------------------------


def run_watchdog_round(script: str, tmp_path: Path) -> dict[str, Any]:
    """Source the script, set up its watchdog as drone_setup does, run one round."""
    path = tmp_path / "drone.sh"
    path.write_text(script)
    body = (
        'source "$1"\n'
        f"DRONE_UUID={UUID}; DRONE_DIR={tmp_path}/work; mkdir -p $DRONE_DIR\n"
        f"MONITORING_HEARTBEAT_DIR={tmp_path}/hb; MONITORING_ENDPOINTS=()\n"
        'watchdog_setup; printf "%s\\n" "${TNA_STAGES[*]}"\n'
        "TNA_CONDOR_PING=off tna_watchdog_once\n"
    )
    result = subprocess.run(
        ["bash", "-c", body, "test", str(path)],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
        timeout=60,
        check=True,
    )
    record = (tmp_path / "hb" / f"{UUID}.json").read_text()
    return {"stages": result.stdout.split(), "record": json.loads(record)}


@pytest.mark.parametrize(
    "data",
    [
        {"tunnel": LOGIN, "pool": POOL},
        {"mode": "direct", "pool": POOL},
        {"mode": "toy", "pool": POOL},
    ],
    ids=["socks", "direct", "toy"],
)
def test_the_stage_list_is_the_same_in_script_watchdog_and_heartbeat(
    data: dict[str, Any], tmp_path: Path, toy
) -> None:
    mode = modes.get(data.get("mode", "socks"))
    script = script_for(data)
    # main() runs exactly the composed stages, in order
    expected = [
        f"stage_skipped {stage.name} 'network mode direct'"
        if stage.skipped
        else stage.function
        for stage in main_stages(mode, monitoring=True)
    ]
    assert main_body(script) == expected
    # the watchdog records exactly the watched stages, in blame order
    watched = watched_stages(mode)
    ran = run_watchdog_round(script, tmp_path)
    assert ran["stages"] == list(watched)
    heartbeat = parse_record(json.dumps(ran["record"]))
    assert heartbeat is not None and list(heartbeat.stages) == list(watched)
    # the heartbeat parser's list knows every one of them, in the same order
    # (heartbeat.STAGES is that list for the modes registered at its import)
    known = record_stages()
    assert [s for s in known if s in watched] == list(watched)


def test_heartbeat_stages_are_those_of_the_builtin_modes() -> None:
    assert (
        STAGES
        == record_stages()
        == (
            "cvmfs",
            "isolation",
            "tunnel",
            "route",
            "chain",
            "vpn",
            "container-net",
            "pool",
            "payload",
        )
    )


def test_a_script_without_monitoring_has_no_watchdog_stage() -> None:
    script = script_for({"tunnel": LOGIN, "monitoring": {"enabled": False}})
    assert main_body(script) == [
        "drone_setup",
        "isolation_stage",
        "tunnel_stage",
        "cvmfs_stage",
        "chain_stage",
        "container_stage",
        "payload_stage",
    ]


# -- only the chosen tool's configuration ------------------------------------------


def functions(script: str) -> set[str]:
    """The functions of the script's configuration-files section."""
    start = script.index("# >>> configuration files")
    section = script[start : script.index("# <<< configuration files")]
    return set(re.findall(r"^(\w+)\(\) \{", section, re.MULTILINE))


@pytest.mark.parametrize(
    ("data", "carried"),
    [
        ({"tunnel": LOGIN}, {"write_ssh_config", "write_proxychains_conf"}),
        (
            {"tunnel": LOGIN, "chain": {"tool": "tsocks"}},
            {"write_ssh_config", "write_tsocks_conf"},
        ),
        ({"tunnel": LOGIN, "chain": {"tool": "none"}}, {"write_ssh_config"}),
        ({"mode": "direct"}, set()),
        ({"mode": "direct", "chain": {"tool": "none"}}, set()),
    ],
    ids=["proxychains", "tsocks", "no-chain", "direct", "direct-chain-none"],
)
def test_only_the_chosen_tools_configuration_is_rendered(
    data: dict[str, Any], carried: set[str]
) -> None:
    script = script_for(data)
    assert functions(script) == carried
    if "write_proxychains_conf" not in carried:
        assert "[ProxyList]" not in script and "strict_chain" not in script
    if "write_tsocks_conf" not in carried:
        assert "server_type = 5" not in script
    if data.get("mode") == "direct":
        assert "lib/tunnel.sh" not in script and "lib/chain.sh" not in script


# -- the job id, never named by the drone scripts -----------------------------------


def test_the_drone_scripts_never_name_a_batch_system() -> None:
    for path in template_dir().rglob("*"):
        if path.is_file():
            assert "slurm" not in path.read_text().lower(), path


def test_the_job_id_comes_from_the_drivers_variable(tmp_path: Path) -> None:
    script = script_for({"tunnel": LOGIN}, job_id_variable="PBS_JOBID")
    assert script.count("PBS_JOBID") == 1
    path = tmp_path / "drone.sh"
    path.write_text(script)
    out = subprocess.run(
        ["bash", "-c", 'source "$1"; echo "$TNA_JOB_ID"; tunnel_seed', "t", str(path)],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "PBS_JOBID": "42"},
        check=True,
    ).stdout.split()
    assert out == ["42", "42"]
    with pytest.raises(ValueError, match="job_id_variable"):
        script_for({"tunnel": LOGIN}, job_id_variable="X; rm -rf /")


# -- a toy mode, composed from files under tests/ ------------------------------------


def test_a_toy_mode_from_tests_renders_and_runs(toy, tmp_path: Path) -> None:
    data = {
        "mode": "toy",
        "toy": {"greeting": "hi 'there' $(touch PWNED)", "level": 2},
        "monitoring": {"enabled": False},
        "pool": POOL,
        "payload": {
            "command": ["sh", "-c", 'echo "$TOY_LAYER|$TOY_SAID|$(cat "$TOY_CONF")"']
        },
    }
    script = script_for(data)
    assert main_body(script) == [
        "drone_setup",
        "toy_stage",
        "cvmfs_stage",
        "container_stage",
        "payload_stage",
    ]
    assert "# >>> toy.sh" in script and "#   worker -> toy: nothing at all" in script
    path = tmp_path / "drone.sh"
    path.write_text(script)
    if shutil.which("shellcheck"):
        lint = subprocess.run(
            ["shellcheck", "-S", "warning", "-s", "bash", str(path)],
            capture_output=True,
            text=True,
        )
        assert lint.returncode == 0, lint.stdout
    result = subprocess.run(
        ["bash", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "TMPDIR": str(tmp_path),
            "TardisDroneUuid": UUID,
            "SLURM_JOB_ID": "7",
        },
        timeout=60,
        start_new_session=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "wrapped|hi 'there' $(touch PWNED)|level = 2\n"
    err = result.stderr
    assert f"drone {UUID}: toy: hi 'there'" in err
    assert re.search(r"stage toy ready after .*\n.*stage cvmfs skipped", err)
    assert "network mode toy" in err and "job 7," in err
    assert not list(tmp_path.rglob("PWNED")) and leftovers(tmp_path) == []


def test_a_toy_mode_takes_part_in_check(toy) -> None:
    assert _fix("toy") == "feed the toy"
    profile, budget = load_profile_and_budget({"mode": "toy"})
    assert derive_budget(profile).legs() == budget.legs()
