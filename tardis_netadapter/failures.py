"""Which failures the adapter lets TARDIS see, and as what: none may stop the daemon.

TARDIS ends the whole COBalD daemon when a drone state's ``run`` lets an
exception escape, and each state catches a different set (TARDIS 0.9,
``resources/dronestates.py``): RequestState catches TardisAuthError,
TardisTimeout, TardisQuotaExceeded, TardisResourceStatusUpdateFailed and
TardisDroneCrashed; the status pipeline of every other state catches the
first three and TardisDroneCrashed; ShutDownState's ``stop_resource`` only
TardisResourceStatusUpdateFailed; CleanupState's ``terminate_resource`` that
and TardisDroneCrashed.

So every exception leaving :func:`transient_failures` is a
TardisResourceStatusUpdateFailed (mixed with TardisTimeout, TardisAuthError or
TardisQuotaExceeded where that says more), except TardisDroneCrashed, which
the adapter raises only from ``resource_status``, where every state handles
it. A failure nobody foresaw is logged with its traceback and retried, not
turned into a daemon stop: a bad configuration is refused at start instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

import asyncssh
from tardis.exceptions.executorexceptions import (
    CommandExecutionFailure,
    ExecutorFailure,
)
from tardis.exceptions.tardisexceptions import (
    TardisAuthError,
    TardisDroneCrashed,
    TardisQuotaExceeded,
    TardisResourceStatusUpdateFailed,
    TardisTimeout,
)

from .batch.driver import BatchOutputError
from .batch.poller import ListingUntrusted, StatusUnavailable

logger = logging.getLogger("cobald.runtime.tardis_netadapter.siteadapter")


class NetadapterTimeout(TardisTimeout, TardisResourceStatusUpdateFailed):
    """A batch command timed out.

    Both a TardisTimeout and a TardisResourceStatusUpdateFailed: RequestState
    and the status pipeline handle the former, but ShutDownState and
    CleanupState only the latter.
    """


class NetadapterAuthError(TardisAuthError, TardisResourceStatusUpdateFailed):
    """The executor could not log in (e.g. an MFA prompt): retried in every state."""


class NetadapterQuotaExceeded(TardisQuotaExceeded, TardisResourceStatusUpdateFailed):
    """The site refused more drones: the drone goes down without a job."""


class StatusUndecided(TardisResourceStatusUpdateFailed):
    """The drone's status cannot be told yet (a job missing once, an unknown state).

    TARDIS keeps the drone in its state and asks again next cycle, which is
    what "never invent a death" needs.
    """


@contextmanager
def transient_failures(site: str) -> Iterator[None]:
    """Map every failure to one TARDIS handles in the state that called the adapter."""
    warning = _WarnOnce()
    try:
        yield
    except (TardisResourceStatusUpdateFailed, TardisDroneCrashed):
        raise
    except TardisAuthError as error:
        warning(error, "%s: login failed: %s", site, error)
        raise NetadapterAuthError(f"{site}: login failed: {error}") from error
    except TardisQuotaExceeded as error:
        raise NetadapterQuotaExceeded(f"{site}: {error}") from error
    except (TardisTimeout, asyncio.TimeoutError) as error:
        warning(error, "%s: batch command timed out", site)
        raise NetadapterTimeout(f"{site}: batch command timed out") from error
    except CommandExecutionFailure as error:
        warning(
            error,
            "%s: command failed (exit %s): stdout=%r stderr=%r",
            site,
            error.exit_code,
            short(error.stdout),
            short(error.stderr),
        )
        raise TardisResourceStatusUpdateFailed(f"{site}: {error.message}") from error
    except ExecutorFailure as error:
        warning(error, "%s: executor failed: %s", site, error.description)
        raise TardisResourceStatusUpdateFailed(
            f"{site}: {error.description}"
        ) from error
    except asyncssh.Error as error:
        warning(error, "%s: SSH failed: %s", site, error)
        raise TardisResourceStatusUpdateFailed(f"{site}: SSH: {error}") from error
    except (OSError, EOFError) as error:  # ConnectionError is an OSError
        warning(error, "%s: connection failed: %r", site, error)
        raise TardisResourceStatusUpdateFailed(f"{site}: {error!r}") from error
    except StatusUnavailable as error:
        warning(error, "%s: %s", site, error)
        if isinstance(error.__cause__, asyncio.TimeoutError):
            raise NetadapterTimeout(f"{site}: {error}") from error
        raise TardisResourceStatusUpdateFailed(f"{site}: {error}") from error
    except (BatchOutputError, ListingUntrusted) as error:
        warning(error, "%s: %s", site, error)
        raise TardisResourceStatusUpdateFailed(f"{site}: {error}") from error
    except UnicodeError as error:
        warning(error, "%s: undecodable output: %s", site, error)
        raise TardisResourceStatusUpdateFailed(f"{site}: {error}") from error
    except Exception as error:
        logger.exception("%s: unexpected error; retrying, the daemon goes on", site)
        raise TardisResourceStatusUpdateFailed(f"{site}: {error!r}") from error


class _WarnOnce:
    """Warn once per failure, not once per drone.

    Every drone waiting on a failed shared squeue gets the same exception (or a
    StatusUnavailable caused by it); at thousands of drones a warning each
    would flood the log. Repeats are logged at debug level.
    """

    _last: Optional[BaseException] = None

    def __call__(self, error: BaseException, message: str, *args: Any) -> None:
        root = error.__cause__ if isinstance(error, StatusUnavailable) else error
        if root is not None and root is _WarnOnce._last:
            logger.debug(message, *args)
            return
        _WarnOnce._last = root
        logger.warning(message, *args)


def short(text: Optional[str], limit: int = 500) -> str:
    """A command's output clipped for a log line."""
    text = (text or "").strip()
    return text if len(text) <= limit else text[:limit] + "..."
