"""ModelCheckpoint: keep the best ``save_top_k`` checkpoints of a metric.

Checkpoints are written after validation (or at the end of each training epoch when there
is no validation), into ``<run>/checkpoints/<subdir>/`` unless ``dirpath`` is given. This is
the minimal first version; it grows to Lightning 2.6's full ModelCheckpoint here, in
``compat``, and the default callback set of ``callbacks`` uses it.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

from runtime.callback import Callback
from runtime.distributed import is_rank_zero
from runtime.loop import Runtime
from runtime.registry import register

log = logging.getLogger("busloop.callbacks")


@register()
class ModelCheckpoint(Callback):
    """Save checkpoints when ``monitor`` improves; keep the best ``save_top_k`` files.

    ``mode`` is "min" or "max"; ``save_top_k`` -1 keeps all, 0 none; ``save_last`` also
    writes ``last.ckpt`` after every save point.
    """

    monitor_role = "checkpoint"

    def __init__(
        self,
        monitor: str = "val/loss",
        mode: str = "min",
        save_top_k: int = 3,
        dirpath: str | None = None,
        subdir: str | None = None,
        save_last: bool = False,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.monitor, self.mode, self.save_top_k = monitor, mode, save_top_k
        self.dirpath: str | None = dirpath
        self.subdir = subdir or re.sub(r"[^\w.-]+", "_", f"{mode}_{monitor}")
        self.save_last = save_last
        self.best_k_models: dict[str, float] = {}
        self.best_model_path: str = ""
        self.best_model_score: float | None = None
        self.last_model_path: str = ""
        self._has_validation = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    def on_fit_start(self, runtime: Runtime) -> None:
        if self.dirpath is None:
            base = runtime.run_dir if runtime.run_dir is not None else Path("checkpoints")
            self.dirpath = str(Path(base) / "checkpoints" / self.subdir)
        self._has_validation = getattr(runtime, "val_loader", None) is not None

    def on_validation_end(self, runtime: Runtime) -> None:
        if runtime.state.stage == "fit" and not runtime.state.sanity_checking:
            self._save(runtime)

    def on_train_epoch_end(self, runtime: Runtime) -> None:
        if not self._has_validation:
            self._save(runtime)

    def _save(self, runtime: Runtime) -> None:
        score = runtime.state.metrics.get(self.monitor)
        if score is None or math.isnan(score):
            log.warning("ModelCheckpoint: '%s' was not logged; nothing saved", self.monitor)
            return
        if self.save_top_k != 0 and self._improves(score):
            st = runtime.state
            name = f"epoch={st.epoch}-step={st.global_step}-{_slug(self.monitor)}={score:.4f}.ckpt"
            path = str(Path(self.dirpath or ".") / name)
            self.best_k_models[path] = score
            self._drop_worst()
            self.best_model_path = min(self.best_k_models, key=self._rank)
            self.best_model_score = self.best_k_models[self.best_model_path]
            runtime.save_checkpoint(path, monitor=self.monitor, score=score)
        if self.save_last:
            self.last_model_path = str(Path(self.dirpath or ".") / "last.ckpt")
            runtime.save_checkpoint(self.last_model_path)

    def _rank(self, path: str) -> float:
        score = self.best_k_models[path]
        return score if self.mode == "min" else -score

    def _improves(self, score: float) -> bool:
        if self.save_top_k < 0 or len(self.best_k_models) < self.save_top_k:
            return True
        worst = max(self.best_k_models, key=self._rank)
        value = score if self.mode == "min" else -score
        return value < self._rank(worst)

    def _drop_worst(self) -> None:
        while 0 < self.save_top_k < len(self.best_k_models):
            worst = max(self.best_k_models, key=self._rank)
            del self.best_k_models[worst]
            if is_rank_zero():
                Path(worst).unlink(missing_ok=True)

    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "mode": self.mode,
            "dirpath": self.dirpath,
            "best_k_models": dict(self.best_k_models),
            "best_model_path": self.best_model_path,
            "best_model_score": self.best_model_score,
            "last_model_path": self.last_model_path,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.dirpath = state_dict.get("dirpath", self.dirpath)
        self.best_k_models = dict(state_dict.get("best_k_models", {}))
        self.best_model_path = state_dict.get("best_model_path", "")
        self.best_model_score = state_dict.get("best_model_score")
        self.last_model_path = state_dict.get("last_model_path", "")


def _slug(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)
