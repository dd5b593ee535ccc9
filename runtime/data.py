"""Data plumbing for the loop: batch counts with limits, device moves, batch sizes, and
iterators that start mid-epoch by skipping at the sampler level (no data loaded for
skipped batches)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

log = logging.getLogger("busloop.data")

__all__ = [
    "batch_size_of",
    "distributed_loader",
    "iterate",
    "loader_length",
    "move_to_device",
    "num_batches",
    "set_sampler_epoch",
]


def loader_length(loader: Iterable[Any]) -> float:
    """``len(loader)``, or ``inf`` for loaders without a length (iterable datasets)."""
    try:
        return float(len(loader))  # type: ignore[arg-type]
    except TypeError:
        return math.inf


def num_batches(loader: Iterable[Any], limit: int | float | None) -> float:
    """How many batches a stage runs: the loader's length cut by a ``limit_*_batches``.

    ``None`` or ``1.0`` keeps everything, an int caps the count, a float takes that fraction
    (rounded down, as Lightning does).
    """
    length = loader_length(loader)
    if limit is None or (isinstance(limit, float) and limit == 1.0):
        return length
    if isinstance(limit, int):
        return min(length, float(limit))
    if math.isinf(length):
        raise ValueError("a fractional limit_*_batches needs a loader with a length")
    return float(int(length * limit))


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Tensors in ``batch`` (nested in tuples, lists, dicts) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)({k: move_to_device(v, device) for k, v in batch.items()})  # type: ignore[call-arg]
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to_device(v, device) for v in batch))
    if isinstance(batch, list | tuple):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def batch_size_of(batch: Any) -> int:
    """The size of the first dimension of the first tensor found in ``batch`` (else 1)."""
    if type(batch) in (tuple, list) and batch:
        first = batch[0]  # fast path: (inputs, targets, ...) with batched inputs
        if isinstance(first, torch.Tensor) and first.ndim:
            size = len(first)  # == shape[0], without building a torch.Size
            if size:
                return size
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, Sequence) and not isinstance(batch, str):
        for item in batch:
            size = batch_size_of(item)
            if size:
                return size
        return 1
    return 1


class _SkippingIterator:
    """Batch indices after the first ``skip`` batches; the skip runs on :meth:`start`."""

    def __init__(self, batch_sampler: Iterable[list[int]], skip: int) -> None:
        self._source = batch_sampler
        self._skip = skip
        self._indices: Iterator[list[int]] | None = None

    def start(self) -> None:
        """Draw (and drop) the skipped batches' indices; idempotent."""
        if self._indices is None:
            self._indices = iter(self._source)
            for _ in range(self._skip):
                if next(self._indices, None) is None:
                    break

    def __iter__(self) -> Iterator[list[int]]:
        return self

    def __next__(self) -> list[int]:
        self.start()
        assert self._indices is not None
        return next(self._indices)


class _SkipFirstBatches:
    """A batch sampler that drops its first ``skip`` batches of indices (no data loaded)."""

    def __init__(self, batch_sampler: Iterable[list[int]], skip: int) -> None:
        self.batch_sampler = batch_sampler
        self.skip = skip

    def __iter__(self) -> _SkippingIterator:
        return _SkippingIterator(self.batch_sampler, self.skip)

    def __len__(self) -> int:
        return max(0, len(self.batch_sampler) - self.skip)  # type: ignore[arg-type]


def iterate(loader: Iterable[Any], skip: int = 0, *, replay_persistent: bool = False) -> Iterator[Any]:
    """An iterator over ``loader`` that starts after ``skip`` batches.

    For a ``DataLoader`` with a batch sampler, the skipped batches' indices are drawn from
    the sampler but no sample is loaded, and every random draw happens in the same order
    as in an epoch that starts from batch 0: the iterator's base seed first, then the
    sampler's own seed (RandomSampler draws it from the global RNG when it starts). The
    skip is started before this function returns, so the caller may then restore the
    random state it had when the skipped batches were trained. Other iterables are
    advanced by consuming batches, which does load them.

    ``replay_persistent``: the epoch being replayed is not the first one of a loader with
    ``persistent_workers``. In an uninterrupted run such an epoch reuses the workers and draws
    no new base seed, so the fresh iterator's base seed is drawn from a throwaway generator
    and the global random stream stays as it was.
    """
    fresh_persistent = (
        replay_persistent
        and isinstance(loader, DataLoader)
        and loader.persistent_workers
        and getattr(loader, "_iterator", None) is None
        and loader.generator is None
    )
    if skip <= 0 and not fresh_persistent:
        return iter(loader)
    if isinstance(loader, DataLoader) and loader.batch_sampler is not None:
        original = loader.batch_sampler
        # DataLoader forbids reassigning batch_sampler after __init__; the swap lasts only
        # while the iterator is created, which is when it reads the sampler.
        if skip > 0:
            object.__setattr__(loader, "batch_sampler", _SkipFirstBatches(original, skip))
        if fresh_persistent:
            loader.generator = torch.Generator()
        try:
            iterator: Iterator[Any] = iter(loader)
        finally:
            object.__setattr__(loader, "batch_sampler", original)
            if fresh_persistent:
                loader.generator = None
        if hasattr(iterator, "_index_sampler"):
            # A persistent iterator re-reads this in every later epoch: give it the original.
            iterator._index_sampler = original
        # A single-process iterator starts its sampler lazily, on the first batch; start it
        # now (worker iterators already did, to prefetch).
        sampler_iterator = getattr(iterator, "_sampler_iter", None)
        if isinstance(sampler_iterator, _SkippingIterator):
            sampler_iterator.start()
        return iterator
    log.info("Skipping %d batches by loading them (the loader has no batch sampler)", skip)
    consumed: Iterator[Any] = iter(loader)
    for _ in range(skip):
        next(consumed, None)
    return consumed


def set_sampler_epoch(loader: Iterable[Any], epoch: int) -> None:
    """Call ``set_epoch`` on the loader's sampler(s) when they have one (DistributedSampler)."""
    for sampler in (
        getattr(loader, "sampler", None),
        getattr(getattr(loader, "batch_sampler", None), "sampler", None),
    ):
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)


def distributed_loader(loader: Any, *, shuffle: bool | None = None) -> Any:
    """A copy of ``loader`` whose sampler shards the dataset across ranks.

    Loaders that already use a DistributedSampler, or that are not plain DataLoaders with a
    default sampler, are returned unchanged.
    """
    if not isinstance(loader, DataLoader) or isinstance(loader.sampler, DistributedSampler):
        return loader
    if loader.batch_sampler is None or type(loader.batch_sampler).__name__ != "BatchSampler":
        log.warning("Loader with a custom batch sampler is not sharded across ranks")
        return loader
    if shuffle is None:
        shuffle = isinstance(loader.sampler, RandomSampler)
    sampler: DistributedSampler[Any] = DistributedSampler(
        loader.dataset,  # type: ignore[arg-type]
        shuffle=shuffle,
        drop_last=loader.drop_last,
    )
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers,
        prefetch_factor=loader.prefetch_factor,
        generator=loader.generator,
    )
