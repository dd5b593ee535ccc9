"""Section 2: per-step overhead of each training runtime on a tiny model.

The workload (:mod:`benchmarks.workload`) makes framework cost visible: ``nn.Linear(32,
32)``, in-memory batches of 64, SGD, MSE loss, one thread, several epochs each ending with
validation. The contenders (:mod:`benchmarks.contenders`) do the same work; the baseline is
the fastest hand-written loop (grads set to None), and the stock plain loop is a row.

How a step is timed — lockstep pairing. The batches are handed over wrapped in
:class:`TimedBatches`. Each time the contender fetches a batch, the wrapper first runs one
step of a *companion* plain loop (its own model and optimiser, the same batch), reading the
clocks around it, then hands the batch over. So every contender step sits right next to a
plain-loop step, and a step's paired difference is the contender's interval (from handing
a batch over to the next fetch) minus the companion's interval. A contender's overhead is
its paired difference minus the baseline contender's, round by round: the companion and
the method's own bias (the generator hand-over, the clock reads) cancel.

A run's numbers are means over ``steps`` steps after ``warmup`` steps. Fetches are counted
across epochs, so the epoch ends inside the window (validation, checkpoints, epoch
metrics) are amortised over its steps; setup, the first steps and the end of the last
epoch are outside it. Two clocks are read: the training thread's CPU time (default) and
wall time.

Contenders run interleaved in rounds (A B C ... A B C ...) after one unrecorded warm-up
round; every summary is over rounds (median, min, max) and every ratio is a median of
per-round ratios. Targets use the median overhead: the min of a difference of two noisy
timings is biased low (it keeps the round where the baseline was unluckiest), so it would
flatter; the min is reported beside it.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import logging
import os
import statistics
import tempfile
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.contenders import BASELINE, CONTENDERS, SAME_WORK, STOCK, fit_busloop
from benchmarks.stats import summarize
from benchmarks.workload import CLOCKS, Contender, RunContext, TimedBatches, Workload, plain_step

__all__ = [
    "BASELINE",
    "CLOCKS",
    "CONTENDERS",
    "SAME_WORK",
    "STOCK",
    "Contender",
    "RoundsResult",
    "RunContext",
    "TimedBatches",
    "Workload",
    "fit_busloop",
    "missing_requirement",
    "plain_step",
    "plain_step_us",
    "quiet",
    "run_overhead",
    "run_rounds",
]

# ---------------------------------------------------------------------- running
@dataclass
class RoundsResult:
    """Per-round timings (µs per step) of the contenders that ran, and notes on the others."""

    step_us: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {clock: {} for clock in CLOCKS}
    )
    """Clock ("cpu" / "wall") -> contender name -> the contender's mean step, per round."""
    companion_us: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {clock: {} for clock in CLOCKS}
    )
    """Clock -> contender name -> the companion plain loop's mean step in that run, per round."""
    labels: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    """Contender name -> why it was skipped or dropped."""

    @property
    def ran(self) -> list[str]:
        """The contenders with timings, in round order."""
        return list(self.step_us["cpu"])

    def paired(self, name: str, clock: str = "cpu") -> list[float]:
        """Per round: the contender's step minus its companion's (lockstep pairs)."""
        steps, companion = self.step_us[clock][name], self.companion_us[clock][name]
        return [step - ref for step, ref in zip(steps, companion, strict=True)]

    def paired_overhead(self, name: str, clock: str = "cpu", baseline: str = BASELINE) -> list[float]:
        """Per round: ``name``'s paired difference minus the baseline contender's.

        The baseline's own paired difference is the method's bias (hand-over, clock reads),
        so it is subtracted; the baseline's overhead is 0 by definition.
        """
        bias = self.paired(baseline, clock)
        return [value - ref for value, ref in zip(self.paired(name, clock), bias, strict=True)]


