"""Config factories for ``tests/test_bad_input.py`` (with ``tests/scripts`` on the path).

``marked_model`` and ``marked_loaders`` are the digits job's factories that first write a
marker file, so a test can tell whether the model or the data was built before a mistake
was reported; ``failing_loaders``
raises inside the factory, as a user's factory with a bug or a bad value would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.examples.digits import DigitsClassifier, build_loaders


def marked_model(marker: str, channels: int = 32, num_classes: int = 10) -> DigitsClassifier:
    """The digits model, after touching ``marker``."""
    Path(marker).write_text("the model factory ran\n")
    return DigitsClassifier(channels=channels, num_classes=num_classes)


def marked_loaders(
    marker: str, batch_size: int = 64, num_workers: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15
) -> dict[str, Any]:
    """The digits loaders, after touching ``marker``."""
    Path(marker).write_text("the data factory ran\n")
    return build_loaders(batch_size, num_workers, val_fraction, test_fraction)


def failing_loaders(bucket: str = "s3://nowhere", batch_size: int = 64, num_workers: int = 0) -> dict[str, Any]:
    """Fails the way a user's factory fails: a plain exception from inside it."""
    raise FileNotFoundError(f"no dataset at {bucket}\n(second line of the message)")
