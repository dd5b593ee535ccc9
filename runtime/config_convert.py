"""The strict cattrs converter behind ``load_config``, and the validators of the config fields.

``runtime.config`` declares the attrs classes and reads, overrides and writes config data;
this module knows how to structure *any* attrs class strictly and nothing about busloop's
classes, so it does not import ``runtime.config``. Dependencies run one way:
``config -> config_convert -> names -> errors``.

* ``converter`` never coerces: an int, bool or str field takes only that type (no ``"3"``
  -> 3, no ``true`` -> 1), a float field an int or a float; unknown keys are rejected (with
  the nearest valid name), an empty section (``None``) means the defaults, and lists and
  dicts are checked for shape.
* Each attrs field is structured, converted (``attrs.field(converter=...)``) and validated
  as soon as it is read (``_checked``), so a failing validator's error keeps its key path. A
  field's ``metadata[_STRUCTURE]`` replaces its type's hook for that field.
* The validators (``_ge``, ``_one_of``, ...) have the attrs signature but ignore the
  instance, so the converter can call them before the instance exists.
* Every problem is a ``_Problem`` (a ``ConfigError``); ``_problems`` flattens cattrs'
  exception tree into the ``key.path: problem`` lines of the ``ConfigError`` that
  ``load_config`` raises.

The underscore names here are shared with ``runtime.config`` only.
"""

import copy
import functools
import operator
import reprlib
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, override

from runtime.errors import ConfigError
from runtime.names import suggest

__all__ = ["converter", "structure"]


class _Problem(ConfigError):
    """A problem with one value; the key path is added by whoever knows it."""

    def __init__(self, message: str, field: str | None = None, subpath: tuple[str, ...] = ()):
        self.message, self.subpath = message, subpath
        super().__init__(f"{'.'.join((field, *subpath))}: {message}" if field else message)


_repr = reprlib.Repr()
_repr.maxstring, _repr.maxother = 60, 60


def _got(value: object) -> str:
    return f"{_repr.repr(value)} ({type(value).__name__})"


# --- validators (attrs signature; they ignore the instance so cattrs hooks can call them) ---

_Validator = Callable[[Any, Any, Any], None]  # attrs validator: (instance, attribute, value)


