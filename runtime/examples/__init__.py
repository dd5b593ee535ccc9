"""The embedded default job: a small CNN on scikit-learn's bundled 8x8 digits (no download)."""

from pathlib import Path

DEFAULT_CONFIG = Path(__file__).with_name("digits.yaml")

__all__ = ["DEFAULT_CONFIG"]
