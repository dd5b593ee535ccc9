"""``LightningModule.log`` semantics for :class:`runtime.metrics.MetricStore` (no Lightning import).

A LightningModule's ``self.log`` / ``self.log_dict`` are routed here while the runtime drives
the module. The behaviour follows Lightning 2.6's result collection, checked against the real
Trainer in ``tests/test_lightning_log.py``:

- ``on_step`` / ``on_epoch`` default by where ``log`` is called: inside a training batch
  (``training_step``, ``on_train_batch_*``, backward and optimizer hooks) step only; inside
  a validation / test batch epoch only; in an epoch-level hook (``on_*_epoch_start/_end``,
  ``on_train_start`` ...) epoch only, and ``on_step=True`` is an error there.
- A value logged with both gets two names: ``name_step`` (each step) and ``name_epoch``.
- ``reduce_fx`` "mean" (batch-size weighted), "sum", "max", "min" (or torch.mean / sum /
  max / min, builtins sum / max / min); anything else is an error, as in Lightning.
- ``sync_dist`` reduces across ranks with the reduce_fx (per step for step values, once per
  epoch for epoch values); ``rank_zero_only`` means the value is never synced.
- A ``torchmetrics.Metric`` (duck typed: ``compute``, ``reset``, ``_forward_cache``) gives its
  forward value per step, ``compute()`` at epoch end, and is reset when the epoch's results are.
- ``state.metrics`` (callback_metrics, floats), ``state.logged_metrics`` and
  ``state.progress_bar_metrics`` are filled as Lightning fills its three dicts; step values
  appear when they are logged, epoch values when the epoch ends (or, for a value logged in an
  epoch-level hook, when it is logged).

Values are kept per epoch in lists and reduced once (float64), so a logged step costs an
append and, for step values, one ``float()``; Lightning accumulates float32 tensors per step.
"""

from __future__ import annotations

import builtins
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from runtime import distributed as dist
from runtime.data import batch_size_of

if TYPE_CHECKING:
    from runtime.metrics import MetricStore

__all__ = ["LightningLog", "parse_reduce_fx"]

_REDUCE_NAMES = ("mean", "sum", "max", "min")
_REDUCE_CALLABLES: dict[Any, str] = {
    torch.mean: "mean",
    torch.sum: "sum",
    builtins.sum: "sum",
    torch.max: "max",
    builtins.max: "max",
    torch.min: "min",
    builtins.min: "min",
}
_DIST_OPS = {"mean": "sum", "sum": "sum", "max": "max", "min": "min"}


def parse_reduce_fx(name: str, reduce_fx: Any) -> str:
    """The reduction ("mean", "sum", "max", "min") that ``reduce_fx`` names, or a ValueError."""
    if isinstance(reduce_fx, str):
        key = "mean" if reduce_fx.lower() == "avg" else reduce_fx.lower()
        if key in _REDUCE_NAMES:
            return key
    else:
        try:
            found = _REDUCE_CALLABLES.get(reduce_fx)
        except TypeError:  # an unhashable object
            found = None
        if found is not None:
            return found
    raise ValueError(
        f"self.log({name!r}, reduce_fx={reduce_fx!r}): reduce_fx must be 'mean', 'sum', 'max' or "
        "'min' (or torch.mean / sum / max / min); for a custom reduction log a torchmetrics.Metric"
    )


def _is_metric(value: Any) -> bool:
    """A ``torchmetrics.Metric`` (duck typed, so runtime/ never imports torchmetrics)."""
    return (
        not isinstance(value, torch.Tensor)
        and callable(getattr(value, "compute", None))
        and callable(getattr(value, "reset", None))
        and hasattr(value, "_forward_cache")
    )


