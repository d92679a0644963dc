"""The per-site SitePoller: one squeue per cycle, shared refreshes, the submission race."""

from __future__ import annotations

import asyncio

import pytest
from tardis.exceptions.executorexceptions import CommandExecutionFailure
from tardis.interfaces.siteadapter import ResourceStatus
from tardis.utilities.attributedict import AttributeDict

from tardis_netadapter.batch import SlurmDriver, slurm
from tardis_netadapter.batch import poller as batch_poller


class Clock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeExecutor:
    """Answers squeue from a job table; counts calls; optional latency and failures."""

    def __init__(self, jobs: dict[str, str] | None = None, latency: float = 0.0):
        self.jobs = dict(jobs or {})
        self.latency = latency
        self.commands: list[str] = []
        self.fail_with: Exception | None = None
        self.stdout_override: str | None = None

    async def run_command(self, command: str, stdin_input: str | None = None):
        self.commands.append(command)
        if self.latency:
            await asyncio.sleep(self.latency)
        if self.fail_with is not None:
            raise self.fail_with
        if self.stdout_override is not None:
            return AttributeDict(stdout=self.stdout_override, stderr="", exit_code=0)
        lines = [
            f"{i}|{state}|node|None|0:00|drone-{i}" for i, state in self.jobs.items()
        ]
        stdout = (
            "\n".join([batch_poller.LISTING_BEGIN, *lines, batch_poller.LISTING_END])
            + "\n"
        )
        return AttributeDict(stdout=stdout, stderr="", exit_code=0)


