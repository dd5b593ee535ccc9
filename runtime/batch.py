"""The lean training batch of a plain ``nn.Module``: the loop's one call per batch.

A plain module's batch is, in the common case, what a hand-written loop does (the loss,
zero_grad, backward, optimizer step) plus what the runtime owes its callbacks: the loss
recorded as ``train/loss``, the optimization events (guarded: one truth test when nobody
listens), ``global_step``, clipping and step schedulers when configured. The general
``Runtime._training_batch`` does that through several calls and tests for features this
case does not use; :func:`plain_batch_function` does it in one function, so busloop's
per-step cost over the hand-written loop stays a few thousand instructions
(``python -m benchmarks.instructions`` counts them).

The recorded loss (``train/loss``'s value and ``step_metrics``) of a loss on the CPU is its
Python float (``loss.item()``: nothing to sync on the CPU, exact in float64, which is what the
epoch's reduction computes in). It costs a step what ``loss.data`` did, and the epoch's
reduction then turns one list of floats into a tensor instead of stacking hundreds of 0-d
tensors (about 400 -> 80 us for 401 steps). A loss on an accelerator is recorded as
``loss.data``, never synced per step: the value ``loss.detach()`` gives (the same storage,
no ``grad_fn``, so it keeps no graph alive) without a dispatcher call and an autograd view.
``outputs["loss"]`` is ``loss.data`` and is built only when ``train_batch_end`` has a
receiver, its one reader.

When it applies: chosen at every epoch start (``Runtime._batch_function``) for a plain
module trained by the loop's own step, without mixed precision (no autocast, no grad
scaler) and without gradient accumulation. Everything a callback may change during an
epoch is re-read on every batch, as the general path reads it: a batch that needs a
feature this function leaves out (accumulation set by a callback, ``skip_backward``, a
training strategy, a batch that is not an ``(inputs, targets, ...)`` tuple or list, a loss
that is not a plain tensor) goes through the general path instead, which then does exactly
what it always does; a receiver connected to an optimization event mid-run is called (the
events are tested per batch); an optimizer whose ``zero_grad`` is patched, or a running
profiler, gets ``optimizer.zero_grad(set_to_none=True)`` (:func:`runtime.optim.zero_grad`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import Tensor

from runtime.data import batch_size_of
from runtime.optim import clip_gradients, zero_grad

if TYPE_CHECKING:
    from runtime.loop import Runtime

__all__ = ["plain_batch_function"]

BatchFunction = Callable[[Any, int, bool], dict[str, Any] | None]


def plain_batch_function(rt: Runtime) -> BatchFunction | None:
    """The lean batch function for this epoch, or None when the run needs the general one
    (a Lightning-style step or a bridge's own batch function, autocast, a grad scaler, or
    gradient accumulation at the epoch start)."""
    if (
        rt._batch_override is not None
        or not rt._records_loss
        or rt._autocast is not None
        or rt.scaler is not None
        or rt.accumulate_grad_batches != 1
    ):
        return None
    general, optimize = rt._training_batch, rt._optimize
    metrics, st, cfg, ev = rt.metrics, rt.state, rt.config.trainer, rt.bus.event
    before_zero_grad, before_backward = ev.before_zero_grad, ev.before_backward
    after_backward, before_optimizer_step = ev.after_backward, ev.before_optimizer_step
    batch_end = ev.train_batch_end
    previous_loss: Tensor | None = None

    def plain_batch(batch: Any, batch_idx: int, is_last: bool) -> dict[str, Any] | None:
        """The loss, zero_grad, backward, clip, optimizer step and step schedulers of one batch."""
        nonlocal previous_loss
        loss_fn, optimizer = rt.loss_fn, rt.optimizer
        if (
            (type(batch) is not tuple and type(batch) is not list)
            or len(batch) < 2
            or loss_fn is None
            or rt.accumulate_grad_batches != 1
            or rt.skip_backward
            or rt.training_strategy is not None
        ):
            return general(batch, batch_idx, is_last)
        assert optimizer is not None
        loss = loss_fn(rt._train_model(batch[0]), batch[1])
        if type(loss) is not Tensor:
            return optimize(loss, batch_idx, is_last)
        # The recorded value: a CPU loss's Python float (nothing to sync), else ``.data``; see
        # the module docstring. A loss with several elements fails in backward, as it did.
        try:
            value = loss.item() if loss.is_cpu else loss.data
        except RuntimeError:
            value = loss.data
        size = metrics.batch_size
        if size is None:  # the batch's size, as batch_size_of finds it, without its calls
            first = batch[0]
            shape = first.shape if type(first) is Tensor else None
            size = shape[0] if shape else 0
            metrics.batch_size = size = size or batch_size_of(batch)
        metrics.record_step("train/loss", value, size)

        if before_zero_grad.dispatch:
            before_zero_grad.emit(rt, optimizer=optimizer)
        zero_grad(optimizer)
        if before_backward.dispatch:
            before_backward.emit(rt, loss=loss)
        loss.backward()
        if after_backward.dispatch:
            after_backward.emit(rt)
        if before_optimizer_step.dispatch:
            before_optimizer_step.emit(rt, optimizer=optimizer)
        if cfg.gradient_clip_val is not None:
            clip_gradients(optimizer, cfg.gradient_clip_val, cfg.gradient_clip_algorithm)
        optimizer.step()
        # Keep this step's graph (its buffers were freed by backward) until the next forward
        # has built its own, as a hand-written loop's ``loss`` variable does: autograd then
        # reuses the parameters' gradient accumulators instead of building new ones per step.
        previous_loss = loss
        st.global_step += 1
        if rt.lr_scheduler_configs:
            rt._step_schedulers("step", batch_idx + 1)
            if is_last:
                rt._step_schedulers("epoch", st.epoch + 1)
        # outputs["loss"] is built only for a train_batch_end receiver (the loop's one reader)
        return {"loss": loss.data} if batch_end.dispatch else None

    return plain_batch
