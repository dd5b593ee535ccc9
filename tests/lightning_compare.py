"""Helpers for comparing compat callbacks with Lightning's stock ones on the same module.

Import only after ``pytest.importorskip("lightning.pytorch")``: Lightning is a test
dependency. Both sides get the same module (deep copies), the same data and the same seed
right before ``fit``; Lightning's extras (checkpointing, progress bar, summary) are off.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import Logger
from torch import nn

from runtime import Runtime
from runtime.tracking import NullTracker


class BNModule(pl.LightningModule):
    """A LightningModule with batch norm (``batch_norm=False``: without) and a StepLR."""

    def __init__(self, batch_norm: bool = True, scheduler: bool = True) -> None:
        super().__init__()
        norm: nn.Module = nn.BatchNorm1d(16) if batch_norm else nn.Identity()
        self.net = nn.Sequential(nn.Linear(8, 16), norm, nn.ReLU(), nn.Linear(16, 2))
        self.use_scheduler = scheduler

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        if not self.use_scheduler:
            return optimizer
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class CaptureLogger(Logger):
    """A Lightning logger that keeps every ``log_metrics`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[dict[str, float], int | None]] = []

    @property
    def name(self) -> str:
        return "capture"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        return None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls.append((dict(metrics), step))


class CaptureTracker(NullTracker):
    """A busloop tracker that keeps every ``log_metrics`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[dict[str, float], int]] = []

    def log_metrics(self, metrics: Any, step: int, epoch: int | None = None) -> None:
        self.calls.append((dict(metrics), step))


def lightning_fit(
    module: nn.Module, callbacks: list[Any], train: Any, val: Any = None, *, seed: int = 0,
    logger: Any = False, **trainer: Any,
) -> Any:
    """Fit a deep copy of ``module`` under Lightning's Trainer; returns (trainer, module)."""
    model = copy.deepcopy(module)
    kw = {"max_epochs": 3, "num_sanity_val_steps": 0, **trainer}
    pl_trainer = pl.Trainer(
        accelerator="cpu", devices=1, callbacks=callbacks, logger=logger,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kw,
    )
    torch.manual_seed(seed)
    pl_trainer.fit(model, train, val)
    return pl_trainer, model


def busloop_fit(
    module: nn.Module, callbacks: list[Any], train: Any, val: Any = None, *, seed: int = 0,
    tracker: Any = None, **trainer: Any,
) -> tuple[Runtime, nn.Module]:
    """Fit a deep copy of ``module`` under busloop; returns (runtime, module)."""
    model = copy.deepcopy(module)
    cfg = {"epochs": 3, "num_sanity_val_steps": 0, "accelerator": "cpu", **trainer}
    rt = Runtime(model, callbacks, {"trainer": cfg}, tracker=tracker or NullTracker())
    torch.manual_seed(seed)
    rt.fit(train, val)
    return rt, model


def assert_state_close(ours: Any, theirs: Any, atol: float = 1e-6, path: str = "") -> None:
    """Nested equality: tensors within ``atol``, floats approximately, the rest exactly."""
    if isinstance(theirs, torch.Tensor) or isinstance(ours, torch.Tensor):
        assert torch.allclose(torch.as_tensor(ours).float(), torch.as_tensor(theirs).float(), atol=atol), path
    elif isinstance(theirs, dict):
        assert isinstance(ours, dict) and set(ours) == set(theirs), f"{path}: {sorted(ours)} != {sorted(theirs)}"
        for key in theirs:
            assert_state_close(ours[key], theirs[key], atol, f"{path}.{key}")
    elif isinstance(theirs, list | tuple):
        assert len(ours) == len(theirs), path
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            assert_state_close(a, b, atol, f"{path}[{i}]")
    elif isinstance(theirs, float):
        assert abs(float(ours) - theirs) <= atol * max(1.0, abs(theirs)), f"{path}: {ours} != {theirs}"
    else:
        assert ours == theirs, f"{path}: {ours!r} != {theirs!r}"
