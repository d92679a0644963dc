"""The site section and the YAML file reader: refused at start, not at run time."""

from __future__ import annotations

from pathlib import Path

import pytest

from tardis_netadapter.schema import ConfigurationError
from tardis_netadapter.siteconfig import Tagged, read_yaml


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
