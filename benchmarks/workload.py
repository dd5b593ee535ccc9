"""The per-step workload and its timing: what every overhead contender trains on, and how.

``nn.Linear(32, 32)``, batches of 64 built in memory once (no DataLoader), SGD, MSE loss,
``torch.set_num_threads(1)``, several epochs, each ending with a validation pass over a
few in-memory batches. Every contender does that same work, so what differs between them
is the runtime: its loop, events, logging, checkpoints and progress output, with the epoch
ends amortised over the steps.

:class:`TimedBatches` times each fetch of a batch in lockstep with a companion plain-loop
step (see :mod:`benchmarks.overhead` for the method).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

__all__ = ["CLOCKS", "Batch", "Contender", "RunContext", "TimedBatches", "Workload", "plain_step"]

Batch = tuple[torch.Tensor, torch.Tensor]

#: The clocks a step is timed with: the training thread's CPU time, and wall time.
CLOCKS: tuple[str, ...] = ("cpu", "wall")

@dataclass(frozen=True)
class Workload:
    """The model, data and optimiser settings every contender uses."""

    features: int = 32
    batch_size: int = 64
    lr: float = 0.01
    seed: int = 0
    epochs: int = 4
    """Epochs per run: the epoch ends (validation, checkpoints, epoch metrics) fall inside
    the timed window and are amortised over its steps, as in a real run."""
    val_batches: int = 4
    """Validation batches at the end of every epoch (every contender runs them)."""

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

    def val_batches_list(self) -> list[Batch]:
        """The validation batches (a different seed from the training batches)."""
        generator = torch.Generator().manual_seed(self.seed + 2)
        shape = (self.batch_size, self.features)
        return [
            (torch.randn(shape, generator=generator), torch.randn(shape, generator=generator))
            for _ in range(self.val_batches)
        ]

    def describe(self) -> str:
        """One line saying what is trained (for the report)."""
        return (
            f"nn.Linear({self.features}, {self.features}), batch {self.batch_size}, in-memory "
            f"batches, SGD, MSE loss, 1 thread, {self.epochs} epochs each validating on "
            f"{self.val_batches} batches"
        )

    def per_epoch(self, fetches: int) -> int:
        """Batches per epoch so that ``epochs`` epochs make at least ``fetches`` fetches."""
        return -(-fetches // self.epochs)


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
    ``fetched[clock][i]`` after it, right before the batch is handed over. Fetches are
    counted across iterations, so a run of several epochs is one sequence of steps and the
    interval after an epoch's last batch holds that epoch's end (validation, checkpoints,
    epoch metrics). Clocks: ``cpu`` (``time.thread_time()``: CPU time of the training
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
        start_cpu, start_wall = self.starts["cpu"], self.starts["wall"]
        fetched_cpu, fetched_wall = self.fetched["cpu"], self.fetched["wall"]
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
    val: list[Batch] = field(default_factory=list)
    """The validation batches every contender runs at the end of every epoch."""


@dataclass(frozen=True)
class Contender:
    """One way of training the workload for ``workload.epochs`` epochs over the given batches,
    validating on ``ctx.val`` at the end of each."""

    name: str
    label: str
    fit: Callable[[RunContext, TimedBatches], None]
    requires: tuple[str, ...] = ()
    """Import names that must be installed; otherwise the contender is skipped with a note."""
