"""``PL_TRAINER_*`` environment defaults for :class:`compat.Trainer`, as Lightning reads them.

Lightning decorates ``Trainer.__init__`` so that an environment variable
``PL_<CLASS>_<ARGUMENT>`` (``PL_TRAINER_MAX_EPOCHS=3``, ``PL_TRAINER_ACCELERATOR=cpu``) becomes
that argument's default: an argument given in the call wins, an empty variable counts as unset,
and the text is read as a Python literal (``3``, ``0.5``, ``True``, ``None``, ``[0]``) or, when it
is none, kept as the string. The class name is the trainer's own (a subclass ``MyTrainer`` reads
``PL_MYTRAINER_*``). A value busloop refuses is reported with the variable that set it.
"""

from __future__ import annotations

import ast
import functools
import inspect
import os
from collections.abc import Callable
from typing import Any, TypeVar

from runtime.errors import ConfigError

__all__ = ["defaults_from_env", "env_defaults"]

F = TypeVar("F", bound=Callable[..., None])


def _literal(text: str) -> Any:
    """A Python literal when the text is one, else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return text


def env_defaults(cls: type, names: list[str]) -> dict[str, tuple[str, Any]]:
    """The arguments of ``names`` set in the environment for ``cls``: name -> (variable, value)."""
    found: dict[str, tuple[str, Any]] = {}
    for name in names:
        variable = f"PL_{cls.__name__.upper()}_{name.upper()}"
        text = os.environ.get(variable)
        if text:  # unset or empty: no default
            found[name] = (variable, _literal(text))
    return found


def defaults_from_env(init: F) -> F:
    """Decorate a trainer's ``__init__``: environment values fill the arguments not given."""
    names = [p for p in inspect.signature(init).parameters if p != "self"]

    @functools.wraps(init)
    def with_env_defaults(self: Any, *args: Any, **kwargs: Any) -> None:
        from_env = {
            name: found
            for name, found in env_defaults(type(self), names).items()
            if name not in kwargs
        }
        try:
            init(self, *args, **{**{n: value for n, (_, value) in from_env.items()}, **kwargs})
        except ConfigError as exc:
            for name, (variable, _) in from_env.items():
                if f"({name}=" in str(exc):
                    raise type(exc)(f"{exc} (set by {variable}={os.environ[variable]!r})") from None
            raise

    return with_env_defaults  # type: ignore[return-value]
