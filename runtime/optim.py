"""Optimizers and schedulers: objects, factories, ``{name, params}`` specs, or Lightning's
``configure_optimizers`` return values, all turned into a list of optimizers (one, unless the
model optimizes manually) and a list of :class:`SchedulerConfig` (Lightning's
``lr_scheduler_configs`` shape)."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import torch
from torch import nn

from runtime.errors import ConfigError
from runtime.names import resolve_import, suggest

__all__ = [
    "OptimizationError",
    "SchedulerConfig",
    "build_optimizer",
    "build_schedulers",
    "check_specs",
    "clearable_params",
    "clip_gradients",
    "configure_optimization",
    "parse_configure_optimizers",
    "step_schedulers",
    "zero_grad",
]


class OptimizationError(ValueError):
    """An optimizer or scheduler cannot be built from what the user gave."""


@attrs.define
class SchedulerConfig:
    """One scheduler and when to step it (the fields Lightning's ``LRSchedulerConfig`` has)."""

    scheduler: Any
    name: str | None = None
    interval: str = "epoch"
    frequency: int = 1
    reduce_on_plateau: bool = False
    monitor: str | None = None
    strict: bool = True
    opt_idx: int | None = None


def _spec_fields(spec: Any) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
    """``(name, params, rest)`` from a mapping or an attrs spec object."""
    if isinstance(spec, Mapping):
        data = dict(spec)
    elif attrs.has(type(spec)):
        data = attrs.asdict(spec, recurse=False)
    else:
        raise OptimizationError(f"cannot read an optimizer/scheduler spec from {spec!r}")
    name = data.pop("name", None)
    params = dict(data.pop("params", None) or {})
    return name, params, data


def _torch_class(module: Any, name: str, kind: str, key: str) -> Any:
    if ":" in name or "." in name:
        return resolve_import(name, key=key)
    cls = getattr(module, name, None)
    if not isinstance(cls, type):
        choices = [n for n in dir(module) if not n.startswith("_") and n[0].isupper()]
        raise OptimizationError(f"{key}: torch has no {kind} named '{name}'{suggest(name, choices)}")
    return cls


def build_optimizer(spec: Any, model: nn.Module) -> torch.optim.Optimizer:
    """An optimizer from an instance, a factory ``f(params)``, or a ``{name, params}`` spec."""
    if isinstance(spec, torch.optim.Optimizer):
        return spec
    if callable(spec) and not isinstance(spec, Mapping):
        optimizer = spec(model.parameters())
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise OptimizationError(f"optimizer factory {spec!r} returned {optimizer!r}")
        return optimizer
    name, params, _ = _spec_fields(spec)
    cls = _torch_class(torch.optim, name or "Adam", "optimizer", "optimizer.name")
    trainable = [p for p in model.parameters() if p.requires_grad]
    return _construct(cls, trainable, params, "optimizer")  # type: ignore[no-any-return]


def _construct(cls: type, first: Any, params: dict[str, Any], section: str) -> Any:
    """``cls(first, **params)``; an unknown, missing or rejected parameter is an
    OptimizationError naming ``<section>.params`` (and the nearest valid name)."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        signature = None
    if signature is not None and not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        known = list(signature.parameters)[1:]
        for param in params:
            if param not in known:
                raise OptimizationError(
                    f"{section}.params.{param}: {cls.__name__} has no parameter {param!r}"
                    f"{suggest(param, known)}"
                )
    try:
        return cls(first, **params)
    except (TypeError, ValueError) as exc:
        raise OptimizationError(f"{section}.params: {cls.__name__} rejected {params}: {exc}") from None


def check_specs(optimizer: Any, scheduler: Any) -> None:
    """Build the configured optimizer and scheduler specs on one throwaway parameter.

    So a misspelt name, an unknown or missing parameter or a value torch refuses (a
    negative learning rate) fails before the data and the model are built, with the key
    path named. Nothing random is drawn and no warning is shown (the real build shows it).
    """
    probe = nn.ParameterList([nn.Parameter(torch.zeros(1))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = build_optimizer(optimizer, probe) if optimizer is not None else torch.optim.SGD(probe, lr=0.1)
        if scheduler is not None:
            build_schedulers(scheduler, built)


def build_schedulers(spec: Any, optimizer: torch.optim.Optimizer) -> list[SchedulerConfig]:
    """Scheduler configs from an instance, a factory ``f(optimizer)``, a spec, or a list."""
    if spec is None:
        return []
    if isinstance(spec, SchedulerConfig):
        return [spec]
    if isinstance(spec, list | tuple):
        return [c for item in spec for c in build_schedulers(item, optimizer)]
    if _is_scheduler(spec):
        return [_config_for(spec)]
    if callable(spec) and not isinstance(spec, Mapping):
        return build_schedulers(spec(optimizer), optimizer)
    name, params, rest = _spec_fields(spec)
    if "scheduler" in rest:  # Lightning's dict: {"scheduler": obj, "name": label, ...}
        return [_config_for(rest.pop("scheduler"), name=name, **rest)]
    cls = _torch_class(torch.optim.lr_scheduler, name or "", "scheduler", "scheduler.name")
    scheduler = _construct(cls, optimizer, params, "scheduler")
    return [_config_for(scheduler, **{k: v for k, v in rest.items() if v is not None})]


def _is_scheduler(obj: Any) -> bool:
    return isinstance(
        obj, torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau
    ) or (hasattr(obj, "step") and hasattr(obj, "state_dict") and hasattr(obj, "optimizer"))


def _config_for(scheduler: Any, **options: Any) -> SchedulerConfig:
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    options = {k: v for k, v in options.items() if k in attrs.fields_dict(SchedulerConfig)}
    config = SchedulerConfig(scheduler=scheduler, reduce_on_plateau=plateau, **options)
    if config.interval not in ("epoch", "step"):
        raise OptimizationError(
            f"scheduler.interval: must be 'epoch' or 'step', got {config.interval!r}"
        )
    if config.frequency < 1:
        raise OptimizationError(f"scheduler.frequency: must be >= 1, got {config.frequency}")
    if plateau:
        if config.interval != "epoch":
            raise OptimizationError(
                "scheduler.interval: ReduceLROnPlateau is stepped per epoch after validation; "
                "interval 'step' is not supported"
            )
        config.monitor = config.monitor or "val/loss"
    return config


def parse_configure_optimizers(
    result: Any, *, automatic: bool = True
) -> tuple[list[torch.optim.Optimizer], list[SchedulerConfig]]:
    """Normalise every return shape of Lightning's ``configure_optimizers``.

    Accepted, as in Lightning: an optimizer; a list or tuple of optimizers; ``([optimizers],
    [schedulers])`` (or one scheduler); ``{"optimizer", "lr_scheduler", "monitor"}``; a list
    or tuple of such dicts. A scheduler is an object or Lightning's ``{"scheduler", "interval",
    "frequency", "monitor", "name", "strict"}`` dict. Each :class:`SchedulerConfig` gets the
    ``opt_idx`` of the optimizer it schedules. ``automatic`` (the module's
    ``automatic_optimization``) allows one optimizer only, as Lightning does.
    """
    optimizers, schedulers = _split_optimizers(result)
    if automatic and len(optimizers) > 1:
        raise OptimizationError(
            f"configure_optimizers returned {len(optimizers)} optimizers: training with several "
            "optimizers needs manual optimization. Set `self.automatic_optimization = False` and "
            "step them in training_step with `opt1, opt2 = self.optimizers()` (Lightning's rule)"
        )
    configs: list[SchedulerConfig] = []
    for item in schedulers:
        if isinstance(item, Mapping):
            item = {k: v for k, v in item.items() if v is not None}
            if "scheduler" not in item:
                raise OptimizationError(
                    f"configure_optimizers: a scheduler dict needs the key 'scheduler'; got {sorted(item)}"
                )
            configs.append(_config_for(item.pop("scheduler"), **item))
        else:
            configs.append(_config_for(item))
    for config in configs:
        owner = getattr(config.scheduler, "optimizer", None)
        indices = [i for i, optimizer in enumerate(optimizers) if optimizer is owner]
        if not indices:
            raise OptimizationError(
                f"configure_optimizers: the scheduler {type(config.scheduler).__name__} is attached "
                "to an optimizer that configure_optimizers did not return"
            )
        config.opt_idx = indices[0]
    return optimizers, configs


def _split_optimizers(result: Any) -> tuple[list[torch.optim.Optimizer], list[Any]]:
    """``(optimizers, schedulers)`` from a ``configure_optimizers`` value (schedulers raw)."""
    if isinstance(result, torch.optim.Optimizer):
        return [result], []
    if isinstance(result, Mapping):
        return [_optimizer_of(result)], _schedulers_of(result)
    if isinstance(result, list | tuple) and len(result) == 2 and isinstance(result[0], list | tuple):
        schedulers = result[1]
        return list(result[0]), list(schedulers) if isinstance(schedulers, list | tuple) else [schedulers]
    if isinstance(result, list | tuple) and result and all(isinstance(d, Mapping) for d in result):
        return [_optimizer_of(d) for d in result], [s for d in result for s in _schedulers_of(d)]
    if isinstance(result, list | tuple) and result and all(isinstance(o, torch.optim.Optimizer) for o in result):
        return list(result), []
    raise OptimizationError(
        f"configure_optimizers returned an unsupported value: {result!r}. Return an optimizer, "
        "a list of optimizers, ([optimizers], [schedulers]), {'optimizer': ..., 'lr_scheduler': "
        "...} or a list of such dicts"
    )


def _optimizer_of(conf: Mapping[str, Any]) -> torch.optim.Optimizer:
    if "optimizer" not in conf:
        raise OptimizationError(f"configure_optimizers: a dict needs the key 'optimizer'; got {sorted(conf)}")
    return conf["optimizer"]  # type: ignore[no-any-return]


def _schedulers_of(conf: Mapping[str, Any]) -> list[Any]:
    """The scheduler of one ``{"optimizer", "lr_scheduler", "monitor"}`` dict, as a list."""
    lr = conf.get("lr_scheduler")
    if lr is None:
        return []
    if isinstance(lr, Mapping):
        return [dict(lr)]
    return [{"scheduler": lr, "monitor": conf.get("monitor")}]


_BASE_ZERO_GRAD = torch.optim.Optimizer.zero_grad
_AUTOGRAD_PROFILER = torch.autograd.profiler
"""Its ``_is_profiler_enabled`` is torch's own Python-side flag for fast "is a profiler
running" checks: set while a ``torch.profiler.profile`` / ``torch.autograd.profiler.profile``
(and ``emit_nvtx`` / ``emit_itt``) runs. Reading it costs a module attribute lookup; the C
query ``torch.autograd._profiler_enabled()`` costs a pybind11 call (about 450 instructions)."""


def zero_grad(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.zero_grad(set_to_none=True)``, without its profiler label when no profiler runs.

    ``Optimizer.zero_grad`` wraps its loop in ``record_function``, which enters and leaves a
    profiler op even when nothing is profiling: on a small model that is most of its cost
    (about 30 us of a 450 us step in ``python -m benchmarks``). For an optimizer that keeps
    the base ``zero_grad`` this does what it does with ``set_to_none=True``, every parameter's
    ``.grad`` set to None, and calls the real one when a profiler is running (so traces keep
    the ``Optimizer.zero_grad`` label) or when the optimizer's ``zero_grad`` is not the base
    one: a subclass overrides it, or the instance carries its own (``optimizer.zero_grad =
    wrapper``, as apex-style wrappers patch it). So the shortcut is taken only where it is
    exactly ``zero_grad(set_to_none=True)``. A profiler started through torch's Python API sets
    the flag this reads; one started around it (the deprecated ``profiler_legacy``, or from
    C++) gets the same gradients cleared, without the label.
    """
    if (
        type(optimizer).zero_grad is not _BASE_ZERO_GRAD
        or "zero_grad" in optimizer.__dict__
        or _AUTOGRAD_PROFILER._is_profiler_enabled
    ):
        optimizer.zero_grad(set_to_none=True)
        return
    for group in optimizer.param_groups:
        for param in group["params"]:
            param.grad = None  # a no-op where it is None already: no need to read it first


