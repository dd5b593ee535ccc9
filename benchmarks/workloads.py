"""Real workloads (opt-in: ``python -m benchmarks --workloads``): busloop vs a plain loop vs
Lightning (and Ignite), in the same run, reported as ratios to the plain loop.

* **ResNet-18** (:class:`ResNetWorkload`): torchvision's ResNet-18 on random 32x32 images,
  batch 32, CPU, one thread. The overhead section's contenders and lockstep method
  (:mod:`benchmarks.overhead`) on this workload: each framework's overhead as a share of
  the step.
* **DataLoader with 2 workers** (:class:`LoaderWorkload`): a small MLP fed by a
  ``DataLoader(num_workers=2)`` whose dataset takes a fixed time per batch (a sleep, so the
  workers' pace does not depend on the machine's load). Every fetch of a batch is timed
  (:class:`WaitTimedLoader`): the time the training loop waits for data per step, per
  contender, so a runtime that stalls the pipeline between batches shows up.
* **The digits default job** (:mod:`benchmarks.digits_job`): ``busloop train``'s embedded
  job end to end against the same model, data and epochs trained by hand, by Lightning and
  by Ignite: wall and CPU time to the end of the final epoch, and its validation accuracy.

Contenders run interleaved in rounds; every ratio is the median of per-round ratios.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from benchmarks.contenders import BASELINE, CONTENDERS
from benchmarks.digits_job import run_digits
from benchmarks.overhead import missing_requirement, quiet, run_overhead
from benchmarks.stats import summarize
from benchmarks.workload import Batch, RunContext, Workload

__all__ = [
    "FULL_SIZES",
    "TINY_SIZES",
    "LoaderWorkload",
    "ResNetWorkload",
    "Sizes",
    "WaitTimedLoader",
    "run_loader",
    "run_resnet",
    "run_workloads",
]

#: The contenders of the ResNet-18 and DataLoader workloads (the baseline is added first).
WORKLOAD_CONTENDERS = ("plain", "busloop-defaults", "lightning-defaults", "ignite")


@dataclass(frozen=True)
class Sizes:
    """How long each workload runs."""

    resnet_rounds: int
    resnet_steps: int
    resnet_warmup: int
    loader_rounds: int
    loader_batches: int
    digits_rounds: int
    digits_epochs: int
    digits_limit: float | None = None
    """``limit_train_batches`` for the digits job (None: every batch)."""


#: ``--workloads``: several minutes on 2 cores.
FULL_SIZES = Sizes(
    resnet_rounds=3, resnet_steps=20, resnet_warmup=3,
    loader_rounds=3, loader_batches=60,
    digits_rounds=3, digits_epochs=12,
)  # fmt: skip
#: The smoke test's sizes: seconds.
TINY_SIZES = Sizes(
    resnet_rounds=1, resnet_steps=2, resnet_warmup=1,
    loader_rounds=1, loader_batches=4,
    digits_rounds=1, digits_epochs=1, digits_limit=2,
)  # fmt: skip


@dataclass(frozen=True)
class _Classification(Workload):
    """What the ResNet-18 and DataLoader workloads share: cross-entropy over ``classes``, two
    epochs each validating on two batches of random samples."""

    classes: int = 10
    epochs: int = 2
    val_batches: int = 2

    @staticmethod
    def loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(prediction, target)

    def sample_shape(self) -> tuple[int, ...]:
        return (self.features,)

    def _random(self, count: int, seed: int) -> list[Batch]:
        generator = torch.Generator().manual_seed(seed)
        shape, labels = (self.batch_size, *self.sample_shape()), (self.batch_size,)
        return [
            (torch.randn(shape, generator=generator), torch.randint(0, self.classes, labels, generator=generator))
            for _ in range(count)
        ]

    def batches(self, count: int) -> list[Batch]:
        return self._random(count, self.seed + 1)

    def val_batches_list(self) -> list[Batch]:
        return self._random(self.val_batches, self.seed + 2)


# ---------------------------------------------------------------------- (b) ResNet-18
@dataclass(frozen=True)
class ResNetWorkload(_Classification):
    """torchvision's ResNet-18 (10 classes) on random ``image_size`` images, cross-entropy."""

    batch_size: int = 32
    image_size: int = 32

    def model(self) -> nn.Module:
        from torchvision.models import resnet18

        torch.manual_seed(self.seed)
        return resnet18(num_classes=self.classes)

    def sample_shape(self) -> tuple[int, ...]:
        return (3, self.image_size, self.image_size)

    def describe(self) -> str:
        return (
            f"torchvision ResNet-18, random {self.image_size}x{self.image_size} images, batch "
            f"{self.batch_size}, SGD, cross-entropy, CPU, 1 thread, {self.epochs} epochs each "
            f"validating on {self.val_batches} batches"
        )


