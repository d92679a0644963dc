"""The chain benchmark stays runnable: its short form, on the shared lab.

benchmarks/chain_throughput.py rotted once unnoticed (its dante conf kept the
@TARDIS_PORT_0@ placeholder after per-drone ports landed, and proxychains
refused it), because nothing ran it. Here its short form runs its own
measure() against the session's lab: one real drone per chain (a, b, c),
each with two parallel ssh connections, and chain b once more with
`chain.capture: namespace` (issue 12: iperf3 and the short-connection client
run inside the drone's private namespace, as the drone user, without
LD_PRELOAD), then iperf3 directly and through every chain, the CPU of the
processes on the path (for the namespace also redsocks and pasta), and a
few short connections. Only the presence of a non-zero result per path is asserted:
at 1 Gbit/s all paths sit at the link's limit, so an ordering of them would
be noise on this shared 2-core machine.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from tardis_netadapter_lab import Lab

pytestmark = [pytest.mark.lab, pytest.mark.slow]

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "chain_throughput.py"
# the docstring's short form
SHORT_FORM = [
    "--rates",
    "1gbit",
    "--streams",
    "1",
    "--parallel",
    "2",
    "--seconds",
    "1",
    "--short",
    "20",
]


def test_short_form_measures_direct_every_chain_and_namespace_capture(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = importlib.util.spec_from_file_location("chain_throughput", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "chain_throughput", module)  # its dataclasses
    spec.loader.exec_module(module)
    args = module.parse_args(SHORT_FORM)
    assert args.chains == ("a", "b", "c") and args.parallel == (2,)
    assert args.capture == ("preload", "namespace") and args.ns_chains == ("b",)

    results = module.measure(
        lab,
        rates=args.rates,
        seconds=args.seconds,
        streams=args.streams,
        chains=args.chains,
        parallel=args.parallel,
        short=args.short,
        captures=args.capture,
        ns_chains=args.ns_chains,
    )

    text = module.table(results, args.seconds, args.short)
    print(text)  # shown with a failure's report

    chain = module.CHAINS
    # namespace rows name the outer link the drone chose (auto: slirp4netns
    # where installed), e.g. "namespace (slirp4netns)"
    ns = next(r.capture for r in results.rows if r.capture.startswith("namespace"))
    tool = ns[ns.find("(") + 1 : -1] if "(" in ns else "auto"
    direct_ns = module.direct_ns(tool)
    paths = [
        (module.DIRECT, "-"),
        (chain["a"], "preload"),
        (chain["b"], "preload"),
        (chain["b"], ns),
        (direct_ns, ns),
        (chain["c"], "preload"),
    ]
    assert [(row.path, row.capture) for row in results.rows] == paths, results.rows
    assert all(row.bps > 0 and row.direct_bps > 0 for row in results.rows)
    rows = dict(zip(paths, results.rows))
    for key, row in rows.items():
        if key[0] in (module.DIRECT, direct_ns):
            continue
        # the drone's own ssh and the login sshd carried the bytes
        assert row.cpu.get("ssh (worker)", 0) > 0, row
        assert row.cpu.get("sshd (login)", 0) > 0, row
        assert row.parallel == 2, row
    assert rows[chain["b"], "preload"].cpu.get("dante", 0) > 0  # b through dante
    assert rows[chain["c"], "preload"].cpu.get("sshd (gateway)", 0) > 0
    # namespace capture: redsocks took the connection, pasta carried the
    # tunnel out of the namespace (and, alone, the direct row from inside)
    ns_row = rows[chain["b"], ns]
    assert ns_row.cpu.get("redsocks", 0) > 0, ns_row
    assert ns_row.cpu.get("pasta", 0) > 0, ns_row
    assert ns_row.cpu.get("dante", 0) > 0, ns_row
    assert rows[direct_ns, ns].cpu.get("pasta", 0) > 0  # the outer link's column
    assert "redsocks" not in rows[chain["b"], "preload"].cpu
    assert [(item.path, item.capture) for item in results.shorts] == [
        *paths[:5],
        paths[5],
        (module.DANTE_ALONE, "preload"),
    ]
    assert all(item.median_ms > 0 for item in results.shorts)
    for path, capture in paths[1:]:
        assert f"| 1gbit | 1 | {path} | {capture} | 2 |" in text, text
