"""Strict validation: whole-value matches, no YAML type coercion, every error at once."""

from __future__ import annotations

import pytest
from profiles import problems_of

from tardis_netadapter.config import ConfigurationError, load_profile

LOGIN = {"tunnel": {"hops": [{"host": "10.66.1.1", "user": "drone"}]}}


def hop(**values: object) -> dict:
    return {"tunnel": {"hops": [{"host": "login", **values}]}}


# ``re.match`` with ``$`` accepts a value with one trailing newline; each of
# these passed before and broke a file or command line at run time.
TRAILING_NEWLINE = [
    (hop(host="login\n"), "tunnel.hops[0].host"),
    (hop(host="fe80::1%eth0\n"), "tunnel.hops[0].host"),
    (hop(user="drone\n"), "tunnel.hops[0].user"),
    (
        {**LOGIN, "keepalive": {"condor_knobs": {"UPDATE_INTERVAL\n": 5}}},
        "condor_knobs",
    ),
    (
        {**LOGIN, "cvmfs": {"mode": "cvmfsexec", "repositories": ["cms.cern.ch\n"]}},
        "cvmfs.repositories[0]",
    ),
    (
        {
            "tunnel": {
                **LOGIN["tunnel"],
                "forwards": [{"host": "h", "port": 3128, "name": "squid\n"}],
            }
        },
        "forwards[0].name",
    ),
    ({"tunnel": {**LOGIN["tunnel"], "ciphers": "aes128-ctr\n"}}, "tunnel.ciphers"),
    ({**LOGIN, "chain": {"library": "/lib/libproxychains4.so\n"}}, "chain.library"),
    ({**LOGIN, "cvmfs": {"http_proxy": "http://10.0.0.1:3128\n"}}, "cvmfs.http_proxy"),
    ({**LOGIN, "container": {"binds": ["/data\n"]}}, "container.binds[0]"),
    ({**LOGIN, "payload": {"environment": {"NAME\n": "x"}}}, "payload.environment"),
    ({**LOGIN, "pool": {"collector": "pool.example.org\n"}}, "pool.collector"),
]


@pytest.mark.parametrize("data, key", TRAILING_NEWLINE)
def test_a_trailing_newline_is_refused(data: dict, key: str) -> None:
    assert any(key in problem for problem in problems_of(data)), key


@pytest.mark.parametrize(
    "value, fix",
    [
        (10.5, '"10.5"'),
        (1234, '"1234"'),
        (True, '"on"'),
    ],
)
def test_a_yaml_number_or_boolean_is_not_a_host_name(value: object, fix: str) -> None:
    (problem,) = problems_of(hop(host=value))
    assert problem.startswith(f"Site.Network.tunnel.hops[0].host: got {value!r};")
    assert "quote the value as written" in problem and fix in problem


def test_a_sexagesimal_walltime_is_refused_not_read_as_minutes() -> None:
    """YAML 1.1 reads an unquoted 24:00:00 as the number 86400 (60 days of minutes)."""
    from tardis_netadapter.batch.slurm import SlurmMachineType
    from tardis_netadapter.schema import load

    with pytest.raises(ConfigurationError) as caught:
        load(SlurmMachineType, {"Walltime": 86400}, "Site.MachineTypeConfiguration.a")
    (problem,) = caught.value.problems
    assert "Walltime: got 86400" in problem and '"86400"' in problem


def test_a_nested_error_does_not_hide_the_parents_errors() -> None:
    data = {
        "mode": "direct",  # parent rule: direct needs chain.tool none
        "chain": {"tool": "proxychains"},
        "tunnel": {"hops": [{"host": "login", "port": 70000}]},  # nested rule
        "cvmfs": {"mode": "singcvmfs", "repositories": ["cms.cern.ch"]},
    }
    problems = problems_of(data)
    assert any("tunnel.hops[0].port: got 70000" in p for p in problems)
    assert any(
        p.startswith("Site.Network.chain.tool: got 'proxychains'") for p in problems
    )
    assert any(
        p.startswith("Site.Network.cvmfs.mode: got 'singcvmfs'") for p in problems
    )


def test_a_nested_type_error_does_not_hide_the_parents_errors() -> None:
    data = {
        "tunnel": {"hops": [{"host": "login", "port": "ssh"}]},
        "cvmfs": {"mode": "singcvmfs", "repositories": ["cms.cern.ch"]},
    }
    problems = problems_of(data)
    assert any(
        "hops[0].port: got 'ssh'; expected a whole number" in p for p in problems
    )
    assert any(
        p.startswith("Site.Network.cvmfs.mode: got 'singcvmfs'") for p in problems
    )


def test_the_keepalive_budget_is_checked_beside_other_errors() -> None:
    data = {
        "tunnel": {"hops": [{"host": "login", "port": 0}]},
        "firewall": {"idle_timeout": 20},
        "keepalive": {"server_alive_interval": 25},
    }
    problems = problems_of(data)
    assert any("hops[0].port: got 0" in p for p in problems)
    assert any("keepalive.server_alive_interval: got 25" in p for p in problems)


def test_a_value_that_could_not_be_read_does_not_invent_errors() -> None:
    """A default standing in for an unreadable section is not judged by rules."""
    data = {
        **LOGIN,
        "container": "apptainer",  # not a mapping: container falls back to none
        "cvmfs": {"mode": "singcvmfs", "repositories": ["cms.cern.ch"]},
        "firewall": {"idle_timeout": "30s"},
        "keepalive": {"server_alive_interval": 25},
    }
    problems = problems_of(data)
    assert len(problems) == 2, problems
    assert problems[0].startswith("Site.Network.firewall.idle_timeout: got '30s'")
    assert problems[1].startswith("Site.Network.container: got 'apptainer'")


PATH_KEYS = [
    ("monitoring", "heartbeat_dir"),
    ("cvmfs", "dist"),
    ("chain", "library"),
    ("tunnel", "identity_file"),
    ("tunnel", "known_hosts"),
]


@pytest.mark.parametrize("section, key", PATH_KEYS)
@pytest.mark.parametrize(
    "value, reason",
    [
        ("-delete", "one starting with '-' is read as an option"),
        ("~", "the home or the root itself"),
        ("~/", "the home or the root itself"),
        ("$HOME", "the home or the root itself"),
        ("/", "the home or the root itself"),
        ("hb", "expected an absolute path (/...) or one under the home (~/...)"),
        ("~/a/../b", "normalised path"),
        ("~/a//b", "normalised path"),
        ("/a/b/", "write '/a/b'"),
        ("~/a/./b", "write '~/a/b'"),
        ("~/hb\n", "control characters"),
    ],
)
def test_paths_that_reach_commands_are_plain(
    section: str, key: str, value: str, reason: str
) -> None:
    data = {**LOGIN, section: {**LOGIN.get(section, {}), key: value}}
    (problem,) = problems_of(data)
    assert problem.startswith(f"Site.Network.{section}.{key}: got {value!r};")
    assert reason in problem


def test_plain_paths_are_accepted() -> None:
    profile = load_profile(
        {
            **LOGIN,
            "monitoring": {"heartbeat_dir": "/p/scratch/tna/heartbeats"},
            "cvmfs": {"dist": "~/cvmfsexec/dist"},
        }
    )
    assert profile.monitoring.heartbeat_dir == "/p/scratch/tna/heartbeats"
