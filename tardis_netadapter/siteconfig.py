"""A site's own configuration section, validated once, for the adapter and the CLI.

TARDIS validates only the ``Sites`` list; everything in the site's own section
(``NetLab: {executor, MachineTypes, ...}``) is up to the adapter. Here it is
checked as strictly as the ``Network`` profile: unknown keys are errors and
every message names the full key path. The adapter calls
:func:`load_site_settings` when it is built (so a bad section stops the daemon
at start); the ``render`` CLI calls :func:`load_site_from_file`, which reads a
cobald.yml or TARDIS YAML without constructing anything (no SSH connection,
no pool factory).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from .batch import DRIVERS, BatchDriver, SlurmDriver, driver_for
from .brake import BrakeSettings, check_against_walltimes, load_brake
from .config import NetworkProfile, load_profile_and_budget
from .keepalive import KeepaliveBudget
from .machine import MachineMetaData
from .schema import ConfigurationError, load, plain

#: keys of the site section and what they are for (for error messages)
SITE_KEYS = {
    "executor": "the TARDIS executor that reaches the login node",
    "MachineTypes": "the list of machine type names",
    "MachineTypeConfiguration": "batch system settings per machine type",
    "MachineMetaData": "Cores, Memory (GB), Disk (GB) per machine type",
    "Network": "the network profile (docs/configuration.md)",
    "status_max_age": "seconds a squeue snapshot is reused (default: half the drone heartbeat)",
    "command_timeout": "seconds before a batch command counts as failed (default 120)",
    "brake": "the brake for a site whose drones keep dying young (docs/adapter.md)",
    "export_environment": "NAME or NAME=VALUE entries sbatch exports into each job",
}

#: site and machine type names: the drone uuid (site name in lower case, '-',
#: hex) reaches sbatch --export and --job-name, and both names reach the
#: rendered script and file names; a comma there broke the first deploy
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: an environment variable name for export_environment
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: characters an exported value cannot hold: --export splits on commas, and a
#: control character (newline, NUL, ...) has no place on a command line
_BAD_VALUE = re.compile(r"[,\x00-\x1f\x7f]")
#: the adapter's own exports (TardisDroneCores, ...): not to be overridden
ADAPTER_EXPORT_PREFIX = "TardisDrone"

DEFAULT_COMMAND_TIMEOUT = 120.0


@dataclass(frozen=True)
class MachineTypeSettings:
    """Everything the adapter needs for one machine type."""

    name: str
    #: the driver's ``machine_type_options`` (for Slurm: Walltime, Partition, ...)
    batch: Any
    meta_data: MachineMetaData


@dataclass(frozen=True)
class SiteSettings:
    """A validated site section, for the site's batch driver."""

    name: str
    driver: BatchDriver
    profile: NetworkProfile
    budget: KeepaliveBudget
    machine_types: Mapping[str, MachineTypeSettings]
    status_max_age: Optional[float]
    command_timeout: float
    brake: BrakeSettings = BrakeSettings()
    #: extra ``NAME`` / ``NAME=VALUE`` entries for sbatch ``--export``, validated
    export_environment: tuple[str, ...] = ()


def load_site_settings(
    site_name: str, section: Any, driver: Optional[BatchDriver] = None
) -> SiteSettings:
    """Validate a site section for ``driver`` (default Slurm); list every problem."""
    driver = driver if driver is not None else SlurmDriver()
    problems: list[str] = []
    if section is None or not hasattr(section, "keys"):
        raise ConfigurationError(
            [
                f"{site_name}: missing or not a mapping; add a top-level "
                f"'{site_name}:' section with {', '.join(SITE_KEYS)}"
            ]
        )
    problems += _check_name(
        site_name,
        site_name,
        "site name",
        "it is part of every drone uuid (site name in lower case, '-', hex), "
        "which reaches the submit command's environment and job name (Slurm: "
        "--export and --job-name): a comma there broke the "
        "first deploy. Rename the site in Sites and its section",
    )
    for key in section:
        if key not in SITE_KEYS:
            problems.append(
                f"{site_name}.{key}: unknown key; allowed: {', '.join(SITE_KEYS)}"
            )

    profile = budget = None
    if "Network" not in section:
        problems.append(
            f"{site_name}.Network: required: the network profile of this site "
            "(see docs/configuration.md)"
        )
    else:
        path = f"{site_name}.Network"
        try:
            profile, budget = load_profile_and_budget(section["Network"], path=path)
        except ConfigurationError as error:
            problems += error.problems

    machine_types = _machine_types(site_name, section, driver, problems)
    status_max_age = _number(site_name, section, "status_max_age", None, problems)
    command_timeout = _number(
        site_name, section, "command_timeout", DEFAULT_COMMAND_TIMEOUT, problems
    )
    brake = BrakeSettings()
    try:
        brake = load_brake(section.get("brake"), f"{site_name}.brake")
        walltimes = {
            name: driver.walltime_seconds(kind.batch)
            for name, kind in machine_types.items()
        }
        problems += check_against_walltimes(brake, walltimes, f"{site_name}.brake")
    except ConfigurationError as error:
        problems += error.problems
    export_environment = _export_environment(site_name, section, problems)
    if problems:
        raise ConfigurationError(problems)
    return SiteSettings(
        name=site_name,
        driver=driver,
        profile=profile,
        budget=budget,
        machine_types=machine_types,
        status_max_age=status_max_age,
        command_timeout=command_timeout,
        brake=brake,
        export_environment=export_environment,
    )


