"""The network modes: one module per mode, found through this registry.

``socks``, ``direct``, ``vpn``, ``nat`` and ``container-net`` are registered here; another mode (a site's own, or
a test's toy mode) is added with :func:`register` without editing any file of
the product. docs/modes.md: how to add a mode.
"""

from __future__ import annotations

from types import ModuleType
from typing import Union

from ..profile import NetworkProfile
from .base import ConfigFile, Mode, SettingsGroup, Stage

__all__ = [
    "ConfigFile",
    "Mode",
    "SettingsGroup",
    "Stage",
    "get",
    "names",
    "owner_of",
    "register",
    "unregister",
]

_MODES: dict[str, Mode] = {}


def register(mode: Union[Mode, ModuleType], *, replace: bool = False) -> Mode:
    """Add a mode: a :class:`Mode` object, or a module whose ``MODE`` is one.

    Refused (ValueError) when the mode is malformed, its name is taken (unless
    ``replace``) or it claims a profile section another mode or the common
    profile owns: a section key says which mode a value belongs to.
    """
    if isinstance(mode, ModuleType):
        mode = getattr(mode, "MODE", None)
    if not isinstance(mode, Mode):
        raise ValueError(f"not a network mode: {mode!r} (expected a modes.Mode)")
    problems = mode.problems()
    if mode.name in _MODES and not replace:
        problems.append(f"mode {mode.name!r} is already registered")
    common = NetworkProfile.__dataclass_fields__
    for name, spec in mode.profile_class.__dataclass_fields__.items():
        if name in common and name != "mode" and spec.type != common[name].type:
            problems.append(f"section {name!r} is part of the common profile")
    for section in mode.sections():
        owner = owner_of(section)
        if owner is not None and owner.name != mode.name:
            problems.append(f"section {section!r} belongs to mode {owner.name!r}")
    if problems:
        raise ValueError(f"cannot register mode {mode.name!r}: " + "; ".join(problems))
    _MODES[mode.name] = mode
    return mode


def unregister(name: str) -> None:
    """Remove a mode (for tests that add a toy mode)."""
    _MODES.pop(name, None)


def get(name: str) -> Mode:
    """The mode called ``name``; KeyError naming the registered ones."""
    try:
        return _MODES[name]
    except KeyError:
        raise KeyError(f"no network mode {name!r}; registered: {names()}") from None


def names() -> tuple[str, ...]:
    """The registered modes, in the order they were registered."""
    return tuple(_MODES)


def owner_of(section: str) -> Union[Mode, None]:
    """The registered mode whose profile has ``section``, or None."""
    for mode in _MODES.values():
        if section in mode.sections():
            return mode
    return None


def _register_builtin() -> None:
    from . import container_net, direct, nat, socks, vpn

    register(socks)
    register(direct)
    register(vpn)
    register(nat)
    register(container_net)


_register_builtin()
