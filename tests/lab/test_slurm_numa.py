"""NUMA-bound GPU drones on the lab's Slurm (issue 15): two share one worker.

The jobs are submitted by hand as the drone user on the login node, but with
the command line the Slurm driver renders (``SlurmDriver.submit_command``), so
the options under test are exactly the product's. Each lab worker is two
sockets of one core with task/affinity and two stand-in GPUs of type
``configs.LAB_GPU_TYPE`` (configs.slurm_conf / write_gres).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from tardis_netadapter_lab import Lab
from tardis_netadapter_lab.configs import LAB_GPU_TYPE, LAB_GPUS_PER_NODE

from tardis_netadapter.batch.options import OptionSet
from tardis_netadapter.batch.slurm import SlurmDriver, SlurmMachineType
from tardis_netadapter.machine import MachineMetaData

pytestmark = pytest.mark.lab

ONE_SOCKET = MachineMetaData(Cores=1, Memory=0.1, Disk=1)
WORKER = "worker1"

# what a drone would see: its CPU and memory binding and Slurm's GPU variables;
# it stays up until the test has seen both jobs running together
JOB = """#!/bin/bash
grep -E '^(Cpus|Mems)_allowed_list' /proc/self/status
for name in SLURMD_NODENAME SLURM_JOB_GPUS GPU_DEVICE_ORDINAL ROCR_VISIBLE_DEVICES \\
        CUDA_VISIBLE_DEVICES SLURM_MEM_BIND; do
    echo "$name=${!name-unset}"
done
echo started
sleep 20
"""


def numa_kind(**overrides) -> SlurmMachineType:
    values = {
        "Walltime": "5",
        "Partition": "batch",
        "Gpus": 1,
        "GpuType": LAB_GPU_TYPE,
        "NumaBinding": "socket",
        # both on one worker: the EPN case of two drones per node
        "SubmitOptions": OptionSet(long={"nodelist": WORKER, "output": "numa-%j.out"}),
    }
    values.update(overrides)
    return SlurmMachineType(**values)


class Jobs:
    """Jobs submitted through the driver's sbatch line; cancelled at the end."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.ids: list[str] = []

    def submit(self, kind: SlurmMachineType, meta: MachineMetaData, name: str):
        command = SlurmDriver().submit_command(kind, meta, name, {"TNA_TEST": "1"})
        result = self.lab.run(
            "login",
            ["bash", "-c", command],
            user=self.lab.drone_user,
            input=JOB,
            timeout=30,
        )
        if result.returncode == 0:
            self.ids.append(SlurmDriver().parse_submit(result.stdout, result.stderr))
        return result

    def queue(self) -> dict[str, tuple[str, str]]:
        """job id -> (state, node) of our jobs."""
        listing = self.lab.run(
            "login",
            ["squeue", "-h", "-j", ",".join(self.ids), "-o", "%i %T %N"],
            user=self.lab.drone_user,
        ).stdout
        return {
            parts[0]: (parts[1], parts[2] if len(parts) > 2 else "")
            for parts in (line.split() for line in listing.splitlines())
        }

    def output(self, job_id: str) -> str:
        path = self.lab.layout.home(self.lab.drone_user) / f"numa-{job_id}.out"
        return path.read_text() if path.exists() else ""


@pytest.fixture
def jobs(lab: Lab) -> Iterator[Jobs]:
    started = Jobs(lab)
    yield started
    if started.ids:
        lab.run("login", ["scancel", *started.ids], user=lab.drone_user)


def field(output: str, name: str) -> str:
    match = re.search(rf"^{name}[=:]\s*(\S+)", output, re.M)
    assert match, f"{name} missing in job output:\n{output}"
    return match.group(1)


def test_two_numa_gpu_drones_share_a_worker_on_their_own_cpu_and_gpu(
    lab: Lab, jobs: Jobs
) -> None:
    for number in range(2):
        result = jobs.submit(numa_kind(), ONE_SOCKET, f"numa-{number}")
        assert result.returncode == 0, result.stderr
    # both running at the same time, on the same worker
    deadline = time.monotonic() + 30
    together: dict[str, tuple[str, str]] = {}
    while time.monotonic() < deadline:
        together = jobs.queue()
        if len(together) == 2 and all(s == "RUNNING" for s, _ in together.values()):
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"the two NUMA drones never ran together: {together}")
    assert {node for _, node in together.values()} == {WORKER}
    deadline = time.monotonic() + 15
    outputs = [jobs.output(job_id) for job_id in jobs.ids]
    while time.monotonic() < deadline and not all("started" in o for o in outputs):
        time.sleep(0.3)
        outputs = [jobs.output(job_id) for job_id in jobs.ids]

    cpus = [field(o, "Cpus_allowed_list") for o in outputs]
    # each drone is bound to one CPU (its socket's one core), and not the same
    assert all(re.fullmatch(r"\d+", cpu) for cpu in cpus), outputs
    assert cpus[0] != cpus[1], outputs
    for output in outputs:
        assert field(output, "SLURMD_NODENAME") == WORKER
        assert field(output, "SLURM_MEM_BIND") == "local"
    # each has its own GPU, as Slurm tells CUDA and ROCm programs
    gpus = [field(o, "SLURM_JOB_GPUS") for o in outputs]
    assert gpus[0] != gpus[1], outputs
    assert {int(gpu) for gpu in gpus} <= set(range(LAB_GPUS_PER_NODE)), outputs
    for output, gpu in zip(outputs, gpus):
        assert field(output, "ROCR_VISIBLE_DEVICES") == gpu, output
        assert field(output, "GPU_DEVICE_ORDINAL") == gpu, output
        assert field(output, "CUDA_VISIBLE_DEVICES") == gpu, output


def test_a_drone_larger_than_a_socket_is_refused_not_spread(
    lab: Lab, jobs: Jobs
) -> None:
    """Two cores on sockets of one core: Slurm refuses the NUMA drone at
    submission, while the same drone without binding runs across both."""
    two_cores = MachineMetaData(Cores=2, Memory=0.1, Disk=1)
    kind = numa_kind(Gpus=None, GpuType=None)
    refused = jobs.submit(kind, two_cores, "numa-too-big")
    assert refused.returncode != 0
    assert "Requested node configuration is not available" in refused.stderr
    spread = jobs.submit(numa_kind(NumaBinding="none"), two_cores, "numa-spread")
    assert spread.returncode == 0, spread.stderr


def test_more_gpus_than_a_worker_has_are_refused(lab: Lab, jobs: Jobs) -> None:
    kind = numa_kind(Gpus=LAB_GPUS_PER_NODE + 1)
    refused = jobs.submit(kind, ONE_SOCKET, "numa-gpus")
    assert refused.returncode != 0
    assert "Requested node configuration is not available" in refused.stderr
