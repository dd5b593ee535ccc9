"""Shared fixtures: tiny real datasets and models, runs written under tmp_path."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from runtime import Callback, Runtime


@pytest.fixture(autouse=True)
def _isolated_run_dirs(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs that create a tracker write ``runs/`` inside the test's tmp folder."""
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _reset_busloop_logger() -> Any:
    """Each test gets the "busloop" logger without handlers left by a previous test."""
    logger = logging.getLogger("busloop")
    before = list(logger.handlers)
    yield
    for handler in list(logger.handlers):
        if handler not in before:
            logger.removeHandler(handler)
            handler.close()


def make_data(n: int = 96, features: int = 8, seed: int = 0) -> TensorDataset:
    """A linearly separable two-class problem with a little noise."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=generator)
    y = (x[:, : features // 2].sum(1) > x[:, features // 2 :].sum(1)).long()
    return TensorDataset(x, y)


def make_loader(n: int = 96, batch_size: int = 16, shuffle: bool = False, seed: int = 0, **kw: Any) -> DataLoader[Any]:
    return DataLoader(make_data(n, seed=seed), batch_size=batch_size, shuffle=shuffle, **kw)


def make_model(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 2))


def base_config(**trainer: Any) -> dict[str, Any]:
    """A config dict for fast tests: SGD, no sanity steps unless asked, a tracker in cwd."""
    return {
        "optimizer": {"name": "SGD", "params": {"lr": 0.1, "momentum": 0.9}},
        "trainer": {"epochs": 2, "num_sanity_val_steps": 0, **trainer},
    }


class SaveAndStop(Callback):
    """Saves a checkpoint after batch ``at`` of epoch ``epoch``, then stops the run."""

    def __init__(self, path: Any, epoch: int, at: int) -> None:
        self.path, self.epoch, self.at = path, epoch, at

    def on_train_batch_end(self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int) -> None:
        if runtime.state.epoch == self.epoch and batch_idx == self.at:
            runtime.save_checkpoint(self.path)
            runtime.request_stop("checkpoint taken")


class TinyCNN(nn.Module):
    """A small image classifier (1x8x8 -> 3 classes) for export, archive and Grad-CAM tests."""

    task = "classification"

    def __init__(self, classes: int = 3, seed: int = 0) -> None:
        torch.manual_seed(seed)
        super().__init__()
        self.classes = [f"c{i}" for i in range(classes)]
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # type: ignore[no-any-return]


def make_image_loader(n: int = 48, batch_size: int = 16, classes: int = 3, seed: int = 0) -> DataLoader[Any]:
    """Random 1x8x8 images whose class is where the bright blob is (learnable, tiny)."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=generator)
    x = torch.rand(n, 1, 8, 8, generator=generator) * 0.3
    for i, label in enumerate(y.tolist()):
        x[i, 0, 2 * label : 2 * label + 3, 2:6] += 0.7
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def image_config(tmp_path: Any, **exporter: Any) -> dict[str, Any]:
    """A config for TinyCNN runs: cross-entropy, a val/loss checkpoint, runs under tmp_path."""
    return {
        "loss": "torch.nn.functional:cross_entropy",
        "optimizer": {"name": "SGD", "params": {"lr": 0.1}},
        "trainer": {"epochs": 1, "num_sanity_val_steps": 0},
        "tracker": {"save_directory": str(tmp_path / "runs"), "run_name": "tiny"},
        "exporter": exporter,
    }
