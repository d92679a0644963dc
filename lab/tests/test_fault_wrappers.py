"""The lab's Slurm fault wrappers and payload fault, run without a lab.

The wrappers are generated bash scripts; here they run against fake
``squeue``/``sbatch`` binaries in a temporary state dir, as the current user
(standing in for the lab's drone user), so every mode is checked on every
machine. tests/lab/test_lab_never_lose.py uses them against the real lab.
"""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from tardis_netadapter_lab import faults
from tardis_netadapter_lab import layout as L

STANDINS = Path(faults.__file__).parent / "standins"

SQUEUE_OUTPUT = (
    "1001|COMPLETED|worker1|None|netlab-old\n"
    "1002|RUNNING|worker1|None|netlab-aaa\n"
    "1003|RUNNING|worker2|None|netlab-bbb\n"
    "1004|PENDING||Resources|netlab-ccc\n"
)


@dataclass(frozen=True)
class TmpLayout(L.LabLayout):
    """A lab layout whose state dir is a temporary directory."""

    root: Path = Path("/nonexistent")

    @property
    def state_dir(self) -> Path:
        return self.root


@pytest.fixture
def lab(tmp_path: Path) -> TmpLayout:
    layout = TmpLayout(name="unit", root=tmp_path / "state")
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    squeue = fakes / "squeue"
    squeue.write_text(
        "#!/bin/sh\n"
        f'echo "$@" > {tmp_path}/squeue.args\n'
        f"printf '%s' '{SQUEUE_OUTPUT}'\n"
    )
    sbatch = fakes / "sbatch"
    sbatch.write_text(
        f"#!/bin/sh\ncat > {tmp_path}/sbatch.stdin\ndate +%s.%N > {tmp_path}/sbatch.at\n"
        "echo 4711\n"
    )
    for fake in (squeue, sbatch):
        fake.chmod(0o755)
    for command in ("squeue", "sbatch"):
        (layout.fault_bin_dir).mkdir(parents=True, exist_ok=True)
        (layout.fault_bin_dir / command).write_text(
            faults.wrapper_text(
                layout, command, str(fakes / command), getpass.getuser()
            )
        )
        (layout.fault_bin_dir / command).chmod(0o755)
    return layout


def run(lab: TmpLayout, *argv: str, stdin: str = "", env: dict | None = None):
    environment = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_ID"}
    environment.update(env or {})
    return subprocess.run(
        [str(lab.fault_bin_dir / argv[0]), *argv[1:]],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        env=environment,
    )


def test_squeue_passes_through_when_off_or_unset(lab: TmpLayout, tmp_path: Path):
    result = run(lab, "squeue", "--me", "--format=%i|%T")
    assert (result.returncode, result.stdout) == (0, SQUEUE_OUTPUT)
    assert (tmp_path / "squeue.args").read_text().strip() == "--me --format=%i|%T"
    faults._write_mode(lab, "squeue", "off")
    assert run(lab, "squeue").stdout == SQUEUE_OUTPUT


def test_squeue_empty_prints_nothing_and_succeeds(lab: TmpLayout):
    faults._write_mode(lab, "squeue", "empty")
    result = run(lab, "squeue", "--me")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_squeue_truncate_cuts_the_last_running_line(lab: TmpLayout):
    faults._write_mode(lab, "squeue", "truncate")
    result = run(lab, "squeue", "--me")
    assert result.returncode == 0
    assert result.stdout == (
        "1001|COMPLETED|worker1|None|netlab-old\n"
        "1002|RUNNING|worker1|None|netlab-aaa\n"
        "1003|RUNN\n"
    )


def test_squeue_lies_neither_inside_jobs_nor_to_other_users(lab: TmpLayout):
    faults._write_mode(lab, "squeue", "empty")
    assert run(lab, "squeue", env={"SLURM_JOB_ID": "7"}).stdout == SQUEUE_OUTPUT
    other = lab.fault_bin_dir / "squeue"
    other.write_text(
        faults.wrapper_text(
            lab, "squeue", str(lab.root.parent / "fakes" / "squeue"), "nobody-else"
        )
    )
    assert run(lab, "squeue").stdout == SQUEUE_OUTPUT


