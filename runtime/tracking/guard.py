"""GuardedTracker: a remote tracking backend whose failures never stop training.

A tracking server that is down, slow or answering errors must not end a run that has
trained for hours. :func:`runtime.tracking.create_tracker` wraps every backend that talks
to something beyond the run folder (TensorBoard's writer, MLflow) in a
:class:`GuardedTracker`:

- a call that raises is logged once as a warning (the first failure of the run), and the
  call is kept in a bounded buffer instead of being lost;
- while calls are buffered, new calls queue behind them (the order of records is kept),
  and the buffer is retried at most every ``retry_interval`` seconds, so a dead server
  costs one failed attempt per interval, not one per logged step; when a retry succeeds
  the buffer drains and an info line says so;
- at the end (``finalize``) the buffer is retried once more, then the backend is closed;
  whatever could not be sent is reported in :attr:`problems`, which the run folder's
  ``status.txt`` records under the final status (see :class:`runtime.tracking.MultiTracker`).

An artifact whose file is gone when its retry comes (a checkpoint that left the top k
meanwhile) is dropped and counted, not retried forever.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .base import Tracker

__all__ = ["GuardedTracker"]

log = logging.getLogger("busloop.tracking")


class GuardedTracker(Tracker):
    """Wraps ``backend`` so that its errors are warned about, buffered and retried, never raised.

    ``buffer`` bounds the calls kept while the backend fails (the oldest are dropped, and
    counted, beyond it); ``retry_interval`` is the least time in seconds between retries.
    """

    def __init__(self, backend: Tracker, *, buffer: int = 10_000, retry_interval: float = 30.0) -> None:
        self.backend = backend
        self.name = type(backend).__name__
        self.run_dir, self.uploads, self.status_path = backend.run_dir, backend.uploads, backend.status_path
        self.status = None
        self.retry_interval = retry_interval
        self._pending: deque[tuple[str, tuple[Any, ...]]] = deque()
        self._limit = buffer
        self._failures = 0
        self._dropped = 0
        self._first_error: str | None = None
        self._next_retry = 0.0

    # ------------------------------------------------------------------ the guard
    def _call(self, method: str, *args: Any) -> Any:
        """Call the backend; on an error warn (once), buffer the call and return None."""
        if self._pending:
            self._queue(method, args)
            if time.monotonic() >= self._next_retry:
                self._flush()
            return None
        try:
            return getattr(self.backend, method)(*args)
        except Exception as exc:
            self._failed(method, exc)
            self._queue(method, args)
            return None

    def _queue(self, method: str, args: tuple[Any, ...]) -> None:
        if len(self._pending) >= self._limit:
            self._pending.popleft()
            self._dropped += 1
        self._pending.append((method, args))

    def _failed(self, method: str, exc: Exception) -> None:
        self._failures += 1
        self._next_retry = time.monotonic() + self.retry_interval
        if self._first_error is None:
            self._first_error = f"{method}: {type(exc).__name__}: {exc}"
            log.warning(
                "Tracker %s failed (%s); training goes on, its records are buffered and "
                "retried every %gs (this warning is not repeated)",
                self.name, self._first_error, self.retry_interval,
            )

    def _flush(self) -> bool:
        """Send the buffered calls in order; stop at the first failure. True when empty."""
        sent = 0
        while self._pending:
            method, args = self._pending[0]
            try:
                getattr(self.backend, method)(*args)
            except FileNotFoundError:  # an artifact that is gone by now: nothing to send
                self._dropped += 1
            except Exception as exc:
                self._failed(method, exc)
                return False
            else:
                sent += 1
            self._pending.popleft()
        if sent:
            log.info("Tracker %s is reachable again: %d buffered record(s) sent", self.name, sent)
        return True

    # ------------------------------------------------------------------ the Tracker API
    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        self._call("log_hyperparams", dict(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int, epoch: int | None = None) -> None:
        self._call("log_metrics", dict(metrics), step, epoch)

    def log_image(self, tag: str, image: Any, step: int) -> Path | None:
        return self._call("log_image", tag, image, step)  # type: ignore[no-any-return]

    def log_artifact(self, path: str | os.PathLike[str], kind: str) -> Path | None:
        return self._call("log_artifact", path, kind)  # type: ignore[no-any-return]

    def save_config(self, cfg_dict: Mapping[str, Any]) -> None:
        self._call("save_config", cfg_dict)

    def resume_at(self, step: int) -> None:
        self._call("resume_at", step)

    def flush(self, checkpoint_step: int | None = None) -> None:
        """Forwarded while nothing is buffered; a failure counts as any failed call, but no
        flush is queued: the buffered records go out with their own retry."""
        if self._pending:
            return
        try:
            self.backend.flush(checkpoint_step)
        except Exception as exc:
            self._failed("flush", exc)

    def _finalize(self, status: str) -> None:
        self._flush()
        try:
            self.backend.finalize(status)
        except Exception as exc:
            self._failed("finalize", exc)
        if self._failures:
            unsent = len(self._pending) + self._dropped
            outcome = f"{unsent} record(s) not sent" if unsent else "all records sent after retrying"
            problem = f"tracker {self.name}: {self._failures} failed call(s), {outcome}; first error: {self._first_error}"
            self.problems = (*self.problems, problem)
            log.warning("%s", problem)

    def __getattr__(self, name: str) -> Any:
        """The backend's own attributes (an MLflow tracker's ``run``) read through the guard."""
        if name == "backend":
            raise AttributeError(name)
        return getattr(self.backend, name)

    def __repr__(self) -> str:
        return f"GuardedTracker({self.backend!r})"
