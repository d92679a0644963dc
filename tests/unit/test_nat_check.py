"""``check --probe``'s job (issue 14): the batch driver's probe job command
(Slurm: srun), and mode nat's worker checks run through it: the drone's own
route check (lib/route.sh), as the drone user, on a "worker".

The worker is a throwaway network namespace made here as root (the same
stand-in as test_route_sh.py, plus SNAT to a public address in the stand-in
router); ``srun`` is a stand-in that drops to user nobody and runs the job's
``/bin/sh -s`` with its stdin, as Slurm would run it on a node.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from test_route_sh import NOBODY, SETUP, WHY_NOT

from tardis_netadapter.batch.options import OptionSet
from tardis_netadapter.batch.slurm import SlurmMachineType, srun_probe_command
from tardis_netadapter.commands.check import job_items, probe_job_script
from tardis_netadapter.siteconfig import load_site_settings

ROOT = Path(__file__).resolve().parents[2]

NAT = {
    "gateway": "10.66.1.250",
    "public_address": "203.0.113.100",
    "users": ["nobody"],
    "site_subnets": ["10.66.1.0/24"],
    "address_echo": "http://203.0.113.5:8080/",
}


def site_section(nat: dict[str, Any] | None = None, mode: str = "nat") -> dict:
    network: dict[str, Any] = {"mode": mode, "pool": {"collector": "203.0.113.5:9618"}}
    if mode == "nat":
        network["nat"] = {**NAT, **(nat or {})}
    else:
        network["tunnel"] = {"hops": [{"host": "127.0.0.1"}]}
    return {
        "MachineTypes": ["cpu"],
        "MachineTypeConfiguration": {
            "cpu": {
                "Walltime": "60",
                "Partition": "main",
                "SubmitOptions": {"long": {"account": "alice", "output": "x-%j.out"}},
            }
        },
        "MachineMetaData": {"cpu": {"Cores": 1, "Memory": 1, "Disk": 1}},
        "Network": network,
    }


# -- the Slurm command ------------------------------------------------------------


def test_srun_probe_command_shape() -> None:
    machine_type = SlurmMachineType(
        Walltime="60",
        Partition="main",
        SubmitOptions=OptionSet(
            short={"q": "normal", "o": "out"},
            long={"account": "alice", "output": "x-%j.out", "requeue": None},
        ),
    )
    assert shlex.split(srun_probe_command(machine_type)) == [
        "srun",
        "--job-name=tna-check",
        "--export=HOME,PATH",
        "--quiet",
        "-N",
        "1",
        "-n",
        "1",
        "-t",
        "2",
        "-p",
        "main",
        "-q",
        "normal",
        "--account=alice",
        "/bin/sh",
        "-s",
    ]


def test_srun_probe_command_quotes_and_uses_the_default_partition() -> None:
    hostile = SlurmMachineType(
        Walltime="60", SubmitOptions=OptionSet(long={"account": "a; rm -rf /"})
    )
    words = shlex.split(srun_probe_command(hostile))
    assert "-p" not in words and "--account=a; rm -rf /" in words


def test_a_driver_without_probe_jobs_says_the_checks_were_skipped() -> None:
    sys.path.insert(0, str(Path(__file__).parent / "toys"))
    from toybatch import ToyDriver

    section = site_section()
    section["MachineTypeConfiguration"] = {"cpu": {"Minutes": 60}}
    settings = load_site_settings("Site", section, ToyDriver())
    (item,) = asyncio.run(job_items(settings, object(), 10))
    assert item.warning and not item.ok
    assert "the Toy driver cannot run a probe job; not checked" in item.what


def test_only_a_mode_with_worker_checks_gets_a_job() -> None:
    assert (
        probe_job_script(load_site_settings("Site", site_section(mode="socks"))) is None
    )
    script = probe_job_script(load_site_settings("Site", site_section()))
    assert script is not None and "nat_route_probe" in script
    # POSIX sh reads it (the job runs /bin/sh -s)
    subprocess.run(["sh", "-n"], input=script, text=True, check=True)


def test_a_job_that_cannot_run_is_one_failed_item(tmp_path: Path, monkeypatch) -> None:
    from tardis.utilities.executors.shellexecutor import ShellExecutor

    srun = tmp_path / "srun"
    srun.write_text(
        "#!/bin/sh\necho 'srun: error: Invalid partition name specified' >&2\nexit 1\n"
    )
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    settings = load_site_settings("Site", site_section())
    (item,) = asyncio.run(job_items(settings, ShellExecutor(), 30))
    assert not item.ok and not item.warning
    assert item.what.startswith("probe job on machine type cpu (srun ")
    assert "Invalid partition name specified" in item.what
    assert "Partition and SubmitOptions" in item.fix


# -- the job for real, on a stand-in worker -------------------------------------------

ROUTER_SNAT = r"""
nsenter -t "$router" -n nft -f - <<'EOF2'
table ip tna_test_nat {
    chain in {
        type nat hook input priority 100; policy accept;
        ip saddr 10.66.1.0/24 snat to 203.0.113.100
    }
}
EOF2
"""

# srun as Slurm runs the job: on the node, as the drone user, stdin forwarded
FAKE_SRUN = f"""#!/bin/sh
printf '%s\\n' "$*" >> "$(dirname "$0")/srun.args"
while [ "$#" -gt 0 ] && [ "$1" != /bin/sh ]; do shift; done
exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups "$@"
"""

RUN_JOB = """
import asyncio, json, sys
from tardis.utilities.executors.shellexecutor import ShellExecutor
from tardis_netadapter.commands.check import job_items
from tardis_netadapter.siteconfig import load_site_settings
settings = load_site_settings("Site", json.loads(sys.argv[1]))
for item in asyncio.run(job_items(settings, ShellExecutor(), 60)):
    print(json.dumps([item.ok, item.what, item.fix]))
