"""What a :class:`runtime.Runtime` holds, and how a run is set up and torn down.

:class:`RuntimeCore` owns the parts the training story stands on: the config, the model and
its bridge, the bus and callbacks, the loop state and metric store, the tracker and run
folder, optimizer / scheduler / scaler set-up, checkpoints, and the run context that reports
an error once. :mod:`runtime.loop` subclasses it with the story itself (fit, epoch, batch,
evaluation), so that file reads top to bottom with every event of a run visible.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from runtime import distributed as dist
from runtime.bus import Bus
from runtime.checkpoint import save_checkpoint
from runtime.config import Config, ConfigError, config_to_dict, load_config
from runtime.data import num_batches
from runtime.devices import autocast_for, select_device
from runtime.epoch_rng import EpochRng
from runtime.metrics import MetricStore
from runtime.module import bridge_for, plain_loss, resolve_loss
from runtime.optim import SchedulerConfig, configure_optimization, step_schedulers
from runtime.parallel import check_topology
from runtime.registry import adapt_callbacks
from runtime.resume import (
    ResumePoint,
    check_state_keys,
    checkpoint_of,
    load_for_resume,
    restore,
    restore_training_state,
)
from runtime.state import LoopState
from runtime.tracking import Tracker, create_tracker
from runtime.tracking.local import run_dir_of
from runtime.unsized import NEVER, EpochEnd, check_val_check_interval, val_schedule

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger("busloop")

__all__ = ["RuntimeCore", "as_count"]


class RuntimeCore:
    """The state and set-up of a run; :class:`runtime.loop.Runtime` adds the loop.

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
        self.state = LoopState(max_epochs=cfg.epochs, max_steps=cfg.max_steps)
        self.device = select_device(cfg.accelerator)
        check_topology(cfg, self.device)  # strategy / devices / num_nodes fit how we were launched
        self.loss_fn = resolve_loss(loss if loss is not None else self.config.loss)
        self.optimizer_spec: Any = optimizer if optimizer is not None else self.config.optimizer
        """What the optimizer is built from (object, factory or spec); None: configure_optimizers."""
        self.scheduler_spec: Any = scheduler if scheduler is not None else self.config.scheduler
        self.optimizers: list[torch.optim.Optimizer] = []
        """Every optimizer of the run, in ``configure_optimizers`` order (several only when the
        model optimizes manually)."""
        self.optimizer: torch.optim.Optimizer | None = None
        """The first of :attr:`optimizers`: the one automatic optimization steps."""
        self.automatic_optimization = True
        """False while a model with ``automatic_optimization = False`` trains: its training_step
        steps the optimizers, and schedulers are never stepped by the loop (as in Lightning)."""
        self.lr_scheduler_configs: list[SchedulerConfig] = []
        self.scaler: torch.amp.GradScaler | None = None
        self.accumulate_grad_batches: int = cfg.accumulate_grad_batches or 1
        """Re-read every batch: a callback may change it (GradientAccumulationScheduler)."""
        self.skip_backward = False
        """While True, training batches run the step but neither zero_grad nor backward (a
        forward-only pass, as Lightning's ``fit_loop._skip_backward``: SWA's batch-norm epoch)."""
        self.tracker: Tracker | None = tracker
        self.ckpt_path: str | None = None
        self.loaders: dict[str, Iterable[Any]] = {}
        """Loaders by split ("train", "val", "test", ...): fit sets train/val, the CLI all."""
        self.train_loader: Iterable[Any] | None = None
        self.val_loader: Iterable[Any] | None = None
        self.datamodule: Any = None
        """The datamodule of the running (or last) run, when it was given one (runtime.datamodule)."""
        self.training_strategy: Any = None
        """Optional object owning optimization: ``configure_optimizers(runtime)`` returns
        ``(optimizer, schedulers)``; ``update_parameters(runtime)`` runs after every backward."""
        self._bridge = bridge_for(model)
        if cfg.strategy == "fsdp" and self._bridge.lightning_style and dist.world_size() > 1:
            raise ConfigError(
                "trainer.strategy=fsdp: Lightning-style modules (training_step) are not supported "
                "with FSDP yet; use trainer.strategy=ddp"
            )
        self._train_model: nn.Module = model
        self.sharded = False
        """True while the model is sharded with FSDP2 (``trainer.strategy: fsdp``): checkpoints
        are then folders written by every rank (:mod:`runtime.fsdp`)."""
        self._ddp_signature: tuple[int, ...] | None = None
        """The trainable parameters the DDP wrapper was built with; None without DDP."""
        self._autocast = autocast_for(cfg.precision, self.device)
        """The mixed-precision context the steps run in; None for full precision."""
        self._training_step: Callable[[Any, int], Any] = (
            self._bridge.step("training") or self._plain_training_step
        )
        self._records_loss = self._training_step == self._plain_training_step
        """Whether the loop records the step's loss as ``train/loss`` (a plain module; a
        Lightning-style step logs its own)."""
        self._batch_override: Callable[[Any, int, bool], dict[str, Any]] | None = None
        """The bridge's training-batch function for models that override optimization hooks
        or optimize manually (chosen once per fit); None runs the loop's lean one."""
        self._transfer: Callable[[Any], Any] | None = None
        """Moves a batch to the device (with the model's batch-transfer hooks); None on CPU
        when the model has no such hooks (chosen once per run)."""
        self.metrics = MetricStore(self.state, self.device)
        """What ``log`` records; reduced per epoch into ``state.metrics``."""
        self._epoch_rng: EpochRng | None = None
        self._val_pending = False
        self._logged_step = -1
        self._resume: ResumePoint | None = None
        self._training_state: tuple[dict[str, Any], str | os.PathLike[str]] | None = None
        """The resumed checkpoint and its path until its optimizer states are loaded."""
        self._resuming: str | os.PathLike[str] | None = None
        """The checkpoint the running fit resumes from, known before the tracker opens: a
        checkpoint inside a run folder reopens that folder (see :meth:`_open_tracker`)."""
        self._predictions: list[Any] = []
        self.loader_metrics: list[dict[str, float]] = []
        """The last evaluation's epoch metrics per loader (one dict for one loader; see
        :mod:`runtime.eval_loaders`): each loader's own, plus those logged at its epoch end."""
        # Last: adapters (compat's, for Lightning callbacks) may read the model and tracker.
        self.callbacks = adapt_callbacks(self.callbacks, self)
        self.bus.subscribe_all(self.callbacks)
        check_state_keys(self.callbacks)

    def log(
        self, name: str, value: Any, batch_size: int | None = None, prog_bar: bool = False
    ) -> None:
        """Record a value; it is reduced per epoch (batch-size weighted mean).

        A name without ``/`` gets the current stage's prefix (``train/``, ``val/``,
        ``test/``). Tensors stay on their device until the epoch ends (no sync per step), so
        do not log a tensor you later modify in place (parameters are copied; buffers are not).
        """
        self.metrics.log(name, value, batch_size, prog_bar)

    def request_stop(self, reason: str) -> None:
        """Stop training after the current batch (validation still runs if it is due)."""
        self.state.request_stop(reason)
        log.info("Stop requested: %s", reason)

    def save_checkpoint(
        self, path: str | os.PathLike[str], *, monitor: str | None = None, score: float | None = None
    ) -> Path:
        """Write a full checkpoint atomically.

        Call it on every rank: each contributes its own random state and pending logs, rank
        zero writes, and every rank learns whether the write succeeded (a failure raises on
        all ranks, none is left waiting). ``checkpoint_written`` fires where the file was
        written (rank zero).
        """
        checkpoint = self.checkpoint_dict()
        target = Path(path)
        if self.sharded:  # FSDP: a folder of shards plus rank zero's metadata file
            from runtime.fsdp import save_sharded

            written = save_sharded(self, checkpoint, target)
        else:
            written = dist.rank_zero_write(lambda: save_checkpoint(checkpoint, target), str(target))
        if written:
            self.bus.event.checkpoint_written.emit(self, path=target, monitor=monitor, score=score)
        return target

    def checkpoint_dict(self) -> dict[str, Any]:
        """The checkpoint as a dict of weights_only-safe values (see DESIGN.md); the rows up to its step go to disk first."""
        if self.tracker is not None: self.tracker.flush(self.state.global_step)  # noqa: E701  # every file is built here
        checkpoint = checkpoint_of(self, epoch_rng=self._epoch_rng, val_pending=self._val_pending)
        self.bus.event.save_checkpoint.emit(self, checkpoint=checkpoint)
        return checkpoint

    def close(self, status: str = "success") -> None:
        """Finalise the tracker (idempotent); the CLI and ``with Runtime(...)`` call it."""
        if self.tracker is not None: self.tracker.finalize(status)  # noqa: E701

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.close("failed" if exc_type else "success")

    @property
    def lightning_module(self) -> nn.Module:
        return self.model

    # ------------------------------------------------------------------ helpers
    def _plain_training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """The training step of a plain ``nn.Module``: the configured loss (the loop records
        it as train/loss, see ``_records_loss``)."""
        return plain_loss(self.loss_fn, self._train_model, batch)

    def _log_step_metrics(self) -> None:
        """Send the latest per-step train values to the tracker (once per logged step)."""
        st = self.state
        self._logged_step = st.global_step
        if self.tracker is not None:
            for values, step in self.metrics.step_logs(st.global_step):
                self.tracker.log_metrics(values, step=step, epoch=st.epoch)

    def _log_eval_step(self, prefix: str) -> None:
        """After an eval batch: a LightningModule's step values to the tracker, as Lightning
        logs them (every batch, at the run's eval batch count, never while sanity checking)."""
        lightning = self.metrics.lightning
        if lightning is None or self.state.sanity_checking:
            return
        step, values = lightning.next_eval_step(prefix), lightning.step_log(prefix)
        if values and self.tracker is not None:
            self.tracker.log_metrics(values, step=step)

    def _log_epoch_summary(self) -> None:
        st = self.state
        parts = " | ".join(f"{k}: {v:.5g}" for k, v in sorted(st.metrics.items()))
        log.debug("[Epoch %d/%d] step %d | %s", st.epoch + 1, st.max_epochs, st.global_step, parts)

    @contextlib.contextmanager
    def _running(self, stage: str, datamodule: Any = None) -> Iterator[None]:
        """One public run: tracker, module hooks, stage bookkeeping, the exception event.

        The outermost run's ``datamodule`` (None for loaders) becomes ``self.datamodule``;
        a run inside it (a test at train end) leaves it as it is.
        """
        st = self.state
        outer = st.stage
        if outer is None:
            self.datamodule = datamodule
            self._open_tracker()
            self._bridge.attach(self)
            self.model.to(self.device)
            self._transfer = self._bridge.batch_transfer(self.device)
        st.stage = stage
        self.metrics.clear()
        try:
            yield
            if outer is None and self.tracker is not None: self.tracker.flush()  # noqa: E701  # rows on disk at the end
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
        self._log_failure(exc)
        try:
            self.bus.event.exception.emit(self, exception=exc)
        except Exception as handler_error:  # a failing handler must not hide the real error
            log.error("While handling the error: %s", handler_error)
        if self.tracker is not None:
            self.tracker.finalize("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")

    def _log_failure(self, exc: BaseException) -> None:
        """Log the error that ends the run (a front may announce it its own way)."""
        user_mistake = isinstance(exc, ConfigError)  # its message names the key: no traceback
        log.error("Run failed: %s: %s", type(exc).__name__, exc, exc_info=None if user_mistake else exc)

    def _open_tracker(self) -> None:
        """The tracker the config describes. A fit that resumes from a checkpoint inside a
        run folder continues in that folder (log appended, metrics continued, status
        updated, checkpoints in the same top-k); config.yaml records ``resume_from``."""
        if self.tracker is None:
            tcfg, resume = self.config.tracker, self._resuming
            run_dir = run_dir_of(resume) if resume is not None and Path(resume).is_file() else None
            self.tracker = create_tracker(tcfg.save_directory, tcfg.run_name, tcfg.backends, run_dir=run_dir)
            atexit.register(_close_at_exit, weakref.ref(self))
            saved = config_to_dict(self.config)
            if resume is not None:
                saved.setdefault("trainer", {})["resume_from"] = os.fspath(resume)
            self.tracker.save_config(saved)

    @property
    def run_dir(self) -> Path | None:
        """The tracker's run folder (``runs/<N>-<name>``), or None."""
        return getattr(self.tracker, "run_dir", None)

    def _use_fit_loaders(self, train_loader: Iterable[Any] | None, val_loader: Iterable[Any] | None) -> None:
        """Make ``fit``'s loaders the run's: distributed samplers under torchrun, the
        ``train_loader`` / ``val_loader`` / ``loaders`` attributes and the batch counts
        (callbacks read them from ``fit_start`` on)."""
        if train_loader is None:
            raise ConfigError("fit: give a training loader or a datamodule")
        if dist.launched_by_torchrun():
            from runtime.data import distributed_loader

            if dist.init_process_group(self.device):
                log.info("torch.distributed initialised: rank %d of %d", dist.rank(), dist.world_size())
            from runtime.eval_loaders import distributed_loaders

            train_loader = distributed_loader(train_loader)
            val_loader = distributed_loaders(val_loader) if val_loader is not None else None
        self.train_loader, self.val_loader = train_loader, val_loader
        self.loaders["train"] = train_loader
        if val_loader is not None:
            self.loaders["val"] = val_loader
        st = self.state
        st.num_training_batches = as_count(num_batches(train_loader, self.config.trainer.limit_train_batches))
        check_val_check_interval(self.config.trainer.val_check_interval, st.num_training_batches)
        st.num_val_batches = self._count_val_batches(val_loader)
        if st.num_val_batches and not math.isinf(st.num_training_batches):
            self._val_check_batches(int(st.num_training_batches))  # refuses an impossible interval now

    def _configure_optimization(self) -> None:
        """Model to device, DDP wrapping, optimizer, schedulers, grad scaler."""
        self.model.to(self.device)
        if self._train_model is self.model:
            self._wrap_parallel()
        if self.optimizer is None:
            self.optimizers, self.lr_scheduler_configs = configure_optimization(self)
            self.optimizer = self.optimizers[0]
        elif self.optimizer not in self.optimizers:  # set from outside: it is the run's optimizer
            self.optimizers = [self.optimizer]
        if self.config.trainer.precision == "16-mixed" and self.scaler is None:
            self.scaler = torch.amp.GradScaler(self.device.type)
        self.automatic_optimization = getattr(self.model, "automatic_optimization", True) is not False
        self._batch_override = self._bridge.training_batch(self)

    def _wrap_parallel(self) -> None:
        """Wrap the model for data-parallel training (:mod:`runtime.parallel`)."""
        from runtime.parallel import wrap_for_training

        wrap_for_training(self)

    def _sync_trainable(self) -> None:
        """Rebuild the DDP wrapper at an epoch start when a callback (un)froze parameters: DDP
        all-reduces only the parameters that required grad when it was created."""
        if self._ddp_signature is not None and dist.trainable_signature(self.model) != self._ddp_signature:
            log.info("Trainable parameters changed: rebuilding the DistributedDataParallel wrapper")
            self._wrap_parallel()

    def _batch_function(self) -> Callable[[Any, int, bool], dict[str, Any] | None]:
        """The function that trains one batch, chosen at every epoch start: the bridge's or the
        loop's general one (a plain module's batches are written out in the loop where they can
        be, :mod:`runtime.batch`); under DDP with accumulation wrapped so that accumulating
        batches skip the all-reduce."""
        from runtime.parallel import no_sync_batches

        train_batch = self._batch_override or self._training_batch  # type: ignore[attr-defined]
        return no_sync_batches(self, train_batch)

    def _step_schedulers(self, interval: str, index: int, *, plateau: bool = False) -> None:
        if not self.automatic_optimization:  # manual optimization steps its own schedulers
            return
        step_schedulers(self.lr_scheduler_configs, interval, index, self.state.metrics, plateau=plateau)

    def _val_check_batches(self, n: int | EpochEnd) -> tuple[int | float, object]:
        """``(every, end)``: validation is due after a batch when ``done % every == 0 or
        done == end`` (unknown length: :func:`runtime.unsized.val_schedule`). As Lightning 2.6:
        a float interval validates every ``int(n * interval)`` batches, an int every
        ``interval``, only at those multiples (``1.0``: after the last batch)."""
        interval = self.config.trainer.val_check_interval
        if isinstance(n, EpochEnd):
            return val_schedule(interval, n)
        if isinstance(interval, float):
            return (n if interval >= 1.0 else max(1, int(n * interval))), NEVER
        if interval > n > 0 and self.config.trainer.check_val_every_n_epoch is not None:
            raise ConfigError(
                f"trainer.val_check_interval: {interval} batches is more than an epoch's "
                f"{n} training batches, so validation would never run (set limit_val_batches to "
                "0 to turn it off, or a smaller interval)"
            )
        return interval, NEVER

    def _is_val_epoch(self) -> bool:
        every = self.config.trainer.check_val_every_n_epoch
        return every is None or (self.state.epoch + 1) % every == 0

    def _count_val_batches(self, loader: Iterable[Any] | None) -> int | float:
        """The validation batches of ``loader`` (or of each of several), kept per loader in
        ``state.loader_batches["val"]``; returns their total."""
        from runtime.eval_loaders import count_batches

        counts = self.state.loader_batches["val"] = [] if loader is None else count_batches(
            loader, self.config.trainer.limit_val_batches, "val"
        )
        return sum(counts, 0)

    def _max_steps_reached(self) -> bool:
        return self.state.max_steps is not None and self.state.global_step >= self.state.max_steps

    def _to_device(self, batch: Any) -> Any:
        return batch if self._transfer is None else self._transfer(batch)

    def _restore(self, path: str | os.PathLike[str]) -> None:
        """Load a checkpoint: datamodule state, weights, optimizers, callbacks, loop position."""
        self.ckpt_path = str(path)
        checkpoint = load_for_resume(self, path)
        self.bus.event.load_checkpoint.emit(self, checkpoint=checkpoint)
        self._resume = restore(self, checkpoint, path)
        self._training_state = (checkpoint, path)  # optimizers: after fit_start (Lightning's order)
        if self.tracker is not None:  # a reopened run folder drops the records after this step
            self.tracker.resume_at(self.state.global_step)

    def _restore_training_state(self) -> None:
        """Load the resumed checkpoint's optimizer / scheduler / scaler states, once."""
        if self._training_state is not None:
            restore_training_state(self, *self._training_state)
            self._training_state = None


def _close_at_exit(runtime_ref: weakref.ref[RuntimeCore]) -> None:
    """Finalise a tracker left open at interpreter exit (a script that never called close)."""
    runtime = runtime_ref()
    if runtime is not None:
        with contextlib.suppress(Exception):
            runtime.close()


def as_count(value: float) -> int | float:
    """A loader's batch count: an int, or ``inf`` for a loader without a length (Lightning's)."""
    return value if math.isinf(value) else int(value)
