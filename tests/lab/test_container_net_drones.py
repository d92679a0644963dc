"""Drones in mode `container-net` (issue 15, ALICE EPN) on the lab's partition.

Each drone script is rendered by the product from the lab's profile (mode
container-net, the site-local setuid apptainer, `gpu: amd`) and submitted
with the sbatch words the Slurm driver renders for an EPN machine type
(`Gpus: 1`, `GpuType`, `NumaBinding: socket`), both on worker1, as the
EPNs run two drones per node. Checked from inside each job and container:
its own partition address (10.66.9.x) from CNI, its own bound CPU and GPU;
the pool sees the container's address; the worker itself has none. Then
the ends: scancel and SIGKILL of a job leave no lease, link or namespace,
and a profile naming a network the site's apptainer.conf does not allow
fails in stage container-net with exit 45 and apptainer's own words.
Last, `check --probe` reports the site's apptainer through a real job.
"""

from __future__ import annotations

import os
import re
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
from tardis_netadapter_lab import Lab, configs
from tardis_netadapter_lab import layout as L
from tardis_netadapter_lab.configs import LAB_GPU_TYPE
from tardis_netadapter_lab.daemon import LAB_CNET_CONFIG, write_config
from test_chain_support import Drone, heartbeat, pool_records, wait_gone

from tardis_netadapter.batch.slurm import SlurmMachineType, resource_words
from tardis_netadapter.machine import MachineMetaData

pytestmark = [pytest.mark.lab, pytest.mark.slow]

NODE = "worker1"
PARTITION_PREFIX = L.PARTITION_NET.rsplit(".", 1)[0] + "."  # "10.66.9."
#: what the payload (run inside the container) reports before it starts the
#: pool stand-in: its CPUs, its GPUs and the container's addresses
REPORT = (
    'printf "cpus=%s\\ngpus=%s\\nrocr=%s\\nrocm=%s\\n" '
    '"$(grep Cpus_allowed_list /proc/self/status | cut -f2)" '
    '"${SLURM_JOB_GPUS:-}" "${ROCR_VISIBLE_DEVICES:-}" "${APPTAINER_ROCM:-}"; '
    'printf "addrs=%s\\n" "$(ip -4 -o addr show | grep -v " lo " | tr -s " " | cut -d" " -f4 | tr "\\n" " ")"; '
    "exec condor_master -f"
)


def profile(lab: Lab, network: str = L.PARTITION_NETWORK) -> dict:
    net = configs.container_net_section(lab.layout)
    net["network"] = network
    return {
        "mode": "container-net",
        "firewall": {"idle_timeout": 30},
        "container": configs.container_section(lab.layout, gpu="amd"),
        "container_net": net,
        "cvmfs": {"mode": "none"},
        "pool": {"collector": f"{L.OUTSIDE_HTTP}:{L.COLLECTOR_PORT}", "ccb": True},
        "payload": {"command": ["bash", "-c", REPORT]},
        "monitoring": {"heartbeat_interval": 5},
    }


def epn_words() -> tuple[str, ...]:
    """The sbatch words of an EPN machine type, as the driver renders them."""
    kind = SlurmMachineType(
        Walltime="10",
        Partition="batch",
        Gpus=1,
        GpuType=LAB_GPU_TYPE,
        NumaBinding="socket",
    )
    meta = MachineMetaData(Cores=1, Memory=0.1, Disk=1)
    return ("-w", NODE, *resource_words(kind, meta))


@pytest.fixture
def cleanup(lab: Lab) -> Iterator[list[Drone]]:
    drones: list[Drone] = []
    yield drones
    for drone in drones:
        drone.cancel()


def leases(lab: Lab) -> list[str]:
    return sorted(lab.partition_leases())


def field(output: str, name: str) -> str:
    match = re.search(rf"^{name}=(\S*)", output, re.MULTILINE)
    return match.group(1) if match else ""


