"""Why ``status`` could not ask a site, said first and in words.

Before issue 17 ``status`` printed ``cannot ask the site:`` followed by the
repr of whatever the executor raised, so the cause (``Connection refused``,
``Permission denied``) sat at the end of a long line. :func:`unreachable`
turns the failure into a short reason an operator acts on, and keeps the
exception's own text as the detail for the line below it (and ``--json``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Optional

#: how much of a long detail (an executor's stderr) is shown
DETAIL_WIDTH = 300


@dataclass(frozen=True)
class Unreachable:
    """The site could not be asked: a short ``reason`` first, then ``detail``."""

    reason: str
    detail: str

    def headline(self, site: str) -> str:
        """``site NetLab: unreachable: connection refused``: the line printed first."""
        return _printable(f"site {site}: unreachable: {self.reason}")

    def as_json(self) -> dict[str, str]:
        """The ``unreachable`` object of ``status --json``."""
        return {"reason": self.reason, "detail": self.detail}


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in " ".join(text.split()))


def _first_line(text: object) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _cause(error: BaseException) -> BaseException:
    """The innermost cause: the poller wraps the executor's failure."""
    seen = set()
    while error.__cause__ is not None and id(error) not in seen:
        seen.add(id(error))
        error = error.__cause__
    return error


def unreachable(error: BaseException, timeout: Optional[float] = None) -> Unreachable:
    """The reason an operator reads first, for any failure to list the site."""
    from tardis.exceptions.executorexceptions import (
        CommandExecutionFailure,
        ExecutorFailure,
    )
    from tardis.exceptions.tardisexceptions import TardisAuthError, TardisTimeout

    detail = _printable(repr(error))[:DETAIL_WIDTH]
    cause = _cause(error)
    reason: str
    if isinstance(cause, (asyncio.TimeoutError, TardisTimeout)):
        after = f" after {timeout:.0f} s" if timeout else ""
        reason = f"no answer{after} (the login node or its shell hangs)"
    elif isinstance(cause, ConnectionRefusedError):
        reason = "connection refused (sshd down, or the executor's host/port wrong)"
    elif isinstance(cause, TardisAuthError):
        reason = f"login refused: {_first_line(cause)}"
    elif isinstance(cause, CommandExecutionFailure):
        said = _first_line(cause.stderr) or _first_line(cause.stdout)
        reason = f"the listing command failed (exit {cause.exit_code})"
        reason += f": {said}" if said else ""
    elif isinstance(cause, ExecutorFailure):
        reason = f"executor failed: {_first_line(cause.description)}"
    elif isinstance(cause, OSError) and cause.strerror:
        reason = cause.strerror[0].lower() + cause.strerror[1:]
    else:
        reason = _first_line(cause) or type(cause).__name__
        if type(cause).__module__.startswith("asyncssh"):
            reason = f"ssh: {reason}"
    return Unreachable(_printable(reason)[:DETAIL_WIDTH], detail)
