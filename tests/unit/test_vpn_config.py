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
from profiles import config_text, problems_of, script_for, setting

from tardis_netadapter.config import load_profile_and_budget
from tardis_netadapter.modes import stages
from tardis_netadapter.modes import vpn as vpn_module

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


def group_names(script: str, title: str) -> list[str]:
    block = script[script.index(f"# {title}") :]
    return re.findall(r"^([A-Z_]+)=", block[: block.index("\n\n")], re.MULTILINE)


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
        0,  # one immediate retry, then the supervisor (docs/vpn.md)
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
    assert setting(script, "VPN_SERVERCERT") == f"'{PIN}'"
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
        "chain.sh",  # the ocproxy fallback's preload (isolation preferred)
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


# -- refused values: key, value, fix ------------------------------------------------


@pytest.mark.parametrize(
    ("vpn", "sections", "expected"),
    [
        (
            {"server": ""},
            {},
            "Site.Network.vpn.server: missing; give the VPN server's host name",
        ),
        (
            {"server": "fd00::3"},
            {},
            "Site.Network.vpn.server: got 'fd00::3'; the drone's namespace is "
            "IPv4 only",
        ),
        (
            {"server": "vpn dmz"},
            {},
            "Site.Network.vpn.server: got 'vpn dmz'; expected a host name",
        ),
        (
            {"servercert": None},
            {},
            "Site.Network.vpn.servercert: missing; pin the server's key",
        ),
        (
            {"servercert": "sha1:0123"},
            {},
            "Site.Network.vpn.servercert: got 'sha1:0123'; expected pin-sha256:",
        ),
        (
            {"servercert": "pin-sha256:" + "A" * 42 + "=="},
            {},
            "Site.Network.vpn.servercert: got 'pin-sha256:AAAA",
        ),
        (
            {"verify": False},
            {},
            "Site.Network.vpn.verify: got false with servercert "
            f"{PIN!r}; a pin is verified or absent",
        ),
        (
            {"password_file": None, "user": None},
            {},
            "Site.Network.vpn.password_file: missing, and no certificate; give "
            "user and password_file",
        ),
        (
            {"user": None},
            {},
            "Site.Network.vpn.user: missing with password_file",
        ),
        (
            {"password_file": "vpn.password"},
            {},
            "Site.Network.vpn.password_file: got 'vpn.password'; a 0600 file",
        ),
        (
            {"key": "~/vpn.key"},
            {},
            "Site.Network.vpn.key: got '~/vpn.key' without certificate",
        ),
        (
            {"mtu": 100},
            {},
            "Site.Network.vpn.mtu: got 100; expected a whole number from 576 to 9000",
        ),
        (
            {"reconnect_timeout": -1},
            {},
            "Site.Network.vpn.reconnect_timeout: got -1; expected 0 or more",
        ),
        (
            {"fallback": "none"},
            {},
            "Site.Network.vpn.fallback: got 'none' with isolation 'preferred'; "
            "without a namespace the drone needs a fallback: set vpn.fallback: "
            "ocproxy, or isolation: required",
        ),
        (
            {"localnet": ["fd00::/8"]},
            {},
            "Site.Network.vpn.localnet[0]: got 'fd00::/8'; expected an IPv4 network",
        ),
        (
            {"protocol": "gp"},
            {},
            "Site.Network.vpn.protocol: got 'gp'; allowed: one of 'anyconnect'",
        ),
        (
            {},
            {"cvmfs": {"http_proxy": "forward:squid"}},
            "Site.Network.cvmfs.http_proxy: got 'forward:squid' with mode vpn; "
            "there are no tunnel forwards",
        ),
        (
            {"dpd": 20},
            {"firewall": {"idle_timeout": 20}},
            "Site.Network.vpn.dpd: got 20; it is not below "
            "Site.Network.firewall.idle_timeout=20, so the firewall drops the "
            "idle VPN between two DPD probes. Use at most 10 or remove the key "
            "to derive it",
        ),
        (
            {"dpd": 10, "udp_idle_timeout": 8},
            {"firewall": {"idle_timeout": 60}},
            "Site.Network.vpn.dpd: got 10; it is not below "
            "Site.Network.vpn.udp_idle_timeout=8, so the firewall drops",
        ),
        (
            {"dpd": 0},
            {},
            "Site.Network.vpn.dpd: got 0; expected a time in seconds greater than 0",
        ),
    ],
)
def test_refused_values_name_key_value_and_fix(
    vpn: dict[str, Any], sections: dict[str, Any], expected: str
) -> None:
    found = problems_of(network(vpn, **sections))
    assert any(p.startswith(expected) for p in found), found


