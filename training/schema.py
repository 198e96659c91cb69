"""Typed dataclass trees from plain dicts (YAML) and dotted `key=value` overrides, with errors that say
which field, what value and what is allowed.

A dataclass may leave itself open to extra keys: a class attribute `open_field = "fields"` names a
`dict` field that collects them, and a classmethod `open_keys() -> list[str]` says which are allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A run config that cannot work; the message names the field, the value and what is allowed."""


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from `data` (a mapping), checking every key and every value's type."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'config'} = {data!r}: expected a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    open_field = getattr(cls, "open_field", None)
    open_keys = set(cls.open_keys()) if open_field else set()
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in data.items():
        where = _join(path, key)
        if key in known and key != open_field:
            kwargs[key] = check_type(value, hints[key], where)
        elif key in open_keys:
            extra[key] = value
        else:
            raise ConfigError(
                unknown_key_message(where, key, sorted((set(known) - {open_field}) | open_keys))
            )
    if open_field:
        kwargs[open_field] = extra
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Plain-data view of a dataclass tree (open fields flattened back into their section)."""
    if dataclasses.is_dataclass(obj):
        out: dict[str, Any] = {}
        open_field = getattr(obj, "open_field", None)
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.name == open_field:
                out.update(to_dict(value))
            else:
                out[f.name] = to_dict(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value); the value is read as YAML (`3`, `true`, `[a, b]`, `null`)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: expected key=value, e.g. max_steps=20 or model.window=64")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_override(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    """Set `tree[k0][k1]...[kn] = value`, creating sections; key names are checked later by `from_dict`."""
    node = tree
    for i, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(
                f"override {'.'.join(keys)}: {'.'.join(keys[: i + 1])} is a value, not a section"
            )
        node = child
    node[keys[-1]] = value


def unknown_key_message(where: str, key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    hint = f" Did you mean '{_join(where.rpartition('.')[0], close[0])}'?" if close else ""
    return f"unknown key '{where}'.{hint} Allowed here: {', '.join(allowed)}."


def check_type(value: Any, tp: Any, where: str) -> Any:
    """Return `value` as type `tp` (ints widen to float, "3e-4" reads as a float), or raise ConfigError."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return check_type(value, arg, where)
            except ConfigError:
                continue
        raise _type_error(where, value, " or ".join(_describe(a) for a in args))
    if origin is Literal:
        if value in args:
            return value
        raise _type_error(where, value, "one of " + ", ".join(repr(a) for a in args))
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _type_error(where, value, _describe(tp))
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise _type_error(where, value, _describe(tp))
            return tuple(check_type(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        return origin(check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _type_error(where, value, "a mapping")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = _as_float(value)
        if number is not None:
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is type(None) and value is None:
        return None
    raise _type_error(where, value, _describe(tp))


def _as_float(value: Any) -> float | None:
    # YAML 1.1 reads `3e-4` (no dot) as a string; accept it as the number it obviously is.
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _type_error(where: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{where} = {value!r} has the wrong type: expected {expected}.")


def _describe(tp: Any) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    if tp in names:
        return names[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, tuple):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
        return f"a list of {_describe(args[0]) if args else 'values'}"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)
