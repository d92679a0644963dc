"""Slurm commands, quoting, output parsing and the state map of the NetSlurm adapter."""

from __future__ import annotations

import shlex

import pytest
from tardis.interfaces.siteadapter import ResourceStatus

from tardis_netadapter.batch import slurm
from tardis_netadapter.batch.driver import JobRecord
from tardis_netadapter.batch.options import OptionSet
from tardis_netadapter.batch.slurm import SlurmMachineType, SlurmOutputError
from tardis_netadapter.machine import MachineMetaData, drone_environment
from tardis_netadapter.schema import ConfigurationError, load

HOSTILE = "a b;rm -rf /"
HTCONDOR = {"Cores": 1, "Memory": 1024, "Disk": 1024 * 1024}


def machine_type(**overrides) -> SlurmMachineType:
    values = {"Walltime": "02:00:00", "Partition": "batch"}
    values.update(overrides)
    return SlurmMachineType(**values)


META = MachineMetaData(Cores=8, Memory=16, Disk=20)


def env(uuid: str = "netlab-0123456789") -> dict[str, str]:
    return drone_environment(uuid, META, HTCONDOR, 7200)


def words_after(words: list[str], flag: str) -> str:
    return words[words.index(flag) + 1]


# -- drone environment ---------------------------------------------------------


def test_drone_environment_uses_translation_units():
    assert env() == {
        "TardisDroneCores": "8",
        "TardisDroneMemory": "16384",  # MB
        "TardisDroneDisk": "20971520",  # KB
        "TardisDroneUuid": "netlab-0123456789",
        "TardisDroneWalltime": "7200",
    }


def test_drone_environment_keeps_fractions():
    meta = MachineMetaData(Cores=1, Memory=2.5, Disk=0.5)
    result = drone_environment("x", meta, {"Cores": 1, "Memory": 1, "Disk": 1}, 60)
    assert result["TardisDroneMemory"] == "2.5"


def test_drone_environment_needs_every_factor():
    with pytest.raises(ValueError, match="Disk"):
        drone_environment("x", META, {"Cores": 1, "Memory": 1}, 60)


# -- sbatch command ------------------------------------------------------------


def test_sbatch_command_shape():
    command = slurm.sbatch_command(machine_type(), META, "netlab-0123456789", env())
    words = shlex.split(command)
    assert words[:2] == ["sbatch", "--parsable"]
    assert "--job-name=netlab-0123456789" in words
    assert words_after(words, "-p") == "batch"
    assert words_after(words, "-t") == "02:00:00"
    assert words_after(words, "-n") == "8"
    assert words_after(words, "-N") == "1"
    assert "--mem=16384M" in words
    assert "--no-requeue" in words
    export = next(w for w in words if w.startswith("--export="))
    # only the drone's values: the submitting environment stays out of the job
    assert export.split("=", 1)[1].split(",") == [
        "TardisDroneCores=8",
        "TardisDroneMemory=16384",
        "TardisDroneDisk=20971520",
        "TardisDroneUuid=netlab-0123456789",
        "TardisDroneWalltime=7200",
    ]
    # the script comes on stdin: no script argument, no --wrap
    assert not any(w.endswith(".sh") or w.startswith("--wrap") for w in words)


def test_hostile_values_are_quoted_and_round_trip():
    kind = machine_type(
        Partition=HOSTILE,
        SubmitOptions=OptionSet(
            short={"q": HOSTILE, "x": None},
            long={
                "account": HOSTILE,
                "comment": "$(touch /tmp/p)`id`",
                "exclusive": None,
            },
        ),
    )
    command = slurm.sbatch_command(kind, META, "u1", env("u1"))
    words = shlex.split(command)
    assert words_after(words, "-p") == HOSTILE
    assert words_after(words, "-q") == HOSTILE
    assert "-x" in words
    assert f"--account={HOSTILE}" in words
    assert "--comment=$(touch /tmp/p)`id`" in words
    assert "--exclusive" in words
    # nothing unquoted: re-joining the parsed words gives the same line
    assert shlex.join(words) == command
    assert ";rm" not in command.replace(f"'{HOSTILE}'", "").replace(
        f"'--account={HOSTILE}'", ""
    )


def test_user_options_come_after_the_adapter_options():
    kind = machine_type(SubmitOptions=OptionSet(long={"qos": "normal"}))
    words = shlex.split(slurm.sbatch_command(kind, META, "u", env("u")))
    assert words.index("--qos=normal") > words.index("--mem=16384M")


def test_no_partition_means_site_default():
    words = shlex.split(
        slurm.sbatch_command(machine_type(Partition=None), META, "u", env("u"))
    )
    assert "-p" not in words


def test_requeue_can_be_requested():
    kind = machine_type(SubmitOptions=OptionSet(long={"requeue": None}))
    words = shlex.split(slurm.sbatch_command(kind, META, "u", env("u")))
    assert "--requeue" in words and "--no-requeue" not in words


