"""DeviceStatsMonitor: Lightning 2.6's device statistics callback, natively on the busloop bus.

Around every training, validation and test batch it reads the device's statistics and sends
them to the run's tracker as ``DeviceStatsMonitor.<hook>/<stat>`` (``hook`` is Lightning's
hook name, e.g. ``on_train_batch_end``), at Lightning's step (the count of batches that
stepped the optimizer) and on Lightning's schedule: only when the step is a multiple of
``trainer.log_every_n_steps`` (the batch number for evaluation batches) or a stop was asked.

CPU runs log ``psutil``'s ``cpu_vm_percent``, ``cpu_percent`` and ``cpu_swap_percent``;
CUDA runs ``torch.cuda.memory_stats`` (a host-side read of the allocator's counters, no
device synchronisation). ``cpu_stats`` True adds the CPU figures on a GPU run; False drops
them on a CPU run.
"""

from __future__ import annotations

from typing import Any

import torch

from runtime.callback import Callback
from runtime.registry import register

__all__ = ["DeviceStatsMonitor", "cpu_stats"]


def cpu_stats() -> dict[str, float]:
    """System-wide RAM, CPU and swap utilisation (%), from ``psutil``."""
    import psutil

    return {
        "cpu_vm_percent": psutil.virtual_memory().percent,
        "cpu_percent": psutil.cpu_percent(),
        "cpu_swap_percent": psutil.swap_memory().percent,
    }


@register()
class DeviceStatsMonitor(Callback):
    """Log device statistics per batch (``cpu_stats``: None as the device, True/False forces)."""

    def __init__(self, cpu_stats: bool | None = None) -> None:
        if cpu_stats is not None and not isinstance(cpu_stats, bool):
            raise ValueError(f"DeviceStatsMonitor: cpu_stats must be None, True or False, got {cpu_stats!r}")
        self._cpu_stats = cpu_stats
        self._stepped = 0
        """Lightning's ``_batches_that_stepped``: optimizer steps before the current batch."""
        self._every = 50
        self._device = torch.device("cpu")

    def on_setup(self, runtime: Any, stage: str) -> None:
        self._every = runtime.config.trainer.log_every_n_steps
        self._device = runtime.device
        if stage == "fit" and self._cpu_stats is not False and self._device.type == "cpu":
            try:
                import psutil  # noqa: F401
            except ImportError:
                raise ModuleNotFoundError(
                    "DeviceStatsMonitor: logging CPU stats needs psutil (pip install psutil)"
                ) from None

    def on_fit_start(self, runtime: Any) -> None:
        self._stepped = runtime.state.global_step

    def on_train_end(self, runtime: Any) -> None:
        self._stepped = runtime.state.global_step

    def on_train_batch_start(self, runtime: Any, batch: Any, batch_idx: int) -> None:
        self._stepped = runtime.state.global_step
        self._log(runtime, "on_train_batch_start", self._stepped + 1)

    def on_train_batch_end(self, runtime: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._log(runtime, "on_train_batch_end", self._stepped + 1)

    def on_validation_batch_start(self, runtime: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        self._log(runtime, "on_validation_batch_start", batch_idx + 1)

    def on_validation_batch_end(
        self, runtime: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int
    ) -> None:
        self._log(runtime, "on_validation_batch_end", batch_idx + 1)

    def on_test_batch_start(self, runtime: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        self._log(runtime, "on_test_batch_start", batch_idx + 1)

    def on_test_batch_end(
        self, runtime: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int
    ) -> None:
        self._log(runtime, "on_test_batch_end", batch_idx + 1)

    def stats(self) -> dict[str, float]:
        """The statistics of the run's device (and the CPU's, as ``cpu_stats`` says)."""
        device = self._device
        if device.type == "cpu":
            return {} if self._cpu_stats is False else cpu_stats()
        values: dict[str, float] = {}
        if device.type == "cuda":
            values.update(torch.cuda.memory_stats(device))
        if self._cpu_stats:
            values.update(cpu_stats())
        return values

    def _log(self, runtime: Any, hook: str, step: int) -> None:
        """Log when Lightning would: ``step`` a multiple of log_every_n_steps, or stopping."""
        every = self._every
        if not every or (step % every and not runtime.state.should_stop):
            return
        if runtime.tracker is None:
            return
        values = self.stats()
        if values:
            prefix = f"DeviceStatsMonitor.{hook}/"
            runtime.tracker.log_metrics(
                {prefix + k: v for k, v in values.items()}, step=self._stepped, epoch=runtime.state.epoch
            )
