"""Parts of the trainer facade that stock callbacks reach through: loggers over busloop's
tracker, the accelerator's device stats and the logger connector's logging schedule.

Lightning hands metrics to ``trainer.loggers``; busloop has one tracker per run. A
:class:`TrackerLogger` is the tracker seen as a Lightning logger (``log_metrics``,
``log_hyperparams``, ``save_dir`` / ``name`` / ``version`` naming the run folder), present when
the tracker records anything (a bare ``NullTracker`` is "no logger", like ``logger=False``).
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from runtime.tracking import NullTracker

if TYPE_CHECKING:
    from runtime.core import RuntimeCore as Runtime

__all__ = ["Accelerator", "LoggerConnector", "TrackerLogger", "tracker_logs"]

#: ``trainer.state.stage`` values in which Lightning's active loop is an evaluation loop.
_EVALUATING = frozenset({"sanity_check", "validate", "test", "predict"})


def tracker_logs(tracker: Any) -> bool:
    """Whether ``tracker`` records metrics (None: the run creates the configured one, which does)."""
    if tracker is None:
        return True
    return type(tracker).log_metrics is not NullTracker.log_metrics


class TrackerLogger:
    """busloop's tracker as a Lightning logger (what ModelCheckpoint, LearningRateMonitor and
    DeviceStatsMonitor call). The checkpoint folder Lightning derives from it,
    ``save_dir/name/version/checkpoints``, is ``<run>/checkpoints``."""

    group_separator = "/"

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    def __repr__(self) -> str:
        return f"TrackerLogger({self._rt.tracker!r})"

    @property
    def experiment(self) -> Any:
        return self._rt.tracker

    @property
    def save_dir(self) -> str | None:
        run_dir = self._rt.run_dir
        return None if run_dir is None else str(run_dir.parent)

    @property
    def root_dir(self) -> str | None:
        return self.save_dir

    @property
    def log_dir(self) -> str | None:
        run_dir = self._rt.run_dir
        return None if run_dir is None else str(run_dir)

    @property
    def name(self) -> str:
        run_dir = self._rt.run_dir
        return "" if run_dir is None else run_dir.name

    @property
    def version(self) -> str:
        return ""

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        tracker, st = self._rt.tracker, self._rt.state
        if tracker is not None:
            values = {k: float(v) for k, v in metrics.items()}
            tracker.log_metrics(values, step=st.global_step if step is None else step, epoch=st.epoch)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        if self._rt.tracker is not None:
            params = vars(params) if isinstance(params, Namespace) else dict(params)
            self._rt.tracker.log_hyperparams(params)

    def log_graph(self, model: Any, input_array: Any = None) -> None:
        return None

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        return None

    def save(self) -> None:
        """Lightning's "write what is logged": the tracker's :meth:`~runtime.tracking.Tracker.flush`."""
        if self._rt.tracker is not None:
            self._rt.tracker.flush()

    def finalize(self, status: str) -> None:
        return None  # the Runtime finalises its tracker itself


class Accelerator:
    """``trainer.accelerator``: device stats as Lightning's CPU / CUDA accelerators give them."""

    def get_device_stats(self, device: Any) -> dict[str, Any]:
        device = torch.device(device)
        if device.type == "cuda":
            return dict(torch.cuda.memory_stats(device))
        from compat.device_stats_monitor import cpu_stats

        return dict(cpu_stats())


class LoggerConnector:
    """``trainer._logger_connector``: when Lightning would hand metrics to its loggers."""

    def __init__(self, trainer: Any) -> None:
        self._trainer = trainer

    @property
    def should_update_logs(self) -> bool:
        """Lightning's schedule: in training, due when the next optimizer step is a multiple of
        ``log_every_n_steps``; in an evaluation (sanity check, validation, test, predict), when
        the count of its batches so far is; always when stopping."""
        trainer = self._trainer
        every = trainer._rt.config.trainer.log_every_n_steps
        if every == 0:
            return False
        if trainer.state.stage in _EVALUATING:
            count = trainer._eval_batches_ready
        else:
            count = trainer.fit_loop.epoch_loop._batches_that_stepped + 1
        return count % every == 0 or trainer._rt.state.should_stop