"""


@pytest.mark.skipif(bool(WHY_NOT), reason=WHY_NOT or "runs")
def test_the_probe_job_runs_the_drone_route_check_on_a_worker(tmp_path: Path) -> None:
    (tmp_path / "srun").write_text(FAKE_SRUN)
    (tmp_path / "srun").chmod(0o755)
    (tmp_path / "job.py").write_text(textwrap.dedent(RUN_JOB))
    section = shlex.quote(json.dumps(site_section()))
    run_job = (
        f'PATH={shlex.quote(str(tmp_path))}:"$PATH" '
        f"{shlex.quote(sys.executable)} {shlex.quote(str(tmp_path / 'job.py'))} "
        f"{section}\n"
    )
    result = subprocess.run(
        [
            "unshare",
            "-n",
            "bash",
            "-c",
            SETUP
            + ROUTER_SNAT
            + "echo '=== good'\n"
            + run_job
            + "ip rule del fwmark 1 table 201\necho '=== no rule'\n"
            + run_job,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    good_text, _, broken_text = result.stdout.partition("=== no rule\n")
    good = [json.loads(line) for line in good_text.splitlines()[1:]]
    broken = [json.loads(line) for line in broken_text.splitlines()]
    assert [(ok, what.split(": ")[0]) for ok, what, _ in good] == [
        (True, "probe job ran on a worker of machine type cpu"),
        (True, "job-host"),
        (True, "route:user"),
        (True, "route:rule"),
        (True, "route:via"),
        (True, "route:connect"),
        (True, "route:address"),
    ], good
    assert good[1][1].endswith(" as nobody")
    assert good[6][1] == (
        "route:address: address echo http://203.0.113.5:8080/ saw us as 203.0.113.100"
    )
    failed = [(what, fix) for ok, what, fix in broken if not ok]
    assert failed == [
        (
            "route:rule: ip rule: no rule fwmark 0x1 lookup tna_nat (table 201); the "
            "site's routing is not applied (tna-nat-routing apply)",
            failed[0][1],
        )
    ], broken
    assert "tna-nat-routing apply" in failed[0][1]
    args = (tmp_path / "srun.args").read_text().splitlines()
    assert args[0] == (
        "--job-name=tna-check --export=HOME,PATH --quiet -N 1 -n 1 -t 2 -p main "
        "--account=alice /bin/sh -s"
    )
