"""Loading a site's ``Network`` profile: the common sections plus its mode's.

The profile lives in the site's own section of the TARDIS configuration, beside
``executor`` and ``MachineTypes``. It is validated once, when the adapter is
built, so a bad profile stops the daemon at start with a message naming the key.

``mode`` picks a registered network mode (tardis_netadapter/modes/); the
profile is then validated as that mode's profile class: the common sections
(profile.py) and the mode's own (``socks``: ``tunnel``, ``chain``). A section
that belongs to another mode is refused, naming that mode.
docs/configuration.md documents every key; keep the two in step.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any

from . import modes
from .keepalive import KeepaliveBudget, derive_budget
from .modes.socks import AUTO, PortSetting
from .profile import NetworkProfile, proxy_elements
from .schema import ConfigurationError, load_partial, plain, untainted
from .suggest import did_you_mean

__all__ = [
    "AUTO",
    "ConfigurationError",
    "NetworkProfile",
    "PortSetting",
    "load_profile",
    "load_profile_and_budget",
    "proxy_elements",
]


def load_profile(data: Any, path: str = "Network") -> NetworkProfile:
    """Validate a ``Network`` section; raise ConfigurationError naming every bad key.

    The result is an instance of the mode's profile class (a NetworkProfile).
    The keepalive budget is checked here too (see load_profile_and_budget).
    """
    return load_profile_and_budget(data, path)[0]


def load_profile_and_budget(
    data: Any, path: str = "Network"
) -> tuple[NetworkProfile, KeepaliveBudget]:
    """The profile and its keepalive budget, derived once.

    The budget is checked here, so an impossible combination of explicit
    settings stops the daemon at start, not a drone at 3 a.m. It is checked
    even when other keys are wrong (all errors at once), leaving out what it
    would say about a section that could not be read as written.
    """
    data = plain(data)
    problems: list[str] = []
    mode_name = data.get("mode", "socks") if isinstance(data, Mapping) else "socks"
    mode = None
    if isinstance(mode_name, str) and mode_name in modes.names():
        mode = modes.get(mode_name)
    else:
        allowed = ", ".join(repr(name) for name in modes.names())
        problems.append(
            f"{path}.mode: got {mode_name!r}; allowed: one of {allowed}"
            f"{did_you_mean(mode_name, modes.names())}"
        )
    tainted: set[str] = set()
    if isinstance(data, Mapping):
        data, refused = _without_foreign_sections(data, mode, path)
        problems += refused
    cls = mode.profile_class if mode is not None else NetworkProfile
    profile, found, tainted_fields = load_partial(cls, data, path)
    tainted |= tainted_fields
    if mode is None:
        tainted.add("mode")
    problems += found
    budget = None
    if profile is not None and mode is not None:
        try:
            budget = derive_budget(profile, path=path)
        except ConfigurationError as error:
            problems += untainted(error.problems, path, tainted)
    if problems or profile is None or budget is None:
        raise ConfigurationError(problems or [f"{path}: invalid"])
    return profile, budget


def _without_foreign_sections(
    data: Mapping[str, Any], mode: Any, path: str
) -> tuple[dict[str, Any], list[str]]:
    """``data`` without the sections of other modes, and the problems they make.

    A foreign section is still validated against its own mode's schema, so an
    error inside it is reported with the rest. Without a known mode (``mode``
    itself is wrong) the sections of every mode are only validated.
    """
    kept: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in data.items():
        owner = modes.owner_of(key) if isinstance(key, str) else None
        if owner is None or (mode is not None and owner.name == mode.name):
            kept[key] = value
            continue
        refused = [] if mode is None else owner.refuse(key, value, path, mode.name)
        problems += refused
        if refused or mode is None:
            section = typing.get_type_hints(owner.profile_class)[key]
            problems += load_partial(section, value, f"{path}.{key}")[1]
    return kept, problems