def clearable_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor] | None:
    """The parameters whose grads :func:`zero_grad` sets to None itself, as one flat list, when
    its shortcut applies to ``optimizer`` (the base ``zero_grad``, not patched on the
    instance); None when its own ``zero_grad`` must be called. Read once for a stretch of
    batches (:mod:`runtime.batch`): the profiler check stays per batch."""
    if type(optimizer).zero_grad is not _BASE_ZERO_GRAD or "zero_grad" in optimizer.__dict__:
        return None
    return [param for group in optimizer.param_groups for param in group["params"]]


def plateau_value(metrics: Mapping[str, float], config: SchedulerConfig) -> float | None:
    """The monitored value for a ReduceLROnPlateau step, or None (error when ``strict``)."""
    assert config.monitor is not None
    if config.monitor in metrics:
        return metrics[config.monitor]
    if config.strict:
        raise OptimizationError(
            f"ReduceLROnPlateau monitors '{config.monitor}', which was not logged; available: "
            f"{sorted(metrics)}"
        )
    return None


Factory = Callable[..., Any]


def configure_optimization(runtime: Any) -> tuple[list[torch.optim.Optimizer], list[SchedulerConfig]]:
    """The run's optimizers and schedulers, from the first of these that ``runtime`` has:
    a training strategy, the model's ``configure_optimizers`` (when no optimizer is given;
    several optimizers only with ``automatic_optimization = False``), the optimizer /
    scheduler given to the Runtime or named in the config."""
    if runtime.training_strategy is not None:
        optimizer, schedulers = runtime.training_strategy.configure_optimizers(runtime)
        return [optimizer], build_schedulers(schedulers, optimizer)
    configure = getattr(runtime.model, "configure_optimizers", None)
    if runtime.optimizer_spec is None and callable(configure):
        automatic = getattr(runtime.model, "automatic_optimization", True) is not False
        return parse_configure_optimizers(configure(), automatic=automatic)
    if runtime.optimizer_spec is None:
        raise ConfigError(
            "optimizer: none given; pass Runtime(optimizer=...), set config "
            "'optimizer: {name: AdamW, params: {lr: 0.001}}' or define "
            "configure_optimizers on the model"
        )
    optimizer = build_optimizer(runtime.optimizer_spec, runtime.model)
    return [optimizer], build_schedulers(runtime.scheduler_spec, optimizer)


def clip_gradients(optimizer: torch.optim.Optimizer, value: float, algorithm: str) -> None:
    """Clip the gradients of ``optimizer``'s parameters by ``value`` or by norm."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if algorithm == "value":
        nn.utils.clip_grad_value_(params, value)
    else:
        nn.utils.clip_grad_norm_(params, value)


def step_schedulers(
    configs: list[SchedulerConfig],
    interval: str,
    index: int,
    metrics: Mapping[str, float],
    *,
    plateau: bool = False,
) -> None:
    """Step schedulers of ``interval`` whose frequency divides ``index`` (Lightning's rule).

    ``plateau`` selects the ReduceLROnPlateau ones, stepped with their monitored value.
    """
    for config in configs:
        if config.interval != interval or config.reduce_on_plateau != plateau:
            continue
        if index % config.frequency:
            continue
        if plateau:
            value = plateau_value(metrics, config)
            if value is not None:
                config.scheduler.step(value)
        else:
            config.scheduler.step()
