"""A small declarative validator that turns YAML mappings into frozen dataclasses.

Why not pydantic: TARDIS pins pydantic 1.x, whose messages do not say what is
allowed; a site operator needs every error to name the full key path, the bad
value and the fix, and needs all errors of a profile at once, not the first.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, Callable, Literal, TypeVar, Union, get_args, get_origin

T = TypeVar("T")


class ConfigurationError(ValueError):
    """A configuration that cannot work; its message lists every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            "invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems)
        )


class _Problems:
    """Collects problems while a tree is walked, so all are reported at once."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, value: Any, allowed: str) -> None:
        self.items.append(f"{path}: got {value!r}; {allowed}")


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
        problems.add(path, value, f"allowed: {_describe(hint)}")
        return None
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            problems.add(path, value, f"expected {_describe(hint)}")
            return None
        (item_hint,) = get_args(hint)[:1]
        return tuple(
            _convert(item_hint, item, f"{path}[{index}]", problems)
            for index, item in enumerate(value)
        )
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            problems.add(path, value, f"expected {_describe(hint)}")
            return None
        key_hint, value_hint = get_args(hint)
        return {
            _convert(key_hint, key, path, problems): _convert(
                value_hint, item, f"{path}.{key}", problems
            )
            for key, item in value.items()
        }
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
    """Build dataclass ``cls`` from a mapping, checking keys, types and rules."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        problems.add(path, data, f"expected {_describe(cls)}")
        return None
    hints = typing.get_type_hints(cls)
    known = [f.name for f in _fields(cls)]
    for key in data:
        if key not in known:
            problems.add(
                f"{path}.{key}", data[key], f"unknown key; allowed: {', '.join(known)}"
            )
    values: dict[str, Any] = {}
    before = len(problems.items)
    for field in _fields(cls):
        key_path = f"{path}.{field.name}"
        if field.name in data:
            values[field.name] = _convert(
                hints[field.name], data[field.name], key_path, problems
            )
        elif (
            field.default is dataclasses.MISSING
            and field.default_factory is dataclasses.MISSING
        ):
            problems.add(key_path, None, f"required: {_describe(hints[field.name])}")
    if len(problems.items) > before:
        return None
    instance = cls(**values)
    check: Callable[[str], list[str]] | None = getattr(instance, "check", None)
    if check is not None:
        problems.items.extend(check(path))
    return instance


def load(cls: type[T], data: Any, path: str) -> T:
    """Validate ``data`` against ``cls``; raise ConfigurationError listing every problem."""
    problems = _Problems()
    instance = _build(cls, data, path, problems)
    if problems.items or instance is None:
        raise ConfigurationError(problems.items or [f"{path}: invalid"])
    return instance
