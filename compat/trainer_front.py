"""``compat.Trainer``: Lightning's ``Trainer`` front over busloop's Runtime.

A Lightning project moves to busloop by changing one import::

    from compat import Trainer          # was: from lightning.pytorch import Trainer
    trainer = Trainer(max_epochs=5, callbacks=[EarlyStopping("val_loss")])
    trainer.fit(model, datamodule=dm)
    trainer.test(ckpt_path="best")

:class:`Trainer` *is* the trainer facade (:class:`compat.trainer.TrainerFacade`): each ``fit`` /
``validate`` / ``test`` / ``predict`` call builds a :class:`runtime.Runtime` from the parsed
arguments (:mod:`compat.trainer_args`), binds the facade's views to it, and runs it. Callbacks and
the LightningModule receive this very object as ``trainer``; between calls it keeps what
Lightning's trainer keeps (loop position, callbacks, logger folder, last model). Lightning's
default callbacks are added where Lightning adds them (:mod:`compat.trainer_defaults`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compat import trainer_loggers as loggers_
from compat.adapter import unwrap
from compat.trainer import TrainerFacade
from compat.trainer_args import parse_trainer_args
from compat.trainer_data import ModuleData, module_data, without_validation
from compat.trainer_defaults import callback_role, default_callbacks, run_callbacks
from compat.trainer_env import defaults_from_env
from compat.trainer_eval import eval_loaders
from compat.trainer_extras import FrontExtras
from compat.trainer_interrupt import Shutdown
from compat.trainer_loggers import (
    LoggerFront,
    open_tracker,
)
from compat.trainer_results import print_results
from compat.trainer_run import FrontFitLoop, FrontRuntime, FrontState, WriteThrough, one_loader
from runtime.bus import CallbackError
from runtime.errors import ConfigError
from runtime.loop import Runtime
from runtime.tracking import NullTracker, Tracker

log = logging.getLogger("busloop")

__all__ = ["Trainer"]


class Trainer(LoggerFront, FrontExtras, TrainerFacade):
    """Lightning 2.6's ``Trainer`` on busloop (arguments: :func:`compat.trainer_args.parse_trainer_args`)."""

    @defaults_from_env
    def __init__(  # noqa: PLR0913  (Lightning's signature)
        self,
        *,
        accelerator: Any = "auto",
        strategy: Any = "auto",
        devices: Any = "auto",
        num_nodes: int = 1,
        precision: Any = None,
        logger: Any = None,
        callbacks: Any = None,
        fast_dev_run: int | bool = False,
        max_epochs: int | None = None,
        min_epochs: int | None = None,
        max_steps: int = -1,
        min_steps: int | None = None,
        max_time: str | timedelta | dict[str, int] | None = None,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        limit_test_batches: int | float | None = None,
        limit_predict_batches: int | float | None = None,
        overfit_batches: int | float = 0.0,
        val_check_interval: int | float | None = None,
        check_val_every_n_epoch: int | None = 1,
        num_sanity_val_steps: int | None = None,
        log_every_n_steps: int | None = None,
        enable_checkpointing: bool | None = None,
        enable_progress_bar: bool | None = None,
        enable_model_summary: bool | None = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: int | float | None = None,
        gradient_clip_algorithm: str | None = None,
        deterministic: bool | str | None = None,
        benchmark: bool | None = None,
        inference_mode: bool = True,
        use_distributed_sampler: bool = True,
        profiler: Any = None,
        detect_anomaly: bool = False,
        barebones: bool = False,
        plugins: Any = None,
        sync_batchnorm: bool = False,
        reload_dataloaders_every_n_epochs: int = 0,
        default_root_dir: str | os.PathLike[str] | None = None,
        enable_autolog_hparams: bool = True,
        model_registry: str | None = None,
    ) -> None:
        kw = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        args = parse_trainer_args(kw)
        self._args = args
        self._min_epochs, self._min_steps = args.min_epochs, args.min_steps
        self._pending_stop: str | None = None
        self._callbacks = default_callbacks(args)
        self._logger_arg = args.logger
        self._version_dir: Path | None = None
        self._tracker: Tracker | None = None
        self._model: nn.Module | None = None
        self._last_fn: str | None = None
        self._status = "initializing"
        self._shutdown = Shutdown()
        self._bind(self._runtime_for(nn.Module()))
        self.fast_dev_run = args.fast_dev_run  # type: ignore[assignment]  # int or bool, as Lightning

    def __repr__(self) -> str:
        return f"Trainer(busloop, fn={self.state.fn!r}, status={self._status!r})"

    # ------------------------------------------------------------------ runtime per call
    def _runtime_for(self, model: nn.Module, callbacks: list[Any] | None = None) -> FrontRuntime:
        """A Runtime for ``model`` with this front's config, callbacks and tracker, continuing
        the loop position of the previous call."""
        previous = getattr(self, "_rt", None)
        rt = FrontRuntime(model, callbacks or [], self._args.config, tracker=self._tracker or NullTracker())
        rt.front = self
        rt.__dict__["_compat_trainer"] = self  # compat.adapter.facade_for: this object is the trainer
        rt.state.max_epochs, rt.state.max_steps = self._args.max_epochs, self._args.max_steps
        if self._min_epochs or self._min_steps:
            rt.bus.connect("train_batch_end", rt.release_stop)
        if previous is not None:
            rt.state.epoch, rt.state.global_step = previous.state.epoch, previous.state.global_step
        return rt

    def _bind(self, rt: Runtime) -> None:
        """Point the facade's views at ``rt`` (what Lightning code reads follows the live run)."""
        kept = {k: self.__dict__[k] for k in ("fast_dev_run",) if k in self.__dict__}
        TrainerFacade.__init__(self, rt)
        self.__dict__.update(kept)
        self.state = FrontState(self)
        self.fit_loop = FrontFitLoop(self)

    @contextlib.contextmanager
    def _call(self, fn: str, model: nn.Module | None) -> Iterator[Runtime]:
        """One public call: resolve the model, open the tracker, bind a Runtime, close after."""
        if model is None:
            model = self._model
            if model is None:
                raise ConfigError(f"Trainer.{fn}: give a model (no earlier call passed one)")
        self._model = model
        self._tracker, owned = open_tracker(self._logger_arg, self._run_dir() if self._logger_arg is True else None)
        self._last_fn, self._status, self._pending_stop = fn, "running", None
        self._shutdown, status = Shutdown(), "failed"
        anomaly = torch.autograd.set_detect_anomaly(True) if self._args.detect_anomaly else contextlib.nullcontext()
        try:  # a refused callback (at Runtime construction) still closes the tracker
            rt = self._runtime_for(model, run_callbacks(self._callbacks, model))
            self._bind(rt)
            with anomaly:
                yield rt
            status = "success"
        except KeyboardInterrupt:  # Lightning: announce, on_exception, teardown, then exit(1)
            status = "interrupted"
        except CallbackError as exc:  # Lightning's trainer raises a hook's own error
            exc.original.add_note(f"busloop: raised by {exc.callback} in event '{exc.event}'")
            raise exc.original from None
        finally:
            self._status = "finished" if status == "success" else "interrupted"
            if owned:
                self._tracker.finalize(status)
        if status == "interrupted":
            self._shutdown.finish()

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_path(self, ckpt_path: Any, fn: str, model_given: bool = True) -> str | None:
        """``"best"`` / ``"last"`` / a path -> a file (None: start fresh / keep the weights).
        An evaluation without a model after a fit uses the best checkpoint, as Lightning does."""
        if ckpt_path is None and fn != "fit" and not model_given and self._model is not None:
            ckpt_path = "best" if self.checkpoint_callback is not None else None
        if ckpt_path is None:
            return None
        if ckpt_path == "best":
            callback = self.checkpoint_callback
            best = getattr(callback, "best_model_path", "") if callback is not None else ""
            if not best:
                what = "no ModelCheckpoint is configured" if callback is None else "no best checkpoint was saved"
                raise ConfigError(f'Trainer.{fn}(ckpt_path="best"): {what}')
            return str(best)
        if ckpt_path == "last":
            found = [p for c in self.checkpoint_callbacks for p in self._last_checkpoints(c)]
            if not found:
                log.warning('Trainer.%s(ckpt_path="last"): there is no last checkpoint; none is loaded', fn)
                return None
            return max(found, key=lambda p: Path(p).stat().st_mtime)
        return os.fspath(ckpt_path)

    def _last_checkpoints(self, callback: Any) -> list[str]:
        """The callback's ``last`` checkpoints: its ``last_model_path`` and ``last*.ckpt`` files in
        its folder (Lightning's own search for a Lightning ModelCheckpoint)."""
        found = {getattr(callback, "last_model_path", "") or ""}
        search = getattr(callback, "_find_last_checkpoints", None)
        if callable(search):
            found |= set(search(self))
        elif getattr(callback, "dirpath", None):
            found |= {str(p) for p in Path(callback.dirpath).glob("last*.ckpt")}
        return sorted(p for p in found if p and Path(p).is_file())

    def _load_weights(self, rt: Runtime, path: str | None) -> None:
        """Load a checkpoint's weights into the model before an evaluation (Lightning's
        ``ckpt_path`` for validate / test / predict), calling ``on_load_checkpoint``."""
        if path is None:
            return
        from runtime.checkpoint import CheckpointError, load_checkpoint

        checkpoint = load_checkpoint(path)
        if "state_dict" not in checkpoint:
            raise CheckpointError(f"{path}: holds no state_dict")
        rt.model.load_state_dict(checkpoint["state_dict"])
        hook = getattr(rt.model, "on_load_checkpoint", None)
        if callable(hook):
            hook(checkpoint)
        rt.ckpt_path = path

    # ------------------------------------------------------------------ entry points
    def fit(
        self,
        model: nn.Module,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: Any = None,
        ckpt_path: str | os.PathLike[str] | None = None,
    ) -> None:
        """Train ``model`` (Lightning's ``Trainer.fit``); returns None, as Lightning does."""
        if datamodule is not None and (train_dataloaders is not None or val_dataloaders is not None):
            raise ConfigError("Trainer.fit: give dataloaders or a datamodule, not both")
        path = self._checkpoint_path(ckpt_path, "fit")
        train = one_loader(train_dataloaders, "train_dataloaders")
        val = None if without_validation(model) else eval_loaders(val_dataloaders, "val_dataloaders")
        if train is None and datamodule is None:
            datamodule = module_data(model, "fit")
        with self._call("fit", model) as rt:
            if self._args.enable_autolog_hparams:
                loggers_.log_hparams(rt.tracker, rt.model, datamodule)
            rt.fit(train, val, ckpt_path=path, datamodule=datamodule)

    def _evaluate(
        self, fn: str, model: nn.Module | None, loaders: Any, ckpt_path: Any, datamodule: Any
    ) -> Callable[[Runtime], Any]:
        path = self._checkpoint_path(ckpt_path, fn, model_given=model is not None)

        def run(rt: Runtime) -> Any:
            self._load_weights(rt, path)
            loader, dm = eval_loaders(loaders, "dataloaders"), datamodule
            if loader is None and dm is None:
                dm = module_data(rt.model, fn)
            return getattr(rt, fn)(loader, datamodule=dm)

        return run

    def _epoch_metrics(
        self, fn: str, model: nn.Module | None, loaders: Any, ckpt_path: Any, datamodule: Any, verbose: bool = False
    ) -> list[dict[str, float]]:
        """``validate`` / ``test``: one pass, its epoch metrics as Lightning returns them (one
        dict per loader: :mod:`runtime.eval_loaders`)."""
        run = self._evaluate(fn, model, loaders, ckpt_path, datamodule)
        with self._call(fn, model) as rt:
            run(rt)
            unlogged = rt.metrics.lightning.unlogged if rt.metrics.lightning is not None else set()
            results = [{k: v for k, v in metrics.items() if k not in unlogged} for metrics in rt.loader_metrics]
        if verbose and self.is_global_zero:
            print_results(results, fn)
        return results

    def validate(
        self,
        model: nn.Module | None = None,
        dataloaders: Any = None,
        ckpt_path: str | os.PathLike[str] | None = None,
        verbose: bool = True,
        datamodule: Any = None,
    ) -> list[dict[str, float]]:
        """One validation pass; Lightning's result: one dict of epoch metrics per loader."""
        return self._epoch_metrics("validate", model, dataloaders, ckpt_path, datamodule, verbose)

    def test(
        self,
        model: nn.Module | None = None,
        dataloaders: Any = None,
        ckpt_path: str | os.PathLike[str] | None = None,
        verbose: bool = True,
        datamodule: Any = None,
    ) -> list[dict[str, float]]:
        """One test pass; Lightning's result: one dict of epoch metrics per loader."""
        return self._epoch_metrics("test", model, dataloaders, ckpt_path, datamodule, verbose)

    def predict(
        self,
        model: nn.Module | None = None,
        dataloaders: Any = None,
        datamodule: Any = None,
        return_predictions: bool | None = None,
        ckpt_path: str | os.PathLike[str] | None = None,
    ) -> list[Any] | None:
        """``predict_step`` over the loader(s); the outputs, one per batch (one list per loader
        for several; None when ``return_predictions=False``)."""
        run = self._evaluate("predict", model, dataloaders, ckpt_path, datamodule)
        with self._call("predict", model) as rt:
            predictions = run(rt)
        return None if return_predictions is False else list(predictions)

    # ------------------------------------------------------------------ what lives on the front
    @property
    def callbacks(self) -> list[Any]:
        """The callbacks: the user's, then Lightning's defaults (checkpoints last); during a
        run, the run's (with the module's ``configure_callbacks``)."""
        if self._rt.state.stage is not None:
            return [unwrap(c) for c in self._rt.callbacks]
        return self._callbacks

    @callbacks.setter
    def callbacks(self, callbacks: list[Any]) -> None:
        self._callbacks = list(callbacks)

    def _with_role(self, role: str) -> list[Any]:
        return [c for c in self.callbacks if callback_role(c) == role]

    @property
    def default_root_dir(self) -> str:
        return self._args.default_root_dir

    @property
    def callback_metrics(self) -> dict[str, torch.Tensor]:
        """Lightning's dict, writable: what user code sets is what callbacks then read."""
        return WriteThrough(self._rt.state.metrics, super().callback_metrics)

    @property
    def limit_train_batches(self) -> int | float:
        return self._limit("train")

    @property
    def limit_val_batches(self) -> int | float:
        return self._limit("val")

    @property
    def limit_test_batches(self) -> int | float:
        return self._limit("test")

    @property
    def limit_predict_batches(self) -> int | float:
        return self._limit("predict")

    def _limit(self, split: str) -> int | float:
        value = getattr(self._args.config.trainer, f"limit_{split}_batches")
        return 1.0 if value is None else value

    @property
    def min_epochs(self) -> int | None:
        return self._min_epochs

    @property
    def min_steps(self) -> int | None:
        return self._min_steps

    @property
    def overfit_batches(self) -> int | float:
        return self._args.overfit_batches

    @property
    def enable_validation(self) -> bool:
        """Whether this fit validates (a validation loader with batches to run)."""
        return self._rt.val_loader is not None and self._rt.state.num_val_batches > 0

    @property
    def max_epochs(self) -> int:
        """As Lightning: -1 when no epoch count bounds the run."""
        return self.fit_loop.max_epochs

    @property
    def max_steps(self) -> int:
        max_steps = self._rt.state.max_steps
        return -1 if max_steps is None else max_steps

    @property
    def should_stop(self) -> bool:
        return self._rt.state.should_stop or self._pending_stop is not None

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        if value:
            self._rt.request_stop("trainer.should_stop set by Lightning code")
        else:
            self._rt.state.should_stop, self._pending_stop = False, None

    @property
    def interrupted(self) -> bool:
        return self._status == "interrupted" or self._rt.state.interrupted

    @property
    def datamodule(self) -> Any:
        """The call's datamodule; None when the data came from loaders or the module's hooks."""
        dm = self._rt.datamodule
        return None if isinstance(dm, ModuleData) else dm

    @property
    def model(self) -> Any:
        return self._rt._train_model if self._rt.state.stage is not None else self._model

    @property
    def lightning_module(self) -> Any:
        return self._rt.model if self._rt.state.stage is not None else self._model