def listing(*lines: str) -> str:
    """squeue's lines between the poller's markers, as the login node prints them."""
    return (
        "\n".join([batch_poller.LISTING_BEGIN, *lines, batch_poller.LISTING_END]) + "\n"
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


def poller_for(executor, clock, **kwargs) -> batch_poller.SitePoller:
    return batch_poller.SitePoller(
        SlurmDriver(), executor, clock=clock, name="NetLab", **kwargs
    )


async def test_concurrent_callers_share_one_call(clock):
    executor = FakeExecutor({str(i): "RUNNING" for i in range(500)}, latency=0.01)
    poller = poller_for(executor, clock, max_age=30)
    snapshots = await asyncio.gather(*(poller.snapshot() for _ in range(500)))
    assert len(executor.commands) == 1
    assert all(s is snapshots[0] for s in snapshots)
    assert len(snapshots[0].jobs) == 500


async def test_snapshot_reused_until_max_age(clock):
    executor = FakeExecutor({"1": "RUNNING"})
    poller = poller_for(executor, clock, max_age=30)
    first = await poller.snapshot()
    clock.now += 29
    assert await poller.snapshot() is first
    assert len(executor.commands) == 1
    clock.now += 2
    second = await poller.snapshot()
    assert second is not first and len(executor.commands) == 2
    assert poller.calls == 2


async def test_one_call_per_cycle_over_many_cycles(clock):
    executor = FakeExecutor({str(i): "PENDING" for i in range(100)})
    poller = poller_for(executor, clock, max_age=10)
    for _cycle in range(5):
        await asyncio.gather(*(poller.snapshot() for _ in range(100)))
        clock.now += 11
    assert len(executor.commands) == 5


async def test_refresh_forces_a_newer_snapshot(clock):
    executor = FakeExecutor({"1": "RUNNING"})
    poller = poller_for(executor, clock, max_age=30)
    first = await poller.snapshot()
    clock.now += 1
    second = await poller.refresh()
    assert second.started > first.started and len(executor.commands) == 2


async def test_submitted_after_snapshot_start_is_booting_not_deleted(clock):
    executor = FakeExecutor({"1": "RUNNING"})
    poller = poller_for(executor, clock, max_age=30)
    snapshot = await poller.snapshot()  # started at t=1000
    clock.now += 1
    poller.note_submitted("2")  # sbatch returned at t=1001
    assert poller.status_of("2", snapshot) is ResourceStatus.Booting
    assert poller.status_of("1", snapshot) is ResourceStatus.Running
    # a snapshot that started after the submission and still lacks it: missing
    # once (undecided), gone when the next listing misses it too
    clock.now += 31
    later = await poller.snapshot()
    assert poller.status_of("2", later) is None
    clock.now += 31
    assert poller.status_of("2", await poller.snapshot()) is ResourceStatus.Deleted


async def test_submission_seen_then_missing_is_deleted(clock):
    executor = FakeExecutor({"7": "PENDING"})
    poller = poller_for(executor, clock, max_age=0.5)
    poller.note_submitted("7", at=clock.now - 1)
    snapshot = await poller.snapshot()
    assert poller.status_of("7", snapshot) is ResourceStatus.Booting
    del executor.jobs["7"]
    executor.jobs["8"] = "RUNNING"  # an empty listing would not be believed
    clock.now += 1
    assert poller.status_of("7", await poller.snapshot()) is None
    clock.now += 1
    assert poller.status_of("7", await poller.snapshot()) is ResourceStatus.Deleted


async def test_unknown_job_without_submission_is_deleted(clock):
    poller = poller_for(FakeExecutor({}), clock)
    snapshot = await poller.snapshot()
    assert poller.status_of("99", snapshot) is None  # missing once: undecided
    assert poller.status_of("99", snapshot) is None  # the same listing again
    clock.now += 31
    assert poller.status_of("99", await poller.snapshot()) is ResourceStatus.Deleted
    assert poller.status_of(None, snapshot) is ResourceStatus.Deleted


async def test_failure_reaches_every_waiter_and_is_not_retried_at_once(clock):
    executor = FakeExecutor({"1": "RUNNING"}, latency=0.01)
    executor.fail_with = CommandExecutionFailure(
        message="squeue failed", exit_code=1, stdout="", stderr="slurm down"
    )
    poller = poller_for(executor, clock, max_age=30, retry_after=5)
    results = await asyncio.gather(
        *(poller.snapshot() for _ in range(50)), return_exceptions=True
    )
    assert all(isinstance(r, CommandExecutionFailure) for r in results)
    assert len(executor.commands) == 1
    clock.now += 1
    with pytest.raises(batch_poller.StatusUnavailable):
        await poller.snapshot()
    assert len(executor.commands) == 1
    executor.fail_with = None
    clock.now += 5
    assert "1" in (await poller.snapshot()).jobs
    assert len(executor.commands) == 2


async def test_stale_snapshot_survives_a_failed_refresh_for_forced_callers(clock):
    executor = FakeExecutor({"1": "RUNNING"})
    poller = poller_for(executor, clock, max_age=30)
    await poller.snapshot()
    executor.fail_with = OSError("connection refused")
    clock.now += 1
    with pytest.raises(OSError):
        await poller.refresh()


async def test_timeout_applies(clock):
    poller = poller_for(FakeExecutor({}, latency=0.2), clock, timeout=0.01)
    with pytest.raises(asyncio.TimeoutError):
        await poller.snapshot()


async def test_garbage_is_an_error_not_an_empty_queue(clock):
    executor = FakeExecutor()
    executor.stdout_override = listing(
        "slurm_load_jobs error: Socket timed out on send/recv"
    )
    poller = poller_for(executor, clock)
    with pytest.raises(slurm.SlurmOutputError):
        await poller.snapshot()


async def test_by_name_finds_newest_job(clock):
    executor = FakeExecutor()
    executor.stdout_override = listing(
        "9|COMPLETED|n|None|0:00|netlab-x",
        "10|PENDING||None|0:00|netlab-x",
        "11|RUNNING|n|None|0:00|other",
    )
    snapshot = await poller_for(executor, clock).snapshot()
    assert snapshot.by_name("netlab-x").job_id == "10"
    assert snapshot.by_name("nope") is None


class HeartbeatProbe:
    """What the connectivity monitor will add: data gathered in the same call."""

    name = "heartbeats"
    command = "cat ~/.tardis-netadapter/heartbeats/* 2>/dev/null || true"

    def parse(self, text: str) -> dict[str, str]:
        return dict(line.split(" ", 1) for line in text.splitlines() if line)


async def test_probe_extends_the_same_executor_call(clock):
    executor = FakeExecutor()
    probe = HeartbeatProbe()
    poller = poller_for(executor, clock, probes=[probe])
    marker = batch_poller._MARKER.format("heartbeats")
    executor.stdout_override = (
        listing("5|RUNNING|n|None|0:00|netlab-a")
        + f"{marker}\nnetlab-a 1700000000\nnetlab-b 1700000003\n"
    )
    snapshot = await poller.snapshot()
    assert len(executor.commands) == 1
    command = executor.commands[0]
    assert slurm.squeue_command() + " && " in command
    assert probe.command in command
    assert list(snapshot.jobs) == ["5"]
    assert snapshot.extras["heartbeats"] == {
        "netlab-a": "1700000000",
        "netlab-b": "1700000003",
    }


def test_probe_command_is_valid_shell(tmp_path):
    import subprocess

    poller = batch_poller.SitePoller(
        SlurmDriver(), FakeExecutor(), probes=[HeartbeatProbe()]
    )
    result = subprocess.run(
        ["bash", "-n", "-c", poller.command()], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


async def test_a_cancelled_caller_does_not_cancel_the_shared_refresh(clock):
    executor = FakeExecutor({"1": "RUNNING"}, latency=0.05)
    poller = poller_for(executor, clock)
    impatient = asyncio.ensure_future(poller.snapshot())
    patient = asyncio.ensure_future(poller.snapshot())
    await asyncio.sleep(0.01)
    impatient.cancel()
    snapshot = await patient
    assert "1" in snapshot.jobs and len(executor.commands) == 1
    assert impatient.cancelled()


# -- a listing that lies ---------------------------------------------------------


async def test_an_empty_listing_while_jobs_run_is_not_believed(clock):
    """A login node's hiccup (nothing printed, exit 0) must not end every drone."""
    executor = FakeExecutor({"1": "RUNNING", "2": "PENDING"})
    poller = poller_for(executor, clock, max_age=30, trust_empty_after=600)
    await poller.snapshot()
    executor.jobs.clear()
    clock.now += 31
    with pytest.raises(
        batch_poller.ListingUntrusted, match="no jobs while 2 were active"
    ):
        await poller.snapshot()
    clock.now += 300
    with pytest.raises(batch_poller.ListingUntrusted):
        await poller.refresh()
    # an emptiness that lasts longer than Slurm keeps finished jobs is believed
    clock.now += 301
    assert (await poller.refresh()).jobs == {}


async def test_an_empty_listing_without_active_jobs_is_believed(clock):
    executor = FakeExecutor({"1": "COMPLETED"})
    poller = poller_for(executor, clock, max_age=30)
    await poller.snapshot()
    executor.jobs.clear()
    clock.now += 31
    assert (await poller.snapshot()).jobs == {}


async def test_output_cut_short_is_not_trusted(clock):
    executor = FakeExecutor()
    executor.stdout_override = (
        f"{batch_poller.LISTING_BEGIN}\n5|RUNNING|n|None|0:00|d\n"
    )
    with pytest.raises(batch_poller.ListingUntrusted, match="cut short"):
        await poller_for(executor, clock).snapshot()


async def test_a_login_banner_before_the_listing_is_ignored(clock):
    executor = FakeExecutor()
    executor.stdout_override = "Welcome to JURECA!\n" + listing(
        "5|RUNNING|n|None|0:00|d"
    )
    snapshot = await poller_for(executor, clock).snapshot()
    assert list(snapshot.jobs) == ["5"]


async def test_an_unknown_state_is_undecided_and_warned_once(clock, caplog):
    executor = FakeExecutor({"5": "HIBERNATING"})
    poller = poller_for(executor, clock, max_age=0)
    for _ in range(3):
        clock.now += 1
        assert poller.status_of("5", await poller.snapshot()) is None
    warnings = [r for r in caplog.records if "HIBERNATING" in r.getMessage()]
    assert len(warnings) == 1


async def test_the_squeue_runs_under_a_time_limit_on_the_login_node(clock):
    poller = poller_for(FakeExecutor(), clock, timeout=40)
    assert "timeout -k 5 30 squeue" in poller.command()


async def test_a_job_that_ended_in_a_failure_state_is_warned_once(clock, caplog):
    executor = FakeExecutor({"42": "OUT_OF_MEMORY", "43": "RUNNING"})
    poller = poller_for(executor, clock, max_age=0)
    for _ in range(2):
        clock.now += 1
        assert poller.status_of("42", await poller.snapshot()) is ResourceStatus.Deleted
    warnings = [
        r.getMessage() for r in caplog.records if "OUT_OF_MEMORY" in r.getMessage()
    ]
    assert warnings == ["NetLab: job 42 (drone-42) ended in Slurm state OUT_OF_MEMORY"]
