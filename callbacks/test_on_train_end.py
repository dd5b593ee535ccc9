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
from typing import Any

from callbacks.best_checkpoint import (
    CHECKPOINT_KINDS,
    check_preferred,
    checkpoint_callbacks,
    load_best_weights,
)
from runtime.callback import Callback
from runtime.loop import Runtime
from runtime.registry import register

log = logging.getLogger("busloop.callbacks")

__all__ = ["CHECKPOINT_KINDS", "TestOnTrainEnd", "checkpoint_callbacks"]

VIEWS = ("train", "val", "test")


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
        self.view = view
        self.preferred_checkpoint = check_preferred(preferred_checkpoint)
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
        self.checkpoint_path, problems = load_best_weights(
            runtime, self.preferred_checkpoint, "TestOnTrainEnd"
        )
        if self.checkpoint_path is None:
            log.warning(
                "TestOnTrainEnd: no best checkpoint to test (%s); testing the current weights. "
                "Keep a ModelCheckpoint on val/loss or on trainer.main_metric to test the best "
                "weights.",
                "; ".join(problems),
            )
        else:
            log.info("TestOnTrainEnd: testing the '%s' loader", self.view)
        saved = [(cb, _snapshot(cb)) for _, cb in callbacks]
        try:
            self.metrics = runtime.test(loader)
        finally:
            for callback, before in saved:
                _restore_if_changed(callback, before)


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
