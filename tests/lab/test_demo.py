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
