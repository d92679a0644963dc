"""The connectivity benchmark stays runnable and within its limits at small scale."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "connectivity_scale.py"


def test_benchmark_runs_and_passes(capsys):
    spec = importlib.util.spec_from_file_location("connectivity_scale", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--drones", "200", "--cycles", "2", "--rtt", "0"]) == 0
    out = capsys.readouterr().out
    assert "| executor calls per cycle (max) | 1 | 10 |" in out
    assert "10 never-connected" in out and "160 connected" in out