def missing_requirement(contender: Contender, without: Collection[str] = ()) -> str | None:
    """A note when ``contender`` cannot run here (a package missing or excluded), else None."""
    for package in contender.requires:
        if package in without:
            return f"skipped: {package} excluded (--without {package})"
        if importlib.util.find_spec(package) is None:
            return f"skipped: {package} is not installed"
    return None


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Send output, warnings and peers' info logs away while contenders run.

    Progress bars then write to a non-terminal file (``os.devnull``), as in a batch job.
    """
    names = ("lightning", "lightning.pytorch", "lightning.fabric")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    with open(os.devnull, "w") as sink, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def run_rounds(
    contenders: Sequence[Contender],
    *,
    rounds: int,
    steps: int,
    warmup: int,
    workload: Workload | None = None,
    without: Collection[str] = (),
    progress: Callable[[str], None] | None = None,
) -> RoundsResult:
    """Run ``contenders`` interleaved for ``rounds`` rounds (plus one unrecorded warm-up).

    Each run trains ``workload.epochs`` epochs (together at least ``warmup + steps + 1``
    batches, validating after each) in lockstep with a companion plain loop and records both mean step times over the ``steps`` after the
    warm-up, on both clocks. A contender that is not installed is skipped, and one that
    raises is dropped; both get a note instead of stopping the suite. Runs with
    ``torch.set_num_threads(1)``.
    """
    workload = workload or Workload()
    result = RoundsResult()
    active: list[Contender] = []
    for contender in contenders:
        result.labels[contender.name] = contender.label
        note = missing_requirement(contender, without)
        if note is None:
            active.append(contender)
            for table in (result.step_us, result.companion_us):
                for clock in CLOCKS:
                    table[clock][contender.name] = []
        else:
            result.notes[contender.name] = note
    batches = workload.batches(workload.per_epoch(warmup + steps + 1))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="busloop-bench-") as tmp:
            ctx = RunContext(workload, Path(tmp), workload.val_batches_list())
            for round_index in range(rounds + 1):
                if progress is not None:
                    suffix = " (warm-up)" if round_index == 0 else ""
                    progress(f"round {round_index}/{rounds}{suffix}")
                for contender in list(active):
                    companion_model = workload.model()
                    timed = TimedBatches(
                        batches,
                        plain_step(companion_model, workload.optimizer(companion_model), workload.loss),
                    )
                    gc.collect()
                    try:
                        with quiet():
                            contender.fit(ctx, timed)
                        timings = {
                            clock: (
                                timed.step_us(warmup, steps, clock),
                                timed.companion_us(warmup, steps, clock),
                            )
                            for clock in CLOCKS
                        }
                    except Exception as exc:  # a broken contender must not stop the suite
                        active.remove(contender)
                        for table in (result.step_us, result.companion_us):
                            for clock in CLOCKS:
                                del table[clock][contender.name]
                        result.notes[contender.name] = f"failed: {type(exc).__name__}: {exc}"
                        continue
                    if round_index > 0:
                        for clock, (step, companion) in timings.items():
                            result.step_us[clock][contender.name].append(step)
                            result.companion_us[clock][contender.name].append(companion)
    finally:
        torch.set_num_threads(threads)
    return result


def run_overhead(
    *,
    rounds: int = 9,
    steps: int = 2000,
    warmup: int = 100,
    clock: str = "cpu",
    contenders: Sequence[str | Contender] | None = None,
    without: Collection[str] = (),
    progress: Callable[[str], None] | None = None,
    workload: Workload | None = None,
) -> dict[str, Any]:
    """The per-step overhead section: every contender against the fastest plain loop.

    ``contenders`` are names from :data:`CONTENDERS` or :class:`Contender` objects (the
    baseline, :data:`BASELINE`, is added first when missing). ``clock`` picks the headline numbers; the
    other clock's are under ``"wall"`` / ``"cpu"`` in each result. Returns a JSON-ready
    dict::

        {"rounds", "steps", "warmup", "epochs", "batches_per_epoch", "clock",
         "baseline": "plain-lean", "figure": "median", "plain_step_us", "baseline_step_us",
         "results": {name: {"label", "step_us": {median, min, max, n},
                            "overhead_us": {...}, "ratio_vs_baseline",
                            "overhead_pct_of_baseline", "overhead_vs_lightning_defaults",
                            "<other clock>": {...}}},
         "skipped": {name: note},
         "defaults_over_same_work": {"median", "min", "max", "n", "pct_of_same_work"} | None}

    ``overhead_us`` is over the baseline contender; ``plain_step_us`` is the median
    companion (stock plain loop) step, ``baseline_step_us`` the baseline's median step;
    ratios are medians of per-round ratios (``overhead_vs_lightning_defaults`` is None
    without Lightning). ``figure`` names the statistic the targets read.
    ``defaults_over_same_work`` is the default set's overhead over :data:`SAME_WORK` (the
    baseline doing the default set's work by hand) when both ran: the runtime's own cost
    with the work it does taken out (reported; no target reads it).
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
    workload = workload or Workload()
    result = run_rounds(
        _resolve(contenders),
        workload=workload,
        rounds=rounds,
        steps=steps,
        warmup=warmup,
        without=without,
        progress=progress,
    )
    out: dict[str, Any] = {
        "rounds": rounds,
        "steps": steps,
        "warmup": warmup,
        "epochs": workload.epochs,
        "batches_per_epoch": workload.per_epoch(warmup + steps + 1),
        "val_batches": workload.val_batches,
        "clock": clock,
        "baseline": BASELINE,
        "figure": "median",
        "method": "lockstep pairing with a companion plain loop",
        "workload": workload.describe(),
        "plain_step_us": None,
        "baseline_step_us": None,
        "results": {},
        "skipped": dict(result.notes),
        "defaults_over_same_work": None,
    }
    if BASELINE not in result.ran:
        return out
    other = next(c for c in CLOCKS if c != clock)
    for name in result.ran:
        entry = _comparison(result, name, clock)
        entry[other] = _comparison(result, name, other)
        out["results"][name] = {"label": result.labels[name], **entry}
    out["plain_step_us"] = plain_step_us(result, clock)
    out["baseline_step_us"] = statistics.median(result.step_us[clock][BASELINE])
    if {SAME_WORK, "busloop-defaults"} <= set(result.ran):
        extra = result.paired_overhead("busloop-defaults", clock, baseline=SAME_WORK)
        same_steps = result.step_us[clock][SAME_WORK]
        out["defaults_over_same_work"] = {
            **summarize(extra),
            "pct_of_same_work": 100.0
            * statistics.median(
                value / step for value, step in zip(extra, same_steps, strict=True)
            ),
        }
    return out