def run_resnet(
    sizes: Sizes,
    without: Collection[str] = (),
    progress: Callable[[str], None] | None = None,
    workload: ResNetWorkload | None = None,
) -> dict[str, Any]:
    """ResNet-18: the overhead section's method and contenders on :class:`ResNetWorkload`."""
    return run_overhead(
        rounds=sizes.resnet_rounds,
        steps=sizes.resnet_steps,
        warmup=sizes.resnet_warmup,
        contenders=[BASELINE, *WORKLOAD_CONTENDERS],
        without=without,
        progress=progress,
        workload=workload or ResNetWorkload(),
    )


# ---------------------------------------------------------------------- (c) DataLoader
class _SlowDataset(Dataset[Batch]):
    """Random features and labels that take ``seconds_per_batch`` to fetch (one sleep per
    batch, through ``__getitems__``, as a dataset reading from a slow disk would)."""

    def __init__(self, size: int, features: int, classes: int, seconds_per_batch: float) -> None:
        generator = torch.Generator().manual_seed(3)
        self.inputs = torch.randn(size, features, generator=generator)
        self.targets = torch.randint(0, classes, (size,), generator=generator)
        self.seconds_per_batch = seconds_per_batch

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Batch:
        return self.inputs[index], self.targets[index]

    def __getitems__(self, indices: list[int]) -> list[Batch]:
        time.sleep(self.seconds_per_batch)
        return [(self.inputs[i], self.targets[i]) for i in indices]


class _TimedIterator:
    """A DataLoader iterator whose ``__next__`` calls are timed into ``waits``."""

    def __init__(self, iterator: Iterator[Any], waits: list[list[float]], done: list[list[float]]) -> None:
        self._iterator = iterator
        self._epoch: list[float] = []
        self._done: list[float] = []
        waits.append(self._epoch)
        done.append(self._done)

    def __iter__(self) -> _TimedIterator:
        return self

    def __next__(self) -> Any:
        started = time.perf_counter()
        batch = next(self._iterator)
        done = time.perf_counter()
        self._epoch.append(done - started)
        self._done.append(done)
        return batch

    def __len__(self) -> int:
        return len(self._iterator)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._iterator, name)


class WaitTimedLoader(DataLoader[Batch]):
    """A DataLoader that records, per epoch, how long each fetch waited (``waits``) and when
    it returned (``done``).

    A subclass, so every runtime treats it as the DataLoader it is (samplers, lengths,
    worker start-up per epoch).
    """

    waits: list[list[float]]
    done: list[list[float]]

    def __iter__(self) -> Any:  # a proxy of DataLoader's own iterator
        if not hasattr(self, "waits"):
            self.waits, self.done = [], []
        return _TimedIterator(super().__iter__(), self.waits, self.done)

    def per_step_us(self) -> tuple[float, float, float]:
        """``(wait, first, period)`` in µs: the mean wait of the fetches after each epoch's
        first, the mean first fetch (worker start-up), and the mean time from one batch
        arriving to the next (the step plus the wait), all within epochs."""
        later = [w for epoch in self.waits for w in epoch[1:]]
        firsts = [epoch[0] for epoch in self.waits if epoch]
        periods = [b - a for epoch in self.done for a, b in zip(epoch, epoch[1:], strict=False)]
        return statistics.fmean(later) * 1e6, statistics.fmean(firsts) * 1e6, statistics.fmean(periods) * 1e6


