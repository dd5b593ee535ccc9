"""A ``pickle_module`` for :func:`torch.save` that makes writing a checkpoint's metadata cheap.

``torch.save`` pickles the checkpoint with a pickler whose ``persistent_id`` (Python code,
two calls and a few ``isinstance`` tests deep) is asked about *every* object pickled, to
find tensor storages. A busloop checkpoint is mostly small plain values (the loop
position, the config, the Lightning ``loops`` counters, the history): hundreds of them,
so on a small model that test was most of the write's CPU time.

Passing this module as ``torch.save(..., pickle_module=fast_pickle)`` gives torch's pickler
(torch subclasses ``pickle_module.Pickler`` and defines ``persistent_id`` on the subclass)
a cheaper way to the same answers:

- Where the C pickler lets a pickler's ``persistent_id`` be replaced per instance (CPython
  up to 3.12), it starts with a C callable that answers ``None`` for every object, without
  a Python call. Storages are only ever reached through a tensor's reduction, and every
  tensor passes through :meth:`Pickler.reducer_override` first (the C pickler calls it for
  every object that is not a plain built-in value), which switches torch's ``persistent_id``
  on; the storage's id switches it off again. A storage reached any other way (never in a
  checkpoint that passed :func:`runtime.checkpoint.check_weights_only_safe`) is refused
  with a ``PicklingError`` rather than written wrongly.
- Elsewhere, ``persistent_id`` answers ``None`` for the built-in plain types at once and
  asks torch's for everything else.

A storage is never one of the objects answered ``None`` without torch, so the bytes written
are exactly those of a plain ``torch.save``, and the file loads the same way.

Where the slot is settable, a plain tensor (exactly ``torch.Tensor``, dense, on the CPU, of a
dtype torch pickles through a typed storage, without attributes, hooks or
``skip_data``) is also reduced here rather than by ``Tensor.__reduce_ex__`` (Python, a few dozen
tests deep): the same ``_rebuild_tensor_v2`` call with the same arguments, its storage's id
asked of torch once, directly (torch's ``persistent_id`` is otherwise asked about the rebuild
function and the argument tuple first). Any other tensor goes through torch's reduction.
"""

from __future__ import annotations

import collections
import copyreg
import pickle
import types
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["PLAIN_TYPES", "Pickler"]

#: Types whose objects are never tensor storages (``persistent_id`` is ``None`` for them).
PLAIN_TYPES: frozenset[type] = frozenset(
    {str, int, float, bool, complex, bytes, type(None), dict, OrderedDict, list, tuple}
)

#: A C callable taking one object and returning ``None`` (a deque that keeps nothing).
_NO_ID: Callable[[Any], None] = collections.deque(maxlen=0).append

#: The C pickler's ``persistent_id`` slot, settable per instance (CPython 3.12 and older).
_ID_SLOT = pickle.Pickler.__dict__.get("persistent_id")
_SET_ID = _ID_SLOT.__set__ if isinstance(_ID_SLOT, types.GetSetDescriptorType) else None

_STORAGE_TYPES = (torch.storage.TypedStorage, torch.UntypedStorage)

_Tensor = torch.Tensor
_TypedStorage = torch.storage.TypedStorage
_REBUILD = torch._utils._rebuild_tensor_v2
_METADATA = torch._C._get_tensor_metadata  # type: ignore[attr-defined]
_SERIALIZATION = torch.serialization._serialization_tls
_STRIDED = torch.strided


def _typed_storage_dtypes() -> frozenset[torch.dtype]:
    """The common dtypes torch pickles as ``_rebuild_tensor_v2`` of a typed storage (none,
    so no tensor is reduced here, where this torch does not say which those are)."""
    new_dtypes = getattr(torch.storage, "_new_dtypes", None)
    if new_dtypes is None:
        return frozenset()
    common = {
        torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.complex64,
        torch.complex128, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool,
    }
    return frozenset(common - set(new_dtypes()))


#: Dtypes of the tensors reduced here rather than by ``Tensor.__reduce_ex__``.
FAST_DTYPES: frozenset[torch.dtype] = _typed_storage_dtypes()


