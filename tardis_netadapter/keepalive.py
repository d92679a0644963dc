"""The keepalive budget: which leg of a drone's connections carries traffic how often.

A site firewall that drops idle TCP flows (FZJ JURECA) kills a drone's pool
connection unless every leg sees traffic more often than the idle timeout:

* worker -> login ssh session: ssh ``ServerAliveInterval`` probes;
* login -> outside legs opened by sshd per SOCKS connection: nothing of ssh's
  own crosses them, so only the payload's own traffic protects them: HTCondor
  heartbeats (``CCB_HEARTBEAT_INTERVAL``, ``UPDATE_INTERVAL``, ``ALIVE_INTERVAL``,
  ``STARTER_UPDATE_INTERVAL``) below the timeout;
* ``TCP_KEEPALIVE_INTERVAL`` covers only the first hop (to the local SOCKS port)
  and is set for completeness, not relied upon.

Intervals are derived with a safety factor of two (two chances per timeout);
explicit settings that cannot beat the timeout are refused at start.
docs/keepalive.md explains this with the lab measurements.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import count
from typing import TYPE_CHECKING, Optional

from . import modes
from .schema import ConfigurationError

if TYPE_CHECKING:
    from .profile import NetworkProfile

#: HTCondor's own defaults (seconds) for the knobs the budget may lower.
CONDOR_DEFAULTS: dict[str, int] = {
    "CCB_HEARTBEAT_INTERVAL": 1200,
    "UPDATE_INTERVAL": 300,
    "ALIVE_INTERVAL": 300,
    "STARTER_UPDATE_INTERVAL": 300,
    "TCP_KEEPALIVE_INTERVAL": 360,
}

#: ssh ServerAliveInterval when no firewall idle timeout is declared.
DEFAULT_SERVER_ALIVE_INTERVAL = 30
#: watchdog heartbeat interval bounds (seconds).
MIN_WATCHDOG_INTERVAL, MAX_WATCHDOG_INTERVAL = 5, 60
#: the shortest time a drone gets to bring up its path to the pool.
MIN_CONNECT_DEADLINE = 300


@dataclass(frozen=True)
class KeepaliveBudget:
    """Derived keepalive settings for one site, all in seconds."""

    idle_timeout: Optional[int]
    enabled: bool
    server_alive_interval: int
    server_alive_count_max: int
    condor_knobs: dict[str, str] = field(default_factory=dict)
    watchdog_interval: int = 30
    grace: int = 90
    connect_deadline: int = MIN_CONNECT_DEADLINE
    #: the network mode's own legs (tardis_netadapter/modes/), first in legs()
    mode_legs: tuple[tuple[str, str], ...] = ()

    @property
    def dead_tunnel_detection(self) -> int:
        """Seconds until ssh notices a silently dropped tunnel and exits."""
        return self.server_alive_interval * self.server_alive_count_max

    def legs(self) -> list[tuple[str, str]]:
        """(leg, what protects it) for docs, ``check`` and the rendered script header."""
        if not self.enabled:
            return [("all legs", "nothing: keepalive is switched off")]
        return [
            *self.mode_legs,
            ("startd -> collector updates", self.knob_text("UPDATE_INTERVAL")),
            ("schedd <-> startd claim", self.knob_text("ALIVE_INTERVAL")),
            ("starter -> shadow", self.knob_text("STARTER_UPDATE_INTERVAL")),
        ]

    def knob_text(self, name: str) -> str:
        """``NAME=Ns``, or that HTCondor's default applies (for the legs)."""
        value = self.condor_knobs.get(name)
        return f"{name}={value}s" if value else f"{name} (HTCondor default)"


