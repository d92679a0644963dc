"""The adapter-scale benchmark stays runnable, and its target holds, at small scale."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from tardis.configuration.configuration import Configuration

from tardis_netadapter import siteadapter

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "adapter_scale.py"
SMALL = ["--drones", "300", "--cycles", "2", "--latency", "0.01"]


def run_benchmark(arguments: list[str], capsys, monkeypatch) -> tuple[int, str]:
    """The benchmark's main() with ``arguments``; its exit code and output."""
    spec = importlib.util.spec_from_file_location("adapter_scale", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "adapter_scale", module)  # for its dataclasses
    spec.loader.exec_module(module)
    saved = dict(Configuration._shared_state)
    try:
        code = module.main(arguments)
    finally:
        Configuration._shared_state.clear()
        Configuration._shared_state.update(saved)
        siteadapter.reset_caches()
    return code, capsys.readouterr().out


def test_benchmark_runs_and_meets_its_target(capsys, monkeypatch):
    code, out = run_benchmark(SMALL, capsys, monkeypatch)
    # one listing per cycle for every drone, where stock asks per 100 jobs
    assert "| 300 | NetSlurm | 1 |" in out
    assert "| 300 | NetGridEngine | 1 |" in out
    assert "| 300 | TARDIS SlurmAdapter | 3 |" in out
    assert code == 0, out


def test_adapters_picks_the_rows(capsys, monkeypatch):
    code, out = run_benchmark(
        SMALL + ["--adapters", "stock", "netgridengine"], capsys, monkeypatch
    )
    # one qstat per cycle for 300 drones (each drone's status checked inside)
    assert "| 300 | NetGridEngine | 1 |" in out
    assert "| 300 | TARDIS SlurmAdapter | 3 |" in out
    assert "NetSlurm |" not in out
    assert code == 0, out
