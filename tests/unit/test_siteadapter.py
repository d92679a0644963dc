"""NetSlurmAdapter: configuration at start, submission, status, scancel, exception mapping."""

from __future__ import annotations

import asyncio
import sys

import asyncssh
import pytest
from fakesite import (
    NETWORK,
    drone,
    first_command,
    site_section,
)
from tardis.agents.siteagent import SiteAgent
from tardis.exceptions.executorexceptions import (
    CommandExecutionFailure,
    ExecutorFailure,
)
from tardis.exceptions.tardisexceptions import (
    TardisError,
    TardisResourceStatusUpdateFailed,
    TardisTimeout,
)
from tardis.interfaces.siteadapter import ResourceStatus
from tardis.utilities.attributedict import AttributeDict

from tardis_netadapter import siteadapter
from tardis_netadapter.batch import slurm
from tardis_netadapter.batch.poller import StatusUnavailable
from tardis_netadapter.failures import StatusUndecided
from tardis_netadapter.schema import ConfigurationError
from tardis_netadapter.siteadapter import NetadapterTimeout, NetSlurmAdapter

# -- start: validation and rendering -------------------------------------------


def test_validated_and_rendered_once_per_site_and_machine_type(
    configure, executor, renders
):
    configure(site_section(executor))
    first = NetSlurmAdapter(machine_type="small", site_name="NetLab")
    second = NetSlurmAdapter(machine_type="small", site_name="NetLab")
    large = NetSlurmAdapter(machine_type="large", site_name="NetLab")
    assert renders == [("NetLab", "small"), ("NetLab", "large")]
    assert first.settings is second.settings is large.settings
    assert first.poller is second.poller is large.poller
    assert siteadapter.site_poller("NetLab") is first.poller


def test_bad_network_profile_stops_at_start_naming_the_key(configure, executor):
    configure(
        site_section(executor, Network={**NETWORK, "firewall": {"idle_timeout": 0}})
    )
    with pytest.raises(
        ConfigurationError, match=r"NetLab\.Network\.firewall\.idle_timeout"
    ):
        NetSlurmAdapter(machine_type="small", site_name="NetLab")


def test_missing_network_profile(configure, executor):
    section = site_section(executor)
    del section["Network"]
    configure(section)
    with pytest.raises(ConfigurationError, match=r"NetLab\.Network: required"):
        NetSlurmAdapter(machine_type="small", site_name="NetLab")


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"bulk_size": 10}, "NetLab.bulk_size: unknown key"),
        (
            {
                "MachineTypeConfiguration": {
                    "small": {"Partition": "x"},
                    "large": {"Walltime": 1},
                }
            },
            "NetLab.MachineTypeConfiguration.small.Walltime: missing; required",
        ),
        (
            {
                "MachineMetaData": {
                    "small": {"Cores": 2, "Memory": 4},
                    "large": {"Cores": 1, "Memory": 1, "Disk": 1},
                }
            },
            "NetLab.MachineMetaData.small.Disk: missing; required",
        ),
        ({"status_max_age": -1}, "NetLab.status_max_age: got -1"),
        ({"MachineTypes": []}, "NetLab.MachineTypes: got []"),
    ],
)
def test_bad_site_section_names_the_key(configure, executor, overrides, fragment):
    configure(site_section(executor, **overrides))
    with pytest.raises(ConfigurationError) as info:
        NetSlurmAdapter(machine_type="small", site_name="NetLab")
    assert fragment in str(info.value)


def test_machine_type_config_for_unlisted_type(configure, executor):
    section = site_section(executor, MachineTypes=["small"])
    configure(section)
    with pytest.raises(
        ConfigurationError, match=r"NetLab\.MachineTypeConfiguration\.large: not in"
    ):
        NetSlurmAdapter(machine_type="small", site_name="NetLab")


def test_render_failure_stops_at_start(configure, executor, monkeypatch):
    def broken(*args, **kwargs):
        raise ConfigurationError(["NetLab.Network.chain.tool: cannot render"])

    monkeypatch.setattr(
        sys.modules["tardis_netadapter.render"], "render_drone_script", broken
    )
    configure(site_section(executor))
    with pytest.raises(ConfigurationError, match="cannot render"):
        NetSlurmAdapter(machine_type="small", site_name="NetLab")


# -- submission ---------------------------------------------------------------


