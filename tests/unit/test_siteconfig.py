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


@pytest.mark.parametrize("site", ["Net,Lab", "NetLab\n", "-NetLab", "Net Lab", "_x"])
def test_a_site_name_that_breaks_sbatch_is_refused_at_start(site: str) -> None:
    (problem,) = site_problems(site_section(None), site=site)
    assert problem.startswith(f"{site}: got {site!r}; a site name must be")
    assert "drone uuid" in problem and "--export and --job-name" in problem


def test_site_names_with_dots_dashes_and_underscores_are_fine() -> None:
    assert load_site_settings("FZJ-jureca_dc.1", site_section(None)).name


def test_a_machine_type_name_is_matched_whole() -> None:
    section = site_section(
        None,
        MachineTypes=["small", "large,2"],
        MachineTypeConfiguration={
            "small": {"Walltime": "60"},
            "large,2": {"Walltime": "60"},
        },
        MachineMetaData={
            "small": {"Cores": 1, "Memory": 1, "Disk": 1},
            "large,2": {"Cores": 1, "Memory": 1, "Disk": 1},
        },
    )
    (problem,) = site_problems(section)
    assert problem.startswith("NetLab.MachineTypes: got 'large,2'; a machine type")


def test_export_environment_defaults_to_nothing_and_keeps_valid_entries() -> None:
    assert load_site_settings("NetLab", site_section(None)).export_environment == ()
    entries = ["SQUID_HOST", "OMP_NUM_THREADS=1", "EMPTY=", "URL=http://x/a=b"]
    settings = load_site_settings(
        "NetLab", site_section(None, export_environment=entries)
    )
    assert settings.export_environment == tuple(entries)


@pytest.mark.parametrize(
    "entry, reason",
    [
        ("1X=1", "NAME must be"),
        ("A-B=1", "NAME must be"),
        ("X\n", "NAME must be"),
        ("A=1,2", "no comma"),
        ("A=x\ny", "newline"),
        ("A=x\x00", "control character"),
        ("A= x", "leading or trailing blanks"),
        ("A=x ", "leading or trailing blanks"),
        ("TardisDroneUuid=x", "set by the adapter"),
        (5, "quote it"),
    ],
)
def test_export_environment_entries_are_refused_with_the_reason(
    entry: object, reason: str
) -> None:
    section = site_section(None, export_environment=["OK", entry])
    (problem,) = site_problems(section)
    assert problem.startswith(f"NetLab.export_environment[1]: got {entry!r};")
    assert reason in problem


def test_export_environment_refuses_a_name_twice_and_a_non_list() -> None:
    (twice,) = site_problems(site_section(None, export_environment=["A=1", "A=2"]))
    assert "A is listed twice" in twice
    (scalar,) = site_problems(site_section(None, export_environment="A=1"))
    assert scalar.startswith("NetLab.export_environment: got 'A=1'; expected a list")