def _as_scalar(name: str, value: Any, enable_graph: bool) -> torch.Tensor:
    """``value`` as a 0-d floating tensor (detached unless ``enable_graph``), or a ValueError."""
    if isinstance(value, torch.Tensor):
        tensor = value if enable_graph else value.detach()
    elif isinstance(value, bool | int | float):
        tensor = torch.tensor(float(value))
    else:
        kind = "a dict (use self.log_dict)" if isinstance(value, dict) else f"a {type(value).__name__}"
        raise ValueError(
            f"self.log({name!r}, ...): the value is {kind}; log a number, a one-element tensor "
            "or a torchmetrics.Metric"
        )
    if tensor.numel() != 1:
        raise ValueError(
            f"self.log({name!r}, ...): the tensor has shape {tuple(tensor.shape)}; a logged tensor "
            f"must have a single element (log {name!r} as its .mean(), for example)"
        )
    if tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.float()
    return tensor.reshape(())


class _Result:
    """One logged name in one place (batch or epoch level) of one stage, for one epoch."""

    __slots__ = (
        "batch_level", "computed", "epoch_name", "forked", "logger", "meta", "metric", "name",
        "on_epoch", "on_step", "prog_bar", "reduce", "sizes", "step_name", "sync", "values",
    )

    def __init__(self, name: str, meta: tuple[Any, ...], batch_level: bool, suffix: str = "") -> None:
        self.name = name + suffix
        self.meta = meta
        self.on_step, self.on_epoch, self.reduce, self.prog_bar, self.logger, self.sync = meta[:6]
        self.forked = self.on_step and self.on_epoch
        # Lightning forks first, then adds the loader suffix: "loss_epoch/dataloader_idx_1"
        self.step_name = f"{name}_step{suffix}" if self.forked else self.name
        self.epoch_name = f"{name}_epoch{suffix}" if self.forked else self.name
        self.batch_level = batch_level
        self.values: list[torch.Tensor] = []
        self.sizes: list[int] = []
        self.metric: Any = None
        self.computed: float | None = None

    def epoch_value(self) -> float | None:
        """The epoch reduction (cached until the next update), synced across ranks if asked."""
        if self.computed is None:
            if self.metric is not None:
                self.computed = float(self.metric.compute())
            elif self.values:
                self.computed = _reduce(self.values, self.sizes, self.reduce, self.sync)
        return self.computed


def _reduce(values: list[torch.Tensor], sizes: list[int], how: str, sync: Any) -> float:
    """Reduce one epoch's values (float64 on the CPU); ``sync`` (a group or True) all-reduces."""
    stacked = torch.stack([v.to(device="cpu", dtype=torch.float64) for v in values])
    if how == "mean":
        total = torch.stack([(stacked * torch.tensor(sizes, dtype=torch.float64)).sum(),
                             torch.tensor(float(builtins.sum(sizes)), dtype=torch.float64)])
        if sync:
            total = dist.all_reduce(total, "sum", None if sync is True else sync)
        return float(total[0] / total[1])
    reduced = stacked.sum() if how == "sum" else stacked.max() if how == "max" else stacked.min()
    if sync:
        reduced = dist.all_reduce(reduced, _DIST_OPS[how], None if sync is True else sync)
    return float(reduced)