async def test_deploy_submits_script_on_stdin(adapter, executor):
    result = await adapter.deploy_resource(drone())
    assert result == AttributeDict(
        remote_resource_uuid="100", resource_status=ResourceStatus.Booting
    )
    # the listing that makes sure the drone has no job yet, then sbatch
    (_, (command, stdin)) = executor.calls
    assert executor.count("squeue") == 1
    words = first_command(command)
    assert words[:2] == ["sbatch", "--parsable"]
    assert "--job-name=netlab-0123456789" in words
    assert words[words.index("-p") + 1] == "batch"
    assert words[words.index("-t") + 1] == "60"
    assert "--mem=4096M" in words
    export = next(w for w in words if w.startswith("--export="))
    assert "TardisDroneUuid=netlab-0123456789" in export
    assert "TardisDroneMemory=4096" in export and "TardisDroneDisk=10485760" in export
    assert "TardisDroneWalltime=3600" in export
    assert stdin.startswith("#!/bin/bash\n# NetLab small socks")


async def test_hostile_submit_options_stay_quoted(configure, executor):
    configure(site_section(executor))
    large = NetSlurmAdapter(machine_type="large", site_name="NetLab")
    await large.deploy_resource(drone())
    words = first_command(executor.calls[-1][0])
    assert "--account=a b;rm -rf /" in words


@pytest.mark.parametrize(
    "stdout, job_id",
    [("4242;jureca", "4242"), ("Submitted batch job 77", "77"), ("warn\n88\n\n", "88")],
)
async def test_deploy_parses_every_sbatch_shape(adapter, executor, stdout, job_id):
    executor.sbatch_stdout = stdout
    assert (await adapter.deploy_resource(drone())).remote_resource_uuid == job_id


async def test_unreadable_sbatch_output_recovers_job_by_name(adapter, executor):
    executor.sbatch_stdout = "site wrapper says hello"
    result = await adapter.deploy_resource(drone("netlab-aaaaaaaaaa"))
    assert result.remote_resource_uuid == "100"
    # one listing before sbatch, one fresh listing to find the job by name
    assert executor.count("squeue") == 2


async def test_unreadable_sbatch_output_without_job_keeps_looking(adapter, executor):
    """No job found by name yet: the drone stays Booting, without a job id, not Down."""
    real = executor.run_command

    async def sbatch_lost(command, stdin_input=None):
        if first_command(command)[0] == "sbatch":
            executor.calls.append((command, stdin_input))
            return AttributeDict(stdout="garbage", stderr="odd", exit_code=0)
        return await real(command, stdin_input)

    executor.run_command = sbatch_lost
    result = await SiteAgent(adapter).deploy_resource(drone())
    assert result.remote_resource_uuid is None
    assert result.resource_status is ResourceStatus.Booting
    # while the job could still appear, its status is undecided, not Deleted
    with pytest.raises(TardisResourceStatusUpdateFailed):
        await SiteAgent(adapter).resource_status(drone())


# -- status -------------------------------------------------------------------


async def test_status_of_many_drones_is_one_squeue(configure, executor):
    configure(site_section(executor))
    small = NetSlurmAdapter(machine_type="small", site_name="NetLab")
    large = NetSlurmAdapter(machine_type="large", site_name="NetLab")
    drones = []
    for index in range(20):
        adapter = small if index % 2 else large
        drones.append(
            (adapter, await adapter.deploy_resource(drone(f"netlab-{index:010d}")))
        )
    for job_id in list(executor.jobs)[:10]:
        executor.jobs[job_id] = executor.jobs[job_id].replace("PENDING", "RUNNING")
    small.poller.max_age = 0  # the deploys' listing is too old for this cycle
    before = executor.count("squeue")
    results = await asyncio.gather(
        *(
            SiteAgent(a).resource_status(
                AttributeDict(remote_resource_uuid=r.remote_resource_uuid)
            )
            for a, r in drones
        )
    )
    assert executor.count("squeue") == before + 1
    statuses = [r.resource_status for r in results]
    assert statuses == [ResourceStatus.Running] * 10 + [ResourceStatus.Booting] * 10


async def test_finished_and_vanished_jobs(adapter, executor):
    executor.jobs.update({"5": "OUT_OF_MEMORY|x", "6": "COMPLETED|y"})
    for job_id in ("5", "6"):
        status = await adapter.resource_status(drone(job_id=job_id))
        assert status.resource_status is ResourceStatus.Deleted
    # squeue forgot job 7: not gone on one listing's word...
    with pytest.raises(StatusUndecided):
        await adapter.resource_status(drone(job_id="7"))
    # ...but gone once a later listing misses it too
    adapter.poller.max_age = 0
    status = await adapter.resource_status(drone(job_id="7"))
    assert status.resource_status is ResourceStatus.Deleted


async def test_new_job_missing_from_an_older_snapshot_is_booting(adapter, executor):
    executor.jobs["1"] = "RUNNING|d"
    await adapter.resource_status(drone(job_id="1"))  # snapshot taken, cached
    deployed = await adapter.deploy_resource(drone())
    del executor.jobs[deployed.remote_resource_uuid]  # even if squeue lags
    status = await adapter.resource_status(drone(job_id=deployed.remote_resource_uuid))
    assert status.resource_status is ResourceStatus.Booting
    assert executor.count("squeue") == 1


