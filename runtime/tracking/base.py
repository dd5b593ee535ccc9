"""The tracker interface, the do-nothing tracker and the fan-out tracker.

A tracker records one training run: hyperparameters, metrics per step, images,
artifacts (checkpoints, exported models) and how the run ended. The runtime talks to
exactly one tracker; :class:`MultiTracker` fans out to several backends and
:class:`NullTracker` stands in on ranks other than zero.
"""

from __future__ import annotations

import abc
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "FINAL_STATUSES",
    "MultiTracker",
    "NullTracker",
    "Tracker",
    "to_hwc_uint8",
]

log = logging.getLogger("busloop.tracking")

#: The ways a run can end, as passed to :meth:`Tracker.finalize`.
FINAL_STATUSES = ("success", "failed", "interrupted")


class Tracker(abc.ABC):
    """Records one run. Subclasses implement the ``log_*`` methods and ``_finalize``.

    ``run_dir`` is the run's local folder (checkpoints and exports go there) or None
    for a tracker without one. ``status`` is None while the run goes on and the final
    status once :meth:`finalize` was called.

    A tracker is also a context manager that finalises itself as "success",
    "interrupted" (``KeyboardInterrupt``) or "failed" (any other exception).
    """

    run_dir: Path | None = None
    status: str | None = None
    uploads: bool = False
    """Whether ``log_artifact`` sends files somewhere beyond the run folder (a tracking
    server or store), so that "uploaded" is true when said."""
    problems: tuple[str, ...] = ()
    """What went wrong with the tracking itself during the run (a remote backend that
    failed, see :class:`runtime.tracking.guard.GuardedTracker`); a tracker with a status
    file records them under the final status."""
    status_path: Path | None = None
    """The file holding the run's status ("running", then the final one), when the tracker
    keeps one: a hard exit (a second Ctrl+C) writes its final status there directly."""

    @abc.abstractmethod
    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        """Record the run's hyperparameters (a possibly nested dict)."""

    @abc.abstractmethod
    def log_metrics(
        self, metrics: Mapping[str, float], step: int, epoch: int | None = None
    ) -> None:
        """Record scalar metrics at ``step`` (and ``epoch``, when known)."""

    @abc.abstractmethod
    def log_image(self, tag: str, image: Any, step: int) -> Path | None:
        """Record an image: an HWC uint8 NumPy array or a CHW float tensor in [0, 1].

        Returns the PNG's local path, if the tracker wrote one.
        """

    @abc.abstractmethod
    def log_artifact(self, path: str | os.PathLike[str], kind: str) -> Path | None:
        """Record a file the run produced (``kind``: "checkpoint", "onnx", "archive" ...).

        Returns where the tracker keeps it locally, if it does.
        """

    def save_config(self, cfg_dict: Mapping[str, Any]) -> None:  # noqa: B027
        """Record the resolved configuration. Trackers without a place for it ignore it."""

    def resume_at(self, step: int) -> None:  # noqa: B027
        """The run continues from a checkpoint taken at ``step``: records after it (written
        by the continuation that is being replaced) are dropped where the tracker can."""

    def flush(self, checkpoint_step: int | None = None) -> None:  # noqa: B027
        """Put the records logged so far where they are read (a file, a server) now.

        A tracker may hold records back to write them together (the local tracker keeps
        metric rows in memory for a few seconds); the runtime calls this where what is on
        disk must be current: at each training epoch's end, before every checkpoint write
        and at the end of each run. ``checkpoint_step``: a checkpoint of that global step
        is about to be written; records logged later at that step or before it (the step's
        own row is logged after a checkpoint written at its batch end) are written at once
        too: a resume from the checkpoint keeps them and does not log them again. Trackers
        whose library buffers on its own schedule (TensorBoard, MLflow) ignore it.
        """

    def finalize(self, status: str) -> None:
        """Close the run as ``status`` ("success", "failed" or "interrupted").

        Only the first call counts; later calls do nothing.
        """
        if status not in FINAL_STATUSES:
            raise ValueError(
                f"tracker status must be one of {', '.join(FINAL_STATUSES)}, not {status!r}"
            )
        if self.status is not None:
            return
        self.status = status
        self._finalize(status)

    def _finalize(self, status: str) -> None:  # noqa: B027
        """Flush and close whatever the tracker holds open; called once."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.finalize("success")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finalize("interrupted")
        else:
            self.finalize("failed")


class NullTracker(Tracker):
    """A tracker that records nothing: the tracker of every rank but zero."""

    def __init__(self) -> None:
        self.run_dir = None
        self.status = None

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        return None

    def log_metrics(
        self, metrics: Mapping[str, float], step: int, epoch: int | None = None
    ) -> None:
        return None

    def log_image(self, tag: str, image: Any, step: int) -> Path | None:
        return None

    def log_artifact(self, path: str | os.PathLike[str], kind: str) -> Path | None:
        return None

    def __repr__(self) -> str:
        return "NullTracker()"


class MultiTracker(Tracker):
    """Fans every call out to several trackers, in order.

    ``run_dir`` is the first child's that has one, and so are the paths returned by
    ``log_image`` / ``log_artifact``. When a child raises, the others still get the
    call and the first error is re-raised afterwards.
    """

    def __init__(self, trackers: Sequence[Tracker]) -> None:
        self.trackers: list[Tracker] = list(trackers)
        self.status = None
        self.run_dir = next((t.run_dir for t in self.trackers if t.run_dir is not None), None)
        self.uploads = any(t.uploads for t in self.trackers)
        self.status_path = next((t.status_path for t in self.trackers if t.status_path is not None), None)

    def _each(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        return self._each_of(self.trackers, method, *args, **kwargs)

    @staticmethod
    def _each_of(trackers: Sequence[Tracker], method: str, *args: Any, **kwargs: Any) -> list[Any]:
        results: list[Any] = []
        first_error: BaseException | None = None
        for tracker in trackers:
            try:
                results.append(getattr(tracker, method)(*args, **kwargs))
            except Exception as err:
                if first_error is None:
                    first_error = err
                else:
                    log.error("%s.%s failed: %s", type(tracker).__name__, method, err)
                results.append(None)
        if first_error is not None:
            raise first_error
        return results

    @staticmethod
    def _first_path(results: list[Any]) -> Path | None:
        return next((r for r in results if r is not None), None)

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        self._each("log_hyperparams", params)

    def log_metrics(
        self, metrics: Mapping[str, float], step: int, epoch: int | None = None
    ) -> None:
        self._each("log_metrics", metrics, step, epoch)

    def log_image(self, tag: str, image: Any, step: int) -> Path | None:
        return self._first_path(self._each("log_image", tag, image, step))

    def log_artifact(self, path: str | os.PathLike[str], kind: str) -> Path | None:
        return self._first_path(self._each("log_artifact", path, kind))

    def save_config(self, cfg_dict: Mapping[str, Any]) -> None:
        self._each("save_config", cfg_dict)

    def resume_at(self, step: int) -> None:
        self._each("resume_at", step)

    def flush(self, checkpoint_step: int | None = None) -> None:
        self._each("flush", checkpoint_step)

    def _finalize(self, status: str) -> None:
        """Finalise the others first, then the one holding the status file, which records
        their problems under the final status (and its log gets their last lines)."""
        last = [t for t in self.trackers if t.status_path is not None and t.status_path == self.status_path][:1]
        first = [t for t in self.trackers if t not in last]
        for tracker in first:
            self._each_of([tracker], "finalize", status)
        self.problems = tuple(p for t in self.trackers for p in t.problems)
        for tracker in last:
            tracker.problems = (*tracker.problems, *(p for t in first for p in t.problems))
        self._each_of(last, "finalize", status)

    def __repr__(self) -> str:
        return f"MultiTracker({self.trackers!r})"


def to_hwc_uint8(image: Any) -> Any:
    """Convert an image to an HWC (or HW) uint8 NumPy array, ready for PIL.

    Accepts a torch tensor laid out CHW (or HW), float in [0, 1] or uint8, and a NumPy
    array laid out HWC (or HW), uint8 or float in [0, 1]. Single-channel images come
    back as HW.
    """
    import numpy as np

    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        torch = None  # type: ignore[assignment]

    if torch is not None and isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.ndim == 4 and tensor.shape[0] == 1:
            tensor = tensor[0]
        if tensor.ndim == 3:
            tensor = tensor.permute(1, 2, 0)
        elif tensor.ndim != 2:
            raise ValueError(f"image tensor must be CHW or HW, got shape {tuple(image.shape)}")
        if tensor.dtype != torch.uint8:
            tensor = (tensor.float().clamp(0, 1) * 255).round().to(torch.uint8)
        array = tensor.contiguous().numpy()
    else:
        array = np.asarray(image)
        if array.ndim not in (2, 3):
            raise ValueError(f"image array must be HWC or HW, got shape {array.shape}")
        if array.dtype != np.uint8:
            if np.issubdtype(array.dtype, np.floating):
                array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
            else:
                array = np.clip(array, 0, 255).astype(np.uint8)
    if array.ndim == 3:
        channels = array.shape[2]
        if channels == 1:
            array = array[:, :, 0]
        elif channels not in (3, 4):
            raise ValueError(f"image must have 1, 3 or 4 channels, got shape {array.shape} (HWC)")
    return np.ascontiguousarray(array)
