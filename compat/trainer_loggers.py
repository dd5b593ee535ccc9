"""The loggers of :class:`compat.Trainer`: Lightning's ``logger=`` argument onto busloop's tracker.

- ``logger=True`` (Lightning's default): busloop's local tracker in Lightning's folder,
  ``<default_root_dir>/lightning_logs/version_<N>`` (checkpoints in its ``checkpoints/``), seen
  by Lightning code as :class:`FolderLogger` (``save_dir`` / ``name`` / ``version`` / ``log_dir``).
- ``logger=False``: no tracker (busloop's :class:`~runtime.tracking.NullTracker`).
- Lightning loggers (``CSVLogger``, ``TensorBoardLogger``, any ``lightning.pytorch.loggers.Logger``):
  :class:`LightningLoggerTracker` hands busloop's metrics and hyperparameters to them;
  ``trainer.logger`` is the user's own logger object.
- A busloop :class:`~runtime.tracking.Tracker`: used as it is (the caller finalises it).

A tracker the front creates lives for one ``fit`` / ``validate`` / ``test`` / ``predict`` call and
is finalised at its end; the next call reopens the same folder, as Lightning's logger keeps its
version across calls.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from compat.trainer_parts import TrackerLogger
from runtime.tracking import LocalTracker, NullTracker, Tracker

__all__ = ["FolderLogger", "LightningLoggerTracker", "is_lightning_logger", "log_hparams", "next_version", "open_tracker"]


def is_lightning_logger(obj: object) -> bool:
    """Whether ``obj`` looks like a Lightning logger (``log_metrics`` + ``log_hyperparams`` +
    ``save_dir``) rather than a busloop Tracker."""
    return not isinstance(obj, Tracker) and all(
        hasattr(obj, name) for name in ("log_metrics", "log_hyperparams", "finalize")
    )


def next_version(folder: str | os.PathLike[str]) -> int:
    """Lightning's next ``version_<N>`` under ``folder`` (0 when there is none)."""
    path = Path(folder)
    found = [int(m.group(1)) for p in path.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))]
    return max(found) + 1 if found else 0


class LightningLoggerTracker(Tracker):
    """Lightning loggers as one busloop tracker: metrics (with ``epoch``, as Lightning adds it)
    and hyperparameters go to each; images and artifacts have no Lightning counterpart."""

    def __init__(self, loggers: Sequence[Any]) -> None:
        self.loggers = list(loggers)
        self.status = None
        log_dir = getattr(self.loggers[0], "log_dir", None) if self.loggers else None
        self.run_dir = Path(log_dir) if log_dir else None

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_hyperparams(dict(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int, epoch: int | None = None) -> None:
        values = dict(metrics) if epoch is None else {**metrics, "epoch": epoch}
        for logger in self.loggers:
            logger.log_metrics(values, step=step)

    def log_image(self, tag: str, image: Any, step: int) -> Path | None:
        return None

    def log_artifact(self, path: str | os.PathLike[str], kind: str) -> Path | None:
        return None

    def _finalize(self, status: str) -> None:
        for logger in self.loggers:
            logger.save()
            logger.finalize(status)

    def __repr__(self) -> str:
        return f"LightningLoggerTracker({self.loggers!r})"


class _TrackerSide:
    """What :class:`TrackerLogger` reads on a Runtime (tracker, run folder, loop state), read
    on the front instead, so the logger exists before and between runs."""

    def __init__(self, trainer: Any) -> None:
        self._trainer = trainer

    @property
    def tracker(self) -> Tracker | None:
        return self._trainer._tracker_now()

    @property
    def run_dir(self) -> Path | None:
        return self._trainer._run_dir()

    @property
    def state(self) -> Any:
        return self._trainer._rt.state


class FolderLogger(TrackerLogger):
    """``trainer.logger`` for ``logger=True`` or a busloop tracker: the run folder named as
    Lightning names its logger's (``save_dir/name/version_<N>``) when it is Lightning's layout."""

    def __init__(self, trainer: Any) -> None:
        super().__init__(_TrackerSide(trainer))  # type: ignore[arg-type]
        self._trainer = trainer

    def __repr__(self) -> str:
        return f"FolderLogger({self.log_dir!r})"

    @property
    def save_dir(self) -> str | None:
        run_dir = self._trainer._run_dir()
        if run_dir is None:
            return None
        return str(run_dir.parent.parent if run_dir.name.startswith("version_") else run_dir.parent)

    @property
    def name(self) -> str:
        run_dir = self._trainer._run_dir()
        if run_dir is None:
            return ""
        return run_dir.parent.name if run_dir.name.startswith("version_") else run_dir.name

    @property
    def version(self) -> Any:
        run_dir = self._trainer._run_dir()
        if run_dir is not None and run_dir.name.startswith("version_"):
            return int(run_dir.name.removeprefix("version_"))
        return ""


def open_tracker(logger: Any, run_dir: Path | None) -> tuple[Tracker, bool]:
    """The tracker of one call for the front's ``logger`` setting, and whether the front owns
    (and so finalises) it."""
    if logger is False:
        return NullTracker(), False
    if logger is True:
        assert run_dir is not None
        return LocalTracker(run_dir=run_dir), True
    loggers = list(logger) if isinstance(logger, list | tuple) else [logger]
    trackers = [t for t in loggers if isinstance(t, Tracker)]
    lightning = [x for x in loggers if not isinstance(x, Tracker)]
    if trackers and lightning:
        from runtime.tracking import MultiTracker

        return MultiTracker([*trackers, LightningLoggerTracker(lightning)]), False
    if trackers:
        return (trackers[0] if len(trackers) == 1 else _multi(trackers)), False
    return LightningLoggerTracker(lightning), True


def _multi(trackers: list[Tracker]) -> Tracker:
    from runtime.tracking import MultiTracker

    return MultiTracker(trackers)


def log_hparams(tracker: Tracker | None, model: Any, datamodule: Any) -> None:
    """Lightning's ``enable_autolog_hparams``: the module's and the datamodule's ``hparams``."""
    params: dict[str, Any] = {}
    for owner in (model, datamodule):
        hparams = getattr(owner, "hparams", None)
        if hparams:
            params.update(dict(hparams))
    if params and tracker is not None:
        tracker.log_hyperparams(params)
