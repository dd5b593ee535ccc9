"""What a checkpoint may hold: the ``weights_only``-safe content check.

A busloop checkpoint is loaded with ``torch.load(path, weights_only=True)``, so it holds
tensors, numbers, strings, booleans, ``None``, ``torch.Size`` and lists / tuples / dicts of
those only. :func:`check_weights_only_safe` refuses anything else before a write, naming the
key path of the first offending value. (Split from :mod:`runtime.checkpoint`, which
re-exports both names.)
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

__all__ = ["CheckpointError", "check_weights_only_safe"]

_SCALAR_TYPES = (str, int, float, bool, complex, bytes, type(None))
_CONTAINER_TYPES = (dict, OrderedDict, list, tuple)
_SAFE_MESSAGE = "cannot be stored; checkpoints hold tensors, numbers, strings, lists and dicts only"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read; the message names the file or key."""


# ---------------------------------------------------------------------------------------
# Content check
# ---------------------------------------------------------------------------------------


_LEAF_TYPES = frozenset(
    {*_SCALAR_TYPES, torch.Tensor, torch.nn.Parameter, torch.Size, torch.dtype, torch.device}
)


class _Unsafe(Exception):  # noqa: N818 - internal: unwinds to check_weights_only_safe
    """An unsafe value or key; ``steps`` collects its key path on the way out (innermost first)."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        self.steps: list[str | int] = []


def _check(value: Any, active: set[int]) -> None:
    """Walk ``value``; raise :class:`_Unsafe` at the first value that is not safe.

    The key path is built only for the error (by the ``except`` clauses as the walk
    unwinds), not for every value checked: a checkpoint holds hundreds of values.
    """
    kind = type(value)
    if kind in _LEAF_TYPES:
        return
    if kind not in _CONTAINER_TYPES:
        raise _Unsafe(f"{kind} {_SAFE_MESSAGE}")
    ident = id(value)
    if ident in active:  # a cycle: pickle copes, and every element on it is checked once
        return
    active.add(ident)
    try:
        if kind is dict or kind is OrderedDict:
            for key, item in value.items():
                if type(key) not in _SCALAR_TYPES and type(key) is not tuple:
                    raise _Unsafe(f"key {key!r} of {type(key)} {_SAFE_MESSAGE}")
                if type(item) in _LEAF_TYPES:
                    continue
                try:
                    _check(item, active)
                except _Unsafe as err:
                    err.steps.append(key if isinstance(key, str) else repr(key))
                    raise
        else:
            for index, item in enumerate(value):
                try:
                    _check(item, active)
                except _Unsafe as err:
                    err.steps.append(index)
                    raise
    finally:
        active.discard(ident)


def check_weights_only_safe(obj: Any, root: str = "") -> None:
    """Raise :class:`CheckpointError` unless ``obj`` loads with ``weights_only=True``.

    The error names the key path of the first offending value, e.g.
    ``callbacks.MyCb.foo: <class 'x.Y'> cannot be stored; ...``. ``root`` prefixes
    every path (use it when checking one branch of a larger dict).
    """
    try:
        _check(obj, set())
    except _Unsafe as err:
        path = root
        for step in reversed(err.steps):
            path = (
                f"{path}[{step}]" if isinstance(step, int) else (f"{path}.{step}" if path else step)
            )
        raise CheckpointError(f"{path or '<checkpoint>'}: {err.problem}") from None
