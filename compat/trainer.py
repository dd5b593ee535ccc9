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

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from runtime import distributed as dist

if TYPE_CHECKING:
    from runtime.core import RuntimeCore as Runtime

__all__ = ["TrainerFacade", "TrainerState"]

#: busloop's run stage -> Lightning's ``TrainerFn`` value.
_FN = {"fit": "fit", "validate": "validate", "test": "test", "predict": "predict"}


def _tensors(values: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Lightning keeps its metric dicts as tensors; busloop keeps floats."""
    return {k: v if isinstance(v, torch.Tensor) else torch.tensor(v) for k, v in values.items()}


class _ClipAlgorithm(str):
    """A clipping algorithm name with ``.value``, like Lightning's ``GradClipAlgorithmType``."""

    @property
    def value(self) -> str:
        return str(self)


class TrainerState:
    """``trainer.state``: ``fn`` ("fit", "validate", "test", "predict"), ``stage``
    ("train", "sanity_check", "validate", "test", "predict") and ``status``."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    @property
    def fn(self) -> str | None:
        return _FN.get(self._rt.state.stage or "")

    @property
    def stage(self) -> str | None:
        st = self._rt.state
        if st.sanity_checking:
            return "sanity_check"
        prefix = self._rt.metrics.prefix
        if st.stage == "fit":
            return "train" if prefix == "train" else "validate"
        return {"validate": "validate", "test": "test", "predict": "predict"}.get(st.stage or "")

    @property
    def status(self) -> str:
        return "running" if self._rt.state.stage else "finished"

    @property
    def finished(self) -> bool:
        return self._rt.state.stage is None

    @property
    def stopped(self) -> bool:
        return self._rt.state.should_stop


class _Strategy:
    """``trainer.strategy``: the collective operations stock callbacks call, over
    :mod:`runtime.distributed` (a single process needs none of them)."""

    def __init__(self, trainer: TrainerFacade) -> None:
        self._trainer = trainer

    @property
    def root_device(self) -> torch.device:
        return self._trainer._rt.device

    @property
    def lightning_module(self) -> Any:
        return self._trainer.lightning_module

    @property
    def model(self) -> Any:
        return self._trainer._rt._train_model

    @property
    def is_global_zero(self) -> bool:
        return dist.is_rank_zero()

    @property
    def world_size(self) -> int:
        return dist.world_size()

    def barrier(self, name: str | None = None) -> None:
        dist.barrier()

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return dist.broadcast_object(obj, src)

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:  # noqa: A002
        """True when every rank (``all``) or any rank decided True."""
        if dist.world_size() == 1 or not dist.is_available_and_initialized():
            return bool(decision)
        votes = dist.all_reduce_sum(torch.tensor([float(bool(decision))]))
        return bool(votes.item() == dist.world_size()) if all else bool(votes.item() > 0)

    def reduce(self, tensor: Any, group: Any = None, reduce_op: str | None = "mean") -> Any:
        if not isinstance(tensor, torch.Tensor) or dist.world_size() == 1:
            return tensor
        total = dist.all_reduce_sum(tensor.clone())
        return total / dist.world_size() if reduce_op in (None, "mean", "avg") else total

    def remove_checkpoint(self, filepath: str | os.PathLike[str]) -> None:
        if dist.is_rank_zero():
            Path(filepath).unlink(missing_ok=True)


class _Progress:
    """A read-only view with the attribute names of Lightning's loop progress objects."""

    def __init__(self, **getters: Callable[[], Any]) -> None:
        object.__setattr__(self, "_getters", getters)

    def __getattr__(self, name: str) -> Any:
        getters = object.__getattribute__(self, "_getters")
        if name in getters:
            return getters[name]()
        raise AttributeError(f"busloop's trainer facade has no loop attribute {name!r}")


class _FitLoop:
    """``trainer.fit_loop``: what stock callbacks read and write on Lightning's fit loop."""

    def __init__(self, trainer: TrainerFacade) -> None:
        rt = trainer._rt
        self._rt = rt
        st = rt.state
        val_loop = _Progress(_has_run=lambda: st.history[-1]["stage"] == "val" if st.history else False)
        current = _Progress(ready=lambda: st.batch_idx, completed=lambda: st.batch_idx)
        batch_progress = _Progress(
            is_last_batch=lambda: st.batch_idx >= st.num_training_batches > 0,
            current=lambda: current,
        )
        self.epoch_loop = _Progress(
            batch_progress=lambda: batch_progress,
            val_loop=lambda: val_loop,
            _batches_that_stepped=lambda: st.global_step,
            global_step=lambda: st.global_step,
        )

    @property
    def max_epochs(self) -> int:
        return self._rt.state.max_epochs

    @max_epochs.setter
    def max_epochs(self, value: int) -> None:
        self._rt.state.max_epochs = value

    @property
    def max_steps(self) -> int:
        return -1 if self._rt.state.max_steps is None else self._rt.state.max_steps

    @property
    def max_batches(self) -> int:
        return self._rt.state.num_training_batches

    @property
    def total_batch_idx(self) -> int:
        st = self._rt.state
        return st.epoch * st.num_training_batches + st.batch_idx

    @property
    def _skip_backward(self) -> bool:
        return False


class TrainerFacade:
    """``module.trainer`` during a busloop run: Lightning's trainer attributes over a Runtime."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self.state = TrainerState(runtime)
        self.strategy = _Strategy(self)
        self.fit_loop = _FitLoop(self)
        self.fast_dev_run = False
        self.received_sigterm = False
        self.progress_bar_callback: Any = None
        self.profiler: Any = None

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
        return float("inf") if st.sanity_checking else st.num_training_batches

    @property
    def num_val_batches(self) -> list[int]:
        return [self._rt.state.num_val_batches]

    @property
    def num_sanity_val_batches(self) -> list[int]:
        return [self._rt.state.num_sanity_val_batches]

    @property
    def num_test_batches(self) -> list[int]:
        return [self._rt.state.num_test_batches]

    @property
    def num_predict_batches(self) -> list[int]:
        return [self._rt.state.num_predict_batches]

    @property
    def accumulate_grad_batches(self) -> int:
        return self._rt.accumulate_grad_batches

    @accumulate_grad_batches.setter
    def accumulate_grad_batches(self, value: int) -> None:
        self._rt.accumulate_grad_batches = int(value)

    @property
    def estimated_stepping_batches(self) -> int:
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
        return str(self._rt.config.trainer.precision)

    # ------------------------------------------------------------------ metrics
    @property
    def callback_metrics(self) -> dict[str, torch.Tensor]:
        return _tensors(self._rt.state.metrics)

    @property
    def logged_metrics(self) -> dict[str, torch.Tensor]:
        return _tensors(getattr(self._rt.state, "logged_metrics", self._rt.state.metrics))

    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        values = getattr(self._rt.state, "progress_bar_metrics", {})
        return {k: float(v) for k, v in values.items()}

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
        return []

    @property
    def ckpt_path(self) -> str | None:
        return self._rt.ckpt_path

    @property
    def callbacks(self) -> list[Any]:
        return list(self._rt.callbacks)

    @property
    def checkpoint_callbacks(self) -> list[Any]:
        return [c for c in self._rt.callbacks if getattr(c, "monitor_role", None) == "checkpoint"]

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
        if dist.is_rank_zero():
            save_checkpoint(
                {"epoch": st.epoch, "global_step": st.global_step, "state_dict": self._rt.model.state_dict()},
                filepath,
            )
        dist.barrier()

    def print(self, *args: Any, **kwargs: Any) -> None:
        if dist.is_rank_zero():
            print(*args, **kwargs)
