"""The chain throughput benchmark stays runnable: its short form, on the shared lab.

benchmarks/chain_throughput.py rotted once unnoticed (its dante conf kept the
@TARDIS_PORT_0@ placeholder after per-drone ports landed, and proxychains
refused it), because nothing ran it. Here its short form runs its own
measure() against the session's lab: a real drone, then iperf3 directly and
through every chain asked for. Only the presence of a non-zero result per path
is asserted: at 1 Gbit/s all paths sit at the link's limit, so an ordering of
them would be noise on this shared 2-core machine.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from tardis_netadapter_lab import Lab

pytestmark = [pytest.mark.lab, pytest.mark.slow]

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "chain_throughput.py"
SHORT_FORM = ["--seconds", "1", "--streams", "1"]  # the docstring's short form


def test_short_form_measures_direct_and_every_chain(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = importlib.util.spec_from_file_location("chain_throughput", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "chain_throughput", module)  # its dataclasses
    spec.loader.exec_module(module)
    args = module.parse_args(SHORT_FORM)
    assert args.streams == (1,) and args.chains == ("a", "b")

    rows, cipher = module.measure(
        lab,
        rate=args.rate,
        seconds=args.seconds,
        streams=args.streams,
        chains=args.chains,
    )

    text = module.table(rows, args.rate, args.seconds, cipher)
    print(text)  # shown with a failure's report

    expected = [(1, module.DIRECT)] + [(1, module.CHAINS[key]) for key in "ab"]
    assert [(row.streams, row.path) for row in rows] == expected, rows
    assert all(row.bps > 0 and row.direct_bps > 0 for row in rows), rows
    for _, path in expected:
        assert f"| 1 | {path} |" in text, text
