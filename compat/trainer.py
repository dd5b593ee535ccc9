"""The trainer facade: what Lightning code reads on ``trainer``, as views of a busloop Runtime.

A LightningModule (``self.trainer``, ``self.current_epoch``, ``self.optimizers()`` ...) and a
stock Lightning callback read a long list of attributes on the trainer
(``../shared/reference/lightning.md`` lists them). :class:`TrainerFacade` answers each from
the Runtime it wraps: every property reads busloop's state when it is asked, nothing is
copied, so there is nothing to keep in sync. The few attributes Lightning code writes
(``should_stop``, ``accumulate_grad_batches``, ``fit_loop.max_epochs``,
``lr_scheduler_configs``) write through to the Runtime.

Lightning is never imported here; ``state.fn`` and ``state.stage`` are plain strings, equal to
Lightning's string enums (``TrainerFn.FITTING == "fit"``).
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

import torch

from compat.trainer_parts import Accelerator, LoggerConnector, TrackerLogger, tracker_logs
from compat.trainer_views import FitLoop, Strategy, TrainerState
from runtime import distributed as dist

if TYPE_CHECKING:
    from runtime.core import RuntimeCore as Runtime

__all__ = ["TrainerFacade"]

def _tensors(values: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Lightning keeps its metric dicts as tensors; busloop keeps floats."""
    return {k: v if isinstance(v, torch.Tensor) else torch.tensor(v) for k, v in values.items()}


class _ClipAlgorithm(str):
    """A clipping algorithm name with ``.value``, like Lightning's ``GradClipAlgorithmType``."""

    @property
    def value(self) -> str:
        return str(self)


