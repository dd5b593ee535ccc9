"""The metric store behind ``Runtime.log`` and a LightningModule's ``self.log``.

``Runtime.log`` values (and the loss a plain module records) are kept per stage prefix
(``train``, ``val``, ``test``, ``predict``) as they are logged (tensors stay on their device:
no sync per step) and reduced once per epoch into batch-size-weighted means, summed across
ranks under DDP in one collective. The latest value of each name is mirrored in
``state.step_metrics`` for progress bars. A LightningModule's ``self.log`` goes through
:meth:`MetricStore.module_log` to :class:`runtime.lightning_log.LightningLog`, created on its
first call, so a plain module's per-step path pays nothing for Lightning's semantics.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from typing import Any

import torch

from runtime import distributed as dist
from runtime.data import batch_size_of
from runtime.lightning_log import LightningLog
from runtime.state import LoopState

__all__ = ["STAGE_PREFIX", "MetricStore"]

#: The metric-name prefix of each stage and loop section.
STAGE_PREFIX = {"fit": "train", "train": "train", "validation": "val", "test": "test", "predict": "predict"}

_Log = tuple[list[Any], list[int]]
"""The values logged under one name in one epoch, and the batch size of each."""


class MetricStore:
    """Logged values of the running epochs and their per-epoch reductions.

    The loop sets :attr:`batch` for every batch (and resets :attr:`batch_size`), so a value
    logged without a batch size is weighted by the size of the batch it came from.
    """

    def __init__(self, state: LoopState, device: torch.device) -> None:
        self.state = state
        self.device = device
        self.prefix = "train"
        """The stage prefix a name without ``/`` gets (see :meth:`log`)."""
        self.batch: Any = None
        self.batch_size: int | None = None
        self.active: dict[str, _Log] = {}
        """The logs of the current stage, by name."""
        self._logs: dict[str, dict[str, _Log]] = {}
        self._epoch_metrics: dict[str, dict[str, float]] = {}
        self._prog_bar: set[str] = set()
        """``Runtime.log`` names logged with ``prog_bar=True``."""
        self.lightning: LightningLog | None = None
        """A LightningModule's ``self.log`` results; created by the first :meth:`module_log`."""
        self.dataloader_idx: int | None = None
        """The running loader while an evaluation stage with several loaders runs its batches
        (:mod:`runtime.eval_loaders`: names logged then get its suffix); else None."""

    def clear(self) -> None:
        """Forget everything logged (the start of a public run)."""
        self._epoch_metrics.clear()
        self._logs.clear()
        self.dataloader_idx = None  # an evaluation that failed mid-loader leaves no suffix behind
        if self.lightning is not None:
            self.lightning.clear()

    def begin_stage(self, prefix: str) -> None:
        """Route the next logs to the ``prefix`` stage, outside any batch (the loop sets
        :attr:`batch` per batch; whether one is set tells ``self.log`` its defaults)."""
        self.prefix = prefix
        self.active = self._logs.setdefault(prefix, {})
        self.batch = None

    def log(self, name: str, value: Any, batch_size: int | None = None, prog_bar: bool = False) -> None:
        """``Runtime.log``: a name without ``/`` gets the current stage's prefix.

        ``prog_bar=True`` also puts the value in ``state.progress_bar_metrics`` (the latest
        step value, then the epoch mean when the epoch is reduced).
        """
        if "/" not in name:
            name = f"{self.prefix}/{name}"
        if self.dataloader_idx:  # loader N > 0 of several: busloop's suffix rule
            name += f"/dataloader_idx_{self.dataloader_idx}"
        self.record(name, value, batch_size)
        if prog_bar:
            self._prog_bar.add(name)
            self.state.progress_bar_metrics[name] = float(value)

    def module_log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        """``LightningModule.log`` while the runtime drives the module, with Lightning's
        semantics and signature (:meth:`runtime.lightning_log.LightningLog.log`); names are
        kept as given."""
        lightning = self.lightning
        if lightning is None:
            lightning = self.lightning = LightningLog(self)
        lightning.log(name, value, *args, **kwargs)

    def module_log_dict(self, dictionary: Mapping[str, Any], **kwargs: Any) -> None:
        """``LightningModule.log_dict`` counterpart of :meth:`module_log` (same options for all)."""
        if "metric_attribute" in kwargs:
            raise TypeError("log_dict() got an unexpected keyword argument 'metric_attribute'")
        for name, value in dictionary.items():
            self.module_log(name, value, **kwargs)

    def logged(self, name: str) -> bool:
        """Whether ``name`` was logged in the current stage's epoch (by ``log`` or ``self.log``)."""
        return name in self.active or (self.lightning is not None and self.lightning.logged(self.prefix, name))

    def record(self, name: str, value: Any, batch_size: int | None) -> None:
        """Keep ``value`` under ``name`` for this epoch's reduction (the per-step path)."""
        if isinstance(value, torch.Tensor) and value.requires_grad:
            # A parameter is updated in place later: keep a copy. A step's result is fresh.
            value = value.detach().clone() if value.is_leaf else value.detach()
        self.record_step(name, value, batch_size)

    def record_step(self, name: str, value: Any, batch_size: int | None = None) -> None:
        """:meth:`record` for a value that needs no copy: a step's detached result.

        The per-batch path of a plain module's loss (one call, no type checks): the value is
        kept as it is (a tensor stays on its device, no sync), weighted by ``batch_size`` or
        the size of the current batch, and mirrored in ``state.step_metrics``.
        """
        if batch_size is None:
            batch_size = self.batch_size
            if batch_size is None:
                batch_size = self.batch_size = batch_size_of(self.batch) if self.batch is not None else 1
        entry = self.active.get(name)
        if entry is None:
            entry = self.active[name] = ([], [])
        entry[0].append(value)
        entry[1].append(batch_size)
        self.state.step_metrics[name] = value

    def reduce(self, prefix: str) -> dict[str, float]:
        """Batch-size-weighted means of this stage's logs (one sync, summed across ranks).

        Merges into ``state.metrics`` and returns this stage's metrics, with the epoch values
        of a LightningModule's ``self.log`` under their callback_metrics names. Values logged
        again after a reduction (e.g. in ``*_epoch_end``) are folded into the same epoch.
        """
        logs = self._logs.get(prefix)
        if logs:
            names = list(logs)
            if dist.is_available_and_initialized() and dist.world_size() > 1:
                sums = torch.stack([_weighted_sum(*logs[n]) for n in names])
                counts = torch.tensor([float(sum(logs[n][1])) for n in names], dtype=torch.float64)
                totals = dist.all_reduce_sum(torch.cat([sums.cpu(), counts]).to(self.reduce_device()))
                values = (totals[: len(names)] / totals[len(names) :]).tolist()
            else:  # one process: the same float64 division, without the collective's tensors
                values = [_weighted_sum(*logs[n]).item() / float(sum(logs[n][1])) for n in names]
            reduced = dict(zip(names, values, strict=True))
            self._epoch_metrics.setdefault(prefix, {}).update(reduced)
            self.state.metrics.update(reduced)
            for name in self._prog_bar.intersection(reduced):
                self.state.progress_bar_metrics[name] = reduced[name]
            logs.clear()
        metrics = dict(self._epoch_metrics.get(prefix, {}))
        if self.lightning is not None:
            metrics.update(self.lightning.reduce(prefix))
        return metrics

    def begin_loader(self, prefix: str, dataloader_idx: int | None) -> None:
        """The next loader of an evaluation with several (``dataloader_idx``) starts, or, with
        None, the stage's batches are over (its epoch-end hooks log unsuffixed names)."""
        self.dataloader_idx = dataloader_idx
        if self.lightning is not None and dataloader_idx is not None:
            self.lightning.next_loader(prefix)

    def end_epoch(self, prefix: str) -> None:
        """The loop finished ``prefix``'s epoch: ``self.log`` results start afresh (Lightning
        resets its results, and the torchmetrics objects logged, at this point)."""
        if self.lightning is not None:
            self.lightning.end_epoch(prefix)

    def step_logs(self, step: int) -> list[tuple[dict[str, float], int]]:
        """What the tracker gets on a logged training step: ``(metrics, step)`` pairs.

        ``Runtime.log`` train values as ``<name>_step`` at ``step`` (the global step); a
        LightningModule's step values under Lightning's names at Lightning's step (the
        batches that stepped before this one: ``step - 1``).
        """
        lightning_names = self.lightning.step_names if self.lightning is not None else ()
        native = {
            f"{k}_step": float(v) for k, v in self.state.step_metrics.items()
            if (k.startswith("train") or "/" not in k) and k not in lightning_names
        }
        calls = [(native, step)] if native else []
        if self.lightning is not None:
            logged = self.lightning.step_log("train")
            if logged:
                calls.append((logged, max(step - 1, 0)))
        return calls

    def epoch_logs(self, prefix: str, step: int) -> list[tuple[dict[str, float], int]]:
        """What the tracker gets at the end of ``prefix``'s epoch: ``(metrics, step)`` pairs.

        ``Runtime.log`` epoch means at ``step``; a LightningModule's logger=True epoch values
        at Lightning's step (``step - 1`` during fit, where the epoch ends after a batch).
        """
        native = dict(self._epoch_metrics.get(prefix, {}))
        calls = [(native, step)] if native else []
        if self.lightning is not None:
            logged = self.lightning.epoch_log(prefix)
            if logged:
                calls.append((logged, max(step - 1, 0) if self.state.stage == "fit" else step))
        return calls

    def pending(self, prefix: str) -> dict[str, Any]:
        """The not yet reduced logs of ``prefix``, weights_only-safe (for a checkpoint)."""
        return {
            name: {
                "values": [v if type(v) is float else torch.as_tensor(v).detach().cpu() for v in values],
                "sizes": list(sizes),
            }
            for name, (values, sizes) in self._logs.get(prefix, {}).items()
        }

    def restore_pending(self, prefix: str, saved: Mapping[str, Any]) -> None:
        """Put back what :meth:`pending` saved (an exact mid-epoch resume)."""
        self._logs[prefix] = {
            name: (list(entry["values"]), list(entry["sizes"])) for name, entry in saved.items()
        }

    def reduce_device(self) -> torch.device:
        """Where a collective over logged values runs (this rank's GPU under NCCL, else the CPU)."""
        if dist.is_available_and_initialized() and self.device.type == "cuda":
            return self.device
        return torch.device("cpu")


