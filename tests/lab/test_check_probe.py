"""``check --probe`` against the real lab: from control, over the daemon's own SSH."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from tardis_netadapter_lab import Lab
from tardis_netadapter_lab.daemon import write_config

pytestmark = pytest.mark.lab


def check(lab: Lab, config: Path):
    return lab.run(
        "control",
        [
            sys.executable,
            "-m",
            "tardis_netadapter.cli",
            "check",
            "--probe",
            str(config),
        ],
        timeout=120,
    )


def test_probe_passes_on_the_prepared_lab_and_names_a_missing_dist(
    lab: Lab, tmp_path: Path
):
    config = write_config(lab, tmp_path)
    result = check(lab, config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[ok  ] logged in to the login node" in result.stdout
    assert "[ok  ] outbound:10.66.2.2:443: socks5 proxy" in result.stdout
    assert result.stdout.rstrip().endswith("ready")

    dist = lab.layout.home(lab.drone_user) / "cvmfsexec" / "dist"
    moved = dist.with_name("dist.moved")
    dist.rename(moved)
    try:
        result = check(lab, config)
    finally:
        moved.rename(dist)
    assert result.returncode == 1
    assert f"[FAIL] cvmfs-dist: {dist}" in result.stdout
    assert "fix: build the cvmfsexec dist (makedist)" in result.stdout


def test_probe_reports_an_unreachable_login_node_without_a_traceback(
    lab: Lab, tmp_path: Path
):
    config = write_config(
        lab, tmp_path, replace={"host: 10.66.2.10": "host: 10.66.2.99"}
    )
    result = check(lab, config)
    assert result.returncode == 1
    assert "[FAIL] log in to the login node" in result.stdout
    assert "Traceback" not in result.stderr
