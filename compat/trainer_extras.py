"""What Lightning's ``Trainer`` offers beyond the facade's views, for :class:`compat.Trainer`:
the constructor settings Lightning exposes as attributes (``barebones``,
``enable_autolog_hparams``, ``reload_dataloaders_every_n_epochs``) and ``init_module``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["FrontExtras"]


class FrontExtras:
    """A mixin of :class:`compat.Trainer` (reads its parsed arguments and Runtime)."""

    _args: Any
    _rt: Any

    @property
    def barebones(self) -> bool:
        return bool(self._args.barebones)

    @property
    def enable_autolog_hparams(self) -> bool:
        return bool(self._args.enable_autolog_hparams)

    @property
    def reload_dataloaders_every_n_epochs(self) -> int:
        """Always 0: busloop builds the loaders once per call (other values are refused)."""
        return 0

    @contextlib.contextmanager
    def init_module(self, empty_init: bool | None = None) -> Iterator[None]:
        """Tensors created inside are created on the device the trainer runs on, as Lightning's
        ``init_module``. busloop's precisions are 32-bit weights (mixed precision casts in
        autocast), so the dtype is left alone; ``empty_init`` is accepted and ignored: weights are
        always initialised (Lightning's ``empty_init=True`` only saves that time)."""
        with torch.device(self._rt.device):
            yield