@dataclass(frozen=True)
class LoaderWorkload(_Classification):
    """A small MLP fed by a 2-worker DataLoader whose batches take ``seconds_per_batch``."""

    features: int = 256
    hidden: int = 1024
    batch_size: int = 64
    workers: int = 2
    seconds_per_batch: float = 0.002

    def model(self) -> nn.Module:
        torch.manual_seed(self.seed)
        return nn.Sequential(
            nn.Linear(self.features, self.hidden), nn.ReLU(),
            nn.Linear(self.hidden, self.hidden), nn.ReLU(),
            nn.Linear(self.hidden, self.classes),
        )  # fmt: skip

    def loader(self, batches_per_epoch: int) -> WaitTimedLoader:
        dataset = _SlowDataset(batches_per_epoch * self.batch_size, self.features, self.classes, self.seconds_per_batch)
        return WaitTimedLoader(dataset, batch_size=self.batch_size, num_workers=self.workers)

    def describe(self) -> str:
        return (
            f"MLP {self.features}-{self.hidden}-{self.hidden}-{self.classes}, batch "
            f"{self.batch_size}, DataLoader with {self.workers} workers, "
            f"{self.seconds_per_batch * 1e3:g} ms per batch per worker, {self.epochs} epochs"
        )


@dataclass
class _LoaderRounds:
    wait_us: dict[str, list[float]] = field(default_factory=dict)
    first_us: dict[str, list[float]] = field(default_factory=dict)
    step_us: dict[str, list[float]] = field(default_factory=dict)


def run_loader(
    sizes: Sizes,
    without: Collection[str] = (),
    progress: Callable[[str], None] | None = None,
    workload: LoaderWorkload | None = None,
) -> dict[str, Any]:
    """DataLoader with 2 workers: each contender's wait for data per step (µs), interleaved
    rounds (plus one unrecorded warm-up round); differences and ratios are to the baseline."""
    workload = workload or LoaderWorkload()
    names = [BASELINE, *WORKLOAD_CONTENDERS]
    skipped = {n: note for n in names if (note := missing_requirement(CONTENDERS[n], without)) is not None}
    active = [n for n in names if n not in skipped]
    rounds = _LoaderRounds()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="busloop-bench-") as tmp:
            ctx = RunContext(workload, Path(tmp), workload.val_batches_list())
            for index in range(sizes.loader_rounds + 1):
                if progress is not None:
                    progress(f"round {index}/{sizes.loader_rounds}{' (warm-up)' if index == 0 else ''}")
                for name in active:
                    loader = workload.loader(sizes.loader_batches)
                    with quiet():
                        CONTENDERS[name].fit(ctx, loader)  # type: ignore[arg-type]  # any iterable
                    if index == 0:
                        continue
                    wait, first, period = loader.per_step_us()
                    rounds.wait_us.setdefault(name, []).append(wait)
                    rounds.first_us.setdefault(name, []).append(first)
                    rounds.step_us.setdefault(name, []).append(period)
    finally:
        torch.set_num_threads(threads)
    results: dict[str, Any] = {}
    for name in active:
        base_wait, base_step = rounds.wait_us[BASELINE], rounds.step_us[BASELINE]
        results[name] = {
            "label": CONTENDERS[name].label,
            "wait_us": summarize(rounds.wait_us[name]),
            "first_fetch_us": summarize(rounds.first_us[name]),
            "period_us": summarize(rounds.step_us[name]),
            "wait_minus_baseline_us": statistics.median(
                a - b for a, b in zip(rounds.wait_us[name], base_wait, strict=True)
            ),
            "period_ratio_vs_baseline": statistics.median(
                a / b for a, b in zip(rounds.step_us[name], base_step, strict=True)
            ),
        }
    return {
        "workload": workload.describe(),
        "rounds": sizes.loader_rounds,
        "batches_per_epoch": sizes.loader_batches,
        "epochs": workload.epochs,
        "clock": "wall",
        "results": results,
        "skipped": skipped,
    }