def plain_step_us(result: RoundsResult, clock: str) -> float:
    """The median over rounds of the companion plain loop's step (all runs of a round)."""
    per_round = zip(*(result.companion_us[clock][name] for name in result.ran), strict=True)
    return statistics.median(statistics.fmean(values) for values in per_round)


def _comparison(result: RoundsResult, name: str, clock: str) -> dict[str, Any]:
    """Step time, overhead and ratios of one contender on one clock."""
    overhead = result.paired_overhead(name, clock)
    base_steps = result.step_us[clock][BASELINE]
    relative = [extra / base for extra, base in zip(overhead, base_steps, strict=True)]
    entry: dict[str, Any] = {
        "step_us": summarize(result.step_us[clock][name]),
        "overhead_us": summarize(overhead),
        "ratio_vs_baseline": 1.0 + statistics.median(relative),
        "overhead_pct_of_baseline": 100.0 * statistics.median(relative),
        "overhead_vs_lightning_defaults": None,
    }
    if "lightning-defaults" in result.ran:
        reference = result.paired_overhead("lightning-defaults", clock)
        if all(value > 0 for value in reference):
            entry["overhead_vs_lightning_defaults"] = statistics.median(
                extra / ref for extra, ref in zip(overhead, reference, strict=True)
            )
    return entry


def _resolve(contenders: Sequence[str | Contender] | None) -> list[Contender]:
    """Contender objects for names (unknown names are an error), the baseline first."""
    if contenders is None:
        return list(CONTENDERS.values())
    chosen: list[Contender] = []
    for item in contenders:
        if isinstance(item, Contender):
            chosen.append(item)
        elif item in CONTENDERS:
            chosen.append(CONTENDERS[item])
        else:
            raise ValueError(f"unknown contender {item!r}; known: {', '.join(CONTENDERS)}")
    if all(contender.name != BASELINE for contender in chosen):
        chosen.insert(0, CONTENDERS[BASELINE])
    return chosen
