"""docs/configuration.md and docs/adapter.md document exactly the keys the schema has.

Every row ``| `key` | default | ...`` of a section's table in
configuration.md must be a key of that section's dataclass with that
default, and every key of the schema must have a row: a key renamed,
removed or added without the docs fails here. The site section's keys
(siteconfig.SITE_KEYS), every registered driver's machine type keys and the
brake's keys are held against docs/adapter.md the same way.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import pytest

from tardis_netadapter import modes
from tardis_netadapter.batch import DRIVERS
from tardis_netadapter.brake import BrakeSettings
from tardis_netadapter.machine import MachineMetaData
from tardis_netadapter.profile import NetworkProfile
from tardis_netadapter.siteconfig import SITE_KEYS

ROOT = Path(__file__).resolve().parents[2]
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()
ADAPTER = (ROOT / "docs" / "adapter.md").read_text()
_ROW = re.compile(r"^\| `([A-Za-z_][\w.\[\]]*)` \|([^|]*)\|", re.MULTILINE)


def sections(text: str) -> dict[str, str]:
    """``## `name` ...`` heading -> its text up to the next ``## ``; "Top level" too."""
    found = {}
    for match in re.finditer(r"^## (.+)$", text, re.MULTILINE):
        heading = match.group(1)
        name = re.match(r"`(\w+)`", heading)
        body = text[match.end() :].split("\n## ", 1)[0]
        found[name.group(1) if name else heading] = body
    return found


def rows(text: str) -> dict[str, str]:
    """``key -> default cell`` of the first column pairs of every table row."""
    return {key: cell.strip() for key, cell in _ROW.findall(text)}


def section_classes() -> dict[str, type]:
    """Every profile section (common and each mode's) -> its dataclass."""
    found: dict[str, type] = {}
    for name in modes.names():
        hints = typing.get_type_hints(modes.get(name).profile_class)
        for field in dataclasses.fields(modes.get(name).profile_class):
            if dataclasses.is_dataclass(hints[field.name]):
                found[field.name] = hints[field.name]
    return found


def _dataclass_in(hint: Any) -> Any:
    """The dataclass a field holds, directly or as a list of it (``routers``)."""
    if dataclasses.is_dataclass(hint):
        return hint
    if get_origin(hint) in (tuple, list) and get_args(hint):
        inner = get_args(hint)[0]
        return inner if dataclasses.is_dataclass(inner) else None
    if get_origin(hint) is Union:
        return next(filter(None, map(_dataclass_in, get_args(hint))), None)
    return None


def keys_of(cls: type) -> dict[str, dataclasses.Field]:
    """Documentable keys: each field, and ``field.sub`` / ``field[].sub`` of nested ones."""
    hints = typing.get_type_hints(cls)
    found: dict[str, dataclasses.Field] = {}
    for field in dataclasses.fields(cls):
        found[field.name] = field
        nested = _dataclass_in(hints[field.name])
        if nested is not None:
            joint = "." if dataclasses.is_dataclass(hints[field.name]) else "[]."
            for key, sub in keys_of(nested).items():
                found[f"{field.name}{joint}{key}"] = sub
    return found


def default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def written(value: Any) -> str:
    """A default as the docs write it (YAML's words, ``[a, b]``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(written(item) for item in value) + "]"
    if isinstance(value, dict) and not value:
        return "{}"
    if value == "":
        return '""'
    return str(value)


def default_problem(key: str, field: dataclasses.Field, cell: str) -> str | None:
    """Why the documented default ``cell`` is not the schema's (None: it is)."""
    default = default_of(field)
    if cell in ("", "derived"):
        # a section (built from its own rows) or a value computed at start
        ok = cell == "" and dataclasses.is_dataclass(default) or default is None
        return (
            None if ok else f"{key}: documented {cell or 'blank'}, default {default!r}"
        )
    if re.match(r"\(?required", cell):
        ok = default is dataclasses.MISSING or default in ("", (), None)
        return None if ok else f"{key}: documented required, default {default!r}"
    if dataclasses.is_dataclass(default):
        return f"{key}: a section, documented with default {cell}"
    expected = f"`{written(default)}`"
    return None if cell == expected else f"{key}: documented {cell}, schema {expected}"


