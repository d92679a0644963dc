"""The adapter-scale benchmark's Grid Engine rows stay runnable (its short form, as in CI)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from tardis.configuration.configuration import Configuration

from tardis_netadapter import siteadapter

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "adapter_scale.py"


def test_grid_engine_rows_list_once_per_cycle(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("adapter_scale", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "adapter_scale", module)  # for its dataclasses
    spec.loader.exec_module(module)
    saved = dict(Configuration._shared_state)
    try:
        code = module.main(
            ["--drones", "300", "--cycles", "2", "--latency", "0.01"]
            + ["--adapters", "stock", "netgridengine"]
        )
    finally:
        Configuration._shared_state.clear()
        Configuration._shared_state.update(saved)
        siteadapter.reset_caches()
    out = capsys.readouterr().out
    # one qstat per cycle for 300 drones (each drone's status checked inside)
    assert "| 300 | NetGridEngine | 1 |" in out
    assert "| 300 | TARDIS SlurmAdapter | 3 |" in out
    assert "NetSlurm |" not in out
    assert code == 0, out
