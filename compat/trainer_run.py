"""The run-side parts of :class:`compat.Trainer`: the Runtime subclass one call runs on (with
Lightning's ``min_epochs`` / ``min_steps`` and resume checks), ``trainer.state`` with Lightning's
lifetime, the writable ``callback_metrics`` dict and the one-loader-per-stage rule.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from compat.trainer_args import UNBOUNDED_EPOCHS
from compat.trainer_data import ModuleData
from compat.trainer_defaults import misconfiguration
from compat.trainer_interrupt import datamodule_on_exception
from compat.trainer_views import FitLoop, TrainerState
from runtime.errors import ConfigError
from runtime.loop import Runtime

if TYPE_CHECKING:
    from compat.trainer_front import Trainer

__all__ = ["FrontFitLoop", "FrontRuntime", "FrontState", "WriteThrough", "in_order", "one_loader"]


class FrontState(TrainerState):
    """``trainer.state`` with Lightning's lifetime: ``fn`` and ``status`` outlive the call."""

    def __init__(self, trainer: Trainer) -> None:
        super().__init__(trainer._rt)
        self._trainer = trainer

    @property
    def fn(self) -> str | None:
        return super().fn or self._trainer._last_fn

    @property
    def stage(self) -> str | None:
        """As Lightning: after Ctrl+C the stage it interrupted stays set."""
        stage = super().stage
        if stage is None and self._trainer._status == "interrupted":
            return self._trainer._shutdown.stage
        return stage

    @property
    def status(self) -> str:
        return self._trainer._status

    @property
    def finished(self) -> bool:
        return self._trainer._status == "finished"

    @property
    def stopped(self) -> bool:
        return self._trainer._status in ("finished", "interrupted")


class FrontFitLoop(FitLoop):
    """``trainer.fit_loop`` with Lightning's -1 for "no epoch limit"."""

    @property
    def max_epochs(self) -> int:
        max_epochs = self._rt.state.max_epochs
        return -1 if max_epochs >= UNBOUNDED_EPOCHS else max_epochs

    @max_epochs.setter
    def max_epochs(self, value: int) -> None:
        self._rt.state.max_epochs = UNBOUNDED_EPOCHS if value == -1 else value


class FrontRuntime(Runtime):
    """The Runtime of one front call, with two Lightning rules the plain Runtime does not have:

    - ``min_epochs`` / ``min_steps`` hold a stop request back until both are met (checked after
      every training batch and at every epoch end), as Lightning's loops do;
    - resuming a checkpoint past ``max_epochs`` is an error.
    """

    front: Trainer

    def can_stop(self) -> bool:
        front, st = self.front, self.state
        return (not front._min_epochs or st.epoch >= front._min_epochs) and (
            not front._min_steps or st.global_step >= front._min_steps
        )

    def request_stop(self, reason: str) -> None:
        st = self.state
        if st.stage == "fit" and not st.interrupted and not self.can_stop():
            self.front._pending_stop = self.front._pending_stop or reason
            return
        super().request_stop(reason)

    def release_stop(self, *_: Any, **__: Any) -> None:
        """Turn a held stop request into a stop once the minimums are met."""
        front = self.front
        if front._pending_stop is not None and self.can_stop():
            reason, front._pending_stop = front._pending_stop, None
            super().request_stop(reason)

    def _use_fit_loaders(self, train_loader: Iterable[Any] | None, val_loader: Iterable[Any] | None) -> None:
        if self.front._args.overfit_batches > 0 and train_loader is not None:
            train_loader = in_order(train_loader)
        try:
            super()._use_fit_loaders(train_loader, val_loader)
        except ConfigError as exc:  # a limit that does not fit the loaders: Lightning's error type too
            raise misconfiguration(str(exc)) from None

    def _finish_epoch(self, *, resumed_after_epoch_end: bool = False) -> None:
        super()._finish_epoch(resumed_after_epoch_end=resumed_after_epoch_end)
        self.release_stop()

    def _report_exception(self, exc: BaseException) -> None:
        """Lightning's order: the status is "interrupted" before the callbacks' ``on_exception``,
        the datamodule's ``on_exception`` after them; Ctrl+C is announced as Lightning does."""
        if getattr(exc, "_busloop_reported", False):
            return
        self.front._status = "interrupted"
        if isinstance(exc, KeyboardInterrupt):
            self.front._shutdown.begin(self.front.state.stage)
        super()._report_exception(exc)
        if self.datamodule is not None and not isinstance(self.datamodule, ModuleData):
            datamodule_on_exception(self.datamodule, exc)

    def _log_failure(self, exc: BaseException) -> None:
        if not isinstance(exc, KeyboardInterrupt):  # Ctrl+C: Lightning's message, no traceback
            super()._log_failure(exc)

    def _restore(self, path: str | os.PathLike[str]) -> None:
        super()._restore(path)
        st, resume = self.state, self._resume
        epoch = st.epoch + (1 if resume is not None and resume.epoch_done else 0)
        if epoch > st.max_epochs:
            raise misconfiguration(
                f"You restored a checkpoint with current_epoch={epoch}, but you have set "
                f"Trainer(max_epochs={st.max_epochs})"
            )


def in_order(loader: Any) -> Any:
    """A shuffling ``DataLoader`` rebuilt to read its dataset in order (``overfit_batches``);
    any other loader as it is."""
    from torch.utils.data import DataLoader, RandomSampler, SequentialSampler

    if not isinstance(loader, DataLoader) or not isinstance(loader.sampler, RandomSampler):
        return loader
    return DataLoader(
        loader.dataset, batch_size=loader.batch_size, sampler=SequentialSampler(loader.dataset),  # type: ignore[arg-type]
        num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
        drop_last=loader.drop_last, timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers,
    )  # fmt: skip


class WriteThrough(dict):  # type: ignore[type-arg]
    """``trainer.callback_metrics``: a dict whose writes land in the run's metrics."""

    def __init__(self, target: dict[str, Any], values: dict[str, Any]) -> None:
        super().__init__(values)
        self._target = target

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self._target[key] = value

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value


def one_loader(loaders: Any, argument: str) -> Any:
    """A loader, a datamodule or None; a list or tuple of one loader is that loader."""
    if isinstance(loaders, list | tuple):
        if len(loaders) != 1:
            raise ConfigError(f"{argument}: busloop runs one loader per stage, got {len(loaders)}")
        return loaders[0]
    if isinstance(loaders, dict):
        raise ConfigError(f"{argument}: busloop runs one loader per stage, got a dict of loaders")
    return loaders