class Pickler(pickle.Pickler):
    """``pickle.Pickler`` whose subclasses' ``persistent_id`` runs only where a storage can be."""

    _torch_persistent_id: Any = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        inner = cls.__dict__.get("persistent_id")
        if inner is None:
            return
        if _SET_ID is not None:
            cls._torch_persistent_id = inner
            return

        def persistent_id(
            self: Pickler, obj: Any, _inner: Any = inner, _plain: frozenset[type] = PLAIN_TYPES
        ) -> Any:
            if type(obj) in _plain:
                return None
            return _inner(self, obj)

        cls.persistent_id = persistent_id  # type: ignore[method-assign,assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        inner = type(self)._torch_persistent_id
        if inner is not None and _SET_ID is not None:
            self._torch_id = types.MethodType(inner, self)
            _SET_ID(self, _NO_ID)

    def _storage_id(self, obj: Any) -> Any:
        """Torch's answer; once it names a storage, back to answering ``None`` in C."""
        pid = self._torch_id(obj)
        if pid is not None:
            _SET_ID(self, _NO_ID)  # type: ignore[misc]
        return pid

    def reducer_override(self, obj: Any) -> Any:
        """A plain tensor's reduction (see the module docstring); before any other tensor's,
        switch torch's ``persistent_id`` on. An ``OrderedDict``'s reduction is answered here
        too (see :func:`_ordered_dict_reduction`)."""
        if type(obj) is OrderedDict:
            return _ordered_dict_reduction(obj, self)
        if _SET_ID is not None and type(self)._torch_persistent_id is not None:
            if type(obj) is _Tensor and _reducible(obj):
                return self._reduce_tensor(obj)
            if isinstance(obj, torch.Tensor):
                _SET_ID(self, self._storage_id)
            elif isinstance(obj, _STORAGE_TYPES):
                raise pickle.PicklingError(
                    "fast_pickle: a storage outside a tensor; save it with torch.save's own pickle"
                )
        return NotImplemented

    def _reduce_tensor(self, tensor: torch.Tensor) -> tuple[Any, tuple[Any, ...]]:
        """What ``Tensor.__reduce_ex__`` returns for a plain tensor; its storage is registered
        with torch now and answered by :meth:`_pending_id` when the pickler reaches it."""
        storage = _TypedStorage(wrap_storage=tensor.untyped_storage(), dtype=tensor.dtype, _internal=True)
        self._pending = (storage, self._torch_id(storage))
        _SET_ID(self, self._pending_id)  # type: ignore[misc]
        args: tuple[Any, ...] = (
            storage,
            tensor.storage_offset(),
            tuple(tensor.size()),
            tensor.stride(),
            tensor.requires_grad,
            OrderedDict(),  # backward hooks are never saved
        )
        metadata = _METADATA(tensor)  # the conjugate / negative bits, when set
        return (_REBUILD, args + (metadata,) if metadata else args)

    def _pending_id(self, obj: Any) -> Any:
        """The registered storage's id for the storage, None for what is pickled before it
        (the rebuild function, the argument tuple); then back to answering ``None`` in C."""
        storage, pid = self._pending
        if obj is not storage:
            return None
        _SET_ID(self, _NO_ID)  # type: ignore[misc]
        return pid


#: Names the pickler and ``OrderedDict.__reduce__`` look up on the instance before its state
#: (an instance attribute of one of these names changes the reduction): such an
#: ``OrderedDict`` is left to its own reduction. (``items`` is looked up on the instance by
#: both ways alike.)
_REDUCTION_NAMES = frozenset({"__reduce_ex__", "__reduce__", "__getstate__"})


def _ordered_dict_reduction(ordered: OrderedDict[Any, Any], pickler: pickle.Pickler) -> Any:
    """What ``ordered.__reduce_ex__(2)`` returns, without its Python detour.

    ``OrderedDict.__reduce__`` (C) asks for the instance's state, and that asks
    ``copyreg._slotnames`` (Python) every time: the built-in type cannot cache
    ``__slotnames__``, so the call also raises and catches a TypeError. A checkpoint pickles
    one ``OrderedDict`` per tensor (torch's empty backward-hooks argument) and the model's
    state_dict. The reduction is the same tuple: the class, no arguments, the instance's
    ``__dict__`` (None when empty; ``OrderedDict`` has no slots) and an iterator over its
    items. An ``OrderedDict`` whose instance attributes shadow a name the reduction looks up,
    or whose type a dispatch table reduces, is left to the pickler (``NotImplemented``).
    """
    state = ordered.__dict__
    table = getattr(pickler, "dispatch_table", copyreg.dispatch_table)
    if OrderedDict in table or (state and not _REDUCTION_NAMES.isdisjoint(state)):
        return NotImplemented
    return (OrderedDict, (), state or None, None, iter(ordered.items()))


def _reducible(tensor: torch.Tensor) -> bool:
    """Whether torch reduces ``tensor`` (exactly a ``torch.Tensor``) as :meth:`Pickler._reduce_tensor`
    does: dense and strided, on the CPU, a typed-storage dtype, no Python
    attributes (state torch would pickle), no backward hooks (torch warns about those), not
    inside ``torch.serialization.skip_data``."""
    return (
        tensor.dtype in FAST_DTYPES
        and tensor.layout is _STRIDED
        and tensor.is_cpu
        and not tensor.is_nested
        and not tensor._backward_hooks
        and not tensor.__dict__
        and not _SERIALIZATION.skip_data
    )
