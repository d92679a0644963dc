"""The pool collector's view: which drone uuids have a startd ad right now.

Optional evidence beside the heartbeats. The htcondor2 bindings block (60 s on
an unreachable address), so the query runs in a thread with a timeout, and any
failure at all gives ``None`` (unknown): the collector being away must never
crash the adapter or make drones look lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Optional

logger = logging.getLogger("cobald.runtime.tardis_netadapter.connectivity")

UUID_ATTRIBUTE = "TardisDroneUuid"


def _htcondor_query(address: str) -> list[Any]:
    import htcondor2  # late: optional, and slow to import

    return htcondor2.Collector(address).query(
        ad_type=htcondor2.AdType.Startd,
        constraint=f"{UUID_ATTRIBUTE} =!= undefined",
        projection=[UUID_ATTRIBUTE, "Name"],
    )


def uuids_from_ads(ads: list[Any]) -> set[str]:
    """The drone uuids named in startd ads (ads without one are ignored)."""
    uuids = set()
    for ad in ads:
        try:
            value = ad.get(UUID_ATTRIBUTE)
        except Exception:  # a strange ad is skipped, never fatal
            continue
        if isinstance(value, str) and value:
            uuids.add(value)
    return uuids


async def collector_uuids(
    address: str,
    timeout: float = 10.0,
    query: Callable[[str], list[Any]] = _htcondor_query,
) -> Optional[set[str]]:
    """Uuids with a startd ad in the collector at ``address``; None if unknown.

    ``query`` is replaceable for tests (the lab's collector is a stand-in that
    does not speak the HTCondor protocol). A timed-out thread is left to finish
    on its own; the bindings offer no way to cancel it.
    """
    if not address:
        return None
    loop = asyncio.get_running_loop()
    try:
        ads = await asyncio.wait_for(
            loop.run_in_executor(None, query, address), timeout=timeout
        )
    except asyncio.TimeoutError:
        logger.info("collector %s did not answer within %.0fs", address, timeout)
        return None
    except Exception as error:  # unknown is the answer to any failure
        logger.info("collector %s query failed: %s", address, error)
        return None
    return uuids_from_ads(ads)


def presence(uuids: Optional[set[str]], uuid: str) -> Optional[bool]:
    """True/False if the collector was asked, None if its view is unknown."""
    return None if uuids is None else uuid in uuids
