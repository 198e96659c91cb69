"""The typed schema every config section is written in: pydantic models validated in one pass, with errors
that name the field, the value and what is allowed.

A section is a `Section` subclass whose fields use the strict types below (`Int`, `Number`, `Bool`, `Str`);
a range or rule goes in `Annotated[..., allowed(predicate, "what is allowed")]`. Any validation failure,
from a direct `DataConfig(...)` or a whole run config, becomes one `ConfigError` line:

    optim.lr = -1.0 is not allowed: expected a learning rate >= 0.
    train.compile = 3 has the wrong type: expected true/false.
    unknown key 'optim.lrr'. Did you mean 'optim.lr'? Allowed here: betas, eps, ...

data/ is the lowest layer with a config section, so the schema lives here; training/config.py assembles
the run config from these sections.
"""

from __future__ import annotations

import contextvars
import difflib
import types
import typing
from collections.abc import Callable, Sequence
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError


class ConfigError(ValueError):
    """A config that cannot work; the message names the field, the value and what is allowed."""


def refusal(where: str, value: Any, allowed_text: str) -> ConfigError:
    """The one form of every refused value, from the schema or from a check past it (files, the model)."""
    return ConfigError(f"{where} = {value!r} is not allowed: expected {allowed_text}.")


def _number(value: Any) -> Any:
    # A bool is not a number here (pydantic would read true as 1.0); YAML 1.1 reads `3e-4` (no dot) as a
    # string, which pydantic then parses as the number it obviously is.
    if isinstance(value, bool):
        raise PydanticCustomError("wrong_type", "a number")
    return value


Int = StrictInt  # not a bool, not 2.0, not "2"
Bool = StrictBool  # true/false only, not 1 or "yes"
Str = StrictStr
Number = Annotated[float, BeforeValidator(_number)]  # an int or a finite float (inf/nan refused)


def allowed(predicate: Callable[[Any], bool], text: str) -> AfterValidator:
    """A field rule: values failing `predicate` are refused with "is not allowed: expected <text>"."""

    def check(value: Any) -> Any:
        if not predicate(value):
            raise PydanticCustomError("not_allowed", "{allowed}", {"allowed": text, "value": value})
        return value

    check.allowed_text = text  # type: ignore[attr-defined]  # read by `describe`
    return AfterValidator(check)


def not_allowed(field: str, value: Any, text: str) -> PydanticCustomError:
    """For rules across fields (a section's `model_validator`): `field` is the field to name."""
    return PydanticCustomError("not_allowed", "{allowed}", {"allowed": text, "field": field, "value": value})


def unknown_key(key: str, known: Sequence[str]) -> PydanticCustomError:
    """For sections that take extra keys from an open list (see `training.config.ModelConfig`)."""
    return PydanticCustomError("unknown_key", "unknown key", {"key": key, "known": sorted(known)})


_nesting: contextvars.ContextVar[int] = contextvars.ContextVar("section_nesting", default=0)


class Section(BaseModel):
    """A config section: unknown keys refused, infinities refused, and errors explained (module doc).
    `prefix` is the section's place in the run config, named in errors of a directly built section."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    prefix: ClassVar[str] = ""

    def __init__(self, **data: Any) -> None:
        # pydantic builds nested sections through this __init__ too: only the outermost one explains.
        depth = _nesting.set(_nesting.get() + 1)
        try:
            super().__init__(**data)
        except ValidationError as err:
            if _nesting.get() > 1:
                raise
            raise ConfigError(explain(err, type(self), data, self.prefix)) from None
        finally:
            _nesting.reset(depth)

    def replace(self, **changes: Any) -> Any:
        """A validated copy with `changes` (`dataclasses.replace` for sections)."""
        return type(self)(**{**self.model_dump(), **changes})

    @classmethod
    def parse(cls, data: Any) -> Any:
        """Build from a plain mapping (YAML), explaining the first problem as one ConfigError line."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.prefix or 'config'} = {data!r}: expected a mapping of keys to values")
        return cls(**data)


def explain(err: ValidationError, cls: type[BaseModel], data: Any, prefix: str = "") -> str:
    """The first error of `err` (raised validating `data` as `cls`) as one line: field, value, allowed."""
    first = err.errors()[0]
    kind, ctx = first["type"], first.get("ctx") or {}
    # The part of the location that walks fields and list items; the rest names union members.
    path, annotation = _field_path(cls, first["loc"])
    where = _join(prefix, _dotted(path))
    if kind == "extra_forbidden":
        allowed_keys = sorted(_model_at(cls, path[:-1]).model_fields)
        return unknown_key_message(where, str(path[-1]), allowed_keys)
    if kind == "unknown_key":
        return unknown_key_message(_join(where, ctx["key"]), ctx["key"], ctx["known"])
    if kind == "not_allowed":
        if "field" in ctx:
            where = _join(where, ctx["field"])
        return str(refusal(where, ctx["value"], ctx["allowed"]))
    value = _lookup(data, path)
    return f"{where} = {value!r} has the wrong type: expected {describe(annotation)}."


def unknown_key_message(where: str, key: str, allowed_keys: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, allowed_keys, n=1, cutoff=0.6)
    hint = f" Did you mean '{_join(where.rpartition('.')[0], close[0])}'?" if close else ""
    return f"unknown key '{where}'.{hint} Allowed here: {', '.join(allowed_keys)}."


def describe(tp: Any) -> str:
    """A type annotation in a user's words: `int | None` -> "an integer or null"; an annotation carrying an
    `allowed` rule -> the rule's text."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        texts = [getattr(getattr(m, "func", None), "allowed_text", None) for m in tp.__metadata__]
        return next((t for t in texts if t), None) or describe(args[0])
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    if tp in names:
        return names[tp]
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin in (list, tuple):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return f"a list of {len(args)} values ({', '.join(describe(a) for a in args)})"
        return f"a list of {describe(args[0]) if args else 'values'}"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is dict or tp is dict or (isinstance(tp, type) and issubclass(tp, BaseModel)):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _field_path(cls: type[BaseModel], loc: tuple) -> tuple[list, Any]:
    """The longest prefix of `loc` that is field names and list indices, and the annotation it reaches."""
    path: list = []
    annotation: Any = cls
    for part in loc:
        model = _as_model(annotation)
        if model is not None and isinstance(part, str):
            path.append(part)
            field = model.model_fields.get(part)
            annotation = _annotation(field) if field is not None else Any
            continue
        item = _item_type(annotation)
        if isinstance(part, int) and item is not None:
            path.append(part)
            annotation = item
            continue
        break
    return path, annotation


def _annotation(field: FieldInfo) -> Any:
    # pydantic moves a field's top-level `Annotated[...]` metadata into `field.metadata`; put it back.
    if field.metadata:
        return Annotated[(field.annotation, *field.metadata)]
    return field.annotation


def _as_model(tp: Any) -> type[BaseModel] | None:
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _item_type(tp: Any) -> Any:
    """The item type of a list or a `tuple[X, ...]`, else None (a fixed-length tuple is named whole)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        return args[0] if args else Any
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return args[0]
    return None


def _model_at(cls: type[BaseModel], path: list) -> type[BaseModel]:
    for part in path:
        cls = _as_model(cls.model_fields[part].annotation) or cls
    return cls


def _lookup(data: Any, path: list) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _dotted(path: list) -> str:
    out = ""
    for part in path:
        out = f"{out}[{part}]" if isinstance(part, int) else _join(out, part)
    return out


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path and key != "" else path or str(key)
