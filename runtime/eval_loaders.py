"""Several loaders in one evaluation stage (validation, test, predict), as Lightning 2.6 runs them.

A stage may be given several loaders: a list or tuple of loaders, a dict of loaders (its values,
in order), an :class:`EvalLoaders`, or Lightning's ``CombinedLoader`` in mode "sequential". The
loop runs them one after the other (Lightning's "sequential" mode), each cut by the stage's
``limit_*_batches``; ``batch_idx`` restarts at 0 for each loader and the events carry the
loader's ``dataloader_idx``.

What changes with several loaders (one loader runs exactly as before):

- A Lightning-style ``<stage>_step`` is called with ``dataloader_idx`` as its last argument,
  and so are the module's ``on_<stage>_batch_start/_end`` hooks (Lightning's rule: only with
  several loaders; a step without a ``dataloader_idx`` parameter (or ``*args``) is an error
  then, and with one loader a ``dataloader_idx`` without a default is one).
- ``self.log`` in a batch of loader N records ``name/dataloader_idx_N`` (for every N, unless
  ``add_dataloader_idx=False``); values logged in epoch-level hooks keep their names.
- busloop's own names (a plain module's ``val/loss``, ``Runtime.log``) keep theirs for loader 0
  and get ``/dataloader_idx_N`` for loader N > 0, so the first loader's metrics (and the
  callbacks monitoring them) do not change when a loader is added.
- ``predict`` returns one list of outputs per loader.

This module holds what the loop needs for that; the loop itself is :mod:`runtime.loop`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch

from runtime.data import iterate, num_batches
from runtime.errors import ConfigError
from runtime.metrics import STAGE_PREFIX

__all__ = [
    "DATALOADER_SUFFIX",
    "EvalLoaders",
    "EvalPass",
    "LoaderIndexError",
    "as_loaders",
    "check_signatures",
    "count_batches",
    "distributed_loaders",
    "loader_name",
    "loader_step",
    "one_or_several",
    "sanity_counts",
]

#: The suffix of a name logged in a batch of loader N when a stage has several loaders.
DATALOADER_SUFFIX = "/dataloader_idx_{}"


class EvalLoaders(list[Iterable[Any]]):
    """Several loaders of one evaluation stage, run one after the other.

    A plain list of loaders is recognised too (:func:`as_loaders`); this type says so
    explicitly, for loaders a list could be mistaken for (lists of batches).
    """


def _is_loader(obj: object) -> bool:
    """Whether ``obj`` can be a loader in a collection of loaders: an iterable that is not
    itself a batch-like container (tensor, list, tuple, dict, string)."""
    if isinstance(obj, torch.Tensor | list | tuple | Mapping | str | bytes):
        return False
    return hasattr(obj, "__iter__")


def as_loaders(data: Any) -> list[Iterable[Any]]:
    """The loaders ``data`` stands for, in order.

    An :class:`EvalLoaders`, a list / tuple of loaders, a dict of loaders (its values) or a
    Lightning ``CombinedLoader`` in mode "sequential" are several loaders; anything else (a
    list of batches included) is one loader.
    """
    if isinstance(data, EvalLoaders):
        return list(data)
    flattened = getattr(data, "flattened", None)
    if type(data).__name__ == "CombinedLoader" and isinstance(flattened, list):
        mode = getattr(data, "_mode", "sequential")
        if mode != "sequential":
            raise ConfigError(
                f'CombinedLoader(mode="{mode}"): an evaluation stage runs its loaders one after the other; '
                'give mode="sequential" or a list of loaders'
            )
        return list(flattened)
    if isinstance(data, list | tuple) and data and all(_is_loader(d) for d in data):
        return list(data)
    if isinstance(data, Mapping) and data and all(_is_loader(d) for d in data.values()):
        return list(data.values())
    return [data]


def one_or_several(loaders: list[Iterable[Any]]) -> Iterable[Any]:
    """One loader as itself, several as an :class:`EvalLoaders` (what the Runtime keeps)."""
    return loaders[0] if len(loaders) == 1 else EvalLoaders(loaders)


def count_batches(data: Any, limit: int | float | None, split: str) -> list[int | float]:
    """Batches per loader of ``data`` with the ``limit_<split>_batches`` applied to each
    (``inf`` for a loader without a length: it runs until it is exhausted)."""
    from runtime.core import as_count

    return [as_count(num_batches(loader, limit, split)) for loader in as_loaders(data)]


def distributed_loaders(data: Any) -> Any:
    """``data`` with each loader given a distributed sampler (unshuffled), under torchrun."""
    from runtime.data import distributed_loader

    return one_or_several(
        [distributed_loader(loader, shuffle=False) for loader in as_loaders(data)]
    )


def loader_name(name: str, dataloader_idx: int) -> str:
    """busloop's own metric name for loader ``dataloader_idx``: unchanged for loader 0,
    ``name/dataloader_idx_N`` for loader N > 0."""
    return name if dataloader_idx == 0 else name + DATALOADER_SUFFIX.format(dataloader_idx)


def _takes(method: Callable[..., Any], name: str) -> bool:
    """Lightning's test: the signature names ``name`` or takes ``*args``."""
    method = getattr(method, "__wrapped__", method)
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == name or p.kind is p.VAR_POSITIONAL for p in parameters)


def _needs_index(method: Callable[..., Any]) -> bool:
    """Whether ``method`` has a ``dataloader_idx`` parameter without a default."""
    try:
        parameter = inspect.signature(getattr(method, "__wrapped__", method)).parameters.get(
            "dataloader_idx"
        )
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.default is inspect.Parameter.empty


