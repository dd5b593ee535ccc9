"""The Runtime: a handwritten training loop that emits every event on the bus.

Read ``fit`` and ``_train_epoch`` top to bottom: each emit is one visible line, in
Lightning 2.6's order (the catalogue is in :mod:`runtime.bus`). Per-batch events are guarded
with ``if <signal>.dispatch:`` so an event nobody listens to costs one truth test.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import random
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from runtime import distributed as dist
from runtime.bus import Bus, BusError
from runtime.checkpoint import (
    FORMAT_KEY,
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    versions,
)
from runtime.config import Config, ConfigError, config_to_dict, load_config
from runtime.data import batch_size_of, iterate, move_to_device, num_batches, set_sampler_epoch
from runtime.module import ModuleBridge, step_loss
from runtime.names import resolve_import
from runtime.optim import (
    SchedulerConfig,
    build_optimizer,
    build_schedulers,
    parse_configure_optimizers,
    plateau_value,
    zero_grad,
)
from runtime.state import LoopState
from runtime.tracking import Tracker, create_tracker

log = logging.getLogger("busloop")

__all__ = ["Runtime", "seed_everything", "select_device"]

_STAGE_PREFIX = {"fit": "train", "train": "train", "validation": "val", "test": "test", "predict": "predict"}


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed python, numpy (when installed) and torch; optionally force deterministic kernels."""
    random.seed(seed)
    torch.manual_seed(seed)
    with contextlib.suppress(ImportError):
        import numpy as np

        np.random.seed(seed % 2**32)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def select_device(accelerator: str) -> torch.device:
    """``auto`` picks cuda (this rank's local device under torchrun), then mps, then cpu."""
    if accelerator == "auto":
        if torch.cuda.is_available():
            accelerator = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            accelerator = "mps"
        else:
            accelerator = "cpu"
    if accelerator == "cuda" and dist.launched_by_torchrun():
        accelerator = f"cuda:{dist.local_rank()}"
    device = torch.device(accelerator)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator: '{accelerator}' requested but CUDA is not available")
    return device


@attrs.define
class _ResumePoint:
    """Where a restored checkpoint left the fit loop (consumed when the epoch starts)."""

    batch_idx: int
    epoch_done: bool
    epoch_rng: dict[str, Any] | None
    rng: dict[str, Any] | None
    val_pending: bool = False


