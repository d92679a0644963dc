"""The README's demo, run as an operator would, without a terminal (issue: front door)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def run_demo(name: str, *options: str) -> str:
    """Run the demo as an operator would; its stdout. The directory it keeps
    for the operator (cobald's log and registry) is removed afterwards."""
    result = subprocess.run(
        [sys.executable, "-m", "tardis_netadapter.cli", "demo", *options]
        + ["--name", name],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = result.stdout
    kept = re.search(r"cobald log and registry kept in (/tmp/tna-demo-\S+)", out)
    if kept:
        shutil.rmtree(kept.group(1), ignore_errors=True)
    assert result.returncode == 0, out[-3000:] + result.stderr[-2000:]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    assert f"{name}-" not in listed.stdout
    return out


def test_demo_brings_drones_up_and_heals_a_cut_tunnel(lab_name_factory, lab):
    # `lab` only to require the lab's prerequisites; the demo builds its own
    name = lab_name_factory("d")
    out = run_demo(name, "--minutes", "0.5")
    summary = out[out.index("demo summary") :]
    peak = re.search(r"most drones Available at once : (\d+)", summary)
    assert peak and int(peak.group(1)) >= 1, summary
    assert "result                        : OK" in summary
    assert "FAULT: killed the tunnel ssh" in out
    assert "detected after" in out and "healed: new tunnel" in out
    assert f"lab {name} down" in out


def test_demo_vpn_shows_the_vpn_heal_after_an_ocserv_restart(lab_name_factory, lab):
    # issue 13: one vpn drone (configs/lab-vpn.yml), dmz's ocserv restarted
    name = lab_name_factory("v")
    out = run_demo(name, "--mode", "vpn", "--minutes", "0.3")
    summary = out[out.index("demo summary") :]
    assert "result                        : OK" in summary, summary
    # the live view shows the drone's tun address and transport
    assert re.search(
        r"registered with the pool through the VPN \(pool sees "
        r"10\.66\.2\.12:\d+; tun0 10\.66\.8\.\d+ dtls\)",
        out,
    ), out[-3000:]
    assert re.search(r"10\.66\.8\.\d+ dtls", out)
    assert "FAULT: restarted dmz's ocserv" in out
    back = re.search(
        r"VPN back after ([\d.]+)s: tun0 10\.66\.8\.\d+ over (dtls|tls)", out
    )
    assert back, out[-3000:]
    print(f"demo vpn: VPN back {back.group(1)} s after the restart began")
    assert float(back.group(1)) < 10
    assert "healed: " in out and "through the VPN again" in out


def test_demo_nat_shows_drones_untouched_by_a_failover_and_a_link_flap(
    lab_name_factory, lab
):
    # issue 14: two drones through the keepalived NAT pair (configs/lab-nat.yml)
    name = lab_name_factory("n")
    out = run_demo(name, "--mode", "nat", "--minutes", "0.3")
    summary = out[out.index("demo summary") :]
    assert "result                        : OK" in summary, summary
    assert re.search(r"through the NAT \(pool sees 10\.66\.2\.100:\d+\)", out)
    assert "ok via 10.66.1.250 as 10.66.2.100" in out  # the ROUTE column
    assert "FAULT: stopped keepalived on nat1" in out
    moved = re.search(r"detected after ([\d.]+)s: the VIPs moved to nat2", out)
    assert moved, out[-3000:]
    kept = re.search(r"(\d+) of (\d+) drones still on their first pool connection", out)
    assert kept and kept.group(1) == kept.group(2) != "0", out[-3000:]
    repaired = re.search(r"marked route back ([\d.]+)s after the address", out)
    assert repaired and float(repaired.group(1)) < 5, out[-3000:]
    assert "healed: every drone untouched" in out
    print(
        f"demo nat: VIPs moved after {moved.group(1)} s, route back {repaired.group(1)} s"
    )


def test_demo_container_net_shows_two_numa_drones_and_a_killed_one_freed(
    lab_name_factory, lab
):
    # issue 15: two NUMA-bound drones on worker1 (configs/lab-cnet.yml), each
    # container with its own partition address; one job SIGKILLed half-way
    name = lab_name_factory("c")
    out = run_demo(name, "--mode", "container-net", "--minutes", "0.3")
    summary = out[out.index("demo summary") :]
    assert "result                        : OK" in summary, summary
    seen = set(
        re.findall(
            r"from its container's own address \(pool sees (10\.66\.9\.\d+):", out
        )
    )
    assert len(seen) == 2, out[-3000:]  # two drones, two partition addresses
    assert re.search(r"ok 10\.66\.9\.\d+ \(pool sees 10\.66\.9\.\d+\)", out)  # CNET
    freed = re.search(
        r"healed: (10\.66\.9\.\d+) back in the partition's pool after ([\d.]+)s", out
    )
    assert freed and freed.group(1) in seen, out[-3000:]
    print(
        f"demo container-net: {sorted(seen)}; {freed.group(1)} freed after {freed.group(2)} s"
    )
