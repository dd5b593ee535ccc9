"""Run one LightningModule under Lightning's Trainer and under busloop, the same way.

The helpers the Lightning parity tests share: the same seed right before each fit, the same
data, ``num_sanity_val_steps`` equal, and Lightning's logger, checkpointing, progress bar and
summary off. Lightning is imported when a helper runs (the tests that use them skip without it).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from conftest import make_loader
from runtime import Runtime
from runtime.tracking import NullTracker


def lightning_trainer(epochs: int, callbacks: list[Any] = (), **kw: Any) -> Any:  # type: ignore[assignment]
    """Lightning's Trainer on CPU with logger, checkpointing, progress bar and summary off."""
    import lightning.pytorch as pl

    options = {
        "accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
        "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0, **kw,
    }  # fmt: skip
    return pl.Trainer(max_epochs=epochs, callbacks=list(callbacks), **options)


def busloop_runtime(model: nn.Module, epochs: int, callbacks: list[Any] = (), **trainer: Any) -> Runtime:  # type: ignore[assignment]
    """A busloop Runtime with the trainer options Lightning's would get, and no tracker."""
    config = {"trainer": {"accelerator": "cpu", "epochs": epochs, "num_sanity_val_steps": 0, **trainer}}
    return Runtime(model, list(callbacks), config, tracker=NullTracker())


def fit_both(
    factory: Callable[[], Any], loaders: Callable[[], tuple[Any, ...]], epochs: int = 2, **both: Any
) -> tuple[Any, Any, Any, Runtime]:
    """Train copies of one module under Lightning and busloop with the same trainer options."""
    torch.manual_seed(0)
    module = factory()
    by_lightning, by_busloop = copy.deepcopy(module), copy.deepcopy(module)
    trainer = lightning_trainer(epochs, **both)
    torch.manual_seed(1)
    trainer.fit(by_lightning, *loaders())
    rt = busloop_runtime(by_busloop, epochs, **both)
    torch.manual_seed(1)
    rt.fit(*loaders())
    return by_lightning, by_busloop, trainer, rt


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    """Every weight and buffer equal within 1e-6."""
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6, msg=name)


def three_batches() -> tuple[Any, ...]:
    """One train loader of three batches of 16."""
    return (make_loader(48, batch_size=16),)


class RecordsOptimizationHooks:
    """A LightningModule mixin: appends the optimization hooks it sees to ``self.calls``
    (``on_before_optimizer_step`` with the optimizer's index)."""

    calls: list[Any]
    trainer: Any

    def on_before_zero_grad(self, optimizer: Any) -> None:
        self.calls.append("on_before_zero_grad")

    def on_before_backward(self, loss: torch.Tensor) -> None:
        self.calls.append("on_before_backward")

    def on_after_backward(self) -> None:
        self.calls.append("on_after_backward")

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.calls.append(("on_before_optimizer_step", self.trainer.optimizers.index(optimizer)))