class Runtime:
    """Train, validate, test and predict a model while emitting events on :attr:`bus`.

    ``config`` is a :class:`runtime.config.Config`, a dict, a YAML/JSON path or None.
    ``loss``, ``optimizer`` and ``scheduler`` override the config; see the README.
    ``tracker`` defaults to the one the config describes (created on the first run, on
    rank zero only); pass :class:`runtime.tracking.NullTracker` for none.
    """

    def __init__(
        self,
        model: nn.Module,
        callbacks: Sequence[object] = (),
        config: Config | Mapping[str, Any] | str | os.PathLike[str] | None = None,
        *,
        loss: Callable[..., torch.Tensor] | str | None = None,
        optimizer: Any = None,
        scheduler: Any = None,
        tracker: Tracker | None = None,
    ) -> None:
        self.config = config if isinstance(config, Config) else load_config(config)
        cfg = self.config.trainer
        self.model = model
        self.callbacks = list(callbacks)
        self.bus = Bus()
        self.bus.subscribe_all(self.callbacks)
        _check_state_keys(self.callbacks)
        self.state = LoopState(max_epochs=cfg.epochs, max_steps=cfg.max_steps)
        self.device = select_device(cfg.accelerator)
        self.loss_fn = _resolve_loss(loss if loss is not None else self.config.loss)
        self.optimizer_spec: Any = optimizer if optimizer is not None else self.config.optimizer
        """What the optimizer is built from (object, factory or spec); None: configure_optimizers."""
        self.scheduler_spec: Any = scheduler if scheduler is not None else self.config.scheduler
        self.optimizer: torch.optim.Optimizer | None = None
        self.lr_scheduler_configs: list[SchedulerConfig] = []
        self.scaler: torch.amp.GradScaler | None = None
        self.accumulate_grad_batches: int = cfg.accumulate_grad_batches or 1
        self.tracker: Tracker | None = tracker
        self.ckpt_path: str | None = None
        self.loaders: dict[str, Iterable[Any]] = {}
        """Loaders by split ("train", "val", "test", ...): fit sets train/val, the CLI all."""
        self.training_strategy: Any = None
        """Optional object owning optimization: ``configure_optimizers(runtime)`` returns
        ``(optimizer, schedulers)``; ``update_parameters(runtime)`` runs after every backward."""
        self._bridge = ModuleBridge(model)
        self._train_model: nn.Module = model
        self._autocast = _autocast_for(cfg.precision, self.device)
        """The mixed-precision context the steps run in; None for full precision."""
        self._training_step: Callable[[Any, int], Any] = (
            self._bridge.step("training") or self._plain_training_step
        )
        self._logs: dict[str, dict[str, tuple[list[Any], list[int]]]] = {}
        self._active_logs: dict[str, tuple[list[Any], list[int]]] = {}
        self._log_prefix = "train"
        self._batch: Any = None
        self._batch_size: int | None = None
        self._epoch_rng: dict[str, Any] | None = None
        self._val_pending = False
        self._logged_step = -1
        self._resume: _ResumePoint | None = None
        self._predictions: list[Any] = []
        self._epoch_metrics: dict[str, dict[str, float]] = {}

    # ------------------------------------------------------------------ public API
    def fit(
        self,
        train_loader: Iterable[Any],
        val_loader: Iterable[Any] | None = None,
        ckpt_path: str | os.PathLike[str] | None = None,
    ) -> LoopState:
        """Train for ``trainer.epochs`` (or ``max_steps``), validating as configured."""
        cfg, st, ev = self.config.trainer, self.state, self.bus.event
        ckpt_path = ckpt_path if ckpt_path is not None else cfg.resume_from
        with self._running("fit"):
            if cfg.seed is not None:
                seed_everything(cfg.seed, deterministic=cfg.deterministic)
            train_loader, val_loader = self._prepare_loaders(train_loader, val_loader)
            self.train_loader, self.val_loader = train_loader, val_loader
            self.loaders["train"] = train_loader
            if val_loader is not None:
                self.loaders["val"] = val_loader
            st.should_stop, st.stop_reason, st.interrupted = False, None, False
            st.num_training_batches = _as_count(num_batches(train_loader, cfg.limit_train_batches))
            st.num_val_batches = self._count_val_batches(val_loader)

            ev.setup.emit(self, stage="fit")
            self._configure_optimization()
            if ckpt_path is not None:
                self._restore(ckpt_path)
            ev.fit_start.emit(self)

            if val_loader is not None and cfg.num_sanity_val_steps != 0 and st.num_val_batches:
                self._sanity_check(val_loader)

            ev.train_start.emit(self)
            while st.epoch < st.max_epochs and not st.should_stop and not self._max_steps_reached():
                self._train_epoch(train_loader, val_loader)
            ev.train_end.emit(self)
            ev.fit_end.emit(self)
            ev.teardown.emit(self, stage="fit")
        return st

    def validate(self, loader: Iterable[Any]) -> dict[str, float]:
        """One validation pass; returns the ``val/...`` metrics."""
        return self._evaluate("validation", "validate", loader, self.config.trainer.limit_val_batches)

    def test(self, loader: Iterable[Any]) -> dict[str, float]:
        """One test pass; returns the ``test/...`` metrics."""
        return self._evaluate("test", "test", loader, self.config.trainer.limit_test_batches)

    def predict(self, loader: Iterable[Any]) -> list[Any]:
        """Run ``predict_step`` (or the model's forward) over ``loader``; returns the outputs."""
        self._predictions = []
        self._evaluate("predict", "predict", loader, self.config.trainer.limit_predict_batches)
        predictions, self._predictions = self._predictions, []
        return predictions

    def log(
        self, name: str, value: Any, batch_size: int | None = None, prog_bar: bool = False
    ) -> None:
        """Record a value; it is reduced per epoch (batch-size weighted mean).

        A name without ``/`` gets the current stage's prefix (``train/``, ``val/``,
        ``test/``). Tensors stay on their device until the epoch ends (no sync per step), so
        do not log a tensor you later modify in place (parameters are copied; buffers are not).
        """
        if "/" not in name:
            name = f"{self._log_prefix}/{name}"
        self._record(name, value, batch_size)

    def module_log(
        self,
        name: str,
        value: Any,
        prog_bar: bool = False,
        logger: bool | None = None,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: Any = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any = None,
        add_dataloader_idx: bool = True,
        batch_size: int | None = None,
        metric_attribute: str | None = None,
        rank_zero_only: bool = False,
    ) -> None:
        """``LightningModule.log`` while the runtime drives the module: names kept as given."""
        self._record(name, value, batch_size)

    def module_log_dict(self, dictionary: Mapping[str, Any], **kwargs: Any) -> None:
        """``LightningModule.log_dict`` counterpart of :meth:`module_log`."""
        for name, value in dictionary.items():
            self.module_log(name, value, **kwargs)

    def request_stop(self, reason: str) -> None:
        """Stop training after the current batch (validation still runs if it is due)."""
        self.state.request_stop(reason)
        log.info("Stop requested: %s", reason)

    def save_checkpoint(
        self, path: str | os.PathLike[str], *, monitor: str | None = None, score: float | None = None
    ) -> Path:
        """Write a full checkpoint atomically (rank zero writes; every rank waits)."""
        checkpoint = self.checkpoint_dict()
        target = Path(path)
        if dist.is_rank_zero():
            save_checkpoint(checkpoint, target)
        dist.barrier()
        self.bus.event.checkpoint_written.emit(self, path=target, monitor=monitor, score=score)
        return target

    def checkpoint_dict(self) -> dict[str, Any]:
        """The checkpoint as a dict of weights_only-safe values (see DESIGN.md)."""
        st = self.state
        epoch_done = st.training is False and st.batch_idx >= st.num_training_batches > 0
        callback_states: dict[str, Any] = {}
        for callback in self.callbacks:
            state_dict = getattr(callback, "state_dict", None)
            state = state_dict() if callable(state_dict) else None
            if state:
                callback_states[_state_key(callback)] = state
        checkpoint: dict[str, Any] = {
            FORMAT_KEY: FORMAT_VERSION,
            "epoch": st.epoch,
            "global_step": st.global_step,
            "loop": {
                "epoch": st.epoch,
                "batch_idx": st.batch_idx,
                "epoch_done": epoch_done,
                "val_pending": self._val_pending,
                "epoch_rng": None if epoch_done else self._epoch_rng,
                "pending_logs": _pending_logs(self._logs.get("train", {})),
            },
            "state_dict": self.model.state_dict(),
            "optimizer_states": [self.optimizer.state_dict()] if self.optimizer else [],
            "lr_schedulers": [c.scheduler.state_dict() for c in self.lr_scheduler_configs],
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "accumulate_grad_batches": self.accumulate_grad_batches,
            "rng": rng_state(),
            "callbacks": callback_states,
            "metrics": dict(st.metrics),
            "history": [dict(entry) for entry in st.history],
            "config": config_to_dict(self.config),
            "versions": versions(),
        }
        self.bus.event.save_checkpoint.emit(self, checkpoint=checkpoint)
        return checkpoint

    def close(self, status: str = "success") -> None:
        """Finalise the tracker (idempotent); the CLI and ``with Runtime(...)`` call it."""
        if self.tracker is not None:
            self.tracker.finalize(status)

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.close("failed" if exc_type else "success")

    @property
    def lightning_module(self) -> nn.Module:
        return self.model

    # ------------------------------------------------------------------ the fit loop
    def _train_epoch(self, loader: Iterable[Any], val_loader: Iterable[Any] | None) -> None:
        """One training epoch: batches, validation when due, epoch end, plateau schedulers."""
        cfg, st, ev = self.config.trainer, self.state, self.bus.event
        n = st.num_training_batches
        resume, self._resume = self._resume, None
        skip = resume.batch_idx if resume else 0

        if resume is not None and resume.epoch_done:
            self._finish_epoch(resumed_after_epoch_end=True)
            return

        self._train_model.train()
        set_sampler_epoch(loader, st.epoch)
        # Exact resume: replay the epoch's start (same shuffle, same worker seeds), skip the
        # batches already trained at the sampler level, then continue the saved random stream.
        if resume is not None and resume.epoch_rng is not None:
            set_rng_state(resume.epoch_rng)
        elif resume is not None and resume.rng is not None:
            set_rng_state(resume.rng)
        self._epoch_rng = rng_state()
        batches = iterate(loader, skip, replay_persistent=resume is not None and st.epoch > 0)
        if resume is not None and resume.epoch_rng is not None and resume.rng is not None:
            set_rng_state(resume.rng)

        self._begin_stage("train")
        st.training = True
        ev.train_epoch_start.emit(self)
        validates = val_loader is not None and st.num_val_batches > 0 and self._is_val_epoch()
        val_every = self._val_check_batches(n)
        if resume is not None and resume.val_pending and val_loader is not None and validates:
            self._validation_block(val_loader)  # due after the checkpointed batch, not yet run

        # Per-batch work reads locals: see _training_batch on why the hot path is kept lean.
        batch_start, batch_end = ev.train_batch_start, ev.train_batch_end
        training_batch, device = self._training_batch, self.device
        on_device = device.type != "cpu"
        log_every, last_logged = cfg.log_every_n_steps, self._logged_step
        max_steps = math.inf if st.max_steps is None else st.max_steps
        self._val_pending = False
        for batch_idx, batch in zip(range(skip, n), batches, strict=False):  # range first: no extra fetch
            if on_device:
                batch = move_to_device(batch, device)
            self._batch, self._batch_size = batch, None
            if batch_start.dispatch: batch_start.emit(self, batch=batch, batch_idx=batch_idx)  # noqa: E701
            outputs = training_batch(batch, batch_idx, batch_idx + 1 == n)
            st.batch_idx = done = batch_idx + 1
            if validates:
                self._val_pending = done % val_every == 0 or done == n
            if batch_end.dispatch: batch_end.emit(self, outputs=outputs, batch=batch, batch_idx=batch_idx)  # noqa: E701
            if st.global_step % log_every == 0 and st.global_step != last_logged:
                self._log_step_metrics()
                last_logged = st.global_step

            if st.interrupted:  # a graceful interrupt: no validation, no epoch end
                self._batch = None
                return
            if self._val_pending or (validates and st.should_stop):
                self._validation_block(val_loader)  # type: ignore[arg-type]  # validates: not None
            if st.should_stop or st.global_step >= max_steps:
                break
        self._batch = None
        self._finish_epoch()

    def _training_batch(self, batch: Any, batch_idx: int, is_last: bool) -> dict[str, Any]:
        """training_step, zero_grad, backward, clip, optimizer step, step schedulers.

        The hot path. Each line runs once per batch between kernels that evict the CPU's
        caches, so every attribute chain and call shows in the per-step overhead that
        ``python -m benchmarks`` measures: settings are read once, optional work sits
        behind one test.
        """
        ev, optimizer, scaler = self.bus.event, self.optimizer, self.scaler
        assert optimizer is not None
        accumulate = self.accumulate_grad_batches
        if self._autocast is None:
            output = self._training_step(batch, batch_idx)
        else:
            with self._autocast:
                output = self._training_step(batch, batch_idx)
        loss = output if type(output) is torch.Tensor else step_loss(output)
        if loss is None:  # the step asked to skip this batch
            return {} if output is None else dict(output)

        if accumulate == 1:
            zero_now = steps_now = True
        else:
            zero_now = batch_idx % accumulate == 0
            steps_now = (batch_idx + 1) % accumulate == 0 or is_last
            loss = loss / accumulate
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
            if self.config.trainer.gradient_clip_val is not None:
                self._clip_gradients()
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
            return {"loss": loss.detach()}
        outputs = dict(output) if isinstance(output, Mapping) else {}
        outputs["loss"] = loss.detach()
        return outputs

    def _plain_training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """The training step of a plain ``nn.Module``: the configured loss, logged as train/loss."""
        loss = self._plain_loss(batch)
        self._record("train/loss", loss.detach(), None)
        return loss

    def _finish_epoch(self, *, resumed_after_epoch_end: bool = False) -> None:
        """Reduce train metrics, emit train_epoch_end, step plateau schedulers, count the epoch."""
        st, ev = self.state, self.bus.event
        st.training = False
        if not resumed_after_epoch_end:
            self._reduce("train")
            ev.train_epoch_end.emit(self)
            self._publish_epoch_metrics("train", self._reduce("train"))
            self._log_epoch_summary()
        if st.batch_idx >= st.num_training_batches:
            self._step_schedulers("epoch", st.epoch + 1, plateau=True)
        st.epoch += 1
        st.batch_idx = 0
        self._epoch_rng = None

    # ------------------------------------------------------------------ evaluation
    def _validation_block(self, loader: Iterable[Any]) -> dict[str, float]:
        """Validation inside fit: the module is in eval mode from validation_start to _end."""
        self._val_pending = False
        self._train_model.eval()
        try:
            return self._eval_epoch("validation", loader, self.state.num_val_batches)
        finally:
            self._train_model.train()
            self._begin_stage("train")

    def _sanity_check(self, loader: Iterable[Any]) -> None:
        cfg, st, ev = self.config.trainer, self.state, self.bus.event
        steps = st.num_val_batches if cfg.num_sanity_val_steps < 0 else cfg.num_sanity_val_steps
        st.num_sanity_val_batches = min(steps, st.num_val_batches)
        st.sanity_checking = True
        ev.sanity_check_start.emit(self)
        self._train_model.eval()
        self._eval_epoch("validation", loader, st.num_sanity_val_batches)
        self._train_model.train()
        ev.sanity_check_end.emit(self)
        st.sanity_checking = False
        st.metrics.clear()  # Lightning clears callback_metrics after the sanity check
        st.step_metrics.clear()

    def _evaluate(
        self, stage: str, fn: str, loader: Iterable[Any], limit: int | float | None
    ) -> dict[str, float]:
        """validate / test / predict outside fit: setup, one eval epoch, teardown."""
        st, ev = self.state, self.bus.event
        with self._running(fn):
            count = _as_count(num_batches(loader, limit))
            setattr(st, f"num_{'val' if stage == 'validation' else stage}_batches", count)
            ev.setup.emit(self, stage=fn)
            self.model.to(self.device)
            self.model.eval()
            metrics = self._eval_epoch(stage, loader, count)
            ev.teardown.emit(self, stage=fn)
        return metrics

    def _eval_epoch(self, stage: str, loader: Iterable[Any], max_batches: int) -> dict[str, float]:
        """One evaluation epoch of ``stage`` ("validation", "test", "predict")."""
        signal = self.bus.signal
        start, epoch_start = signal(f"{stage}_start"), signal(f"{stage}_epoch_start")
        batch_start, batch_end = signal(f"{stage}_batch_start"), signal(f"{stage}_batch_end")
        epoch_end, end = signal(f"{stage}_epoch_end"), signal(f"{stage}_end")
        prefix = _STAGE_PREFIX[stage]

        start.emit(self)
        self._begin_stage(prefix)
        epoch_start.emit(self)
        with torch.no_grad():
            batches = iterate(loader)
            for batch_idx in range(max_batches):
                batch = next(batches, None)
                if batch is None:
                    break
                batch = self._to_device(batch)
                self._batch, self._batch_size = batch, None
                if batch_start.dispatch: batch_start.emit(self, batch=batch, batch_idx=batch_idx, dataloader_idx=0)  # noqa: E701
                with self._autocast or contextlib.nullcontext():
                    outputs = self._eval_step(stage, prefix, batch, batch_idx)
                if batch_end.dispatch: batch_end.emit(self, outputs=outputs, batch=batch, batch_idx=batch_idx, dataloader_idx=0)  # noqa: E701
        self._batch = None
        metrics: dict[str, float] = {}
        if stage != "predict":
            self._reduce(prefix)
            epoch_end.emit(self)
            metrics = self._reduce(prefix)
            if not self.state.sanity_checking:
                self._publish_epoch_metrics(prefix, metrics)
        else:
            epoch_end.emit(self)
        end.emit(self)
        return metrics

    def _eval_step(self, stage: str, prefix: str, batch: Any, batch_idx: int) -> Any:
        step = self._bridge.step(stage)
        if stage == "predict":
            output = step(batch, batch_idx) if step else self.model(_inputs_of(batch))
            self._predictions.append(output)
            return output
        if step is not None:
            output = step(batch, batch_idx)
            loss_key = f"{prefix}/loss"
            if loss_key not in self._active_logs:
                loss = step_loss(output)
                if isinstance(loss, torch.Tensor):
                    self._record(loss_key, loss.detach(), None)
            return output
        if self.loss_fn is None:
            return self.model(_inputs_of(batch))
        loss = self._plain_loss(batch)
        self._record(f"{prefix}/loss", loss.detach(), None)
        return {"loss": loss.detach()}

    def _plain_loss(self, batch: Any) -> torch.Tensor:
        if self.loss_fn is None:
            raise ConfigError(
                "loss: the model has no training_step, so busloop needs a loss function "
                "(Runtime(loss=...) or config 'loss: torch.nn.functional:cross_entropy')"
            )
        if not isinstance(batch, list | tuple) or len(batch) < 2:
            raise TypeError(
                "a plain nn.Module is trained on (inputs, targets) batches; got "
                f"{type(batch).__name__}. Define training_step for other batch shapes."
            )
        return self.loss_fn(self._train_model(batch[0]), batch[1])

    # ------------------------------------------------------------------ metrics
    def _begin_stage(self, prefix: str) -> None:
        self._log_prefix = prefix
        self._active_logs = self._logs.setdefault(prefix, {})

    def _record(self, name: str, value: Any, batch_size: int | None) -> None:
        if isinstance(value, torch.Tensor) and value.requires_grad:
            # A parameter is updated in place later: keep a copy. A step's result is fresh.
            value = value.detach().clone() if value.is_leaf else value.detach()
        if batch_size is None:
            batch_size = self._batch_size
            if batch_size is None:
                batch_size = self._batch_size = batch_size_of(self._batch) if self._batch is not None else 1
        entry = self._active_logs.get(name)
        if entry is None:
            entry = self._active_logs[name] = ([], [])
        entry[0].append(value)
        entry[1].append(batch_size)
        self.state.step_metrics[name] = value

    def _reduce(self, prefix: str) -> dict[str, float]:
        """Batch-size-weighted means of this stage's logs (one sync, summed across ranks).

        Merges into ``state.metrics`` and returns this stage's metrics. Values logged
        again after a reduction (e.g. in ``*_epoch_end``) are folded into the same epoch.
        """
        logs = self._logs.get(prefix)
        st = self.state
        if logs:
            names = list(logs)
            sums = torch.stack([_weighted_sum(*logs[n]) for n in names])
            counts = torch.tensor([float(sum(logs[n][1])) for n in names], dtype=torch.float64)
            totals = dist.all_reduce_sum(torch.cat([sums.cpu(), counts]).to(self._reduce_device()))
            values = (totals[: len(names)] / totals[len(names) :]).tolist()
            reduced = dict(zip(names, values, strict=True))
            self._epoch_metrics.setdefault(prefix, {}).update(reduced)
            st.metrics.update(reduced)
            logs.clear()
        metrics = dict(self._epoch_metrics.get(prefix, {}))
        return metrics

    def _publish_epoch_metrics(self, stage: str, metrics: dict[str, float]) -> None:
        """Record a stage's epoch metrics in history and the tracker, then emit the event."""
        st = self.state
        st.history.append({"stage": stage, "epoch": st.epoch, "global_step": st.global_step, **metrics})
        if self.tracker is not None and metrics:
            self.tracker.log_metrics(metrics, step=st.global_step, epoch=st.epoch)
        self.bus.event.epoch_metrics.emit(self, stage=stage, metrics=metrics)

    def _reduce_device(self) -> torch.device:
        if dist.is_available_and_initialized() and self.device.type == "cuda":
            return self.device
        return torch.device("cpu")

    def _log_step_metrics(self) -> None:
        """Send the latest per-step train values to the tracker (once per logged step)."""
        self._logged_step = self.state.global_step
        step_values = {
            f"{k}_step": float(v) for k, v in self.state.step_metrics.items()
            if k.startswith("train") or "/" not in k
        }
        if step_values and self.tracker is not None:
            self.tracker.log_metrics(step_values, step=self.state.global_step, epoch=self.state.epoch)

    def _log_epoch_summary(self) -> None:
        st = self.state
        parts = " | ".join(f"{k}: {v:.5g}" for k, v in sorted(st.metrics.items()))
        log.debug("[Epoch %d/%d] step %d | %s", st.epoch + 1, st.max_epochs, st.global_step, parts)

    # ------------------------------------------------------------------ helpers
    @contextlib.contextmanager
    def _running(self, stage: str) -> Iterator[None]:
        """One public run: tracker, module hooks, stage bookkeeping, the exception event."""
        st = self.state
        outer = st.stage
        if outer is None:
            self._open_tracker()
            self._bridge.attach(self)
            self.model.to(self.device)
        st.stage = stage
        self._epoch_metrics.clear()
        self._logs.clear()
        try:
            yield
        except BaseException as exc:
            self._report_exception(exc)
            raise
        finally:
            st.stage = outer
            if outer is None:
                self._bridge.detach(self)

    def _report_exception(self, exc: BaseException) -> None:
        """Emit ``exception`` once per error, log it, finalise the tracker as failed."""
        if getattr(exc, "_busloop_reported", False):
            return
        with contextlib.suppress(AttributeError):
            exc._busloop_reported = True  # type: ignore[attr-defined]
        log.error("Run failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
        try:
            self.bus.event.exception.emit(self, exception=exc)
        except Exception as handler_error:  # a failing handler must not hide the real error
            log.error("While handling the error: %s", handler_error)
        if self.tracker is not None:
            self.tracker.finalize("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")

    def _open_tracker(self) -> None:
        if self.tracker is None:
            tcfg = self.config.tracker
            self.tracker = create_tracker(tcfg.save_directory, tcfg.run_name, tcfg.backends)
            atexit.register(_close_at_exit, weakref.ref(self))
            save_config = getattr(self.tracker, "save_config", None)
            if callable(save_config):
                save_config(config_to_dict(self.config))

    @property
    def run_dir(self) -> Path | None:
        """The tracker's run folder (``runs/<N>-<name>``), or None."""
        return getattr(self.tracker, "run_dir", None)

    def _prepare_loaders(
        self, train_loader: Iterable[Any], val_loader: Iterable[Any] | None
    ) -> tuple[Iterable[Any], Iterable[Any] | None]:
        if dist.launched_by_torchrun():
            from runtime.data import distributed_loader

            if dist.init_process_group(self.device):
                log.info("torch.distributed initialised: rank %d of %d", dist.rank(), dist.world_size())
            train_loader = distributed_loader(train_loader)
            val_loader = distributed_loader(val_loader, shuffle=False) if val_loader is not None else None
        return train_loader, val_loader

    def _configure_optimization(self) -> None:
        """Model to device, DDP wrapping, optimizer, schedulers, grad scaler."""
        self.model.to(self.device)
        if dist.is_available_and_initialized() and dist.world_size() > 1 and self._train_model is self.model:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self._train_model = DistributedDataParallel(self.model, device_ids=device_ids)
            if self._bridge.lightning_style:
                raise ConfigError(
                    "DDP with a Lightning-style training_step is not supported yet; use a "
                    "plain nn.Module with a loss"
                )
        if self.optimizer is None:
            configure = getattr(self.model, "configure_optimizers", None)
            if self.training_strategy is not None:
                optimizer, schedulers = self.training_strategy.configure_optimizers(self)
                self.optimizer = optimizer
                self.lr_scheduler_configs = build_schedulers(schedulers, optimizer)
            elif self.optimizer_spec is None and callable(configure):
                self.optimizer, self.lr_scheduler_configs = parse_configure_optimizers(configure())
            else:
                if self.optimizer_spec is None:
                    raise ConfigError(
                        "optimizer: none given; pass Runtime(optimizer=...), set config "
                        "'optimizer: {name: AdamW, params: {lr: 0.001}}' or define "
                        "configure_optimizers on the model"
                    )
                self.optimizer = build_optimizer(self.optimizer_spec, self.model)
                self.lr_scheduler_configs = build_schedulers(self.scheduler_spec, self.optimizer)
        precision = self.config.trainer.precision
        if precision == "16-mixed" and self.scaler is None:
            self.scaler = torch.amp.GradScaler(self.device.type)

    def _clip_gradients(self) -> None:
        """Clip by value or norm; the caller checks that ``gradient_clip_val`` is set."""
        cfg = self.config.trainer
        assert cfg.gradient_clip_val is not None
        params = [p for group in self.optimizer.param_groups for p in group["params"]]  # type: ignore[union-attr]
        if cfg.gradient_clip_algorithm == "value":
            nn.utils.clip_grad_value_(params, cfg.gradient_clip_val)
        else:
            nn.utils.clip_grad_norm_(params, cfg.gradient_clip_val)

    def _step_schedulers(self, interval: str, index: int, *, plateau: bool = False) -> None:
        """Step schedulers of ``interval`` whose frequency divides ``index`` (Lightning's rule)."""
        for config in self.lr_scheduler_configs:
            if config.interval != interval or config.reduce_on_plateau != plateau:
                continue
            if index % config.frequency:
                continue
            if plateau:
                value = plateau_value(self.state.metrics, config)
                if value is not None:
                    config.scheduler.step(value)
            else:
                config.scheduler.step()

    def _val_check_batches(self, n: int) -> int:
        interval = self.config.trainer.val_check_interval
        if isinstance(interval, float):
            return n if interval >= 1.0 else max(1, int(n * interval))
        return interval

    def _is_val_epoch(self) -> bool:
        every = self.config.trainer.check_val_every_n_epoch
        return every is None or (self.state.epoch + 1) % every == 0

    def _count_val_batches(self, loader: Iterable[Any] | None) -> int:
        if loader is None:
            return 0
        return _as_count(num_batches(loader, self.config.trainer.limit_val_batches))

    def _max_steps_reached(self) -> bool:
        max_steps = self.state.max_steps
        return max_steps is not None and self.state.global_step >= max_steps

    def _to_device(self, batch: Any) -> Any:
        return batch if self.device.type == "cpu" else move_to_device(batch, self.device)

    # ------------------------------------------------------------------ resume
    def _restore(self, path: str | os.PathLike[str]) -> None:
        """Load a checkpoint: weights, optimizer/scheduler/scaler, callbacks, loop position."""
        checkpoint = load_checkpoint(path, map_location=self.device)
        self.ckpt_path = str(path)
        try:
            self.model.load_state_dict(checkpoint["state_dict"])
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: the model weights do not fit this model: {exc}") from None
        self.bus.event.load_checkpoint.emit(self, checkpoint=checkpoint)
        states = checkpoint.get("callbacks", {})
        for callback in self.callbacks:
            key = _state_key(callback)
            if key in states and callable(getattr(callback, "load_state_dict", None)):
                callback.load_state_dict(states[key])  # type: ignore[attr-defined]
        if self.optimizer is not None and checkpoint.get("optimizer_states"):
            self.optimizer.load_state_dict(checkpoint["optimizer_states"][0])
        for config, state in zip(self.lr_scheduler_configs, checkpoint.get("lr_schedulers", []), strict=False):
            config.scheduler.load_state_dict(state)
        if self.scaler is not None and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.accumulate_grad_batches = int(checkpoint.get("accumulate_grad_batches", self.accumulate_grad_batches))

        st = self.state
        loop = checkpoint.get("loop")
        st.global_step = int(checkpoint.get("global_step", 0))
        st.metrics = dict(checkpoint.get("metrics", {}))
        st.history = [dict(entry) for entry in checkpoint.get("history", [])]
        if loop is None:  # a Lightning checkpoint: resume at the next epoch
            st.epoch = int(checkpoint.get("epoch", -1)) + 1
            return
        st.epoch = int(loop["epoch"])
        st.batch_idx = int(loop["batch_idx"])
        self._logs["train"] = _restore_logs(loop.get("pending_logs", {}))
        self._resume = _ResumePoint(
            batch_idx=st.batch_idx,
            epoch_done=bool(loop["epoch_done"]),
            epoch_rng=loop.get("epoch_rng"),
            val_pending=bool(loop.get("val_pending", False)),
            rng=checkpoint.get("rng"),
        )
        log.info("Resumed from %s at epoch %d, batch %d, step %d", path, st.epoch, st.batch_idx, st.global_step)


# ---------------------------------------------------------------------- module helpers
def _close_at_exit(runtime_ref: weakref.ref[Runtime]) -> None:
    """Finalise a tracker left open at interpreter exit (a script that never called close)."""
    runtime = runtime_ref()
    if runtime is not None:
        with contextlib.suppress(Exception):
            runtime.close()


def _autocast_for(precision: str, device: torch.device) -> Any:
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(device.type, dtype=torch.float16)
    return None


def _resolve_loss(loss: Callable[..., torch.Tensor] | str | None) -> Callable[..., torch.Tensor] | None:
    if isinstance(loss, str):
        resolved = resolve_import(loss, key="loss")
        if isinstance(resolved, type):
            resolved = resolved()
        return resolved  # type: ignore[no-any-return]
    return loss


def _inputs_of(batch: Any) -> Any:
    return batch[0] if isinstance(batch, list | tuple) else batch


def _as_count(value: float) -> int:
    if math.isinf(value):
        raise ConfigError("loaders without a length are not supported yet; give the dataset a __len__")
    return int(value)


def _weighted_sum(values: list[Any], sizes: list[int]) -> torch.Tensor:
    stacked: torch.Tensor | None = None
    if all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in values):
        try:  # one stack for the epoch instead of three tensor ops per logged value
            stacked = torch.stack(values).to(device="cpu", dtype=torch.float64)
        except RuntimeError:  # values on several devices
            stacked = None
    if stacked is None:
        stacked = torch.stack([torch.as_tensor(v, dtype=torch.float64).cpu().reshape(()) for v in values])
    return (stacked * torch.tensor(sizes, dtype=torch.float64)).sum()


