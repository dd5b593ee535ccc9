"""Section 2: per-step overhead of each training runtime on a tiny model.

The workload makes framework cost visible: ``nn.Linear(32, 32)``, batches of 64 built in
memory once (a list of ``(inputs, targets)`` tensors, not a DataLoader), SGD, MSE loss,
``torch.set_num_threads(1)``, one epoch, no validation loader. Every contender trains on
the same batches with the same loss computation.

How a step is timed — lockstep pairing. The batches are handed over wrapped in
:class:`TimedBatches`. Each time the contender fetches a batch, the wrapper first runs one
step of a *companion* plain loop (its own model and optimiser, the same batch), reading the
clocks around it, then hands the batch over. So every contender step sits right next to a
plain-loop step, and a step's overhead is the contender's interval (from handing a batch
over to the next fetch) minus the companion's interval. The load of a shared machine
drifts over milliseconds to seconds; a step lasts a fraction of a millisecond, so both
sides of each difference see the same machine. The small bias of the method itself (the
generator hand-over) is removed by running the plain loop as a contender too and
subtracting its paired difference, round by round.

A run's numbers are means over ``steps`` steps after ``warmup`` steps; setup, the first
steps and the end of the epoch are outside the window, whatever the contender does there
(building a Trainer, writing a checkpoint, reducing epoch metrics). Lightning prefetches
one batch ahead, which shifts its intervals by one step but does not change them. Two clocks
are read: the training thread's CPU time (default) and wall time.

Contenders run interleaved in rounds (A B C ... A B C ...) after one unrecorded warm-up
round; every summary is over rounds (median, min, max) and every ratio is a median of
per-round ratios.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import logging
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.stats import summarize

__all__ = [
    "BASELINE",
    "CLOCKS",
    "CONTENDERS",
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

Batch = tuple[torch.Tensor, torch.Tensor]

#: The contender every other one is compared with.
BASELINE = "plain"

#: The clocks a step is timed with: the training thread's CPU time, and wall time.
CLOCKS: tuple[str, ...] = ("cpu", "wall")


@dataclass(frozen=True)
class Workload:
    """The model, data and optimiser settings every contender uses."""

    features: int = 32
    batch_size: int = 64
    lr: float = 0.01
    seed: int = 0

    def model(self) -> nn.Module:
        """A freshly initialised ``nn.Linear(features, features)`` (same weights each time)."""
        torch.manual_seed(self.seed)
        return nn.Linear(self.features, self.features)

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=self.lr)

    @staticmethod
    def loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of every contender: mean squared error."""
        return nn.functional.mse_loss(prediction, target)

    def batches(self, count: int) -> list[Batch]:
        """``count`` in-memory ``(inputs, targets)`` batches."""
        generator = torch.Generator().manual_seed(self.seed + 1)
        shape = (self.batch_size, self.features)
        return [
            (torch.randn(shape, generator=generator), torch.randn(shape, generator=generator))
            for _ in range(count)
        ]


def plain_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable[..., torch.Tensor]
) -> Callable[[Batch], None]:
    """One step of the hand-written loop, as a function of the batch."""

    def step(batch: Batch) -> None:
        inputs, targets = batch
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(inputs), targets)
        loss.backward()
        optimizer.step()

    return step


class TimedBatches:
    """Pre-built batches that time each fetch, running a companion plain-loop step first.

    For fetch ``i``, ``starts[clock][i]`` is read before the companion step and
    ``fetched[clock][i]`` after it, right before the batch is handed over (a new iteration
    starts new lists). Clocks: ``cpu`` (``time.thread_time()``: CPU time of the training
    thread, which other processes cannot inflate by preempting it) and ``wall``
    (``time.perf_counter()``).
    """

    def __init__(
        self, batches: Sequence[Batch], companion: Callable[[Batch], None] | None = None
    ) -> None:
        self.batches = batches
        self.companion = companion
        self.starts: dict[str, list[float]] = {clock: [] for clock in CLOCKS}
        self.fetched: dict[str, list[float]] = {clock: [] for clock in CLOCKS}

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Batch]:
        start_cpu: list[float] = []
        start_wall: list[float] = []
        fetched_cpu: list[float] = []
        fetched_wall: list[float] = []
        self.starts = {"cpu": start_cpu, "wall": start_wall}
        self.fetched = {"cpu": fetched_cpu, "wall": fetched_wall}
        cpu, wall, companion = time.thread_time, time.perf_counter, self.companion
        for batch in self.batches:
            start_wall.append(wall())
            start_cpu.append(cpu())
            if companion is not None:
                companion(batch)
            fetched_wall.append(wall())
            fetched_cpu.append(cpu())
            yield batch

    def _window(self, warmup: int, steps: int, clock: str) -> tuple[list[float], list[float]]:
        starts, fetched = self.starts[clock], self.fetched[clock]
        if len(starts) < warmup + steps + 1:
            raise RuntimeError(
                f"the contender fetched {len(starts)} batches; "
                f"{warmup + steps + 1} were needed to time {steps} steps"
            )
        return starts[warmup : warmup + steps + 1], fetched[warmup : warmup + steps + 1]

    def step_us(self, warmup: int, steps: int, clock: str = "cpu") -> float:
        """The contender's mean µs per step (hand-over to next fetch) after ``warmup`` steps."""
        starts, fetched = self._window(warmup, steps, clock)
        return sum(starts[i + 1] - fetched[i] for i in range(steps)) / steps * 1e6

    def companion_us(self, warmup: int, steps: int, clock: str = "cpu") -> float:
        """The companion plain loop's mean µs per step over the same steps."""
        starts, fetched = self._window(warmup, steps, clock)
        return sum(fetched[i] - starts[i] for i in range(steps)) / steps * 1e6


