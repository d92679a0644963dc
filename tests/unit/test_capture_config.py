"""``chain.capture: namespace`` (issue 12): keys and defaults, the rendered nft
rules and redsocks configuration (checked with ``nft -c`` and ``redsocks -t``
where installed), the settings group ``capture``, every refused combination
with its key, value and fix, the warnings, the keepalive legs and the
``check --probe`` lines run for real."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from profiles import config_text, problems_of, script_for, setting

from tardis_netadapter import modes
from tardis_netadapter.commands.check import parse_probe, probe_script
from tardis_netadapter.config import load_profile_and_budget
from tardis_netadapter.modes import netns
from tardis_netadapter.modes.socks import capture
from tardis_netadapter.siteconfig import load_site_settings

LOGIN = {"hops": [{"host": "10.66.1.1", "user": "drone"}]}
POOL = {"collector": "10.66.2.1:9618"}
NS = {"capture": "namespace", "resolver": "10.66.2.53"}


def network(**sections: Any) -> dict[str, Any]:
    """A socks profile: the login hop, an address for the pool, and ``sections``."""
    data: dict[str, Any] = {"tunnel": LOGIN, "pool": POOL}
    data.update(sections)
    return json.loads(json.dumps(data))


def libraries(script: str) -> list[str]:
    return re.findall(r"^# >>> lib/(\S+)$", script, re.MULTILINE)


# -- keys and defaults ------------------------------------------------------------


def test_defaults_keep_todays_preload_chain() -> None:
    profile, _ = load_profile_and_budget(network())
    assert profile.chain.capture == "preload"
    assert profile.isolation == "preferred"
    assert profile.chain.resolver is None and profile.chain.redsocks is None
    assert profile.chain.resolver_route == "chain"
    ns = profile.namespace
    assert (ns.outer, ns.mtu, ns.cidr, ns.ready_timeout) == (
        "auto",
        65520,
        "100.64.99.0/24",
        5.0,
    )
    script = script_for(network())
    # the stage is static: a preload drone logs it skipped (lib/netns.sh)
    assert "    isolation_stage\n    tunnel_stage\n" in script
    assert libraries(script)[:7] == [
        "common.sh",
        "cvmfs.sh",
        "supervise.sh",
        "netns.sh",
        "tunnel.sh",
        "capture.sh",
        "chain.sh",
    ]
    assert setting(script, "CAPTURE_METHOD") == "preload"
    assert setting(script, "ISOLATION") == "preferred"
    assert setting(script, "NS_LOCALNET") == "(127.0.0.0/8)"
    # the libraries name them, but only a namespace script defines them
    assert "write_capture_nft() {" not in script
    assert "write_redsocks_conf() {" not in script


def test_the_capture_settings_group_has_the_agreed_names_and_values() -> None:
    script = script_for(
        network(
            chain={**NS, "localnet": ["10.0.0.0/8", "10.1.0.0/16"]},
            isolation="required",
            namespace={"outer": "pasta", "mtu": 1500, "ready_timeout": 2.5},
        )
    )
    block = script[script.index("# capture:") :]
    names = re.findall(r"^([A-Z_]+)=", block[: block.index("\n\n")], re.MULTILINE)
    assert names == [
        "CAPTURE_METHOD",
        "ISOLATION",
        "NS_OUTER",
        "NS_MTU",
        "NS_CIDR",
        "NS_READY_TIMEOUT_MS",
        "NS_LOCALNET",
        "CHAIN_RESOLVER",
        "CHAIN_RESOLVER_ROUTE",
        "CHAIN_REDSOCKS",
        "CAPTURE_UPSTREAM_TYPE",
        "CAPTURE_UPSTREAM_PORTS",
        "CAPTURE_PORT_BASE",
    ]
    assert setting(script, "CAPTURE_METHOD") == "namespace"
    assert setting(script, "ISOLATION") == "required"
    assert setting(script, "NS_OUTER") == "pasta"
    assert setting(script, "NS_MTU") == "1500"
    assert setting(script, "NS_READY_TIMEOUT_MS") == "2500"
    # 10.1.0.0/16 lies in 10.0.0.0/8: merged, so nft's interval set takes it
    assert setting(script, "NS_LOCALNET") == "(10.0.0.0/8 127.0.0.0/8)"
    assert setting(script, "CHAIN_RESOLVER") == "10.66.2.53"
    assert setting(script, "CAPTURE_PORT_BASE") == "12345"


# -- the nft rules ------------------------------------------------------------------


def test_nft_rules_spread_over_every_tunnel_connection() -> None:
    script = script_for(
        network(
            chain={**NS, "proxies": [], "localnet": ["192.168.7.0/24"]},
            tunnel={**LOGIN, "parallel": 3},
        )
    )
    rules = config_text(script, "write_capture_nft")
    assert rules.count("elements = { 127.0.0.0/8, 192.168.7.0/24 }") == 2
    assert rules.count("elements = { @TARDIS_HOPS@ }") == 2
    assert (
        "meta l4proto tcp redirect to :numgen inc mod 3 map "
        "{ 0 : 12345, 1 : 12346, 2 : 12347 }"
    ) in rules
    assert "udp dport 53 redirect to :5300" in rules
    assert "policy drop;" in rules
    assert 'meta l4proto udp counter name "leaks_udp" drop' in rules
    assert 'counter name "leaks_other" drop' in rules


def test_one_connection_redirects_without_numgen() -> None:
    rules = config_text(script_for(network(chain=NS)), "write_capture_nft")
    assert "meta l4proto tcp redirect to :12345\n" in rules
    assert "numgen" not in rules
    assert "udp dport 53 accept" not in rules  # the resolver is reached via the chain


def test_a_direct_resolver_is_let_through_the_guard() -> None:
    chain = {**NS, "localnet": ["10.66.0.0/16"], "resolver_route": "direct"}
    rules = config_text(script_for(network(chain=chain)), "write_capture_nft")
    assert "ip daddr 10.66.2.53 udp dport 53 accept" in rules


def nft_check_or_skip() -> str:
    nft = shutil.which("nft") or (
        "/usr/sbin/nft" if os.access("/usr/sbin/nft", os.X_OK) else None
    )
    if nft is None:
        pytest.skip("nft is not installed")
    command = [nft, "-c", "-f", "/dev/stdin"]
    if os.geteuid() != 0:  # nft -c needs CAP_NET_ADMIN: a namespace of our own
        unshare = shutil.which("unshare")
        if unshare is None:
            pytest.skip("not root and no unshare for nft -c")
        command = [unshare, "-Urn", *command]
    probe = subprocess.run(
        command, input="table ip t {}\n", capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"nft -c does not run here: {probe.stderr.strip()}")
    return " ".join(command)


@pytest.mark.parametrize(
    "chain,parallel",
    [
        ({**NS, "proxies": []}, 1),
        ({**NS, "proxies": [], "localnet": ["10.0.0.0/8", "172.16.0.0/12"]}, 4),
        (
            {
                **NS,
                "localnet": ["10.66.0.0/16"],
                "resolver_route": "direct",
                "proxies": [{"type": "http", "host": "10.66.2.2", "port": 443}],
            },
            2,
        ),
    ],
    ids=["chain-a", "chain-a-parallel", "chain-b-direct-resolver"],
)
def test_nft_accepts_the_rendered_rules(chain: dict, parallel: int) -> None:
    command = nft_check_or_skip()
    script = script_for(network(chain=chain, tunnel={**LOGIN, "parallel": parallel}))
    rules = config_text(script, "write_capture_nft")
    # what the keeper puts in: the first hops' ADDRESS . PORT
    filled = rules.replace("@TARDIS_HOPS@", "10.66.1.1 . 22, 10.66.1.2 . 2222")
    result = subprocess.run(
        command.split(), input=filled, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    # and the check can fail: an empty hops set is not valid nft
    broken = rules.replace("@TARDIS_HOPS@", "")
    result = subprocess.run(
        command.split(), input=broken, capture_output=True, text=True, check=False
    )
    assert result.returncode != 0


# -- redsocks ---------------------------------------------------------------------


def redsocks_sections(conf: str) -> list[dict[str, str]]:
    sections = re.findall(r"^redsocks \{\n(.*?)^\}", conf, re.MULTILINE | re.DOTALL)
    return [dict(re.findall(r"(\w+) = ([^;]+);", body)) for body in sections]


def test_chain_a_redsocks_speaks_socks5_to_each_connections_d_port() -> None:
    data = network(
        chain={**NS, "proxies": []},
        tunnel={
            **LOGIN,
            "parallel": 3,
            "forwards": [{"host": "10.66.2.9", "port": 3128, "name": "squid"}],
        },
    )
    script = script_for(data)
    sections = redsocks_sections(config_text(script, "write_redsocks_conf"))
    # local ports: [0] SOCKS 1, [1] the squid forward, [2], [3] SOCKS 2 and 3
    assert [(s["local_port"], s["port"], s["type"]) for s in sections] == [
        ("12345", "@TARDIS_PORT_0@", "socks5"),
        ("12346", "@TARDIS_PORT_2@", "socks5"),
        ("12347", "@TARDIS_PORT_3@", "socks5"),
    ]
    assert all(s["ip"] == "127.0.0.1" == s["local_ip"] for s in sections)
    assert setting(script, "CAPTURE_UPSTREAM_TYPE") == "socks5"
    assert setting(script, "CAPTURE_UPSTREAM_PORTS") == (
        "(@TARDIS_PORT_0@ @TARDIS_PORT_2@ @TARDIS_PORT_3@)"
    )


def test_a_fixed_socks_port_is_written_as_its_number() -> None:
    data = network(chain={**NS, "proxies": []}, tunnel={**LOGIN, "socks_port": 1080})
    sections = redsocks_sections(config_text(script_for(data), "write_redsocks_conf"))
    assert [s["port"] for s in sections] == ["1080"]


@pytest.mark.parametrize(
    "proxy_type,redsocks_type",
    [("socks5", "socks5"), ("socks4", "socks4"), ("http", "http-connect")],
)
def test_chain_b_redsocks_speaks_the_proxys_type_to_the_l_forward(
    proxy_type: str, redsocks_type: str
) -> None:
    proxy = {"type": proxy_type, "host": "10.66.2.2", "port": 443}
    # the fallback tool does not matter: with tool none (required) the -L
    # forwards to the proxy are opened all the same
    data = network(
        chain={**NS, "proxies": [proxy], "tool": "none"},
        isolation="required",
        tunnel={**LOGIN, "parallel": 2},
    )
    script = script_for(data)
    sections = redsocks_sections(config_text(script, "write_redsocks_conf"))
    # local ports: [0] SOCKS 1, [1] SOCKS 2, [2], [3] the -L forwards to the proxy
    assert [(s["port"], s["type"]) for s in sections] == [
        ("@TARDIS_PORT_2@", redsocks_type),
        ("@TARDIS_PORT_3@", redsocks_type),
    ]
    assert setting(script, "TUNNEL_PROXY_FORWARD") == "10.66.2.2:443"
    assert setting(script, "CAPTURE_UPSTREAM_TYPE") == redsocks_type


def test_redsocks_accepts_the_rendered_configuration(tmp_path: Path) -> None:
    redsocks = shutil.which("redsocks") or (
        "/usr/sbin/redsocks" if os.access("/usr/sbin/redsocks", os.X_OK) else None
    )
    if redsocks is None:
        pytest.skip("redsocks is not installed")
    proxy = {"type": "http", "host": "10.66.2.2", "port": 443}
    data = network(chain={**NS, "proxies": [proxy]}, tunnel={**LOGIN, "parallel": 2})
    conf = config_text(script_for(data), "write_redsocks_conf")
    path = tmp_path / "redsocks.conf"
    path.write_text(re.sub(r"@TARDIS_PORT_(\d+)@", r"2000\1", conf))
    result = subprocess.run(
        [redsocks, "-t", "-c", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr + result.stdout
    # the check can fail: a placeholder left in is refused
    path.write_text(conf)
    result = subprocess.run(
        [redsocks, "-t", "-c", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0


# -- refused combinations: key, value, fix ----------------------------------------------


@pytest.mark.parametrize(
    "data,expected",
    [
        (
            network(isolation="required"),
            "Site.Network.isolation: got 'required' with chain.capture 'preload'; a "
            "preload chain cannot keep other users off the drone's ports: set "
            "chain.capture: namespace, or isolation: preferred",
        ),
        (
            network(chain={**NS, "tool": "none"}),
            "Site.Network.chain.tool: got 'none' with chain.capture 'namespace' and "
            "isolation 'preferred'; the fallback needs a preload tool: set "
            "chain.tool: proxychains, or isolation: required",
        ),
        (
            network(
                chain={
                    **NS,
                    "proxies": [
                        {"type": "socks5", "host": "10.66.2.2", "port": 443},
                        {"type": "http", "host": "10.66.3.3", "port": 3128},
                    ],
                }
            ),
            "Site.Network.chain.proxies: got 2 proxies with chain.capture "
            "'namespace'; redsocks has one upstream: one proxy after the tunnel "
            "(reached through ssh -L); make further hops ssh hops (tunnel.hops), "
            "or chain.capture: preload",
        ),
        (
            network(chain={**NS, "resolver": "dns.example.org"}),
            "Site.Network.chain.resolver: got 'dns.example.org'; expected an IPv4 "
            "address (names inside resolve through it), or none",
        ),
        (
            network(chain={**NS, "resolver": "2001:db8::53"}),
            "Site.Network.chain.resolver: got '2001:db8::53'; expected an IPv4 "
            "address (names inside resolve through it), or none",
        ),
        (
            network(
                chain={"capture": "namespace"}, pool={"collector": "pool.example:9618"}
            ),
            "Site.Network.pool.collector: got 'pool.example'; inside the namespace "
            "names resolve only through chain.resolver: set it (e.g. the login "
            "node's resolver) or give an address",
        ),
        (
            network(chain={**NS, "resolver_route": "direct"}),
            "Site.Network.chain.resolver_route: got 'direct' with resolver "
            "10.66.2.53 outside chain.localnet; a direct resolver must be in "
            "localnet: add its network to localnet, or set resolver_route: chain",
        ),
        (
            network(chain={**NS, "resolver": None, "resolver_route": "direct"}),
            "Site.Network.chain.resolver_route: got 'direct' without a resolver; "
            "set chain.resolver to a DNS server in localnet, or resolver_route: "
            "chain",
        ),
        (
            network(chain={**NS, "localnet": ["100.64.0.0/10"]}),
            "Site.Network.namespace.cidr: got '100.64.99.0/24', which overlaps "
            "chain.localnet '100.64.0.0/10'; choose another, e.g. a private /24 "
            "outside every localnet range",
        ),
        (
            network(chain={**NS, "localnet": ["100.64.99.0/24"]}),
            "Site.Network.namespace.cidr: got '100.64.99.0/24', which overlaps "
            "chain.localnet '100.64.99.0/24'; choose another, e.g. 100.64.98.0/24",
        ),
        (
            network(chain={**NS, "localnet": ["fd00::/8"]}),
            "Site.Network.chain.localnet[0]: got 'fd00::/8' with capture "
            "'namespace'; inside the namespace only IPv4 stays direct (IPv6 is "
            "dropped): remove it, or set capture: preload",
        ),
        (
            network(chain=NS, tunnel={"hops": [{"host": "2001:db8::1"}]}),
            "Site.Network.tunnel.hops[0].host: got '2001:db8::1' with chain.capture "
            "'namespace'; the namespace's outer link is IPv4 only: give an IPv4 "
            "address or a host name with an IPv4 address",
        ),
        (
            network(
                chain=NS,
                tunnel={"hops": [{"host": "login1", "alternatives": ["2001:db8::2"]}]},
            ),
            "Site.Network.tunnel.hops[0].alternatives[0]: got '2001:db8::2' with "
            "chain.capture 'namespace'; the namespace's outer link is IPv4 only: "
            "give an IPv4 address or a host name with an IPv4 address",
        ),
        (
            network(namespace={"mtu": 9999999}),
            "Site.Network.namespace.mtu: got 9999999; expected a whole number from "
            "1280 to 65520 (65520, the default, is fastest through pasta)",
        ),
        (
            network(namespace={"cidr": "fd00::/64"}),
            "Site.Network.namespace.cidr: got 'fd00::/64'; expected an IPv4 network "
            "such as 100.64.99.0/24 (slirp4netns' network inside the namespace)",
        ),
        (
            network(chain={**NS, "redsocks": "bin/redsocks"}),
            "Site.Network.chain.redsocks: got 'bin/redsocks'; the redsocks program "
            "on the worker:",
        ),
        (
            network(namespace={"outer": "vpnkit"}),
            "Site.Network.namespace.outer: got 'vpnkit'; allowed: one of 'auto', "
            "'pasta', 'slirp4netns'",
        ),
    ],
    ids=[
        "required-with-preload",
        "preferred-without-fallback-tool",
        "two-proxies",
        "resolver-name",
        "resolver-ipv6",
        "pool-name-without-resolver",
        "direct-resolver-outside-localnet",
        "direct-resolver-missing",
        "cidr-overlaps-localnet",
        "cidr-overlaps-localnet-suggests-free",
        "ipv6-localnet",
        "ipv6-first-hop",
        "ipv6-alternative",
        "mtu",
        "cidr-ipv6",
        "redsocks-relative-path",
        "outer-unknown",
    ],
)
def test_bad_combinations_are_refused_naming_key_value_and_fix(
    data: dict[str, Any], expected: str
) -> None:
    problems = problems_of(data)
    assert any(p.startswith(expected) for p in problems), problems


def test_the_same_profiles_with_preload_capture_are_accepted() -> None:
    """The namespace rules apply only to capture namespace."""
    for chain in (
        {"localnet": ["fd00::/8", "100.64.0.0/10"]},
        {
            "proxies": [
                {"type": "socks5", "host": "10.66.2.2", "port": 443},
                {"type": "http", "host": "10.66.3.3", "port": 3128},
            ]
        },
    ):
        load_profile_and_budget(network(chain=chain, pool={"collector": "pool:9618"}))
    load_profile_and_budget(network(tunnel={"hops": [{"host": "2001:db8::1"}]}))


def test_resolver_none_is_the_same_as_no_resolver() -> None:
    profile, _ = load_profile_and_budget(network(chain={**NS, "resolver": "none"}))
    assert capture(profile).resolver is None
    assert (
        setting(script_for(network(chain={**NS, "resolver": "none"})), "CHAIN_RESOLVER")
        == "''"
    )


def test_a_direct_site_refuses_capture_and_warns_about_isolation() -> None:
    (problem,) = problems_of(
        {"mode": "direct", "chain": {"tool": "none", "capture": "namespace"}}
    )
    assert problem.startswith(
        "Site.Network.chain.capture: got 'namespace' with mode 'direct'; capture "
        "sends the payload's connections into a tunnel, and this mode has none"
    )
    profile, _ = load_profile_and_budget({"mode": "direct", "isolation": "required"})
    (warning,) = modes.get("direct").warnings(profile)
    assert "isolation: required with mode direct" in warning[0]
    plain, _ = load_profile_and_budget({"mode": "direct"})
    assert modes.get("direct").warnings(plain) == []


# -- warnings and the keepalive budget -----------------------------------------------


def test_mountrepo_with_namespace_capture_is_warned_about() -> None:
    cvmfs = {"mode": "mountrepo", "repositories": ["cms.cern.ch"]}
    profile, _ = load_profile_and_budget(network(chain=NS, cvmfs=cvmfs))
    found = modes.get("socks").warnings(profile)
    assert [fix for what, fix in found if "mountrepo" in what] == [
        "set cvmfs.mode: cvmfsexec (or auto, which tries cvmfsexec first)"
    ]
    preload, _ = load_profile_and_budget(network(cvmfs=cvmfs))
    assert not any(
        "mountrepo" in what for what, _ in modes.get("socks").warnings(preload)
    )


def test_no_resolver_is_warned_about() -> None:
    profile, _ = load_profile_and_budget(network(chain={"capture": "namespace"}))
    found = modes.get("socks").warnings(profile)
    assert any("without a resolver" in what for what, _ in found)


def test_the_namespace_adds_its_keepalive_legs() -> None:
    _, budget = load_profile_and_budget(
        network(chain=NS, firewall={"idle_timeout": 20}, namespace={"outer": "pasta"})
    )
    legs = dict(budget.legs())
    assert legs["worker namespace -> outer link (pasta)"] == (
        f"carried inside the ssh connection (ServerAliveInterval="
        f"{budget.server_alive_interval}s); pasta's own idle limit is 2 h"
    )
    assert legs["payload -> redsocks -> tunnel"] == (
        "local, inside the namespace: no firewall"
    )
    names = [leg for leg, _ in budget.legs()]
    assert names.index("worker -> login ssh") < names.index(
        "worker namespace -> outer link (pasta)"
    )
    _, preload = load_profile_and_budget(network())
    assert not any("namespace" in leg for leg, _ in preload.legs())


# -- check --probe ----------------------------------------------------------------


def settings_for(data: dict[str, Any]):
    section = {
        "MachineTypes": ["small"],
        "MachineTypeConfiguration": {"small": {"Walltime": "60"}},
        "MachineMetaData": {"small": {"Cores": 1, "Memory": 1, "Disk": 1}},
        "Network": data,
    }
    return load_site_settings("Site", section)


def run_probe(script: str, path: str, wrap: list[str] | None = None) -> dict:
    result = subprocess.run(
        [*(wrap or []), "/bin/sh", "-s"],
        input=script,
        capture_output=True,
        text=True,
        env={"HOME": "/nonexistent", "PATH": path},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return {i.what.split(": ")[0]: i for i in parse_probe(result.stdout)}


def test_probe_lines_only_with_capture_namespace() -> None:
    assert "isolation" not in probe_script(settings_for(network()))
    script = probe_script(settings_for(network(chain=NS)))
    assert "unshare -U -r -n -m sh -c" in script and "mark isolation" in script


def test_probe_without_the_tools_falls_back_when_preferred(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    (empty / "head").symlink_to(shutil.which("head"))
    # /usr/sbin and /sbin are searched too: name a redsocks that is not there
    chain = {**NS, "redsocks": str(tmp_path / "no-redsocks")}
    items = run_probe(probe_script(settings_for(network(chain=chain))), str(empty))
    verdict = items["isolation"]
    assert verdict.ok
    assert verdict.what.startswith("isolation: falls back to preload (proxychains): ")
    assert "cmd:unshare: missing" in verdict.what
    assert "redsocks: " in verdict.what and "not an executable file" in verdict.what
    # preferred: the missing pieces are reasons, not failed items
    assert "cmd:unshare" not in items and "redsocks" not in items


def test_probe_without_the_tools_fails_when_required(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    (empty / "head").symlink_to(shutil.which("head"))
    chain = {**NS, "redsocks": str(tmp_path / "no-redsocks")}
    script = probe_script(settings_for(network(chain=chain, isolation="required")))
    assert "have proxychains4" not in script  # never falls back: not needed
    items = run_probe(script, str(empty))
    assert not items["isolation"].ok
    assert "Network.isolation: preferred" in items["isolation"].fix
    assert not items["cmd:unshare"].ok and "util-linux" in items["cmd:unshare"].fix
    assert not items["redsocks"].ok
    assert "Network.chain.redsocks" in items["redsocks"].fix


def test_probe_names_a_forbidden_user_namespace(tmp_path: Path) -> None:
    """The fallback trick of the design: a user namespace whose own
    max_user_namespaces is 0 forbids further ones to everything inside it."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare")
    wrap = [
        unshare,
        "-Ur",
        "sh",
        "-c",
        'echo 0 >/proc/sys/user/max_user_namespaces && exec "$@"',
        "wrap",
    ]
    trial = subprocess.run([*wrap, "true"], capture_output=True, text=True, check=False)
    if trial.returncode != 0:
        pytest.skip(f"no user namespace here: {trial.stderr.strip()}")
    path = "/usr/local/bin:/usr/bin:/bin"
    script = probe_script(settings_for(network(chain=NS, isolation="required")))
    items = run_probe(script, path, wrap)
    assert not items["userns"].ok
    assert "user namespaces" in items["userns"].fix
    assert not items["isolation"].ok and "userns: " in items["isolation"].what
    assert items["cmd:unshare"].ok
    # the same probe without the limit passes the namespace test (root here,
    # or an unprivileged user where user namespaces are allowed)
    free = run_probe(script, path)
    assert free["userns"].ok, free["userns"].what


