"""Hostile configured values stay data: quoted in bash, quoted in ssh_config.

Every free-text key of the profile gets a value full of shell syntax. The
rendered script is then sourced by bash (which would run any `$(...)` that
escaped its quotes) and its settings, configuration files and payload command
line are compared with the configured values byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tardis_netadapter import render
from tardis_netadapter.config import load_profile
from tardis_netadapter.keepalive import derive_budget
from tardis_netadapter.schema import ConfigurationError

CANARY = "PWNED"
HOSTILE = (
    f"a  b $(touch {CANARY}) `touch {CANARY}` \"dq\" 'sq' ; touch {CANARY} & "
    f"| cat > {CANARY} $HOME ${{HOME}} \\ * ~ %d # end"
)
HOSTILE_PATH = "/" + HOSTILE
HOSTILE_BIND = f"/x$(touch${{IFS}}{CANARY});`id`'\"*"  # binds allow no blanks/colons


def hostile_profile() -> dict:
    return {
        "firewall": {"idle_timeout": 30},
        "tunnel": {
            "hops": [{"host": "login.example.org", "user": "drone"}],
            "identity_file": HOSTILE_PATH,
            "known_hosts": HOSTILE_PATH + ".known",
        },
        "chain": {"library": HOSTILE_PATH + ".so"},
        "cvmfs": {
            "mode": "mountrepo",
            "dist": HOSTILE_PATH,
            "repositories": ["cms.cern.ch"],
        },
        "container": {
            "runtime": "apptainer",
            "image": HOSTILE,
            "binds": [HOSTILE_BIND],
        },
        "pool": {"collector": "pool.example.org:9618"},
        "payload": {
            "command": ["printf", "[%s]\\n", HOSTILE, "", "x\ny"],
            "environment": {"HOSTILE": HOSTILE},
        },
        "monitoring": {"heartbeat_dir": HOSTILE_PATH},
    }


SITE = f"site {HOSTILE}\nrm -rf / #"
MACHINE = f"cpu $(touch {CANARY})\n"


@pytest.fixture()
def script(tmp_path: Path) -> Path:
    profile = load_profile(json.loads(json.dumps(hostile_profile())))
    text = render.render_drone_script(
        profile,
        derive_budget(profile),
        site_name=SITE,
        machine_type=MACHINE,
        job_id_variable="SLURM_JOB_ID",
    )
    path = tmp_path / "drone.sh"
    path.write_text(text)
    return path


def sourced(script: Path, body: str) -> list[str]:
    """Source the script in its directory and return NUL-separated output."""
    result = subprocess.run(
        ["bash", "-c", f'source "$1"\n{body}', "test", str(script)],
        capture_output=True,
        text=True,
        cwd=script.parent,
        env={"PATH": os.environ["PATH"], "HOME": str(script.parent)},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert not list(script.parent.rglob(CANARY)), "a configured value ran as code"
    return result.stdout.split("\0")[:-1]


def test_bash_parses_it(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_header_comments_stay_comments(script: Path) -> None:
    lines = script.read_text().splitlines()
    header = lines[1 : lines.index("set -o pipefail")]
    assert header[0].startswith("# tardis-netadapter drone: site site a  b")
    assert all(line.startswith("#") for line in header)


def test_settings_are_the_configured_values(script: Path) -> None:
    values = sourced(
        script,
        'printf \'%s\\0\' "$SITE_NAME" "$MACHINE_TYPE" "$CVMFS_DIST"'
        ' "$CHAIN_LIBRARY" "$CONTAINER_IMAGE" "${CONTAINER_BINDS[@]}"'
        ' "$MONITORING_HEARTBEAT_DIR" "${PAYLOAD_EXTRA_ENV[@]}" "${PAYLOAD_ARGV[@]}"',
    )
    assert values == [
        SITE,
        MACHINE,
        HOSTILE_PATH,
        HOSTILE_PATH + ".so",
        HOSTILE,
        HOSTILE_BIND,
        HOSTILE_PATH,
        "HOSTILE=" + HOSTILE,
        "printf",
        "[%s]\\n",
        HOSTILE,
        "",
        "x\ny",
    ]


def test_ssh_config_keeps_the_paths_literal(script: Path, tmp_path: Path) -> None:
    (config,) = sourced(script, "write_ssh_config; printf '\\0'")
    if shutil.which("ssh") is None:
        pytest.skip("ssh is not installed")
    (tmp_path / "ssh_config").write_text(config)
    result = subprocess.run(
        ["ssh", "-G", "-F", str(tmp_path / "ssh_config"), "tardis-hop-1"],
        capture_output=True,
        text=True,
        check=True,
    )
    seen = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    # ssh -G shows IdentityFile before %-expansion (%% still doubled) and the
    # known_hosts path after it; ssh itself expands ${VAR} (documented in
    # ssh_config(5)); every other character stays literal
    assert seen["identityfile"] == HOSTILE_PATH.replace("%", "%%")
    expanded = HOSTILE_PATH.replace("${HOME}", os.environ["HOME"])
    assert seen["userknownhostsfile"] == expanded + ".known"


def test_payload_runs_with_the_configured_argv(script: Path) -> None:
    """The whole script in direct mode: printf gets the hostile words as data."""
    profile_data = hostile_profile()
    profile_data.update(mode="direct", chain={"tool": "none"})
    del profile_data["tunnel"]  # a section of mode socks
    profile_data["cvmfs"] = {"mode": "none"}
    profile_data["container"] = {"runtime": "none"}
    profile = load_profile(json.loads(json.dumps(profile_data)))
    text = render.render_drone_script(
        profile,
        derive_budget(profile),
        site_name=SITE,
        machine_type=MACHINE,
        job_id_variable="SLURM_JOB_ID",
    )
    script.write_text(text)
    result = subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        cwd=script.parent,
        env={
            "PATH": os.environ["PATH"],
            "HOME": str(script.parent),
            "TMPDIR": str(script.parent),
            "TardisDroneUuid": "site-0123456789",
        },
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"[{HOSTILE}]\n[]\n[x\ny]\n"
    assert not list(script.parent.rglob(CANARY))


def test_control_characters_in_paths_are_refused() -> None:
    data = hostile_profile()
    data["tunnel"]["identity_file"] = "/keys/id\nProxyCommand touch /tmp/x"
    # refused when the profile is loaded (configured paths: tardis_netadapter/paths.py)
    with pytest.raises(ConfigurationError, match=r"tunnel\.identity_file"):
        load_profile(json.loads(json.dumps(data)))


def test_unsafe_cvmfs_server_url_is_refused() -> None:
    data = hostile_profile()
    data["cvmfs"]["server_url"] = 'http://x/cvmfs/@fqrn@"; $(id)'
    profile = load_profile(json.loads(json.dumps(data)))
    with pytest.raises(ConfigurationError, match=r"cvmfs\.server_url"):
        render.render_drone_script(
            profile,
            derive_budget(profile),
            site_name="s",
            machine_type="m",
            job_id_variable="SLURM_JOB_ID",
        )
