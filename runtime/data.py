"""Data plumbing for the loop: batch counts with limits, device moves, batch sizes, and
iterators that start mid-epoch by skipping at the sampler level (no data loaded for
skipped batches)."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from runtime.distributed import rank as global_rank
from runtime.distributed import world_size
from runtime.errors import ConfigError

log = logging.getLogger("busloop.data")

__all__ = [
    "batch_size_of",
    "distributed_loader",
    "iterate",
    "loader_length",
    "move_to_device",
    "num_batches",
    "RankShare",
    "set_sampler_epoch",
]


def loader_length(loader: Iterable[Any]) -> float:
    """``len(loader)``, or ``inf`` for loaders without a length (iterable datasets)."""
    try:
        return float(len(loader))  # type: ignore[arg-type]
    except TypeError:
        return math.inf


def num_batches(loader: Iterable[Any], limit: int | float | None, stage: str = "train") -> float:
    """How many batches a stage runs: the loader's length cut by a ``limit_<stage>_batches``.

    ``None`` or ``1.0`` keeps everything, an int caps the count, a float takes that fraction
    (rounded down, as Lightning does). A loader without a length runs ``inf`` batches (until
    it runs out) or an int limit's; a fraction of it is refused, as by Lightning.
    """
    length = loader_length(loader)
    if limit is None or (isinstance(limit, float) and limit == 1.0):
        return length
    if isinstance(limit, int):
        return min(length, float(limit))
    if math.isinf(length):
        raise ConfigError(
            f"trainer.limit_{stage}_batches: the {stage} loader has no length (an IterableDataset?), so it "
            f"must be 1.0 or an int (the number of batches to run), got {limit}"
        )
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
        if isinstance(first, torch.Tensor):
            shape = first.shape  # empty for a 0-d tensor; len(first) is a Python-level call
            if shape and shape[0]:
                return shape[0]
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
    random state it had when the skipped batches were trained. Other iterables, and
    DataLoaders over an IterableDataset (whose sampler does not choose the data), are
    advanced by fetching and dropping batches, which does load them.

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
    if isinstance(loader, DataLoader) and isinstance(loader.dataset, IterableDataset):
        # Its sampler draws placeholder indices: the data comes from the dataset's iterator.
        return _consumed(_fresh_iterator(loader, fresh_persistent), skip)
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
    return _consumed(iter(loader), skip)


def _fresh_iterator(loader: DataLoader[Any], fresh_persistent: bool) -> Iterator[Any]:
    """``iter(loader)``; replaying a later epoch of persistent workers, with its base seed
    drawn from a throwaway generator (see :func:`iterate`)."""
    if not fresh_persistent:
        return iter(loader)
    loader.generator = torch.Generator()
    try:
        return iter(loader)
    finally:
        loader.generator = None


def _consumed(batches: Iterator[Any], skip: int) -> Iterator[Any]:
    """``batches`` after fetching and dropping the first ``skip`` (a loader that cannot skip
    at the sampler: an IterableDataset, a generator)."""
    if skip > 0:
        log.info("Skipping %d batches by loading them (the loader cannot skip by sampler)", skip)
    for _ in range(skip):
        next(batches, None)
    return batches


def set_sampler_epoch(loader: Iterable[Any], epoch: int) -> None:
    """Call ``set_epoch`` on the loader's sampler(s) when they have one (DistributedSampler)."""
    for sampler in (
        getattr(loader, "sampler", None),
        getattr(getattr(loader, "batch_sampler", None), "sampler", None),
    ):
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)


class RankShare(Sampler[int]):
    """Rank ``rank``'s share of a custom sampler: every rank draws the sampler's full index
    sequence and takes every ``num_replicas``-th index from position ``rank``.

    Every rank must draw the same sequence: a sampler with a ``generator`` attribute left
    None (RandomSampler, WeightedRandomSampler, SubsetRandomSampler) gets one seeded with
    ``seed + epoch`` for the draw, so the ranks agree whatever their global random streams
    do, and a resumed epoch draws it again. The sequence is padded by repeating its start
    (or cut, ``drop_last``) to a multiple of ``num_replicas``, as DistributedSampler does.
    """

    def __init__(self, sampler: Sampler[int], num_replicas: int, rank: int, *, drop_last: bool, seed: int = 0) -> None:
        self.sampler, self.num_replicas, self.rank = sampler, num_replicas, rank
        self.drop_last, self.seed, self.epoch = drop_last, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        inner = getattr(self.sampler, "set_epoch", None)
        if callable(inner):
            inner(epoch)

    def _draw(self) -> list[int]:
        seeded = hasattr(self.sampler, "generator") and self.sampler.generator is None
        if seeded:
            self.sampler.generator = torch.Generator().manual_seed(self.seed + self.epoch)  # type: ignore[attr-defined]
        try:
            return list(self.sampler)
        finally:
            if seeded:
                self.sampler.generator = None  # type: ignore[attr-defined]

    def __iter__(self) -> Iterator[int]:
        indices = self._draw()
        total = len(self) * self.num_replicas
        if total > len(indices):
            indices += (indices * math.ceil(total / max(len(indices), 1)))[: total - len(indices)]
        return iter(indices[:total][self.rank :: self.num_replicas])

    def __len__(self) -> int:
        length = len(self.sampler)  # type: ignore[arg-type]
        return length // self.num_replicas if self.drop_last else math.ceil(length / self.num_replicas)