def test_netns_part_has_fixes_for_every_item_it_marks() -> None:
    lines = "\n".join(netns.probe_lines(*_ns_profile_and_capture()))
    marked = set(re.findall(r"nsmark (\S+) ", lines)) | {
        f"cmd:{name}" for name in re.findall(r"nshave (\S+)", lines)
    }
    marked |= {"isolation", "cmd:pasta"}
    marked.discard('"cmd:$1"')
    for name in marked:
        assert modes.get("socks").probe_fix(name), name


def _ns_profile_and_capture():
    profile, _ = load_profile_and_budget(
        network(chain=NS, namespace={"outer": "slirp4netns"})
    )
    return profile, capture(profile)


def test_every_new_key_is_documented_with_its_default() -> None:
    text = (
        Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    ).read_text()
    rows = {
        "capture": "`preload`",
        "resolver": "`null`",
        "resolver_route": "`chain`",
        "redsocks": "`null`",
        "isolation": "`preferred`",
        "outer": "`auto`",
        "mtu": "`65520`",
        "cidr": "`100.64.99.0/24`",
        "ready_timeout": "`5`",
    }
    for key, default in rows.items():
        assert re.search(
            rf"^\| `{key}` \| {re.escape(default)} \|", text, re.MULTILINE
        ), key
    assert "## `namespace`" in text
