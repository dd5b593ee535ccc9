"""Timer: Lightning 2.6's time-limit callback, natively on busloop's bus.

Tracks the wall time of training, validation (the sanity check's included, as in Lightning),
test and predict under Lightning's ``RunningStage`` names and stops training once ``duration`` has passed,
checked after every training batch (``interval="step"``) or epoch (``"epoch"``). Its state,
``{"time_elapsed": {stage: seconds}}`` under the key ``Timer``, is Lightning's; on resume the
training time already spent counts against the limit. Under ``torchrun`` rank zero's clock
decides for every rank.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import timedelta
from typing import Any

from runtime import distributed as dist
from runtime.callback import Callback
from runtime.loop import Runtime
from runtime.registry import register

log = logging.getLogger("busloop.callbacks")

__all__ = ["Timer"]

#: Lightning's RunningStage values, in its order (the keys of ``state_dict()["time_elapsed"]``).
STAGES = ("train", "sanity_check", "validate", "test", "predict")
INTERVALS = ("step", "epoch")


def _duration(value: str | timedelta | dict[str, int] | None) -> timedelta | None:
    if value is None or isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        match = re.fullmatch(r"(\d+):(\d\d):(\d\d):(\d\d)", value.strip())
        if not match:
            raise ValueError(
                f"Timer: duration={value!r} is not a valid duration; expected a string in the format DD:HH:MM:SS"
            )
        days, hours, minutes, seconds = (int(part) for part in match.groups())
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if isinstance(value, dict):
        try:
            return timedelta(**value)
        except TypeError as exc:
            raise ValueError(f"Timer: duration={value!r} is not a valid timedelta dict: {exc}") from None
    raise ValueError(f"Timer: duration must be 'DD:HH:MM:SS', a timedelta or a dict, got {value!r}")


@register()
class Timer(Callback):
    """Stop training after ``duration`` ("DD:HH:MM:SS", a timedelta, or a dict such as
    ``{"hours": 2}``; None only measures). ``time_elapsed(stage)``, ``time_remaining(stage)``,
    ``start_time(stage)`` and ``end_time(stage)`` answer in seconds (``time.monotonic``)."""

    def __init__(
        self,
        duration: str | timedelta | dict[str, int] | None = None,
        interval: str = "step",
        verbose: bool = True,
    ) -> None:
        if interval not in INTERVALS:
            raise ValueError(f"Timer: interval={interval!r} is not supported; possible choices are step, epoch")
        limit = _duration(duration)
        self._duration = limit.total_seconds() if limit is not None else None
        self._interval = interval
        self._verbose = verbose
        self._start_time: dict[str, float | None] = dict.fromkeys(STAGES)
        self._end_time: dict[str, float | None] = dict.fromkeys(STAGES)
        self._offset = 0.0

    def start_time(self, stage: str = "train") -> float | None:
        return self._start_time[_stage(stage)]

    def end_time(self, stage: str = "train") -> float | None:
        return self._end_time[_stage(stage)]

    def time_elapsed(self, stage: str = "train") -> float:
        """Seconds spent in ``stage`` (training includes the time before a resume)."""
        stage = _stage(stage)
        start, end = self._start_time[stage], self._end_time[stage]
        offset = self._offset if stage == "train" else 0
        if start is None:
            return offset
        return (time.monotonic() if end is None else end) - start + offset

    def time_remaining(self, stage: str = "train") -> float | None:
        return None if self._duration is None else self._duration - self.time_elapsed(stage)

    # ------------------------------------------------------------------ events
    def on_setup(self, runtime: Runtime, stage: str) -> None:
        if stage == "fit" and (self._duration is None or self._interval != "step"):
            runtime.bus.disconnect("train_batch_end", self.on_train_batch_end)

    def on_fit_start(self, runtime: Runtime) -> None:
        if self._duration is not None:
            self._check(runtime)

    def on_train_start(self, runtime: Runtime) -> None:
        self._start_time["train"] = time.monotonic()

    def on_train_end(self, runtime: Runtime) -> None:
        self._end_time["train"] = time.monotonic()

    def on_validation_start(self, runtime: Runtime) -> None:
        self._start_time["validate"] = time.monotonic()

    def on_validation_end(self, runtime: Runtime) -> None:
        self._end_time["validate"] = time.monotonic()

    def on_test_start(self, runtime: Runtime) -> None:
        self._start_time["test"] = time.monotonic()

    def on_test_end(self, runtime: Runtime) -> None:
        self._end_time["test"] = time.monotonic()

    def on_predict_start(self, runtime: Runtime) -> None:
        self._start_time["predict"] = time.monotonic()

    def on_predict_end(self, runtime: Runtime) -> None:
        self._end_time["predict"] = time.monotonic()

    def on_train_batch_end(self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Connected only with a duration and ``interval="step"``."""
        self._check(runtime)

    def on_train_epoch_end(self, runtime: Runtime) -> None:
        if self._interval == "epoch" and self._duration is not None:
            self._check(runtime)

    def _check(self, runtime: Runtime) -> None:
        assert self._duration is not None
        stop = bool(dist.broadcast_object(self.time_elapsed() >= self._duration))
        if stop and not runtime.state.should_stop:
            elapsed = timedelta(seconds=int(self.time_elapsed()))
            message = f"Time limit reached. Elapsed time is {elapsed}. Signaling Trainer to stop."
            runtime.request_stop(message)
            if self._verbose and dist.is_rank_zero():
                log.info(message)

    def state_dict(self) -> dict[str, Any]:
        return {"time_elapsed": {stage: self.time_elapsed(stage) for stage in STAGES}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._offset = state_dict.get("time_elapsed", {}).get("train", 0)


def _stage(stage: Any) -> str:
    """A stage name (or Lightning's RunningStage enum) as the plain string."""
    name = getattr(stage, "value", stage)
    if name not in STAGES:
        raise ValueError(f"Timer: unknown stage {stage!r}; the stages are {', '.join(STAGES)}")
    return str(name)
