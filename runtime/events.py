"""The event catalogue: every event the loop emits, with its payload, documented once.

As the loop emits them during ``fit`` (Lightning 2.6 order; names are Lightning's hook
names without ``on_``)::

    setup(stage)  fit_start
    sanity_check_start  <validation block>  sanity_check_end
    train_start
    for each epoch:
        train_epoch_start
        for each batch:
            train_batch_start(batch, batch_idx)
            [training_step]
            before_zero_grad(optimizer)      # first micro-batch of an accumulation window
            before_backward(loss)  [backward]  after_backward
            before_optimizer_step(optimizer) # only when the optimizer steps
            [optimizer.step; global_step += 1; step-interval schedulers]
            train_batch_end(outputs, batch, batch_idx)
            <validation block when due>
        train_epoch_end  epoch_metrics(stage="train", metrics)
        [ReduceLROnPlateau steps]
    train_end  fit_end  teardown(stage)

    validation block:
        validation_start  validation_epoch_start
        validation_batch_start(batch, batch_idx, dataloader_idx)  [validation_step]
        validation_batch_end(outputs, batch, batch_idx, dataloader_idx)
        validation_epoch_end  epoch_metrics(stage="val", metrics)  validation_end

``test`` and ``predict`` follow the same block shape with ``setup``/``teardown`` around it.

What is true when an event fires (pinned by ``tests/test_event_contracts.py``):
``before_zero_grad`` still sees the previous step's gradients (unless a validation came in
between: gradients are freed before a validation inside fit, as Lightning does); ``before_backward`` gets the
graph-connected loss (divided by ``accumulate_grad_batches``) with the gradients cleared;
``after_backward`` sees every gradient, weights not yet updated; ``before_optimizer_step``
sees the gradients unscaled (16-mixed) and not yet clipped; ``train_batch_end`` comes after
the step, with ``global_step`` counted and ``batch_idx`` the batches done; from
``<stage>_start`` to ``<stage>_end`` the module is in eval mode and gradients are off;
``*_epoch_end`` sees the epoch's metrics reduced in ``state.metrics``; ``save_checkpoint``
gets the complete dict (what a receiver adds is written); ``load_checkpoint`` comes after the
weights are loaded and before the callbacks' states and the loop position; the optimizer,
scheduler and scaler states load after ``fit_start`` (Lightning's order).
On an error: ``exception(exception)`` fires once and the error propagates. Checkpoints:
``save_checkpoint(checkpoint)`` before a write, ``load_checkpoint(checkpoint)`` on resume.
"""

from __future__ import annotations

__all__ = ["EVENTS", "EVENT_DOCS"]

_BATCH = ("batch", "batch_idx")
_EVAL_BATCH = ("batch", "batch_idx", "dataloader_idx")

#: The event catalogue: event name -> payload keyword names (in emit order).
EVENTS: dict[str, tuple[str, ...]] = {
    "setup": ("stage",),
    "teardown": ("stage",),
    "fit_start": (),
    "fit_end": (),
    "sanity_check_start": (),
    "sanity_check_end": (),
    "train_start": (),
    "train_end": (),
    "train_epoch_start": (),
    "train_epoch_end": (),
    "train_batch_start": _BATCH,
    "train_batch_end": ("outputs", *_BATCH),
    "before_backward": ("loss",),
    "after_backward": (),
    "before_optimizer_step": ("optimizer",),
    "before_zero_grad": ("optimizer",),
    **{
        f"{stage}_{when}": ()
        for stage in ("validation", "test", "predict")
        for when in ("start", "end", "epoch_start", "epoch_end")
    },
    **{f"{stage}_batch_start": _EVAL_BATCH for stage in ("validation", "test", "predict")},
    **{
        f"{stage}_batch_end": ("outputs", *_EVAL_BATCH)
        for stage in ("validation", "test", "predict")
    },
    "exception": ("exception",),
    "save_checkpoint": ("checkpoint",),
    "load_checkpoint": ("checkpoint",),
    # busloop's own events
    "epoch_metrics": ("stage", "metrics"),
    "checkpoint_written": ("path", "monitor", "score"),
    "artifact_produced": ("kind", "path"),
    "interrupt_received": ("signal",),
}

#: One-line descriptions of busloop's own events (Lightning's are documented by Lightning).
EVENT_DOCS: dict[str, str] = {
    "epoch_metrics": "a stage's epoch metrics were reduced into state.metrics",
    "checkpoint_written": "a checkpoint file was written (on the rank that wrote it: rank zero; monitor/score may be None)",
    "artifact_produced": "a file was produced: kind is 'onnx', 'archive', 'blob', ...",
    "interrupt_received": "SIGINT/SIGTERM arrived during fit (signal is its number)",
}