class TrainerFacade:
    """``module.trainer`` during a busloop run: Lightning's trainer attributes over a Runtime."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self.state = TrainerState(runtime)
        self.strategy: Strategy = Strategy(self)
        self.fit_loop = FitLoop(self)
        self.fast_dev_run = False
        self.received_sigterm = False
        self._progress_bar_callback: Any = None
        self.profiler: Any = None
        self.accelerator = Accelerator()
        self._logger_connector = LoggerConnector(self)
        self._in_train_batch_end = False
        self._eval_batches_ready = 0  # the running evaluation's batches so far (the adapter sets it)
        self._logger = TrackerLogger(runtime)

    def __repr__(self) -> str:
        return f"TrainerFacade(busloop Runtime, stage={self._rt.state.stage!r})"

    # ------------------------------------------------------------------ the model
    @property
    def lightning_module(self) -> Any:
        return self._rt.model

    @property
    def model(self) -> Any:
        return self._rt._train_model

    @property
    def datamodule(self) -> Any:
        """The run's datamodule, or None when it was given loaders."""
        return self._rt.datamodule

    # ------------------------------------------------------------------ loop position
    @property
    def current_epoch(self) -> int:
        return self._rt.state.epoch

    @property
    def global_step(self) -> int:
        return self._rt.state.global_step

    @property
    def max_epochs(self) -> int:
        return self._rt.state.max_epochs

    @property
    def max_steps(self) -> int:
        return -1 if self._rt.state.max_steps is None else self._rt.state.max_steps

    @property
    def min_epochs(self) -> int | None:
        return None

    @property
    def sanity_checking(self) -> bool:
        return self._rt.state.sanity_checking

    @property
    def training(self) -> bool:
        return self.state.stage == "train"

    @property
    def validating(self) -> bool:
        return self.state.stage == "validate"

    @property
    def testing(self) -> bool:
        return self.state.stage == "test"

    @property
    def evaluating(self) -> bool:
        """Whether a validation, test or sanity check is running (Lightning's ``evaluating``)."""
        return self.state.stage in ("validate", "test", "sanity_check")

    @property
    def predicting(self) -> bool:
        return self.state.stage == "predict"

    @property
    def should_stop(self) -> bool:
        return self._rt.state.should_stop

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        if value:
            self._rt.request_stop("trainer.should_stop set by Lightning code")
        else:
            self._rt.state.should_stop = False

    @property
    def interrupted(self) -> bool:
        return self._rt.state.interrupted

    # ------------------------------------------------------------------ batches
    @property
    def num_training_batches(self) -> int | float:
        """As in Lightning: ``inf`` until the train loader is set up, after the sanity check."""
        st = self._rt.state
        return float("inf") if st.sanity_checking else self.fit_loop.max_batches

    def _per_loader(self, split: str, total: int | float) -> list[int | float]:
        """Lightning's per-loader batch counts (a stage may run several loaders)."""
        return list(self._rt.state.loader_batches.get(split) or [total])

    @property
    def num_val_batches(self) -> list[int | float]:
        return self._per_loader("val", self._rt.state.num_val_batches)

    @property
    def num_sanity_val_batches(self) -> list[int | float]:
        return self._per_loader("sanity_val", self._rt.state.num_sanity_val_batches)

    @property
    def num_test_batches(self) -> list[int | float]:
        return self._per_loader("test", self._rt.state.num_test_batches)

    @property
    def num_predict_batches(self) -> list[int | float]:
        return self._per_loader("predict", self._rt.state.num_predict_batches)

    @property
    def accumulate_grad_batches(self) -> int:
        return self._rt.accumulate_grad_batches

    @accumulate_grad_batches.setter
    def accumulate_grad_batches(self, value: int) -> None:
        self._rt.accumulate_grad_batches = int(value)

    @property
    def estimated_stepping_batches(self) -> int | float:
        st = self._rt.state
        per_epoch = -(-st.num_training_batches // max(1, self._rt.accumulate_grad_batches))
        total = per_epoch * st.max_epochs
        return total if st.max_steps is None else min(total, st.max_steps)

    @property
    def val_check_interval(self) -> int | float:
        return self._rt.config.trainer.val_check_interval

    @property
    def check_val_every_n_epoch(self) -> int | None:
        return self._rt.config.trainer.check_val_every_n_epoch

    @property
    def log_every_n_steps(self) -> int:
        return self._rt.config.trainer.log_every_n_steps

    @property
    def precision(self) -> str:
        """Lightning's name of the precision: "32-true", "16-mixed" or "bf16-mixed"."""
        precision = str(self._rt.config.trainer.precision)
        return "32-true" if precision == "32" else precision

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        """The gradient scaler of "16-mixed" training, else None."""
        return self._rt.scaler

    @property
    def num_sanity_val_steps(self) -> int | float:
        """The validation batches the sanity check runs at most (``inf`` for -1: all)."""
        steps = self._rt.config.trainer.num_sanity_val_steps
        return float("inf") if steps < 0 else steps

    @property
    def val_check_batch(self) -> int | float | None:
        """Training batches between two validations inside an epoch (``inf`` for an epoch of
        unknown length validated at its end, as Lightning's); None before a fit."""
        if self._rt.train_loader is None:
            return None
        n, interval = self._rt.state.num_training_batches, self._rt.config.trainer.val_check_interval
        if math.isinf(n):
            return interval if isinstance(interval, int) else n
        every, _ = self._rt._val_check_batches(int(n))
        return every

    @property
    def train_dataloader(self) -> Any:
        """The loader the running (or last) fit trains on; None before a fit."""
        return self._rt.train_loader

    @property
    def val_dataloaders(self) -> Any:
        """The loader the running (or last) fit validates on; None without one."""
        return self._rt.val_loader

    # ------------------------------------------------------------------ metrics
    @property
    def callback_metrics(self) -> dict[str, torch.Tensor]:
        return _tensors(self._rt.state.metrics)

    @property
    def logged_metrics(self) -> dict[str, torch.Tensor]:
        return _tensors(self._rt.state.logged_metrics)

    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in self._rt.state.progress_bar_metrics.items()}

    # ------------------------------------------------------------------ optimization
    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return list(self._rt.optimizers)

    @property
    def lr_scheduler_configs(self) -> list[Any]:
        return self._rt.lr_scheduler_configs

    @lr_scheduler_configs.setter
    def lr_scheduler_configs(self, configs: list[Any]) -> None:
        self._rt.lr_scheduler_configs = configs

    @property
    def gradient_clip_val(self) -> float | None:
        return self._rt.config.trainer.gradient_clip_val

    @property
    def gradient_clip_algorithm(self) -> str | None:
        """"value" when clipping by value is configured, else None: what Lightning's trainer
        holds without ``gradient_clip_algorithm`` (clipping then means "norm"). busloop's
        config cannot tell a "norm" the user wrote from its default, so it answers None."""
        cfg = self._rt.config.trainer
        if cfg.gradient_clip_val is None or cfg.gradient_clip_algorithm != "value":
            return None
        return _ClipAlgorithm(cfg.gradient_clip_algorithm)

    @property
    def precision_plugin(self) -> Any:
        """The strategy's precision plugin (compat.optimization's, for a LightningModule)."""
        return getattr(self.strategy, "precision_plugin", None)

    # ------------------------------------------------------------------ ranks and devices
    @property
    def is_global_zero(self) -> bool:
        return dist.is_rank_zero()

    @property
    def global_rank(self) -> int:
        return dist.rank()

    @property
    def local_rank(self) -> int:
        return dist.local_rank()

    @property
    def node_rank(self) -> int:
        return int(os.environ.get("GROUP_RANK", os.environ.get("NODE_RANK", 0)))

    @property
    def world_size(self) -> int:
        return dist.world_size()

    @property
    def num_nodes(self) -> int:
        return int(os.environ.get("NNODES", 1))

    @property
    def num_devices(self) -> int:
        return max(1, dist.world_size() // self.num_nodes)

    @property
    def device_ids(self) -> list[int]:
        device = self._rt.device
        return [device.index or 0] if device.type == "cuda" else [0]

    # ------------------------------------------------------------------ files and loggers
    @property
    def default_root_dir(self) -> str:
        run_dir = self._rt.run_dir
        return str(run_dir) if run_dir is not None else os.getcwd()

    @property
    def log_dir(self) -> str | None:
        run_dir = self._rt.run_dir
        return None if run_dir is None else str(run_dir)

    @property
    def logger(self) -> Any:
        loggers = self.loggers
        return loggers[0] if loggers else None

    @property
    def loggers(self) -> list[Any]:
        """The tracker as one Lightning logger; none for a tracker that records nothing."""
        return [self._logger] if self._rt.tracker is not None and tracker_logs(self._rt.tracker) else []

    @property
    def ckpt_path(self) -> str | None:
        return self._rt.ckpt_path

    @property
    def callbacks(self) -> list[Any]:
        """The run's callbacks; adapted Lightning callbacks as the user's own objects."""
        return [getattr(c, "lightning_callback", c) for c in self._rt.callbacks]

    def _with_role(self, role: str) -> list[Any]:
        return [
            getattr(c, "lightning_callback", c)
            for c in self._rt.callbacks if getattr(c, "monitor_role", None) == role
        ]  # fmt: skip

    @property
    def checkpoint_callbacks(self) -> list[Any]:
        """Checkpointing callbacks: compat's and Lightning's (``Checkpoint`` subclasses)."""
        return self._with_role("checkpoint")

    @property
    def early_stopping_callbacks(self) -> list[Any]:
        return self._with_role("early_stopping")

    @property
    def early_stopping_callback(self) -> Any:
        found = self.early_stopping_callbacks
        return found[0] if found else None

    @property
    def progress_bar_callback(self) -> Any:
        """The first Lightning ``ProgressBar`` among the callbacks (or the one set here)."""
        if self._progress_bar_callback is not None:
            return self._progress_bar_callback
        for callback in self.callbacks:
            if any(c.__name__ == "ProgressBar" for c in type(callback).__mro__[1:]):
                return callback
        return None

    @progress_bar_callback.setter
    def progress_bar_callback(self, callback: Any) -> None:
        self._progress_bar_callback = callback

    @property
    def checkpoint_callback(self) -> Any:
        found = self.checkpoint_callbacks
        return found[0] if found else None

    def save_checkpoint(
        self, filepath: str | os.PathLike[str], weights_only: bool = False, storage_options: Any = None
    ) -> None:
        """Write a busloop checkpoint (weights only: just ``state_dict`` and the loop position)."""
        if not weights_only:
            self._rt.save_checkpoint(filepath)
            return
        from runtime.checkpoint import save_checkpoint

        st = self._rt.state
        weights = {"epoch": st.epoch, "global_step": st.global_step, "state_dict": self._rt.model.state_dict()}
        dist.rank_zero_write(lambda: save_checkpoint(weights, filepath), str(filepath))

    def print(self, *args: Any, **kwargs: Any) -> None:
        if dist.is_rank_zero():
            print(*args, **kwargs)