def _derived_interval(idle_timeout: int) -> int:
    """Half the timeout: a keepalive may be lost once and the flow still lives."""
    return max(1, idle_timeout // 2)


def _derived_server_alive(idle_timeout: Optional[int]) -> int:
    """A third of the timeout, at most the default: three probes per timeout."""
    if not idle_timeout:
        return DEFAULT_SERVER_ALIVE_INTERVAL
    return max(1, min(DEFAULT_SERVER_ALIVE_INTERVAL, idle_timeout // 3))


def _honoured(idle_timeout: int) -> bool:
    """Every interval derived for ``idle_timeout`` is strictly below it."""
    return (
        _derived_server_alive(idle_timeout) < idle_timeout
        and _derived_interval(idle_timeout) < idle_timeout
    )


#: the smallest firewall idle timeout the derivation can beat: intervals are
#: whole seconds (ssh and HTCondor take nothing finer), so at least 1 s, and
#: they must be strictly below the timeout. (2 s; computed, not typed, so a
#: change of the derivation moves it.)
MIN_IDLE_TIMEOUT = next(t for t in count(1) if _honoured(t))


def derive_budget(profile: NetworkProfile, path: str = "Network") -> KeepaliveBudget:
    """Derive the budget; raise ConfigurationError when explicit settings cannot work."""
    keepalive, timeout = profile.keepalive, profile.firewall.idle_timeout
    problems: list[str] = []
    if timeout is not None and 0 < timeout < MIN_IDLE_TIMEOUT:
        raise ConfigurationError(
            [
                f"{path}.firewall.idle_timeout: got {timeout}; keepalives are "
                "sent at whole-second intervals (ssh and HTCondor take nothing "
                "finer) that must be strictly below the idle timeout, so the "
                f"smallest timeout they can beat is {MIN_IDLE_TIMEOUT}: use at "
                f"least {MIN_IDLE_TIMEOUT} (measure the real timeout, "
                "docs/keepalive.md)"
            ]
        )

    server_alive = keepalive.server_alive_interval
    if server_alive is None:
        server_alive = _derived_server_alive(timeout)
    elif timeout and keepalive.enabled and server_alive >= timeout:
        problems.append(
            f"{path}.keepalive.server_alive_interval: got {server_alive}; it is not "
            f"below {path}.firewall.idle_timeout={timeout}, so the firewall drops "
            f"the idle tunnel between two probes. Use at most "
            f"{_derived_interval(timeout)} or remove the key to derive it"
        )

    knobs: dict[str, str] = {}
    if keepalive.enabled and timeout:
        derived = _derived_interval(timeout)
        for knob, default in CONDOR_DEFAULTS.items():
            knobs[knob] = str(min(default, derived))
    for knob, value in keepalive.condor_knobs.items():
        name = knob.upper()
        if (
            keepalive.enabled
            and timeout
            and name in CONDOR_DEFAULTS
            and name != "TCP_KEEPALIVE_INTERVAL"
            and value >= timeout
        ):
            problems.append(
                f"{path}.keepalive.condor_knobs.{knob}: got {value}; it is not "
                f"below {path}.firewall.idle_timeout={timeout}, so the "
                "connection it keeps alive idles out. Use at most "
                f"{_derived_interval(timeout)} or remove the key to derive it"
            )
        knobs[name] = str(value)
    if profile.pool.ccb and profile.pool.collector:
        knobs["CCB_ADDRESS"] = profile.pool.collector

    watchdog, grace, deadline = _monitoring(profile, server_alive, timeout)
    if grace < watchdog:
        problems.append(
            f"{path}.monitoring.grace: got {grace}; it is shorter than one "
            f"heartbeat interval ({watchdog}s), so every drone would look lost "
            f"between two heartbeats. Use at least {2 * watchdog}"
        )
    if problems:
        raise ConfigurationError(problems)
    budget = KeepaliveBudget(
        idle_timeout=timeout,
        enabled=keepalive.enabled,
        server_alive_interval=server_alive if keepalive.enabled else 0,
        server_alive_count_max=keepalive.server_alive_count_max,
        condor_knobs=knobs,
        watchdog_interval=watchdog,
        grace=grace,
        connect_deadline=deadline,
    )
    mode_legs = modes.get(profile.mode).legs(profile, budget)
    return replace(budget, mode_legs=tuple(mode_legs))


def _monitoring(
    profile: NetworkProfile, server_alive: int, timeout: Optional[int]
) -> tuple[int, int, int]:
    """Watchdog interval, grace and connect deadline, explicit or derived."""
    monitoring = profile.monitoring
    base = timeout // 2 if timeout else DEFAULT_SERVER_ALIVE_INTERVAL
    watchdog = monitoring.heartbeat_interval or min(
        MAX_WATCHDOG_INTERVAL, max(MIN_WATCHDOG_INTERVAL, base)
    )
    # a dead tunnel needs ServerAlive*CountMax to be noticed and the mode's
    # supervisor its worst-case reconnect delay to heal (modes/socks.py:
    # reconnect_bound): a drone is only lost after that chance plus two
    # missed heartbeats.
    grace = monitoring.grace or (
        2 * watchdog
        + server_alive * profile.keepalive.server_alive_count_max
        + modes.get(profile.mode).reconnect_delay(profile)
    )
    deadline = monitoring.connect_deadline or max(MIN_CONNECT_DEADLINE, 3 * grace)
    return watchdog, grace, deadline
