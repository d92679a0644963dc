"""Grid Engine commands, quoting, qsub/qstat/qdel answers and the state table of NetGridEngine.

The qstat listings here follow Son of Grid Engine 8.1.9's qstat -xml as its
source writes it (clients/qstat/qstat_xml.c, libs/uti/sge_time.c); recordings
of the real qstat in the lab are checked by test_gridengine_recordings.py.
"""

from __future__ import annotations

import calendar
import shlex

import pytest
from tardis.interfaces.siteadapter import ResourceStatus

from tardis_netadapter.batch import DRIVERS, driver_for
from tardis_netadapter.batch import gridengine as ge
from tardis_netadapter.batch.driver import BatchOutputError
from tardis_netadapter.batch.gridengine_options import (
    GridEngineMachineType,
    memory_bytes,
    walltime_seconds,
)
from tardis_netadapter.batch.options import OptionSet
from tardis_netadapter.machine import MachineMetaData, drone_environment
from tardis_netadapter.schema import ConfigurationError, load

HTCONDOR = {"Cores": 1, "Memory": 1024, "Disk": 1024 * 1024}
META = MachineMetaData(Cores=8, Memory=16, Disk=20)
UUID = "notredame-0123456789"
#: the login node's clock in the listings below: 2026-12-01T20:00:00 UTC
NOW = calendar.timegm((2026, 12, 1, 20, 0, 0, 0, 0, 0))


def machine_type(**overrides) -> GridEngineMachineType:
    values = {
        "Walltime": "48:00:00",
        "Queue": "long",
        "ParallelEnvironment": "smp",
    }
    values.update(overrides)
    return GridEngineMachineType(**values)


def env(uuid: str = UUID) -> dict[str, str]:
    return drone_environment(uuid, META, HTCONDOR, 172800)


def after(words: list[str], flag: str) -> str:
    return words[words.index(flag) + 1]


# -- the qstat -xml document, as SGE 8.1.9 prints it ----------------------------------

HEAD = (
    "<?xml version='1.0'?>\n"
    '<job_info  xmlns:xsd="http://arc.liv.ac.uk/repos/darcs/sge/source/dist/util/'
    'resources/schemas/qstat/qstat.xsd">\n'
)


def job(number, state, name=UUID, start="2026-12-01T19:00:00", queue="long@node1"):
    """One <job_list> as qstat_xml_job writes it (running: start time and queue)."""
    running = any(letter in state for letter in "rtsST") and "q" not in state
    list_state = "running" if running else "pending"
    lines = [
        f'    <job_list state="{list_state}">',
        f"      <JB_job_number>{number}</JB_job_number>",
        "      <JAT_prio>0.55500</JAT_prio>",
        f"      <JB_name>{name}</JB_name>",
        "      <JB_owner>drone</JB_owner>",
        f"      <state>{state}</state>",
    ]
    if running:
        lines += [
            f"      <JAT_start_time>{start}</JAT_start_time>",
            f"      <queue_name>{queue}</queue_name>",
        ]
    else:
        lines += [
            "      <JB_submission_time>2026-12-01T18:59:00</JB_submission_time>",
            "      <queue_name></queue_name>",
        ]
    lines += ["      <slots>8</slots>", "    </job_list>"]
    return "\n".join(lines) + "\n", running


def listing(*jobs, now=NOW) -> str:
    """The driver's listing: the clock line, then qstat -xml with these jobs."""
    running = [text for text, is_running in jobs if is_running]
    pending = [text for text, is_running in jobs if not is_running]
    return (
        f"{now}\n"
        + HEAD
        + "  <queue_info>\n"
        + "".join(running)
        + "  </queue_info>\n  <job_info>\n"
        + "".join(pending)
        + "  </job_info>\n</job_info>\n"
    )


# -- registration ----------------------------------------------------------------------


