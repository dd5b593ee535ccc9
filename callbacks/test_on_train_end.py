"""TestOnTrainEnd: after training, test the best checkpoint's weights.

At ``train_end`` the callback picks the best checkpoint of the preferred kind
("metric": the ModelCheckpoint on the main metric, subdir ``best_val_metric``; "loss":
the one on ``val/loss``, subdir ``min_val_loss``), falls back to the other kind with an
error in the log, and to the current weights with a warning when neither has a file. It
loads those weights into the model (``weights_only`` loading) and runs
``runtime.test(runtime.loaders[view])``.

After it ran, **the model holds the tested (best) weights**, not the last training
weights, as in luxonis-train: callbacks after it (export, archive) see the best model.
The checkpoint callbacks are left as they were: same best paths and scores, no new files.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runtime.callback import Callback
from runtime.checkpoint import CheckpointError, load_checkpoint
from runtime.loop import Runtime
from runtime.registry import register

log = logging.getLogger("busloop.callbacks")

__all__ = ["CHECKPOINT_KINDS", "TestOnTrainEnd", "checkpoint_callbacks"]

#: The checkpoint kinds, and the subdir the default ModelCheckpoint of each kind uses.
CHECKPOINT_KINDS: dict[str, str] = {"metric": "best_val_metric", "loss": "min_val_loss"}
VIEWS = ("train", "val", "test")
LOSS_MONITOR = "val/loss"


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


@register()
class TestOnTrainEnd(Callback):
    """Test with the best checkpoint at ``train_end``.

    ``view`` is the loader tested: "test" (default), "val" or "train"
    (``runtime.loaders[view]``; a missing loader is skipped with a warning).
    ``preferred_checkpoint`` is "metric" (the main-metric checkpoint) or "loss".
    After the run, :attr:`metrics` holds the test metrics and :attr:`checkpoint_path`
    the checkpoint whose weights were tested (None: the current weights).
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, view: str = "test", preferred_checkpoint: str = "metric") -> None:
        if view not in VIEWS:
            raise ValueError(f"view must be one of {', '.join(VIEWS)}, got {view!r}")
        if preferred_checkpoint not in CHECKPOINT_KINDS:
            raise ValueError(
                f"preferred_checkpoint must be 'metric' or 'loss', got {preferred_checkpoint!r}"
            )
        self.view = view
        self.preferred_checkpoint = preferred_checkpoint
        self.metrics: dict[str, float] | None = None
        self.checkpoint_path: str | None = None

    def on_train_end(self, runtime: Runtime) -> None:
        self.metrics, self.checkpoint_path = None, None
        if runtime.state.interrupted:
            log.warning("TestOnTrainEnd: training was interrupted; skipping the test run")
            return
        loader = runtime.loaders.get(self.view)
        if loader is None:
            available = ", ".join(sorted(runtime.loaders)) or "none"
            log.warning(
                "TestOnTrainEnd: no '%s' loader (loaders: %s); skipping the test run. The CLI "
                "provides the data factory's loaders; in code set runtime.loaders[%r] = loader",
                self.view,
                available,
                self.view,
            )
            return

        callbacks = list(checkpoint_callbacks(runtime))
        self.checkpoint_path = self._load_best(runtime, callbacks)
        saved = [(cb, _snapshot(cb)) for _, cb in callbacks]
        try:
            self.metrics = runtime.test(loader)
        finally:
            for callback, before in saved:
                _restore_if_changed(callback, before)

    # ------------------------------------------------------------------ choosing weights
    def _load_best(self, runtime: Runtime, callbacks: list[tuple[str, Any]]) -> str | None:
        """Load the preferred, else the other, best checkpoint; return its path (or None)."""
        order = [
            self.preferred_checkpoint,
            *(k for k in CHECKPOINT_KINDS if k != self.preferred_checkpoint),
        ]
        problems: list[str] = []
        for index, kind in enumerate(order):
            path, problem = self._best_path(kind, callbacks)
            if path is not None:
                try:
                    checkpoint = load_checkpoint(path, map_location=runtime.device)
                    runtime.model.load_state_dict(checkpoint["state_dict"])
                except (CheckpointError, KeyError, RuntimeError) as exc:
                    problem = f"cannot load {path}: {exc}"
                else:
                    log.info(
                        "TestOnTrainEnd: testing the '%s' loader with the best %s checkpoint %s",
                        self.view,
                        kind,
                        path,
                    )
                    return path
            problems.append(f"{kind}: {problem}")
            if index + 1 < len(order):
                log.error(
                    "TestOnTrainEnd: no usable best %s checkpoint (%s); trying the %s checkpoint",
                    kind,
                    problem,
                    order[index + 1],
                )
        log.warning(
            "TestOnTrainEnd: no best checkpoint to test (%s); testing the current weights. "
            "Keep a ModelCheckpoint on val/loss or on trainer.main_metric to test the best "
            "weights.",
            "; ".join(problems),
        )
        return None

    @staticmethod
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


# ---------------------------------------------------------------------- checkpoint state
def _snapshot(callback: Any) -> dict[str, Any]:
    state_dict = getattr(callback, "state_dict", None)
    state = state_dict() if callable(state_dict) else {}
    if not state:
        state = {"best_model_path": getattr(callback, "best_model_path", None)}
    return copy.deepcopy(state)


def _restore_if_changed(callback: Any, before: dict[str, Any]) -> None:
    """Put a checkpoint callback back the way it was if the test run changed it."""
    if _snapshot(callback) == before:
        return
    log.warning(
        "TestOnTrainEnd: the test run changed %s(monitor=%r)'s state; restoring it",
        type(callback).__name__,
        getattr(callback, "monitor", None),
    )
    load_state_dict = getattr(callback, "load_state_dict", None)
    if callable(load_state_dict) and set(before) != {"best_model_path"}:
        load_state_dict(copy.deepcopy(before))
    else:
        callback.best_model_path = before["best_model_path"]
