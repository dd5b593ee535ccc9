"""Experiment trackers: where a run's metrics, images, config and artifacts go.

``create_tracker`` builds the tracker the configuration asks for
(``tracker: {save_directory, run_name, backends}``): the local file tracker by
default, TensorBoard and MLflow when their packages are installed, several at once
through :class:`MultiTracker`, and a :class:`NullTracker` on every rank but zero.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from ..distributed import is_rank_zero
from ..errors import ConfigError
from .base import FINAL_STATUSES, MultiTracker, NullTracker, Tracker
from .guard import GuardedTracker
from .local import LocalTracker, new_run_dir

log = logging.getLogger("busloop.tracking")

__all__ = [
    "BACKENDS",
    "FINAL_STATUSES",
    "GuardedTracker",
    "LocalTracker",
    "MultiTracker",
    "NullTracker",
    "Tracker",
    "check_backends",
    "create_tracker",
]

#: The backend names ``create_tracker`` knows.
BACKENDS = ("local", "tensorboard", "mlflow")


def _missing(backend: str) -> ConfigError:
    return ConfigError(
        f"tracker.backends: '{backend}' needs the {backend} package: "
        f"pip install 'busloop[{backend}]' (or pip install {backend})"
    )


def _check_available(backend: str) -> None:
    """Raise a ConfigError (a ValueError) naming the pip command when ``backend``'s package
    is missing."""
    if backend == "tensorboard":
        try:
            importlib.import_module("torch.utils.tensorboard")
        except ImportError:
            raise _missing(backend) from None
    elif backend == "mlflow":
        if "mlflow" in sys.modules:  # imported already (or blocked with None)
            available = sys.modules["mlflow"] is not None
        else:  # mlflow is slow to import: look, don't import, on every rank
            available = importlib.util.find_spec("mlflow") is not None
        if not available:
            raise _missing(backend)


def check_backends(backends: Sequence[str]) -> list[str]:
    """The backend names (lower case, once each), checked: an unknown name or a backend
    whose package is missing is a ConfigError saying which extra to install."""
    if isinstance(backends, str):
        backends = [backends]
    names: list[str] = []
    for backend in backends:
        name = str(backend).strip().lower()
        if name not in BACKENDS:
            raise ConfigError(
                f"tracker.backends: unknown backend {backend!r}; "
                f"valid backends are {', '.join(repr(b) for b in BACKENDS)}"
            )
        if name not in names:
            names.append(name)
    for name in names:
        _check_available(name)
    return names


def create_tracker(
    save_directory: str | os.PathLike[str] = "runs",
    run_name: str | None = None,
    backends: Sequence[str] = ("local",),
    *,
    run_dir: str | os.PathLike[str] | None = None,
) -> Tracker:
    """Build the tracker for a run from the ``tracker`` config section.

    Every rank checks ``backends`` (so a typo fails everywhere alike); only rank zero
    creates a run folder, the others get a :class:`NullTracker`. ``run_dir`` reopens an
    existing run folder (resume) instead of numbering a new one. One backend gives its
    tracker, several a :class:`MultiTracker` sharing one run folder, none a NullTracker.
    TensorBoard and MLflow come wrapped in a :class:`GuardedTracker`: their failures are
    warned about and retried, never raised into training.
    """
    names = check_backends(backends)
    if not is_rank_zero() or not names:
        return NullTracker()

    trackers: list[Tracker] = []
    problems: list[str] = []
    remote: Tracker | str
    folder: Path | None = Path(run_dir) if run_dir is not None else None
    if "local" in names:
        local = LocalTracker(save_directory, run_name, run_dir=folder)
        folder = local.run_dir
        trackers.append(local)
    for name in names:
        if name == "tensorboard":
            from .tensorboard import TensorBoardTracker

            if folder is None:
                folder = new_run_dir(save_directory, run_name)
            remote = _start_remote("TensorBoardTracker", partial(TensorBoardTracker, folder))
        elif name == "mlflow":
            from .mlflow import MLflowTracker

            remote = _start_remote("MLflowTracker", partial(MLflowTracker, folder, run_name))
        else:
            continue
        if isinstance(remote, str):  # it could not start: training goes on without it
            problems.append(remote)
        else:
            trackers.append(GuardedTracker(remote))
    if not trackers:
        return NullTracker()
    tracker = trackers[0] if len(trackers) == 1 else MultiTracker(trackers)
    trackers[0].problems = (*trackers[0].problems, *problems)  # status.txt records them
    return tracker


def _start_remote(name: str, start: Callable[[], Tracker]) -> Tracker | str:
    """Start a remote backend; when it raises (server down, no network), warn and return
    the problem to record instead, so that a tracking server never stops a run."""
    try:
        return start()
    except Exception as exc:
        problem = f"tracker {name}: could not start ({type(exc).__name__}: {exc}); the run went on without it"
        log.warning("%s", problem)
        return problem
