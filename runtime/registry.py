"""The callback registry: names a config may use, mapped to callback classes.

A config entry ``{name, active, params}`` names a registered callback or an import path
(``mypkg.cbs:MyCallback``, ``lightning.pytorch.callbacks.LearningRateMonitor``); only import
paths the user wrote are imported. Packages register their callbacks when they are imported
(``@register`` on the class): ``compat`` its Lightning callbacks, ``callbacks`` the native
ones; the composition root (``runtime.cli``) and ``callbacks.build_callbacks`` import them.
This module depends on no other package of busloop's but the runtime's name helpers, so
every floor can register into it.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from runtime.errors import ConfigError
from runtime.names import resolve_import, suggest

__all__ = [
    "CALLBACKS",
    "CALLBACK_ADAPTERS",
    "EXTENSIONS_GROUP",
    "class_name",
    "instantiate",
    "load_extensions",
    "adapt_callbacks",
    "register",
    "resolve_callback",
]

#: The entry-point group of packages that extend the runtime on import (busloop declares
#: ``compat`` and ``callbacks`` in it; a third-party package may add its own).
EXTENSIONS_GROUP = "busloop.extensions"
_loaded = False

T = TypeVar("T", bound=type)

#: Registered name -> callback class.
CALLBACKS: dict[str, type] = {}

#: Functions ``adapter(callbacks, runtime) -> callbacks`` that turn callbacks the bus cannot
#: subscribe as they are (Lightning's ``(trainer, pl_module, ...)`` hooks) into ones it can,
#: applied in order when a Runtime is built; ``compat`` appends its adapter on import, so the
#: runtime runs stock Lightning callbacks without importing compat.
CALLBACK_ADAPTERS: list[Callable[[list[object], Any], list[object]]] = []


def adapt_callbacks(callbacks: list[object], runtime: Any) -> list[object]:
    """``callbacks`` passed through every registered adapter (extensions loaded first)."""
    load_extensions()
    for adapter in CALLBACK_ADAPTERS:
        callbacks = adapter(callbacks, runtime)
    return callbacks


def register(*names: str) -> Callable[[T], T]:
    """Class decorator: register a callback under its class name and any extra ``names``."""

    def decorate(cls: T) -> T:
        for name in (cls.__name__, *names):
            if name in CALLBACKS and CALLBACKS[name] is not cls:
                raise ValueError(f"callback name {name!r} is already registered by {CALLBACKS[name]}")
            CALLBACKS[name] = cls
        return cls

    return decorate


def load_extensions() -> None:
    """Import every package of the ``busloop.extensions`` entry-point group, once.

    They register what they bring (callbacks, model bridges) on import, so the runtime
    finds them by name without importing a package above it. A package that fails to
    import is reported with its entry point named.
    """
    global _loaded
    if _loaded:
        return
    _loaded = True
    for entry_point in importlib.metadata.entry_points(group=EXTENSIONS_GROUP):
        try:
            entry_point.load()
        except Exception as exc:
            _loaded = False
            raise ImportError(
                f"busloop extension {entry_point.name!r} ({entry_point.value}) failed to import: {exc}"
            ) from exc


def resolve_callback(name: str, *, key: str) -> type:
    """The class for a registered name or an import path; ConfigError names ``key``."""
    if name not in CALLBACKS:
        load_extensions()
    if name in CALLBACKS:
        return CALLBACKS[name]
    if ":" in name or "." in name:
        resolved = resolve_import(name, key=key)
        if not callable(resolved):
            raise ConfigError(f"{key}: {name!r} is not a class or factory")
        return resolved  # type: ignore[no-any-return]
    raise ConfigError(
        f"{key}: unknown callback {name!r}{suggest(name, CALLBACKS)} "
        "(use a registered name or an import path like 'pkg.module:MyCallback')"
    )


def instantiate(cls: type, params: dict[str, Any], *, key: str) -> object:
    """``cls(**params)``, with a parameter mismatch reported as a ConfigError naming ``key``."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
        if not accepts_any:
            known = [n for n, p in signature.parameters.items() if p.kind is not p.VAR_POSITIONAL]
            for param in params:
                if param not in known:
                    raise ConfigError(
                        f"{key}.params.{param}: {cls.__name__} has no parameter {param!r}"
                        f"{suggest(param, known)}; it takes {', '.join(known) or 'none'}"
                    )
        try:
            signature.bind(**params)
        except TypeError as exc:
            raise ConfigError(f"{key}.params: {cls.__name__}: {exc}") from None
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}.params: {cls.__name__} rejected its parameters: {exc}") from None


def class_name(name: str) -> str:
    """The class name a config entry refers to (aliases resolved, import paths' last part)."""
    if name in CALLBACKS:
        return CALLBACKS[name].__name__
    return name.rsplit(":", 1)[-1].rsplit(".", 1)[-1]
