"""UploadCheckpoint: hand every new best checkpoint to the tracker."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from runtime.callback import Callback
from runtime.registry import register

log = logging.getLogger("busloop.callbacks")


@register()
class UploadCheckpoint(Callback):
    """On each ``checkpoint_written`` with a monitor (a new best file of a checkpoint
    callback, loss and metric alike), upload it once through ``runtime.tracker``.

    An upload that fails is logged and training goes on; the file stays on disk. "Uploaded"
    is logged only when the tracker sends files beyond the run folder (``Tracker.uploads``).
    """

    def __init__(self) -> None:
        self.uploaded: list[str] = []

    def on_checkpoint_written(self, runtime: Any, path: Path, monitor: str | None, score: float | None) -> None:
        if monitor is None or runtime.tracker is None or str(path) in self.uploaded:
            return
        try:
            runtime.tracker.log_artifact(path, kind="checkpoint")
        except Exception as exc:  # a tracker problem must never stop training
            log.error("UploadCheckpoint: could not upload %s: %s", path, exc)
            return
        self.uploaded.append(str(path))
        if runtime.tracker.uploads:  # a local-only tracker keeps the file where it is
            log.info("Uploaded checkpoint %s (%s = %s)", Path(path).name, monitor, score)
