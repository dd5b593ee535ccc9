"""LearningRateMonitor: Lightning 2.6's learning-rate logger, natively on busloop's bus.

Logs each optimizer's learning rates through ``runtime.tracker`` under Lightning's names:
``lr-<Optimizer>`` (``lr-SGD``), ``/pg<N>`` or the group's ``name`` when an optimizer has
several parameter groups (``lr-SGD/pg1``), ``-<k>`` for the k-th unnamed optimizer of the
same type, a scheduler's ``name`` when it has one; ``-momentum`` and ``-weight_decay`` for
the optional extras (Adam-style ``betas[0]`` counts as momentum). Like Lightning it logs at
the start of a training batch when the logging step is due (``log_every_n_steps``) and at the
start of each training epoch, at the number of optimizer steps taken, and copies the values
into ``runtime.state.metrics``. Without a tracker it raises, as Lightning does without a logger.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from runtime.callback import Callback
from runtime.loop import Runtime
from runtime.registry import register
from runtime.tracking import NullTracker

__all__ = ["LearningRateMonitor"]


@register()
class LearningRateMonitor(Callback):
    """Log learning rates (and, optionally, momentum and weight decay) of every optimizer.

    ``logging_interval``: "step" logs every due step, "epoch" at every epoch start, None
    (default) each scheduler at its own interval (optimizers without scheduler every step).
    The values logged so far are in ``lrs`` (name -> list).
    """

    def __init__(
        self, logging_interval: str | None = None, log_momentum: bool = False, log_weight_decay: bool = False
    ) -> None:
        if logging_interval not in (None, "step", "epoch"):
            raise ValueError(
                f"LearningRateMonitor: logging_interval should be 'step' or 'epoch' or None, got {logging_interval!r}"
            )
        self.logging_interval = logging_interval
        self.log_momentum, self.log_weight_decay = log_momentum, log_weight_decay
        self.lrs: dict[str, list[float]] = {}
        self.last_momentum_values: dict[str, float | None] = {}
        self.last_weight_decay_values: dict[str, float | None] = {}
        self._every = 50

    def on_setup(self, runtime: Runtime, stage: str) -> None:
        if stage == "fit" and self.logging_interval == "epoch":
            runtime.bus.disconnect("train_batch_start", self.on_train_batch_start)

    def on_train_start(self, runtime: Runtime) -> None:
        if runtime.tracker is None or isinstance(runtime.tracker, NullTracker):
            raise RuntimeError("LearningRateMonitor needs a tracker to log to; this run has none")
        self._every = runtime.config.trainer.log_every_n_steps
        names = [n for part in self._names(runtime)[0] for group in part for n in group]
        self.lrs = {name: [] for name in names}
        self.last_momentum_values = {f"{name}-momentum": None for name in names}
        self.last_weight_decay_values = {f"{name}-weight_decay": None for name in names}

    def on_train_batch_start(self, runtime: Runtime, batch: Any, batch_idx: int) -> None:
        """Connected unless ``logging_interval="epoch"``; logs when the logging step is due."""
        st = runtime.state
        if (st.global_step + 1) % self._every != 0 and not st.should_stop:
            return
        self._log(runtime, "step" if self.logging_interval is None else "any")

    def on_train_epoch_start(self, runtime: Runtime) -> None:
        if self.logging_interval != "step":
            self._log(runtime, "epoch" if self.logging_interval is None else "any")

    def _log(self, runtime: Runtime, interval: str) -> None:
        stats = self._stats(runtime, interval)
        if stats and runtime.tracker is not None:
            runtime.tracker.log_metrics(stats, step=runtime.state.global_step, epoch=runtime.state.epoch)
            runtime.state.metrics.update(stats)

    # ------------------------------------------------------------------ values
    def _stats(self, runtime: Runtime, interval: str) -> dict[str, float]:
        """The current values of the optimizers due at ``interval`` ("step", "epoch", "any")."""
        (scheduler_names, optimizer_names), (configs, bare) = self._names(runtime)
        stats: dict[str, float] = {}
        for names, config in zip(scheduler_names, configs, strict=True):
            self._remap(names)
            if interval in (config.interval, "any"):
                stats.update(self._optimizer_stats(config.scheduler.optimizer, names))
        for names, optimizer in zip(optimizer_names, bare, strict=True):
            self._remap(names)
            stats.update(self._optimizer_stats(optimizer, names))
        return stats

    def _optimizer_stats(self, optimizer: Any, names: list[str]) -> dict[str, float]:
        stats: dict[str, float] = {}
        betas = "betas" in optimizer.defaults
        for group, name in zip(optimizer.param_groups, names, strict=False):
            stats[name] = group["lr"]
            self.lrs.setdefault(name, []).append(group["lr"])
            if self.log_momentum:
                momentum = group["betas"][0] if betas else group.get("momentum", 0)
                stats[f"{name}-momentum"] = self.last_momentum_values[f"{name}-momentum"] = momentum
            if self.log_weight_decay:
                decay = group["weight_decay"]
                stats[f"{name}-weight_decay"] = self.last_weight_decay_values[f"{name}-weight_decay"] = decay
        return stats

    def _remap(self, names: list[str], token: str = "/pg1") -> None:
        """An optimizer that gained parameter groups keeps its history under ``.../pg1``."""
        for name in names:
            old = name.replace(token, "")
            if token in name and old in self.lrs:
                self.lrs[name] = self.lrs.pop(old)
            elif name not in self.lrs:
                self.lrs[name] = []

    # ------------------------------------------------------------------ names
    def _names(self, runtime: Runtime) -> tuple[tuple[list[list[str]], list[list[str]]], tuple[list[Any], list[Any]]]:
        """Names per parameter group: of the scheduled optimizers, then of the others."""
        seen: list[Any] = []
        types: defaultdict[type, int] = defaultdict(int)
        configs = list(runtime.lr_scheduler_configs)
        scheduled = [
            self._group_names(config.scheduler.optimizer, config.name, seen, types) for config in configs
        ]
        bare: list[Any] = []
        unscheduled: list[list[str]] = []
        for optimizer in _optimizers(runtime):
            optimizer = getattr(optimizer, "optimizer", optimizer)
            if any(optimizer is other for other in seen):
                continue
            unscheduled.append(self._group_names(optimizer, None, seen, types))
            bare.append(optimizer)
        return (scheduled, unscheduled), (configs, bare)

    @staticmethod
    def _group_names(optimizer: Any, name: str | None, seen: list[Any], types: defaultdict[type, int]) -> list[str]:
        seen.append(optimizer)
        kind = type(optimizer)
        if name is None:
            types[kind] += 1
        base = name if name is not None else f"lr-{kind.__name__}"
        groups = optimizer.param_groups
        labels = [group.get("name", f"pg{i}") for i, group in enumerate(groups, start=1)]
        duplicated = {label for label in labels if labels.count(label) > 1}
        if duplicated:
            raise ValueError(
                f"LearningRateMonitor: a single optimizer cannot have several parameter groups with the "
                f"same name; {base} has duplicated names {duplicated}"
            )
        if kind in types and types[kind] > 1:
            base = f"{base}-{types[kind] - 1}"
        if len(groups) > 1:
            return [f"{base}/{label}" for label in labels]
        label = groups[0].get("name") if groups else None
        return [f"{base}/{label}" if label else base]


def _optimizers(runtime: Runtime) -> list[Any]:
    optimizers = getattr(runtime, "optimizers", None)
    if optimizers is not None:
        return list(optimizers)
    return [runtime.optimizer] if runtime.optimizer is not None else []
