"""The site section and the YAML file reader: refused at start, not at run time."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakesite import NETWORK, site_section

from tardis_netadapter.schema import ConfigurationError
from tardis_netadapter.siteconfig import (
    SiteSettings,
    Tagged,
    load_site_settings,
    read_yaml,
)


def site_problems(section: dict, site: str = "NetLab") -> list[str]:
    with pytest.raises(ConfigurationError) as caught:
        load_site_settings(site, section)
    return caught.value.problems


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cobald.yml"
    path.write_text(text)
    return path


def test_a_duplicate_key_is_refused_with_its_name_and_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "Network:\n  tunnel:\n    hops:\n      - host: login1\n        port: 22\n"
        "        host: login2\n",
    )
    with pytest.raises(ConfigurationError) as caught:
        read_yaml(path)
    (problem,) = caught.value.problems
    assert problem.startswith(f"{path}:6: duplicate key 'host' (first at line 4)")
    assert "remove one" in problem


def test_a_duplicate_key_inside_a_tagged_node_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "executor: !TardisSSHExecutor {host: a, host: b}\n")
    with pytest.raises(ConfigurationError, match="duplicate key 'host'"):
        read_yaml(path)


def test_merge_keys_may_still_be_overridden(tmp_path: Path) -> None:
    path = write(
        tmp_path, "base: &b {port: 22, user: x}\nhop:\n  <<: *b\n  port: 443\n"
    )
    data = read_yaml(path)
    assert data["hop"] == {"port": 443, "user": "x"}
    tagged = read_yaml(write(tmp_path, "e: !X {a: 1}\n"))["e"]
    assert tagged == Tagged("!X", {"a": 1})


def test_machine_types_are_validated_beside_a_bad_network_profile() -> None:
    section = site_section(
        None,
        Network={**NETWORK, "firewall": {"idle_timeout": 0}},
        MachineMetaData={
            "small": {"Cores": 0, "Memory": 4, "Disk": 10},
            "large": {"Cores": 8, "Memory": 32, "Disk": 100},
            "huge": {"Cores": 1, "Memory": 1, "Disk": 1},
        },
    )
    problems = site_problems(section)
    assert any("NetLab.Network.firewall.idle_timeout: got 0" in p for p in problems)
    assert any(p.startswith("NetLab.MachineMetaData.huge: not in") for p in problems)
    assert any("NetLab.MachineMetaData.small.Cores: got 0" in p for p in problems)


def test_the_sample_section_loads() -> None:
    assert isinstance(load_site_settings("NetLab", site_section(None)), SiteSettings)
