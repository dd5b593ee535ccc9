"""FailOnNoTrainBatches: stop a run whose training loader yields no batches, and say why.

A dataset smaller than one (effective) batch, with ``drop_last=True`` or a fractional
``limit_train_batches``, gives an epoch of zero batches: training would "finish" without
doing anything. This callback turns that into an error at ``fit_start`` whose message
gives the dataset size, the smallest size that yields a batch, how many samples are
missing, and the parameters that decide it.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from runtime import distributed as dist
from runtime.callback import Callback
from runtime.loop import Runtime
from runtime.registry import register

__all__ = ["FailOnNoTrainBatches", "NoBatchesReport", "batches_needed", "minimum_dataset_size"]


def batches_needed(limit: int | float | None) -> int | None:
    """How many full loader batches ``limit_train_batches`` needs to keep at least one.

    1 for no limit or an int limit above zero; for a float limit the smallest ``k`` with
    ``int(k * limit) >= 1`` (``ceil(1 / limit)`` in exact arithmetic, computed the way the
    runtime cuts the loader); None for a zero limit, which keeps no batch whatever the size.
    """
    if limit is None or isinstance(limit, bool):
        return 1
    if isinstance(limit, int):
        return 1 if limit > 0 else None
    if limit <= 0:
        return None
    if limit >= 1.0:
        return 1
    needed = max(1, math.floor(1.0 / limit))
    while int(needed * limit) < 1:  # guards against float rounding in 1 / limit
        needed += 1
    return needed


def minimum_dataset_size(batch_size: int, world_size: int, drop_last: bool, needed: int) -> int:
    """The smallest dataset that gives ``needed`` batches per rank.

    ``batch_size * world_size * needed`` with ``drop_last`` (every batch must be full),
    else ``(needed - 1) * batch_size * world_size + 1`` (the last batch may be partial).
    """
    if drop_last:
        return batch_size * world_size * needed
    return (needed - 1) * batch_size * world_size + 1


@attrs.define
class NoBatchesReport:
    """What is known about an empty training loader; None marks an unknown value."""

    dataset_size: int | None = None
    batch_size: int | None = None
    world_size: int | None = None
    drop_last: bool | None = None
    limit_train_batches: int | float | None = None

    @property
    def minimum_size(self) -> int | None:
        """The smallest dataset size that yields one training batch (None if unknown)."""
        needed = batches_needed(self.limit_train_batches)
        if needed is None or self.batch_size is None or self.drop_last is None:
            return None
        return minimum_dataset_size(self.batch_size, self.world_size or 1, self.drop_last, needed)

    @property
    def missing(self) -> int | None:
        """How many samples the dataset lacks (None if unknown or not short)."""
        minimum = self.minimum_size
        if minimum is None or self.dataset_size is None or self.dataset_size >= minimum:
            return None
        return minimum - self.dataset_size

    def message(self) -> str:
        """The error message: sizes, then parameters, then what to change."""
        facts: list[str] = []
        if self.dataset_size is not None:
            facts.append(f"dataset size {self.dataset_size}")
        minimum = self.minimum_size
        if minimum is not None:
            facts.append(f"minimum size {minimum}")
        missing = self.missing
        if missing is not None:
            facts.append(f"missing {missing}")

        params: list[str] = []
        if self.batch_size is not None:
            params.append(f"batch_size={self.batch_size}")
        if self.world_size is not None:
            params.append(f"world_size={self.world_size}")
        if self.drop_last is not None:
            params.append(f"drop_last={self.drop_last}")
        params.append(f"limit_train_batches={self.limit_train_batches}")

        text = "The training loader yields no batches"
        if facts:
            text += ": " + ", ".join(facts)
        text += f" ({', '.join(params)})."
        return f"{text} {self._advice()}"

    def _advice(self) -> str:
        limit = self.limit_train_batches
        if batches_needed(limit) is None:
            return "limit_train_batches=0 trains on no batch; raise it or remove it."
        minimum = self.minimum_size
        if minimum is not None and self.dataset_size is not None and self.dataset_size >= minimum:
            return "The dataset is large enough; check the loader's sampler."
        fixes: list[str] = []
        missing = self.missing
        fixes.append(f"add at least {missing} samples" if missing is not None else "add samples")
        fixes.append("lower batch_size")
        if self.drop_last:
            fixes.append("set drop_last=False")
        if isinstance(limit, float) and not isinstance(limit, bool) and limit < 1.0:
            fixes.append("raise limit_train_batches")
        return "Fix: " + ", ".join(fixes[:-1]) + f" or {fixes[-1]}."


def _dataset_size(loader: Any) -> int | None:
    dataset = getattr(loader, "dataset", None)
    if dataset is None:
        return None
    try:
        return len(dataset)
    except TypeError:  # an IterableDataset without __len__
        return None


def _batch_size(loader: Any) -> int | None:
    size = getattr(loader, "batch_size", None)
    if size is None:
        size = getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
    return size if isinstance(size, int) and not isinstance(size, bool) else None


def _drop_last(loader: Any) -> bool | None:
    for source in (getattr(loader, "batch_sampler", None), loader):
        value = getattr(source, "drop_last", None)
        if isinstance(value, bool):
            return value
    return None


def _world_size(loader: Any) -> int:
    replicas = getattr(getattr(loader, "sampler", None), "num_replicas", None)
    return replicas if isinstance(replicas, int) and replicas > 0 else dist.world_size()


def describe_loader(loader: Any, limit: int | float | None) -> NoBatchesReport:
    """Collect what can be read from ``loader`` (a DataLoader or any iterable)."""
    return NoBatchesReport(
        dataset_size=_dataset_size(loader),
        batch_size=_batch_size(loader),
        world_size=_world_size(loader),
        drop_last=_drop_last(loader),
        limit_train_batches=limit,
    )


@register()
class FailOnNoTrainBatches(Callback):
    """At ``fit_start``, raise ValueError if the training loader yields zero batches.

    The message names the dataset size, the minimum size, how many samples are missing,
    and batch_size, world_size, drop_last and limit_train_batches (values that cannot be
    read from the loader are left out). The runtime reports it as a CallbackError naming
    this callback and the event.
    """

    def on_fit_start(self, runtime: Runtime) -> None:
        if runtime.state.num_training_batches > 0:
            return
        loader = runtime.loaders.get("train", getattr(runtime, "train_loader", None))
        report = describe_loader(loader, runtime.config.trainer.limit_train_batches)
        raise ValueError(report.message())
