"""Section 3: how busloop's per-step overhead grows with the number of callbacks.

Runs the per-step workload of :mod:`benchmarks.overhead` with 0, 10, 50 and 100 callbacks,
each subscribing to every per-batch training event (:data:`PER_BATCH_EVENTS`) with a
method that does nothing, timed like the overhead section (lockstep pairing with a plain
loop, rounds interleaved with the plain loop as a contender). The least-squares
slope of the overhead over the callback count is the cost of one callback per step; divided
by the number of events, the cost of one callback per event.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch

from benchmarks.overhead import (
    BASELINE,
    CLOCKS,
    CONTENDERS,
    Contender,
    RunContext,
    TimedBatches,
    fit_busloop,
    plain_step_us,
    run_rounds,
)
from benchmarks.stats import least_squares, summarize
from runtime.callback import Callback
from runtime.loop import Runtime

__all__ = ["CALLBACK_COUNTS", "PER_BATCH_EVENTS", "ProbeCallback", "run_scaling"]

#: The callback counts measured by default.
CALLBACK_COUNTS: tuple[int, ...] = (0, 10, 50, 100)

#: The events the loop emits for every training batch (accumulation 1: all of them fire).
PER_BATCH_EVENTS: tuple[str, ...] = (
    "train_batch_start",
    "train_batch_end",
    "before_backward",
    "after_backward",
    "before_optimizer_step",
    "before_zero_grad",
)


class ProbeCallback(Callback):
    """A callback on every per-batch training event that does nothing (pure dispatch cost)."""

    def on_train_batch_start(self, runtime: Runtime, batch: Any, batch_idx: int) -> None:
        """Receive ``train_batch_start``."""

    def on_train_batch_end(
        self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Receive ``train_batch_end``."""

    def on_before_backward(self, runtime: Runtime, loss: torch.Tensor) -> None:
        """Receive ``before_backward``."""

    def on_after_backward(self, runtime: Runtime) -> None:
        """Receive ``after_backward``."""

    def on_before_optimizer_step(self, runtime: Runtime, optimizer: torch.optim.Optimizer) -> None:
        """Receive ``before_optimizer_step``."""

    def on_before_zero_grad(self, runtime: Runtime, optimizer: torch.optim.Optimizer) -> None:
        """Receive ``before_zero_grad``."""


def _probes_contender(count: int) -> Contender:
    def fit(ctx: RunContext, batches: TimedBatches) -> None:
        fit_busloop(ctx, batches, [ProbeCallback() for _ in range(count)])

    return Contender(f"busloop+{count}", f"busloop, {count} callbacks", fit)


def run_scaling(
    *,
    counts: Sequence[int] = CALLBACK_COUNTS,
    rounds: int = 7,
    steps: int = 2000,
    warmup: int = 100,
    clock: str = "cpu",
    progress: Callable[[str], None] | None = None,
    without: Collection[str] = (),
) -> dict[str, Any]:
    """Overhead per step for each callback count, and the per-callback slope.

    Returns a JSON-ready dict::

        {"counts", "events": [...], "rounds", "steps", "warmup", "clock", "plain_step_us",
         "results": {"<count>": {"step_us": {...}, "overhead_us": {...}}},
         "slope_us_per_callback", "slope_us_per_callback_per_event", "intercept_us"}
    """
    if len(set(counts)) < 2:
        raise ValueError("scaling needs at least two distinct callback counts")
    contenders = [CONTENDERS[BASELINE], *(_probes_contender(count) for count in counts)]
    result = run_rounds(
        contenders, rounds=rounds, steps=steps, warmup=warmup, without=without, progress=progress
    )
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
    out: dict[str, Any] = {
        "counts": list(counts),
        "events": list(PER_BATCH_EVENTS),
        "rounds": rounds,
        "steps": steps,
        "warmup": warmup,
        "clock": clock,
        "plain_step_us": None,
        "results": {},
        "notes": dict(result.notes),
        "slope_us_per_callback": None,
        "slope_us_per_callback_per_event": None,
        "intercept_us": None,
    }
    if BASELINE not in result.ran:
        return out
    out["plain_step_us"] = plain_step_us(result, clock)
    measured: list[tuple[int, float]] = []
    for count in counts:
        name = f"busloop+{count}"
        if name not in result.ran:
            continue
        overhead = summarize(result.paired_overhead(name, clock))
        out["results"][str(count)] = {
            "step_us": summarize(result.step_us[clock][name]),
            "overhead_us": overhead,
        }
        measured.append((count, overhead["median"]))
    if len({count for count, _ in measured}) >= 2:
        slope, intercept = least_squares([c for c, _ in measured], [o for _, o in measured])
        out["slope_us_per_callback"] = slope
        out["slope_us_per_callback_per_event"] = slope / len(PER_BATCH_EVENTS)
        out["intercept_us"] = intercept
    return out
