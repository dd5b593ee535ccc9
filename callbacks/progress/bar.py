"""The progress-bar callback both backends share: stage lifecycle, refresh policy, reports.

:class:`ProgressBarBase` decides *when* something is drawn or printed (which stage runs,
when a live bar may refresh, what is printed after an epoch); the backends
(:mod:`~callbacks.progress.rich_bar`, :mod:`~callbacks.progress.tqdm_bar`) decide only
*how*. Keeping the policy here keeps the two bars' output identical in content and keeps
the per-batch cost in one place: on a train batch a bar does one dict lookup, plus one
clock read when a live bar is drawn; it reads the (device-synced) loss only when it redraws.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from callbacks.progress.console import format_value, install_echo_filter
from callbacks.progress.report import (
    _STAGE_TITLES,
    StageReport,
    _loss_key,
    build_stage_report,
)
from runtime.callback import Callback
from runtime.distributed import is_rank_zero
from runtime.loop import Runtime

#: The per-batch events a bar listens to (only while it draws a live bar).
_BATCH_EVENTS = ("train_batch_end", "validation_batch_end", "test_batch_end", "predict_batch_end")

#: Eval event stage -> metric prefix.
_STAGE_PREFIXES = {"validation": "val", "test": "test", "predict": "predict"}


def _latest_loss(runtime: Runtime, prefix: str) -> str:
    """The latest logged per-step loss of ``prefix``, formatted (one device sync).

    Called only when a bar redraws or finishes, never per batch.
    """
    step_metrics = runtime.state.step_metrics
    key = _loss_key(step_metrics, prefix)
    if key is None:
        return ""
    value = step_metrics[key]
    try:
        return f"loss: {float(value):.4f}"
    except (TypeError, ValueError, RuntimeError):
        return ""


_StageHook = Callable[["ProgressBarBase", Runtime], None]
_BatchHook = Callable[["ProgressBarBase", Runtime, Any, Any, int, int], None]


def _eval_stage_hooks(stage: str) -> tuple[_StageHook, _BatchHook, _StageHook]:
    """The ``on_<stage>_start``, ``on_<stage>_batch_end`` and ``on_<stage>_end`` handlers of
    one eval ``stage`` (``validation``, ``test`` or ``predict``): the one place their logic
    lives.

    The bus connects methods by their ``on_<event>`` names and checks their signatures, so
    each stage needs its own three methods; they are made here once per stage, at class
    creation, with the stage (and its metric prefix) bound in the closure. A method that
    forwarded to a shared one would cost a call per batch; ``functools.partialmethod``
    passes the bus's signature check, but its receivers have no name, so ``Bus.describe``
    and the bus's error messages would show a partial's repr.
    """
    prefix = _STAGE_PREFIXES[stage]

    def on_start(self: ProgressBarBase, runtime: Runtime) -> None:
        """Open the stage's bar (``Sanity Checking`` during the sanity check)."""
        self._eval_start(runtime, stage)

    def on_batch_end(
        self: ProgressBarBase,
        runtime: Runtime,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        """Per batch: nothing without a live bar, else a clock read and a redraw when due (one
        bar over all the stage's loaders: the earlier loaders' batches are added)."""
        if stage in self._next_refresh:
            self._tick(runtime, stage, prefix, runtime.state.eval_offset + batch_idx + 1)

    def on_end(self: ProgressBarBase, runtime: Runtime) -> None:
        """Close the stage's bar and print the epoch's report (not after the sanity check)."""
        self._eval_end(runtime, stage)

    for hook, event in ((on_start, "start"), (on_batch_end, "batch_end"), (on_end, "end")):
        hook.__name__ = f"on_{stage}_{event}"
        hook.__qualname__ = f"ProgressBarBase.{hook.__name__}"
    return on_start, on_batch_end, on_end


class ProgressBarBase(Callback):
    """What both bars share: the stage lifecycle, rate-limited refresh, reports, the log mirror.

    Subclasses draw the live bars (:meth:`_open_bar`, :meth:`_update_bar`, :meth:`_close_bar`,
    :meth:`_close_all`) and print (:meth:`_print_report`, :meth:`_print_line`).
    """

    def __init__(self, refresh_interval: float = 0.25) -> None:
        if refresh_interval < 0:
            raise ValueError(f"refresh_interval must be >= 0, got {refresh_interval}")
        self.refresh_interval = float(refresh_interval)
        self._next_refresh: dict[str, float] = {}
        self._totals: dict[str, int] = {}
        self._epoch_started = 0.0
        self._pending: dict[str, dict[str, float]] = {}
        self._enabled = True

    # -- to implement ---------------------------------------------------------------------
    @property
    def is_live(self) -> bool:
        """Whether live bars are drawn (the output is a terminal)."""
        raise NotImplementedError

    def _open_bar(self, key: str, description: str, total: int | None, completed: int) -> None:
        raise NotImplementedError

    def _update_bar(self, key: str, completed: int, postfix: str) -> None:
        raise NotImplementedError

    def _close_bar(self, key: str) -> None:
        raise NotImplementedError

    def _close_all(self) -> None:
        raise NotImplementedError

    def _has_bar(self, key: str) -> bool:
        raise NotImplementedError

    def _print_line(self, text: str) -> None:
        raise NotImplementedError

    def _print_report(self, report: StageReport) -> None:
        raise NotImplementedError

    # -- shared helpers -------------------------------------------------------------------
    def _start(self, key: str, description: str, total: int | float, completed: int = 0) -> None:
        """Open a bar; a loader without a length (``total`` inf) gets one without a total."""
        if self._enabled and self.is_live and total > 0:
            self._open_bar(key, description, None if math.isinf(total) else int(total), completed)
            self._next_refresh[key] = 0.0
            self._totals[key] = 0 if math.isinf(total) else int(total)

    def _tick(self, runtime: Runtime, key: str, prefix: str, completed: int) -> None:
        """Per batch: one clock read; refresh when the interval has passed."""
        now = time.monotonic()
        if now < self._next_refresh.get(key, float("inf")):
            return
        self._next_refresh[key] = now + self.refresh_interval
        self._update_bar(key, completed, _latest_loss(runtime, prefix))

    def _finish(self, runtime: Runtime, key: str, prefix: str, completed: int) -> None:
        if self._has_bar(key):
            self._update_bar(key, completed, _latest_loss(runtime, prefix))
            self._close_bar(key)
        self._next_refresh.pop(key, None)
        self._totals.pop(key, None)

    # -- events ---------------------------------------------------------------------------
    def on_setup(self, runtime: Runtime, stage: str) -> None:
        self._enabled = is_rank_zero()
        install_echo_filter()
        self._connect_batch_hooks(runtime, live=self._enabled and self.is_live)

    def _connect_batch_hooks(self, runtime: Runtime, *, live: bool) -> None:
        """The per-batch hooks only redraw live bars: without one (off a terminal, ranks
        other than zero) they are disconnected, so the batch events cost this callback
        nothing; a later setup with a live bar connects them again."""
        for event in _BATCH_EVENTS:
            hook = getattr(self, f"on_{event}")
            connected = hook in runtime.bus.signal(event).dispatch
            if live and not connected:
                runtime.bus.connect(event, hook)
            elif not live and connected:
                runtime.bus.disconnect(event, hook)

    def on_train_epoch_start(self, runtime: Runtime) -> None:
        st = runtime.state
        self._epoch_started = time.monotonic()
        self._start("train", f"Epoch {st.epoch + 1}/{st.max_epochs}", st.num_training_batches, st.batch_idx)

    def on_train_batch_end(self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int) -> None:
        if "train" in self._next_refresh:
            self._tick(runtime, "train", "train", batch_idx + 1)

    def on_train_epoch_end(self, runtime: Runtime) -> None:
        self._finish(runtime, "train", "train", runtime.state.batch_idx)

    def on_epoch_metrics(self, runtime: Runtime, stage: str, metrics: dict[str, float]) -> None:
        if not self._enabled:
            return
        if stage == "train":
            st = runtime.state
            duration = time.monotonic() - self._epoch_started
            key = _loss_key(metrics, "train")
            loss = format_value(float(metrics[key])) if key is not None else "n/a"
            self._print_line(
                f"[Epoch {st.epoch + 1}/{st.max_epochs}] Duration: {duration:.2f}s | Train Loss: {loss}"
            )
        else:
            self._pending[stage] = dict(metrics)

    def _eval_start(self, runtime: Runtime, stage: str) -> None:
        st = runtime.state
        if "train" in self._next_refresh:  # show where training paused
            self._update_bar("train", st.batch_idx, _latest_loss(runtime, "train"))
        if st.sanity_checking:
            self._start(stage, "Sanity Checking", st.num_sanity_val_batches)
            return
        total = {
            "validation": st.num_val_batches,
            "test": st.num_test_batches,
            "predict": st.num_predict_batches,
        }[stage]
        self._start(stage, _STAGE_TITLES[_STAGE_PREFIXES[stage]], total)

    def _eval_end(self, runtime: Runtime, stage: str) -> None:
        prefix = _STAGE_PREFIXES[stage]
        if stage in self._next_refresh:
            self._finish(runtime, stage, prefix, self._totals.get(stage, 0))
        metrics = self._pending.pop(prefix, None)
        if self._enabled and metrics is not None and not runtime.state.sanity_checking:
            self._print_report(build_stage_report(runtime, prefix, metrics))

    # validation, test and predict: one set of handlers, made per stage (see _eval_stage_hooks)
    on_validation_start, on_validation_batch_end, on_validation_end = _eval_stage_hooks(
        "validation"
    )
    on_test_start, on_test_batch_end, on_test_end = _eval_stage_hooks("test")
    on_predict_start, on_predict_batch_end, on_predict_end = _eval_stage_hooks("predict")

    def on_teardown(self, runtime: Runtime, stage: str) -> None:
        self._close_all()
        self._next_refresh.clear()
        self._totals.clear()
        self._pending.clear()

    def on_exception(self, runtime: Runtime, exception: BaseException) -> None:
        self._close_all()
        self._next_refresh.clear()
        self._totals.clear()
