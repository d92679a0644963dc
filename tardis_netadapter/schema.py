"""A small declarative validator that turns YAML mappings into frozen dataclasses.

Why not pydantic: TARDIS pins pydantic 1.x, whose messages do not say what is
allowed; a site operator needs every error to name the full key path, the bad
value and the fix, and needs all errors of a profile at once, not the first.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from .suggest import did_you_mean, unknown_key

T = TypeVar("T")


class ConfigurationError(ValueError):
    """A configuration that cannot work; its message lists every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            "invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems)
        )


class _Problems:
    """Collects problems while a tree is walked, so all are reported at once.

    ``failures`` counts the problems that left a value unconverted (wrong type,
    unknown or missing key): a value built around such a failure holds defaults
    where the operator wrote something else, which rules that read it must know.
    Problems found by ``check()`` on a value built as written do not count.
    """

    def __init__(self) -> None:
        self.items: list[str] = []
        self.failures = 0
        #: key path of each dataclass built -> its fields that fell back to defaults
        self.tainted: dict[str, frozenset[str]] = {}

    def add(self, path: str, value: Any, allowed: str) -> None:
        self.items.append(f"{path}: got {value!r}; {allowed}")
        self.failures += 1

    def missing(self, path: str, kind: str, expected: str = "") -> None:
        """A required key that is absent: what to write, not "got None"."""
        how = f"; expected format: {expected}" if expected else ""
        self.items.append(f"{path}: missing; required: {kind}{how}")
        self.failures += 1


def _describe(hint: Any) -> str:
    """Human wording of a type hint for error messages."""
    origin = get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(hint))
    if origin is Union:
        args = [a for a in get_args(hint) if a is not type(None)]
        text = " or ".join(_describe(a) for a in args)
        return text + " (or null)" if type(None) in get_args(hint) else text
    if origin in (list, tuple):
        return f"a list of {_describe(get_args(hint)[0])}"
    if origin in (dict, Mapping):
        return "a mapping of names to values"
    if dataclasses.is_dataclass(hint):
        return f"a mapping with keys {', '.join(f.name for f in _fields(hint))}"
    return {
        bool: "true or false",
        int: "a whole number",
        float: "a number",
        str: "a string",
    }.get(hint, getattr(hint, "__name__", str(hint)))


def _fields(cls: type) -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(cls)


def _convert(hint: Any, value: Any, path: str, problems: _Problems) -> Any:
    """Convert one value to ``hint``; record a problem and return None if impossible."""
    origin = get_origin(hint)
    if origin is Union:
        args = [a for a in get_args(hint) if a is not type(None)]
        if value is None:
            return None
        for alternative in args:
            scratch = _Problems()
            converted = _convert(alternative, value, path, scratch)
            if not scratch.items:
                return converted
        if len(args) == 1:
            return _convert(args[0], value, path, problems)
        problems.add(path, value, f"expected {_describe(hint)}")
        return None
    if origin is Literal:
        if value in get_args(hint):
            return value
        words = [a for a in get_args(hint) if isinstance(a, str)]
        problems.add(
            path, value, f"allowed: {_describe(hint)}{did_you_mean(value, words)}"
        )
        return None
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            problems.add(path, value, f"expected {_describe(hint)}")
            return None
        (item_hint,) = get_args(hint)[:1]
        items = []
        for index, item in enumerate(value):
            before = problems.failures
            converted = _convert(item_hint, item, f"{path}[{index}]", problems)
            if problems.failures == before:
                items.append(converted)  # a failed item is left out (and reported)
        return tuple(items)
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            problems.add(path, value, f"expected {_describe(hint)}")
            return None
        key_hint, value_hint = get_args(hint)
        entries = {}
        for key, item in value.items():
            before = problems.failures
            name = _convert(key_hint, key, path, problems)
            converted = _convert(value_hint, item, f"{path}.{key}", problems)
            if problems.failures == before:
                entries[name] = converted
        return entries
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path, problems)
    if hint is bool:
        if isinstance(value, bool):
            return value
        problems.add(path, value, "expected true or false")
        return None
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.add(path, value, "expected a whole number")
        return None
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        problems.add(path, value, "expected a number")
        return None
    if hint is str:
        # no coercion: YAML turns `host: 10.5` into a float, `01:00` into 60 and
        # `on` into true, so str() would hand on a value the operator never wrote
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            problems.add(
                path,
                value,
                "expected a string, but YAML read true/false (yes, no, on, off "
                'are booleans too): quote the value as written, e.g. "on"',
            )
            return None
        if isinstance(value, (int, float)):
            problems.add(
                path,
                value,
                "expected a string, but YAML read a number: quote the value as "
                f'written, e.g. "{value}"',
            )
            return None
        problems.add(path, value, "expected a string")
        return None
    raise TypeError(f"schema cannot convert to {hint!r}")  # a bug in a schema


