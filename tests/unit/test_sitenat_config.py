"""The ``Network.nat`` section: every problem names the key, the value and the fix.

``nat_section()`` is the lab-like section the other test_sitenat_* modules
render from.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tardis_netadapter.sitenat.config import NatSection, parse_mark, split_target

PATH = "GSI.Network.nat"


def nat_section(**changes: Any) -> dict[str, Any]:
    """The issue's example section (lab addresses), with ``changes`` applied."""
    data: dict[str, Any] = {
        "gateway": "10.66.1.250",
        "public_address": "10.66.2.100",
        "mark": 1,
        "table": 201,
        "table_name": "tna_nat",
        "users": ["aliprod"],
        "groups": [],
        "protocols": ["tcp", "udp"],
        "site_subnets": ["10.66.1.0/24"],
        "address_echo": "",
        "check_target": "",
        "keeper": {"interval": 2},
        "vrrp": {
            "router_id": 51,
            "advert_interval": 1,
            "health_target": "10.66.2.1:9618",
            "health_interval": 1,
            "fall": 2,
            "rise": 2,
        },
        "conntrack_sync": True,
        "routers": [
            {
                "name": "nat1",
                "site_interface": "site0",
                "site_address": "10.66.1.251",
                "public_interface": "pub0",
                "priority": 150,
            },
            {
                "name": "nat2",
                "site_interface": "site0",
                "site_address": "10.66.1.252",
                "public_interface": "pub0",
                "priority": 100,
            },
        ],
    }
    data = copy.deepcopy(data)
    data.update(changes)
    return data


def load(data: dict[str, Any]) -> NatSection:
    nat, problems = NatSection.from_mapping(data, PATH)
    assert problems == [], problems
    assert nat is not None
    return nat


def problems_of(data: Any) -> list[str]:
    return NatSection.from_mapping(data, PATH)[1]


def one_problem(data: Any) -> str:
    found = problems_of(data)
    assert len(found) == 1, found
    return found[0]


def test_the_example_section_is_valid_and_keeps_its_values() -> None:
    nat = load(nat_section())
    assert nat.gateway == "10.66.1.250" and nat.public_address == "10.66.2.100"
    assert nat.mark_value == 1 and nat.mark_hex == "0x1"
    assert nat.users == ("aliprod",) and nat.protocols == ("tcp", "udp")
    assert nat.keeper.interval == 2.0 and nat.vrrp.router_id == 51
    assert [r.name for r in nat.routers] == ["nat1", "nat2"]
    assert [r.name for r in nat.peers("nat1")] == ["nat2"]
    assert str(nat.gateway_network) == "10.66.1.0/24"


def test_a_hex_mark_is_read_as_a_number() -> None:
    nat = load(nat_section(mark="0x10"))
    assert nat.mark_value == 16 and nat.mark_hex == "0x10"
    assert parse_mark("0xffffffff") == 2**32 - 1
    assert parse_mark(0) is None and parse_mark("0x0") is None
    assert parse_mark(True) is None and parse_mark("1\n") is None


def test_an_empty_section_says_what_is_required() -> None:
    found = problems_of({})
    assert any(
        p.startswith(f"{PATH}.gateway: missing; give the virtual address")
        for p in found
    ), found
    assert any(p.startswith(f"{PATH}.public_address: missing") for p in found)
    assert any(
        p.startswith(f"{PATH}.users: empty, and groups is empty too") for p in found
    )
    assert any(p.startswith(f"{PATH}.site_subnets: empty") for p in found)


@pytest.mark.parametrize(
    ("changes", "key", "value", "fix"),
    [
        ({"gateway": "10.66.1"}, "gateway", "'10.66.1'", "IPv4 address"),
        ({"gateway": "fe80::1"}, "gateway", "'fe80::1'", "IPv4 only"),
        (
            {"public_address": "pool.example"},
            "public_address",
            "'pool.example'",
            "IPv4",
        ),
        ({"mark": 0}, "mark", "0", '"0x1"'),
        ({"mark": "0x1; reboot"}, "mark", "'0x1; reboot'", "hex string"),
        ({"mark": 2**32}, "mark", str(2**32), "1..4294967295"),
        ({"table": 254}, "table", "254", "kernel's own"),
        ({"table": 0}, "table", "0", "1..252 or 256"),
        ({"table_name": "main"}, "table_name", "'main'", "not main"),
        ({"table_name": "Tna nat"}, "table_name", "'Tna nat'", "lower-case letter"),
        ({"users": ["ali prod"]}, "users[0]", "'ali prod'", "user name"),
        ({"users": ['"x"']}, "users[0]", "'\"x\"'", "user name"),
        ({"groups": ["-g"]}, "groups[0]", "'-g'", "not starting with '-'"),
        ({"protocols": []}, "protocols", "empty", "[tcp, udp]"),
        ({"protocols": ["tcp", "tcp"]}, "protocols", "['tcp', 'tcp']", "once"),
        (
            {"site_subnets": ["10.66.1.1/24"]},
            "site_subnets[0]",
            "'10.66.1.1/24'",
            "host bits",
        ),
        ({"address_echo": "ftp://x/"}, "address_echo", "'ftp://x/'", "http://HOST"),
        ({"check_target": "10.66.2.1"}, "check_target", "'10.66.2.1'", "HOST:PORT"),
        ({"check_target": "pool:99999"}, "check_target", "'pool:99999'", "1..65535"),
        ({"keeper": {"interval": 0}}, "keeper.interval", "0", "0.1..3600"),
    ],
)
def test_each_bad_value_names_key_value_and_fix(
    changes: dict[str, Any], key: str, value: str, fix: str
) -> None:
    problem = one_problem(nat_section(**changes))
    assert problem.startswith(f"{PATH}.{key}: "), problem
    assert value in problem and fix in problem, problem