def test_registered_under_its_fixed_names():
    driver = driver_for("NetGridEngine")
    assert driver is ge.GridEngineDriver and DRIVERS["NetGridEngine"] is driver
    assert driver.system == "Grid Engine"
    assert driver.job_id_variable == "JOB_ID"
    assert driver.machine_type_options is GridEngineMachineType
    assert {"qsub", "qstat", "qdel"} <= set(driver.site_commands)
    assert driver.check_declaration() == []


# -- qsub --------------------------------------------------------------------------------


def test_qsub_command_shape():
    words = shlex.split(ge.qsub_command(machine_type(), META, UUID, env()))
    assert words[:2] == ["qsub", "-terse"]
    assert after(words, "-N") == UUID
    assert after(words, "-S") == "/bin/bash"
    assert after(words, "-q") == "long"
    assert words[words.index("-pe") + 1 : words.index("-pe") + 3] == ["smp", "8"]
    assert after(words, "-l") == "h_rt=48:00:00"
    assert after(words, "-r") == "n"
    assert after(words, "-j") == "y"
    # only the drone's values: the submitting environment stays out of the job
    assert "-V" not in words
    assert after(words, "-v").split(",") == [
        "TardisDroneCores=8",
        "TardisDroneMemory=16384",
        "TardisDroneDisk=20971520",
        f"TardisDroneUuid={UUID}",
        "TardisDroneWalltime=172800",
    ]
    # the script goes on stdin: no file name at the end
    assert words[-1] == "y"


def test_qsub_memory_project_and_export():
    kind = machine_type(MemoryPerSlot="2G", MemFree="16G", Project="cms")
    words = shlex.split(
        ge.qsub_command(kind, META, UUID, env(), export=("SQUID", "OMP_NUM_THREADS=1"))
    )
    assert after(words, "-l") == "h_rt=48:00:00,h_vmem=2G,mem_free=16G"
    assert after(words, "-P") == "cms"
    assert after(words, "-v").split(",")[-2:] == ["SQUID", "OMP_NUM_THREADS=1"]


def test_qsub_without_queue_or_pe_uses_site_defaults():
    one = MachineMetaData(Cores=1, Memory=2, Disk=10)
    kind = machine_type(Queue=None, ParallelEnvironment=None)
    words = shlex.split(ge.qsub_command(kind, one, UUID, env()))
    assert "-q" not in words and "-pe" not in words and "-P" not in words


def test_qsub_slots_override_cores():
    words = shlex.split(ge.qsub_command(machine_type(Slots=16), META, UUID, env()))
    assert words[words.index("-pe") + 1 : words.index("-pe") + 3] == ["smp", "16"]


def test_hostile_values_are_quoted_and_round_trip():
    hostile = "a b;rm -rf /"
    kind = machine_type(Queue=hostile, SubmitOptions=OptionSet(long={"wd": hostile}))
    command = ge.qsub_command(kind, META, UUID, env())
    words = shlex.split(command)
    assert after(words, "-q") == hostile
    assert after(words, "-wd") == hostile
    assert ";rm" not in command.replace(shlex.quote(hostile), "")


def test_submit_options_render_with_one_dash_and_come_last():
    kind = machine_type(
        SubmitOptions=OptionSet(
            short={"l": "gpu=1", "m": None}, long={"ckpt": "blcr", "notify": None}
        )
    )
    words = shlex.split(ge.qsub_command(kind, META, UUID, env()))
    assert words[-6:] == ["-l", "gpu=1", "-m", "-ckpt", "blcr", "-notify"]
    assert not any(word.startswith("--") for word in words)


def test_submit_options_may_choose_rerun_and_join():
    kind = machine_type(SubmitOptions=OptionSet(short={"r": "y", "j": "n"}))
    words = shlex.split(ge.qsub_command(kind, META, UUID, env()))
    assert words.count("-r") == 1 and after(words, "-r") == "y"
    assert words.count("-j") == 1 and after(words, "-j") == "n"


