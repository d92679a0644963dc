"""The Network profile: every error names the key path, the value and the fix."""

from __future__ import annotations

from profiles import problems_of

from tardis_netadapter.config import NetworkProfile, load_profile

LOGIN = {"tunnel": {"hops": [{"host": "10.66.1.1", "user": "drone"}]}}


def test_minimal_profile_gets_documented_defaults() -> None:
    profile = load_profile(LOGIN)
    assert isinstance(profile, NetworkProfile)
    assert profile.mode == "socks"
    assert profile.tunnel.socks_port == "auto"
    assert profile.tunnel.port_range == (20000, 32767)
    assert profile.tunnel.strict_host_key_checking is True
    assert profile.chain.tool == "proxychains"
    assert profile.cvmfs.mode == "none"
    assert profile.tunnel.hops[0].destination == "drone@10.66.1.1"


def test_unknown_key_is_an_error_naming_the_path_and_the_allowed_keys() -> None:
    (problem,) = problems_of({**LOGIN, "tunel": {}})
    assert problem.startswith(
        "Site.Network.tunel: got {}; unknown key (did you mean 'tunnel'?); allowed:"
    )
    assert "tunnel" in problem


def test_all_problems_are_reported_at_once() -> None:
    data = {
        "mode": "wireguard",
        "tunnel": {"hops": [{"host": "bad host", "port": 0}], "socks_port": "x"},
    }
    problems = problems_of(data)
    assert any(p.startswith("Site.Network.mode: got 'wireguard'") for p in problems)
    assert any("hops[0].host: got 'bad host'" in p for p in problems)
    assert any("hops[0].port: got 0" in p for p in problems)
    assert any(
        "tunnel.socks_port: got 'x'; expected a whole number" in p for p in problems
    )


def test_socks_mode_needs_a_hop() -> None:
    (problem,) = problems_of({})
    assert "Site.Network.tunnel.hops" in problem and "login node" in problem


def test_direct_mode_refuses_a_chain() -> None:
    # the chain belongs to mode socks: a direct profile without one is whole
    # (issue 10); one that asks for a chain tool is refused
    (problem,) = problems_of({"mode": "direct", "chain": {"tool": "proxychains"}})
    assert "chain.tool" in problem and "set chain.tool: none" in problem
    assert load_profile({"mode": "direct", "chain": {"tool": "none"}}).mode == "direct"


def test_cvmfs_proxy_must_be_numeric() -> None:
    data = {
        **LOGIN,
        "cvmfs": {
            "mode": "mountrepo",
            "repositories": ["cms.cern.ch"],
            "http_proxy": "http://squid.example.org:3128",
        },
    }
    (problem,) = problems_of(data)
    assert "cvmfs.http_proxy" in problem and "numeric address" in problem
    data["cvmfs"]["http_proxy"] = "http://127.0.0.1:3128;DIRECT"
    assert load_profile(data).cvmfs.http_proxy.startswith("http://127.0.0.1")


def test_payload_command_accepts_string_or_list() -> None:
    as_string = load_profile({**LOGIN, "payload": {"command": "run 'a b' c"}})
    as_list = load_profile({**LOGIN, "payload": {"command": ["run", "a b", "c"]}})
    assert as_string.payload.argv == as_list.payload.argv == ("run", "a b", "c")


def test_forward_ports_must_not_collide_with_socks_port() -> None:
    data = {
        "tunnel": {
            "hops": [{"host": "login"}],
            "socks_port": 1080,
            "forwards": [{"listen_port": 1080, "host": "127.0.0.1", "port": 3128}],
        }
    }
    (problem,) = problems_of(data)
    assert "tunnel.forwards" in problem and "must be different" in problem


def test_container_runtime_needs_image() -> None:
    (problem,) = problems_of({**LOGIN, "container": {"runtime": "apptainer"}})
    assert "container.image" in problem


def test_attribute_dict_input_is_accepted() -> None:
    from tardis.utilities.attributedict import AttributeDict

    profile = load_profile(AttributeDict(tunnel=AttributeDict(hops=[{"host": "l"}])))
    assert profile.tunnel.hops[0].host == "l"
