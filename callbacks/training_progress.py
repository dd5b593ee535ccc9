"""TrainingProgressCallback: epoch progress and timing metrics for dashboards.

For each stage (``train``, ``val``, ``test``) it publishes through
``runtime.tracker.log_metrics`` (at ``step=global_step``, ``epoch=state.epoch``):

- ``<stage>/epoch_progress_percent``: 0 at epoch start, ``(i + 1) / total * 100`` after
  every ``log_every_n_batches``-th batch ``i``, 100 at epoch end;
- ``<stage>/epoch_duration_sec``: seconds since the epoch started (with every publication
  after the start);
- ``<stage>/batch_total_sec``: wall time of one batch, data loading included (the mean over
  the batches since the previous publication; validation inside a train epoch excluded);
- ``<stage>/epoch_completion_sec``: the epoch's whole duration, at epoch end only.

The train epoch ends after its validation (Lightning's order), so the train epoch's
duration includes that validation. A resumed epoch starts at the resumed batch's percent.
Rank zero only; sanity-check validation is ignored; without a tracker (None or a
NullTracker) it warns once and publishes nothing. Times come from ``time.perf_counter``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from runtime.callback import Callback
from runtime.distributed import is_rank_zero
from runtime.loop import Runtime
from runtime.registry import register
from runtime.tracking import NullTracker

log = logging.getLogger("busloop.callbacks")

__all__ = ["TrainingProgressCallback"]


class _StageClock:
    """Timing of one stage's current epoch."""

    __slots__ = ("batches_since", "epoch_start", "last_publish", "total")

    def __init__(self, total: int | float, now: float) -> None:
        self.total = total
        self.epoch_start = now
        self.last_publish = now
        self.batches_since = 0


@register()
class TrainingProgressCallback(Callback):
    """Publish ``<stage>/epoch_progress_percent`` and timing metrics to the tracker.

    ``log_every_n_batches`` (>= 1) thins the per-batch publications; epoch start and end
    are always published.
    """

    def __init__(self, log_every_n_batches: int = 1) -> None:
        every = log_every_n_batches
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(
                f"log_every_n_batches must be an int >= 1, got {log_every_n_batches!r}"
            )
        self.log_every_n_batches = log_every_n_batches
        self._clocks: dict[str, _StageClock] = {}
        self._warned = False

    # ------------------------------------------------------------------ events
    def on_train_epoch_start(self, runtime: Runtime) -> None:
        st = runtime.state
        self._start(runtime, "train", st.num_training_batches, done=st.batch_idx)

    def on_train_batch_end(
        self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batch(runtime, "train", batch_idx)

    def on_train_epoch_end(self, runtime: Runtime) -> None:
        self._end(runtime, "train")

    def on_validation_epoch_start(self, runtime: Runtime) -> None:
        if not runtime.state.sanity_checking:
            self._start(runtime, "val", runtime.state.num_val_batches)

    def on_validation_batch_end(
        self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int
    ) -> None:
        if not runtime.state.sanity_checking:  # several loaders: counted across them
            self._batch(runtime, "val", runtime.state.eval_offset + batch_idx)

    def on_validation_epoch_end(self, runtime: Runtime) -> None:
        if not runtime.state.sanity_checking:
            self._end(runtime, "val")

    def on_test_epoch_start(self, runtime: Runtime) -> None:
        self._start(runtime, "test", runtime.state.num_test_batches)

    def on_test_batch_end(
        self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int
    ) -> None:
        self._batch(runtime, "test", runtime.state.eval_offset + batch_idx)

    def on_test_epoch_end(self, runtime: Runtime) -> None:
        self._end(runtime, "test")

    # ------------------------------------------------------------------ publishing
    def _active(self, runtime: Runtime) -> bool:
        """Whether to publish: rank zero with a real tracker (warns once otherwise)."""
        if not is_rank_zero():
            return False
        tracker = runtime.tracker
        if tracker is None or isinstance(tracker, NullTracker):
            if not self._warned:
                self._warned = True
                log.warning(
                    "TrainingProgressCallback: no tracker is configured, so no progress "
                    "metrics are published (set tracker.backends)"
                )
            return False
        return True

    def _start(self, runtime: Runtime, stage: str, total: int | float, done: int = 0) -> None:
        if not self._active(runtime):
            self._clocks.pop(stage, None)
            return
        now = time.perf_counter()
        self._clocks[stage] = _StageClock(total, now)
        percent = done / total * 100.0 if total > 0 and done > 0 else 0.0
        self._publish(runtime, {f"{stage}/epoch_progress_percent": percent})

    def _batch(self, runtime: Runtime, stage: str, batch_idx: int) -> None:
        clock = self._clocks.get(stage)
        if clock is None:
            return
        clock.batches_since += 1
        if (batch_idx + 1) % self.log_every_n_batches:
            return
        now = time.perf_counter()
        total = clock.total
        self._publish(
            runtime,
            {
                f"{stage}/epoch_progress_percent": (batch_idx + 1) / total * 100.0
                if total > 0
                else 0.0,
                f"{stage}/epoch_duration_sec": now - clock.epoch_start,
                f"{stage}/batch_total_sec": (now - clock.last_publish) / clock.batches_since,
            },
        )
        clock.last_publish, clock.batches_since = now, 0

    def _end(self, runtime: Runtime, stage: str) -> None:
        clock = self._clocks.pop(stage, None)
        if clock is None:
            return
        elapsed = time.perf_counter() - clock.epoch_start
        train = self._clocks.get("train") if stage == "val" else None
        if train is not None:  # validation inside a train epoch: not part of batch times
            train.last_publish += elapsed
        self._publish(
            runtime,
            {
                f"{stage}/epoch_progress_percent": 100.0,
                f"{stage}/epoch_duration_sec": elapsed,
                f"{stage}/epoch_completion_sec": elapsed,
            },
        )

    @staticmethod
    def _publish(runtime: Runtime, metrics: dict[str, float]) -> None:
        tracker = runtime.tracker
        if tracker is not None:
            st = runtime.state
            tracker.log_metrics(metrics, step=st.global_step, epoch=st.epoch)