def test_environment_with_comma_is_refused():
    with pytest.raises(ValueError, match="commas"):
        ge.qsub_command(machine_type(), META, UUID, {"A": "1,2"})


# -- qsub -terse answers -------------------------------------------------------------------


@pytest.mark.parametrize(
    "stdout, job_id",
    [
        ("4711", "4711"),
        ("4711\n", "4711"),
        ("4711.1-10:1", "4711"),
        ("4711.1-10", "4711"),
        ("4711.3", "4711"),
        ("site JSV: walltime ok\n4711", "4711"),
        ("  4711  ", "4711"),
    ],
)
def test_parse_qsub_terse(stdout, job_id):
    assert ge.parse_qsub_output(stdout) == job_id


@pytest.mark.parametrize(
    "stdout",
    [
        "",
        'Your job 4711 ("x") has been submitted',  # qsub without -terse
        "Unable to run job: job rejected: no suitable queues.",
        "4711a",
        "4711.x",
    ],
)
def test_parse_qsub_refuses(stdout):
    with pytest.raises(BatchOutputError, match="no job id"):
        ge.parse_qsub_output(stdout, "stderr text")


# -- qdel ------------------------------------------------------------------------------------


def test_qdel_command_quotes_the_id():
    assert ge.qdel_command("4711") == "qdel 4711"
    assert ge.qdel_command("1; rm") == "qdel '1; rm'"


@pytest.mark.parametrize(
    "text",
    [
        'denied: job "4711" does not exist',
        "The job 4711 of user(s) drone does not exist",
        "job 4711 is already in deletion",
        'DENIED: JOB "4711" DOES NOT EXIST',
    ],
)
def test_already_gone_wording(text):
    assert ge.GridEngineDriver().already_gone(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "drone has registered the job 4711 for deletion",
        "error: commlib error: got select error (Connection refused)",
        'denied: "drone" is not the owner of job "4711"',
    ],
)
def test_not_gone_wording(text):
    assert not ge.GridEngineDriver().already_gone(text)


# -- qstat ------------------------------------------------------------------------------------


def test_qstat_command_is_one_simple_command_with_the_clock_first():
    words = shlex.split(ge.qstat_command())
    assert words[:2] == ["sh", "-c"] and len(words) == 3
    script = words[2]
    assert script.startswith("date +%s && ")
    assert "TZ=UTC exec qstat -xml -s prsz -u" in script
    assert "-ext" not in script  # -ext drops JAT_start_time from the XML


def test_parse_listing_running_and_pending():
    text = listing(
        job(11, "r", name="notredame-aa", start="2026-12-01T19:00:00"),
        job(12, "qw", name="notredame-bb"),
        job(13, "Eqw", name="notredame-cc"),
    )
    jobs = ge.parse_qstat_xml(text)
    assert set(jobs) == {"11", "12", "13"}
    running = jobs["11"]
    assert running.name == "notredame-aa"
    assert running.status is ResourceStatus.Running
    assert running.elapsed == 3600.0  # login node clock - start, both UTC
    assert running.nodes == "long@node1"
    assert not running.failed
    assert jobs["12"].status is ResourceStatus.Booting and jobs["12"].elapsed is None
    assert jobs["13"].status is ResourceStatus.Error and jobs["13"].failed


def test_elapsed_never_negative():
    jobs = ge.parse_qstat_xml(listing(job(1, "r", start="2026-12-01T20:00:05")))
    assert jobs["1"].elapsed == 0.0


def test_elapsed_unknown_without_start_time():
    text = listing(job(1, "r", start="")).replace(
        "<JAT_start_time></JAT_start_time>", ""
    )
    jobs = ge.parse_qstat_xml(text)
    assert jobs["1"].status is ResourceStatus.Running and jobs["1"].elapsed is None


def test_empty_listing_means_no_jobs():
    assert ge.parse_qstat_xml(listing()) == {}


