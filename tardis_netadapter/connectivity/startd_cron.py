"""Publish the watchdog's findings in the drone's startd ad (STARTD_CRON).

The watchdog writes, beside each heartbeat, a small file of ClassAd lines
(``TnaVerdict = "connected"`` ...; see drone_scripts/lib/watchdog.sh,
``tna_write_ad``). A periodic STARTD_CRON job that is just ``cat`` of that file
puts the same facts into the startd ad, so the pool's admins see them with
``condor_status -af TnaVerdict TnaFailingStage`` without any script to ship.
"""

from __future__ import annotations

import re

#: the attributes the watchdog's ad file carries (documented in docs/monitoring.md).
AD_ATTRIBUTES: tuple[str, ...] = (
    "TnaVerdict",
    "TnaFailingStage",
    "TnaHeartbeatTime",
    "TnaProbeLatencyMs",
    "TnaRestarts",
    "TnaLastError",
)


def startd_cron_knobs(
    ad_file: str,
    period: int,
    job: str = "TNA",
    existing_joblist: str = "",
) -> dict[str, str]:
    """The HTCondor knobs running ``cat AD_FILE`` every ``period`` seconds.

    ``ad_file`` is the path the startd sees (inside the container, if any).
    Set ``existing_joblist`` to the payload's own STARTD_CRON_JOBLIST (or
    ``$(STARTD_CRON_JOBLIST)`` in a config file) so its cron jobs keep running.
    As environment, every knob NAME becomes ``_CONDOR_NAME``.
    """
    if not ad_file or re.search(r"\s|[\"']", ad_file):
        raise ValueError(
            f"startd cron ad file {ad_file!r}: must be a non-empty path without "
            "blanks or quotes (HTCondor splits STARTD_CRON_*_ARGS on blanks)"
        )
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", job):
        raise ValueError(f"startd cron job name {job!r}: expected letters and digits")
    if int(period) < 1:
        raise ValueError(f"startd cron period {period!r}: expected at least 1 second")
    joblist = f"{existing_joblist} {job}".strip()
    return {
        "STARTD_CRON_JOBLIST": joblist,
        f"STARTD_CRON_{job}_EXECUTABLE": "/bin/cat",
        f"STARTD_CRON_{job}_ARGS": ad_file,
        f"STARTD_CRON_{job}_PERIOD": f"{int(period)}s",
        f"STARTD_CRON_{job}_MODE": "Periodic",
    }


def environment(knobs: dict[str, str]) -> dict[str, str]:
    """The knobs as ``_CONDOR_`` environment variables for the payload."""
    return {f"_CONDOR_{name}": value for name, value in knobs.items()}