def test_two_numa_drones_on_one_worker_each_with_its_own_address_cpu_and_gpu(
    lab: Lab, cleanup: list[Drone]
) -> None:
    before = leases(lab)
    drones = [
        Drone(
            lab,
            f"cnet-{uuid.uuid4().hex[:8]}",
            profile(lab),
            sbatch_options=epn_words(),
        )
        for _ in range(2)
    ]
    cleanup += drones
    for drone in drones:
        drone.submit()
    records = {drone.uuid: drone.wait_registered(timeout=90) for drone in drones}
    seen = {}
    for drone in drones:
        output = drone.output
        assert drone.node() == NODE, output
        addrs = field(output, "addrs")
        assert addrs.startswith(PARTITION_PREFIX), output
        remote = records[drone.uuid]["remote"].rsplit(":", 1)[0]
        assert remote == addrs.split("/")[0], (remote, output)  # the pool sees it
        seen[drone.uuid] = (remote, field(output, "cpus"), field(output, "gpus"))
        assert field(output, "rocm") == "1", output  # gpu: amd -> --rocm
    (a, b) = seen.values()
    print(f"two EPN drones on {NODE}: {seen}")
    assert a[0] != b[0] and a[1] != b[1] and a[2] != b[2], seen
    assert len(leases(lab)) == len(before) + 2
    # the heartbeats: stage container-net ok, with the payload container's
    # address (the first records may still carry the stage's probe container)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        beats = [heartbeat(lab, d.uuid).get("container_net") or {} for d in drones]
        if {beat.get("address") for beat in beats} == {a[0], b[0]}:
            break
        time.sleep(0.5)
    assert all(beat.get("ok") for beat in beats), beats
    assert {beat.get("address") for beat in beats} == {a[0], b[0]}, beats
    assert {beat.get("seen") for beat in beats} == {a[0], b[0]}, beats
    # the worker itself is not on the partition
    host = lab.run(NODE, ["ip", "-4", "-o", "addr", "show"]).stdout
    assert PARTITION_PREFIX not in host, host

    # ends: scancel of one, SIGKILL of the other's job
    drones[0].cancel()
    lab.run(
        "login",
        ["scancel", "--signal=KILL", "--full", drones[1].job_id],
        user=lab.drone_user,
    )
    wait_gone(drones[1])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and leases(lab) != before:
        time.sleep(0.3)
    assert leases(lab) == before, (leases(lab), before)
    assert not lab.container_netns(), lab.container_netns()
    assert pool_records(lab)  # the pool is still there for the next test


def test_a_network_the_site_does_not_allow_fails_in_stage_container_net(
    lab: Lab, cleanup: list[Drone]
) -> None:
    before = leases(lab)
    drone = Drone(
        lab,
        f"cnet-deny-{uuid.uuid4().hex[:6]}",
        profile(lab, network="not-allowed"),
        sbatch_options=("-w", NODE),
    )
    cleanup.append(drone)
    drone.submit()
    wait_gone(drone, 60)
    output = drone.output
    line = re.search(r"stage container-net failed: .*", output)
    assert line and "FATAL" in line.group(0) or "not permitted" in output, output
    assert "exiting with status 45" in output, output
    assert "condor_master" not in output.split("stage container-net failed")[-1]
    assert leases(lab) == before
    assert os.path.exists(lab.apptainer)


def test_check_probe_reports_the_sites_apptainer_through_a_job(
    lab: Lab, tmp_path
) -> None:
    """`check --probe` with configs/lab-cnet.yml: its job on a worker finds
    the site-local apptainer's setuid starter, apptainer.conf admitting the
    drone user to the network, and the network's conflist; a network the
    conf does not list is named with the fix."""
    config = write_config(lab, tmp_path, source=LAB_CNET_CONFIG)

    def probe() -> str:
        result = lab.run(
            "control",
            [sys.executable, "-m", "tardis_netadapter.cli", "check", "--probe"]
            + ["--job-timeout", "60", str(config)],
            timeout=150,
        )
        return result.stdout + result.stderr

    out = probe()
    assert out.rstrip().endswith("ready"), out
    for item in ("cnet:setuid", "cnet:allow", "cnet:network"):
        assert f"[ok  ] {item}: " in out, out
    config.write_text(
        config.read_text().replace("network: epn-public", "network: epn-other")
    )
    out = probe()
    assert "[FAIL] cnet:allow: " in out and "epn-other" in out, out
    assert "[FAIL] cnet:network: " in out, out