def test_jobs_nested_in_queue_lists_are_found():
    """A site's sge_qstat default ``-f`` puts running jobs inside Queue-List."""
    text, _ = job(21, "r")
    document = (
        f"{NOW}\n{HEAD}  <queue_info>\n    <Queue-List>\n"
        "      <name>long@node1</name>\n"
        f"{text}    </Queue-List>\n  </queue_info>\n"
        "  <job_info>\n  </job_info>\n</job_info>\n"
    )
    assert ge.parse_qstat_xml(document)["21"].status is ResourceStatus.Running


def test_array_tasks_speak_as_the_liveliest():
    text = listing(job(30, "r"), job(30, "qw"))
    assert ge.parse_qstat_xml(text)["30"].status is ResourceStatus.Running


def test_names_are_unescaped():
    jobs = ge.parse_qstat_xml(listing(job(5, "qw", name="a&amp;b")))
    assert jobs["5"].name == "a&b"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not-a-clock\n" + HEAD + "</job_info>",
        f"{NOW}\n",  # the XML is missing
        f"{NOW}\n" + HEAD + "  <queue_info>\n",  # cut short
        f"{NOW}\nerror: commlib error: got select error (Connection refused)",
        f"{NOW}\n<?xml version='1.0'?>\n<communication_error/>",
        listing(job(1, "r")).replace("<JB_job_number>1</JB_job_number>", ""),
        listing(job(1, "r")).replace("<state>r</state>", "<state></state>"),
        listing(job(1, "r")).replace("<JB_job_number>1<", "<JB_job_number>x1<"),
        listing(job(1, "r")).replace(f"<JB_name>{UUID}</JB_name>", ""),
    ],
)
def test_listing_that_is_not_whole_is_not_trusted(text):
    with pytest.raises(BatchOutputError):
        ge.parse_qstat_xml(text)


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("2026-12-01T20:00:00", NOW),
        ("2026-12-01T20:00:00.123", NOW),
        ("2026-12-01 20:00:00", None),
        ("12/01/2026 20:00:00", None),
        ("", None),
        ("2026-12-01T2x:00:00", None),
    ],
)
def test_parse_time(text, seconds):
    assert ge.parse_time(text) == seconds


# -- states ---------------------------------------------------------------------------------------

#: the documented table (docs/adapter.md, "Grid Engine"): every combination of
#: sge_status(5) for SGE 8.1.9, and what TARDIS does with it
STATE_TABLE = {
    # pending
    "qw": ResourceStatus.Booting,
    "Rq": ResourceStatus.Booting,
    "Rwq": ResourceStatus.Booting,
    "hqw": ResourceStatus.Stopped,
    "hRwq": ResourceStatus.Stopped,
    # running / transferring
    "r": ResourceStatus.Running,
    "hr": ResourceStatus.Running,
    "Rr": ResourceStatus.Running,
    "t": ResourceStatus.Booting,
    "Rt": ResourceStatus.Booting,
    # suspended
    "s": ResourceStatus.Stopped,
    "ts": ResourceStatus.Stopped,
    "S": ResourceStatus.Stopped,
    "tS": ResourceStatus.Stopped,
    "T": ResourceStatus.Stopped,
    "tT": ResourceStatus.Stopped,
    "Rs": ResourceStatus.Stopped,
    "Rts": ResourceStatus.Stopped,
    "RS": ResourceStatus.Stopped,
    "RtS": ResourceStatus.Stopped,
    "RT": ResourceStatus.Stopped,
    "RtT": ResourceStatus.Stopped,
    # error
    "Eqw": ResourceStatus.Error,
    "Ehqw": ResourceStatus.Error,
    "EhRqw": ResourceStatus.Error,
    # deletion
    "dr": ResourceStatus.Stopped,
    "dt": ResourceStatus.Stopped,
    "dRr": ResourceStatus.Stopped,
    "dRt": ResourceStatus.Stopped,
    "ds": ResourceStatus.Stopped,
    "dS": ResourceStatus.Stopped,
    "dT": ResourceStatus.Stopped,
    "dRs": ResourceStatus.Stopped,
    "dRS": ResourceStatus.Stopped,
    "dRT": ResourceStatus.Stopped,
    # finished (qstat -s z)
    "z": ResourceStatus.Deleted,
}