def test_environment_with_comma_is_refused():
    with pytest.raises(ValueError, match="commas"):
        slurm.sbatch_command(machine_type(), META, "u", {"TardisDroneUuid": "a,b"})


def test_scancel_command_quotes_id_and_options():
    options = OptionSet(short={"s": "TERM"}, long={"cluster": HOSTILE, "full": None})
    words = shlex.split(slurm.scancel_command("1234", options))
    assert words == ["scancel", "-s", "TERM", f"--cluster={HOSTILE}", "--full", "1234"]
    assert (
        shlex.split(slurm.scancel_command("1; reboot", OptionSet()))[-1] == "1; reboot"
    )


def test_squeue_command():
    words = shlex.split(slurm.squeue_command())
    assert words == [
        "squeue",
        "--me",
        "--noheader",
        "--states=all",
        "--format=%i|%T|%N|%r|%M|%j",
    ]


# -- machine type validation ---------------------------------------------------


def load_kind(data: dict) -> SlurmMachineType:
    return load(SlurmMachineType, data, "NetLab.MachineTypeConfiguration.small")


def test_machine_type_loads():
    kind = load_kind(
        {
            "Walltime": "120",
            "Partition": "batch",
            "SubmitOptions": {"short": {"q": "x"}, "long": {"account": "42"}},
            "TerminateOptions": {"long": {"full": None}},
        }
    )
    assert kind.walltime_seconds == 7200
    assert kind.SubmitOptions.long == {"account": "42"}


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"Walltime": "forever"}, "NetLab.MachineTypeConfiguration.small.Walltime"),
        ({}, "NetLab.MachineTypeConfiguration.small.Walltime: missing; required"),
        (
            {"Walltime": "60", "StartupCommand": "x.sh"},
            "NetLab.MachineTypeConfiguration.small.StartupCommand: got 'x.sh'; unknown key",
        ),
        (
            {"Walltime": "60", "SubmitOptions": {"long": {"mem": "1G"}}},
            "small.SubmitOptions.long.mem: set by the adapter",
        ),
        (
            {"Walltime": "60", "SubmitOptions": {"short": {"p": "x"}}},
            "small.SubmitOptions.short.p: set by the adapter from Partition",
        ),
        (
            {"Walltime": "60", "SubmitOptions": {"short": {"qos": "x"}}},
            "small.SubmitOptions.short.qos: not a short option",
        ),
        (
            {"Walltime": "60", "SubmitOptions": {"long": {"a b": "x"}}},
            "small.SubmitOptions.long.a b: not an option name",
        ),
        (
            {"Walltime": "60", "TerminateOptions": {"medium": {}}},
            "small.TerminateOptions.medium",
        ),
        ({"Walltime": "60", "Partition": " "}, "small.Partition: empty"),
    ],
)
def test_machine_type_errors_name_the_key(data, fragment):
    with pytest.raises(ConfigurationError) as info:
        load_kind(data)
    assert fragment in str(info.value)


def test_meta_data_must_be_positive():
    with pytest.raises(ConfigurationError, match=r"small\.Cores: got 0"):
        load(
            MachineMetaData,
            {"Cores": 0, "Memory": 1, "Disk": 1},
            "S.MachineMetaData.small",
        )


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("60", 3600),
        ("90:30", 5430),
        ("02:00:00", 7200),
        ("1-12", 129600),
        ("1-00:30", 88200),
        ("2-00:00:10", 172810),
    ],
)
def test_walltime_formats(text, seconds):
    assert slurm.walltime_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "UNLIMITED", "1:2:3:4", "0", "-5", "1h"])
def test_walltime_rejects(text):
    with pytest.raises(ValueError):
        slurm.walltime_seconds(text)


# -- sbatch output -------------------------------------------------------------


@pytest.mark.parametrize(
    "stdout, job_id",
    [
        ("1234", "1234"),
        ("1234\n", "1234"),
        ("1234;jureca", "1234"),
        ("1234;cluster-2.a\n\n", "1234"),
        ("Submitted batch job 987", "987"),
        ("Submitted batch job 987 on cluster jureca\n", "987"),
        ("sbatch: warning: partition busy\n4321\n", "4321"),
        ("module: loaded defaults\nSubmitted batch job 55\n\n", "55"),
        ("  77  \n", "77"),
    ],
)
def test_parse_sbatch_output(stdout, job_id):
    assert slurm.parse_sbatch_output(stdout, "sbatch: warning: something") == job_id


@pytest.mark.parametrize(
    "stdout",
    [
        "",
        "\n\n",
        "sbatch: error: Batch job submission failed: Invalid partition",
        "Submitted batch job",
        "12ab",
        "job 1234 submitted",
        "1234;",
        "-1",
    ],
)
def test_parse_sbatch_output_refuses(stdout):
    with pytest.raises(SlurmOutputError) as info:
        slurm.parse_sbatch_output(stdout, "the stderr")
    assert "the stderr" in str(info.value)


