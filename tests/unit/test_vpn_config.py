"""Mode ``vpn`` (issue 13), the Python side: the profile section ``vpn`` with
its defaults, the rendered settings group ``vpn`` and the netns ``capture``
group, the stage list, the libraries and the vpn guard ruleset
(``write_capture_nft`` from conf/vpn.nft.j2, checked with ``nft -c`` where it
can run)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import pytest

from tardis_netadapter import render
from tardis_netadapter.config import ConfigurationError, load_profile_and_budget
from tardis_netadapter.modes import stages

PIN = "pin-sha256:4lAOeBHiuNKZWiC8LYbYfkmXo64Th7p8/qwHVaPkaB8="
POOL = {"collector": "10.66.2.1:9618"}
VPN = {
    "server": "10.66.1.3",
    "servercert": PIN,
    "user": "drone",
    "password_file": "~/.tardis-netadapter/vpn.password",
}


def network(vpn: Any = None, **sections: Any) -> dict[str, Any]:
    """A vpn profile: the lab's server with a password, the pool, ``sections``."""
    data: dict[str, Any] = {"mode": "vpn", "pool": POOL, "vpn": {**VPN, **(vpn or {})}}
    data.update(sections)
    return json.loads(json.dumps(data))


def script_for(data: dict[str, Any]) -> str:
    profile, budget = load_profile_and_budget(data)
    return render.render_drone_script(
        profile, budget, site_name="Site", machine_type="cpu", job_id_variable="JOB"
    )


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigurationError) as caught:
        load_profile_and_budget(data, "Site.Network")
    return caught.value.problems


def setting(script: str, name: str) -> str:
    match = re.search(rf"^{name}=(.*)$", script, re.MULTILINE)
    assert match, f"{name} not in the settings"
    return match.group(1)


def group_names(script: str, title: str) -> list[str]:
    block = script[script.index(f"# {title}") :]
    return re.findall(r"^([A-Z_]+)=", block[: block.index("\n\n")], re.MULTILINE)


def config_text(script: str, function: str) -> str:
    match = re.search(
        rf"^{function}\(\) \{{\n    cat <<'TARDIS_NETADAPTER_EOF'\n(.*?)"
        r"^TARDIS_NETADAPTER_EOF$",
        script,
        re.MULTILINE | re.DOTALL,
    )
    assert match, f"{function} not in the script"
    return match.group(1)


def libraries(script: str) -> list[str]:
    return re.findall(r"^# >>> lib/(\S+)$", script, re.MULTILINE)


# -- keys and defaults -----------------------------------------------------------


def test_defaults() -> None:
    profile, _ = load_profile_and_budget(network())
    vpn = profile.vpn
    assert (vpn.port, vpn.verify, vpn.dtls, vpn.protocol) == (
        443,
        True,
        True,
        "anyconnect",
    )
    assert (vpn.mtu, vpn.dpd, vpn.fallback, vpn.reconnect_timeout) == (
        None,
        None,
        "ocproxy",
        10,
    )
    assert vpn.certificate is None and vpn.key is None and vpn.authgroup is None
    assert vpn.localnet == () and vpn.ready_timeout == 30.0


def test_the_vpn_settings_group_has_the_agreed_names_and_values() -> None:
    script = script_for(network())
    assert group_names(script, "vpn:") == [
        "VPN_SERVER",
        "VPN_PORT",
        "VPN_SERVERCERT",
        "VPN_USER",
        "VPN_PASSWORD_FILE",
        "VPN_CERTIFICATE",
        "VPN_KEY",
        "VPN_AUTHGROUP",
        "VPN_DTLS",
        "VPN_PROTOCOL",
        "VPN_MTU",
        "VPN_RECONNECT_TIMEOUT",
        "VPN_DPD",
        "VPN_FALLBACK",
        "VPN_INTERFACE",
        "VPN_ROUTE",
        "VPN_READY_TIMEOUT_MS",
        "VPN_PROBE_HOST",
        "VPN_PROBE_PORT",
        "NS_FIRST_HOPS",
    ]
    assert setting(script, "VPN_SERVER") == "10.66.1.3"
    assert setting(script, "VPN_PORT") == "443"
    assert setting(script, "VPN_SERVERCERT") == PIN
    assert setting(script, "VPN_PASSWORD_FILE") == "'~/.tardis-netadapter/vpn.password'"
    assert setting(script, "VPN_DTLS") == "1"
    assert setting(script, "VPN_MTU") == "''"
    assert setting(script, "VPN_FALLBACK") == "ocproxy"
    assert setting(script, "VPN_INTERFACE") == "tun0"
    assert setting(script, "VPN_READY_TIMEOUT_MS") == "30000"
    assert setting(script, "VPN_PROBE_HOST") == "10.66.2.1"
    assert setting(script, "VPN_PROBE_PORT") == "9618"
    assert setting(script, "NS_FIRST_HOPS") == "(10.66.1.3:443)"
    # the namespace part: always a namespace, no redsocks upstreams
    assert setting(script, "CAPTURE_METHOD") == "namespace"
    assert setting(script, "ISOLATION") == "preferred"
    assert setting(script, "NS_LOCALNET") == "(127.0.0.0/8)"
    assert "CAPTURE_UPSTREAM_PORTS=" not in script
    assert "TUNNEL_FIRST_HOPS=" not in script


