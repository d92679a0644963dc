"""``tardis-netadapter site-nat``: what it writes, what it refuses, what it says;
and the ``nat`` keys' documentation."""

from __future__ import annotations

import dataclasses
import re
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_sitenat_config import nat_section

from tardis_netadapter import cli
from tardis_netadapter.sitenat.config import Keeper, NatSection, Router, Vrrp
from tardis_netadapter.sitenat.render import InstallPaths, render_router, render_worker

ROOT = Path(__file__).resolve().parents[2]


def write_config(tmp_path: Path, nat: Any = None, mode: str = "nat") -> Path:
    """A TARDIS YAML with the nat site GSI and a socks site Other."""
    network: dict[str, Any] = {"mode": mode}
    if nat is not None:
        network["nat"] = nat
    data = {
        "Sites": [
            {"name": "GSI", "adapter": "NetSlurm", "quota": 2},
            {"name": "Other", "adapter": "NetSlurm", "quota": 1},
        ],
        "GSI": {"Network": network},
        "Other": {"Network": {"mode": "socks"}},
    }
    path = tmp_path / "tardis.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def run(*args: str) -> int:
    return cli.main(["site-nat", *map(str, args)])


def test_writes_worker_and_router_trees_with_modes_and_install_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = write_config(tmp_path, nat_section())
    out = tmp_path / "out"
    assert run(config, "--out", out) == 0
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert "worker/tna-nat-routing" in written
    assert "routers/nat1/keepalived.conf" in written
    assert "routers/nat2/conntrackd.conf" in written
    assert len(written) == 5 + 2 * 9
    mode = stat.S_IMODE((out / "worker" / "tna-nat-routing").stat().st_mode)
    assert mode == 0o755
    assert stat.S_IMODE((out / "worker" / "tna-nat.nft").stat().st_mode) == 0o644
    text = capsys.readouterr().out
    assert "site GSI" in text
    assert f"wrote     {out}/worker/tna-nat-routing" in text
    assert (
        f"install -D -m 0755 {out}/worker/tna-nat-routing /usr/local/sbin/tna-nat-routing"
        in text
    )
    assert (
        "systemctl enable --now tna-nat-routing.service tna-nat-route-keeper.service"
        in text
    )
    assert "Install on the NAT router nat2 (as root):" in text
    # the files say which router they are for
    assert "priority 100" in (out / "routers" / "nat2" / "keepalived.conf").read_text()


def test_rendering_again_is_unchanged_and_a_differing_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = write_config(tmp_path, nat_section())
    out = tmp_path / "out"
    assert run(config, "--out", out) == 0
    assert run(config, "--out", out) == 0
    assert "unchanged" in capsys.readouterr().out
    edited = out / "routers" / "nat1" / "keepalived.conf"
    edited.write_text(edited.read_text() + "# local edit\n")
    config.write_text(config.read_text().replace("priority: 100", "priority: 90"))
    assert run(config, "--out", out) == 2
    err = capsys.readouterr().err
    assert f"{edited}: exists with other contents; not overwritten" in err
    assert "--force" in err
    # nothing was written: the other router's file still has the old priority
    assert "priority 100" in (out / "routers" / "nat2" / "keepalived.conf").read_text()
    assert run(config, "--out", out, "--force") == 0
    assert "# local edit" not in edited.read_text()
    assert "priority 90" in (out / "routers" / "nat2" / "keepalived.conf").read_text()


def test_print_shows_one_file_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = write_config(tmp_path, nat_section())
    assert run(config, "--print", "worker/tna-nat.nft") == 0
    assert capsys.readouterr().out.startswith("#!/usr/sbin/nft -f\n")
    assert run(config, "--print", "worker/nope") == 2
    err = capsys.readouterr().err
    assert "--print: got 'worker/nope'; expected one of: worker/tna-nat-routing" in err
    assert not (tmp_path / "worker").exists()


def test_a_config_without_a_nat_site_says_how_to_get_one(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = write_config(tmp_path, mode="socks")
    assert run(config, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert (
        "no site with Network.mode: nat (sites: GSI (mode socks), Other (mode socks))"
        in err
    )
    assert "set mode: nat and add the nat section" in err
    assert run(config, "--site", "Other", "--out", tmp_path / "out") == 2
    assert "Other.Network.mode: got 'socks'" in capsys.readouterr().err
    assert run(config, "--site", "Nope", "--out", tmp_path / "out") == 2
    assert "no site named 'Nope'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_nat_site_without_its_section_or_with_bad_values_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = write_config(tmp_path)
    assert run(config, "--out", tmp_path / "out") == 2
    assert "GSI.Network.nat: missing; mode nat needs the nat section" in (
        capsys.readouterr().err
    )
    config = write_config(tmp_path, nat_section(gateway="10.66.1.999", mark=0))
    assert run(config, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "GSI.Network.nat.gateway: got '10.66.1.999'" in err
    assert "GSI.Network.nat.mark: got 0" in err


def test_without_routers_only_the_workers_files_are_written(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = write_config(tmp_path, nat_section(routers=[]))
    out = tmp_path / "out"
    assert run(config, "--out", out) == 0
    assert not (out / "routers").exists()
    assert "only the workers' files were rendered" in capsys.readouterr().out


def _documented_keys() -> dict[str, str]:
    """``key -> default`` of the rows in configuration.md's nat section."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    section = text.split("## `nat` (mode `nat`)", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([a-z_.\[\]]+)` \| ([^|]+?) \|", section, re.M))


def _fields(cls: type, prefix: str = "") -> dict[str, Any]:
    found = {}
    for field in dataclasses.fields(cls):
        if field.default_factory in (Keeper, Vrrp):
            nested = field.default_factory
            found.update(_fields(nested, f"{prefix}{field.name}."))
        else:
            found[f"{prefix}{field.name}"] = field.default
    return found


def test_every_nat_key_is_documented_with_its_default() -> None:
    rows = _documented_keys()
    fields = {**_fields(NatSection), **_fields(Router, "routers[].")}
    assert set(rows) == set(fields), set(rows) ^ set(fields)
    for key, default in fields.items():
        documented = rows[key]
        if documented.startswith("required"):
            assert default in ("", ()), key
            continue
        if isinstance(default, tuple):
            default = "[" + ", ".join(map(str, default)) + "]"
        elif isinstance(default, bool):
            default = str(default).lower()
        elif isinstance(default, float) and default.is_integer():
            default = int(default)
        elif default == "":
            default = '""'
        assert documented == f"`{default}`", (key, documented, default)


def test_the_guide_names_every_rendered_file() -> None:
    nat, problems = NatSection.from_mapping(nat_section())
    assert not problems and nat is not None
    guide = (ROOT / "docs" / "site-nat.md").read_text()
    names = {
        *render_worker(nat, InstallPaths()),
        *render_router(nat, "nat1", InstallPaths()),
    }
    for name in names:
        assert f"| `{name}` |" in guide, name