_FLOATS = {float}


def _weighted_sum(values: list[Any], sizes: list[int]) -> torch.Tensor:
    """``sum(value * size)`` in float64 on the CPU, as a 0-d tensor.

    A CPU loss is recorded as a Python float (:mod:`runtime.batch`), a loss elsewhere as a
    0-d tensor; float64 holds every float32/float16/bfloat16/float64 value exactly, so both
    forms give the same float64 vector and the same sum.
    """
    if values and set(map(type, values)) == _FLOATS:  # the floats as one tensor, through a C loop
        stacked = torch.frombuffer(array("d", values), dtype=torch.float64)
    else:
        joined: torch.Tensor | None
        try:  # one stack for the epoch instead of three tensor ops per logged value
            joined = torch.stack(values)
        except (TypeError, RuntimeError):  # not all tensors, shapes that differ, several devices
            joined = None
        if joined is not None and joined.ndim == 1:  # every value a 0-d tensor
            stacked = joined.to(device="cpu", dtype=torch.float64)
        else:
            stacked = torch.stack([torch.as_tensor(v, dtype=torch.float64).cpu().reshape(()) for v in values])
    first = sizes[0] if sizes else None
    if type(first) is int and sizes.count(first) == len(sizes):  # one batch size: the same tensor,
        weights = torch.full((len(sizes),), float(first), dtype=torch.float64)  # without a list walk
    else:
        weights = torch.tensor(sizes, dtype=torch.float64)
    return (stacked * weights).sum()