def test_values_reach_the_settings() -> None:
    script = script_for(
        network(
            {
                "password_file": None,
                "user": None,
                "certificate": "/p/home/drone/vpn.crt",
                "key": "/p/home/drone/vpn.key",
                "port": 8443,
                "dtls": False,
                "mtu": 1300,
                "authgroup": "cms drones",
                "fallback": "none",
                "ready_timeout": 12.5,
                "localnet": ["10.66.1.0/24"],
            },
            isolation="required",
        )
    )
    assert setting(script, "VPN_CERTIFICATE") == "/p/home/drone/vpn.crt"
    assert setting(script, "VPN_KEY") == "/p/home/drone/vpn.key"
    assert setting(script, "VPN_PASSWORD_FILE") == "''"
    assert setting(script, "VPN_USER") == "''"
    assert setting(script, "VPN_DTLS") == "0"
    assert setting(script, "VPN_MTU") == "1300"
    assert setting(script, "VPN_AUTHGROUP") == "'cms drones'"
    assert setting(script, "VPN_FALLBACK") == "none"
    assert setting(script, "VPN_READY_TIMEOUT_MS") == "12500"
    assert setting(script, "NS_FIRST_HOPS") == "(10.66.1.3:8443)"
    assert setting(script, "ISOLATION") == "required"
    assert setting(script, "NS_LOCALNET") == "(10.66.1.0/24 127.0.0.0/8)"


def test_stages_and_libraries() -> None:
    script = script_for(network())
    main = script[script.index("main() {") :]
    assert "    drone_setup\n    isolation_stage\n    vpn_stage\n    cvmfs_stage\n" in (
        main
    )
    assert "chain_stage" not in main and "tunnel_stage" not in main
    assert setting(script, "MONITORING_STAGES") == "(cvmfs isolation vpn payload)"
    assert libraries(script) == [
        "common.sh",
        "cvmfs.sh",
        "supervise.sh",
        "netns.sh",
        "vpn.sh",
        "container.sh",
        "payload.sh",
        "watchdog.sh",
        "monitoring.sh",
    ]
    # the heartbeat parser knows the vpn stage, after socks' own
    assert "vpn" in stages.record_stages()


def test_the_guard_routes_through_tun0_and_lets_only_the_server_out() -> None:
    script = script_for(network(vpn={"localnet": ["10.66.1.0/24"]}))
    rules = config_text(script, "write_capture_nft")
    assert "write_redsocks_conf() {" not in script
    assert "redirect to" not in rules and "tna_capture" not in rules
    assert 'oifname "tun0" accept' in rules
    assert "ip daddr . tcp dport @hops accept" in rules
    assert "ip daddr . udp dport @hops accept" in rules
    assert "elements = { 10.66.1.0/24, 127.0.0.0/8 }" in rules
    assert "policy drop" in rules
    assert rules.rstrip().endswith("}")
    assert rules.index('counter name "leaks_udp" drop') > rules.index(
        'oifname "tun0" accept'
    )


def _can_check_nft() -> bool:
    if shutil.which("nft") is None or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-U", "-r", "-n", "nft", "list", "tables"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _can_check_nft(), reason="nft in a user namespace needed")
def test_nft_accepts_the_guard(tmp_path: Any) -> None:
    rules = config_text(script_for(network()), "write_capture_nft")
    path = tmp_path / "rules.nft"
    path.write_text(rules.replace("@TARDIS_HOPS@", "10.66.1.3 . 443"))
    result = subprocess.run(
        ["unshare", "-U", "-r", "-n", "nft", "-c", "-f", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_a_vpn_section_in_a_socks_profile_is_refused() -> None:
    data = {
        "tunnel": {"hops": [{"host": "10.66.1.1"}]},
        "pool": POOL,
        "vpn": VPN,
    }
    found = problems_of(data)
    assert any(
        p.startswith("Site.Network.vpn: belongs to mode 'vpn'") and "mode: vpn" in p
        for p in found
    ), found
