"""A small CNN classifying scikit-learn's bundled 8x8 digits (1,797 images, shipped inside
scikit-learn, so nothing is downloaded). Used by ``busloop train`` with no config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from runtime.config import ConfigError

#: Pixel statistics of the training split are not needed: digits are 0..16 integers.
PIXEL_SCALE = 16.0


class DigitsClassifier(nn.Module):
    """Two conv blocks and a linear head; Lightning-style steps log loss and accuracy."""

    example_input_array = torch.zeros(1, 1, 8, 8)
    task = "classification"  # with ``classes``: the NN Archive's ClassificationParser head
    classes = [str(digit) for digit in range(10)]
    log: Callable[..., None]  # the runtime's self.log (Lightning semantics) while it drives the model

    def __init__(self, channels: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.classes = [str(i) for i in range(num_classes)]
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels * 2, 3, padding=1),
            nn.BatchNorm2d(channels * 2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(channels * 2 * 16, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # type: ignore[no-any-return]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "test")

    def _shared_step(self, batch: Any, stage: str) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(1) == labels).float().mean()
        # Lightning's semantics: in training_step a value is logged per step unless on_epoch
        # asks for the epoch mean too (the epoch line and train/... metrics use it).
        self.log(f"{stage}/loss", loss, on_epoch=True)
        self.log(f"{stage}/accuracy", accuracy, on_epoch=True)
        return loss


def build_model(channels: int = 32, num_classes: int = 10) -> DigitsClassifier:
    return DigitsClassifier(channels=channels, num_classes=num_classes)


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 8, 8) scaled to [0, 1] and labels (N,), from scikit-learn's copy."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ConfigError(
            "the default job needs scikit-learn's bundled digits dataset: "
            "pip install 'busloop[examples]' (or pip install scikit-learn)"
        ) from None
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / PIXEL_SCALE
    labels = torch.tensor(digits.target, dtype=torch.long)
    return images, labels


def build_loaders(
    batch_size: int = 64,
    num_workers: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    split_seed: int = 0,
) -> dict[str, DataLoader[Any]]:
    """Train / val / test loaders over a fixed random split (``split_seed``)."""
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= fraction < 1.0:
            raise ConfigError(f"data.params.{name}: must be in [0, 1), got {fraction!r}")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"data.params: val_fraction + test_fraction must be < 1 (some data must be left to "
            f"train on), got {val_fraction!r} + {test_fraction!r}"
        )
    images, labels = load_digits_tensors()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(split_seed))
    n_val, n_test = int(len(order) * val_fraction), int(len(order) * test_fraction)
    splits = {
        "val": order[:n_val],
        "test": order[n_val : n_val + n_test],
        "train": order[n_val + n_test :],
    }

    def loader(indices: torch.Tensor, shuffle: bool) -> DataLoader[Any]:
        dataset = TensorDataset(images[indices], labels[indices])
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers)

    return {name: loader(idx, shuffle=name == "train") for name, idx in splits.items()}