class LoaderIndexError(ConfigError, RuntimeError):
    """A step or batch hook whose ``dataloader_idx`` does not fit the stage's loaders: a
    ConfigError, and a RuntimeError as Lightning raises it (code that catches that still does)."""


def check_signatures(model: Any, stage: str, several: bool, label: str) -> None:
    """Lightning's check of ``dataloader_idx`` in the step and batch hooks of a stage:
    required with several loaders, and without a default only then."""
    for name in (f"{stage}_step", f"on_{stage}_batch_start", f"on_{stage}_batch_end"):
        method = getattr(model, name, None)
        if not callable(method):
            continue
        where = f"`{type(model).__name__}.{name}()`"
        if several and not _takes(method, "dataloader_idx"):
            raise LoaderIndexError(
                f"{label}: several loaders, but no `dataloader_idx` argument in {where}; "
                "add dataloader_idx=0 to its signature"
            )
        if not several and _needs_index(method):
            raise LoaderIndexError(
                f"{label}: one loader, but you have included `dataloader_idx` in {where} without "
                "a default; give it one (dataloader_idx=0) or remove it"
            )


def loader_step(model: Any, stage: str, dataloader_idx: int) -> Callable[[Any, int], Any] | None:
    """The model's ``<stage>_step`` for loader ``dataloader_idx`` of several, as
    ``fn(batch, batch_idx)``: Lightning's arguments (``batch_idx`` only when the step takes
    it, then ``dataloader_idx``); None for a model without one.

    The step is called on the module itself, not through a DDP wrapper's forward: evaluation
    computes no gradients, so nothing needs the wrapper's all-reduce.
    """
    from runtime.module import takes_batch_idx

    method = getattr(model, f"{stage}_step", None)
    if not callable(method):
        return None
    if takes_batch_idx(method):
        return lambda batch, batch_idx: method(batch, batch_idx, dataloader_idx)
    return lambda batch, batch_idx: method(batch, dataloader_idx)


def sanity_counts(per_loader: list[int | float], steps: int) -> list[int | float]:
    """The sanity check's batches per loader: ``num_sanity_val_steps`` of each (all for -1)."""
    return [n if steps < 0 else min(steps, n) for n in per_loader]


class EvalPass:
    """One evaluation epoch over a stage's loaders, for :meth:`runtime.loop.Runtime._eval_epoch`.

    Created when the epoch starts: checks the step and batch hooks' signatures and sets
    ``state.eval_loaders``. Iterating it yields ``(dataloader_idx, batches, count, step)`` per
    loader, with the loader's step (``fn(batch, batch_idx)``; None for a model without one) and
    the module's batch-transfer hooks bound to its index; when a loader's batches are done it
    stores that loader's results (Lightning stores them then, so ``callback_metrics`` has
    loader 0's values while loader 1 runs).
    """

    def __init__(self, runtime: Any, stage: str, data: Any, counts: list[int | float]) -> None:
        self.runtime, self.stage, self.counts = runtime, stage, counts
        self.several = len(counts) > 1
        self._loaders = as_loaders(data)
        check_signatures(runtime.model, stage, self.several, stage)
        runtime.state.eval_loaders, runtime.state.eval_offset = len(counts), 0
        self._names: list[set[str]] = []
        self._seen: set[str] = set()
        self._ends: list[int] = []

    def __iter__(self) -> Iterator[tuple[int, Iterator[Any], int | float, Callable[..., Any] | None]]:
        rt, stage, several = self.runtime, self.stage, self.several
        metrics, prefix, transfer = rt.metrics, STAGE_PREFIX[stage], rt._transfer
        try:
            for index, (data, count) in enumerate(zip(self._loaders, self.counts, strict=True)):
                step = loader_step(rt.model, stage, index) if several else rt._bridge.step(stage)
                if several:
                    metrics.begin_loader(prefix, index)
                    if transfer is not None:  # the module's transfer hooks get the loader's index
                        rt._transfer = rt._bridge.batch_transfer(rt.device, index)
                if count == float("inf"):  # no length: count the batches the loop takes
                    taken = [0]
                    yield index, _counted(iterate(data), taken), count, step
                    rt.state.eval_offset += taken[0]
                else:
                    yield index, iterate(data), count, step
                    rt.state.eval_offset += int(count)
                if several:
                    found = metrics.reduce(prefix) if stage != "predict" else {}
                    self._names.append(set(found) - self._seen)
                    self._seen.update(found)
                    self._ends.append(len(rt._predictions))
        finally:
            rt._transfer = transfer
            metrics.batch = None
            metrics.begin_loader(prefix, None)  # epoch-end hooks log unsuffixed names

    def metrics(self, final: Mapping[str, float]) -> list[dict[str, float]]:
        """One dict per loader: its own metrics plus those logged outside its batches (epoch-end
        hooks), with their final values, as Lightning's ``validate`` / ``test`` return them."""
        if not self.several:
            return [dict(final)]
        shared = {k: v for k, v in final.items() if k not in self._seen}
        return [{**{k: final[k] for k in names if k in final}, **shared} for names in self._names]

    def predictions(self, outputs: list[Any]) -> list[Any]:
        """The outputs of a predict run: as they are for one loader, one list per loader else."""
        if not self.several:
            return outputs
        starts = [0, *self._ends[:-1]]
        return [outputs[a:b] for a, b in zip(starts, self._ends, strict=True)]


def _counted(batches: Iterator[Any], taken: list[int]) -> Iterator[Any]:
    """``batches``, counting in ``taken[0]`` those handed out: how far a loader without a length
    went, so the next loader's batches are numbered after it (``state.eval_offset``)."""
    for batch in batches:
        taken[0] += 1
        yield batch
