"""Registration of ``adapter: NetSlurm`` and both pool factory forms, through real cobald/TARDIS."""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest
import yaml
from cobald.composite.weighted import WeightedComposite
from cobald.daemon.core.config import load as cobald_load
from tardis.configuration.configuration import Configuration

import tardis_netadapter
from tardis_netadapter import poolfactory, siteadapter
from tardis_netadapter.siteadapter import NetSlurmAdapter

NETWORK = {
    "tunnel": {"hops": [{"host": "10.66.1.1"}]},
    "pool": {"collector": "10.66.2.1:9618"},
}


def tardis_config(site: str = "NetLab") -> dict:
    return {
        "BatchSystem": {
            "adapter": "FakeBatchSystem",
            "allocation": 1.0,
            "utilisation": 1.0,
            "machine_status": "Available",
        },
        "Sites": [{"name": site, "adapter": "NetSlurm", "quota": 4}],
        site: {
            "executor": "EXECUTOR",
            "MachineTypes": ["small", "large"],
            "MachineTypeConfiguration": {
                "small": {"Walltime": "60", "Partition": "batch"},
                "large": {"Walltime": "120"},
            },
            "MachineMetaData": {
                "small": {"Cores": 1, "Memory": 2, "Disk": 4},
                "large": {"Cores": 4, "Memory": 8, "Disk": 16},
            },
            "Network": NETWORK,
        },
    }


def dump(data: dict, path: Path) -> Path:
    text = yaml.safe_dump(data, sort_keys=False)
    path.write_text(text.replace("'EXECUTOR'", "!TardisShellExecutor {}"))
    return path


@pytest.fixture(autouse=True)
def clean_state(monkeypatch):
    """Fresh Configuration borg, adapter caches and registration for every test."""
    saved = dict(Configuration._shared_state)
    Configuration._shared_state.clear()
    siteadapter.reset_caches()
    monkeypatch.delitem(sys.modules, poolfactory.ALIAS, raising=False)
    sites = importlib.import_module("tardis.adapters.sites")
    monkeypatch.delattr(sites, "netslurm", raising=False)
    rendered: list[tuple] = []

    def render_drone_script(profile, budget, site_name, machine_type, **_):
        rendered.append((site_name, machine_type))
        return "#!/bin/bash\nexec true\n"

    fake = types.ModuleType("tardis_netadapter.render")
    fake.render_drone_script = render_drone_script
    monkeypatch.setitem(sys.modules, "tardis_netadapter.render", fake)
    monkeypatch.setattr(tardis_netadapter, "render", fake, raising=False)
    yield rendered
    Configuration._shared_state.clear()
    Configuration._shared_state.update(saved)
    siteadapter.reset_caches()


def site_adapters(pool: WeightedComposite) -> list:
    """The NetSlurm adapters inside a pool built by TARDIS's factory."""
    found = []
    for standardiser in pool.children:
        for logger in standardiser.target.children:
            factory_pool = logger.target
            found.append(factory_pool.factory.keywords["site_agent"]._site_adapter)
    return found


def test_tardis_cannot_resolve_netslurm_without_registration():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("tardis.adapters.sites.netslurm")


def test_register_is_idempotent_and_resolves_like_tardis():
    poolfactory.register()
    poolfactory.register()
    module = importlib.import_module("tardis.adapters.sites.netslurm")
    assert module.NetSlurmAdapter is NetSlurmAdapter


def test_register_refuses_to_replace_another_module(monkeypatch):
    monkeypatch.setitem(sys.modules, poolfactory.ALIAS, types.ModuleType("other"))
    with pytest.raises(ImportError, match="refusing"):
        poolfactory.register()


def test_create_composite_pool_with_tardis_file(tmp_path, clean_state):
    path = dump(tardis_config(), tmp_path / "tardis.yml")
    pool = poolfactory.create_composite_pool(str(path))
    assert isinstance(pool, WeightedComposite)
    adapters = site_adapters(pool)
    assert [a.machine_type for a in adapters] == ["small", "large"]
    assert all(isinstance(a, NetSlurmAdapter) for a in adapters)
    assert adapters[0].poller is adapters[1].poller
    assert clean_state == [("NetLab", "small"), ("NetLab", "large")]


def cobald_yml(tmp_path: Path, pool_item: str, tardis: dict | None) -> Path:
    head = (
        "pipeline:\n"
        "  - !LinearController\n"
        "    low_utilisation: 0.5\n"
        "    high_allocation: 0.9\n"
        "    rate: 1\n"
        "  - !Standardiser\n"
        "    minimum: 1\n"
        f"  - {pool_item}\n"
    )
    text = head
    if tardis is not None:
        body = yaml.safe_dump({"tardis": tardis}, sort_keys=False)
        text += body.replace("'EXECUTOR'", "!TardisShellExecutor {}")
    path = tmp_path / "cobald.yml"
    path.write_text(text)
    return path


def pipeline_pool(loaded: dict) -> WeightedComposite:
    (pipeline,) = (
        v for k, v in loaded.items() if getattr(k, "section", "") == "pipeline"
    )
    controller = pipeline[0]
    return controller.target.target  # LinearController -> Standardiser -> pool


@pytest.mark.parametrize(
    "pool_item",
    [
        "__type__: tardis_netadapter.poolfactory.create_composite_pool",
        "!NetadapterPoolFactory",
    ],
)
def test_cobald_yml_with_inline_tardis_section(tmp_path, pool_item):
    path = cobald_yml(tmp_path, pool_item, tardis_config())
    with cobald_load(str(path)) as loaded:
        pool = pipeline_pool(loaded)
    assert isinstance(pool, WeightedComposite)
    assert len(site_adapters(pool)) == 2


def test_yaml_tag_with_separate_tardis_file(tmp_path):
    dump(tardis_config(), tmp_path / "tardis.yml")
    path = cobald_yml(
        tmp_path,
        f"!NetadapterPoolFactory {{configuration: {tmp_path / 'tardis.yml'}}}",
        None,
    )
    with cobald_load(str(path)) as loaded:
        pool = pipeline_pool(loaded)
    assert len(site_adapters(pool)) == 2


def test_bad_profile_stops_cobald_at_start_with_the_key(tmp_path):
    config = tardis_config()
    config["NetLab"]["Network"] = {**NETWORK, "tunnel": {"hops": [{"host": "x y"}]}}
    path = cobald_yml(tmp_path, "!NetadapterPoolFactory", config)
    with pytest.raises(Exception) as info, cobald_load(str(path)):
        pass
    assert "NetLab.Network.tunnel.hops[0].host" in str(info.value)
