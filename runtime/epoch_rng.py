"""The random state at a training epoch's start, read at every epoch start and converted to a
checkpoint's form only when a checkpoint needs it.

Exact resume replays an epoch from the random state it started with (:func:`runtime.resume.
epoch_batches`), so every training epoch reads every global generator when it starts. Only a
checkpoint written before the epoch's last batch holds that state, and it holds it in the
weights_only-safe form of :func:`runtime.checkpoint.rng_state`; an epoch-end checkpoint, or no
checkpoint at all, needs no conversion. :class:`EpochRng` keeps what the getters returned and
:func:`runtime.resume.checkpoint_of` converts it for a checkpoint that holds it.
"""

from __future__ import annotations

from typing import Any

from runtime.checkpoint import read_rng, rng_form

__all__ = ["EpochRng"]


class EpochRng:
    """The global random generators' states at a training epoch's start, as read.

    Every epoch start reads them (a checkpoint written before the epoch's last batch replays
    the epoch from them), but only such a checkpoint needs them in the weights_only-safe form
    of :func:`runtime.checkpoint.rng_state`: :meth:`checkpoint_form` converts them then, so
    an epoch start does not pack random's 625 words into a tensor nor copy NumPy's key array
    (about 90 of the 740 thousand instructions the read-and-convert cost). Reading is
    :func:`~runtime.checkpoint.rng_state`'s (each getter returns a copy that later draws do
    not change); the converted form equals what it would have returned at the same moment.
    """

    __slots__ = ("_form", "_raw")

    def __init__(self) -> None:
        self._raw = read_rng()
        self._form: dict[str, Any] | None = None

    def checkpoint_form(self) -> dict[str, Any]:
        """The states as :func:`runtime.checkpoint.rng_state` gave them: converted on the first
        call, the same dict after (every checkpoint of the epoch holds that one dict, as when
        the epoch start converted it; several mid-epoch checkpoints convert once)."""
        if self._form is None:
            self._form = rng_form(self._raw)
        return self._form
