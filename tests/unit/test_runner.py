"""Batch commands under a deadline at both ends: nothing outlives the adapter's patience."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from tardis.exceptions.executorexceptions import CommandExecutionFailure
from tardis.utilities.attributedict import AttributeDict
from tardis.utilities.executors.shellexecutor import ShellExecutor

from tardis_netadapter.batch import runner


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


async def test_a_hung_command_is_killed_when_the_adapter_gives_up(tmp_path):
    """TARDIS's ShellExecutor leaves the child running; 13 piled up in 40 s."""
    pidfile = tmp_path / "pid"
    command = f"sh -c 'echo $$ > {pidfile}; exec sleep 60'"
    for _ in range(3):
        with pytest.raises(asyncio.TimeoutError):
            await runner.run(ShellExecutor(), command, timeout=0.3)
        pid = int(pidfile.read_text())
        deadline = time.monotonic() + 2
        while alive(pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not alive(pid), f"child {pid} outlived the timeout"


async def test_a_cancelled_call_kills_its_child(tmp_path):
    pidfile = tmp_path / "pid"
    command = f"sh -c 'echo $$ > {pidfile}; exec sleep 60'"
    task = asyncio.ensure_future(runner.run(ShellExecutor(), command, timeout=30))
    while not pidfile.exists() or not pidfile.read_text().strip():
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pid = int(pidfile.read_text())
    await asyncio.sleep(0.2)
    assert not alive(pid)


async def test_local_results_match_the_shell_executor():
    result = await runner.run(
        ShellExecutor(), "printf 'a\\n'; cat", timeout=5, stdin_input="b"
    )
    assert (result.stdout, result.exit_code) == ("a\nb", 0)
    with pytest.raises(CommandExecutionFailure) as info:
        await runner.run(ShellExecutor(), "echo out; echo err >&2; exit 3", timeout=5)
    assert (info.value.exit_code, info.value.stdout, info.value.stderr) == (
        3,
        "out",
        "err",
    )


async def test_undecodable_output_is_kept_not_raised():
    result = await runner.run(ShellExecutor(), "printf '\\377\\376 42\\n'", timeout=5)
    assert result.stdout.endswith("42")


async def test_exit_255_is_a_failure_even_where_shell_executor_calls_it_success():
    with pytest.raises(CommandExecutionFailure) as info:
        await runner.run(ShellExecutor(), "exit 255", timeout=5)
    assert info.value.exit_code == 255

    class Lenient:
        async def run_command(self, command, stdin_input=None):
            return AttributeDict(stdout="", stderr="ssh: lost", exit_code=255)

    with pytest.raises(CommandExecutionFailure):
        await runner.run(Lenient(), "squeue", timeout=5)


async def test_other_executors_are_waited_for_with_the_timeout():
    class Slow:
        async def run_command(self, command, stdin_input=None):
            await asyncio.sleep(5)

    with pytest.raises(asyncio.TimeoutError):
        await runner.run(Slow(), "squeue", timeout=0.05)


@pytest.mark.parametrize("timeout, remote", [(120, 110), (40, 30), (8, 6), (0.4, 0.3)])
def test_the_login_node_gives_up_first(timeout, remote):
    assert runner.remote_limit(timeout) == pytest.approx(remote)
    assert runner.limited("squeue --me", timeout).startswith(
        f"timeout -k 5 {remote:g} squeue"
    )


async def test_the_remote_limit_really_ends_the_command():
    started = time.monotonic()
    with pytest.raises(CommandExecutionFailure) as info:
        await runner.run(ShellExecutor(), runner.limited("sleep 30", 1.0), timeout=1.0)
    assert info.value.exit_code in runner.TIMED_OUT
    assert time.monotonic() - started < 1.0
