"""Machine type keys Gpus, GpuType and NumaBinding: validation and sbatch words."""

from __future__ import annotations

import shlex

import pytest

from tardis_netadapter.batch import slurm
from tardis_netadapter.batch.slurm import SlurmDriver, SlurmMachineType
from tardis_netadapter.machine import MachineMetaData
from tardis_netadapter.schema import ConfigurationError, load

PATH = "EPN.MachineTypeConfiguration.numa0"
META = MachineMetaData(Cores=64, Memory=240, Disk=100)


def load_kind(**data) -> SlurmMachineType:
    return load(SlurmMachineType, {"Walltime": "60", **data}, PATH)


def words(kind: SlurmMachineType, meta: MachineMetaData = META) -> list[str]:
    command = SlurmDriver().submit_command(kind, meta, "epn-1", {"A": "1"})
    return shlex.split(command)


def problems(**data) -> str:
    with pytest.raises(ConfigurationError) as info:
        load_kind(**data)
    return str(info.value)


# -- rendering -----------------------------------------------------------------


def test_defaults_add_nothing():
    kind = load_kind()
    assert kind.Gpus is None and kind.GpuType is None
    assert kind.NumaBinding == "none"
    rendered = words(kind)
    assert not [w for w in rendered if w.startswith(("--gres", "--sockets", "--mem-b"))]
    assert slurm.resource_words(kind, META) == []


def test_gpus_render_a_gres_request():
    assert "--gres=gpu:4" in words(load_kind(Gpus=4))


def test_gpu_type_goes_between_name_and_count():
    rendered = words(load_kind(Gpus=4, GpuType="mi50"))
    assert "--gres=gpu:mi50:4" in rendered
    assert len([w for w in rendered if w.startswith("--gres")]) == 1


def test_socket_binding_asks_for_one_socket_with_all_cores():
    rendered = words(load_kind(NumaBinding="socket"))
    assert "--sockets-per-node=1" in rendered
    assert "--cores-per-socket=64" in rendered  # MachineMetaData.Cores
    assert "--mem-bind=local" in rendered
    # sbatch of Slurm 22.05 refuses --cpu-bind ("unrecognized option")
    assert not [w for w in rendered if w.startswith("--cpu-bind")]
    # the task count stays the drone's cores
    assert rendered[rendered.index("-n") + 1] == "64"


def test_cores_per_socket_follows_the_meta_data():
    meta = MachineMetaData(Cores=1, Memory=0.25, Disk=1)
    assert "--cores-per-socket=1" in words(load_kind(NumaBinding="socket"), meta)


def test_numa_gpu_drone_full_shape():
    kind = load_kind(
        Partition="online",
        Gpus=4,
        GpuType="mi50",
        NumaBinding="socket",
        SubmitOptions={"long": {"qos": "grid"}},
    )
    rendered = words(kind)
    assert slurm.resource_words(kind, META) == [
        "--gres=gpu:mi50:4",
        "--sockets-per-node=1",
        "--cores-per-socket=64",
        "--mem-bind=local",
    ]
    # the resource words sit before the operator's own options
    assert rendered.index("--mem-bind=local") < rendered.index("--qos=grid")
    assert rendered.index("--gres=gpu:mi50:4") > rendered.index("-p")


def test_numa_none_is_explicitly_allowed():
    assert slurm.resource_words(load_kind(NumaBinding="none"), META) == []


def test_probe_job_takes_no_gpus_or_binding():
    """check --probe's two-minute job must not wait for a free GPU or socket."""
    kind = load_kind(Gpus=2, NumaBinding="socket")
    probe = slurm.srun_probe_command(kind)
    assert "--gres" not in probe and "--sockets-per-node" not in probe


# -- validation ----------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1])
def test_gpus_must_be_at_least_one(value):
    text = problems(Gpus=value)
    assert f"{PATH}.Gpus: got {value}; expected a whole number >= 1" in text
    assert "remove the key" in text


@pytest.mark.parametrize("value", ["4", 2.5, True])
def test_gpus_must_be_a_whole_number(value):
    text = problems(Gpus=value)
    assert f"{PATH}.Gpus: got {value!r}" in text


def test_gpu_type_needs_gpus():
    text = problems(GpuType="mi50")
    assert f"{PATH}.GpuType: got 'mi50' without Gpus" in text
    assert "set Gpus: N" in text


@pytest.mark.parametrize("value", ["mi50:2", "a,b", "", " mi50", "gpu type"])
def test_gpu_type_must_be_a_gres_type_name(value):
    text = problems(Gpus=1, GpuType=value)
    assert f"{PATH}.GpuType: got {value!r}; expected a GRES type name" in text


def test_gpu_type_must_be_a_string():
    assert f"{PATH}.GpuType: got 50" in problems(Gpus=1, GpuType=50)


@pytest.mark.parametrize("value", ["sockets", "numa", "Socket", True, 1])
def test_numa_binding_values(value):
    text = problems(NumaBinding=value)
    assert (
        f"{PATH}.NumaBinding: got {value!r}; allowed: one of 'none', 'socket'" in text
    )


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"long": {"gres": "gpu:2"}}, "SubmitOptions.long.gres: conflicts with Gpus"),
        ({"long": {"gpus": "2"}}, "SubmitOptions.long.gpus: conflicts with Gpus"),
        ({"short": {"G": "2"}}, "SubmitOptions.short.G: conflicts with Gpus"),
    ],
)
def test_gpu_options_conflict_with_gpus(options, fragment):
    text = problems(Gpus=2, SubmitOptions=options)
    assert f"{PATH}.{fragment}" in text
    assert "remove it here or remove Gpus" in text


def test_gres_in_submit_options_stays_allowed_without_gpus():
    kind = load_kind(SubmitOptions={"long": {"gres": "gpu:2"}})
    assert "--gres=gpu:2" in words(kind)


@pytest.mark.parametrize(
    "options, name",
    [
        ({"long": {"sockets-per-node": "2"}}, "long.sockets-per-node"),
        ({"long": {"cores-per-socket": "4"}}, "long.cores-per-socket"),
        ({"long": {"mem-bind": "none"}}, "long.mem-bind"),
        ({"long": {"hint": "nomultithread"}}, "long.hint"),
        ({"short": {"B": "2:4"}}, "short.B"),
    ],
)
def test_binding_options_conflict_with_numa_binding(options, name):
    text = problems(NumaBinding="socket", SubmitOptions=options)
    assert f"{PATH}.SubmitOptions.{name}: conflicts with NumaBinding" in text


def test_binding_options_stay_allowed_without_numa_binding():
    kind = load_kind(SubmitOptions={"long": {"hint": "nomultithread"}})
    assert "--hint=nomultithread" in words(kind)


def test_every_problem_is_reported_at_once():
    text = problems(
        Gpus=0,
        NumaBinding="numa",
        SubmitOptions={"long": {"mem": "1G"}},
    )
    assert f"{PATH}.Gpus" in text
    assert f"{PATH}.NumaBinding" in text
    assert f"{PATH}.SubmitOptions.long.mem" in text
