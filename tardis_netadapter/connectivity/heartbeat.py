"""The heartbeat record a drone's watchdog writes, and its tolerant parser.

One record is one line of JSON (ASCII only, written by drone_scripts/lib/
watchdog.sh). The adapter reads thousands of them per cycle from a shared
filesystem it does not control, so parsing never raises: a garbage, truncated
or foreign line is skipped with a debug log and the drone simply has no record.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar

from ..modes.stages import record_stages

logger = logging.getLogger("cobald.runtime.tardis_netadapter.connectivity")

#: the record format version written by watchdog.sh (key ``v``).
FORMAT_VERSION = 1

#: stage names a record may hold, in the order the first failing one is blamed
#: (defined once, with the drone script's stage list: modes/stages.py)
STAGES: tuple[str, ...] = record_stages()

#: what a drone uuid (and so a heartbeat file name) may look like.
UUID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


@dataclass(frozen=True)
class Probe:
    """One TCP connect (and optional condor_ping) to a pool endpoint, through the chain."""

    endpoint: str
    ok: bool
    latency_ms: Optional[float] = None
    error: Optional[str] = None


@dataclass(frozen=True)
class PathError:
    """The tunnel supervisor's last failure (drone_scripts/lib/supervise.sh).

    ``cls`` is one of the stable class strings (``host key mismatch``,
    ``key refused``, ``connection refused``, ...; docs/monitoring.md) that
    ``status`` and the adapter's log show verbatim, ``detail`` ssh's line.
    """

    cls: str
    detail: str = ""
    since: Optional[float] = None


@dataclass(frozen=True)
class Isolation:
    """How the drone captures its payload's traffic (record key ``isolation``).

    Written by the watchdog from the drone's ``ns/isolation`` and ``ns/leaks``
    (issue 12). ``method`` is ``namespace`` (a private network namespace,
    transparent capture) or ``preload`` (LD_PRELOAD capture); ``tool`` the
    outer link (``pasta``, ``slirp4netns``) or the preload library
    (``proxychains``, ``tsocks``, ``none``); ``reason`` why namespace capture
    was unavailable when the drone fell back to preload (None otherwise);
    ``leaks_blocked`` the packets the namespace's firewall dropped (None with
    preload, which cannot count them). Any field may be None: a newer or
    foreign drone's value that this parser does not understand.
    """

    method: Optional[str] = None
    tool: Optional[str] = None
    reason: Optional[str] = None
    leaks_blocked: Optional[int] = None

    @property
    def fallback(self) -> bool:
        """Namespace capture was asked for but unavailable: preload with a reason."""
        return self.method == "preload" and self.reason is not None

    @property
    def label(self) -> str:
        """The short word ``status`` shows: ``ns``, ``preload``, ``preload!``."""
        if self.method == "namespace":
            return "ns"
        if self.fallback:
            return "preload!"
        return self.method or "-"


@dataclass(frozen=True)
class Vpn:
    """The drone's VPN (mode ``vpn``, record key ``vpn``; issue 13).

    Written by the watchdog from the drone's ``ns/vpn.state``: ``transport``
    is ``dtls`` (UDP, the fast way) or ``tls`` (DTLS failed or is off: TCP
    over TCP), ``address`` the tun device's address the server handed out.
    Either is None while the VPN is down, or when a newer or foreign drone
    wrote a value this parser does not understand.
    """

    transport: Optional[str] = None
    address: Optional[str] = None

    @property
    def label(self) -> str:
        """The word ``status`` shows: ``dtls``, ``tls`` or ``-``."""
        return self.transport or "-"


#: the transports a drone may report (anything else is not understood: None)
VPN_TRANSPORTS = ("dtls", "tls")


@dataclass(frozen=True)
class Route:
    """The drone's last route check (mode ``nat``, record key ``route``; issue 14).

    Written by the watchdog from the drone's ``route.state``, re-checked every
    round (drone_scripts/lib/route.sh): ``ok`` when the marked route goes via
    the NAT's gateway, the check target answers and (with an address echo)
    the pool sees the NAT's public address; ``via`` the gateway the marked
    route lookup gave, ``seen`` the address the echo saw (None when unknown),
    ``reason`` the first failure ("" when ok).
    """

    ok: bool = False
    via: Optional[str] = None
    seen: Optional[str] = None
    reason: str = ""

    @property
    def label(self) -> str:
        """The word ``status`` shows: ``ok`` or ``fail``."""
        return "ok" if self.ok else "fail"


@dataclass(frozen=True)
class ContainerNet:
    """The payload container's last network report (mode ``container-net``,
    record key ``container_net``; issue 15).

    Written by the reporter inside the payload's container into the drone's
    ``container-net.state`` and re-read by the watchdog every round
    (drone_scripts/lib/container_net.sh): ``ok`` when the container has an
    address in the partition's subnet, reaches the pool and (with an address
    echo) is seen with that address; ``address`` the container's address,
    ``seen`` what the echo saw (None when unknown), ``reason`` the first
    failure ("" when ok; a stale report names the reporter gone).
    """

    ok: bool = False
    address: Optional[str] = None
    seen: Optional[str] = None
    reason: str = ""

    @property
    def label(self) -> str:
        """The word ``status`` shows: ``ok`` or ``fail``."""
        return "ok" if self.ok else "fail"


@dataclass(frozen=True)
class Heartbeat:
    """What one drone said about its path to the pool at ``time`` (worker clock)."""

    uuid: str
    time: float
    seq: int = 0
    job: Optional[str] = None
    host: Optional[str] = None
    stages: dict[str, str] = field(default_factory=dict)
    probes: tuple[Probe, ...] = ()
    restarts: int = 0
    last_ok: Optional[float] = None
    failing_since: Optional[float] = None
    last_error: Optional[str] = None
    failing_stage: Optional[str] = None
    #: why the path's supervisor fails right now (None: it does not)
    path_error: Optional[PathError] = None
    #: how the payload's traffic is captured (None: the drone did not say)
    isolation: Optional[Isolation] = None
    #: the drone's VPN (mode vpn; None: no VPN, or the drone did not say)
    vpn: Optional[Vpn] = None
    #: the drone's route check (mode nat; None: no check, or the drone did not say)
    route: Optional[Route] = None
    #: the container's own network (mode container-net; None: not that mode,
    #: or the drone did not say)
    container_net: Optional[ContainerNet] = None

    @property
    def ok(self) -> bool:
        """All is well in this record: nothing failing and every probe answered."""
        return self.failing_stage is None and all(p.ok for p in self.probes)

    @property
    def latency_ms(self) -> Optional[float]:
        """The slowest successful probe: what the payload's worst connection sees."""
        values = [
            p.latency_ms for p in self.probes if p.ok and p.latency_ms is not None
        ]
        return max(values) if values else None


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _text(value: Any, limit: int = 500) -> Optional[str]:
    if value is None:
        return None
    return str(value)[:limit]