def test_accepted_alternatives() -> None:
    # a certificate alone (key inside it), no pin with verify false, no DTLS
    # with a UDP timeout shorter than the DPD (DTLS is off: no UDP flow)
    profile, _ = load_profile_and_budget(
        network(
            {
                "password_file": None,
                "user": None,
                "certificate": "~/.tardis-netadapter/vpn.p12",
                "servercert": None,
                "verify": False,
                "dtls": False,
                "dpd": 10,
                "udp_idle_timeout": 5,
            },
            firewall={"idle_timeout": 30},
            isolation="required",
        )
    )
    assert profile.vpn.certificate == "~/.tardis-netadapter/vpn.p12"


# -- the keepalive legs: DPD from the idle timeouts -------------------------------------


@pytest.mark.parametrize(
    ("vpn", "firewall", "dpd"),
    [
        ({}, None, vpn_module.DEFAULT_DPD),
        ({}, 300, vpn_module.DEFAULT_DPD),
        ({}, 20, 10),
        ({}, 3, 1),
        ({"udp_idle_timeout": 8}, 300, 4),
        ({"udp_idle_timeout": 8, "dtls": False}, 300, vpn_module.DEFAULT_DPD),
        ({"udp_idle_timeout": 8}, None, 4),
        ({"dpd": 7}, 20, 7),
    ],
)
def test_dpd_is_derived_below_every_idle_timeout(
    vpn: dict[str, Any], firewall: Any, dpd: int
) -> None:
    data = network(vpn, firewall={"idle_timeout": firewall})
    profile, budget = load_profile_and_budget(data)
    assert vpn_module.dpd_interval(profile) == dpd
    assert setting(script_for(data), "VPN_DPD") == str(dpd)
    legs = dict(budget.legs())
    assert legs["worker -> VPN server, TLS (tcp/443)"] == (
        f"openconnect DPD every {dpd}s (--force-dpd)"
    )


def test_legs_name_tls_dtls_the_outer_link_and_the_pool() -> None:
    _, budget = load_profile_and_budget(
        network({"udp_idle_timeout": 12}, firewall={"idle_timeout": 20})
    )
    legs = budget.legs()
    assert [leg for leg, _ in legs[:4]] == [
        "worker -> VPN server, TLS (tcp/443)",
        "worker -> VPN server, DTLS (udp/443; UDP idle timeout 12s)",
        "worker namespace -> outer link (slirp4netns, else pasta)",
        "VPN server -> pool (the payload's own flows, routed)",
    ]
    assert legs[1][1] == "openconnect DPD every 6s over DTLS"
    assert "openconnect's TLS/DTLS (DPD every 6s)" in legs[2][1]
    assert legs[3][1] == "CCB_HEARTBEAT_INTERVAL=10s"
    _, tls_only = load_profile_and_budget(network({"dtls": False}))
    assert not any("DTLS (udp" in leg for leg, _ in tls_only.legs())


def test_the_grace_covers_the_vpn_reconnect() -> None:
    profile, budget = load_profile_and_budget(network())
    bound = vpn_module.reconnect_bound(profile)
    # openconnect's own retries, the supervisor's worst wait, a new connection
    assert bound == 0 + 20 + 30
    assert budget.grace >= bound + 2 * budget.watchdog_interval


# -- credentials: paths only, never a value -----------------------------------------------


