"""Section 4: what the Lightning callback adapter adds to each hook call.

The same logic (count the call, keep the batch index) runs twice on a real Runtime's bus:

* ``native``: a busloop callback, ``on_<event>(self, runtime, **payload)``;
* ``adapted``: a stock-style Lightning callback, ``on_<event>(self, trainer, pl_module, ...)``
  (a ``lightning.pytorch.Callback`` subclass, or a duck-typed one without Lightning), wrapped
  by :mod:`compat.adapter` as it is when handed to ``Runtime(callbacks=...)``.

Each is emitted the way the loop emits per-batch events (``if sig.dispatch: sig.emit(...)``)
for three events whose adapted receivers differ: ``train_batch_start`` (a plain call),
``train_batch_end`` (the facade's stepping-batch flag around the call) and
``validation_batch_end`` (the evaluation batch count kept for the logging schedule). Native
and adapted are timed in alternating rounds with :func:`benchmarks.dispatch.time_statement`
on the thread's CPU time (a shared machine's other jobs do not count); the figure is the
median over rounds of (adapted - native) per call, beside the difference of the minima.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from typing import Any

import torch

from benchmarks.dispatch import time_statement
from benchmarks.stats import summarize
from runtime.callback import Callback
from runtime.loop import Runtime
from runtime.tracking import NullTracker

__all__ = ["ADAPTER_EVENTS", "run_adapter"]

#: Event -> the keyword payload the loop emits it with.
ADAPTER_EVENTS: dict[str, str] = {
    "train_batch_start": "batch=batch, batch_idx=i",
    "train_batch_end": "outputs=outputs, batch=batch, batch_idx=i",
    "validation_batch_end": "outputs=outputs, batch=batch, batch_idx=i, dataloader_idx=0",
}


class _Native(Callback):
    """The logic as a busloop callback."""

    def __init__(self) -> None:
        self.calls, self.last = 0, -1

    def on_train_batch_start(self, runtime: Any, batch: Any, batch_idx: int) -> None:
        self.calls, self.last = self.calls + 1, batch_idx

    def on_train_batch_end(self, runtime: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.calls, self.last = self.calls + 1, batch_idx

    def on_validation_batch_end(
        self, runtime: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.calls, self.last = self.calls + 1, batch_idx


def _stock_style_hooks() -> dict[str, Any]:
    """The same logic as Lightning hooks, ``(trainer, pl_module, *args)``."""

    def batch_start(self: Any, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.calls, self.last = self.calls + 1, batch_idx

    def batch_end(self: Any, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.calls, self.last = self.calls + 1, batch_idx

    def eval_batch_end(
        self: Any, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.calls, self.last = self.calls + 1, batch_idx

    return {
        "calls": 0,
        "last": -1,
        "on_train_batch_start": batch_start,
        "on_train_batch_end": batch_end,
        "on_validation_batch_end": eval_batch_end,
    }


def _stock_style(without: Collection[str]) -> tuple[object, str]:
    """A Lightning ``Callback`` subclass with the hooks, or a duck-typed one without Lightning."""
    base: type = object
    kind = "duck-typed"
    if "lightning" not in without:
        try:
            import lightning.pytorch as pl

            base, kind = pl.Callback, "lightning.pytorch.Callback"
        except ImportError:
            pass
    return type("StockStyle", (base,), _stock_style_hooks())(), kind


def _runtime(callback: object) -> Runtime:
    model = torch.nn.Linear(2, 2)
    config = {"loss": "torch.nn.functional:mse_loss", "trainer": {"accelerator": "cpu"}}
    rt = Runtime(model, [callback], config, tracker=NullTracker())
    for wrapped in rt.callbacks:
        bind = getattr(wrapped, "bind", None)
        if callable(bind):
            bind(rt)  # what the setup event does at the start of a run
    return rt


def run_adapter(
    *, rounds: int = 15, min_time: float = 0.05, without: Collection[str] = (),
    events: Sequence[str] = tuple(ADAPTER_EVENTS),
) -> dict[str, Any]:
    """Time native and adapted hook calls per event.

    Returns a JSON-ready dict::

        {"callback": kind, "rounds": R, "results": {event: {"native_us": {...},
         "adapted_us": {...}, "extra_us": {...}}}, "extra_us_max_median": x, "extra_us_max_min": y}
    """
    stock, kind = _stock_style(without)
    runtimes = {"native": _runtime(_Native()), "adapted": _runtime(stock)}
    common = {"batch": (torch.zeros(1), torch.zeros(1)), "outputs": {"loss": torch.zeros(())}, "i": 3}
    results: dict[str, Any] = {}
    for event in events:
        stmt = f"if sig.dispatch: sig.emit(rt, {ADAPTER_EVENTS[event]})"
        cases = {
            name: {**common, "rt": rt, "sig": rt.bus.signal(event)} for name, rt in runtimes.items()
        }
        samples: dict[str, list[float]] = {"native": [], "adapted": []}
        for _ in range(rounds):  # alternating, so drift on a shared machine hits both alike
            for name, names in cases.items():
                samples[name] += time_statement(
                    stmt, names, repeat=1, min_time=min_time, clock=time.thread_time
                )
        extra = [a - n for a, n in zip(samples["adapted"], samples["native"], strict=True)]
        results[event] = {
            "native_us": summarize(samples["native"]),
            "adapted_us": summarize(samples["adapted"]),
            "extra_us": summarize(extra),
            "extra_us_of_mins": min(samples["adapted"]) - min(samples["native"]),
        }
    return {
        "callback": kind,
        "rounds": rounds,
        "min_time_s": min_time,
        "results": results,
        "extra_us_max_median": max(r["extra_us"]["median"] for r in results.values()),
        "extra_us_max_min": max(r["extra_us_of_mins"] for r in results.values()),
    }