@pytest.mark.parametrize("state, status", sorted(STATE_TABLE.items()))
def test_state_table(state, status):
    assert ge.map_state(state) is status
    # and through a listing, as the poller sees it
    jobs = ge.parse_qstat_xml(listing(job(7, state)))
    assert jobs["7"].status is status and jobs["7"].state == state


def test_state_table_covers_every_documented_state():
    assert set(ge.DOCUMENTED_STATES) == set(STATE_TABLE)


@pytest.mark.parametrize("state", ["Eqw", "Ehqw", "EhRqw"])
def test_error_states_are_failures_for_the_operator(state):
    assert ge.parse_qstat_xml(listing(job(7, state)))["7"].failed


@pytest.mark.parametrize("state", ["r", "qw", "hqw", "dr", "s", "z"])
def test_other_states_are_not_failures(state):
    assert not ge.parse_qstat_xml(listing(job(7, state)))["7"].failed


@pytest.mark.parametrize("state", ["", "P", "qwX", "N", "running", "dP", "?"])
def test_unknown_state_says_nothing(state):
    assert ge.map_state(state) is None


def test_undocumented_combination_is_classified_by_its_letters():
    # qstat could print hRqw (no w) or dRtS; the rules decide by letters
    assert ge.map_state("hRqw") is ResourceStatus.Stopped
    assert ge.map_state("dRtS") is ResourceStatus.Stopped


# -- machine types ------------------------------------------------------------------------------


def test_machine_type_loads():
    kind = load(
        GridEngineMachineType,
        {
            "Walltime": "48:00:00",
            "Queue": "long",
            "ParallelEnvironment": "smp",
            "Slots": 8,
            "MemoryPerSlot": "2G",
            "MemFree": "16G",
            "Project": "cms",
            "SubmitOptions": {"short": {"l": "gpu=1"}, "long": {"ckpt": "blcr"}},
        },
        "site.MachineTypeConfiguration.m",
    )
    assert kind.walltime_seconds == 172800
    assert kind.slots(META) == 8


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({}, "Walltime"),
        ({"Walltime": "60"}, "Walltime: got '60'; expected hours:minutes:seconds"),
        ({"Walltime": "0:0:0"}, "above zero"),
        ({"Walltime": "1:00:00", "Queue": "a b"}, ".Queue: got 'a b'"),
        ({"Walltime": "1:00:00", "Queue": ""}, ".Queue: got ''"),
        (
            {"Walltime": "1:00:00", "ParallelEnvironment": "s,mp"},
            ".ParallelEnvironment",
        ),
        ({"Walltime": "1:00:00", "Project": "a b"}, ".Project"),
        ({"Walltime": "1:00:00", "Slots": 4}, "Slots: set without ParallelEnvironment"),
        (
            {"Walltime": "1:00:00", "ParallelEnvironment": "smp", "Slots": 0},
            "Slots: got 0",
        ),
        ({"Walltime": "1:00:00", "MemoryPerSlot": "4"}, "MemoryPerSlot: got '4'"),
        ({"Walltime": "1:00:00", "MemFree": "lots"}, "MemFree: got 'lots'"),
        (
            {"Walltime": "1:00:00", "SubmitOptions": {"short": {"q": "x"}}},
            "SubmitOptions.short.q: set by the adapter from Queue",
        ),
        (
            {"Walltime": "1:00:00", "SubmitOptions": {"long": {"pe": "mpi 4"}}},
            "SubmitOptions.long.pe: set by the adapter from ParallelEnvironment",
        ),
        (
            {"Walltime": "1:00:00", "SubmitOptions": {"short": {"V": None}}},
            "SubmitOptions.short.V: set by the adapter",
        ),
        (
            {"Walltime": "1:00:00", "SubmitOptions": {"long": {"sync": "y"}}},
            "SubmitOptions.long.sync",
        ),
        (
            {"Walltime": "1:00:00", "SubmitOptions": {"short": {"t": "1-10"}}},
            "SubmitOptions.short.t",
        ),
        (
            {"Walltime": "1:00:00", "SubmitOptions": {"short": {"l": "gpu=1,h_rt=9"}}},
            "SubmitOptions.short.l: requests h_rt, which the adapter sets from Walltime",
        ),
        (
            {"Walltime": "1:00:00", "SubmitOptions": {"short": {"l": "h_vmem=4G"}}},
            "from MemoryPerSlot",
        ),
        ({"Walltime": "1:00:00", "Partition": "x"}, "Partition"),
        (
            {"Walltime": "1:00:00", "SubmitOptions": {"long": {"hold_jid": "12"}}},
            "SubmitOptions.long.hold_jid: holds the job until other jobs end; a "
            "held drone is Stopped",
        ),
        (
            {"Walltime": "1:00:00", "SubmitOptions": {"short": {"h": None}}},
            "SubmitOptions.short.h: submits the job held",
        ),
    ],
)
def test_machine_type_errors_name_the_key(data, fragment):
    with pytest.raises(ConfigurationError) as error:
        load(GridEngineMachineType, data, "site.MachineTypeConfiguration.m")
    assert fragment in str(error.value)
    assert "site.MachineTypeConfiguration.m" in str(error.value)