def test_sbatch_submits_then_stalls_before_printing(lab: TmpLayout, tmp_path: Path):
    faults._write_mode(lab, "sbatch", "2")
    started = time.time()
    result = run(lab, "sbatch", "--parsable", stdin="#!/bin/bash\ntrue\n")
    finished = time.time()
    assert (result.returncode, result.stdout) == (0, "4711\n")
    assert (tmp_path / "sbatch.stdin").read_text() == "#!/bin/bash\ntrue\n"
    submitted = float((tmp_path / "sbatch.at").read_text())
    assert submitted - started < 1.5, "the job must exist before the stall"
    assert finished - submitted >= 1.9


def test_sbatch_without_delay_is_the_real_one(lab: TmpLayout):
    started = time.monotonic()
    assert run(lab, "sbatch", stdin="x").stdout == "4711\n"
    faults._write_mode(lab, "sbatch", "0")
    assert run(lab, "sbatch", stdin="x").stdout == "4711\n"
    assert time.monotonic() - started < 5


def test_mode_setters_validate_and_clear(lab: TmpLayout, monkeypatch):
    monkeypatch.setattr(faults, "real_binary", lambda command: f"/usr/bin/{command}")
    with pytest.raises(ValueError, match="squeue mode 'lie'"):
        faults.set_squeue(lab, "lie")
    with pytest.raises(ValueError, match="payload mode"):
        faults.set_payload(lab, "crash")
    with pytest.raises(ValueError, match="sbatch delay"):
        faults.set_sbatch_delay(lab, -1)
    faults.set_squeue(lab, "truncate")
    faults.set_sbatch_delay(lab, 20)
    faults.set_payload(lab, "exit")
    assert faults.squeue_mode(lab) == "truncate"
    assert faults.sbatch_delay(lab) == 20
    assert faults.payload_mode(lab) == "exit"
    text = (lab.fault_bin_dir / "squeue").read_text()
    assert "real=/usr/bin/squeue" in text and "unitdrone" in text
    faults.clear_slurm_faults(lab)
    assert (faults.squeue_mode(lab), faults.sbatch_delay(lab)) == ("off", 0)
    assert faults.payload_mode(lab) == "off"


def test_login_sessions_get_the_wrappers_first_and_lab_run_does_not():
    layout = L.LabLayout(name="unit")
    from tardis_netadapter_lab.configs import sshd_config

    config = sshd_config(
        layout, host_key=Path("/k"), listen="0.0.0.0", port=22, login_node=True
    )
    assert f"PATH={layout.fault_bin_dir}:{layout.bin_dir}:" in config
    assert not layout.default_path().startswith(str(layout.fault_bin_dir))


def test_payload_exits_at_once_when_the_fault_says_so(tmp_path: Path):
    (tmp_path / "payload").write_text("exit\n")
    env = {
        "PATH": os.environ["PATH"],
        "TNA_LAB_FAULTS": str(tmp_path),
        # a collector nobody listens on: without the fault it would retry
        "_CONDOR_COLLECTOR_HOST": "127.0.0.1:9",
        "_CONDOR_TardisDroneUuid": '"netlab-x"',
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(STANDINS / "payload.py"), "-f", "--give-up", "5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "payload exits at once" in result.stderr
    assert time.monotonic() - started < 3
    (tmp_path / "payload").write_text("off\n")
    result = subprocess.run(
        [sys.executable, str(STANDINS / "payload.py"), "-f", "--give-up", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "payload exits at once" not in result.stderr
    assert "giving up" in result.stderr


def test_brake_bound_counts_open_periods_within_the_window():
    from tardis_netadapter_lab.daemon import brake_bound

    # engagements 10, 20, 40, 40 ... s; quota 3 + after 2 - 1 = 4 jobs per period
    assert brake_bound(5, 3, 2, 10, 40) == 4  # the first engagement outlasts it
    assert brake_bound(90, 3, 2, 10, 40) == 16  # 10+20+40 < 90 <= 110
    assert brake_bound(120, 3, 2, 10, 40) == 20
    assert brake_bound(600, 3, 2, 10, 40) == 68
    assert brake_bound(600, 1, 1, 600, 600) == 1