def test_the_gateway_must_be_on_a_site_subnet() -> None:
    problem = one_problem(nat_section(gateway="10.77.0.1"))
    assert problem.startswith(f"{PATH}.gateway: got '10.77.0.1', which is in none")
    assert "add that network to site_subnets" in problem


def test_the_public_address_is_not_on_the_site_network() -> None:
    problem = one_problem(nat_section(public_address="10.66.1.100"))
    assert problem.startswith(f"{PATH}.public_address: got '10.66.1.100', inside")


def test_unknown_keys_and_wrong_types_are_named() -> None:
    found = problems_of(nat_section(gatway="x", table="201", conntrack_sync="yes"))
    assert any(p.startswith(f"{PATH}.gatway: got 'x'; unknown key") for p in found)
    assert any(
        p.startswith(f"{PATH}.table: got '201'; expected a whole number") for p in found
    )
    assert any(p.startswith(f"{PATH}.conntrack_sync: got 'yes'") for p in found)


def test_a_protocol_outside_the_list_is_refused() -> None:
    problem = one_problem(nat_section(protocols=["tcp", "gre"]))
    assert problem.startswith(f"{PATH}.protocols[1]: got 'gre'; allowed: one of")


def router(**changes: Any) -> dict[str, Any]:
    data = nat_section()["routers"][0]
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("changes", "key", "fix"),
    [
        ({"name": "Nat1"}, "name", "lower-case letter"),
        ({"name": "nat1;"}, "name", "lower-case letter"),
        ({"site_interface": "site 0"}, "site_interface", "interface name"),
        ({"public_interface": "a" * 16}, "public_interface", "at most 15"),
        (
            {"public_interface": "site0"},
            "public_interface",
            "the same as site_interface",
        ),
        ({"site_address": "10.66.1.251/24"}, "site_address", "IPv4 address"),
        ({"site_address": "10.66.1.250"}, "site_address", "a virtual address"),
        ({"site_address": "10.99.1.1"}, "site_address", "in none of site_subnets"),
        ({"priority": 255}, "priority", "1..254"),
    ],
)
def test_each_bad_router_value_is_named(
    changes: dict[str, Any], key: str, fix: str
) -> None:
    routers = [router(**changes), nat_section()["routers"][1]]
    problem = one_problem(nat_section(routers=routers))
    assert problem.startswith(f"{PATH}.routers[0].{key}: got "), problem
    assert fix in problem, problem


def test_routers_need_distinct_names_addresses_and_priorities() -> None:
    second = router(name="nat1", site_address="10.66.1.251", priority=150)
    found = problems_of(nat_section(routers=[router(), second]))
    assert sorted(p.split(":")[0] for p in found) == [
        f"{PATH}.routers[1].name",
        f"{PATH}.routers[1].priority",
        f"{PATH}.routers[1].site_address",
    ], found
    assert all("distinct" in p for p in found)


def test_one_router_or_four_are_refused_none_is_allowed() -> None:
    assert "expected two or three" in one_problem(nat_section(routers=[router()]))
    four = [
        router(name=f"nat{i}", site_address=f"10.66.1.{240 + i}", priority=100 + i)
        for i in range(4)
    ]
    assert "got 4 router(s)" in one_problem(nat_section(routers=four))
    assert load(nat_section(routers=[])).routers == ()


def test_routers_need_a_health_target() -> None:
    vrrp = dict(nat_section()["vrrp"], health_target="")
    problem = one_problem(nat_section(vrrp=vrrp))
    assert problem.startswith(f"{PATH}.vrrp.health_target: missing; give HOST:PORT")
    # without routers the site runs its own NAT: no health check needed
    assert load(nat_section(vrrp=vrrp, routers=[])).vrrp.health_target == ""


@pytest.mark.parametrize(
    ("key", "value", "fix"),
    [
        ("router_id", 0, "1..255"),
        ("advert_interval", 0, "1..255"),
        ("health_interval", 0, "1..3600"),
        ("fall", 0, "1..100"),
        ("health_target", "10.66.2.1:0", "HOST:PORT"),
    ],
)
def test_each_bad_vrrp_value_is_named(key: str, value: Any, fix: str) -> None:
    vrrp = dict(nat_section()["vrrp"], **{key: value})
    problem = one_problem(nat_section(vrrp=vrrp))
    assert problem.startswith(f"{PATH}.vrrp.{key}: got {value!r}"), problem
    assert fix in problem


def test_split_target() -> None:
    assert split_target("10.66.2.1:9618") == ("10.66.2.1", 9618)
    assert split_target("pool.example.org:9618") == ("pool.example.org", 9618)
    for bad in ("10.66.2.1", ":9618", "a b:1", "x:1\n", "[::1]:9618", "h:-1"):
        assert split_target(bad) is None, bad


def test_numeric_ids_are_accepted_as_users_and_groups() -> None:
    nat = load(nat_section(users=[], groups=[1000, "alice"]))
    assert nat.groups == (1000, "alice")
