"""NetGridEngine against real Grid Engine 8.1.9 output recorded in the lab.

tests/unit/data/gridengine/ holds what the real qstat -xml, qsub -terse and
qdel printed (README.txt there says how each was made). Every job of every
recording must come out in the state the documented table (docs/adapter.md)
gives; the recordings are also run through the batch-neutral poller as the
adapter does, with the driver's clock line in front.
"""

from __future__ import annotations

import calendar
from pathlib import Path

import pytest
from tardis.interfaces.siteadapter import ResourceStatus
from tardis.utilities.attributedict import AttributeDict

from tardis_netadapter.batch import gridengine as ge
from tardis_netadapter.batch.poller import LISTING_BEGIN, LISTING_END, SitePoller

DATA = Path(__file__).parent / "data" / "gridengine"
#: the clock line the driver's listing starts with: 2026-12-01T21:00:00 UTC
NOW = calendar.timegm((2026, 12, 1, 21, 0, 0, 0, 0, 0))

B, R, S, E, D = (
    ResourceStatus.Booting,
    ResourceStatus.Running,
    ResourceStatus.Stopped,
    ResourceStatus.Error,
    ResourceStatus.Deleted,
)

#: per recording: job id -> (Grid Engine state, ResourceStatus), from README.txt
EXPECTED = {
    "empty.xml": {},
    "running_hqw.xml": {"2": ("r", R), "3": ("hqw", S)},
    "qw.xml": {
        "2": ("r", R), "4": ("r", R), "5": ("r", R), "6": ("r", R),
        "7": ("qw", B), "8": ("qw", B), "3": ("hqw", S),
    },
    "eqw.xml": {
        "7": ("Eqw", E), "2": ("r", R), "4": ("r", R), "5": ("r", R),
        "8": ("r", R), "3": ("hqw", S),
    },
    "suspended_held.xml": {
        "2": ("s", S), "4": ("S", S), "8": ("S", S), "5": ("hr", R),
        "7": ("Eqw", E), "3": ("hqw", S),
    },
    "deleting_dhr.xml": {
        "5": ("dhr", S), "2": ("s", S), "4": ("S", S), "8": ("S", S),
        "7": ("Eqw", E), "3": ("hqw", S),
    },
    "transferring.xml": {
        "3": ("t", B), "4": ("r", R), "2": ("s", S), "5": ("dhr", S),
        "7": ("Eqw", E),
    },
    "deleting_dr_ds.xml": {
        "4": ("dr", S), "2": ("ds", S), "3": ("t", B), "5": ("dhr", S),
        "7": ("Eqw", E),
    },
    "array.xml": {"12": ("r", R)},
    "all_users.xml": {"13": ("r", R), "14": ("r", R)},
    "own_user.xml": {"14": ("r", R)},
    "zombie.xml": {"1": ("z", D)},
    "rescheduled_Rq.xml": {"1": ("Rq", B)},
    "rescheduled_Rr.xml": {"1": ("Rr", R)},
}  # fmt: skip


def recording(name: str) -> str:
    return (DATA / name).read_text()


def listing(name: str) -> str:
    """The recording as the driver's listing prints it: the clock line first."""
    return f"{NOW}\n{recording(name)}"


