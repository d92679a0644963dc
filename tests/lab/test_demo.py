"""The README's demo, run as an operator would, without a terminal (issue: front door)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def test_demo_brings_drones_up_and_heals_a_cut_tunnel(lab_name_factory, lab):
    # `lab` only to require the lab's prerequisites; the demo builds its own
    name = lab_name_factory("d")
    result = subprocess.run(
        [sys.executable, "-m", "tardis_netadapter.cli", "demo", "--minutes", "0.5"]
        + ["--name", name],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-2000:]
    summary = out[out.index("demo summary") :]
    peak = re.search(r"most drones Available at once : (\d+)", summary)
    assert peak and int(peak.group(1)) >= 1, summary
    assert "result                        : OK" in summary
    assert "FAULT: killed the tunnel ssh" in out
    assert "detected after" in out and "healed: new tunnel" in out
    assert f"lab {name} down" in out
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    assert f"{name}-" not in listed.stdout


def test_demo_vpn_shows_the_vpn_heal_after_an_ocserv_restart(lab_name_factory, lab):
    # issue 13: one vpn drone (configs/lab-vpn.yml), dmz's ocserv restarted
    name = lab_name_factory("v")
    result = subprocess.run(
        [sys.executable, "-m", "tardis_netadapter.cli", "demo", "--mode", "vpn"]
        + ["--minutes", "0.3", "--name", name],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-2000:]
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
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    assert f"{name}-" not in listed.stdout
