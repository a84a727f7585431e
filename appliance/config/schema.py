"""The engine of a table of typed fields: each field of a frozen dataclass carries its help and what it
allows (`setting`), and from that one table come parsing, with messages that name the key, the value and
what is allowed (`merge`), the JSON Schema (`json_schema`), a reference (`reference_rows`) and command-line
options (`options`, `overrides`).  The settings are one such table; the APIs' request bodies
(web/bodies.py) are others, parsed by web/http.py's `parse` with the APIs' own messages."""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import field
from typing import Any, Callable

TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


class ConfigError(ValueError):
    """A configuration value is unusable; the message names key, value and what is allowed."""


def setting(default: Any, help: str, *, minimum: float | None = None, maximum: float | None = None,
            pattern: str | None = None, allowed: str | None = None,
            check: Callable[[Any], str | None] | None = None, required: bool = False,
            read: Callable[[Any], Any] | None = None, shape: str | None = None) -> Any:
    """A field with its validation: range, pattern, and `check` (returns what is wrong, or None).  A request
    body's field may be `required`, or taken by `read` from any JSON value `shape` describes (it raises
    ValueError saying what is wrong)."""
    return field(default=default, metadata={"help": help, "minimum": minimum, "maximum": maximum,
                                            "pattern": pattern, "allowed": allowed, "check": check,
                                            "required": required, "read": read, "shape": shape})


def json_kinds(hint: Any) -> tuple[type, ...]:
    """The JSON kinds a field's type admits (`int | None`: int; null always means "not given")."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return tuple(kind for kind in typing.get_args(hint) if kind is not type(None))
    return (typing.get_origin(hint) or hint,)


def section(cls: type) -> Any:
    return field(default_factory=cls)


def check(path: str, f: dataclasses.Field, kind: type, value: Any, source: str) -> Any:
    meta = f.metadata
    expected = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}[kind]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{source}: {path}: {value!r} is not {expected}")
    low, high = meta["minimum"], meta["maximum"]
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{source}: {path}: {value!r} is out of range (allowed: {low} to {high})")
    if meta["pattern"] and not re.match(meta["pattern"], value):
        raise ConfigError(f"{source}: {path}: {value!r} is not allowed (allowed: {meta['allowed']})")
    problem = meta["check"](value) if meta["check"] else None
    if problem:
        raise ConfigError(f"{source}: {path}: {value!r} {problem}")
    return value


def merge(base: Any, raw: Any, source: str, prefix: str = "") -> Any:
    """Return `base` (a config dataclass) updated with the mapping `raw`, validating every value."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'top level'}: expected a mapping, got {raw!r}")
    known = {f.name: f for f in dataclasses.fields(base)}
    kinds = typing.get_type_hints(type(base))
    changes = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"{source}: {path}: unknown key (known: {', '.join(known)})")
        current = getattr(base, key)
        if dataclasses.is_dataclass(current):
            changes[key] = merge(current, value, source, f"{path}.")
        else:
            changes[key] = check(path, known[key], kinds[key], value, source)
    return dataclasses.replace(base, **changes)


def to_dict(table: Any) -> dict:
    return dataclasses.asdict(table)


def json_schema(cls: type) -> dict:
    """The JSON Schema of a table, from the same metadata that validates it."""
    properties = {}
    for f in dataclasses.fields(cls):
        kind = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(kind):
            properties[f.name] = json_schema(kind)
            continue
        prop: dict[str, Any] = {"type": TYPE_NAMES[kind], "default": f.default, "description": f.metadata["help"]}
        for key in ("minimum", "maximum", "pattern"):
            if f.metadata[key] is not None:
                prop[key] = f.metadata[key]
        properties[f.name] = prop
    return {"type": "object", "additionalProperties": False, "properties": properties}


def reference_rows(cls: type, prefix: str = "") -> str:
    """One markdown row per setting (key, type, default, allowed, what), sections flattened to dotted keys."""
    text = ""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            text += reference_rows(kind, f"{prefix}{f.name}.")
            continue
        meta = f.metadata
        allowed = meta["allowed"] or _bounds(meta["minimum"], meta["maximum"])
        shape = meta["shape"] or " or ".join(TYPE_NAMES[k] for k in json_kinds(kind))
        default = "required" if meta["required"] else f"`{json.dumps(f.default)}`"
        text += f"| `{prefix}{f.name}` | {shape} | {default} | {allowed} | {meta['help']} |\n"
    return text


def _bounds(low: float | None, high: float | None) -> str:
    if low is None or high is None:
        return "" if low is None and high is None else f"at least {low}" if high is None else f"at most {high}"
    return f"{low} to {high}"


def options(cls: type, path: str, names: tuple[str, ...]) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """Command-line options (appliance.verbs.arg's shape) that override the settings `names` of the section
    `cls` found at `path` (e.g. "server"), with the table's help."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return [((f"--{name.replace('_', '-')}",), {"dest": f"{path}.{name}", "default": None, "metavar": name.upper(),
                                               "help": f"{fields[name].metadata['help']} (overrides {path}.{name})"})
            for name in names]


def overrides(args: object) -> dict:
    """What `options` read from the command line, as a mapping `merge` takes (dotted dests nested)."""
    found: dict = {}
    for dest, value in vars(args).items():
        if "." in dest and value is not None:
            section, _, name = dest.partition(".")
            found.setdefault(section, {})[name] = value
    return found