@dataclass
class RunContext:
    """What a contender's run gets besides its batches."""

    workload: Workload
    workdir: Path
    """A temporary folder the run may write into (trackers, checkpoints, logs)."""


@dataclass(frozen=True)
class Contender:
    """One way of training the workload for one epoch over the given batches."""

    name: str
    label: str
    fit: Callable[[RunContext, TimedBatches], None]
    requires: tuple[str, ...] = ()
    """Import names that must be installed; otherwise the contender is skipped with a note."""


# ---------------------------------------------------------------------- contenders
def _fit_plain(ctx: RunContext, batches: TimedBatches) -> None:
    """The floor: a hand-written loop (zero_grad, forward, loss, backward, step)."""
    model = ctx.workload.model()
    step = plain_step(model, ctx.workload.optimizer(model), ctx.workload.loss)
    model.train()
    for batch in batches:
        step(batch)


def _fit_plain_lean(ctx: RunContext, batches: TimedBatches) -> None:
    """The plain loop with busloop's zero_grad: what busloop's own machinery costs.

    ``runtime.optim.zero_grad`` skips ``Optimizer.zero_grad``'s profiler label, which is
    most of zero_grad's cost here, so busloop can come out cheaper than the plain loop.
    This contender takes the same shortcut, which leaves busloop's loop, events and
    logging as the only difference between the two.
    """
    from runtime.optim import zero_grad

    model = ctx.workload.model()
    optimizer = ctx.workload.optimizer(model)
    loss_fn = ctx.workload.loss
    model.train()
    for inputs, targets in batches:
        zero_grad(optimizer)
        loss = loss_fn(model(inputs), targets)
        loss.backward()
        optimizer.step()


def _busloop_config(ctx: RunContext, **trainer: Any) -> dict[str, Any]:
    return {
        "optimizer": {"name": "SGD", "params": {"lr": ctx.workload.lr}},
        "trainer": {"epochs": 1, "accelerator": "cpu", **trainer},
        "tracker": {"save_directory": str(ctx.workdir / "busloop-runs")},
    }


def fit_busloop(ctx: RunContext, batches: TimedBatches, callbacks: Sequence[object] = ()) -> None:
    """busloop with the given callbacks and no tracker."""
    from runtime import Runtime
    from runtime.tracking import NullTracker

    runtime = Runtime(
        ctx.workload.model(),
        list(callbacks),
        _busloop_config(ctx),
        loss=ctx.workload.loss,
        tracker=NullTracker(),
    )
    runtime.fit(batches)


def _fit_busloop_bare(ctx: RunContext, batches: TimedBatches) -> None:
    fit_busloop(ctx, batches)


def _fit_busloop_defaults(ctx: RunContext, batches: TimedBatches) -> None:
    """busloop as a user gets it: the default callback set and the configured tracker."""
    from callbacks import build_callbacks
    from runtime import Runtime
    from runtime.config import load_config

    config = load_config(
        _busloop_config(ctx, main_metric={"name": "val/accuracy", "mode": "max"})
    )
    with Runtime(
        ctx.workload.model(), build_callbacks(config), config, loss=ctx.workload.loss
    ) as runtime:
        runtime.fit(batches)


def _lightning_module(ctx: RunContext) -> Any:
    import lightning.pytorch as pl

    workload = ctx.workload

    class BenchModule(pl.LightningModule):
        """The workload as a LightningModule: the same model, loss and optimiser."""

        def __init__(self) -> None:
            super().__init__()
            self.net = workload.model()

        def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
            inputs, targets = batch
            return workload.loss(self.net(inputs), targets)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return workload.optimizer(self.net)

    return BenchModule()


def _fit_lightning(ctx: RunContext, batches: TimedBatches, **trainer_args: Any) -> None:
    import lightning.pytorch as pl

    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        default_root_dir=str(ctx.workdir / "lightning"),
        **trainer_args,
    )
    trainer.fit(_lightning_module(ctx), train_dataloaders=batches)


