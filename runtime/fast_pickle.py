"""A ``pickle_module`` for :func:`torch.save` that makes writing a checkpoint's metadata cheap.

``torch.save`` pickles the checkpoint with a pickler whose ``persistent_id`` (Python code,
two calls and a few ``isinstance`` tests deep) is asked about *every* object pickled, to
find tensor storages. A busloop checkpoint is mostly small plain values (the loop
position, the config, the Lightning ``loops`` counters, the history): hundreds of them,
so on a small model that test was most of the write's CPU time.

Passing this module as ``torch.save(..., pickle_module=fast_pickle)`` gives torch's
pickler (torch subclasses ``pickle_module.Pickler`` and defines ``persistent_id`` on the
subclass) a ``persistent_id`` that answers ``None`` for the built-in plain types at once
and asks torch's for everything else. A storage is never one of those types, so torch's
answer for them is ``None`` too: the bytes written are exactly those of a plain
``torch.save``, and the file loads the same way.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from typing import Any

__all__ = ["PLAIN_TYPES", "Pickler"]

#: Types whose objects are never tensor storages (``persistent_id`` is ``None`` for them).
PLAIN_TYPES: frozenset[type] = frozenset(
    {str, int, float, bool, complex, bytes, type(None), dict, OrderedDict, list, tuple}
)


class Pickler(pickle.Pickler):
    """``pickle.Pickler`` whose subclasses' ``persistent_id`` skip the plain types."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        inner = cls.__dict__.get("persistent_id")
        if inner is None:
            return

        def persistent_id(
            self: Pickler, obj: Any, _inner: Any = inner, _plain: frozenset[type] = PLAIN_TYPES
        ) -> Any:
            if type(obj) in _plain:
                return None
            return _inner(self, obj)

        cls.persistent_id = persistent_id  # type: ignore[method-assign,assignment]
