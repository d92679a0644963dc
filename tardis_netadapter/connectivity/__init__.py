"""Drone connectivity monitoring: heartbeat records, bulk collection, verdicts.

Modules, one job each:

* ``heartbeat``      the record a drone's watchdog writes, and its tolerant parser
* ``collect``        the one shell command collecting a site's records, its output
* ``verdict``        the pure verdict function and its timing
* ``monitor``        ``SiteMonitor``: the seam the adapter's poller calls per cycle
* ``collector_view`` optional htcondor2 collector query (uuids with a startd ad)
* ``startd_cron``    knobs publishing the watchdog's findings in the startd ad
* ``metrics``        Prometheus metrics (aioprometheus)

docs/monitoring.md describes the whole.
"""

from __future__ import annotations

from .collect import (
    Collection,
    HeartbeatStore,
    cleanup_command,
    collection_command,
    combine_command,
    prune_command,
    shell_path,
    split_output,
)
from .heartbeat import Heartbeat, Probe, parse_record, parse_records
from .monitor import SiteMonitor
from .verdict import JobView, Judgement, Timing, Verdict, judge

__all__ = [
    "Collection",
    "Heartbeat",
    "HeartbeatStore",
    "Judgement",
    "Probe",
    "SiteMonitor",
    "JobView",
    "Timing",
    "Verdict",
    "cleanup_command",
    "collection_command",
    "combine_command",
    "judge",
    "parse_record",
    "parse_records",
    "prune_command",
    "shell_path",
    "split_output",
]