def _fit_lightning_bare(ctx: RunContext, batches: TimedBatches) -> None:
    """Lightning's Trainer with logger, checkpointing, progress bar and summary off."""
    _fit_lightning(
        ctx,
        batches,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def _fit_lightning_defaults(ctx: RunContext, batches: TimedBatches) -> None:
    """Lightning's Trainer with its defaults (progress bar, logger, checkpointing, summary)."""
    _fit_lightning(ctx, batches)


def _fit_busloop_lightning_module(ctx: RunContext, batches: TimedBatches) -> None:
    """busloop driving the same LightningModule as the Lightning contenders (no tracker)."""
    from runtime import Runtime
    from runtime.tracking import NullTracker

    config = {"trainer": {"epochs": 1, "accelerator": "cpu", "num_sanity_val_steps": 0}}
    Runtime(_lightning_module(ctx), [], config, tracker=NullTracker()).fit(batches)


def _fit_ignite(ctx: RunContext, batches: TimedBatches) -> None:
    """Ignite's Engine with no handlers, running the plain loop's step."""
    from ignite.engine import Engine

    model = ctx.workload.model()
    optimizer = ctx.workload.optimizer(model)
    loss_fn = ctx.workload.loss

    def train_step(engine: Engine, batch: Batch) -> torch.Tensor:
        inputs, targets = batch
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(inputs), targets)
        loss.backward()
        optimizer.step()
        return loss

    model.train()
    Engine(train_step).run(batches, max_epochs=1)


#: The per-step overhead contenders, in round order.
CONTENDERS: dict[str, Contender] = {
    contender.name: contender
    for contender in (
        Contender("plain", "plain loop", _fit_plain),
        Contender("plain-lean", "plain loop, busloop's zero_grad", _fit_plain_lean),
        Contender("busloop", "busloop, no callbacks", _fit_busloop_bare),
        Contender("busloop-defaults", "busloop, default callbacks", _fit_busloop_defaults),
        Contender("lightning-bare", "Lightning, all off", _fit_lightning_bare, ("lightning",)),
        Contender(
            "lightning-defaults", "Lightning, defaults", _fit_lightning_defaults, ("lightning",)
        ),
        Contender(
            "busloop-lightning-module",
            "busloop, the same LightningModule",
            _fit_busloop_lightning_module,
            ("lightning",),
        ),
        Contender("ignite", "Ignite Engine, no handlers", _fit_ignite, ("ignite",)),
    )
}


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

    Each run trains one epoch of ``warmup + steps + 1`` batches in lockstep with a
    companion plain loop and records both mean step times over the ``steps`` after the
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
    batches = workload.batches(warmup + steps + 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="busloop-bench-") as tmp:
            ctx = RunContext(workload, Path(tmp))
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
) -> dict[str, Any]:
    """The per-step overhead section: every contender against the plain loop.

    ``contenders`` are names from :data:`CONTENDERS` or :class:`Contender` objects (the
    plain loop is added first when missing). ``clock`` picks the headline numbers; the
    other clock's are under ``"wall"`` / ``"cpu"`` in each result. Returns a JSON-ready
    dict::

        {"rounds", "steps", "warmup", "clock", "baseline": "plain", "plain_step_us",
         "results": {name: {"label", "step_us": {median, min, max, n},
                            "overhead_us": {...}, "ratio_vs_plain", "overhead_pct_of_plain",
                            "overhead_vs_lightning_defaults", "<other clock>": {...}}},
         "skipped": {name: note}}

    ``plain_step_us`` is the median companion step; ratios are medians of per-round ratios
    (``overhead_vs_lightning_defaults`` is None without Lightning).
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
    result = run_rounds(
        _resolve(contenders),
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
        "clock": clock,
        "baseline": BASELINE,
        "method": "lockstep pairing with a companion plain loop",
        "workload": "nn.Linear(32, 32), batch 64, in-memory batches, SGD, MSE loss, 1 thread",
        "plain_step_us": None,
        "results": {},
        "skipped": dict(result.notes),
    }
    if BASELINE not in result.ran:
        return out
    other = next(c for c in CLOCKS if c != clock)
    for name in result.ran:
        entry = _comparison(result, name, clock)
        entry[other] = _comparison(result, name, other)
        out["results"][name] = {"label": result.labels[name], **entry}
    out["plain_step_us"] = plain_step_us(result, clock)
    return out


def plain_step_us(result: RoundsResult, clock: str) -> float:
    """The median over rounds of the companion plain loop's step (all runs of a round)."""
    per_round = zip(*(result.companion_us[clock][name] for name in result.ran), strict=True)
    return statistics.median(statistics.fmean(values) for values in per_round)


def _comparison(result: RoundsResult, name: str, clock: str) -> dict[str, Any]:
    """Step time, overhead and ratios of one contender on one clock."""
    overhead = result.paired_overhead(name, clock)
    companion = result.companion_us[clock][name]
    relative = [extra / base for extra, base in zip(overhead, companion, strict=True)]
    entry: dict[str, Any] = {
        "step_us": summarize(result.step_us[clock][name]),
        "overhead_us": summarize(overhead),
        "ratio_vs_plain": 1.0 + statistics.median(relative),
        "overhead_pct_of_plain": 100.0 * statistics.median(relative),
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
