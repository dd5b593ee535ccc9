"""MLflow tracker: a thin layer over MLflow's fluent API.

Needs the ``mlflow`` package. The tracking server and experiment come from MLflow's
own settings (``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``) unless given here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .base import Tracker, to_hwc_uint8

__all__ = ["MLflowTracker"]

_MLFLOW_STATUS = {"success": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name))
        else:
            flat[name] = str(value)
    return flat


class MLflowTracker(Tracker):
    """Logs params, metrics, images and artifacts to an MLflow run it starts.

    ``run_dir`` is only reported (the local run folder, when there is one); MLflow
    keeps its own copies of everything.
    """

    uploads = True

    def __init__(
        self,
        run_dir: str | os.PathLike[str] | None = None,
        run_name: str | None = None,
        *,
        experiment_name: str | None = None,
        tracking_uri: str | None = None,
    ) -> None:
        import mlflow

        self._mlflow = mlflow
        self.status = None
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if tracking_uri is not None:
            mlflow.set_tracking_uri(tracking_uri)
        if experiment_name is not None:
            mlflow.set_experiment(experiment_name)
        self.run = mlflow.start_run(run_name=run_name, nested=mlflow.active_run() is not None)

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        self._mlflow.log_params(_flatten(params))

    def log_metrics(
        self, metrics: Mapping[str, float], step: int, epoch: int | None = None
    ) -> None:
        values = {str(k): float(v) for k, v in metrics.items()}
        if epoch is not None:
            values.setdefault("epoch", float(epoch))
        self._mlflow.log_metrics(values, step=int(step))

    def log_image(self, tag: str, image: Any, step: int) -> Path | None:
        self._mlflow.log_image(to_hwc_uint8(image), artifact_file=f"images/{tag}/{int(step)}.png")
        return None

    def log_artifact(self, path: str | os.PathLike[str], kind: str) -> Path | None:
        self._mlflow.log_artifact(os.fspath(path), artifact_path=kind or None)
        return None

    def _finalize(self, status: str) -> None:
        self._mlflow.end_run(status=_MLFLOW_STATUS[status])