def test_no_credential_is_read_or_rendered(tmp_path: Any, monkeypatch) -> None:
    import builtins
    import io
    import pathlib

    secret = "hunter2-correct-horse"
    password = tmp_path / "vpn.password"
    password.write_text(secret + "\n")
    key = tmp_path / "vpn.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n" + secret + "\n")
    opened: list[str] = []
    real_open = builtins.open

    def spy(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)
    real_read_text = pathlib.Path.read_text

    def read_text(self: pathlib.Path, *args: Any, **kwargs: Any) -> str:
        opened.append(str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", read_text)
    data = network(
        {
            "password_file": str(password),
            "certificate": str(tmp_path / "vpn.crt"),
            "key": str(key),
        }
    )
    script = script_for(data)
    profile, _ = load_profile_and_budget(data)
    mode = vpn_module.MODE
    texts = [script, *mode.probe_lines(profile), repr(mode.warnings(profile))]
    assert opened, "the spy saw nothing: it does not watch what the renderer opens"
    assert str(password) not in opened and str(key) not in opened
    assert not any(secret in text for text in texts)
    # the paths are there, for the drone to give openconnect
    assert setting(script, "VPN_PASSWORD_FILE") == str(password)
    assert setting(script, "VPN_KEY") == str(key)


# -- check: warnings and --probe ------------------------------------------------------------


def test_warnings() -> None:
    profile, _ = load_profile_and_budget(network())
    assert vpn_module.MODE.warnings(profile) == []
    profile, _ = load_profile_and_budget(
        network({"servercert": None, "verify": False, "dtls": False})
    )
    found = vpn_module.MODE.warnings(profile)
    assert [what.split(":")[0] for what, _ in found] == [
        "vpn.verify is false",
        "vpn.dtls is false",
    ]
    assert "vpn.servercert: pin-sha256:" in found[0][1]
    # the netns part's mountrepo warning applies (user namespace)
    profile, _ = load_profile_and_budget(
        network(cvmfs={"mode": "mountrepo", "repositories": ["cms.cern.ch"]})
    )
    assert any("mountrepo" in what for what, _ in vpn_module.MODE.warnings(profile))


def _probe_items(profile: Any) -> dict[str, Any]:
    """Run the mode's probe lines as ``check --probe`` would (with its mark
    and have), on this machine; items by name."""
    from tardis_netadapter.commands.check import MARK, parse_probe

    script = "\n".join(
        [
            f'mark() {{ printf \'{MARK} %s %s %s\\n\' "$1" "$2" "$3"; }}',
            'have() { if command -v "$1" >/dev/null 2>&1; then mark "cmd:$1" ok '
            '"$(command -v "$1")"; else mark "cmd:$1" fail missing; fi; }',
            *vpn_module.MODE.probe_lines(profile),
        ]
    )
    result = subprocess.run(
        ["/bin/sh", "-s"],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return {i.what.split(": ")[0]: i for i in parse_probe(result.stdout)}


@pytest.fixture
def tls_server(tmp_path: Any):
    """A TLS server on 127.0.0.1 (openssl s_server) and its key's pin."""
    import base64
    import hashlib
    import socket
    import time

    openssl = shutil.which("openssl")
    if (
        openssl is None
        or shutil.which("openconnect", path="/usr/sbin:/sbin:/usr/bin:/bin") is None
    ):
        pytest.skip("openssl and openconnect needed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=vpn.test",
            "-days",
            "2",
        ],
        capture_output=True,
        check=True,
    )
    der = subprocess.run(
        f"{openssl} x509 -in {cert} -pubkey -noout | {openssl} pkey -pubin -outform der",
        shell=True,
        capture_output=True,
        check=True,
    ).stdout
    pin = "pin-sha256:" + base64.b64encode(hashlib.sha256(der).digest()).decode()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [
            openssl,
            "s_server",
            "-accept",
            f"127.0.0.1:{port}",
            "-cert",
            str(cert),
            "-key",
            str(key),
            "-www",
            "-quiet",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(50):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        yield port, pin
    finally:
        server.terminate()
        server.wait(5)


def test_probe_shows_the_pin_the_login_node_sees(tls_server: Any) -> None:
    port, pin = tls_server
    base = {"server": "127.0.0.1", "port": port}
    right, _ = load_profile_and_budget(network({**base, "servercert": pin}))
    items = _probe_items(right)
    assert items["cmd:openconnect"].ok
    assert items["vpn-pin"].ok, items["vpn-pin"].what
    assert items["vpn-pin"].what == f"vpn-pin: server shows {pin}, as configured"

    wrong, _ = load_profile_and_budget(network({**base, "servercert": PIN}))
    item = _probe_items(wrong)["vpn-pin"]
    assert not item.ok
    assert item.what == f"vpn-pin: server shows {pin}, configured {PIN}"
    assert "servercert" in item.fix

    unpinned, _ = load_profile_and_budget(
        network({**base, "servercert": None, "verify": False})
    )
    item = _probe_items(unpinned)["vpn-pin"]
    assert item.ok and item.what == f"vpn-pin: server shows {pin} (not pinned)"


def test_probe_without_a_server_says_so(tmp_path: Any) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    profile, _ = load_profile_and_budget(network({"server": "127.0.0.1", "port": port}))
    item = _probe_items(profile)["vpn-pin"]
    assert not item.ok and item.what.startswith(
        "vpn-pin: no pin from https://127.0.0.1"
    )


def test_probe_checks_the_password_file_without_reading_it(tmp_path: Any) -> None:
    password = tmp_path / "vpn.password"
    password.write_text("secret\n")
    password.chmod(0o644)
    profile, _ = load_profile_and_budget(network({"password_file": str(password)}))
    lines = "\n".join(vpn_module.MODE.probe_lines(profile))
    assert "cat " not in lines and "<" + str(password) not in lines
    items = _probe_items(profile)
    assert items["vpn-password-file"].ok
    assert not items["vpn-password-mode"].ok
    assert "chmod 600" in items["vpn-password-mode"].fix
    password.chmod(0o600)
    assert "vpn-password-mode" not in _probe_items(profile)


def test_every_probe_item_has_a_fix() -> None:
    profile, _ = load_profile_and_budget(
        network({"certificate": "~/c.pem", "key": "~/k.pem"})
    )
    lines = "\n".join(vpn_module.MODE.probe_lines(profile))
    names = set(re.findall(r"mark ([a-z][a-z:-]+) ", lines))
    names |= {f"cmd:{n}" for n in re.findall(r"^have ([a-z]+)$", lines, re.M)}
    names |= {"cmd:openconnect"}
    assert {"vpn-pin", "vpn-password-file", "vpn-certificate", "vpn-key"} <= names
    for name in names:
        assert vpn_module.MODE.probe_fix(name), name


# -- the fallback without a namespace (ocproxy + the preload chain) ---------------


def test_fallback_renders_its_chain_only_when_it_can_be_used() -> None:
    script = script_for(network({"localnet": ["10.1.0.0/16"]}))
    assert group_names(script, "vpn fallback without a namespace") == [
        "VPN_SOCKS_PORT_RANGE",
        "CHAIN_TOOL",
        "CHAIN_LIBRARY",
        "CHAIN_QUIET",
    ]
    assert setting(script, "VPN_SOCKS_PORT_RANGE") == "(20000 32767)"
    assert setting(script, "CHAIN_TOOL") == "proxychains"
    conf = config_text(script, "write_proxychains_conf")
    # one strict hop: ocproxy's port (put in by lib/vpn.sh); names to ocproxy
    assert conf.endswith("[ProxyList]\nsocks5 127.0.0.1 @TARDIS_PORT_0@\n"), conf
    assert "strict_chain\n" in conf and "proxy_dns\n" in conf
    assert "localnet 127.0.0.0/255.0.0.0\nlocalnet 10.1.0.0/255.255.0.0\n" in conf
    assert "ocproxy" in conf.splitlines()[0]
    # isolation required, or no fallback: nothing of it in the script
    for data in (
        network(isolation="required"),
        network({"fallback": "none"}, isolation="required"),
    ):
        script = script_for(data)
        assert "write_proxychains_conf() {" not in script
        assert "chain.sh" not in libraries(script)
        assert "\nVPN_SOCKS_PORT_RANGE=" not in script


def test_fallback_keys_are_checked() -> None:
    found = problems_of(
        network({"port_range": [80, 90], "library": "lib/x.so"}),
    )
    assert any(
        p.startswith("Site.Network.vpn.port_range: got [80, 90]; expected 1024")
        for p in found
    ), found
    assert any(p.startswith("Site.Network.vpn.library: got 'lib/x.so'") for p in found)
    script = script_for(
        network({"port_range": [40000, 40099], "library": "~/lib/libproxychains4.so"})
    )
    assert setting(script, "VPN_SOCKS_PORT_RANGE") == "(40000 40099)"
    assert setting(script, "CHAIN_LIBRARY") == "'~/lib/libproxychains4.so'"


def test_socks_proxychains_rendering_is_unchanged() -> None:
    """The fallback reuses socks' template: socks' own file stays as it was."""
    socks = {
        "tunnel": {"hops": [{"host": "login.example.org", "user": "d"}]},
        "pool": POOL,
    }
    conf = config_text(script_for(socks), "write_proxychains_conf")
    assert conf == (
        "# proxychains-ng configuration of the drone chain (socks5 "
        "127.0.0.1:@TARDIS_PORT_0@ (ssh tunnel)),\n"
        "# rendered by tardis-netadapter.\n"
        "# Every hop must work: strict_chain.\nstrict_chain\nquiet_mode\n"
        "proxy_dns\nremote_dns_subnet 224\n"
        "tcp_read_time_out 15000\ntcp_connect_time_out 8000\n"
        "localnet 127.0.0.0/255.0.0.0\n\n[ProxyList]\n"
        "socks5 127.0.0.1 @TARDIS_PORT_0@\n"
    ), conf
