"""An epoch's training batches: the loop's inner loop, a plain module's batch written inline.

For every batch: move it to the device, ``train_batch_start``, the step (loss, zero_grad,
backward, optimizer step), ``train_batch_end``, the logged step, validation when due, the
stop tests. :meth:`Runtime._train_epoch <runtime.loop.Runtime._train_epoch>` sets the epoch
up and calls :func:`train_batches`; read this function top to bottom for what one batch does.

**A plain module's batch is written out in the loop** (``loss = loss_fn(model(x), y)``,
grads set to None, ``loss.backward()``, ``optimizer.step()``), as a hand-written loop
would, plus what the runtime owes its callbacks: the loss recorded as ``train/loss``, the
optimization events (guarded: one truth test each when nobody listens), ``global_step``,
clipping and step schedulers when configured. Any other batch, and any batch that needs a
feature this form leaves out, goes through the loop's general ``Runtime._training_batch``
(or a bridge's batch function), which does exactly what it always does.

When the inline form applies (:func:`lean_applies`, checked at the epoch start): a plain
module trained by the loop's own step, without mixed precision (no autocast, no grad scaler),
without gradient accumulation, ``skip_backward`` or a training strategy, with a loss. Per
batch it also needs an ``(inputs, targets, ...)`` tuple or list and a loss that is a plain
tensor.

**What a batch re-reads, and when.** The runtime's settings this form depends on (the model,
loss, optimizer and its parameters, whether its ``zero_grad`` is the base one, schedulers,
accumulation, ``skip_backward``, the training strategy, the ``train/loss`` log) are read into
locals (:func:`_settings`) at the epoch start and read again after anything that can run a
callback: every per-batch event that has receivers, a validation block, a batch that went
through the general path (a logged step only hands values to the tracker). So a callback
that changes accumulation or ``skip_backward``, adds a param group or patches
``optimizer.zero_grad`` mid-epoch, in any event, is honoured from the next batch, as the
general path honours it. (A model whose own forward or loss changes those runtime settings
mid-epoch sees the change from the next of those points.) Read every batch: each event's
receivers (a receiver connected mid-run, or the graceful interrupt's hook armed by a signal,
is called), the clipping value, the stop and interrupt flags, and whether a profiler runs
(then ``optimizer.zero_grad(set_to_none=True)`` is called, so traces keep its label:
:func:`runtime.optim.zero_grad`).

The recorded loss of a CPU loss is its Python float (``loss.item()``: nothing to sync, exact
in float64, which the epoch's reduction computes in); a loss on an accelerator is recorded
as ``loss.data`` (no per-step sync, no graph kept). ``outputs["loss"]`` is ``loss.data``,
built only when ``train_batch_end`` has a receiver, its one reader.

Why written out: each line runs once per batch between kernels that evict the CPU's caches,
so every call, attribute chain and test shows in the per-step overhead that
``python -m benchmarks`` measures (``python -m benchmarks.instructions`` counts it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from torch import Tensor

from runtime.data import batch_size_of
from runtime.optim import _AUTOGRAD_PROFILER, clearable_params, clip_gradients, zero_grad

if TYPE_CHECKING:
    from runtime.loop import Runtime
    from runtime.unsized import EpochEnd

__all__ = ["lean_applies", "train_batches"]

BatchFunction = Callable[[Any, int, bool], dict[str, Any] | None]

_LOSS = "train/loss"


def lean_applies(rt: Runtime) -> bool:
    """Whether this epoch's batches may take the inline form (checked at every epoch start):
    a plain module trained by the loop's own step, without autocast, a grad scaler or
    gradient accumulation at the epoch start."""
    return (
        rt._batch_override is None
        and rt._records_loss
        and rt._autocast is None
        and rt.scaler is None
        and rt.accumulate_grad_batches == 1
    )


def _settings(rt: Runtime, lean_epoch: bool) -> tuple[Any, ...]:
    """What the inline form reads from the runtime, read now (see the module docstring):
    ``(lean, model, loss_fn, optimizer, params, schedules, append_value, append_size,
    step_metrics)``.

    ``lean`` is False when a setting needs the general path; ``params`` is the optimizer's
    parameters when its ``zero_grad`` is the base one (grads set to None here), else None
    (its own ``zero_grad`` is called); ``append_value`` / ``append_size`` the ``train/loss``
    log's two ``append`` methods, or None (the first record makes the log, so the logs'
    order stays the order of first records)."""
    optimizer, loss_fn = rt.optimizer, rt.loss_fn
    lean = (
        lean_epoch
        and loss_fn is not None
        and rt.accumulate_grad_batches == 1
        and not rt.skip_backward
        and rt.training_strategy is None
    )
    step_metrics = rt.state.step_metrics
    if not lean or optimizer is None:
        return False, None, None, None, None, False, None, None, step_metrics
    params = clearable_params(optimizer)
    loss_log = rt.metrics.active.get(_LOSS)
    appends = (None, None) if loss_log is None else (loss_log[0].append, loss_log[1].append)
    return True, rt._train_model, loss_fn, optimizer, params, bool(rt.lr_scheduler_configs), *appends, step_metrics


def train_batches(
    rt: Runtime,
    steps: Iterable[tuple[int, Any]],
    n: int | EpochEnd,
    training_batch: BatchFunction,
    validation: tuple[Any, int | float, object],
    max_steps: int,
) -> bool:
    """Train the epoch's ``(batch_idx, batch)`` steps; True when a graceful interrupt ended it.

    ``n`` is the epoch's batch count (an ``EpochEnd`` when unsized), ``training_batch`` the
    general batch function, ``validation`` ``(val_loader or None when not validating this
    epoch, every, end)`` (see ``Runtime._val_check_batches``).
    """
    st, ev, metrics, cfg = rt.state, rt.bus.event, rt.metrics, rt.config.trainer
    batch_start, batch_end = ev.train_batch_start, ev.train_batch_end
    before_zero_grad, before_backward = ev.before_zero_grad, ev.before_backward
    after_backward, before_optimizer_step = ev.after_backward, ev.before_optimizer_step
    val_loader, val_every, val_end = validation
    validates = val_loader is not None
    transfer, log_every, last_logged = rt._transfer, cfg.log_every_n_steps, rt._logged_step
    lean_epoch = lean_applies(rt)
    lean, model, loss_fn, optimizer, params, schedules, append_value, append_size, step_metrics = (
        _settings(rt, lean_epoch)
    )
    profiler, stale = _AUTOGRAD_PROFILER, False
    previous_loss = None  # keeps the last step's graph until the next forward (see below)
    rt._val_pending = False
    for batch_idx, batch in steps:
        if transfer is not None:  # to the device, through the model's batch-transfer hooks
            batch = transfer(batch)
        metrics.batch, metrics.batch_size = batch, None
        if batch_start.dispatch:
            batch_start.emit(rt, batch=batch, batch_idx=batch_idx)
            stale = True
        if stale:  # a callback ran since the settings were read: read them again
            lean, model, loss_fn, optimizer, params, schedules, append_value, append_size, step_metrics = (
                _settings(rt, lean_epoch)
            )
            stale = False
        if not lean or (type(batch) is not tuple and type(batch) is not list) or len(batch) < 2:
            outputs = training_batch(batch, batch_idx, batch_idx + 1 == n)
            stale = lean_epoch  # its events' receivers may change what the inline form reads
        elif type(loss := loss_fn(model(batch[0]), batch[1])) is not Tensor:
            outputs = rt._optimize(loss, batch_idx, batch_idx + 1 == n)
            stale = True
        else:
            # The recorded value: a CPU loss's Python float, else ``.data`` (module docstring).
            # A loss with several elements fails in backward, as it did.
            try:
                value = loss.item() if loss.is_cpu else loss.data
            except RuntimeError:
                value = loss.data
            size = metrics.batch_size  # set when the step logged without a batch size
            if size is None:  # batch_size_of's fast path, without its calls
                first = batch[0]
                shape = first.shape if type(first) is Tensor else None
                metrics.batch_size = size = (shape[0] if shape else 0) or batch_size_of(batch)
            if append_value is None:  # the epoch's first record makes the log
                values, sizes = metrics.active.setdefault(_LOSS, ([], []))
                append_value, append_size = values.append, sizes.append
            append_value(value)
            append_size(size)
            step_metrics[_LOSS] = value

            if before_zero_grad.dispatch:
                before_zero_grad.emit(rt, optimizer=optimizer)
                stale = True
            if params is None or profiler._is_profiler_enabled:
                zero_grad(optimizer)
            else:  # exactly the base Optimizer's zero_grad(set_to_none=True)
                for param in params:
                    param.grad = None
            if before_backward.dispatch:
                before_backward.emit(rt, loss=loss)
                stale = True
            loss.backward()
            if after_backward.dispatch:
                after_backward.emit(rt)
                stale = True
            if before_optimizer_step.dispatch:
                before_optimizer_step.emit(rt, optimizer=optimizer)
                stale = True
            if cfg.gradient_clip_val is not None:  # read here: a receiver above may set it
                clip_gradients(optimizer, cfg.gradient_clip_val, cfg.gradient_clip_algorithm)
            optimizer.step()
            # Keep this step's graph (its buffers were freed by backward) until the next forward
            # has built its own, as a hand-written loop's ``loss`` does: autograd then reuses the
            # parameters' gradient accumulators instead of building new ones per step.
            previous_loss = loss
            st.global_step += 1
            if schedules:
                rt._step_schedulers("step", batch_idx + 1)
                if batch_idx + 1 == n:
                    rt._step_schedulers("epoch", st.epoch + 1)
            outputs = {"loss": loss.data} if batch_end.dispatch else None  # its one reader

        st.batch_idx = done = batch_idx + 1
        # _val_pending is False here (set above, reset by every validation block); a
        # checkpoint written by a batch_end receiver reads it: set only when due.
        due = validates and (done % val_every == 0 or done == val_end)
        if due:
            rt._val_pending = True
        if batch_end.dispatch:
            batch_end.emit(rt, outputs=outputs, batch=batch, batch_idx=batch_idx)
            stale = True
        if st.global_step % log_every == 0 and st.global_step != last_logged:
            rt._log_step_metrics()  # to the tracker, which is handed values, not the runtime
            last_logged = st.global_step

        if due or st.interrupted or st.should_stop or st.global_step >= max_steps:
            if st.interrupted:  # a graceful interrupt: no validation, no epoch end
                return True
            if due or (validates and st.should_stop):
                if done % rt.accumulate_grad_batches == 0 or done == n:  # the batch stepped
                    rt._validation_zero_grad()
                rt._validation_block(val_loader)
                stale = True
            if st.should_stop or st.global_step >= max_steps:
                break
    del previous_loss  # held only to keep the last graph alive (see above)
    return False
