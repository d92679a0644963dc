"""Every rendered script passes `bash -n` and `shellcheck -S warning`.

Covers each example site in configs/ and the option combinations the
templates branch on. Without shellcheck the check skips with the reason,
except under CI=true, where a missing shellcheck is a failure.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tardis_netadapter import render
from tardis_netadapter.config import load_profile
from tardis_netadapter.keepalive import derive_budget
from tardis_netadapter.siteconfig import load_site_from_file, read_yaml, tardis_section

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yml"))

BASE: dict[str, Any] = {
    "firewall": {"idle_timeout": 20},
    "tunnel": {
        "hops": [{"host": "10.66.1.1", "user": "drone"}],
        "forwards": [{"listen_port": 3128, "host": "127.0.0.1", "port": 3128}],
    },
    "chain": {"proxies": [{"type": "socks5", "host": "10.66.2.2", "port": 443}]},
    "cvmfs": {
        "mode": "auto",
        "repositories": ["cms.cern.ch"],
        "http_proxy": "http://127.0.0.1:3128",
    },
    "container": {"runtime": "apptainer", "image": "/images/cms.sif"},
    "pool": {"collector": "10.66.2.1:9618"},
}


def variant(**changes: Any) -> dict[str, Any]:
    """BASE with some sections replaced or merged ("chain": {...})."""
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


VARIANTS: dict[str, dict[str, Any]] = {
    "base": variant(),
    "two-hops": variant(
        tunnel={"hops": [{"host": "10.66.1.1"}, {"host": "10.66.2.3", "port": 443}]}
    ),
    "loop-supervisor-fixed-cipher": variant(
        tunnel={"supervisor": "loop", "ciphers": "chacha20-poly1305@openssh.com"}
    ),
    "tsocks": variant(chain={"tool": "tsocks", "proxies": []}),
    "no-chain": variant(chain={"tool": "none", "proxies": []}),
    # a direct site has no tunnel section: it belongs to mode socks
    "direct": {
        key: value
        for key, value in variant(
            mode="direct", chain={"tool": "none", "proxies": []}
        ).items()
        if key != "tunnel"
    },
    "mountrepo": variant(cvmfs={"mode": "mountrepo"}),
    "cvmfsexec": variant(cvmfs={"mode": "cvmfsexec"}),
    "singcvmfs-gpu-contain": variant(
        cvmfs={"mode": "singcvmfs"},
        container={"runtime": "singularity", "gpu": True, "contain": True},
    ),
    "no-cvmfs-no-container": variant(
        cvmfs={"mode": "none", "repositories": []}, container={"runtime": "none"}
    ),
    "keepalive-off": variant(keepalive={"enabled": False}),
    "no-firewall-timeout": variant(firewall={"idle_timeout": None}),
    "monitoring-off": variant(monitoring={"enabled": False}),
    "no-collector": variant(pool={"collector": ""}),
    "payload-env": variant(
        payload={"command": ["glidein_startup.sh", "-v"], "environment": {"A": "1"}}
    ),
    # chain b through the namespace: redsocks -> ssh -L -> dante
    "capture-namespace": variant(
        chain={"capture": "namespace", "resolver": "10.66.2.53"},
        isolation="required",
        namespace={"outer": "slirp4netns"},
    ),
    # chain a, parallel: redsocks -> each connection's -D port
    "capture-namespace-parallel": variant(
        chain={"capture": "namespace", "proxies": [], "localnet": ["10.0.0.0/8"]},
        tunnel={"parallel": 3},
    ),
    # mode vpn: no tunnel or chain section (they belong to socks)
    "vpn": {
        **{k: v for k, v in variant().items() if k not in ("tunnel", "chain")},
        "mode": "vpn",
        "cvmfs": {"mode": "auto", "repositories": ["cms.cern.ch"]},
        "vpn": {
            "server": "10.66.1.3",
            "servercert": "pin-sha256:" + "A" * 43 + "=",
            "user": "drone",
            "password_file": "~/.tardis-netadapter/vpn.password",
            "localnet": ["10.66.1.0/24"],
        },
    },
    "vpn-certificate-tls-required": {
        **{k: v for k, v in variant().items() if k not in ("tunnel", "chain")},
        "mode": "vpn",
        "cvmfs": {"mode": "none", "repositories": []},
        "isolation": "required",
        "vpn": {
            "server": "vpn.dmz.example.edu",
            "verify": False,
            "certificate": "~/.tardis-netadapter/vpn.crt",
            "key": "~/.tardis-netadapter/vpn.key",
            "dtls": False,
            "mtu": 1300,
            "authgroup": "cms drones",
        },
    },
}


def example_sites() -> list[tuple[str, str]]:
    sites = []
    for path in CONFIGS:
        tardis, _ = tardis_section(read_yaml(path), path)
        for entry in tardis.get("Sites") or []:
            if entry.get("adapter") == "NetSlurm":
                sites.append((str(path), entry["name"]))
    return sites


def shellcheck_or_skip() -> str:
    found = shutil.which("shellcheck")
    if found:
        return found
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("CI=true but shellcheck is not installed", pytrace=False)
    pytest.skip("shellcheck is not installed (scripts/install-system-deps)")


def check_script(text: str, tmp_path: Path) -> None:
    path = tmp_path / "drone.sh"
    path.write_text(text)
    syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    lint = subprocess.run(
        [shellcheck_or_skip(), "-S", "warning", "-s", "bash", str(path)],
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_option_combinations(name: str, tmp_path: Path) -> None:
    profile = load_profile(json.loads(json.dumps(VARIANTS[name])))
    text = render.render_drone_script(
        profile,
        derive_budget(profile),
        site_name="Site",
        machine_type="cpu",
        job_id_variable="SLURM_JOB_ID",
    )
    check_script(text, tmp_path)


@pytest.mark.parametrize(("config", "site"), example_sites())
def test_example_configurations(config: str, site: str, tmp_path: Path) -> None:
    settings = load_site_from_file(Path(config), site).settings
    assert settings.machine_types, f"{config}: {site} has no machine types"
    for machine_type in settings.machine_types:
        text = render.render_drone_script(
            settings.profile,
            settings.budget,
            site_name=site,
            machine_type=machine_type,
            job_id_variable="SLURM_JOB_ID",
        )
        check_script(text, tmp_path)


def test_there_are_example_configurations() -> None:
    assert example_sites(), "configs/ has no NetSlurm site to render"