async def test_restored_integer_job_id(adapter, executor):
    executor.jobs["123"] = "RUNNING|d"
    status = await adapter.resource_status(drone(job_id=123))
    assert status.resource_status is ResourceStatus.Running


# -- stop / terminate ---------------------------------------------------------


async def test_terminate_runs_scancel_with_options(configure, executor):
    configure(site_section(executor))
    large = NetSlurmAdapter(machine_type="large", site_name="NetLab")
    executor.jobs["31"] = "RUNNING|d"
    await large.terminate_resource(drone(job_id="31"))
    assert first_command(executor.calls[-1][0]) == ["scancel", "--full", "31"]
    assert executor.jobs["31"].startswith("CANCELLED")


async def test_scancel_of_finished_job_does_not_raise(adapter, executor):
    executor.jobs["32"] = "COMPLETED|d"
    await SiteAgent(adapter).terminate_resource(drone(job_id="32"))
    await SiteAgent(adapter).stop_resource(drone(job_id="404"))
    assert executor.count("scancel") == 2


async def test_scancel_other_failure_is_retried(adapter, executor):
    executor.fail = CommandExecutionFailure(
        message="x",
        exit_code=1,
        stdout="",
        stderr="scancel: error: Unable to contact slurm controller",
    )
    with pytest.raises(TardisResourceStatusUpdateFailed):
        await SiteAgent(adapter).terminate_resource(drone(job_id="33"))


# -- exception mapping ----------------------------------------------------------

TRANSIENT = [
    (
        CommandExecutionFailure(message="m", exit_code=1, stdout="o", stderr="e"),
        TardisResourceStatusUpdateFailed,
    ),
    (
        ExecutorFailure(description="SSH connection lost", executor=None),
        TardisResourceStatusUpdateFailed,
    ),
    (asyncssh.DisconnectError(11, "bye"), TardisResourceStatusUpdateFailed),
    (asyncssh.ConnectionLost("lost"), TardisResourceStatusUpdateFailed),
    (asyncssh.ChannelOpenError(2, "no"), TardisResourceStatusUpdateFailed),
    (asyncssh.PermissionDenied("no"), TardisResourceStatusUpdateFailed),
    (ConnectionRefusedError(111, "refused"), TardisResourceStatusUpdateFailed),
    (ConnectionResetError(), TardisResourceStatusUpdateFailed),
    (BrokenPipeError(), TardisResourceStatusUpdateFailed),
    (OSError(113, "No route to host"), TardisResourceStatusUpdateFailed),
    (EOFError(), TardisResourceStatusUpdateFailed),
    (asyncio.TimeoutError(), TardisTimeout),
    (slurm.SlurmOutputError("no id", "out", "err"), TardisResourceStatusUpdateFailed),
    (StatusUnavailable("later"), TardisResourceStatusUpdateFailed),
    (
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"),
        TardisResourceStatusUpdateFailed,
    ),
    (TardisResourceStatusUpdateFailed("passed"), TardisResourceStatusUpdateFailed),
    (TardisTimeout("passed"), TardisTimeout),
]


@pytest.mark.parametrize("raised, expected", TRANSIENT, ids=lambda x: type(x).__name__)
def test_transient_failures_become_retryable(adapter, raised, expected, caplog):
    with pytest.raises(expected) as info, adapter.handle_exceptions():
        raise raised
    assert type(info.value) is not TardisError
    if not isinstance(raised, (TardisResourceStatusUpdateFailed, TardisTimeout)):
        assert "NetLab" in caplog.text


def test_timeouts_are_caught_by_every_tardis_state(adapter):
    with pytest.raises(NetadapterTimeout) as info, adapter.handle_exceptions():
        raise asyncio.TimeoutError()
    # RequestState/resource_status catch TardisTimeout; ShutDown/Cleanup only this:
    assert isinstance(info.value, TardisResourceStatusUpdateFailed)


def test_unknown_errors_are_retried_not_fatal(adapter, caplog):
    """A bare TardisError would stop the COBalD daemon: a bug is logged and retried."""
    with (
        pytest.raises(TardisResourceStatusUpdateFailed),
        adapter.handle_exceptions(),
    ):
        raise KeyError("a bug")
    assert "KeyError: 'a bug'" in caplog.text  # with its traceback


def test_failure_log_has_no_script(adapter, caplog):
    failure = CommandExecutionFailure(
        message="m",
        exit_code=1,
        stdout="",
        stderr="sbatch: error",
        stdin="#!/bin/bash\nSECRET-SCRIPT",
    )
    with pytest.raises(TardisResourceStatusUpdateFailed), adapter.handle_exceptions():
        raise failure
    assert "SECRET-SCRIPT" not in caplog.text and "sbatch: error" in caplog.text