def run_workloads(
    sizes: Sizes = FULL_SIZES,
    *,
    without: Collection[str] = (),
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the three workloads; returns ``{"resnet", "loader", "digits"}`` (JSON-ready)."""
    say = progress or (lambda message: None)
    return {
        "resnet": run_resnet(sizes, without, lambda m: say(f"resnet: {m}")),
        "loader": run_loader(sizes, without, lambda m: say(f"loader: {m}")),
        "digits": run_digits(
            rounds=sizes.digits_rounds, epochs=sizes.digits_epochs, limit=sizes.digits_limit,
            without=without, progress=lambda m: say(f"digits: {m}"),
        ),
    }


def _table(section: dict[str, Any], title: str, columns: list[str], row: Callable[[dict[str, Any]], list[str]]) -> list[str]:
    """One workload's Markdown: a title line, the table (one row per contender), skip notes."""
    lines = ["", title, "", "| contender | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    lines += ["| " + " | ".join([entry["label"], *row(entry)]) + " |" for entry in section["results"].values()]
    return lines + [f"- {name}: {note}" for name, note in section["skipped"].items()]


def workloads_markdown(results: dict[str, Any]) -> str:
    """The three workloads as Markdown tables (ratios to the plain loop)."""
    lines: list[str] = []
    resnet, loader, digits = results.get("resnet"), results.get("loader"), results.get("digits")
    if resnet and resnet["results"]:
        lines += _table(
            resnet,
            f"ResNet-18 ({resnet['workload']}); thread CPU time, {resnet['rounds']} rounds × "
            f"{resnet['steps']} steps, lockstep with a plain-loop companion:",
            ["ms / step", "overhead µs (median)", "overhead % of the step", "× plain"],
            lambda e: [
                f"{e['step_us']['median'] / 1e3:.1f}", f"{e['overhead_us']['median']:+.0f}",
                f"{e['overhead_pct_of_baseline']:+.2f} %", f"{e['ratio_vs_baseline']:.4f}",
            ],
        )  # fmt: skip
    if loader and loader["results"]:
        lines += _table(
            loader,
            f"DataLoader ({loader['workload']}); wall time, {loader['rounds']} rounds × "
            f"{loader['epochs']} epochs of {loader['batches_per_epoch']} batches:",
            ["wait for data µs / step (median)", "− plain's wait µs", "first fetch of an epoch ms",
             "batch-to-batch ms", "× plain"],
            lambda e: [
                f"{e['wait_us']['median']:.0f}", f"{e['wait_minus_baseline_us']:+.0f}",
                f"{e['first_fetch_us']['median'] / 1e3:.1f}", f"{e['period_us']['median'] / 1e3:.2f}",
                f"{e['period_ratio_vs_baseline']:.3f}",
            ],
        )  # fmt: skip
    if digits and digits["results"]:
        lines += _table(
            digits,
            f"The digits default job, {digits['epochs']} epochs, {digits['rounds']} rounds; time from "
            "building the model and loaders to the end of the final epoch's validation:",
            ["wall s", "× plain (wall)", "thread CPU s", "× plain (CPU)", "final val accuracy"],
            lambda e: [
                f"{e['wall_s']['median']:.2f}", f"{e['wall_ratio']:.2f}", f"{e['cpu_s']['median']:.2f}",
                f"{e['cpu_ratio']:.2f}", f"{e['accuracy']['median']:.3f}",
            ],
        )  # fmt: skip
    return "\n".join(lines[1:]) + "\n"
