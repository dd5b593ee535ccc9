"""The event bus: one ordered blinker signal per event, receivers called in connection order.

The loop emits named events (the catalogue, as loop pseudo-code, is :mod:`runtime.events`);
callbacks subscribe with ``on_<event>`` methods.

Receivers are called as ``fn(runtime, **payload)``. A receiver stops an event from reaching
later receivers by raising :class:`StopEvent`; ``emit`` then returns ``False``.

Speed: each signal keeps a pre-resolved tuple of receivers (``dispatch``), rebuilt only when
receivers connect or disconnect, so emitting costs one loop over bound methods and an event
with no receivers costs one truth test. Signatures are checked once, at connect time. A
signal whose payload is declared (every :class:`Bus` event) gets an ``emit`` specialised to
those keywords, which calls each receiver with literal keyword arguments: no payload dict is
built per call or per receiver (``python -m benchmarks`` measures it against a plain loop).
"""

from __future__ import annotations

import functools
import inspect
import keyword
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import blinker

from runtime.events import EVENT_DOCS, EVENTS
from runtime.names import suggest

#: The event at which callbacks with a ``monitor_role`` run after all others (Lightning's rule).
MONITORED_EVENT = "train_epoch_end"

__all__ = [
    "EVENTS",
    "MONITORED_EVENT",
    "Bus",
    "BusError",
    "CallbackError",
    "OrderedSignal",
    "StopEvent",
    "receiver_name",
]


class BusError(ValueError):
    """A callback or receiver cannot be connected: unknown event or incompatible signature."""


class StopEvent(Exception):  # noqa: N818 - it is a control-flow signal, not an error
    """Raise inside a receiver to keep the current event from reaching later receivers."""


class CallbackError(RuntimeError):
    """A receiver raised; the message names the callback and the event.

    The original exception is ``__cause__`` and :attr:`original`.
    """

    def __init__(self, callback: str, event: str, original: BaseException) -> None:
        super().__init__(
            f"callback {callback} failed in event '{event}': "
            f"{type(original).__name__}: {original}"
        )
        self.callback = callback
        self.event = event
        self.original = original


def receiver_name(receiver: Callable[..., Any]) -> str:
    """A readable name for a receiver: ``ClassName.on_event`` or a function's qualname."""
    owner = getattr(receiver, "__self__", None)
    func = getattr(receiver, "__func__", receiver)
    name = getattr(func, "__name__", repr(func))
    if owner is not None:
        return f"{type(owner).__name__}.{name}"
    return getattr(func, "__qualname__", name)