def _distributed_aware(sampler: object) -> bool:
    """Whether a (batch) sampler already splits its data across ranks."""
    inner = getattr(sampler, "sampler", None)
    return (
        isinstance(sampler, DistributedSampler | RankShare)
        or isinstance(inner, DistributedSampler | RankShare)
        or hasattr(sampler, "num_replicas")
    )


def distributed_loader(loader: Any, *, shuffle: bool | None = None, seed: int = 0) -> Any:
    """A copy of ``loader`` whose sampler gives this rank its share of the dataset.

    The copy keeps every option of the loader (workers, ``multiprocessing_context``,
    ``pin_memory``, ``collate_fn``, generator, its class ...): only the sampler changes. A
    default sampler becomes a DistributedSampler (shuffled when the loader shuffles; ``seed``
    seeds the shuffle); a custom one (e.g. WeightedRandomSampler) is kept and wrapped in
    :class:`RankShare`. Loaders that already shard (a DistributedSampler, a batch sampler
    with ``num_replicas``), DataLoaders over an IterableDataset and iterables that are not
    DataLoaders are returned unchanged (as Lightning does; the last two with a warning: each
    rank reads the whole stream unless it shards itself); a custom batch sampler that does not
    shard is an error (busloop cannot split it).
    """
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        _warn_unsharded(loader)
        return loader
    if loader.batch_sampler is None and loader.sampler is None:
        return loader
    if _distributed_aware(loader.sampler) or _distributed_aware(loader.batch_sampler):
        return loader
    batch_sampler = loader.batch_sampler
    if batch_sampler is None or type(batch_sampler) is not BatchSampler:
        raise ConfigError(
            f"the loader's batch_sampler {type(batch_sampler).__name__} does not split the data "
            "across ranks (no num_replicas); give it a DistributedSampler or shard it by rank"
        )
    num_replicas, rank = world_size(), global_rank()
    original: Sampler[int] = loader.sampler  # type: ignore[assignment]  # a map-style loader's
    if type(original) in (RandomSampler, SequentialSampler) and not _draws_differently(original):
        sampler: Sampler[int] = DistributedSampler(
            loader.dataset,  # type: ignore[arg-type]
            num_replicas=num_replicas,
            rank=rank,
            shuffle=isinstance(original, RandomSampler) if shuffle is None else shuffle,
            seed=seed,
            drop_last=loader.drop_last,
        )
    else:
        sampler = RankShare(original, num_replicas, rank, drop_last=loader.drop_last, seed=seed)
    sharded = copy.copy(loader)
    # DataLoader forbids setting these after __init__; the copy is ours and not iterated yet.
    object.__setattr__(sharded, "sampler", sampler)
    object.__setattr__(sharded, "batch_sampler", BatchSampler(sampler, batch_sampler.batch_size, batch_sampler.drop_last))
    object.__setattr__(sharded, "_iterator", None)
    return sharded


def _warn_unsharded(loader: object) -> None:
    """A source no sampler can split (an IterableDataset, a generator) is every rank's whole
    stream unless it shards itself by rank, as under Lightning: say so (rank zero, per loader)."""
    if world_size() > 1 and global_rank() == 0:
        log.warning(
            "%s has no sampler to split across %d ranks: every rank reads all of it unless it "
            "shards itself (torch.distributed.get_rank()); ranks must yield the same number of batches",
            type(getattr(loader, "dataset", loader)).__name__,
            world_size(),
        )


def _draws_differently(sampler: Sampler[int]) -> bool:
    """A RandomSampler with replacement, its own length or its own generator is kept as is."""
    if not isinstance(sampler, RandomSampler):
        return False
    return sampler.replacement or sampler._num_samples is not None or sampler.generator is not None
