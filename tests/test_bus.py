"""The bus: ordering, registration checks, stopping, custom events, errors."""

from __future__ import annotations

import random
from typing import Any

import pytest
from torch import nn

from conftest import base_config, make_loader, make_model
from runtime import Bus, BusError, Callback, CallbackError, Runtime, StopEvent
from runtime.bus import EVENTS
from runtime.tracking import NullTracker


def _recorder_class() -> type:
    """A callback class with an ``on_<event>`` method for every catalogue event."""

    def make(event: str) -> Any:
        def hook(self: Any, runtime: Any, **payload: Any) -> None:
            self.log.append((event, self.index))

        hook.__name__ = f"on_{event}"
        return hook

    namespace = {f"on_{event}": make(event) for event in EVENTS}
    return type("EveryEvent", (Callback,), namespace)


def test_forty_callbacks_receive_every_event_in_registration_order() -> None:
    """Allocated in scrambled order (so ids, hashes and blinker's set order differ from
    registration order), registered in index order: every event reaches them 0..39."""
    cls = _recorder_class()
    shared: list[tuple[str, int]] = []
    order = list(range(40))
    random.Random(7).shuffle(order)
    allocated: dict[int, Any] = {}
    for index in order:
        callback = cls()
        callback.index, callback.log = index, shared
        allocated[index] = callback
    bus = Bus()
    bus.subscribe_all(allocated[i] for i in range(40))
    for event, payload in EVENTS.items():
        shared.clear()
        assert bus.emit(event, None, **dict.fromkeys(payload)) is True
        assert shared == [(event, i) for i in range(40)], event


def test_unknown_hook_name_is_rejected_with_suggestion() -> None:
    class Typo(Callback):
        def on_train_batch_ends(self, runtime: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            pass

    with pytest.raises(BusError, match=r"Typo\.on_train_batch_ends.*did you mean 'on_train_batch_end'"):
        Bus().subscribe(Typo())


def test_incompatible_signature_is_rejected_at_registration() -> None:
    class Wrong(Callback):
        def on_train_batch_end(self, runtime: Any, outputs: Any) -> None:  # misses batch, batch_idx
            pass

    bus = Bus()
    with pytest.raises(BusError, match=r"Wrong\.on_train_batch_end cannot receive event 'train_batch_end'"):
        bus.subscribe(Wrong())
    assert bus.describe() == {}  # nothing half-connected


def test_payload_by_kwargs_and_catch_all_signatures_are_accepted() -> None:
    seen: list[Any] = []

    class Flexible(Callback):
        def on_train_batch_end(self, runtime: Any, **payload: Any) -> None:
            seen.append(payload)

    bus = Bus()
    bus.subscribe(Flexible())
    bus.emit("train_batch_end", "rt", outputs=1, batch=2, batch_idx=3)
    assert seen == [{"outputs": 1, "batch": 2, "batch_idx": 3}]


def test_stop_event_keeps_later_receivers_from_running() -> None:
    calls: list[str] = []

    class First(Callback):
        def on_train_end(self, runtime: Any) -> None:
            calls.append("first")
            raise StopEvent

    class Second(Callback):
        def on_train_end(self, runtime: Any) -> None:
            calls.append("second")

    bus = Bus()
    bus.subscribe_all([First(), Second()])
    assert bus.emit("train_end", None) is False
    assert calls == ["first"]
    assert bus.emit("fit_end", None) is True


def test_custom_events_declared_by_a_callback_and_emitted() -> None:
    received: list[Any] = []

    class Producer(Callback):
        custom_events = {"sample_ready": ("sample",)}

    class Consumer(Callback):  # registered before the producer that declares the event
        def on_sample_ready(self, runtime: Any, sample: Any) -> None:
            received.append(sample)

    bus = Bus()
    bus.subscribe_all([Consumer(), Producer()])
    bus.emit("sample_ready", None, sample=42)
    assert received == [42]
    assert bus.describe()["sample_ready"] == ["Consumer.on_sample_ready"]
    with pytest.raises(BusError, match="already exists"):
        bus.declare("sample_ready", ("other",))


def test_disconnect_and_describe_follow_connection_changes() -> None:
    bus = Bus()

    def receiver(runtime: Any) -> None:
        pass

    bus.connect("fit_start", receiver)
    assert bus.describe() == {"fit_start": ["test_disconnect_and_describe_follow_connection_changes.<locals>.receiver"]}
    bus.disconnect("fit_start", receiver)
    assert bus.describe() == {}
    with pytest.raises(BusError, match="did you mean 'fit_start'"):
        bus.connect("fit_strat", receiver)


def test_raising_callback_is_named_exception_event_fires_once_and_log_holds_it(tmp_path: Any) -> None:
    exceptions: list[BaseException] = []

    class Boom(Callback):
        def on_train_batch_end(self, runtime: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx == 1:
                raise ValueError("bad value in batch 1")

    class Watcher(Callback):
        def on_exception(self, runtime: Any, exception: BaseException) -> None:
            exceptions.append(exception)

    cfg = base_config()
    cfg["tracker"] = {"save_directory": str(tmp_path / "runs"), "run_name": "boom"}
    rt = Runtime(make_model(), [Boom(), Watcher()], cfg, loss=nn.functional.cross_entropy)
    with pytest.raises(CallbackError, match=r"Boom\.on_train_batch_end failed in event 'train_batch_end'.*bad value"):
        rt.fit(make_loader())
    assert len(exceptions) == 1 and isinstance(exceptions[0], CallbackError)
    assert isinstance(exceptions[0].__cause__, ValueError)
    log_text = (rt.run_dir / "log.txt").read_text()
    assert "Boom.on_train_batch_end" in log_text and "bad value in batch 1" in log_text
    assert (rt.run_dir / "status.txt").read_text().strip() == "failed"


def test_error_in_step_fires_exception_event_once() -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(8, 2)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            raise RuntimeError("step exploded")

        def configure_optimizers(self) -> Any:
            import torch

            return torch.optim.SGD(self.parameters(), lr=0.1)

    count = []

    class Watcher(Callback):
        def on_exception(self, runtime: Any, exception: BaseException) -> None:
            count.append(exception)

    rt = Runtime(Broken(), [Watcher()], base_config(), tracker=NullTracker())
    with pytest.raises(RuntimeError, match="step exploded"):
        rt.fit(make_loader())
    assert len(count) == 1
