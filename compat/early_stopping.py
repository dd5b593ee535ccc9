"""EarlyStopping: Lightning 2.6's early-stopping callback, natively on busloop's bus.

Same arguments, defaults, decisions, ``state_key`` (``EarlyStopping{'monitor': ..., 'mode':
...}``) and ``state_dict`` (``wait_count``, ``stopped_epoch``, ``best_score``, ``patience``,
``stopping_reason`` as the reason's int value, ``stopping_reason_message``) as
``lightning.pytorch.callbacks.EarlyStopping``. The check runs at the end of the training
epoch or of validation (``check_on_train_epoch_end``; when None, at the epoch end exactly
when validation runs once per epoch), never during the sanity check or outside ``fit``.
Under ``torchrun`` the ranks agree: training stops when any rank decided to stop.

Where Lightning only logs with ``verbose``, busloop always logs why it stopped (the reason
also lands in ``runtime.state.stop_reason`` through :meth:`Runtime.request_stop`).
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import Any

import torch

from compat.collective import agree
from runtime import distributed as dist
from runtime.callback import Callback
from runtime.loop import Runtime
from runtime.registry import register

log = logging.getLogger("busloop.callbacks")

__all__ = ["EarlyStopping", "EarlyStoppingReason"]


class EarlyStoppingReason(Enum):
    """Why training stopped (the values are Lightning's; ``state_dict`` stores the int)."""

    NOT_STOPPED = 0
    STOPPING_THRESHOLD = 1
    DIVERGENCE_THRESHOLD = 2
    PATIENCE_EXHAUSTED = 3
    NON_FINITE_METRIC = 4


_BETTER = {"min": torch.lt, "max": torch.gt}
_ORDER = {"min": "<", "max": ">"}


@register()
class EarlyStopping(Callback):
    """Stop training when ``monitor`` stopped improving for ``patience`` checks.

    An improvement must beat the best score by more than ``min_delta``. ``strict`` makes a
    missing metric an error (else it is skipped, with a warning when ``verbose``);
    ``check_finite`` stops on NaN/inf; ``stopping_threshold`` stops once the metric is at
    least that good, ``divergence_threshold`` once it is worse than that.
    """

    monitor_role = "early_stopping"
    mode_dict = _BETTER
    order_dict = _ORDER

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: str = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
        log_rank_zero_only: bool = False,
    ) -> None:
        if mode not in _BETTER:
            raise ValueError(f"EarlyStopping: mode can be 'min' or 'max', got {mode!r}")
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"EarlyStopping: monitor must name a logged metric, got {monitor!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"EarlyStopping: patience must be an int >= 0, got {patience!r}")
        self.monitor, self.mode, self.patience, self.verbose = monitor, mode, patience, verbose
        self.strict, self.check_finite = strict, check_finite
        self.stopping_threshold, self.divergence_threshold = stopping_threshold, divergence_threshold
        self.log_rank_zero_only = log_rank_zero_only
        self._check_on_train_epoch_end = check_on_train_epoch_end
        # min_delta counts in the direction of improvement (negative when minimising)
        self.min_delta = min_delta * (1 if mode == "max" else -1)
        self.wait_count = 0
        self.stopped_epoch = 0
        self.best_score = torch.tensor(torch.inf if mode == "min" else -torch.inf)
        self.stopping_reason = EarlyStoppingReason.NOT_STOPPED
        self.stopping_reason_message: str | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    @property
    def monitor_op(self) -> Any:
        return _BETTER[self.mode]

    def on_setup(self, runtime: Runtime, stage: str) -> None:
        if self._check_on_train_epoch_end is None:
            cfg = runtime.config.trainer
            self._check_on_train_epoch_end = cfg.val_check_interval == 1.0 and cfg.check_val_every_n_epoch == 1

    def on_train_epoch_end(self, runtime: Runtime) -> None:
        if self._check_on_train_epoch_end and not self._skip(runtime):
            self._run_check(runtime)

    def on_validation_end(self, runtime: Runtime) -> None:
        if not self._check_on_train_epoch_end and not self._skip(runtime):
            self._run_check(runtime)

    @staticmethod
    def _skip(runtime: Runtime) -> bool:
        return runtime.state.stage != "fit" or runtime.state.sanity_checking

    def _run_check(self, runtime: Runtime) -> None:
        """Evaluate the metric, agree across ranks, and ask the loop to stop when due."""
        metrics = runtime.state.metrics
        if self.monitor not in metrics:
            message = (
                f"EarlyStopping conditioned on metric `{self.monitor}` which is not available. Pass in or "
                f"modify your `EarlyStopping` callback to use any of the following: `{'`, `'.join(metrics)}`"
            )
            if self.strict:
                raise RuntimeError(message)
            if self.verbose:
                log.warning(message)
            return
        value = metrics[self.monitor]
        current = (value.detach() if isinstance(value, torch.Tensor) else torch.tensor(value)).squeeze()
        should_stop, reason = self._evaluate(current)
        should_stop = agree(should_stop, runtime.device, every_rank=False)
        if should_stop:
            self.stopped_epoch = runtime.state.epoch
            self.stopping_reason_message = reason
            if not runtime.state.should_stop:
                runtime.request_stop(reason or f"EarlyStopping on {self.monitor}")
        if reason and (self.verbose or should_stop):
            self._log(reason)

    def _evaluate(self, current: torch.Tensor) -> tuple[bool, str | None]:
        """The decision for one check, updating best score, wait count and reason."""
        better, order = self.monitor_op, _ORDER[self.mode]
        if self.check_finite and not torch.isfinite(current):
            self.stopping_reason = EarlyStoppingReason.NON_FINITE_METRIC
            return True, (
                f"Monitored metric {self.monitor} = {current} is not finite. Previous best value was "
                f"{self.best_score:.3f}. Signaling Trainer to stop."
            )
        if self.stopping_threshold is not None and better(current, self.stopping_threshold):
            self.stopping_reason = EarlyStoppingReason.STOPPING_THRESHOLD
            return True, (
                f"Stopping threshold reached: {self.monitor} = {current} {order} {self.stopping_threshold}. "
                "Signaling Trainer to stop."
            )
        if self.divergence_threshold is not None and better(-current, -self.divergence_threshold):
            self.stopping_reason = EarlyStoppingReason.DIVERGENCE_THRESHOLD
            return True, (
                f"Divergence threshold reached: {self.monitor} = {current} {order} {self.divergence_threshold}. "
                "Signaling Trainer to stop."
            )
        if better(current - self.min_delta, self.best_score.to(current.device)):
            if torch.isfinite(self.best_score):
                message = (
                    f"Metric {self.monitor} improved by {abs(self.best_score - current):.3f} >= min_delta = "
                    f"{abs(self.min_delta)}. New best score: {current:.3f}"
                )
            else:
                message = f"Metric {self.monitor} improved. New best score: {current:.3f}"
            self.best_score, self.wait_count = current, 0
            return False, message
        self.wait_count += 1
        if self.wait_count < self.patience:
            return False, None
        self.stopping_reason = EarlyStoppingReason.PATIENCE_EXHAUSTED
        return True, (
            f"Monitored metric {self.monitor} did not improve in the last {self.wait_count} records. "
            f"Best score: {self.best_score:.3f}. Signaling Trainer to stop."
        )

    def _log(self, message: str) -> None:
        world = dist.world_size()
        rank = dist.rank() if world > 1 else None
        if rank is None or not self.log_rank_zero_only or rank == 0:
            log.info(message if rank is None else f"[rank: {rank}] {message}")

    def state_dict(self) -> dict[str, Any]:
        return {
            "wait_count": self.wait_count,
            "stopped_epoch": self.stopped_epoch,
            "best_score": self.best_score,
            "patience": self.patience,
            "stopping_reason": self.stopping_reason.value,
            "stopping_reason_message": self.stopping_reason_message,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.wait_count = state_dict["wait_count"]
        self.stopped_epoch = state_dict["stopped_epoch"]
        self.best_score = state_dict["best_score"]
        self.patience = state_dict["patience"]
        self.stopping_reason = EarlyStoppingReason(state_dict.get("stopping_reason", 0))
        self.stopping_reason_message = state_dict.get("stopping_reason_message")
