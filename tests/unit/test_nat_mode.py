"""Mode ``nat`` (issue 14), the Python side and the watchdog: the profile with
the ``nat`` section, the rendered settings and stages, the keepalive leg,
``check``'s warnings, and what a failing route check does to the heartbeat,
the adapter's verdict and ``status``."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tardis_netadapter import modes, render
from tardis_netadapter.config import ConfigurationError, load_profile_and_budget
from tardis_netadapter.connectivity.heartbeat import Route, parse_record
from tardis_netadapter.connectivity.report import make_row, render_table, to_json
from tardis_netadapter.connectivity.verdict import JobView, Timing, Verdict, judge
from tardis_netadapter.modes import nat as nat_module
from tardis_netadapter.modes.stages import watched_stages

ROOT = Path(__file__).resolve().parents[2]
WATCHDOG = ROOT / "drone_scripts" / "lib" / "watchdog.sh"
POOL = {"collector": "10.66.2.1:9618"}
NAT = {
    "gateway": "10.66.1.250",
    "public_address": "10.66.2.100",
    "users": ["aliprod"],
    "groups": ["alice", 4242],
    "site_subnets": ["10.66.1.0/24"],
    "address_echo": "http://10.66.2.1:8080/",
}
UUID = "gsi-0123abcd"


def network(nat: Any = None, **sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"mode": "nat", "pool": POOL, "nat": {**NAT, **(nat or {})}}
    data.update(sections)
    return json.loads(json.dumps(data))


def script_for(data: dict[str, Any]) -> str:
    profile, budget = load_profile_and_budget(data)
    return render.render_drone_script(
        profile, budget, site_name="GSI", machine_type="cpu", job_id_variable="JOB"
    )


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigurationError) as caught:
        load_profile_and_budget(data, "Site.Network")
    return caught.value.problems


def setting(script: str, name: str) -> str:
    match = re.search(rf"^{name}=(.*)$", script, re.MULTILINE)
    assert match, f"{name} not in the settings"
    return match.group(1)


# -- the profile -------------------------------------------------------------------


def test_nat_is_registered_and_loads_its_section() -> None:
    assert "nat" in modes.names()
    profile, _ = load_profile_and_budget(network())
    assert isinstance(profile, nat_module.NatProfile)
    assert profile.nat.gateway == "10.66.1.250" and profile.nat.mark_value == 1
    assert profile.nat.table == 201 and profile.nat.table_name == "tna_nat"


def test_a_bad_nat_value_names_the_key() -> None:
    problems = problems_of(network({"gateway": "10.66.1.999"}))
    assert any(
        p.startswith("Site.Network.nat.gateway: got '10.66.1.999'") for p in problems
    )


def test_the_nat_section_in_another_mode_is_refused_naming_its_mode() -> None:
    data = network()
    data["mode"] = "direct"
    (problem,) = problems_of(data)
    assert problem == (
        "Site.Network.nat: belongs to mode 'nat', but this site's mode is "
        "'direct'; remove nat, or set mode: nat"
    )


def test_a_tunnel_forward_for_cvmfs_is_refused() -> None:
    data = network(
        cvmfs={
            "mode": "mountrepo",
            "repositories": ["alice.cern.ch"],
            "http_proxy": "forward:squid",
        }
    )
    problems = problems_of(data)
    assert any(
        "cvmfs.http_proxy: got 'forward:squid' with mode nat" in p for p in problems
    )


# -- the drone script ----------------------------------------------------------------


def test_settings_stages_and_library() -> None:
    script = script_for(network())
    assert setting(script, "NAT_GATEWAY") == "10.66.1.250"
    assert setting(script, "NAT_PUBLIC_ADDRESS") == "10.66.2.100"
    assert setting(script, "NAT_MARK") == "1"
    assert setting(script, "NAT_TABLE") == "201"
    assert setting(script, "NAT_TABLE_NAME") == "tna_nat"
    assert setting(script, "NAT_USERS") == "(aliprod)"
    assert setting(script, "NAT_GROUPS") == "(alice 4242)"
    # the check target defaults to the pool's collector
    assert setting(script, "NAT_CHECK_HOST") == "10.66.2.1"
    assert setting(script, "NAT_CHECK_PORT") == "9618"
    assert setting(script, "NAT_ADDRESS_ECHO") == "http://10.66.2.1:8080/"
    main = script[script.index("main() {") :].splitlines()[1:9]
    assert [line.strip() for line in main] == [
        "drone_setup",
        "stage_skipped tunnel 'network mode nat'",
        "nat_route_stage",
        "cvmfs_stage",
        "stage_skipped chain 'network mode nat'",
        "watchdog_stage",
        "container_stage",
        "payload_stage",
    ]
    assert setting(script, "MONITORING_STAGES") == "(cvmfs tunnel route chain payload)"
    assert re.findall(r"^# >>> lib/(\S+)$", script, re.MULTILINE) == [
        "common.sh",
        "cvmfs.sh",
        "route.sh",
        "container.sh",
        "payload.sh",
        "watchdog.sh",
        "monitoring.sh",
    ]
    # no tunnel, no preload
    assert "LD_PRELOAD" not in script.split("# >>> lib/")[0]


def test_a_check_target_and_a_hex_mark() -> None:
    script = script_for(
        network({"check_target": "echo.example.org:443", "mark": "0x10"})
    )
    assert setting(script, "NAT_CHECK_HOST") == "echo.example.org"
    assert setting(script, "NAT_CHECK_PORT") == "443"
    assert setting(script, "NAT_MARK") == "16"


def test_the_leg_names_the_nat_and_its_conntrack_timeout() -> None:
    profile, budget = load_profile_and_budget(network(firewall={"idle_timeout": 600}))
    legs = dict(budget.legs())
    leg = "worker -> NAT 10.66.1.250 -> pool as 10.66.2.100 (CCB; conntrack idle timeout 600s)"
    assert legs[leg] == budget.knob_text("CCB_HEARTBEAT_INTERVAL")
    # the heartbeat beats the NAT's idle timeout, as mode direct's does
    assert int(budget.condor_knobs["CCB_HEARTBEAT_INTERVAL"]) < 600


def test_warnings_without_an_address_echo() -> None:
    profile, _ = load_profile_and_budget(network({"address_echo": ""}))
    (what, fix), *_ = modes.get("nat").warnings(profile)
    assert what.startswith("nat.address_echo is empty")
    assert "nat.address_echo: http://HOST:PORT/" in fix
    profile, _ = load_profile_and_budget(network())
    assert modes.get("nat").warnings(profile) == []


def test_a_check_target_on_the_site_network_is_warned_about() -> None:
    profile, _ = load_profile_and_budget(network({"check_target": "10.66.1.1:22"}))
    ((what, fix),) = modes.get("nat").warnings(profile)
    assert what.startswith(
        "the route check's target 10.66.1.1:22 is in nat.site_subnets"
    )
    assert "nat.check_target" in fix


def test_the_example_config_renders_mode_nat() -> None:
    from tardis_netadapter.siteconfig import load_site_from_file

    found = load_site_from_file(ROOT / "configs" / "gsi-site-nat.yml", "GSI")
    profile = found.settings.profile
    assert profile.mode == "nat" and profile.nat.users == ("aliprod", "alise")
    assert [r.name for r in profile.nat.routers] == ["nat1", "nat2"]


# -- the watchdog, the heartbeat, the verdict, status ------------------------------------

ROUND = r"""
route_check() {
    printf '%s\n' "$ROUTE_LINE" >"$ROUTE_STATE"
}
"""


def watchdog_round(tmp_path: Path, route_line: str, stage_state: str = "ok") -> dict:
    """One watchdog round of a nat drone whose route check writes ROUTE_LINE."""
    run = tmp_path / "run"
    stages = " ".join(watched_stages(modes.get("nat")))
    script = (
        "set -euo pipefail\n"
        f"source {shlex.quote(str(WATCHDOG))}\n"
        + ROUND
        + f"TNA_DRONE_UUID={UUID}\nTNA_HEARTBEAT_DIR={shlex.quote(str(tmp_path / 'hb'))}\n"
        f"TNA_RUN_DIR={shlex.quote(str(run))}\nTNA_CONDOR_PING=off\n"
        f"TNA_STAGES=({stages})\n"
        f"ROUTE_STATE={shlex.quote(str(tmp_path / 'route.state'))}\n"
        "TNA_ROUTE_STATE_FILE=$ROUTE_STATE\nTNA_ROUTE_CHECK=route_check\n"
        "tna_stage cvmfs ok\ntna_stage tunnel skipped\ntna_stage chain skipped\n"
        f"tna_stage route {stage_state}\n"
        "tna_watchdog_once\n"
    )
    result = subprocess.run(
        ["bash", "-c", script],
        env={
            "PATH": os.environ["PATH"],
            "ROUTE_LINE": route_line,
            "HOME": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads((tmp_path / "hb" / f"{UUID}.json").read_text())


REASON = (
    "ip route get 10.66.2.1 mark 0x1 goes via 10.66.1.251, expected via "
    "10.66.1.250 (nat.gateway)"
)


def test_a_failing_route_check_blames_stage_route(tmp_path: Path) -> None:
    record = watchdog_round(tmp_path, f"fail\t10.66.1.251\t\t{REASON}")
    assert record["failing_stage"] == "route"
    assert record["last_error"] == REASON
    assert record["stages"]["route"] == "failed"
    assert record["route"] == {
        "ok": False,
        "via": "10.66.1.251",
        "seen": None,
        "reason": REASON,
    }


def test_a_passing_route_check_clears_it(tmp_path: Path) -> None:
    record = watchdog_round(tmp_path, "ok\t10.66.1.250\t10.66.2.100\t", "failed")
    assert record["failing_stage"] is None
    assert record["stages"]["route"] == "ok"
    assert record["route"] == {
        "ok": True,
        "via": "10.66.1.250",
        "seen": "10.66.2.100",
        "reason": "",
    }


def test_a_route_stage_not_run_yet_keeps_its_state(tmp_path: Path) -> None:
    record = watchdog_round(tmp_path, f"fail\t\t\t{REASON}", "pending")
    assert record["stages"]["route"] == "pending"


def test_other_modes_have_no_route_object(tmp_path: Path) -> None:
    script = f'source {shlex.quote(str(WATCHDOG))}\ntna_route r; printf "%s" "$r"\n'
    out = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert out == "null"


def test_the_verdict_follows_a_failing_route(tmp_path: Path) -> None:
    record = watchdog_round(tmp_path, f"fail\t10.66.1.251\t\t{REASON}")
    timing = Timing(interval=30, grace=120, connect_deadline=600)
    job = JobView(running=True, started=record["time"] - 3600)
    # it worked before: degraded within the grace, lost after it
    worked = dict(
        record, last_ok=record["time"] - 40, failing_since=record["time"] - 10
    )
    heartbeat = parse_record(json.dumps(worked))
    assert heartbeat is not None
    assert heartbeat.route == Route(False, "10.66.1.251", None, REASON)
    now = record["time"]
    degraded = judge(job, heartbeat, now, timing)
    assert (degraded.verdict, degraded.failing_stage) == (Verdict.DEGRADED, "route")
    assert REASON in degraded.reason
    lost = judge(job, heartbeat, now + 200, timing)
    assert (lost.verdict, lost.failing_stage) == (Verdict.LOST, "route")
    assert lost.verdict.terminal
    # it never worked: never-connected after the connect deadline, naming route
    never = parse_record(json.dumps(dict(record, last_ok=None)))
    judgement = judge(job, never, now, timing)
    assert (judgement.verdict, judgement.failing_stage) == (
        Verdict.NEVER_CONNECTED,
        "route",
    )
    # status: the STAGE and ROUTE columns, and the JSON object
    row = make_row(UUID, "4711", "RUNNING", lost, heartbeat)
    table = render_table([row], "GSI").splitlines()
    header = table[0].split()
    assert "ROUTE" in header
    assert table[1].split()[:6] == [UUID, "4711", "RUNNING", "lost", "3m20s", "route"]
    start = table[0].index("ROUTE")
    assert table[1][start:].split()[0] == "fail"
    drone = json.loads(to_json([row], "GSI", now))["drones"][0]
    assert drone["route"] == {
        "ok": False,
        "via": "10.66.1.251",
        "seen": None,
        "reason": REASON,
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("x", None),
        (
            {"ok": True, "via": "10.66.1.250", "seen": "10.66.2.100", "reason": ""},
            Route(True, "10.66.1.250", "10.66.2.100", ""),
        ),
        (
            {"ok": "yes", "via": "no address", "seen": 5, "reason": "a\nb\x1b"},
            Route(False, None, None, "a b?"),
        ),
    ],
)
def test_the_route_object_is_parsed_field_by_field(value: Any, expected: Any) -> None:
    line = json.dumps({"uuid": UUID, "time": 1000.0, "route": value})
    heartbeat = parse_record(line)
    assert heartbeat is not None and heartbeat.route == expected
