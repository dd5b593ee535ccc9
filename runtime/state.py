"""Loop state: where the loop is, what it has measured, and whether it should stop."""

from __future__ import annotations

from typing import Any

import attrs


@attrs.define
class LoopState:
    """Everything callbacks read about the loop's position (``rt.state``).

    ``epoch`` counts completed training epochs while an epoch runs (0 during the first),
    as Lightning's ``current_epoch``; it equals ``max_epochs`` at ``train_end`` after a full
    run. ``global_step`` counts optimizer steps. ``batch_idx`` counts the training batches
    finished in the current epoch (the resume position).
    """

    stage: str | None = None
    """"fit", "validate", "test", "predict", or None between runs."""
    epoch: int = 0
    global_step: int = 0
    batch_idx: int = 0
    max_epochs: int = 1
    max_steps: int | None = None
    sanity_checking: bool = False
    training: bool = False
    """True while the train epoch runs (not during validation inside it)."""
    should_stop: bool = False
    stop_reason: str | None = None
    interrupted: bool = False
    """Set when a graceful interrupt stopped training."""
    num_training_batches: int | float = 0
    """Batches per training epoch; ``inf`` for a loader without a length (and no int
    ``limit_train_batches``), as Lightning's. The ``num_*_batches`` below likewise; theirs are
    totals over a stage's loaders (see ``loader_batches``)."""
    num_val_batches: int | float = 0
    num_test_batches: int | float = 0
    num_predict_batches: int | float = 0
    num_sanity_val_batches: int | float = 0
    loader_done: bool = False
    """An epoch of unknown length: True from the moment its last batch was fetched (the loader
    had no next one) until the epoch ends; Lightning's ``is_last_batch``. Always False for
    sized loaders: their last batch is ``batch_idx == num_training_batches``."""
    loader_batches: dict[str, list[int | float]] = attrs.field(factory=dict)
    """Batches per loader of each evaluation ("val", "sanity_val", "test", "predict"), in
    loader order: a stage given several loaders runs them one after the other."""
    eval_loaders: int = 1
    """How many loaders the running evaluation has; Lightning-style steps and batch hooks get
    ``dataloader_idx`` only when there are several."""
    eval_offset: int = 0
    """Batches of the earlier loaders of the running evaluation (progress bars add it)."""
    metrics: dict[str, float] = attrs.field(factory=dict)
    """Epoch-reduced metrics: ``train/...``, ``val/...``, ``test/...`` (callback_metrics)."""
    logged_metrics: dict[str, float] = attrs.field(factory=dict)
    """What a logger got from ``self.log`` (Lightning's ``trainer.logged_metrics``): step values
    under ``name`` / ``name_step``, epoch values under ``name`` / ``name_epoch``."""
    progress_bar_metrics: dict[str, float] = attrs.field(factory=dict)
    """Values logged with ``prog_bar=True`` (Lightning's ``trainer.progress_bar_metrics``)."""
    step_metrics: dict[str, Any] = attrs.field(factory=dict)
    """The latest per-step values logged in this epoch (tensors; for progress bars)."""
    history: list[dict[str, Any]] = attrs.field(factory=list)
    """One entry per epoch-metrics reduction: {"stage", "epoch", "global_step", metrics...}."""

    def last_batch_done(self) -> bool:
        """Whether the training batch that finished last was the epoch's last one."""
        return self.batch_idx >= self.num_training_batches > 0 or self.loader_done

    def clear_metrics(self) -> None:
        """Forget every logged value (Lightning does this after the sanity check)."""
        self.metrics.clear()
        self.logged_metrics.clear()
        self.progress_bar_metrics.clear()
        self.step_metrics.clear()

    def request_stop(self, reason: str) -> None:
        """Ask the loop to stop after the current batch; the first reason is kept."""
        self.should_stop = True
        if self.stop_reason is None:
            self.stop_reason = reason