def test_multi_core_drone_needs_a_parallel_environment():
    kind = machine_type(ParallelEnvironment=None)
    problems = kind.check_with(META, "s.MachineTypeConfiguration.m")
    assert len(problems) == 1
    assert problems[0].startswith("s.MachineTypeConfiguration.m.ParallelEnvironment:")
    assert "8 cores" in problems[0]
    one = MachineMetaData(Cores=1, Memory=2, Disk=10)
    assert kind.check_with(one, "p") == []


def test_memory_per_slot_must_cover_the_advertised_memory():
    assert machine_type(MemoryPerSlot="2G").check_with(META, "p") == []
    problems = machine_type(MemoryPerSlot="1G").check_with(META, "p")
    assert len(problems) == 1 and "p.MemoryPerSlot: got '1G' x 8 slots" in problems[0]
    # 1000-based units are smaller than 1024-based ones
    assert machine_type(MemoryPerSlot="2g").check_with(META, "p")


@pytest.mark.parametrize(
    "text, seconds",
    [("48:00:00", 172800), ("1::1", 3601), ("0:30:0", 1800), (":10:", 600)],
)
def test_walltime_formats(text, seconds):
    assert walltime_seconds(text) == seconds


@pytest.mark.parametrize("text", ["60", "1-00:00:00", "1h", "1:00", "", "a:b:c"])
def test_walltime_rejects(text):
    with pytest.raises(ValueError, match="hours:minutes:seconds"):
        walltime_seconds(text)


@pytest.mark.parametrize(
    "text, value",
    [("4G", 4 * 1024**3), ("3500M", 3500 * 1024**2), ("2.5G", int(2.5 * 1024**3)),
     ("4g", 4 * 10**9), ("512K", 512 * 1024)],
)  # fmt: skip
def test_memory_bytes(text, value):
    assert memory_bytes(text) == value


# -- check --probe -------------------------------------------------------------------------------


def test_probe_job_runs_a_shell_on_stdin_in_the_queue():
    words = shlex.split(ge.GridEngineDriver().probe_job_command(machine_type()))
    assert words[0] == "qrsh" and words[-2:] == ["/bin/sh", "-s"]
    assert after(words, "-now") == "no"
    assert after(words, "-q") == "long"
    assert after(words, "-N") == ge.PROBE_JOB_NAME
    assert after(words, "-l") == "h_rt=0:02:00"