def _check_name(path: str, name: Any, what: str, why: str) -> list[str]:
    """A site or machine type name, matched whole against :data:`NAME`."""
    if isinstance(name, str) and NAME.fullmatch(name):
        return []
    return [
        f"{path}: got {name!r}; a {what} must be a letter or digit followed by "
        f"letters, digits, '_', '.' or '-' only: {why}"
    ]


def _export_environment(
    site: str, section: Any, problems: list[str]
) -> tuple[str, ...]:
    """``export_environment``: what sbatch passes into jobs besides the drone's values.

    sbatch exports nothing else (no ``ALL``), so the COBalD daemon's own
    environment, tokens included, stays out of the jobs; a site lists here
    what its jobs need. Each entry is ``NAME`` (the value sbatch sees on the
    login node) or ``NAME=VALUE``.
    """
    path = f"{site}.export_environment"
    entries = section.get("export_environment")
    if entries is None:
        return ()
    if not isinstance(entries, (list, tuple)):
        problems.append(
            f"{path}: got {entries!r}; expected a list of NAME or NAME=VALUE "
            "strings, e.g. [SQUID_HOST, 'OMP_NUM_THREADS=1']"
        )
        return ()
    result: list[str] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        problem = _export_problem(entry, seen)
        if problem is None:
            result.append(entry)
        else:
            problems.append(f"{path}[{index}]: got {entry!r}; {problem}")
    return tuple(result)


def _export_problem(entry: Any, seen: set[str]) -> Optional[str]:
    """What is wrong with one export_environment entry (None: fine; noted in seen)."""
    if not isinstance(entry, str):
        return "expected a string NAME or NAME=VALUE: quote it as written"
    name, equals, value = entry.partition("=")
    if not _VARIABLE.fullmatch(name):
        return (
            "NAME must be a letter or '_' followed by letters, digits or '_' "
            "(an environment variable name)"
        )
    if name.startswith(ADAPTER_EXPORT_PREFIX):
        return (
            f"{ADAPTER_EXPORT_PREFIX}* variables are set by the adapter for each "
            "drone: remove this entry"
        )
    if name in seen:
        return f"{name} is listed twice: keep one"
    seen.add(name)
    if equals and (_BAD_VALUE.search(value) or value != value.strip()):
        return (
            "VALUE must hold no comma (sbatch --export splits on commas), no "
            "newline or other control character, and no leading or trailing blanks"
        )
    return None


def _number(
    site: str, section: Any, key: str, default: Optional[float], problems: list[str]
) -> Optional[float]:
    value = section.get(key, default) if hasattr(section, "get") else default
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        problems.append(f"{site}.{key}: got {value!r}; expected seconds greater than 0")
        return default
    return float(value)


def _machine_types(
    site: str, section: Any, driver: BatchDriver, problems: list[str]
) -> dict[str, MachineTypeSettings]:
    names = section.get("MachineTypes")
    if (
        not isinstance(names, (list, tuple))
        or not names
        or not all(isinstance(n, str) for n in names)
    ):
        problems.append(
            f"{site}.MachineTypes: got {names!r}; expected a non-empty list of "
            "machine type names"
        )
        return {}
    for name in names:
        problems += _check_name(
            f"{site}.MachineTypes",
            name,
            "machine type name",
            "it reaches the rendered drone script, its file names and the log "
            "lines of every drone; rename it in MachineTypes, "
            "MachineTypeConfiguration and MachineMetaData",
        )
    result = {}
    tables = {}
    for kind in ("MachineTypeConfiguration", "MachineMetaData"):
        table = section.get(kind)
        if not hasattr(table, "keys"):
            problems.append(
                f"{site}.{kind}: got {table!r}; expected a mapping with an entry "
                f"for each of {', '.join(names)}"
            )
            continue
        tables[kind] = table
        for extra in sorted(set(table.keys()) - set(names), key=str):
            problems.append(
                f"{site}.{kind}.{extra}: not in {site}.MachineTypes "
                f"({', '.join(names)}); add it there or remove this entry"
            )
    # every entry that exists is validated, whatever else is wrong: all at once
    for name in names:
        parts = {}
        for kind, cls in (
            ("MachineTypeConfiguration", driver.machine_type_options),
            ("MachineMetaData", MachineMetaData),
        ):
            path = f"{site}.{kind}.{name}"
            if kind not in tables:
                continue
            if name not in tables[kind]:
                problems.append(f"{path}: missing; every machine type needs one")
                continue
            try:
                parts[kind] = load(cls, plain(tables[kind][name]), path)
            except ConfigurationError as error:
                problems += error.problems
        if len(parts) == 2:
            # a driver's options may check themselves against the drone's size
            check_with = getattr(parts["MachineTypeConfiguration"], "check_with", None)
            if check_with is not None:
                path = f"{site}.MachineTypeConfiguration.{name}"
                problems += check_with(parts["MachineMetaData"], path)
            result[name] = MachineTypeSettings(
                name, parts["MachineTypeConfiguration"], parts["MachineMetaData"]
            )
    return result


