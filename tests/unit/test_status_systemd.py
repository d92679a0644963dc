"""contrib/systemd's unit for the COBalD daemon: valid for systemd, and consistent.

``systemd-analyze verify`` checks the unit as systemd would load it (with
the EXAMPLE virtualenv paths pointed at this test's interpreter, since it
also checks that the executables exist). The rest holds what
docs/deployment.md says of it: ``check`` runs before the daemon on the same
configuration, the daemon is COBalD's own command, and the user's home is
the state directory (where the brake's state files go).
"""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "contrib" / "systemd" / "cobald-tardis-netadapter.service"
EXAMPLE_VENV = "/opt/tardis-netadapter/venv/bin/"


def service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def test_check_runs_before_cobald_on_the_same_configuration():
    unit = service()
    check = shlex.split(unit["ExecStartPre"])
    start = shlex.split(unit["ExecStart"])
    assert check[0] == EXAMPLE_VENV + "tardis-netadapter" and check[1] == "check"
    assert start[0] == EXAMPLE_VENV + "cobald"
    assert check[-1] == start[-1] == "/etc/cobald/cobald.yml"
    assert "run" not in start  # COBalD's command takes the configuration itself


def test_the_state_directory_is_the_working_directory():
    unit = service()
    assert unit["WorkingDirectory"] == "/var/lib/" + unit["StateDirectory"]
    assert unit["ProtectSystem"] == "strict"  # only the state directory is writable


def test_the_commands_the_unit_names_exist_in_a_real_install():
    venv = Path(sys.executable).parent
    for name in ("cobald", "tardis-netadapter"):
        assert (venv / name).exists(), name


def test_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (package systemd)")
    text = UNIT.read_text().replace(EXAMPLE_VENV, f"{Path(sys.executable).parent}/")
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert UNIT.name not in result.stderr, result.stderr  # no warning about it
