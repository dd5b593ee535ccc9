"""GradientAccumulationScheduler: change ``accumulate_grad_batches`` by epoch."""

from __future__ import annotations

from typing import Any

from runtime.callback import Callback
from runtime.registry import register


@register()
class GradientAccumulationScheduler(Callback):
    """Accumulate gradients over ``scheduling[epoch]`` batches from that epoch on.

    ``scheduling`` maps a start epoch to a batch count, e.g. ``{0: 4, 10: 1}``; the loop reads
    ``runtime.accumulate_grad_batches`` every batch, and this sets it at each epoch start.
    Keys may be strings (YAML/JSON configs) holding integers.
    """

    def __init__(self, scheduling: dict[Any, int]) -> None:
        parsed: dict[int, int] = {}
        for epoch, count in scheduling.items():
            try:
                epoch_number = int(epoch)
            except (TypeError, ValueError):
                raise ValueError(f"scheduling keys must be epoch numbers, got {epoch!r}") from None
            if epoch_number < 0 or not isinstance(count, int) or count < 1:
                raise ValueError(
                    f"scheduling needs epoch >= 0 and a count >= 1, got {epoch!r}: {count!r}"
                )
            parsed[epoch_number] = count
        if not parsed:
            raise ValueError("scheduling must not be empty")
        self.scheduling = dict(sorted(parsed.items()))

    def get_accumulate_grad_batches(self, epoch: int) -> int:
        """The batch count in force at ``epoch`` (1 before the first scheduled epoch)."""
        count = 1
        for start, value in self.scheduling.items():
            if epoch >= start:
                count = value
        return count

    def on_train_epoch_start(self, runtime: Any) -> None:
        runtime.accumulate_grad_batches = self.get_accumulate_grad_batches(runtime.state.epoch)