def test_every_recording_has_expectations():
    assert {path.name for path in DATA.glob("*.xml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recorded_listing_maps_as_documented(name):
    jobs = ge.parse_qstat_xml(listing(name))
    assert {
        job_id: (job.state, job.status) for job_id, job in jobs.items()
    } == EXPECTED[name]
    for job in jobs.values():
        assert job.failed == (job.status is ResourceStatus.Error)
        if job.status is ResourceStatus.Running:
            assert job.nodes.startswith("all.q@worker")
            assert job.elapsed is not None and 0 < job.elapsed < 3600
        else:
            assert job.elapsed is None


def test_elapsed_is_the_clock_minus_the_recorded_start():
    job = ge.parse_qstat_xml(listing("suspended_held.xml"))["5"]
    start = (DATA / "suspended_held.xml").read_text()
    start = start.split("<JB_job_number>5</JB_job_number>")[1]
    start = start.split("<JAT_start_time>")[1].split("<")[0]
    assert job.elapsed == NOW - ge.parse_time(start)


def test_names_come_from_the_recording():
    jobs = ge.parse_qstat_xml(listing("eqw.xml"))
    assert jobs["7"].name == "eqw-job" and jobs["3"].name == "hqw-job"


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - {"empty.xml"}))
def test_a_recording_cut_short_is_not_trusted(name):
    text = listing(name)
    with pytest.raises(ge.BatchOutputError):
        ge.parse_qstat_xml(text[: len(text) * 2 // 3])


def test_a_recording_without_the_clock_line_is_not_trusted():
    with pytest.raises(ge.BatchOutputError, match="clock"):
        ge.parse_qstat_xml(recording("qw.xml"))


def test_recorded_qsub_terse_answers():
    lines = (DATA / "qsub_terse.txt").read_text().splitlines()
    assert ge.parse_qsub_output(lines[0]) == "9"
    assert ge.parse_qsub_output(lines[1]) == "10"
    with pytest.raises(ge.BatchOutputError):  # plain qsub: not -terse
        ge.parse_qsub_output(lines[2])


def test_recorded_qdel_wording():
    driver = ge.GridEngineDriver()
    lines = (DATA / "qdel_gone.txt").read_text().splitlines()
    gone = [line for line in lines if driver.already_gone(line)]
    assert gone == [
        'denied: job "3" does not exist',
        'denied: job "99999" does not exist',
    ]


class RecordingExecutor:
    """A login node that answers the listing with one recording after another."""

    def __init__(self, *names: str):
        self.names = list(names)
        self.commands: list[str] = []

    async def run_command(self, command: str, stdin_input: str | None = None):
        self.commands.append(command)
        body = listing(self.names.pop(0))
        stdout = f"Welcome to login\n{LISTING_BEGIN}\n{body}{LISTING_END}\n"
        return AttributeDict(stdout=stdout, stderr="", exit_code=0)


async def test_poller_follows_a_drone_through_the_recordings():
    """Job 3 of the lab: held (hqw), released and transferring (t), then gone."""
    executor = RecordingExecutor(
        "running_hqw.xml", "transferring.xml", "empty.xml", "empty.xml"
    )
    clock = [100.0]
    poller = SitePoller(
        ge.GridEngineDriver(),
        executor,
        max_age=10,
        clock=lambda: clock[0],
        trust_empty_after=0,
    )
    seen = []
    for _ in range(4):
        snapshot = await poller.snapshot()
        seen.append(poller.status_of("3", snapshot))
        clock[0] += 20
    # gone only once a second listing misses it
    assert seen == [ResourceStatus.Stopped, ResourceStatus.Booting, None, D]
    assert len(executor.commands) == 4
    assert "qstat -xml -s prsz" in executor.commands[0]


def test_the_drivers_exact_listing_over_ssh():
    """What the lab's login node printed for the driver's listing command, run
    over a non-interactive ssh as the drone user: clock line, then a finished
    job as a zombie, which ends its drone at once."""
    text = (DATA / "listing_over_ssh_zombie.txt").read_text()
    assert text.split("\n", 1)[0].isdigit()
    jobs = ge.parse_qstat_xml(text)
    assert {k: (j.state, j.status, j.name) for k, j in jobs.items()} == {
        "1": ("z", D, "zjob")
    }
    assert jobs["1"].final and jobs["1"].elapsed is None


def qdel_calls(name: str) -> list[tuple[str, int]]:
    """(stdout, exit status) of each qdel call in a recording."""
    calls = []
    for block in (DATA / name).read_text().split("--- ")[1:]:
        stdout = block.split("stdout:\n", 1)[1].split("stderr:", 1)[0].strip()
        status = int(block.rsplit("exit status:", 1)[1].strip())
        calls.append((stdout, status))
    return calls


def test_recorded_qdel_of_a_finished_job_is_already_gone():
    driver = ge.GridEngineDriver()
    ((stdout, status),) = qdel_calls("qdel_finished.txt")
    assert status == 1 and driver.already_gone(stdout)


def test_recorded_qdel_twice():
    """A first qdel is a cancel, not "gone"; the second and third say gone
    (the second with exit status 0, so the adapter never even asks)."""
    driver = ge.GridEngineDriver()
    calls = qdel_calls("qdel_twice.txt")
    assert [status for _, status in calls] == [0, 0, 1]
    assert [driver.already_gone(stdout) for stdout, _ in calls] == [False, True, True]