# --------------------------------------------------------------------------
# reading configuration files for the CLI, without constructing anything
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Tagged:
    """A YAML node with a tag (``!TardisSSHExecutor`` ...), kept as data, not built."""

    tag: str
    value: Any


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping names one key twice; YAML itself would silently keep the last value."""

    def __init__(self, key: Any, first: yaml.Mark, again: yaml.Mark) -> None:
        self.key, self.first_line, self.line = key, first.line + 1, again.line + 1
        super().__init__(
            None, None, f"duplicate key {key!r} (first at line {first.line + 1})", again
        )


class _InertLoader(yaml.SafeLoader):
    """SafeLoader that keeps every tagged node as :class:`Tagged` instead of calling it,
    and refuses a key given twice in one mapping (the last value would win unseen).
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Any:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor`: keys given here may override merged ones
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:
                continue  # unhashable: the base constructor reports it
            if first is not key_node.start_mark:
                raise DuplicateKeyError(key, first, key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _construct_tagged(loader: yaml.Loader, suffix: str, node: yaml.Node) -> Tagged:
    if isinstance(node, yaml.MappingNode):
        value: Any = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)
    return Tagged("!" + suffix, value)


_InertLoader.add_multi_constructor("!", _construct_tagged)


@dataclass(frozen=True)
class SiteFromFile:
    """A site found in a configuration file: its validated settings and raw parts."""

    settings: SiteSettings
    tardis: Mapping[str, Any]
    source: Path


def read_yaml(path: Path) -> Any:
    """Parse YAML inertly; a missing file or bad YAML is a ConfigurationError."""
    try:
        with open(path, encoding="utf-8") as stream:
            return yaml.load(stream, Loader=_InertLoader)  # noqa: S506 - inert loader
    except OSError as error:
        raise ConfigurationError([f"{path}: cannot read: {error.strerror}"]) from None
    except DuplicateKeyError as error:
        raise ConfigurationError(
            [
                f"{path}:{error.line}: duplicate key {error.key!r} (first at line "
                f"{error.first_line}); YAML would silently keep only the last value: "
                "remove one of them"
            ]
        ) from None
    except yaml.YAMLError as error:
        raise ConfigurationError([f"{path}: not valid YAML: {error}"]) from None


def tardis_section(data: Any, path: Path) -> tuple[Mapping[str, Any], Path]:
    """The TARDIS part of a cobald.yml (``tardis:``), a pool factory's file, or a TARDIS YAML."""
    if not isinstance(data, Mapping):
        raise ConfigurationError([f"{path}: expected a YAML mapping at the top"])
    if "tardis" in data:
        return data["tardis"], path
    if "Sites" in data:
        return data, path
    for item in data.get("pipeline") or []:
        target = item.value if isinstance(item, Tagged) else item
        if isinstance(target, Mapping) and target.get("configuration"):
            other = (path.parent / str(target["configuration"])).resolve()
            return tardis_section(read_yaml(other), other)
    raise ConfigurationError(
        [
            f"{path}: no TARDIS configuration found; expected a 'tardis:' section, "
            "a top-level 'Sites:' list, or a pool factory with 'configuration: FILE'"
        ]
    )


def load_site_from_file(config: Path, site_name: str) -> SiteFromFile:
    """Find ``site_name`` in a configuration file and validate its section."""
    tardis, source = tardis_section(read_yaml(config), Path(config))
    sites = tardis.get("Sites") or []
    entry = next(
        (s for s in sites if isinstance(s, Mapping) and s.get("name") == site_name),
        None,
    )
    if entry is None:
        known = ", ".join(str(s.get("name")) for s in sites if isinstance(s, Mapping))
        raise ConfigurationError(
            [f"{source}: Sites: no site named {site_name!r}; known: {known or 'none'}"]
        )
    driver = driver_for(entry.get("adapter"))
    if driver is None:
        raise ConfigurationError(
            [
                f"{source}: Sites[{site_name}].adapter: got {entry.get('adapter')!r}; "
                f"expected one of {', '.join(repr(name) for name in DRIVERS)}"
            ]
        )
    settings = load_site_settings(site_name, tardis.get(site_name), driver())
    return SiteFromFile(settings=settings, tardis=tardis, source=source)


def batch_system_adapter(tardis: Mapping[str, Any]) -> Optional[str]:
    """The overlay batch system adapter name (``HTCondor`` ...) of a TARDIS config."""
    batch = tardis.get("BatchSystem")
    return batch.get("adapter") if isinstance(batch, Mapping) else None
