"""Bringing labs up and down: status, CLI, coexistence, crash cleanup, timing."""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tardis_netadapter_lab import Lab
from tardis_netadapter_lab import layout as L
from tardis_netadapter_lab.netns import is_alive
from tardis_netadapter_lab.topology import lab_namespaces

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tardis_netadapter_lab", "lab", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )


def test_status_describes_a_running_lab(lab: Lab) -> None:
    status = lab.status()
    assert status["up"] is True
    assert set(status["hosts"]) == {
        "login",
        "login2",
        "dmz",
        "nat1",
        "nat2",
        "worker1",
        "worker2",
        "outside",
        "control",
        "epngw",
    }
    assert status["hosts"]["login"]["addresses"] == {
        "site": L.LOGIN_SITE,
        "public": L.LOGIN_PUBLIC,
    }
    assert status["hosts"]["login2"]["addresses"] == {
        "site": L.LOGIN2_SITE,
        "public": L.LOGIN2_PUBLIC,
    }
    assert lab.endpoint("login2-sshd") == (L.LOGIN2_SITE, L.SSH_PORT)
    assert status["hosts"]["dmz"]["addresses"] == {
        "site": L.DMZ_SITE,
        "public": L.DMZ_PUBLIC,
    }
    # the EPN partition's gateway (issue 15): the only host on the partition
    assert status["hosts"]["epngw"]["addresses"] == {
        "partition": L.PARTITION_GATEWAY,
        "public": L.EPNGW_PUBLIC,
    }
    assert status["networks"]["partition"] == L.PARTITION_NET
    assert status["apptainer"] == str(lab.layout.apptainer)
    dead = [name for name, info in status["services"].items() if not info["alive"]]
    assert dead == []
    assert lab.address("worker2") == "10.66.1.12"
    assert lab.endpoint("dante") == (L.OUTSIDE_SOCKS, L.HTTPS_PORT)
    assert status["path"].startswith(status["bin_dir"] + ":")


def test_keys_and_known_hosts_are_in_place(lab: Lab) -> None:
    ssh = lab.status()["ssh"]
    control_key = Path(ssh["control_key"])
    assert stat.S_IMODE(control_key.stat().st_mode) == 0o600
    drone_key = Path(ssh["drone_key"])
    assert drone_key.stat().st_uid == pwd.getpwnam(lab.drone_user).pw_uid
    assert stat.S_IMODE(drone_key.stat().st_mode) == 0o600
    known = Path(ssh["known_hosts"]).read_text()
    assert L.LOGIN_PUBLIC in known and f"[{L.OUTSIDE_GATEWAY}]:443" in known
    assert f"login2,{L.LOGIN2_SITE},{L.LOGIN2_PUBLIC} " in known
    # the other user cannot read the drone's home
    result = lab.run("login", ["ls", str(drone_key.parent)], user=lab.other_user)
    assert result.returncode != 0


def test_cli_status_and_exec(lab: Lab) -> None:
    status = _cli("status", "--name", lab.name, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["services"]["login-sshd"]["alive"] is True
    run = _cli("exec", "--name", lab.name, "--user", lab.drone_user, "login", "--")
    assert run.returncode == 2  # nothing to run
    run = _cli(
        "exec", "--name", lab.name, "--user", lab.drone_user, "login", "--", "id", "-un"
    )
    assert run.returncode == 0 and run.stdout.strip() == lab.drone_user
    missing = _cli("status", "--name", "nosuchlab")
    assert missing.returncode == 1 and "down" in missing.stdout


def test_second_lab_coexists_and_a_crashed_one_is_cleaned(
    lab: Lab, lab_name_factory
) -> None:
    name = lab_name_factory("b")
    started = time.monotonic()
    up = _cli("up", "--name", name, "--workers", "2")
    up_seconds = time.monotonic() - started
    assert up.returncode == 0, up.stderr
    assert up_seconds <= 10, f"lab up took {up_seconds:.1f} s"
    second = Lab.attach(name)
    assert (
        second.run(
            "worker1",
            ["ssh", "-o", "BatchMode=yes", "login", "true"],
            user=second.drone_user,
        ).returncode
        == 0
    )
    assert lab.status()["up"] is True  # the session lab is untouched
    pids = [info["pid"] for info in second.status()["services"].values()]
    # a "crash": the CLI process that started it is gone; only the name is known
    started = time.monotonic()
    down = _cli("down", "--name", name)
    down_seconds = time.monotonic() - started
    assert down.returncode == 0, down.stderr
    assert down_seconds <= 5, f"lab down took {down_seconds:.1f} s"
    assert lab_namespaces(name) == []
    assert not any(is_alive(pid) for pid in pids)
    assert not Path(L.STATE_ROOT / name).exists()
    with pytest.raises(KeyError):
        pwd.getpwnam(f"{name}drone")
    assert _cli("down", "--name", name).returncode == 0  # idempotent


def test_up_refuses_an_existing_lab(lab: Lab) -> None:
    from tardis_netadapter_lab import LabError

    with pytest.raises(LabError):
        Lab(name=lab.name).up()
    assert lab.status()["up"] is True


def test_lab_refuses_unsafe_names() -> None:
    for bad in ("", "Tn", "tn-x", "../x", "averyverylongname"):
        with pytest.raises(ValueError):
            Lab(name=bad)
    assert os.sep not in L.LabLayout(name="ok1").namespace("login")