def _ge(bound: int) -> _Validator:
    def check(_inst: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
        if value < bound:
            raise _Problem(f"must be >= {bound}, got {value!r}", attribute.name)

    return check


def _gt(bound: float) -> _Validator:
    def check(_inst: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
        if value <= bound:
            raise _Problem(f"must be > {bound}, got {value!r}", attribute.name)

    return check


def _between(low: int, high: int) -> _Validator:
    def check(_inst: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
        if not low <= value <= high:
            raise _Problem(f"must be between {low} and {high}, got {value!r}", attribute.name)

    return check


def _one_of(*choices: str) -> _Validator:
    def check(_inst: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
        if value not in choices:
            hint = suggest(value, choices) if isinstance(value, str) else ""
            allowed = ", ".join(repr(c) for c in choices)
            raise _Problem(f"must be one of {allowed}, got {value!r}{hint}", attribute.name)

    return check


def _each(validator: _Validator) -> _Validator:
    def check(inst: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
        for index, item in enumerate(value):
            try:
                validator(inst, attribute, item)
            except _Problem as exc:
                raise _Problem(exc.message, attribute.name, (str(index),)) from None

    return check


def _batches_or_fraction(*, zero_ok: bool) -> _Validator:
    """An int counts batches (>= 1, or >= 0 with ``zero_ok``); a float is a fraction."""

    def check(_inst: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
        low = 0 if zero_ok else 1
        if isinstance(value, int) and value < low:
            raise _Problem(
                f"as a number of batches must be >= {low}, got {value!r}", attribute.name
            )
        if isinstance(value, float) and not (0.0 <= value <= 1.0 and (zero_ok or value > 0.0)):
            span = "[0, 1]" if zero_ok else "(0, 1]"
            raise _Problem(f"as a fraction must be in {span}, got {value!r}", attribute.name)

    return check


def _opt(validator: _Validator) -> _Validator:
    """``validator``, with ``None`` also allowed."""
    return attrs.validators.optional(validator)


# --- the converter: strict primitives, path-carrying errors ---

_STRUCTURE = "busloop_structure"  # field metadata key: a cattrs structure hook for that field

converter = cattrs.Converter(forbid_extra_keys=True)


def _strict(accepts: Callable[[Any], bool], expected: str, cast: Callable[[Any], Any]) -> Any:
    """A hook that takes only values ``accepts`` allows: no str -> int, no bool -> int."""

    def hook(value: Any, _type: Any) -> Any:
        if not accepts(value):
            raise _Problem(f"expected {expected}, got {_got(value)}")
        return cast(value)

    return hook


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


converter.register_structure_hook(int, _strict(_is_int, "an integer", int))
converter.register_structure_hook(float, _strict(_is_number, "a number", float))
converter.register_structure_hook(
    bool, _strict(lambda v: isinstance(v, bool), "true or false", bool)
)
converter.register_structure_hook(str, _strict(lambda v: isinstance(v, str), "a string", str))
converter.register_structure_hook(int | float, _strict(_is_number, "a number", lambda v: v))
converter.register_structure_hook(int | str, lambda value, _type: value)  # checked by the field
converter.register_structure_hook(Any, lambda value, _type: value)


def _is_optional(type_: Any) -> bool:
    args = typing.get_args(type_)
    is_union = typing.get_origin(type_) in (typing.Union, types.UnionType)
    return is_union and type(None) in args


@converter.register_structure_hook_factory(_is_optional)
def _optional_hook(type_: Any) -> Callable[[Any, Any], Any]:
    rest = [a for a in type_.__args__ if a is not type(None)]
    inner_type = functools.reduce(operator.or_, rest)
    inner = converter.get_structure_hook(inner_type)
    return lambda value, _type: None if value is None else inner(value, inner_type)


@converter.register_structure_hook_factory(lambda t: getattr(t, "__origin__", None) is list)
def _list_hook(type_: Any) -> Callable[[Any, Any], list[Any]]:
    (item_type,) = type_.__args__
    item_hook = converter.get_structure_hook(item_type)

    def structure(value: Any, _type: Any) -> list[Any]:
        if not isinstance(value, list | tuple):
            raise _Problem(f"expected a list, got {_got(value)}")
        result, errors = [], []
        for index, item in enumerate(value):
            try:
                result.append(item_hook(item, item_type))
            except Exception as exc:
                note = IterableValidationNote(f"Structuring index {index}", index, item_type)
                exc.__notes__ = [*getattr(exc, "__notes__", []), note]
                errors.append(exc)
        if errors:
            raise IterableValidationError(f"While structuring {type_}", errors, type_)
        return result

    return structure


@converter.register_structure_hook_factory(lambda t: getattr(t, "__origin__", None) is dict)
def _dict_hook(_type: Any) -> Callable[[Any, Any], dict[str, Any]]:
    def structure(value: Any, _type: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise _Problem(f"expected a mapping, got {_got(value)}")
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise _Problem(f"keys must be strings, got {_got(bad[0])}")
        return copy.deepcopy(dict(value))

    return structure


def _checked(hook: Callable[[Any, Any], Any], attribute: "attrs.Attribute[Any]") -> Any:
    """Structure a field, then convert and validate it, so the error keeps its key path."""

    def structure(value: Any, type_: Any) -> Any:
        result = hook(value, type_)
        if callable(attribute.converter):
            result = attribute.converter(result)
        if attribute.validator is not None:
            attribute.validator(None, attribute, result)
        return result

    return structure


@converter.register_structure_hook_factory(attrs.has)
def _attrs_hook(cls: type) -> Callable[[Any, Any], Any]:
    attrs.resolve_types(cls)
    overrides: dict[str, Any] = {}
    for a in attrs.fields(cls):
        custom = a.metadata.get(_STRUCTURE)
        if custom is not None or a.validator is not None:
            hook = custom or converter.get_structure_hook(a.type)
            overrides[a.name] = override(struct_hook=_checked(hook, a))
    base: Callable[[Any, Any], Any] = make_dict_structure_fn(
        cls, converter, _cattrs_forbid_extra_keys=True, **overrides
    )

    def structure(value: Any, type_: Any) -> Any:
        if value is None:  # an empty section (`trainer:` in YAML) means the defaults
            value = {}
        if not isinstance(value, Mapping):
            raise _Problem(f"expected a mapping, got {_got(value)}")
        return base(value, type_)

    return structure


def _problems(exc: BaseException, path: tuple[str, ...] = ()) -> list[str]:
    """Flatten a cattrs exception tree into ``key.path: problem`` lines."""
    where = ".".join(path) or "config"
    if isinstance(exc, cattrs.BaseValidationError):
        lines = []
        for sub in exc.exceptions:
            sub_path = path
            for note in getattr(sub, "__notes__", []):
                if isinstance(note, AttributeValidationNote):
                    sub_path = (*path, note.name)
                elif isinstance(note, IterableValidationNote):
                    sub_path = (*path, str(note.index))
            lines += _problems(sub, sub_path)
        return lines
    if isinstance(exc, ForbiddenExtraKeysError):
        names = [a.name for a in attrs.fields(exc.cl)]
        return [  # a key with a newline (possible in YAML) must not break the one line
            f"{'.'.join((*path, str(k) if str(k).isprintable() else repr(str(k))))}: unknown key"
            f"{suggest(str(k), names)}"
            for k in sorted(exc.extra_fields, key=str)
        ]
    if isinstance(exc, _Problem):
        return [f"{'.'.join((*path, *exc.subpath)) or 'config'}: {exc.message}"]
    if isinstance(exc, KeyError):
        return [f"{where}: required key is missing"]
    return [f"{where}: {exc}"]


_T = typing.TypeVar("_T")


def structure(data: Any, cls: type[_T]) -> _T:
    """``data`` structured strictly into the attrs class ``cls``.

    Raises ``ConfigError`` with one ``key.path: problem`` line per problem (validators,
    unknown keys with the nearest valid name, wrong types).
    """
    try:
        return converter.structure(data, cls)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(_problems(exc)) from None