def _probe(data: Any) -> Optional[Probe]:
    if not isinstance(data, dict) or not isinstance(data.get("endpoint"), str):
        return None
    return Probe(
        endpoint=data["endpoint"][:300],
        ok=data.get("ok") is True,
        latency_ms=_number(data.get("latency_ms")),
        error=_text(data.get("error")),
    )


def _path_error(data: Any) -> Optional[PathError]:
    if not isinstance(data, dict) or not isinstance(data.get("class"), str):
        return None
    cls = " ".join(data["class"].split())[:40]
    if not cls:
        return None
    return PathError(
        cls=cls,
        detail=_text(data.get("detail"), 300) or "",
        since=_number(data.get("since")),
    )


def _word(value: Any, limit: int) -> Optional[str]:
    """Single-line printable text: whitespace folded, other control characters
    as ``?`` (it goes verbatim into the adapter's log), cut at ``limit``;
    empty is None."""
    if not isinstance(value, str):
        return None
    text = " ".join(value.split())[:limit]
    return "".join(c if c.isprintable() else "?" for c in text) or None


def _isolation(data: Any) -> Optional[Isolation]:
    """The ``isolation`` object; None when absent, not an object, or all unusable.

    Field by field: a value of the wrong type becomes None rather than
    dropping the whole object, so a drone that reports its method but a
    garbled count still shows its method. An empty reason (the drone script's
    ``ns/isolation`` has an empty third field unless it fell back) is None.
    """
    if not isinstance(data, dict):
        return None
    leaks = _number(data.get("leaks_blocked"))
    isolation = Isolation(
        method=_word(data.get("method"), 16),
        tool=_word(data.get("tool"), 32),
        reason=_word(data.get("reason"), 300),
        leaks_blocked=int(leaks) if leaks is not None and 0 <= leaks < 2**63 else None,
    )
    return None if isolation == Isolation() else isolation