# -- squeue output -------------------------------------------------------------


def test_parse_squeue_output_shapes():
    stdout = (
        "101|RUNNING|worker1|None|1:02|netlab-aaa\n"
        "102|PENDING||Resources|0:00|netlab-bbb\n"
        "\n"
        "103_4|COMPLETED|worker2|None|5:00|array task\n"
        "104_[1-5%2]|PENDING||JobArrayTaskLimit|0:00|array\n"
        "105+0|RUNNING|worker1|None|1-00:00:00|het\n"
        "106|CANCELLED by 1000|worker1|None|0:01|name|with|pipes\n"
        "107|running|w|None|0:00|lower\n"
        "   \n"
    )
    jobs = slurm.parse_squeue_output(stdout)
    assert set(jobs) == {"101", "102", "103_4", "104_[1-5%2]", "105+0", "106", "107"}
    assert jobs["101"] == JobRecord(
        job_id="101",
        name="netlab-aaa",
        state="RUNNING",
        status=ResourceStatus.Running,
        elapsed=62.0,
        nodes="worker1",
        reason="None",
    )
    assert jobs["105+0"].elapsed == 86400.0
    assert jobs["102"].nodes == "" and jobs["102"].reason == "Resources"
    assert jobs["106"].state == "CANCELLED"
    assert jobs["106"].name == "name|with|pipes"
    assert jobs["107"].state == "RUNNING"


def test_parse_squeue_empty_means_no_jobs():
    assert slurm.parse_squeue_output("") == {}
    assert slurm.parse_squeue_output("\n\n") == {}


@pytest.mark.parametrize(
    "stdout",
    [
        "5|RUNNING|n|None|0:00|d\n1001|RUNN\n",  # a line cut short
        "CLUSTER: jureca\n5|RUNNING|n|None|0:00|d\n",  # not a job line
        "squeue: warning: x\n5|RUNNING|n|None|0:00|d\n",
        "5||n|None|0:00|d\n",  # no state
    ],
)
def test_a_listing_with_a_line_that_is_not_a_job_is_not_trusted(stdout):
    """Reading the rest as the whole truth would report that line's job as gone."""
    with pytest.raises(SlurmOutputError):
        slurm.parse_squeue_output(stdout)


@pytest.mark.parametrize(
    "stdout",
    [
        "slurm_load_jobs error: Unable to contact slurm controller",
        "JOBID|STATE\nabc|RUNNING|x|y|z",
        "<html>proxy error</html>",
    ],
)
def test_parse_squeue_refuses_garbage(stdout):
    with pytest.raises(SlurmOutputError):
        slurm.parse_squeue_output(stdout)


# -- states --------------------------------------------------------------------

ALL_STATES = {
    "BOOT_FAIL": ResourceStatus.Deleted,
    "CANCELLED": ResourceStatus.Deleted,
    "COMPLETED": ResourceStatus.Deleted,
    "COMPLETING": ResourceStatus.Running,
    "CONFIGURING": ResourceStatus.Booting,
    "DEADLINE": ResourceStatus.Deleted,
    "FAILED": ResourceStatus.Deleted,
    "NODE_FAIL": ResourceStatus.Deleted,
    "OUT_OF_MEMORY": ResourceStatus.Deleted,
    "PENDING": ResourceStatus.Booting,
    "PREEMPTED": ResourceStatus.Deleted,
    "RUNNING": ResourceStatus.Running,
    "RESV_DEL_HOLD": ResourceStatus.Stopped,
    "REQUEUE_FED": ResourceStatus.Booting,
    "REQUEUE_HOLD": ResourceStatus.Stopped,
    "REQUEUED": ResourceStatus.Booting,
    "RESIZING": ResourceStatus.Running,
    "REVOKED": ResourceStatus.Deleted,
    "SIGNALING": ResourceStatus.Running,
    "SPECIAL_EXIT": ResourceStatus.Stopped,
    "STAGE_OUT": ResourceStatus.Running,
    "STOPPED": ResourceStatus.Stopped,
    "SUSPENDED": ResourceStatus.Stopped,
    "TIMEOUT": ResourceStatus.Deleted,
}


def test_state_map_covers_every_slurm_state():
    assert dict(slurm.STATE_MAP) == ALL_STATES


@pytest.mark.parametrize("state, status", sorted(ALL_STATES.items()))
def test_map_state(state, status):
    assert slurm.map_state(state) is status


def test_unknown_state_says_nothing():
    """An unknown word (a newer Slurm, a state cut short) keeps the previous state."""
    assert slurm.map_state("HIBERNATING") is None
    assert slurm.map_state("RUNN") is None


def test_failure_states_are_marked_for_the_operator():
    jobs = slurm.parse_squeue_output("42|OUT_OF_MEMORY|w|None|1:00|d\n")
    assert jobs["42"].failed and jobs["42"].final
