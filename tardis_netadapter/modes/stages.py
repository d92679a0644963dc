"""The drone script's stage list, defined once: the common stages and the mode's.

Rendered into the script's ``main()`` (:func:`main_stages`), into the
watchdog's ``TNA_STAGES`` (:func:`watched_stages`) and read by the heartbeat
parser (:func:`record_stages`), so the three cannot drift apart.
"""

from __future__ import annotations

from . import names as mode_names
from .base import Mode, Stage

__all__ = ["COMMON_WATCHED", "main_stages", "record_stages", "watched_stages"]

SETUP = Stage("setup", "drone_setup", watched=False)
CVMFS = Stage("cvmfs", "cvmfs_stage")
#: started once the path works; only with monitoring enabled (lib/monitoring.sh)
WATCHDOG = Stage("watchdog", "watchdog_stage", phase="path", watched=False)
CONTAINER = Stage("container", "container_stage", watched=False)
PAYLOAD = Stage("payload", "payload_stage")
#: what the watchdog blames when some pool endpoints answer and others do not
POOL = "pool"


def main_stages(mode: Mode, monitoring: bool) -> tuple[Stage, ...]:
    """The stages main() runs, in order:

    setup -> the mode's network stages -> cvmfs -> the mode's path stages ->
    [watchdog] -> container -> payload
    """
    network = tuple(s for s in mode.stages if s.phase == "network")
    path = tuple(s for s in mode.stages if s.phase == "path")
    watchdog = (WATCHDOG,) if monitoring else ()
    return (SETUP, *network, CVMFS, *path, *watchdog, CONTAINER, PAYLOAD)


def watched_stages(mode: Mode) -> tuple[str, ...]:
    """The stages in the heartbeat record, in the order the first failing one is
    blamed: cvmfs, the mode's watched stages, payload."""
    return (CVMFS.name, *(s.name for s in mode.stages if s.watched), PAYLOAD.name)


#: the watched stages every mode has
COMMON_WATCHED = (CVMFS.name, PAYLOAD.name)


def record_stages() -> tuple[str, ...]:
    """Every stage name a heartbeat record may hold, over the registered modes,
    in blame order (``pool`` is the watchdog's own, before payload)."""
    from . import get

    found: list[str] = [CVMFS.name]
    for name in mode_names():
        own = watched_stages(get(name))[1:-1]
        for index, stage in enumerate(own):
            if stage in found:
                continue
            # before the next of its mode's stages already listed, so the
            # list keeps every mode's own order (nat: tunnel, route, chain)
            later = [s for s in own[index + 1 :] if s in found]
            found.insert(found.index(later[0]) if later else len(found), stage)
    return (*found, POOL, PAYLOAD.name)
