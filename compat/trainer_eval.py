"""Several loaders per evaluation stage in :class:`compat.Trainer`, with Lightning 2.6's rule.

Lightning reads a list, tuple or dict given as ``val_dataloaders`` / ``dataloaders`` as a
collection of loaders (a ``CombinedLoader`` in mode "sequential"), whatever its items are; a
single loader (or a ``CombinedLoader``) is one. :func:`eval_loaders` turns such an argument into
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


def eval_loaders(loaders: Any, argument: str) -> Any:
    """``loaders`` (a loader, a list / tuple / dict of loaders, a CombinedLoader or None) as the
    Runtime takes it; an empty or nested collection is a :class:`ConfigError` naming ``argument``."""
    if isinstance(loaders, Mapping):
        items = list(loaders.values())
    elif isinstance(loaders, list | tuple):
        items = list(loaders)
    else:
        return loaders
    if not items:
        raise ConfigError(
            f"{argument}: an empty {type(loaders).__name__} of loaders; give at least one loader"
        )
    for item in items:
        if isinstance(item, list | tuple | Mapping):
            raise ConfigError(
                f"{argument}: a nested {type(item).__name__} of loaders; give a flat list or dict of loaders"
            )
    return one_or_several(items)