def _check(cls: type, documented: dict[str, str], where: str) -> list[str]:
    schema = keys_of(cls)
    problems = [
        f"{where}: `{key}` is not a key" for key in documented if key not in schema
    ]
    for key in schema:
        if "." in key:
            prefix = key.rsplit(".", 1)[0] + "."
            if key not in documented and any(k.startswith(prefix) for k in documented):
                problems.append(f"{where}: `{key}` is undocumented (its siblings are)")
            continue
        if key not in documented and not any(
            k.startswith(f"{key}.") for k in documented
        ):
            problems.append(f"{where}: `{key}` is undocumented")
    for key, cell in documented.items():
        if key in schema:
            problem = default_problem(key, schema[key], cell)
            if problem:
                problems.append(f"{where}: {problem}")
    return problems


SECTIONS = section_classes()


def test_the_docs_have_a_section_for_every_profile_section() -> None:
    documented = sections(CONFIGURATION)
    assert set(SECTIONS) <= set(documented), set(SECTIONS) - set(documented)
    assert {"tunnel", "chain", "vpn", "nat", "container_net", "monitoring"} <= set(
        SECTIONS
    )


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_every_key_of_a_section_is_documented_with_its_default(name: str) -> None:
    body = sections(CONFIGURATION)[name]
    assert not _check(SECTIONS[name], rows(body), f"configuration.md `{name}`")


def test_the_top_level_table_lists_every_top_level_key() -> None:
    top = rows(sections(CONFIGURATION)["Top level"])
    fields: dict[str, dataclasses.Field] = {}
    for name in modes.names():
        for field in dataclasses.fields(modes.get(name).profile_class):
            fields.setdefault(field.name, field)
    assert set(top) == set(fields), set(top) ^ set(fields)
    problems = [default_problem(k, fields[k], cell) for k, cell in top.items()]
    assert not [p for p in problems if p], problems
    assert {f.name for f in dataclasses.fields(NetworkProfile)} <= set(top)


def test_the_check_finds_a_wrong_default_a_ghost_key_and_a_missing_one() -> None:
    """The comparison can fail: each kind of drift is reported."""
    body = rows(sections(CONFIGURATION)["keepalive"])
    assert not _check(SECTIONS["keepalive"], body, "k")
    drifted = {**body, "server_alive_count_max": "`4`", "ghost": "`1`"}
    del drifted["enabled"]
    found = _check(SECTIONS["keepalive"], drifted, "k")
    assert "k: `ghost` is not a key" in found
    assert "k: `enabled` is undocumented" in found
    assert "k: server_alive_count_max: documented `4`, schema `3`" in found


def test_every_site_key_is_in_the_site_section_table() -> None:
    table = rows(ADAPTER.split("## The site section", 1)[1].split("\n### ", 1)[0])
    assert set(table) == set(SITE_KEYS), set(table) ^ set(SITE_KEYS)


@pytest.mark.parametrize("adapter", sorted(DRIVERS))
def test_every_machine_type_key_of_every_driver_is_documented(adapter: str) -> None:
    """Read from the registered drivers: a new batch system's keys are held too."""
    documented = set(rows(ADAPTER))
    options = DRIVERS[adapter].machine_type_options
    missing = {f.name for f in dataclasses.fields(options)} - documented
    assert not missing, (adapter, missing)


def test_machine_meta_data_keys_are_named() -> None:
    site_row = next(
        line for line in ADAPTER.splitlines() if "| `MachineMetaData` |" in line
    )
    for field in dataclasses.fields(MachineMetaData):
        assert f"`{field.name}`" in site_row, field.name


def test_every_brake_key_is_documented_with_its_default() -> None:
    body = ADAPTER.split("## Brake for black-hole sites", 1)[1].split("\n## ", 1)[0]
    assert not _check(BrakeSettings, rows(body), "adapter.md brake")
