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
from runtime.errors import ConfigError
from runtime.tracking import LocalTracker, NullTracker, Tracker

__all__ = [
    "FolderLogger",
    "LightningLoggerTracker",
    "LoggerFront",
    "is_lightning_logger",
    "log_hparams",
    "next_version",
    "open_tracker",
]


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


class LoggerFront:
    """``trainer.logger`` / ``trainer.loggers`` / ``trainer.log_dir`` of :class:`compat.Trainer`,
    readable and writable as on Lightning's trainer. Setting them (``trainer.logger =
    CSVLogger(...)``, ``trainer.logger = None``, ``trainer.loggers = [...]``) changes the
    ``logger=`` setting the next ``fit`` / ``validate`` / ``test`` / ``predict`` opens its tracker
    from; a call already running keeps the tracker it opened."""

    _logger_arg: Any
    _version_dir: Path | None
    _tracker: Tracker | None
    _args: Any

    def _run_dir(self) -> Path | None:
        """The run folder: Lightning's ``lightning_logs/version_<N>`` for ``logger=True``
        (numbered on first use), the Lightning logger's or tracker's folder, else None."""
        if self._logger_arg is True:
            if self._version_dir is None:
                root = Path(self._args.default_root_dir) / "lightning_logs"
                self._version_dir = root / f"version_{next_version(root)}"
            return self._version_dir
        if self._logger_arg is False:
            return None
        first = self._logger_arg[0] if isinstance(self._logger_arg, list | tuple) else self._logger_arg
        folder = getattr(first, "log_dir", None) if is_lightning_logger(first) else getattr(first, "run_dir", None)
        return Path(folder) if folder else None

    def _tracker_now(self) -> Tracker | None:
        return self._tracker

    @property
    def logger(self) -> Any:
        loggers = self.loggers
        return loggers[0] if loggers else None

    @logger.setter
    def logger(self, logger: Any) -> None:
        self.loggers = [logger] if logger else []

    @property
    def loggers(self) -> list[Any]:
        """Lightning's view: the user's Lightning loggers, or the run folder as one logger."""
        arg = self._logger_arg
        if arg is False:
            return []
        if arg is not True:
            given = list(arg) if isinstance(arg, list | tuple) else [arg]
            if all(is_lightning_logger(g) for g in given):
                return given
        return [self._folder_logger]

    @loggers.setter
    def loggers(self, loggers: Sequence[Any] | None) -> None:
        """Lightning loggers and busloop trackers; ``trainer.logger`` read back (the run folder)
        keeps the folder it stands for; None or ``[]``: no logger."""
        given = list(loggers) if loggers else []
        own = [g for g in given if isinstance(g, FolderLogger) and g._trainer is self]
        if own and len(given) > 1:
            raise ConfigError(
                "trainer.loggers: the run-folder logger (trainer.logger of logger=True or of a busloop "
                "tracker) cannot be combined with other loggers; give Lightning loggers or busloop trackers"
            )
        bad = [g for g in given if not (isinstance(g, Tracker | FolderLogger) or is_lightning_logger(g))]
        if bad:
            raise ConfigError(
                f"trainer.loggers: {type(bad[0]).__name__} is neither a Lightning logger nor a busloop Tracker"
            )
        if own:
            return  # the run folder it stands for stays the logger
        self._logger_arg = (given[0] if len(given) == 1 else given) if given else False

    @property
    def _folder_logger(self) -> FolderLogger:
        if "_folder_logger_obj" not in self.__dict__:
            self.__dict__["_folder_logger_obj"] = FolderLogger(self)
        return self.__dict__["_folder_logger_obj"]  # type: ignore[no-any-return]

    @property
    def log_dir(self) -> str:
        """The logger's folder (Lightning's ``trainer.log_dir``), else ``default_root_dir``."""
        run_dir = self._run_dir()
        return str(run_dir) if run_dir is not None else str(self._args.default_root_dir)
