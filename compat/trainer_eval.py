"""Several loaders per evaluation stage in :class:`compat.Trainer`, with Lightning 2.6's rule.

Lightning reads a list, tuple or dict given as ``val_dataloaders`` / ``dataloaders`` as a
collection of loaders (a ``CombinedLoader`` in mode "sequential"), whatever its items are;
collections inside it are opened up too, except those of numbers and strings (``[[0, 1], [2,
3]]`` is two loaders); a single loader (or a ``CombinedLoader``) is one. :func:`eval_loaders` turns such an argument into
what the Runtime takes: one loader as itself, several as a
:class:`runtime.eval_loaders.EvalLoaders`, which the Runtime runs one after the other
(:mod:`runtime.eval_loaders` has the semantics: ``dataloader_idx``, the name suffix, the
results per loader).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runtime.errors import ConfigError
from runtime.eval_loaders import one_or_several

__all__ = ["eval_loaders"]


def _flattened(loaders: Any) -> list[Any]:
    """The loaders of a collection as Lightning reads it: lists, tuples and dicts inside are
    opened up too, except one holding only numbers and strings (that is a loader itself)."""
    if isinstance(loaders, Mapping):
        items = list(loaders.values())
    elif isinstance(loaders, list | tuple):
        items = list(loaders)
    else:
        return [loaders]
    if all(isinstance(item, int | float | str) for item in items):
        return [loaders]
    return [loader for item in items for loader in _flattened(item)]


def eval_loaders(loaders: Any, argument: str) -> Any:
    """``loaders`` (a loader, a list / tuple / dict of loaders, a CombinedLoader or None) as the
    Runtime takes it; an empty collection is a :class:`ConfigError` naming ``argument``."""
    if not isinstance(loaders, Mapping | list | tuple):
        return loaders
    if not loaders:
        raise ConfigError(
            f"{argument}: an empty {type(loaders).__name__} of loaders; give at least one loader"
        )
    return one_or_several(_flattened(loaders))
