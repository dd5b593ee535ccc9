"""Training epochs of unknown length: loaders without ``__len__`` (a DataLoader over an
IterableDataset, a generator, a stream), with Lightning 2.6's semantics.

A training loader without a length and without an int ``limit_train_batches`` has
``num_training_batches = inf``: its epoch ends when the iterator runs out (or at ``max_steps``,
or when a stop is asked for). The loop must still know which batch is the last one, before it
trains it (an accumulation window closes there, epoch-interval schedulers step after it,
validation with ``val_check_interval=1.0`` runs after it), so the batches come through a
:func:`lookahead` that fetches one batch ahead, as Lightning's prefetching data fetcher does,
and :class:`EpochEnd` stands in for the batch count in the loop's comparisons. An int
``limit_train_batches`` gives the epoch that many batches, as Lightning does: the loop then
runs as for a sized loader and simply stops early if the iterator runs out first.

Loaders with a length never come here: their loop fetches nothing ahead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from itertools import count
from typing import Any

from runtime.errors import ConfigError
from runtime.state import LoopState

__all__ = ["NEVER", "EpochEnd", "lookahead", "check_val_check_interval", "epoch_indices", "val_schedule"]

_END = object()


def lookahead(batches: Iterator[Any], state: LoopState, *, resumed: bool = False) -> Iterator[Any]:
    """An epoch's batches, fetched one ahead so that the batch being returned is known to be
    the last one when there is no next: ``state.loader_done`` turns True as that batch is
    returned (before the loop trains it), as Lightning's ``is_last_batch``.

    The first batch is fetched here, when the epoch's iterator is built: on an exact resume
    that happens before the saved random stream is restored, as in the uninterrupted run,
    where the batch after the saved position had already been fetched when the checkpoint
    was written. ``resumed``: the batches continue a saved epoch after its finished ones; if
    there is none left, the last finished one was the epoch's last.

    A generator, not an object with ``__next__``: resuming a generator costs less per batch
    than calling a Python ``__next__`` method (about 215 ns a batch before, measured with
    ``time.thread_time`` over 200k batches).
    """
    first = next(batches, _END)
    state.loader_done = resumed and first is _END
    return _ahead(batches, state, first)


def _ahead(batches: Iterator[Any], state: LoopState, batch: Any) -> Iterator[Any]:
    """:func:`lookahead`'s batches after the first (``batch``, fetched already): each is
    handed over once the next one was fetched; the last after ``loader_done`` is set."""
    if batch is _END:
        return
    for following in batches:  # fetched before ``batch`` is handed over
        yield batch
        batch = following
    state.loader_done = True
    yield batch


class EpochEnd:
    """The batch count of an epoch of unknown length, as the training loop compares it.

    The loop asks ``batch_idx + 1 == n`` (is this batch the last?) and ``done == n`` (was the
    finished batch the last?) right after fetching, so both compare equal exactly when the
    :func:`lookahead` found no next batch: the comparison reads ``state.loader_done``. This
    keeps the loop's per-batch code the same for sized loaders.
    """

    __slots__ = ("_state",)

    def __init__(self, state: LoopState) -> None:
        self._state = state

    def __eq__(self, other: object) -> bool:
        return self._state.loader_done

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "EpochEnd(inf)"


def epoch_indices(state: LoopState, skip: int) -> tuple[int | EpochEnd, Iterable[int]]:
    """The training loop's batch count ``n`` and batch indices from ``skip``: ``range(skip, n)``
    for a known length; :class:`EpochEnd` and an unbounded count otherwise (the
    :func:`lookahead` ends the epoch)."""
    n = state.num_training_batches
    if math.isinf(n):
        return EpochEnd(state), count(skip)
    return int(n), range(skip, int(n))


NEVER = -1
"""A batch count no finished batch compares equal to (an int: the loop's per-batch ``done ==
end`` test is then an int comparison)."""


def val_schedule(interval: int | float, n: EpochEnd) -> tuple[int | float, object]:
    """``(every, end)`` for an epoch of unknown length: validation runs after a batch when
    ``done % every == 0 or done == end``. As in Lightning 2.6: an int ``val_check_interval``
    validates every ``interval`` batches and not at the epoch's end (unless a multiple);
    ``1.0`` validates once, after the last batch."""
    if isinstance(interval, int):
        return interval, NEVER
    return math.inf, n


def check_val_check_interval(interval: int | float, num_training_batches: float) -> None:
    """A fractional ``val_check_interval`` needs an epoch length: refused when the training
    loader has none (Lightning raises a MisconfigurationException with the same advice)."""
    if math.isinf(num_training_batches) and isinstance(interval, float) and interval != 1.0:
        raise ConfigError(
            f"trainer.val_check_interval: the training loader has no length (an IterableDataset?), so "
            f"it must be 1.0 or an int (validate every k training batches), got {interval}"
        )