def _vpn(data: Any) -> Optional[Vpn]:
    """The ``vpn`` object; None when absent or not an object.

    Field by field, like ``isolation``: an unknown transport or a value that
    is not an IP address becomes None (it goes into a terminal and a log), the
    other field is kept. ``{"transport":null,"address":null}`` (the VPN is
    down) is kept as an empty Vpn: the drone has a VPN, and it is not up.
    """
    if not isinstance(data, dict):
        return None
    transport = data.get("transport")
    return Vpn(
        transport=transport if transport in VPN_TRANSPORTS else None,
        address=_address(data.get("address")),
    )


def _address(value: Any) -> Optional[str]:
    """An IP address as text; None for anything else (it reaches a terminal)."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


_PathReport = TypeVar("_PathReport", Route, ContainerNet)


def _path_report(data: Any, kind: type[_PathReport]) -> Optional[_PathReport]:
    """A ``route`` or ``container_net`` object; None when absent or not an object.

    Field by field, like ``vpn``: ``ok`` is True only for a JSON true, every
    other field of ``kind`` but ``reason`` is an address (one that is not
    becomes None), the reason is folded to one line.
    """
    if not isinstance(data, dict):
        return None
    addresses = {
        name: _address(data.get(name))
        for name in kind.__dataclass_fields__
        if name not in ("ok", "reason")
    }
    return kind(
        ok=data.get("ok") is True,
        reason=_word(data.get("reason"), 300) or "",
        **addresses,
    )


def from_dict(data: Any) -> Optional[Heartbeat]:
    """A Heartbeat from a decoded record, or None when required keys are unusable."""
    if not isinstance(data, dict):
        return None
    uuid, time = data.get("uuid"), _number(data.get("time"))
    if not isinstance(uuid, str) or not UUID_PATTERN.fullmatch(uuid) or time is None:
        return None
    stages = data.get("stages")
    probes = data.get("probes")
    seq, restarts = _number(data.get("seq")), _number(data.get("restarts"))
    failing = data.get("failing_stage")
    return Heartbeat(
        uuid=uuid,
        time=time,
        seq=int(seq) if seq is not None else 0,
        job=_text(data.get("job"), 64) or None,
        host=_text(data.get("host"), 255) or None,
        stages=(
            {str(k)[:32]: str(v)[:32] for k, v in stages.items()}
            if isinstance(stages, dict)
            else {}
        ),
        probes=tuple(
            p for p in map(_probe, probes if isinstance(probes, list) else []) if p
        ),
        restarts=int(restarts) if restarts is not None else 0,
        last_ok=_number(data.get("last_ok")),
        failing_since=_number(data.get("failing_since")),
        last_error=_text(data.get("last_error")),
        failing_stage=str(failing)[:32] if failing else None,
        path_error=_path_error(data.get("path_error")),
        isolation=_isolation(data.get("isolation")),
        vpn=_vpn(data.get("vpn")),
        route=_path_report(data.get("route"), Route),
        container_net=_path_report(data.get("container_net"), ContainerNet),
    )


def parse_record(line: str) -> Optional[Heartbeat]:
    """One heartbeat line to a Heartbeat; None (with a debug log) for anything else."""
    line = line.strip()
    if not line:
        return None
    try:
        data = json.loads(line)
    except ValueError:
        logger.debug("skipping unparsable heartbeat line: %.120r", line)
        return None
    record = from_dict(data)
    if record is None:
        logger.debug("skipping heartbeat line without uuid/time: %.120r", line)
    return record


def parse_records(text: str) -> dict[str, Heartbeat]:
    """Every usable record in ``text``; of several for one uuid the newest wins."""
    records: dict[str, Heartbeat] = {}
    for line in text.splitlines():
        record = parse_record(line)
        if record is None:
            continue
        known = records.get(record.uuid)
        if known is None or (record.time, record.seq) >= (known.time, known.seq):
            records[record.uuid] = record
    return records