def _build(cls: type[T], data: Any, path: str, problems: _Problems) -> T | None:
    """Build dataclass ``cls`` from a mapping, checking keys, types and rules.

    A field's ``metadata["format"]`` (e.g. a Slurm time limit's forms) is
    added to every message about that key: a missing or mistyped value then
    says how to write it, not only which Python type it must be.

    A field that cannot be converted is reported and takes its default, so the
    dataclass is still built and its own ``check()`` still runs: a nested error
    must not hide the parent's errors. Only a required field without a usable
    value leaves nothing to build (None). Problems of ``check()`` that name a
    field that fell back to its default are dropped: they would describe the
    default, not what the operator wrote.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        problems.add(path, data, f"expected {_describe(cls)}")
        return None
    hints = typing.get_type_hints(cls)
    known = [f.name for f in _fields(cls)]
    for key in data:
        if key not in known:
            problems.add(f"{path}.{key}", data[key], unknown_key(key, known))
    values: dict[str, Any] = {}
    tainted: set[str] = set()
    buildable = True
    for field in _fields(cls):
        key_path = f"{path}.{field.name}"
        required = (
            field.default is dataclasses.MISSING
            and field.default_factory is dataclasses.MISSING
        )
        expected = field.metadata.get("format", "")
        if field.name in data:
            before, seen = problems.failures, len(problems.items)
            value = _convert(hints[field.name], data[field.name], key_path, problems)
            if problems.failures == before:
                values[field.name] = value
                continue
            if expected:  # the type's wording alone does not say how to write it
                problems.items[seen:] = [
                    f"{item}; expected format: {expected}"
                    for item in problems.items[seen:]
                ]
            tainted.add(field.name)
            if value is not None:
                values[field.name] = value  # built around a failure: partly defaults
            elif required:
                buildable = False
        elif required:
            problems.missing(key_path, _describe(hints[field.name]), expected)
            buildable = False
    if not buildable:
        return None
    instance = cls(**values)
    check: Callable[[str], list[str]] | None = getattr(instance, "check", None)
    if check is not None:
        problems.items.extend(untainted(check(path), path, tainted))
    problems.tainted[path] = frozenset(tainted)
    return instance


def untainted(found: list[str], path: str, tainted: set[str]) -> list[str]:
    """``found`` without the problems naming a field in ``tainted`` (under ``path``).

    A field is named by its key path (``Site.Network.cvmfs``, ``...cvmfs.mode``)
    or by its bare name in a message (``with container.runtime 'none'``), but
    not as the tail of another key (``cvmfs.mode`` does not name ``mode``).
    """
    if not tainted:
        return list(found)
    names = "|".join(re.escape(name) for name in sorted(tainted))
    pattern = re.compile(rf"(?:{re.escape(path)}\.|(?<![\w.]))(?:{names})(?!\w)")
    return [problem for problem in found if not pattern.search(problem)]


def load_partial(
    cls: type[T], data: Any, path: str
) -> tuple[T | None, list[str], frozenset[str]]:
    """Validate ``data`` without raising: (instance or None, problems, tainted fields).

    For callers that check more than ``cls.check()`` does (the keepalive budget
    of a profile): the instance is built even with problems, and the tainted
    top-level fields say which of its values are defaults standing in for
    something that could not be converted; pass them to :func:`untainted`.
    """
    problems = _Problems()
    instance = _build(cls, data, path, problems)
    return instance, problems.items, problems.tainted.get(path, frozenset())


def load(cls: type[T], data: Any, path: str) -> T:
    """Validate ``data`` against ``cls``; raise ConfigurationError listing every problem."""
    instance, problems, _ = load_partial(cls, data, path)
    if problems or instance is None:
        raise ConfigurationError(problems or [f"{path}: invalid"])
    return instance


def plain(data: Any) -> Any:
    """Turn TARDIS AttributeDicts (and tuples) into plain dicts and lists."""
    if isinstance(data, dict) or hasattr(data, "items"):
        return {key: plain(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [plain(item) for item in data]
    return data