async def test_ssh_drop_during_status_does_not_escape(adapter, executor):
    executor.fail = ExecutorFailure(
        description="SSH connection lost", executor=executor
    )
    with pytest.raises(TardisResourceStatusUpdateFailed):
        await SiteAgent(adapter).resource_status(drone(job_id="1"))
    # and the next cycle works again once the login node is back
    executor.fail = None
    executor.jobs["1"] = "RUNNING|d"
    adapter.poller._failure = None
    status = await SiteAgent(adapter).resource_status(drone(job_id="1"))
    assert status.resource_status is ResourceStatus.Running


async def test_command_timeout(configure, executor):
    configure(site_section(executor, command_timeout=0.01, status_max_age=5))
    adapter = NetSlurmAdapter(machine_type="small", site_name="NetLab")
    executor.latency = 0.2
    with pytest.raises(TardisTimeout):
        await SiteAgent(adapter).deploy_resource(drone())
    with pytest.raises(TardisTimeout):
        await SiteAgent(adapter).resource_status(drone(job_id="1"))


def test_a_shared_failure_is_warned_once_not_per_drone(adapter, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    error = ConnectionRefusedError(111, "refused")
    for _ in range(3):
        with (
            pytest.raises(TardisResourceStatusUpdateFailed),
            adapter.handle_exceptions(),
        ):
            raise error
    try:
        raise StatusUnavailable("later") from error
    except StatusUnavailable as later:
        with (
            pytest.raises(TardisResourceStatusUpdateFailed),
            adapter.handle_exceptions(),
        ):
            raise later
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "refused" in warnings[0].getMessage()
    with pytest.raises(TardisResourceStatusUpdateFailed), adapter.handle_exceptions():
        raise ConnectionRefusedError(111, "refused again")
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


# -- never lose a drone ----------------------------------------------------------


async def test_a_drone_that_already_has_a_job_is_adopted_not_submitted_again(
    adapter, executor, caplog
):
    """A daemon restarted while sbatch was in flight finds the job by its name."""
    executor.jobs["77"] = "PENDING|netlab-0123456789"
    result = await adapter.deploy_resource(drone())
    assert result.remote_resource_uuid == "77"
    assert executor.count("sbatch") == 0
    assert "netlab-0123456789" in caplog.text and "77" in caplog.text


async def test_a_timed_out_sbatch_is_found_by_name_later(configure, executor):
    configure(site_section(executor, command_timeout=0.2))
    adapter = NetSlurmAdapter(machine_type="small", site_name="NetLab")
    real = executor.run_command

    async def submits_then_hangs(command, stdin_input=None):
        result = await real(command, stdin_input)
        if first_command(command)[0] == "sbatch":
            await asyncio.sleep(5)  # the job exists, the answer never comes
        return result

    executor.run_command = submits_then_hangs
    result = await SiteAgent(adapter).deploy_resource(drone())
    # found by name in the fresh listing right after the timeout
    assert result.remote_resource_uuid == "100"
    assert executor.count("sbatch") == 1


async def test_an_unresolved_drone_is_not_cancelled_as_done_while_its_job_may_appear(
    adapter, executor
):
    adapter.site.unresolved["netlab-0123456789"] = adapter.poller.clock() + 60
    with pytest.raises(StatusUndecided):
        await adapter.terminate_resource(drone())
    executor.jobs["55"] = "PENDING|netlab-0123456789"
    adapter.poller.max_age = 0
    await adapter.terminate_resource(drone())
    assert executor.jobs["55"].startswith("CANCELLED")


async def test_a_site_whose_drones_die_young_is_braked(configure, executor):
    """Drones that end at once trip the brake: deploys are refused, nothing submitted."""
    from tardis_netadapter.brake import SiteBraked

    configure(site_section(executor, brake={"after": 2, "backoff": 60}))
    adapter = NetSlurmAdapter(machine_type="small", site_name="NetLab")
    adapter.poller.max_age = 0
    for index in range(2):
        uuid = f"netlab-dead{index:06d}"
        deployed = await adapter.deploy_resource(drone(uuid))
        executor.jobs[deployed.remote_resource_uuid] = f"FAILED|{uuid}"
        status = await adapter.resource_status(
            drone(uuid, job_id=deployed.remote_resource_uuid)
        )
        assert status.resource_status is ResourceStatus.Deleted
    submitted = executor.count("sbatch")
    with pytest.raises(SiteBraked) as info:
        await SiteAgent(adapter).deploy_resource(drone("netlab-0000000009"))
    assert "2 drones in a row died young" in str(info.value)
    assert executor.count("sbatch") == submitted
