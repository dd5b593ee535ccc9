"""The native callback base class."""

from __future__ import annotations

from typing import Any, ClassVar


class Callback:
    """Base class for busloop callbacks (optional: any object with ``on_<event>`` works).

    Define ``on_<event>(self, runtime, **payload)`` methods for the events of the
    catalogue (:data:`runtime.bus.EVENTS`); only the methods you define are connected, so an
    unused event costs nothing. Payload arguments arrive by keyword, e.g.
    ``def on_train_batch_end(self, runtime, outputs, batch, batch_idx)``.

    Raise :class:`runtime.bus.StopEvent` in a receiver to keep the event from reaching the
    callbacks after this one. Declare new events in ``custom_events`` (name -> payload
    names) and emit them with ``runtime.bus.emit(name, runtime, **payload)``.
    """

    custom_events: ClassVar[dict[str, tuple[str, ...]]] = {}
    monitor_role: ClassVar[str | None] = None
    """``"checkpoint"`` or ``"early_stopping"`` for callbacks that act on monitored metrics.
    As in Lightning, at ``train_epoch_end`` they run after every other callback and after a
    LightningModule's own ``on_train_epoch_end`` (so a metric logged there is seen), whatever
    the order they were given in; the trainer facade lists them."""

    @property
    def state_key(self) -> str:
        """The key of this callback's state in checkpoints (unique per stateful callback)."""
        return type(self).__qualname__

    def _generate_state_key(self, **kwargs: Any) -> str:
        """Lightning's helper: ``QualName{repr(kwargs)}`` for callbacks that differ by options."""
        return f"{type(self).__qualname__}{kwargs!r}"

    def state_dict(self) -> dict[str, Any]:
        """What this callback needs to resume (tensors, numbers, strings, lists, dicts)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
