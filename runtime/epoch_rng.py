"""The random state at a training epoch's start, read at every epoch start and converted to a
checkpoint's form only when a checkpoint needs it.

Exact resume replays an epoch from the random state it started with (:func:`runtime.resume.
epoch_batches`), so every training epoch reads every global generator when it starts. Only a
checkpoint written before the epoch's last batch holds that state, and it holds it in the
weights_only-safe form of :func:`runtime.checkpoint.rng_state`; an epoch-end checkpoint, or no
checkpoint at all, needs no conversion. :class:`EpochRng` keeps what the getters returned and
:func:`held_epoch_rng` converts it for a checkpoint that holds it.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from runtime.checkpoint import _numpy, _python_words
from runtime.state import LoopState

__all__ = ["EpochRng", "held_epoch_rng"]


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

    __slots__ = ("_cuda", "_form", "_numpy", "_python", "_torch")

    def __init__(self) -> None:
        self._python = random.getstate()
        self._torch = torch.get_rng_state()
        np = _numpy()
        self._numpy = None if np is None else np.random.get_state(legacy=True)
        self._cuda = list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else None
        self._form: dict[str, Any] | None = None

    def checkpoint_form(self) -> dict[str, Any]:
        """The states as :func:`runtime.checkpoint.rng_state` gave them: converted on the first
        call, the same dict after (every checkpoint of the epoch holds that one dict, as when
        the epoch start converted it; several mid-epoch checkpoints convert once)."""
        if self._form is None:
            self._form = self._convert()
        return self._form

    def _convert(self) -> dict[str, Any]:
        version, internal, gauss_next = self._python
        state: dict[str, Any] = {"python": [version, _python_words(internal), gauss_next], "torch": self._torch}
        if self._numpy is not None:
            np = _numpy()
            name, keys, pos, has_gauss, cached_gaussian = self._numpy
            state["numpy"] = {
                "bit_generator": str(name),
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached_gaussian),
            }
        if self._cuda is not None:
            state["cuda"] = list(self._cuda)
        return state


def held_epoch_rng(state: LoopState, epoch_rng: EpochRng | None) -> dict[str, Any] | None:
    """The epoch-start random state a checkpoint written now holds, converted: None once the
    epoch's batches are done (:func:`checkpoint_of` drops it then, by the same test), so an
    epoch-end checkpoint converts nothing."""
    if epoch_rng is None or (state.training is False and state.last_batch_done()):
        return None
    return epoch_rng.checkpoint_form()