class LightningLog:
    """The results of ``self.log`` calls by stage prefix ("train", "val", "test"), per epoch."""

    def __init__(self, store: MetricStore) -> None:
        self.store = store
        self.state = store.state
        self._results: dict[str, dict[tuple[bool, str], _Result]] = {}
        self._step_logs: dict[str, dict[str, float]] = {}
        """The latest step values each stage sends its logger (Lightning re-sends them)."""
        self._eval_steps: dict[tuple[str, int | None], int] = {}
        """How many eval batches each stage (and loader) has logged this run (the eval loggers' step)."""
        self.step_names: set[str] = set()
        """Names whose step values this log put in ``state.step_metrics`` (not Runtime.log's)."""
        self.unlogged: set[str] = set()
        """Epoch names callback_metrics has but a logger never gets (a forked value's base name,
        a ``logger=False`` value): Lightning's ``validate`` / ``test`` results leave them out."""

    # ------------------------------------------------------------------ logging
    def log(
        self,
        name: str,
        value: Any,
        prog_bar: bool = False,
        logger: bool | None = None,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: Any = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any = None,
        add_dataloader_idx: bool = True,
        batch_size: int | None = None,
        metric_attribute: str | None = None,
        rank_zero_only: bool = False,
    ) -> None:
        """Record one ``self.log`` call with Lightning's semantics (see the module docstring)."""
        store, prefix = self.store, self.store.prefix
        if prefix == "predict":
            raise ValueError(f"self.log({name!r}, ...): logging is not supported during predict")
        if add_dataloader_idx and "/dataloader_idx_" in name:
            raise ValueError(
                f"self.log({name!r}, ...): the name must not contain '/dataloader_idx_' when "
                "add_dataloader_idx=True"
            )
        batch_level = store.batch is not None
        on_step, on_epoch = self._levels(name, prefix, batch_level, on_step, on_epoch)
        how = parse_reduce_fx(name, reduce_fx)
        sync: Any = False
        if sync_dist and not rank_zero_only and dist.is_available_and_initialized() and dist.world_size() > 1:
            sync = True if sync_dist_group is None else sync_dist_group
        loader = store.dataloader_idx  # None unless a stage with several loaders runs one
        meta = (on_step, on_epoch, how, prog_bar, logger is not False, sync, enable_graph, loader)
        suffix = f"/dataloader_idx_{loader}" if loader is not None and add_dataloader_idx else ""

        results = self._results.setdefault(prefix, {})
        result = results.get((batch_level, name + suffix))
        if result is None:
            result = results[(batch_level, name + suffix)] = _Result(name, meta, batch_level, suffix)
        elif result.meta != meta:
            raise ValueError(
                f"self.log({name!r}, ...) was called twice in the same place with different "
                "arguments; log it with the same options each time"
            )

        step_value: torch.Tensor | None = None
        if _is_metric(value):
            result.metric, result.computed = value, None
            cache = value._forward_cache
            if on_step and isinstance(cache, torch.Tensor):
                step_value = cache if enable_graph else cache.detach()
        else:
            tensor = _as_scalar(name, value, enable_graph)
            if on_step:
                step_value = tensor
                if sync:
                    step_value = dist.all_reduce(
                        tensor.detach().clone().to(store.reduce_device()), _DIST_OPS[how],
                        None if sync is True else sync,
                    )
                    if how == "mean":
                        step_value = step_value / dist.world_size()
            if on_epoch:
                if batch_size is None:
                    batch_size = store.batch_size
                    if batch_size is None:
                        batch_size = 1
                        if batch_level and how == "mean":
                            batch_size = store.batch_size = batch_size_of(store.batch)
                result.values.append(tensor.detach())
                result.sizes.append(batch_size)
                result.computed = None

        st = self.state
        if step_value is not None:
            scalar = float(step_value)
            name, step_name = result.name, result.step_name
            if result.logger:
                st.logged_metrics[step_name] = scalar
                self._step_logs.setdefault(prefix, {})[step_name] = scalar
            if prefix == "train":  # Lightning's training results feed callback_metrics per step
                st.metrics[name] = st.metrics[step_name] = scalar
            if prog_bar:
                st.progress_bar_metrics[step_name] = scalar
            st.step_metrics[name] = step_value  # the progress bars' latest value
            self.step_names.add(name)
        if on_epoch and not batch_level:  # an epoch-level hook: visible at once, as in Lightning
            self._publish_epoch(result)

    def _levels(
        self, name: str, prefix: str, batch_level: bool, on_step: bool | None, on_epoch: bool | None
    ) -> tuple[bool, bool]:
        """Lightning's per-hook defaults and checks for on_step / on_epoch."""
        if batch_level:
            default_step = prefix == "train"
            on_step = default_step if on_step is None else on_step
            on_epoch = (not default_step) if on_epoch is None else on_epoch
        else:
            if on_step:
                raise ValueError(
                    f"self.log({name!r}, on_step=True) in an epoch-level hook: only on_epoch=True "
                    "is possible outside a batch"
                )
            if on_epoch is False:
                raise ValueError(
                    f"self.log({name!r}, on_epoch=False) in an epoch-level hook: only on_epoch=True "
                    "is possible outside a batch"
                )
            on_step, on_epoch = False, True
        if not on_step and not on_epoch:
            raise ValueError(f"self.log({name!r}, on_step=False, on_epoch=False) records nothing")
        return bool(on_step), bool(on_epoch)

    # ------------------------------------------------------------------ epoch end
    def _publish_epoch(self, result: _Result) -> None:
        value = result.epoch_value()
        if value is None or (result.meta[7] is not None and self.state.sanity_checking):
            return  # Lightning stores no loader's results (of several) in the sanity check
        st, name, epoch_name = self.state, result.name, result.epoch_name
        st.metrics[name] = st.metrics[epoch_name] = value
        if result.logger:
            st.logged_metrics[epoch_name] = value
        if result.prog_bar:
            st.progress_bar_metrics[epoch_name] = value

    def _epoch_results(self, prefix: str) -> Iterator[_Result]:
        return (r for r in self._results.get(prefix, {}).values() if r.on_epoch)

    def reduce(self, prefix: str) -> dict[str, float]:
        """Compute ``prefix``'s epoch values into the state; return them as callback_metrics names."""
        reduced: dict[str, float] = {}
        for result in self._epoch_results(prefix):
            self._publish_epoch(result)
            value = result.computed
            if value is not None:
                reduced[result.name] = value
                if result.forked:
                    reduced[result.epoch_name] = value
                if result.forked or not result.logger:
                    self.unlogged.add(result.name)
                if not result.logger:
                    self.unlogged.add(result.epoch_name)
        return reduced

    def epoch_log(self, prefix: str) -> dict[str, float]:
        """What Lightning's logger gets at the end of ``prefix``'s epoch (logger=True values)."""
        logged: dict[str, float] = {}
        for result in self._epoch_results(prefix):
            value = result.epoch_value()
            if result.logger and value is not None:
                logged[result.epoch_name] = value
        return logged

    def logged(self, prefix: str, name: str) -> bool:
        """Whether ``name`` was logged in ``prefix``'s current epoch (in a batch or a hook)."""
        results = self._results.get(prefix, {})
        return (True, name) in results or (False, name) in results

    def step_log(self, prefix: str) -> dict[str, float]:
        """The step values Lightning's logger gets for ``prefix`` now (the latest of each name)."""
        return dict(self._step_logs.get(prefix, {}))

    def next_eval_step(self, prefix: str) -> int:
        """The eval logger step of the batch that just ended (counts every eval batch of the
        run, per loader as Lightning does when a stage has several)."""
        key = (prefix, self.store.dataloader_idx)
        step = self._eval_steps.get(key, 0)
        self._eval_steps[key] = step + 1
        return step

    def next_loader(self, prefix: str) -> None:
        """The next loader of ``prefix`` starts: the step values sent to the logger are its own
        from now on (Lightning sends only the running loader's)."""
        self._step_logs.pop(prefix, None)

    def end_epoch(self, prefix: str) -> None:
        """Forget ``prefix``'s results (Lightning resets them); logged Metric objects are reset."""
        for result in self._results.pop(prefix, {}).values():
            if result.metric is not None:
                with warnings.catch_warnings():  # torchmetrics warns about reset-before-update
                    warnings.simplefilter("ignore")
                    result.metric.reset()
        self._step_logs.pop(prefix, None)

    def clear(self) -> None:
        """A new public run: eval logger steps start again from 0."""
        self._eval_steps.clear()
        self.unlogged.clear()

