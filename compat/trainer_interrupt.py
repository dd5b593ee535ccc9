"""Ctrl+C and other errors under :class:`compat.Trainer`, handled as Lightning 2.6's trainer does.

Lightning funnels every ``fit`` / ``validate`` / ``test`` / ``predict`` call through
``_call_and_handle_interrupt``. On any error it sets ``trainer.state.status`` to
``"interrupted"`` *before* the callbacks' ``on_exception`` run, then calls the datamodule's
``on_exception``. On a ``KeyboardInterrupt`` it also prints "Detected KeyboardInterrupt,
attempting graceful shutdown ...", ignores further Ctrl+C while it shuts down (the hooks, the
teardown), restores the handler, and ends the program with ``exit(1)`` (``SystemExit(1)``)
instead of re-raising. Busloop's Runtime already emits ``exception`` (the callbacks'
``on_exception``) and finalises the tracker; :class:`Shutdown` adds the rest, one per call.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any, NoReturn

from runtime import distributed as dist

__all__ = ["MESSAGE", "Shutdown", "datamodule_on_exception"]

#: What Lightning prints (rank zero) when a call is interrupted with Ctrl+C.
MESSAGE = "\nDetected KeyboardInterrupt, attempting graceful shutdown ..."


class Shutdown:
    """The shutdown of one interrupted call: announced once, Ctrl+C ignored until it is done."""

    def __init__(self) -> None:
        self.announced = False
        self.stage: str | None = None
        """``trainer.state.stage`` when Ctrl+C came: Lightning leaves it set after the call."""
        self._previous: Any = None
        self._ignoring = False

    def begin(self, stage: str | None = None) -> None:
        """Print Lightning's message (rank zero) and ignore SIGINT until :meth:`finish` (only
        the main thread may change signal handlers; elsewhere the handler is left alone)."""
        if self.announced:
            return
        self.announced, self.stage = True, stage
        if dist.is_rank_zero():
            print(MESSAGE, file=sys.stderr, flush=True)
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
            self._ignoring = True

    def restore(self) -> None:
        """Put back the SIGINT handler :meth:`begin` replaced."""
        if self._ignoring:
            signal.signal(signal.SIGINT, self._previous)
            self._ignoring = False

    def finish(self) -> NoReturn:
        """End the interrupted call as Lightning does: handler restored, ``exit(1)``."""
        self.begin()  # an interrupt the Runtime did not see (before or after its run) is announced too
        self.restore()
        sys.exit(1)


def datamodule_on_exception(datamodule: Any, exception: BaseException) -> None:
    """Lightning calls the datamodule's ``on_exception`` after the callbacks'."""
    hook = getattr(datamodule, "on_exception", None)
    if callable(hook):
        hook(exception)
