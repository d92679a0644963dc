"""The rendered script run for real on this machine: exit codes, log lines, cleanup.

No lab needed: the tunnel's ssh only ever dials 127.0.0.1 (a closed port) and
cvmfsexec, mountrepo and apptainer are tiny fakes in a temporary directory.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from procs import free_port, leftovers

from tardis_netadapter import render
from tardis_netadapter.config import load_profile
from tardis_netadapter.keepalive import derive_budget

UUID = "site-0123456789"
DIRECT: dict[str, Any] = {
    "mode": "direct",
    "chain": {"tool": "none"},
    "monitoring": {"enabled": False},
    "pool": {"collector": "127.0.0.1:9618"},
}
FAILED = re.compile(
    r"tardis-netadapter drone (\S+): stage (\w+) failed: (.*)$", re.MULTILINE
)


def write(path: Path, text: str, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def start(data: dict[str, Any], tmp_path: Path, **env: str) -> subprocess.Popen[str]:
    profile = load_profile(json.loads(json.dumps(data)))
    script = write(
        tmp_path / "drone.sh",
        render.render_drone_script(
            profile,
            derive_budget(profile),
            site_name="Site",
            machine_type="cpu",
            job_id_variable="SLURM_JOB_ID",
        ),
    )
    environment = {
        "PATH": f"{tmp_path}/bin:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
        "TardisDroneUuid": UUID,
        **env,
    }
    return subprocess.Popen(
        ["bash", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=environment,
        start_new_session=True,
    )


def run(data: dict[str, Any], tmp_path: Path, **env: str) -> tuple[int, str, str]:
    proc = start(data, tmp_path, **env)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def failure(err: str) -> tuple[str, str]:
    (match,) = FAILED.findall(err)
    assert match[0] == UUID
    return match[1], match[2]


def work_dirs(tmp_path: Path) -> list[Path]:
    return list(tmp_path.glob("tardis-drone.*"))


def test_payload_success_logs_every_stage_and_leaves_nothing(tmp_path: Path) -> None:
    code, out, err = run({**DIRECT, "payload": {"command": "echo hello"}}, tmp_path)
    assert code == 0, err
    assert out == "hello\n"
    for stage in ("tunnel", "cvmfs", "chain", "container"):
        assert f"drone {UUID}: stage {stage} skipped:" in err
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d{4} ", err)
    assert "stage payload started: echo hello" in err
    assert work_dirs(tmp_path) == [] and leftovers(tmp_path) == []


def test_payload_failure_is_exit_50(tmp_path: Path) -> None:
    code, _, err = run({**DIRECT, "payload": {"command": "sh -c 'exit 3'"}}, tmp_path)
    assert code == 50
    assert failure(err) == ("payload", "exited with status 3")


def test_missing_drone_uuid_is_exit_5(tmp_path: Path) -> None:
    code, _, err = run(DIRECT, tmp_path, TardisDroneUuid="")
    assert code == 5
    assert "TardisDroneUuid is unset" in err
    assert "stage setup failed" in err


def test_bad_cores_is_exit_5(tmp_path: Path) -> None:
    code, _, err = run(DIRECT, tmp_path, TardisDroneCores="8; rm -rf /")
    assert code == 5
    assert "TardisDroneCores" in err


def test_unreachable_login_is_exit_20_and_stops_ssh(tmp_path: Path) -> None:
    closed_port, socks_port = free_port(), free_port()
    data = {
        "tunnel": {
            "hops": [{"host": "127.0.0.1", "port": closed_port}],
            "socks_port": socks_port,
            "ready_timeout": 1.5,
            "identity_file": str(tmp_path / "no-key"),
            "known_hosts": str(tmp_path / "known_hosts"),
        },
        "chain": {"tool": "none"},
        "monitoring": {"enabled": False},
    }
    started = time.monotonic()
    code, _, err = run(data, tmp_path)
    assert code == 20, err
    assert time.monotonic() - started < 10
    stage, reason = failure(err)
    assert stage == "tunnel" and f"127.0.0.1:{closed_port}" in reason
    assert leftovers(tmp_path) == [] and work_dirs(tmp_path) == []


def test_unready_tunnel_with_monitoring_keeps_trying_and_names_the_stage(
    tmp_path: Path,
) -> None:
    """With monitoring the adapter decides: the drone waits, its records say why."""
    closed_port, socks_port = free_port(), free_port()
    data = {
        "tunnel": {
            "hops": [{"host": "127.0.0.1", "port": closed_port}],
            "socks_port": socks_port,
            "ready_timeout": 1.5,
            "identity_file": str(tmp_path / "no-key"),
            "known_hosts": str(tmp_path / "known_hosts"),
        },
        "chain": {"tool": "none"},
        "pool": {"collector": f"127.0.0.1:{closed_port}"},
        "monitoring": {
            "heartbeat_interval": 1,
            "grace": 2,
            "heartbeat_dir": str(tmp_path / "hb"),
        },
    }
    proc = start(data, tmp_path)
    record_file = tmp_path / "hb" / f"{UUID}.json"
    record: dict[str, Any] = {}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        if record_file.exists():
            try:
                record = json.loads(record_file.read_text())
            except ValueError:  # replaced atomically, but be patient
                record = {}
            if record.get("seq", 0) >= 2:
                break
        time.sleep(0.2)
    assert proc.poll() is None, "the drone gave up instead of waiting for the tunnel"
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert record.get("failing_stage") == "tunnel", record
    assert record["stages"]["tunnel"] == "failed" and record["last_ok"] is None
    assert f"SOCKS port 127.0.0.1:{socks_port}" in record["last_error"]
    assert "stage tunnel not ready" in err and "stage tunnel failed" not in err
    assert leftovers(tmp_path) == [] and work_dirs(tmp_path) == []


def test_missing_cvmfs_dist_is_exit_10(tmp_path: Path) -> None:
    data = {**DIRECT, "cvmfs": {"mode": "auto", "repositories": ["cms.cern.ch"]}}
    code, _, err = run(data, tmp_path)
    assert code == 10
    assert failure(err)[0] == "cvmfs" and "not found" in err


FAKE_MOUNTREPO = """#!/bin/sh
# mountrepo fake: "mounts" by making the directory, records the proxy it saw
dist=$(dirname "$0")/dist
grep -h CVMFS_HTTP_PROXY "$dist"/etc/cvmfs/default.d/*.conf > "$dist/seen-proxy"
mkdir -p "$dist/cvmfs/$1" && echo "mounted $1"
"""
FAKE_UMOUNTREPO = """#!/bin/sh
rmdir "$(dirname "$0")/dist/cvmfs/$1"
"""


def test_mountrepo_mounts_with_the_proxy_and_unmounts(tmp_path: Path) -> None:
    tools = tmp_path / "cvmfsexec"
    write(tools / "mountrepo", FAKE_MOUNTREPO)
    write(tools / "umountrepo", FAKE_UMOUNTREPO)
    (tools / "dist").mkdir()
    data = {
        **DIRECT,
        "cvmfs": {
            "mode": "mountrepo",
            "dist": "~/cvmfsexec/dist",
            "repositories": ["cms.cern.ch", "lab.cern.ch"],
            "http_proxy": "http://127.0.0.1:3128",
        },
        "payload": {"command": ["sh", "-c", 'ls "$TARDIS_CVMFS_ROOT"']},
    }
    code, out, err = run(data, tmp_path)
    assert code == 0, err
    assert out.split() == ["cms.cern.ch", "lab.cern.ch"]
    assert (tools / "dist" / "seen-proxy").read_text() == (
        'CVMFS_HTTP_PROXY="http://127.0.0.1:3128"\n'
    )
    assert "stage cvmfs ready after" in err
    assert list((tools / "dist" / "cvmfs").iterdir()) == []  # unmounted


def test_cvmfsexec_that_cannot_mount_is_exit_10(tmp_path: Path) -> None:
    tools = tmp_path / "cvmfsexec"
    write(tools / "cvmfsexec", "#!/bin/sh\necho 'Failed to mount' >&2\nexit 16\n")
    (tools / "dist").mkdir()
    data = {
        **DIRECT,
        "cvmfs": {"mode": "cvmfsexec", "repositories": ["cms.cern.ch"]},
    }
    code, _, err = run(data, tmp_path)
    assert code == 10
    stage, reason = failure(err)
    assert stage == "cvmfs" and "status 16" in reason


CONTAINER = {**DIRECT, "container": {"runtime": "apptainer", "image": "~/img.sif"}}


def test_missing_runtime_is_exit_40(tmp_path: Path) -> None:
    write(tmp_path / "img.sif", "")
    code, _, err = run(CONTAINER, tmp_path)
    assert code == 40
    assert failure(err) == ("container", "apptainer not found in PATH")


def test_runtime_failing_before_the_payload_is_exit_40(tmp_path: Path) -> None:
    write(tmp_path / "img.sif", "")
    write(tmp_path / "bin" / "apptainer", "#!/bin/sh\nexit 255\n")
    code, _, err = run(CONTAINER, tmp_path)
    assert code == 40
    stage, reason = failure(err)
    assert stage == "container" and "status 255 before the payload" in reason


def test_container_passes_env_file_and_runs_the_payload(tmp_path: Path) -> None:
    write(tmp_path / "img.sif", "")
    # a runtime that only reads --env-file and runs the command after IMAGE
    write(
        tmp_path / "bin" / "apptainer",
        "#!/bin/bash\nshift\nwhile [[ $1 == -* ]]; do\n"
        '  [[ $1 == --env-file ]] && set -a && source "$2" && set +a\n'
        "  [[ $1 == --* && $1 != --nv && $1 != --contain ]] && shift\n"
        '  shift\ndone\nshift\nexec "$@"\n',
    )
    data = {
        **CONTAINER,
        "payload": {"command": ["sh", "-c", "echo $_CONDOR_STARTD_NAME"]},
    }
    code, out, err = run(data, tmp_path)
    assert code == 0, err
    assert out == f"{UUID}\n"


def test_sigterm_stops_the_payload_and_cleans_up(tmp_path: Path) -> None:
    pid_file = tmp_path / "payload.pid"
    data = {
        **DIRECT,
        "payload": {"command": ["sh", "-c", f"echo $$ > {pid_file}; exec sleep 300"]},
    }
    proc = start(data, tmp_path)
    deadline = time.monotonic() + 10
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert time.monotonic() < deadline, "payload did not start"
        time.sleep(0.05)
    payload_pid = int(pid_file.read_text())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert "received SIGTERM: stopping" in err
    assert "exiting with status 143" in err
    with pytest.raises(ProcessLookupError):
        os.kill(payload_pid, 0)
    assert leftovers(tmp_path) == [] and work_dirs(tmp_path) == []
