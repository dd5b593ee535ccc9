"""TensorBoard tracker: scalars, images and hyperparameters as event files.

Needs the ``tensorboard`` package (``torch.utils.tensorboard`` imports it). Event files
go to ``<run_dir>/tensorboard/``; point ``tensorboard --logdir`` at the runs folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .base import Tracker, to_hwc_uint8

__all__ = ["TensorBoardTracker"]


class TensorBoardTracker(Tracker):
    """Writes metrics, images and hyperparameters with ``torch.utils.tensorboard``.

    ``run_dir`` is the run folder (shared with the local tracker when both are on);
    the event files go to ``log_dir``, by default ``<run_dir>/tensorboard``. Artifacts
    are not TensorBoard's business: :meth:`log_artifact` ignores them.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        log_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.status = None
        self.run_dir = Path(run_dir)
        self.log_dir = Path(log_dir) if log_dir is not None else self.run_dir / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        text = yaml.safe_dump(_plain(params), sort_keys=False)
        self.writer.add_text("hparams", "```yaml\n" + text + "```")

    def log_metrics(
        self, metrics: Mapping[str, float], step: int, epoch: int | None = None
    ) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(str(name), float(value), int(step))
        if epoch is not None:
            self.writer.add_scalar("epoch", int(epoch), int(step))

    def log_image(self, tag: str, image: Any, step: int) -> Path | None:
        array = to_hwc_uint8(image)
        self.writer.add_image(
            str(tag), array, int(step), dataformats="HWC" if array.ndim == 3 else "HW"
        )
        return None

    def log_artifact(self, path: str | os.PathLike[str], kind: str) -> Path | None:
        return None

    def _finalize(self, status: str) -> None:
        self.writer.add_text("status", status)
        self.writer.flush()
        self.writer.close()


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    return str(value)
