"""Which checkpoint a train-end callback uses: the best of the preferred kind, else the other.

The train-end callbacks (TestOnTrainEnd, ExportOnTrainEnd, ArchiveOnTrainEnd,
ConvertOnTrainEnd) share one rule, luxonis-train's: ``preferred_checkpoint`` is "metric"
(the ModelCheckpoint on the main metric, subdir ``best_val_metric``) or "loss" (the one on
``val/loss``, subdir ``min_val_loss``). When the preferred kind has no usable file an error
is logged and the other kind is tried; when neither has one, the caller decides (test the
current weights, or skip with a message saying what to configure).

Checkpoints are read with :func:`runtime.checkpoint.load_checkpoint` (``weights_only``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runtime.checkpoint import CheckpointError, load_checkpoint
from runtime.loop import Runtime

log = logging.getLogger("busloop.callbacks")

__all__ = [
    "CHECKPOINT_KINDS",
    "LOSS_MONITOR",
    "check_preferred",
    "checkpoint_callbacks",
    "load_best_weights",
]

#: The checkpoint kinds, and the subdir the default ModelCheckpoint of each kind uses.
CHECKPOINT_KINDS: dict[str, str] = {"metric": "best_val_metric", "loss": "min_val_loss"}
LOSS_MONITOR = "val/loss"


def check_preferred(preferred_checkpoint: str) -> str:
    """``preferred_checkpoint`` if it is "metric" or "loss"; ValueError otherwise."""
    if preferred_checkpoint not in CHECKPOINT_KINDS:
        raise ValueError(
            f"preferred_checkpoint must be 'metric' or 'loss', got {preferred_checkpoint!r}"
        )
    return preferred_checkpoint


def _is_checkpoint_callback(callback: object) -> bool:
    return hasattr(callback, "best_model_path") and hasattr(callback, "monitor")


def _kind_of(callback: object, main_metric: str | None) -> str | None:
    """The kind ("metric", "loss") of a ModelCheckpoint-like callback, or None."""
    subdir = getattr(callback, "subdir", None)
    for kind, kind_subdir in CHECKPOINT_KINDS.items():
        if subdir == kind_subdir:
            return kind
    monitor = getattr(callback, "monitor", None)
    if main_metric is not None and monitor == main_metric:
        return "metric"
    if monitor == LOSS_MONITOR:
        return "loss"
    return None


def checkpoint_callbacks(runtime: Runtime) -> Iterator[tuple[str, Any]]:
    """``(kind, callback)`` for each ModelCheckpoint-like callback of a known kind."""
    main = runtime.config.trainer.main_metric
    main_name = main.name if main is not None else None
    for callback in runtime.callbacks:
        if _is_checkpoint_callback(callback):
            kind = _kind_of(callback, main_name)
            if kind is not None:
                yield kind, callback


def _best_path(kind: str, callbacks: list[tuple[str, Any]]) -> tuple[str | None, str]:
    """The first existing best file among ``kind``'s callbacks, or why there is none."""
    of_kind = [cb for k, cb in callbacks if k == kind]
    if not of_kind:
        what = "trainer.main_metric" if kind == "metric" else f"monitor '{LOSS_MONITOR}'"
        return None, f"no ModelCheckpoint for it (configure one with {what})"
    reasons: list[str] = []
    for callback in of_kind:
        path = getattr(callback, "best_model_path", "") or ""
        if not path:
            reasons.append(f"ModelCheckpoint(monitor={callback.monitor!r}) saved no checkpoint")
        elif not Path(path).is_file():
            reasons.append(f"{path} does not exist")
        else:
            return str(path), ""
    return None, "; ".join(reasons)


def load_best_weights(
    runtime: Runtime, preferred: str, who: str, *, map_location: Any = None
) -> tuple[str | None, list[str]]:
    """Load the best checkpoint's weights into ``runtime.model``.

    Tries ``preferred`` first, then the other kind (logging an error naming ``who``).
    Returns ``(path, [])`` on success and ``(None, problems)`` when no kind had a usable
    file (the model is then left as it was).
    """
    callbacks = list(checkpoint_callbacks(runtime))
    order = [preferred, *(k for k in CHECKPOINT_KINDS if k != preferred)]
    problems: list[str] = []
    for index, kind in enumerate(order):
        path, problem = _best_path(kind, callbacks)
        if path is not None:
            try:
                location = runtime.device if map_location is None else map_location
                checkpoint = load_checkpoint(path, map_location=location)
                runtime.model.load_state_dict(checkpoint["state_dict"])
            except (CheckpointError, KeyError, RuntimeError) as exc:
                problem = f"cannot load {path}: {exc}"
            else:
                log.info("%s: using the best %s checkpoint %s", who, kind, path)
                return path, []
        problems.append(f"{kind}: {problem}")
        if index + 1 < len(order):
            log.error(
                "%s: no usable best %s checkpoint (%s); trying the %s checkpoint",
                who,
                kind,
                problem,
                order[index + 1],
            )
    return None, problems
