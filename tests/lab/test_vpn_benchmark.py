"""The VPN benchmark stays runnable: its short form, on the session's lab.

benchmarks/vpn_throughput.py measures, in one run, direct and every path the
seed 003 table compares: a real `vpn` drone over DTLS and one over TLS only
(iperf3 inside their namespaces), the ocproxy fallback (a vpn drone without
user namespaces; iperf3 on the worker through the drone's preload chain), and
chain b in namespace capture. The fallback row adds about 3.5 s. A
benchmark nothing runs rots (chain_throughput.py did once), so its short form
runs here: one stream, one second per path. Only what makes the table
meaningful is asserted (every path carried bytes, each VPN drone used the
transport its row names, the processes on the path were metered, DTLS went
through dmz as UDP, the fallback's bytes went through its ocproxy): at 1 Gbit/s on this shared 2-core machine, an ordering
of the paths or a share of direct would be noise.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from tardis_netadapter_lab import Lab

pytestmark = [pytest.mark.lab, pytest.mark.slow]

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SHORT_FORM = ["--streams", "1", "--seconds", "1"]  # the docstring's short form


def test_short_form_measures_direct_both_vpn_transports_ocproxy_and_chain_b(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # it imports chain_throughput
    spec = importlib.util.spec_from_file_location(
        "vpn_throughput", BENCHMARKS / "vpn_throughput.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "vpn_throughput", module)  # its dataclasses
    spec.loader.exec_module(module)
    args = module.parse_args(SHORT_FORM)
    assert args.paths == ("direct", "dtls", "tls", "ocproxy", "chain-b")
    assert args.rate == "1gbit" and args.streams == (1,)

    results = module.measure(
        lab, rate=args.rate, streams=args.streams, paths=args.paths, seconds=1
    )

    text = module.table(results, args.rate, args.seconds)
    print(text)  # shown with a failure's report
    paths = module.PATHS
    assert [row.path for row in results.rows] == [
        paths["direct"],
        paths["dtls"],
        paths["tls"],
        paths["ocproxy"],
        paths["chain-b"],
    ], results.rows
    assert all(row.bps > 0 and row.direct_bps > 0 for row in results.rows), text
    _, dtls, tls, ocproxy, chain_b = results.rows
    assert dtls.detail.startswith("dtls via "), dtls
    assert tls.detail.startswith("tls via "), tls
    for row in (dtls, tls):
        for role in ("openconnect", "ocserv", "outer link", "iperf3 client"):
            assert row.cpu.get(role, 0) > 0, (role, row)
    assert dtls.udp_in > 1000, dtls  # the payload's bytes crossed dmz as DTLS
    # the fallback: no namespace, no outer link; ocproxy carried the stream
    assert ocproxy.detail.startswith("dtls via ocproxy 127.0.0.1:"), ocproxy
    for role in ("openconnect", "ocproxy", "ocserv", "iperf3 client"):
        assert ocproxy.cpu.get(role, 0) > 0, (role, ocproxy)
    assert "outer link" not in ocproxy.cpu, ocproxy
    assert ocproxy.udp_in > 1000, ocproxy
    for role in ("ssh (worker)", "sshd (login)", "dante", "outer link"):
        assert chain_b.cpu.get(role, 0) > 0, (role, chain_b)
    assert "openconnect" not in chain_b.cpu
    assert f"| 1 | {paths['dtls']} |" in text
    assert len(results.load) == 2  # before and after, printed with the table
