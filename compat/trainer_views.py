"""The parts of the trainer facade that Lightning code reaches through attributes:
``trainer.state`` (:class:`TrainerState`), ``trainer.strategy`` (:class:`Strategy`, the
collective operations stock callbacks call) and ``trainer.fit_loop`` (:class:`FitLoop`, the
loop-progress attributes they read). Each is a view over the Runtime, like the facade.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from runtime import distributed as dist

if TYPE_CHECKING:
    from compat.trainer import TrainerFacade
    from runtime.core import RuntimeCore as Runtime
    from runtime.state import LoopState

__all__ = ["FitLoop", "Strategy", "TrainerState"]

#: busloop's run stage -> Lightning's ``TrainerFn`` value.
_FN = {"fit": "fit", "validate": "validate", "test": "test", "predict": "predict"}


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


class Strategy:
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


def _total_batches(st: LoopState) -> int:
    """Training batches run in this fit: earlier epochs counted as full (their length is
    unknown for a loader without one: only the running epoch's are counted then)."""
    n = st.num_training_batches
    return st.batch_idx if math.isinf(n) else st.epoch * int(n) + st.batch_idx


def _batches_that_stepped(trainer: TrainerFacade) -> int:
    """Lightning's count of stepping batches: it grows after ``on_train_batch_end`` and after
    the validation that batch triggers, so inside that hook (the adapter flags it) and during
    that validation a batch that stepped is not counted yet."""
    rt, st = trainer._rt, trainer._rt.state
    in_batch_end = getattr(trainer, "_in_train_batch_end", False)
    after_batch = in_batch_end or (st.stage == "fit" and trainer.state.stage == "validate")
    if not rt.automatic_optimization:  # every batch counts once, however many optimizers step
        done = _total_batches(st)
        return done - 1 if after_batch else done
    if not after_batch:
        return st.global_step
    stepped = st.batch_idx % max(1, rt.accumulate_grad_batches) == 0 or st.last_batch_done()
    return st.global_step - 1 if stepped else st.global_step


class FitLoop:
    """``trainer.fit_loop``: what stock callbacks read and write on Lightning's fit loop."""

    def __init__(self, trainer: TrainerFacade) -> None:
        rt = trainer._rt
        self._rt = rt
        self.extra_batches = 0
        st = rt.state
        val_loop = _Progress(_has_run=lambda: st.history[-1]["stage"] == "val" if st.history else False)
        current = _Progress(ready=lambda: st.batch_idx, completed=lambda: st.batch_idx)
        batch_progress = _Progress(
            is_last_batch=st.last_batch_done,
            current=lambda: current,
        )
        self.epoch_loop = _Progress(
            batch_progress=lambda: batch_progress,
            val_loop=lambda: val_loop,
            _batches_that_stepped=lambda: _batches_that_stepped(trainer),
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
    def max_batches(self) -> int | float:
        """``trainer.num_training_batches``; writable: a callback may count extra batches
        (SWA adds one in its batch-norm epoch, so accumulation never completes early). The
        loop still runs over the loader's batches and steps on the last one, as Lightning's.
        ``inf`` for a loader without a length stays ``inf``."""
        return self._rt.state.num_training_batches + self.extra_batches

    @max_batches.setter
    def max_batches(self, value: int | float) -> None:
        n = self._rt.state.num_training_batches
        self.extra_batches = 0 if math.isinf(n) or math.isinf(value) else int(value) - int(n)

    @property
    def total_batch_idx(self) -> int:
        return _total_batches(self._rt.state)

    @property
    def _skip_backward(self) -> bool:
        """Writable: True makes training batches forward-only (``Runtime.skip_backward``)."""
        return self._rt.skip_backward

    @_skip_backward.setter
    def _skip_backward(self, value: bool) -> None:
        self._rt.skip_backward = bool(value)