class _OrderedIdSet:
    """The insertion-ordered set blinker uses to keep receiver ids in connection order."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[Any] = ()) -> None:
        self._items: dict[Any, None] = dict.fromkeys(items)

    def add(self, item: Any) -> None:
        self._items[item] = None

    def discard(self, item: Any) -> None:
        self._items.pop(item, None)

    def copy(self) -> _OrderedIdSet:
        return _OrderedIdSet(self._items)

    def __or__(self, other: Iterable[Any]) -> _OrderedIdSet:
        merged = self.copy()
        for item in other:
            merged.add(item)
        return merged

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item: object) -> bool:
        return item in self._items


class OrderedSignal(blinker.NamedSignal):
    """A blinker signal that calls receivers in connection order, through a cached tuple.

    ``payload`` (the event's keyword names, optional) lets :meth:`emit` be specialised to
    those keywords; the behaviour is the same, only faster.
    """

    set_class = _OrderedIdSet  # type: ignore[assignment]

    def __init__(
        self, name: str, doc: str | None = None, payload: Sequence[str] | None = None
    ) -> None:
        super().__init__(name, doc)
        #: The receivers in call order; rebuilt on every connect / disconnect.
        self.dispatch: tuple[Callable[..., Any], ...] = ()
        #: The event's payload keywords, when declared.
        self.payload: tuple[str, ...] | None = None if payload is None else tuple(payload)
        if self.payload is not None and _specialisable(self.payload):
            # An instance attribute shadows the generic method below; deepcopy rebinds it.
            self.emit = types.MethodType(_specialised_emit(self.payload), self)  # type: ignore[method-assign]

    def connect(self, receiver: Any, sender: Any = blinker.ANY, weak: bool = True) -> Any:
        result = super().connect(receiver, sender, weak)
        self._rebuild()
        return result

    def _disconnect(self, receiver_id: Any, sender_id: Any) -> None:
        super()._disconnect(receiver_id, sender_id)
        self._rebuild()

    def _clear_state(self) -> None:
        super()._clear_state()
        self._rebuild()

    def _rebuild(self) -> None:
        self.dispatch = tuple(self.receivers_for(blinker.ANY))

    def emit(self, sender: Any, /, **payload: Any) -> bool:
        """Call every receiver as ``fn(sender, **payload)``, in order.

        Returns ``False`` when a receiver raised :class:`StopEvent`, ``True`` otherwise.
        Any other exception is re-raised as :class:`CallbackError` naming the receiver.
        """
        receiver: Callable[..., Any] | None = None
        try:
            for receiver in self.dispatch:
                receiver(sender, **payload)
        except StopEvent:
            return False
        except CallbackError:
            raise
        except Exception as exc:
            raise CallbackError(receiver_name(receiver), self.name, exc) from exc  # type: ignore[arg-type]
        return True


_RESERVED_PREFIX = "_bus_"


def _specialisable(payload: tuple[str, ...]) -> bool:
    """Whether ``payload`` can name keyword parameters of a generated ``emit``."""
    return len(set(payload)) == len(payload) and all(
        name.isidentifier() and not keyword.iskeyword(name) and not name.startswith(_RESERVED_PREFIX)
        for name in payload
    )


@functools.cache
def _specialised_emit(payload: tuple[str, ...]) -> Callable[..., bool]:
    """``OrderedSignal.emit`` for one payload shape, generated once per shape.

    The generated method takes the payload as keyword-only parameters and passes them on
    as literal keywords (``receiver(sender, batch=batch, batch_idx=batch_idx)``), so a
    call allocates no payload dict. A call with other keywords than the declared ones
    (extra or missing) takes the generic path, so behaviour is exactly that of
    :meth:`OrderedSignal.emit`.
    """
    params = "".join(f", {name}=_bus_MISSING" for name in payload)
    params = f", *{params}" if payload else ""
    missing = "".join(f" or {name} is _bus_MISSING" for name in payload)
    given = ", ".join(f"({name!r}, {name})" for name in payload)
    keywords = "".join(f", {name}={name}" for name in payload)
    source = f"""\
def emit(_bus_self, _bus_sender, /{params}, **_bus_extra):
    if _bus_extra{missing}:
        _bus_given = {{k: v for k, v in ({given}{"," if len(payload) == 1 else ""}) if v is not _bus_MISSING}}
        return _bus_generic(_bus_self, _bus_sender, **_bus_given, **_bus_extra)
    _bus_receiver = None
    try:
        for _bus_receiver in _bus_self.dispatch:
            _bus_receiver(_bus_sender{keywords})
    except _bus_StopEvent:
        return False
    except _bus_CallbackError:
        raise
    except Exception as _bus_exc:
        raise _bus_CallbackError(
            _bus_receiver_name(_bus_receiver), _bus_self.name, _bus_exc
        ) from _bus_exc
    return True
"""
    namespace: dict[str, Any] = {
        "_bus_MISSING": _MISSING,
        "_bus_generic": OrderedSignal.emit,
        "_bus_StopEvent": StopEvent,
        "_bus_CallbackError": CallbackError,
        "_bus_receiver_name": receiver_name,
    }
    exec(compile(source, f"<busloop emit {payload}>", "exec"), namespace)  # noqa: S102
    emit: Callable[..., bool] = namespace["emit"]
    emit.__doc__ = OrderedSignal.emit.__doc__
    emit.__qualname__ = "OrderedSignal.emit"
    return emit


_MISSING: Any = object()


class Bus:
    """The runtime's events: one :class:`OrderedSignal` per event name.

    ``bus.signals`` maps names to signals; ``bus.event.<name>`` is the same signal as an
    attribute, which is what the loop uses on its hot path.
    """

    def __init__(self) -> None:
        self.namespace = blinker.Namespace()
        self.payloads: dict[str, tuple[str, ...]] = {}
        self.signals: dict[str, OrderedSignal] = {}
        self.event = _EventAttributes(self.signals)
        for name, payload in EVENTS.items():
            self.declare(name, payload, doc=EVENT_DOCS.get(name))

    # -- events -------------------------------------------------------------------
    def declare(
        self, name: str, payload: Sequence[str] = (), *, doc: str | None = None
    ) -> OrderedSignal:
        """Declare an event (custom events included) and return its signal.

        Declaring an existing name again with the same payload returns the same signal.
        """
        if not name.isidentifier():
            raise BusError(f"event name {name!r} must be a Python identifier")
        payload = tuple(payload)
        if name in self.signals:
            if self.payloads[name] != payload:
                raise BusError(
                    f"event '{name}' already exists with payload {self.payloads[name]}, "
                    f"cannot redeclare it with {payload}"
                )
            return self.signals[name]
        signal = OrderedSignal(name, doc, payload)
        self.namespace[name] = signal
        self.signals[name] = signal
        self.payloads[name] = payload
        return signal

    def signal(self, name: str) -> OrderedSignal:
        """The signal of ``name``; an unknown name is a :class:`BusError` with a suggestion."""
        try:
            return self.signals[name]
        except KeyError:
            raise BusError(f"no event named '{name}'{suggest(name, self.signals)}") from None

    def emit(self, name: str, sender: Any, /, **payload: Any) -> bool:
        """Emit ``name`` from ``sender``; see :meth:`OrderedSignal.emit`."""
        return self.signal(name).emit(sender, **payload)

    # -- receivers ----------------------------------------------------------------
    def connect(self, name: str, receiver: Callable[..., Any]) -> None:
        """Connect one receiver (strong reference, ANY sender) after checking its signature."""
        signal = self.signal(name)
        self._check_signature(name, receiver, receiver_name(receiver))
        signal.connect(receiver, weak=False)

    def disconnect(self, name: str, receiver: Callable[..., Any]) -> None:
        self.signal(name).disconnect(receiver)

    def subscribe(self, callback: object) -> list[str]:
        """Connect every ``on_<event>`` method of ``callback``; returns the event names.

        The callback's ``custom_events`` (name -> payload names), if any, are declared
        first. Nothing is connected if any method is invalid.
        """
        for name, payload in getattr(callback, "custom_events", {}).items():
            self.declare(name, payload)
        methods = list(self.hooks_of(callback))
        for name, method in methods:
            self._check_signature(name, method, receiver_name(method))
        monitors = getattr(callback, "monitor_role", None) is not None
        for name, method in methods:
            if name == MONITORED_EVENT and not monitors:
                self._connect_before_monitors(self.signals[name], method)
            else:
                self.signals[name].connect(method, weak=False)
        return [name for name, _ in methods]

    @staticmethod
    def _connect_before_monitors(signal: OrderedSignal, method: Callable[..., Any]) -> None:
        """Connect ``method`` ahead of the receivers of monitoring callbacks (``monitor_role``):
        Lightning runs checkpointing and early stopping after every other callback's
        ``on_train_epoch_end``, whatever the order they were given in."""
        later = [r for r in signal.dispatch if getattr(getattr(r, "__self__", None), "monitor_role", None)]
        for receiver in later:
            signal.disconnect(receiver)
        signal.connect(method, weak=False)
        for receiver in later:
            signal.connect(receiver, weak=False)

    def subscribe_all(self, callbacks: Iterable[object]) -> None:
        """Subscribe callbacks in order, declaring all their custom events first."""
        callbacks = list(callbacks)
        for callback in callbacks:
            for name, payload in getattr(callback, "custom_events", {}).items():
                self.declare(name, payload)
        for callback in callbacks:
            self.subscribe(callback)

    def unsubscribe(self, callback: object) -> None:
        """Disconnect every ``on_<event>`` method of ``callback``."""
        for name, method in self.hooks_of(callback):
            self.signals[name].disconnect(method)

    def hooks_of(self, callback: object) -> Iterator[tuple[str, Callable[..., Any]]]:
        """Yield ``(event, bound method)`` for each ``on_`` method; unknown names raise."""
        for attr in dir(type(callback)):
            if not attr.startswith("on_"):
                continue
            method = getattr(callback, attr)
            if not callable(method):
                continue
            event = attr[3:]
            if event not in self.signals:
                raise BusError(
                    f"{type(callback).__name__}.{attr}: there is no event '{event}'"
                    f"{suggest(attr, [f'on_{e}' for e in self.signals])}"
                )
            yield event, method

    def _check_signature(self, name: str, receiver: Callable[..., Any], label: str) -> None:
        payload = self.payloads[name]
        try:
            signature = inspect.signature(receiver)
        except (TypeError, ValueError):
            return  # builtins without signatures: trust them
        try:
            signature.bind(None, **dict.fromkeys(payload))
        except TypeError as exc:
            wanted = ", ".join(("runtime", *payload))
            raise BusError(
                f"{label} cannot receive event '{name}': it is called as ({wanted}) "
                f"by keyword, but its signature is {signature} ({exc})"
            ) from None

    # -- introspection ------------------------------------------------------------
    def describe(self, *, include_empty: bool = False) -> dict[str, list[str]]:
        """Event name -> receiver names, in call order (events without receivers omitted)."""
        return {
            name: [receiver_name(r) for r in signal.dispatch]
            for name, signal in self.signals.items()
            if include_empty or signal.dispatch
        }


class _EventAttributes:
    """Attribute access to signals (``bus.event.train_batch_start``) for the hot path."""

    def __init__(self, signals: Mapping[str, OrderedSignal]) -> None:
        object.__setattr__(self, "_signals", signals)

    def __getattr__(self, name: str) -> OrderedSignal:
        signals: Mapping[str, OrderedSignal] = object.__getattribute__(self, "_signals")
        try:
            signal = signals[name]
        except KeyError:
            raise AttributeError(f"no event named '{name}'{suggest(name, signals)}") from None
        object.__setattr__(self, name, signal)  # cache: later lookups skip __getattr__
        return signal
