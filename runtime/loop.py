"""The Runtime: a handwritten training loop that emits every event on the bus.

Read ``fit`` and ``_train_epoch`` top to bottom: each emit is one visible line, in
Lightning 2.6's order (the catalogue is :mod:`runtime.events`). Per-batch events are guarded
with ``if <signal>.dispatch:`` so an event nobody listens to costs one truth test.

What the loop leans on lives in small modules: :mod:`runtime.metrics` (what ``log`` feeds
and how it is reduced), :mod:`runtime.resume` (what a checkpoint holds about the loop and
the exact restore), :mod:`runtime.devices` (seed, device, precision), :mod:`runtime.optim`
(optimizers, schedulers, clipping) and :mod:`runtime.module` (plain and Lightning-style models).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Iterable, Mapping
from itertools import count
from typing import Any

import torch

from runtime.batch import train_batches
from runtime.checkpoint import isolated_rng, set_rng_state
from runtime.core import RuntimeCore
from runtime.datamodule import as_datamodule, fit_loaders, loader_of, prepare_and_setup
from runtime.datamodule import teardown as teardown_datamodule
from runtime.devices import seed_everything
from runtime.errors import ConfigError
from runtime.eval_loaders import EvalPass, count_batches, loader_name, sanity_counts
from runtime.metrics import STAGE_PREFIX
from runtime.module import inputs_of, plain_loss, step_loss
from runtime.optim import clip_gradients, zero_grad
from runtime.resume import epoch_batches
from runtime.state import LoopState
from runtime.unsized import epoch_indices

log = logging.getLogger("busloop")

__all__ = ["Runtime"]


class Runtime(RuntimeCore):
    """Train, validate, test and predict a model while emitting events on :attr:`bus`.

    ``Runtime(model, callbacks, config, loss=..., optimizer=..., scheduler=..., tracker=...)``:
    ``config`` is a :class:`runtime.config.Config`, a dict, a YAML/JSON path or None;
    ``loss``, ``optimizer`` and ``scheduler`` override the config; ``tracker`` defaults to
    the one the config describes (see :class:`runtime.core.RuntimeCore` and the README).
    """

    def fit(
        self,
        train_loader: Iterable[Any] | None = None,
        val_loader: Iterable[Any] | None = None,
        ckpt_path: str | os.PathLike[str] | None = None,
        *,
        datamodule: Any = None,
    ) -> LoopState:
        """Train for ``trainer.epochs`` (or ``max_steps``), validating as configured.

        The data comes from loaders or from a datamodule (``datamodule=`` or in place of
        ``train_loader``; see :mod:`runtime.datamodule`).
        """
        cfg, st, ev = self.config.trainer, self.state, self.bus.event
        ckpt_path = ckpt_path if ckpt_path is not None else cfg.resume_from
        self._resuming = ckpt_path  # opening the tracker: a checkpoint's run folder is continued
        dm = as_datamodule(train_loader, datamodule, "fit")
        if dm is None and train_loader is None:
            raise ConfigError("fit: give a training loader or a datamodule")
        with self._running("fit", dm):
            if cfg.seed is not None:
                seed_everything(cfg.seed, deterministic=cfg.deterministic)
            st.should_stop, st.stop_reason, st.interrupted = False, None, False
            if dm is None:
                self._use_fit_loaders(train_loader, val_loader)
            else:
                prepare_and_setup(dm, self.model, "fit", self.device)  # prepare_data, dm.setup
            ev.setup.emit(self, stage="fit")
            if dm is not None:
                self._use_fit_loaders(*fit_loaders(dm, sanity_check=cfg.num_sanity_val_steps != 0))
            train_loader, val_loader = self.loaders["train"], self.val_loader
            self._configure_optimization()
            if ckpt_path is not None:
                self._restore(ckpt_path)
            ev.fit_start.emit(self)
            self._restore_training_state()  # after fit_start, as Lightning

            if val_loader is not None and cfg.num_sanity_val_steps != 0 and st.num_val_batches:
                with isolated_rng():  # as Lightning: the check draws nothing from training's stream
                    self._sanity_check(val_loader)

            if not st.should_stop:  # as Lightning: a stop asked for by fit_start skips training
                self.metrics.begin_stage("train")  # on_train_start logs go to the train results
                ev.train_start.emit(self)
                while st.epoch < st.max_epochs and not st.should_stop and not self._max_steps_reached():
                    self._train_epoch(train_loader, val_loader)
                ev.train_end.emit(self)
            ev.fit_end.emit(self)
            if dm is not None:
                teardown_datamodule(dm, "fit")
            ev.teardown.emit(self, stage="fit")
        return st

    def validate(self, loader: Iterable[Any] | None = None, *, datamodule: Any = None) -> dict[str, float]:
        """One validation pass over a loader (or several: :mod:`runtime.eval_loaders`) or a
        datamodule's ``val_dataloader``; returns the ``val/...`` metrics."""
        return self._evaluate("validation", "validate", loader, datamodule, self.config.trainer.limit_val_batches)

    def test(self, loader: Iterable[Any] | None = None, *, datamodule: Any = None) -> dict[str, float]:
        """One test pass over a loader or a datamodule's ``test_dataloader``; returns the
        ``test/...`` metrics."""
        return self._evaluate("test", "test", loader, datamodule, self.config.trainer.limit_test_batches)

    def predict(self, loader: Iterable[Any] | None = None, *, datamodule: Any = None) -> list[Any]:
        """Run ``predict_step`` (or the model's forward) over a loader or a datamodule's
        ``predict_dataloader``; returns the outputs (one list per loader for several)."""
        self._predictions = []
        self._evaluate("predict", "predict", loader, datamodule, self.config.trainer.limit_predict_batches)
        predictions, self._predictions = self._predictions, []
        return predictions

    # ------------------------------------------------------------------ the fit loop
    def _train_epoch(self, loader: Iterable[Any], val_loader: Iterable[Any] | None) -> None:
        """One training epoch: batches, validation when due, epoch end, plateau schedulers."""
        st, ev, metrics = self.state, self.bus.event, self.metrics
        unsized = math.isinf(st.num_training_batches)  # no length: see runtime.unsized
        resume, self._resume = self._resume, None
        skip = resume.batch_idx if resume else 0
        if resume is not None and resume.epoch_done:
            if resume.rng is not None:  # exact: the next epoch draws what the saved run drew
                set_rng_state(resume.rng)
            st.loader_done = unsized  # the saved epoch had run out
            self._finish_epoch(resumed_after_epoch_end=True)
            return

        if not self._bridge.lightning_style:  # Lightning never calls train(): a submodule
            self._train_model.train()  # a LightningModule put in eval mode stays there
        batches, self._epoch_rng = epoch_batches(loader, st.epoch, resume, st if unsized else None)  # exact resume
        n, indices = epoch_indices(st, skip)  # an EpochEnd for n when unsized

        metrics.begin_stage("train")
        st.training = True
        ev.train_epoch_start.emit(self)
        self._sync_trainable()  # DDP: rebuild the wrapper if a callback (un)froze parameters
        validates = val_loader is not None and st.num_val_batches > 0 and self._is_val_epoch()
        val_every, val_end = self._val_check_batches(n)
        if resume is not None and resume.val_pending and val_loader is not None and validates:
            self._validation_block(val_loader)  # due after the checkpointed batch, not yet run

        # The batches (runtime.batch: a plain module's step written out in the loop). A model
        # that overrides optimization hooks or optimizes manually brings its own batch function
        # (chosen once, in _configure_optimization); others fall back to _training_batch.
        max_steps = sys.maxsize if st.max_steps is None else st.max_steps  # an int: int compares are cheapest
        steps = zip(indices, batches, strict=False)  # indices first: no extra fetch
        interrupted = train_batches(
            self, steps, n, self._batch_function(), (val_loader if validates else None, val_every, val_end), max_steps
        )
        metrics.batch = None
        if not interrupted:
            self._finish_epoch()

    def _training_batch(self, batch: Any, batch_idx: int, is_last: bool) -> dict[str, Any]:
        """training_step, zero_grad, backward, clip, optimizer step, step schedulers.

        The general path: every feature (accumulation, mixed precision, Lightning-style steps,
        skip_backward, a training strategy). A plain module trains its batches through
        :func:`runtime.batch.train_batches`, the same work written out in the loop, and falls
        back to this one for any batch that needs a feature it leaves out. Each line runs once per
        batch between kernels that evict the CPU's caches, so every attribute chain and call
        shows in the per-step overhead that ``python -m benchmarks`` measures.
        """
        if self._autocast is None:
            output = self._training_step(batch, batch_idx)
        else:
            with self._autocast:
                output = self._training_step(batch, batch_idx)
        return self._optimize(output, batch_idx, is_last)

    def _optimize(self, output: Any, batch_idx: int, is_last: bool) -> dict[str, Any]:
        """The rest of :meth:`_training_batch` once the step returned ``output``: record the
        loss, zero_grad, backward, clip, optimizer step, step schedulers; returns the outputs."""
        ev, optimizer, scaler = self.bus.event, self.optimizer, self.scaler
        assert optimizer is not None
        accumulate = self.accumulate_grad_batches
        loss = output if type(output) is torch.Tensor else step_loss(output)
        if loss is None:  # the step asked to skip this batch: the bridge says what still runs
            return self._bridge.skipped_batch(self, output, batch_idx, is_last)
        # A plain module's loss is train/loss, kept for the epoch: a plain tensor's .data, not
        # a detached view (see runtime.batch); outputs["loss"] of any other step: detach().
        records = self._records_loss
        detached = loss.data if records and type(loss) is torch.Tensor else loss.detach()
        if records:
            self.metrics.record_step("train/loss", detached)

        if accumulate == 1:
            zero_now = steps_now = True
        else:
            zero_now = batch_idx % accumulate == 0
            steps_now = (batch_idx + 1) % accumulate == 0 or is_last
            loss = loss / accumulate
            detached = loss.detach()
        if not self.skip_backward:  # skipped: a forward-only pass (the optimizer step still runs)
            if zero_now:
                if ev.before_zero_grad.dispatch: ev.before_zero_grad.emit(self, optimizer=optimizer)  # noqa: E701
                zero_grad(optimizer)
            if ev.before_backward.dispatch: ev.before_backward.emit(self, loss=loss)  # noqa: E701
            (loss if scaler is None else scaler.scale(loss)).backward()
            if ev.after_backward.dispatch: ev.after_backward.emit(self)  # noqa: E701
            if self.training_strategy is not None:
                self.training_strategy.update_parameters(self)

        if steps_now:
            if scaler is not None:
                scaler.unscale_(optimizer)
            if ev.before_optimizer_step.dispatch: ev.before_optimizer_step.emit(self, optimizer=optimizer)  # noqa: E701
            clip_val = self.config.trainer.gradient_clip_val
            if clip_val is not None:
                clip_gradients(optimizer, clip_val, self.config.trainer.gradient_clip_algorithm)
            if scaler is None:
                optimizer.step()
            else:
                scaler.step(optimizer)
                scaler.update()
            self.state.global_step += 1
            if self.lr_scheduler_configs:
                self._step_schedulers("step", batch_idx + 1)
        if is_last and self.lr_scheduler_configs:
            self._step_schedulers("epoch", self.state.epoch + 1)

        if type(output) is torch.Tensor:
            return {"loss": detached}
        outputs = dict(output) if isinstance(output, Mapping) else {}
        outputs["loss"] = detached
        return outputs

    def _finish_epoch(self, *, resumed_after_epoch_end: bool = False) -> None:
        """Reduce train metrics, emit train_epoch_end, step plateau schedulers, count the epoch."""
        st, ev = self.state, self.bus.event
        st.training = False
        if not resumed_after_epoch_end:
            self.metrics.reduce("train")
            ev.train_epoch_end.emit(self)
            self._publish_epoch_metrics("train", self.metrics.reduce("train"))
            if self.tracker is not None:  # the epoch's rows on disk (the local tracker holds rows)
                self.tracker.flush()
            self.metrics.end_epoch("train")
            if log.isEnabledFor(logging.DEBUG):  # the summary line is formatted only for DEBUG
                self._log_epoch_summary()
        if st.batch_idx >= st.num_training_batches or st.loader_done:
            self._step_schedulers("epoch", st.epoch + 1, plateau=True)
        st.epoch += 1
        st.batch_idx = 0
        st.loader_done = False
        self._epoch_rng = None

    # ------------------------------------------------------------------ evaluation
    def _validation_block(self, loader: Iterable[Any]) -> dict[str, float]:
        """Validation inside fit: the module is in eval mode from validation_start to _end."""
        self._val_pending = False
        modes = self._eval_mode("validation")
        try:
            return self._eval_epoch("validation", loader, self.state.loader_batches["val"])
        finally:
            self._restore_mode("validation", modes)
            self.metrics.begin_stage("train")

    def _eval_mode(self, stage: str) -> dict[str, bool]:
        """Eval mode for an evaluation block inside fit, as Lightning sets it: the module's own
        ``on_<stage>_model_eval`` when it overrides it, else ``eval()``. Returns every
        submodule's mode before, for :meth:`_restore_mode`."""
        modes = {name: module.training for name, module in self._train_model.named_modules()}
        hook = self._bridge.overridden(f"on_{stage}_model_eval")
        if hook is not None:
            hook()
        else:
            self._train_model.eval()
        return modes

    def _restore_mode(self, stage: str, modes: dict[str, bool]) -> None:
        """Undo :meth:`_eval_mode`: the module's own ``on_<stage>_model_train`` when it
        overrides it, else each submodule back to its mode before (a frozen batch norm left in
        eval stays there), as Lightning restores it."""
        hook = self._bridge.overridden(f"on_{stage}_model_train")
        if hook is not None:
            hook()
            return
        for name, module in self._train_model.named_modules():
            module.training = modes.get(name, module.training)

    def _validation_zero_grad(self) -> None:
        """Free the gradients before a validation inside fit that follows an optimizer step, as
        Lightning does (the module's ``on_validation_model_zero_grad``, else ``zero_grad``): a
        later step with no backward in between (SWA's batch-norm epoch) then changes nothing."""
        hook = getattr(self.model, "on_validation_model_zero_grad", None)
        if callable(hook):
            hook()
        else:
            self.model.zero_grad(set_to_none=True)

    def _sanity_check(self, loader: Iterable[Any]) -> None:
        cfg, st, ev = self.config.trainer, self.state, self.bus.event
        counts = st.loader_batches["sanity_val"] = sanity_counts(st.loader_batches["val"], cfg.num_sanity_val_steps)
        st.num_sanity_val_batches = sum(counts)
        st.sanity_checking = True
        ev.sanity_check_start.emit(self)
        modes = self._eval_mode("validation")
        self._eval_epoch("validation", loader, counts)
        self._restore_mode("validation", modes)
        ev.sanity_check_end.emit(self)
        st.sanity_checking = False
        st.clear_metrics()  # Lightning clears its metrics after the sanity check

    def _evaluate(
        self, stage: str, fn: str, loader: Iterable[Any] | None, datamodule: Any, limit: int | float | None
    ) -> dict[str, float]:
        """validate / test / predict outside fit: setup, one eval epoch, teardown."""
        st, ev = self.state, self.bus.event
        dm = as_datamodule(loader, datamodule, fn)
        if dm is None and loader is None:
            raise ConfigError(f"{fn}: give a loader or a datamodule")
        with self._running(fn, dm):
            if dm is not None:
                prepare_and_setup(dm, self.model, fn, self.device)
            ev.setup.emit(self, stage=fn)
            if dm is not None:
                loader = loader_of(dm, fn)
            assert loader is not None
            split = "val" if stage == "validation" else stage
            counts = st.loader_batches[split] = count_batches(loader, limit, split)
            setattr(st, f"num_{split}_batches", sum(counts))
            self.model.to(self.device)
            modes = self._eval_mode(stage)
            try:
                metrics = self._eval_epoch(stage, loader, counts)
            finally:
                self._restore_mode(stage, modes)
            if dm is not None:
                teardown_datamodule(dm, fn)
            ev.teardown.emit(self, stage=fn)
        return metrics

    @torch.no_grad()  # from <stage>_start to <stage>_end, as Lightning's evaluation loop
    def _eval_epoch(self, stage: str, loader: Iterable[Any], counts: list[int | float]) -> dict[str, float]:
        """One evaluation epoch of ``stage`` ("validation", "test", "predict") over its loaders
        (``counts`` batches of each), one after the other (:mod:`runtime.eval_loaders`): every
        event of the block sees the module in eval mode and gradients off."""
        signal, st = self.bus.signal, self.state
        start, epoch_start = signal(f"{stage}_start"), signal(f"{stage}_epoch_start")
        batch_start, batch_end = signal(f"{stage}_batch_start"), signal(f"{stage}_batch_end")
        epoch_end, end = signal(f"{stage}_epoch_end"), signal(f"{stage}_end")
        prefix, metrics = STAGE_PREFIX[stage], self.metrics
        run = EvalPass(self, stage, loader, counts)  # each loader's step and results

        metrics.begin_stage(prefix)
        start.emit(self)
        epoch_start.emit(self)
        with torch.no_grad():
            for dataloader_idx, batches, total, step in run:  # the loaders, one after the other
                for batch_idx in count() if math.isinf(total) else range(int(total)):
                    batch = next(batches, None)
                    if batch is None:
                        break
                    batch = self._to_device(batch)
                    metrics.batch, metrics.batch_size = batch, None
                    if batch_start.dispatch: batch_start.emit(self, batch=batch, batch_idx=batch_idx, dataloader_idx=dataloader_idx)  # noqa: E701
                    if self._autocast is None:  # full precision: no context to enter
                        outputs = self._eval_step(stage, prefix, batch, batch_idx, step, dataloader_idx)
                    else:
                        with self._autocast:
                            outputs = self._eval_step(stage, prefix, batch, batch_idx, step, dataloader_idx)
                    if batch_end.dispatch: batch_end.emit(self, outputs=outputs, batch=batch, batch_idx=batch_idx, dataloader_idx=dataloader_idx)  # noqa: E701
                    if metrics.lightning is not None: self._log_eval_step(prefix)  # noqa: E701
        reduced: dict[str, float] = {}
        if stage != "predict":
            metrics.reduce(prefix)
            epoch_end.emit(self)
            reduced = metrics.reduce(prefix)
            if not st.sanity_checking:
                self._publish_epoch_metrics(prefix, reduced)
        else:
            epoch_end.emit(self)
            self._predictions = run.predictions(self._predictions)
        end.emit(self)
        metrics.end_epoch(prefix)
        self.loader_metrics = run.metrics(reduced)
        return reduced

    def _eval_step(self, stage: str, prefix: str, batch: Any, batch_idx: int, step: Any, dataloader_idx: int) -> Any:
        if stage == "predict":
            output = step(batch, batch_idx) if step else self.model(inputs_of(batch))
            self._predictions.append(output)
            return output
        if step is not None:
            output = step(batch, batch_idx)
            loss_key = loader_name(f"{prefix}/loss", dataloader_idx)
            if not self.metrics.logged(loss_key):
                loss = step_loss(output)
                if isinstance(loss, torch.Tensor):
                    self.metrics.record(loss_key, loss.detach(), None)
            return output
        if self.loss_fn is None:
            return self.model(inputs_of(batch))
        loss = plain_loss(self.loss_fn, self._train_model, batch).detach()  # one detach: both uses
        self.metrics.record_step(loader_name(f"{prefix}/loss", dataloader_idx), loss)
        return {"loss": loss}

    def _publish_epoch_metrics(self, stage: str, metrics: dict[str, float]) -> None:
        """Record a stage's epoch metrics in history and the tracker, then emit the event."""
        st = self.state
        # the 0-based index of the epoch the values belong to; after training (a test at
        # train end) that is the last epoch trained, not the count of epochs
        epoch = st.epoch - 1 if st.stage != "fit" and st.epoch > 0 and st.batch_idx == 0 else st.epoch
        st.history.append({"stage": stage, "epoch": epoch, "global_step": st.global_step, **metrics})
        if self.tracker is not None:
            for values, step in self.metrics.epoch_logs(stage, st.global_step):
                self.tracker.log_metrics(values, step=step, epoch=epoch)
        self.bus.event.epoch_metrics.emit(self, stage=stage, metrics=metrics)
