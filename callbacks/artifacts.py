"""Publishing a produced file: the tracker uploads it, then ``artifact_produced`` fires.

Export, archive and conversion all end the same way; this is that one way. An upload that
fails is logged, never raised: the file stays on disk and training is not failed by a
tracker problem (a luxonis-train pain point).
"""

from __future__ import annotations

import logging
from pathlib import Path

from runtime.loop import Runtime

log = logging.getLogger("busloop.callbacks")

__all__ = ["publish_artifact"]


def publish_artifact(runtime: Runtime, kind: str, path: Path) -> None:
    """Upload ``path`` through ``runtime.tracker`` and emit ``artifact_produced(kind, path)``."""
    if runtime.tracker is not None:
        try:
            runtime.tracker.log_artifact(path, kind=kind)
        except Exception as exc:  # a tracker problem must not lose the file or the run
            log.error("Could not upload the %s artifact %s: %s", kind, path, exc)
    runtime.bus.event.artifact_produced.emit(runtime, kind=kind, path=path)
