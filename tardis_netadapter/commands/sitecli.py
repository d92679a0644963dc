"""What the site-facing commands (status, check) share: picking a site, building its executor.

The executor is built from the configuration's inert ``executor:`` entry, so the
CLI talks to the site exactly as the daemon would, without loading the pool.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from ..schema import ConfigurationError

_EXECUTORS = {
    "SSHExecutor": "tardis.utilities.executors.sshexecutor:SSHExecutor",
    "DupingSSHExecutor": "tardis.utilities.executors.sshexecutor:DupingSSHExecutor",
    "ShellExecutor": "tardis.utilities.executors.shellexecutor:ShellExecutor",
}


def build_executor(spec: Any) -> Any:
    """A TARDIS executor from the config's (inert) ``executor:`` entry."""
    from ..siteconfig import Tagged

    if spec is None:
        return _load(_EXECUTORS["ShellExecutor"])()
    if not isinstance(spec, Tagged):
        raise ConfigurationError(
            [f"executor: got {spec!r}; expected a tagged executor such as !SSHExecutor"]
        )
    name = spec.tag.lstrip("!")
    name = name[len("Tardis") :] if name.startswith("Tardis") else name
    if name not in _EXECUTORS:
        raise ConfigurationError(
            [
                f"executor: {spec.tag} is not supported by status; use one of "
                + ", ".join(sorted(_EXECUTORS))
            ]
        )
    cls = _load(_EXECUTORS[name])
    if isinstance(spec.value, Mapping):
        return cls(**dict(spec.value))
    return cls()


def _load(path: str) -> Any:
    from importlib import import_module

    module, _, attribute = path.partition(":")
    return getattr(import_module(module), attribute)


def site_name(config: Path, requested: Optional[str]) -> str:
    """The requested site, or the only site of the configuration run by this adapter."""
    from ..batch import DRIVERS
    from ..siteconfig import read_yaml, tardis_section

    if requested:
        return requested
    tardis, source = tardis_section(read_yaml(config), config)
    names = [
        str(site.get("name"))
        for site in tardis.get("Sites") or []
        if isinstance(site, Mapping) and site.get("adapter") in DRIVERS
    ]
    if len(names) != 1:
        raise ConfigurationError(
            [
                f"{source}: Sites: {len(names)} {'/'.join(DRIVERS)} sites "
                f"({', '.join(names) or 'none'}); choose one with --site"
            ]
        )
    return names[0]
