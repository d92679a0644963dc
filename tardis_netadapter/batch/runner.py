"""Running one batch command on the login node under a deadline that holds at both ends.

Why not just ``asyncio.wait_for(executor.run_command(...))``: giving up on a
call does not end it. TARDIS's ShellExecutor leaves its child running (a hung
squeue left 13 stuck processes in 40 s), and over SSH the remote command runs
on after the channel is abandoned. So every batch command gets a ``timeout``
of its own on the login node, a little shorter than the adapter's, and with
TARDIS's local ShellExecutor the child's whole process group is killed when
the adapter stops waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any, Optional

from tardis.exceptions.executorexceptions import CommandExecutionFailure
from tardis.interfaces.executor import Executor
from tardis.utilities.attributedict import AttributeDict
from tardis.utilities.executors.shellexecutor import ShellExecutor

#: seconds ``timeout`` waits after TERM before it sends KILL on the login node
KILL_AFTER = 5
#: exit status of ``timeout`` when it ended the command (124) or had to kill it
#: (128 + 9); also 255, what ssh returns when the connection failed
TIMED_OUT = frozenset({124, 137})
SSH_FAILED = 255


def remote_limit(timeout: float) -> float:
    """The login node's own limit: below the adapter's, so the remote end gives up first.

    The margin leaves time for ``timeout``'s KILL and for the answer to travel
    back; it is a quarter of a short limit and at most 10 s of a long one.
    """
    margin = min(10.0, timeout / 4)
    return max(0.1, timeout - margin)


def limited(command: str, timeout: float) -> str:
    """``timeout -k 5 N COMMAND`` for one simple (already quoted) command."""
    seconds = f"{remote_limit(timeout):g}"
    return f"timeout -k {KILL_AFTER} {seconds} {command}"


async def run(
    executor: Executor,
    command: str,
    *,
    timeout: float,
    stdin_input: Optional[str] = None,
) -> Any:
    """Run ``command`` through ``executor``; raise asyncio.TimeoutError after ``timeout``.

    An exit status of 255 is a failure here (ssh lost the connection), although
    TARDIS's ShellExecutor reports it as success.
    """
    if type(executor) is ShellExecutor:
        result = await _run_local(command, stdin_input, timeout)
    else:
        call = executor.run_command(command, stdin_input=stdin_input)
        result = await asyncio.wait_for(call, timeout)
    if getattr(result, "exit_code", 0) == SSH_FAILED:
        raise CommandExecutionFailure(
            message=f"{command.split(' ', 1)[0]} ended with exit status 255 "
            "(ssh: connection failed)",
            exit_code=SSH_FAILED,
            stdout=getattr(result, "stdout", ""),
            stderr=getattr(result, "stderr", ""),
        )
    return result


async def _run_local(
    command: str, stdin_input: Optional[str], timeout: float
) -> AttributeDict:
    """What ShellExecutor does, but the child's process group dies with the wait."""
    process = await asyncio.create_subprocess_shell(
        command,
        stdin=asyncio.subprocess.PIPE if stdin_input else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        stdout, stderr = await asyncio.wait_for(
            process.communicate(stdin_input.encode() if stdin_input else None),
            timeout,
        )
    except BaseException:  # timed out or cancelled: nothing may outlive the wait
        _kill_group(process.pid)
        await process.wait()
        raise
    text_out = stdout.decode(errors="replace").strip()
    text_err = stderr.decode(errors="replace").strip()
    if process.returncode:
        raise CommandExecutionFailure(
            message=f"Run command {command} failed",
            exit_code=process.returncode,
            stdout=text_out,
            stderr=text_err,
            stdin=stdin_input,
        )
    return AttributeDict(stdout=text_out, stderr=text_err, exit_code=0)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