def _pending_logs(logs: Mapping[str, tuple[list[Any], list[int]]]) -> dict[str, Any]:
    return {
        name: {
            "values": [torch.as_tensor(v).detach().cpu() for v in values],
            "sizes": list(sizes),
        }
        for name, (values, sizes) in logs.items()
    }


def _restore_logs(saved: Mapping[str, Any]) -> dict[str, tuple[list[Any], list[int]]]:
    return {name: (list(entry["values"]), list(entry["sizes"])) for name, entry in saved.items()}


def _state_key(callback: object) -> str:
    key = getattr(callback, "state_key", None)
    return key if isinstance(key, str) else type(callback).__qualname__


def _has_state(callback: object) -> bool:
    """Whether the callback defines its own ``state_dict`` (the base class's is empty)."""
    from runtime.callback import Callback

    method = getattr(type(callback), "state_dict", None)
    return callable(method) and method is not Callback.state_dict


def _check_state_keys(callbacks: Sequence[object]) -> None:
    """Two stateful callbacks with one state_key would overwrite each other's state."""
    seen: dict[str, object] = {}
    for callback in callbacks:
        if not _has_state(callback):
            continue
        key = _state_key(callback)
        if key in seen:
            raise BusError(
                f"callbacks {type(seen[key]).__name__} and {type(callback).__name__} share the "
                f"state_key {key!r}; give one of them a distinct state_key"
            )
        seen[key] = callback

