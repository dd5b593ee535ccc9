"""GradientAccumulationScheduler: change ``accumulate_grad_batches`` by epoch (Lightning 2.6's).

The schedule is validated as Lightning validates it (keys: epochs, ints >= 0; values:
accumulation factors, ints >= 1; not empty), and an epoch 0 entry of 1 is added when the
schedule starts later. Keys may also be strings holding integers (JSON configs). Busloop's
default callback set builds one from ``trainer.accumulate_grad_batches``, so, unlike
Lightning, a runtime-level ``accumulate_grad_batches`` next to the callback is no error: the
schedule wins from the first epoch.
"""

from __future__ import annotations

from typing import Any

from runtime.callback import Callback
from runtime.registry import register

__all__ = ["GradientAccumulationScheduler"]


def _epoch(key: Any) -> int | None:
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        return key
    if isinstance(key, str) and key.strip().lstrip("-").isdigit():
        return int(key)
    return None


@register()
class GradientAccumulationScheduler(Callback):
    """Accumulate gradients over ``scheduling[epoch]`` batches from that epoch on.

    ``scheduling`` maps a start epoch to a batch count, e.g. ``{0: 4, 10: 1}``; the loop reads
    ``runtime.accumulate_grad_batches`` every batch, and this sets it at each epoch start.
    """

    def __init__(self, scheduling: dict[Any, int]) -> None:
        if not isinstance(scheduling, dict):
            raise TypeError(f"GradientAccumulationScheduler: scheduling must be a dict, got {scheduling!r}")
        if not scheduling:
            raise TypeError("GradientAccumulationScheduler: an empty scheduling dict cannot be interpreted")
        epochs = [_epoch(key) for key in scheduling]
        if any(epoch is None or epoch < 0 for epoch in epochs):
            raise ValueError(
                "GradientAccumulationScheduler: scheduling keys are epochs and should be ints greater than "
                f"or equal to 0. Got {list(scheduling)}."
            )
        counts = list(scheduling.values())
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in counts):
            raise ValueError(
                "GradientAccumulationScheduler: accumulation factors (batch counts) should be ints greater "
                f"than 0 (count >= 1). Got {counts}."
            )
        parsed = dict(zip((int(e) for e in epochs if e is not None), counts, strict=True))
        parsed.setdefault(0, 1)
        self.scheduling = dict(sorted(parsed.items()))
        self.epochs = list(self.scheduling)

    def going_to_accumulate_grad_batches(self) -> bool:
        return any(count > 1 for count in self.scheduling.values())

    def get_accumulate_grad_batches(self, epoch: int) -> int:
        """The batch count in force at ``epoch``."""
        count = 1
        for start in self.epochs:
            if epoch >= start:
                count = self.scheduling[start]
        return count

    def on_train_start(self, runtime: Any) -> None:
        if not getattr(runtime.model, "automatic_optimization", True):
            raise RuntimeError(
                "GradientAccumulationScheduler does not support manual optimization (the module sets "
                "automatic_optimization = False); remove the callback or switch to automatic optimization"
            )

    def on_train_epoch_start(self, runtime: Any) -> None:
        runtime.accumulate_grad_batches = self.get_accumulate_grad_batches(runtime.state.epoch)
