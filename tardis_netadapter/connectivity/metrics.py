"""Prometheus metrics of the connectivity monitor, with aioprometheus.

aioprometheus is already installed as a TARDIS dependency (its Prometheus
plugin). Metrics go to a private Registry, not the global one, so they neither
clash with TARDIS's plugin nor leak between tests; ``serve`` exposes that
registry on ``Network.monitoring.metrics_address:metrics_port`` when the port
is set. The site starts it with the adapter (site.py: ``start_exporter``) and
``prime`` gives every series its first value then, so a scrape before the
first drone already shows the site (all verdicts 0, brake off, no outage),
and an alert never needs ``absent()``.

contrib/prometheus/alerts.yml and contrib/grafana/ use these names; a unit
test (tests/unit/test_status_contrib.py) fails when one of theirs is not here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional

from aioprometheus import Counter, Gauge, Registry, Summary

from .heartbeat import STAGES, Heartbeat
from .verdict import Judgement, Verdict

if TYPE_CHECKING:
    from ..brake import BrakeSnapshot
    from .outage import Outage

#: the stages tna_site_outage is exported for (0 or 1 each, always present so
#: an alert needs no absent()): every record stage, ``heartbeat`` (late records)
#: and ``login`` (no listing at all: site.py UNREACHABLE_STAGE)
OUTAGE_STAGES: tuple[str, ...] = (*STAGES, "heartbeat", "login")

logger = logging.getLogger("cobald.runtime.tardis_netadapter.connectivity")


class ConnectivityMetrics:
    """Verdict counts, heartbeat ages and probe latencies per site; the site's brake."""

    def __init__(self, registry: Optional[Registry] = None) -> None:
        self.registry = registry if registry is not None else Registry()
        self.drones = Gauge(
            "tna_drones",
            "Drones per connectivity verdict",
            registry=self.registry,
        )
        self.heartbeat_age = Gauge(
            "tna_heartbeat_age_max_seconds",
            "Age of the oldest heartbeat of a running drone",
            registry=self.registry,
        )
        self.latency = Summary(
            "tna_probe_latency_milliseconds",
            "TCP connect time through the drone's chain to a pool endpoint",
            registry=self.registry,
        )
        self.probe_failures = Gauge(
            "tna_probe_failures",
            "Failed probes in the latest heartbeats, per endpoint",
            registry=self.registry,
        )
        self.brake_engaged = Gauge(
            "tna_brake_engaged",
            "1 while the site's brake refuses deploys (drones kept dying young)",
            registry=self.registry,
        )
        self.brake_young_deaths = Gauge(
            "tna_brake_young_deaths_in_a_row",
            "Drones in a row that died young (no survivor since)",
            registry=self.registry,
        )
        self.brake_refused = Counter(
            "tna_brake_refused_deploys_total",
            "Deploys the brake refused since the adapter started",
            registry=self.registry,
        )
        self.brake_trips = Counter(
            "tna_brake_trips_total",
            "Times the brake was engaged since the adapter started",
            registry=self.registry,
        )
        self.brake_next_probe = Gauge(
            "tna_brake_next_probe_seconds",
            "Seconds until the brake lets a probe through (0: not engaged, or due)",
            registry=self.registry,
        )
        self.site_outage = Gauge(
            "tna_site_outage",
            "1 while the site is judged in outage in this stage (no drone is "
            "ended for it, deploys are held)",
            registry=self.registry,
        )
        self.drones_ended = Counter(
            "tna_drones_ended_total",
            "Drones judged lost or never-connected (the adapter ends them), "
            "counted once per drone",
            registry=self.registry,
        )
        self.tunnel_restarts = Counter(
            "tna_tunnel_restarts_total",
            "Tunnel restarts the drones' supervisors reported, summed over "
            "drones (each drone's increase is added once)",
            registry=self.registry,
        )
        self.running = Gauge(
            "tna_drones_running",
            "Drones whose batch job runs (what the verdicts other than pending cover)",
            registry=self.registry,
        )
        self.interval = Gauge(
            "tna_heartbeat_interval_seconds",
            "The site's watchdog interval (configured or derived)",
            registry=self.registry,
        )
        self.grace = Gauge(
            "tna_grace_seconds",
            "How long a drone may fail before it is lost (configured or derived)",
            registry=self.registry,
        )
        self._seen: dict[str, tuple[float, int]] = {}
        self._ended: set[str] = set()
        self._restarts: dict[str, int] = {}

    def prime(self, site: str, interval: float, grace: float) -> None:
        """Every series of ``site`` at its resting value, before the first listing.

        Called when the exporter starts, so the site is visible (and the
        alerts have series to compare) while it has no drone yet.
        """
        labels = {"site": site}
        self.interval.set(labels, interval)
        self.grace.set(labels, grace)
        for verdict in Verdict:
            self.drones.set({"site": site, "verdict": verdict.value}, 0)
        self.heartbeat_age.set(labels, 0)
        self.running.set(labels, 0)
        self.update_outage(site, None)
        self.tunnel_restarts.add(labels, 0)
        for verdict in (v for v in Verdict if v.terminal):
            self.drones_ended.add({"site": site, "verdict": verdict.value}, 0)

    def update(
        self,
        site: str,
        judgements: Mapping[str, Judgement],
        records: Mapping[str, Heartbeat],
    ) -> None:
        """Set the gauges for ``site``; observe each new record's latencies once."""
        counts = dict.fromkeys(Verdict, 0)
        ages = []
        for uuid, judgement in judgements.items():
            counts[judgement.verdict] += 1
            if judgement.verdict.terminal and uuid not in self._ended:
                self._ended.add(uuid)
                labels = {"site": site, "verdict": judgement.verdict.value}
                self.drones_ended.inc(labels)
            if judgement.verdict is not Verdict.PENDING and judgement.heartbeat_age:
                ages.append(judgement.heartbeat_age)
        for verdict, count in counts.items():
            self.drones.set({"site": site, "verdict": verdict.value}, count)
        self.heartbeat_age.set({"site": site}, max(ages) if ages else 0)
        running = len(judgements) - counts[Verdict.PENDING]
        self.running.set({"site": site}, running)
        failures: dict[str, int] = {}
        for uuid in judgements:
            record = records.get(uuid)
            if record is None:
                continue
            for probe in record.probes:
                failures.setdefault(probe.endpoint, 0)
                if not probe.ok:
                    failures[probe.endpoint] += 1
            grown = record.restarts - self._restarts.get(uuid, 0)
            if grown > 0:
                self.tunnel_restarts.add({"site": site}, grown)
            self._restarts[uuid] = max(record.restarts, self._restarts.get(uuid, 0))
            key = (record.time, record.seq)
            if self._seen.get(uuid) == key:
                continue
            self._seen[uuid] = key
            for probe in record.probes:
                if probe.ok and probe.latency_ms is not None:
                    labels = {"site": site, "endpoint": probe.endpoint}
                    self.latency.add(labels, probe.latency_ms)
        for endpoint, count in failures.items():
            self.probe_failures.set({"site": site, "endpoint": endpoint}, count)
        for uuid in [u for u in self._seen if u not in records]:
            del self._seen[uuid]
        for uuid in [u for u in self._restarts if u not in judgements]:
            del self._restarts[uuid]
        self._ended &= set(judgements)

    def update_brake(self, site: str, brake: BrakeSnapshot) -> None:
        """Set the brake's series for ``site``; call once per status cycle.

        The counters mirror the brake's own running totals (set, not added), so
        calling this more often than needed never double-counts.
        """
        labels = {"site": site}
        self.brake_engaged.set(labels, int(brake.engaged))
        self.brake_young_deaths.set(labels, brake.young_deaths_in_a_row)
        self.brake_refused.set(labels, brake.refused)
        self.brake_trips.set(labels, brake.trips)
        self.brake_next_probe.set(labels, brake.next_probe_in or 0)

    def update_outage(self, site: str, outage: Optional[Outage]) -> None:
        """Set ``tna_site_outage{site,stage}`` for every stage; once per cycle."""
        stages = OUTAGE_STAGES
        if outage is not None and outage.stage not in stages:
            stages = (*stages, outage.stage)
        for stage in stages:
            active = outage is not None and outage.stage == stage
            self.site_outage.set({"site": site, "stage": stage}, int(active))


def exported_names(metrics: Optional[ConnectivityMetrics] = None) -> set[str]:
    """The metric names a scrape of ``metrics`` can show, derived from the registry."""
    metrics = metrics or ConnectivityMetrics()
    names = set()
    for collector in metrics.registry.get_all():
        names.add(collector.name)
        if isinstance(collector, Summary):
            names |= {f"{collector.name}_count", f"{collector.name}_sum"}
    return names


async def serve(
    metrics: ConnectivityMetrics, port: int, addr: str = "127.0.0.1"
) -> Any:
    """Start an HTTP exporter of ``metrics`` on ``addr:port``; returns the Service.

    Binds loopback by default: expose it wider only on purpose
    (``Network.monitoring.metrics_address``). aiohttp's access log is set to
    WARNING unless the logging configuration sets it: at a scrape a second it
    would otherwise be most of the daemon's log.
    """
    from aioprometheus.service import Service  # late: pulls in aiohttp

    access = logging.getLogger("aiohttp.access")
    if access.level == logging.NOTSET:  # not configured: one line per scrape is noise
        access.setLevel(logging.WARNING)
    service = Service(registry=metrics.registry)
    await service.start(addr=addr, port=port)
    logger.info("connectivity metrics on %s", service.metrics_url)
    return service
