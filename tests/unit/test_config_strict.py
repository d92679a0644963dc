"""Strict validation: whole-value matches, no YAML type coercion, every error at once."""

from __future__ import annotations

import pytest

from tardis_netadapter.config import ConfigurationError, load_profile

LOGIN = {"tunnel": {"hops": [{"host": "10.66.1.1", "user": "drone"}]}}


def problems_of(data: dict, path: str = "Site.Network") -> list[str]:
    with pytest.raises(ConfigurationError) as caught:
        load_profile(data, path=path)
    return caught.value.problems


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
