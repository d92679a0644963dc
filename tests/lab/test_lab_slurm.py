"""Slurm on the lab runs drone jobs on workers; their only way out is a tunnel."""

from __future__ import annotations

import re

import pytest
from tardis_netadapter_lab import Lab
from tardis_netadapter_lab import layout as L
from tardis_netadapter_lab.webroot import FILES, expected_sha256

pytestmark = pytest.mark.lab

# What a drone does at FZJ: its own ssh -D to login, then proxychains.
SOCKS_JOB = f"""#!/bin/bash
port=$((20000 + RANDOM % 20000))
ssh -N -D 127.0.0.1:$port -o BatchMode=yes -o ExitOnForwardFailure=yes login &
tunnel=$!
for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
    sleep 0.1
done
conf=$(mktemp)
printf '%s\\n' strict_chain quiet_mode 'localnet 127.0.0.0/255.0.0.0' \\
    '[ProxyList]' "socks5 127.0.0.1 $port" >"$conf"
url=http://{L.OUTSIDE_HTTP}/files/1M.bin
echo "node=$SLURMD_NODENAME"
if curl -sS -m 5 -o /dev/null "$url"; then echo direct=ok; else echo direct=failed; fi
out=$(mktemp)
proxychains4 -q -f "$conf" curl -sS -m 10 -o "$out" "$url"
echo "proxied_size=$(stat -c %s "$out")"
echo "proxied_sha256=$(sha256sum <"$out" | cut -d' ' -f1)"
rm -f "$out" "$conf"
kill $tunnel
"""

SQUID_JOB = f"""#!/bin/bash
port=$((20000 + RANDOM % 20000))
ssh -N -L 127.0.0.1:$port:127.0.0.1:{L.SQUID_PORT} -o BatchMode=yes \\
    -o ExitOnForwardFailure=yes login &
tunnel=$!
for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
    sleep 0.1
done
curl -sS -m 10 -x "http://127.0.0.1:$port" \\
    http://{L.OUTSIDE_HTTP}/cvmfs/cms.cern.ch/.cvmfspublished
kill $tunnel
"""


def test_sbatch_runs_job_on_a_worker_as_the_drone_user(lab: Lab, slurm_job) -> None:
    _, output = slurm_job(
        'echo "node=$SLURMD_NODENAME user=$(id -un) path=$PATH"; ip -o -4 addr show eth0'
    )
    assert re.search(r"node=worker[12] ", output), output
    assert f"user={lab.drone_user} " in output
    assert f"path={lab.layout.bin_dir}:" in output
    assert "10.66.1.1" in output  # the worker's own 10.66.1.1x address


def test_job_reaches_outside_only_through_ssh_socks_and_proxychains(
    lab: Lab, slurm_job
) -> None:
    _, output = slurm_job(SOCKS_JOB)
    assert "direct=failed" in output, output
    assert f"proxied_size={FILES['1M.bin']}" in output, output
    assert f"proxied_sha256={expected_sha256('1M.bin')}" in output, output


def test_job_reaches_login_squid_through_ssh_forward(lab: Lab, slurm_job) -> None:
    _, output = slurm_job(SQUID_JOB)
    assert "Ncms.cern.ch" in output, output
    assert "S4217" in output, output


def test_adapter_login_from_control_has_slurm_environment(lab: Lab) -> None:
    status = lab.status()
    ssh = [
        "ssh",
        "-i",
        status["ssh"]["control_key"],
        "-o",
        f"UserKnownHostsFile={status['ssh']['known_hosts']}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        f"{lab.drone_user}@{L.LOGIN_PUBLIC}",
        'echo "conf=$SLURM_CONF"; sinfo -h -o %P',
    ]
    result = lab.run("control", ssh, timeout=20)
    assert result.returncode == 0, result.stderr
    assert f"conf={lab.layout.slurm_conf}" in result.stdout
    assert "batch*" in result.stdout


def test_ssh_hop_to_gateway_crosses_the_firewall_on_443(lab: Lab) -> None:
    result = lab.run(
        "worker1",
        ["ssh", "-o", "BatchMode=yes", "-J", "login", "gateway", "echo gateway-ok"],
        user=lab.drone_user,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    assert "gateway-ok" in result.stdout
