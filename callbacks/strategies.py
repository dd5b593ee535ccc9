"""Training strategies: objects that own a fit's optimizer and schedulers.

A strategy is set as ``runtime.training_strategy`` before optimization is configured
(:class:`callbacks.training_manager.TrainingManager` does it from its ``strategy``
parameter). The runtime then calls

- ``configure_optimizers(runtime) -> (optimizer, schedulers)`` once, right after the
  ``setup(stage="fit")`` event, instead of building the config optimizer; ``schedulers``
  is anything :func:`runtime.optim.build_schedulers` accepts (None, a scheduler, a spec,
  a list);
- ``update_parameters(runtime)`` after every backward (every micro-batch under gradient
  accumulation), before the optimizer step.

Strategies keep no state of their own: what they change lives in the optimizer's param
groups, which checkpoints carry, and the loop position comes from ``runtime.state``; so
resuming stays exact.

Node groups: :attr:`TrainingStrategy.node_params` maps a node name (a submodule the
TrainingManager freezes) to its parameters; a strategy puts each node's parameters in
param groups of their own, tagged ``group["node"] = name`` (``None`` for the rest), so that
``lr_after_unfreeze`` can change one node's learning rate.

Strategies are resolved by registered name (:data:`STRATEGIES`) or import path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from runtime.config import ConfigError
from runtime.names import resolve_import, suggest

if TYPE_CHECKING:
    from runtime.loop import Runtime

__all__ = [
    "STRATEGIES",
    "ConfigOptimizerStrategy",
    "TrainingStrategy",
    "TripleLRSGDStrategy",
    "build_strategy",
    "partition_parameters",
    "register_strategy",
]

S = TypeVar("S", bound=type)

#: Registered name -> strategy class.
STRATEGIES: dict[str, type] = {}


def register_strategy(cls: S) -> S:
    """Class decorator: register a training strategy under its class name."""
    STRATEGIES[cls.__name__] = cls
    return cls


class TrainingStrategy:
    """Base class of training strategies (any object with the two methods works).

    Subclasses implement :meth:`configure_optimizers`; :meth:`update_parameters` does
    nothing unless overridden.
    """

    def __init__(self) -> None:
        self.node_params: dict[str, list[nn.Parameter]] = {}
        """Node name -> parameters that get param groups of their own (set before fit)."""

    def configure_optimizers(self, runtime: Runtime) -> tuple[torch.optim.Optimizer, Any]:
        """Build and return ``(optimizer, schedulers)`` for ``runtime.model``."""
        raise NotImplementedError

    def update_parameters(self, runtime: Runtime) -> None:
        """Called after every backward, before the optimizer step; nothing by default."""


def partition_parameters(
    model: nn.Module, node_params: Mapping[str, Sequence[nn.Parameter]]
) -> list[tuple[str | None, list[nn.Parameter]]]:
    """``[(node, params), ...]`` in ``node_params`` order, then ``(None, the rest)``.

    Node parameters are taken as given (a frozen node's parameters do not require grad
    yet must be in the optimizer); the rest are the model's parameters that require grad
    and belong to no node. A parameter listed under two nodes stays with the first.
    """
    seen: set[int] = set()
    parts: list[tuple[str | None, list[nn.Parameter]]] = []
    for name, params in node_params.items():
        own = [p for p in params if id(p) not in seen]
        seen.update(id(p) for p in own)
        parts.append((name, own))
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
    parts.append((None, rest))
    return parts


def _spec_parts(spec: Any, kind: str) -> tuple[str, dict[str, Any]]:
    if isinstance(spec, Mapping):
        name, params = spec.get("name"), spec.get("params")
    elif attrs.has(type(spec)):
        name, params = getattr(spec, "name", None), getattr(spec, "params", None)
    else:
        raise ConfigError(f"{kind}: expected a {{name, params}} spec, got {spec!r}")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{kind}.name: expected a class name or import path, got {name!r}")
    return name, dict(params or {})


def _optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    if ":" in name or "." in name:
        cls = resolve_import(name, key="optimizer.name")
    else:
        cls = getattr(torch.optim, name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        choices = [n for n in dir(torch.optim) if n[:1].isupper()]
        raise ConfigError(f"optimizer.name: no torch optimizer named {name!r}{suggest(name, choices)}")
    return cls


@register_strategy
class ConfigOptimizerStrategy(TrainingStrategy):
    """The config's ``{name, params}`` optimizer with one param group per node plus one
    for the other trainable parameters, and the config's scheduler(s).

    This is what TrainingManager installs when it freezes nodes and no strategy is
    configured: the same optimizer the runtime would build, split into groups.
    """

    def __init__(self, optimizer: Any, scheduler: Any = None) -> None:
        super().__init__()
        self.optimizer_spec = optimizer
        self.scheduler_spec = scheduler

    def configure_optimizers(self, runtime: Runtime) -> tuple[torch.optim.Optimizer, Any]:
        name, params = _spec_parts(self.optimizer_spec, "optimizer")
        cls = _optimizer_class(name)
        groups = [
            {"params": group, "node": node}
            for node, group in partition_parameters(runtime.model, self.node_params)
            if group
        ]
        try:
            optimizer = cls(groups, **params)
        except TypeError as exc:
            raise ConfigError(f"optimizer.params: {cls.__name__} rejected {params}: {exc}") from None
        return optimizer, self.scheduler_spec


def _triple_groups(
    params: Sequence[nn.Parameter], model: nn.Module
) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
    """Split ``params`` into (BatchNorm weights, other weights, biases) by owning module."""
    wanted = {id(p) for p in params}
    norm, weights, biases = [], [], []
    seen: set[int] = set()
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if id(p) not in wanted or id(p) in seen:
                continue
            seen.add(id(p))
            if pname == "bias":
                biases.append(p)
            elif isinstance(module, _BatchNorm):
                norm.append(p)
            else:
                weights.append(p)
    return norm, weights, biases


def triple_lr_lambda(lre: float, lr: float, epochs: int, cosine: bool) -> Callable[[int], float]:
    """The LambdaLR factor ``lf(epoch)``: cosine or linear from 1 down to ``lre / lr``."""
    lrf = lre / lr
    if cosine:

        def lf(x: int) -> float:
            return ((1 - math.cos(x * math.pi / epochs)) / 2) * (lrf - 1) + 1

    else:

        def lf(x: int) -> float:
            return max(1 - x / epochs, 0) * (1.0 - lrf) + lrf

    return lf


@register_strategy
class TripleLRSGDStrategy(TrainingStrategy):
    """luxonis-train's reference strategy: SGD with three kinds of param groups, warmup,
    and a cosine or linear LambdaLR.

    Groups: BatchNorm weights (no weight decay), other weights (``weight_decay``), biases
    (no weight decay); each tagged ``group["kind"]`` = "bn" / "weight" / "bias", and split
    further per node (``group["node"]``). SGD with ``lr``, ``momentum`` and ``nesterov``.

    Scheduler: ``LambdaLR`` stepped per epoch with ``lf(x) = ((1 - cos(x·π/epochs)) / 2) ·
    (lrf - 1) + 1`` (``cosine_annealing``) or ``max(1 - x/epochs, 0) · (1 - lrf) + lrf``,
    where ``lrf = lre / lr``.

    Warmup, in :meth:`update_parameters` on every micro-batch: with ``n`` training batches
    per epoch, step ``s = epoch·n + batch_idx`` and ``W = max(round(warmup_epochs·n),
    warmup_min_steps)``; while ``s <= W`` each group's lr goes linearly from
    ``warmup_bias_lr`` (biases) or 0 (the others) at ``s = 0`` to ``initial_lr·lf(epoch)``
    at ``s = W``, and its momentum from ``warmup_momentum`` to ``momentum``.
    (The reference wrote the warmup momentum into ``optimizer.defaults``, where SGD never
    reads it; we set it on the groups, as ultralytics does. The warmup target uses each
    group's ``initial_lr`` so that ``lr_after_unfreeze`` holds during warmup too.)
    """

    def __init__(
        self,
        lr: float = 0.02,
        momentum: float = 0.937,
        weight_decay: float = 0.0005,
        nesterov: bool = True,
        warmup_epochs: float = 3,
        warmup_bias_lr: float = 0.1,
        warmup_momentum: float = 0.8,
        lre: float = 0.0002,
        cosine_annealing: bool = True,
        warmup_min_steps: int = 100,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.lr, self.momentum, self.weight_decay, self.nesterov = lr, momentum, weight_decay, nesterov
        self.warmup_epochs, self.warmup_bias_lr = warmup_epochs, warmup_bias_lr
        self.warmup_momentum, self.lre = warmup_momentum, lre
        self.cosine_annealing, self.warmup_min_steps = cosine_annealing, warmup_min_steps
        self.optimizer: torch.optim.SGD | None = None
        self.lf: Callable[[int], float] = triple_lr_lambda(lre, lr, 1, cosine_annealing)

    def warmup_steps(self, steps_per_epoch: int) -> int:
        """``W``: the number of micro-batches the warmup lasts."""
        return max(round(self.warmup_epochs * steps_per_epoch), self.warmup_min_steps)

    def configure_optimizers(self, runtime: Runtime) -> tuple[torch.optim.Optimizer, Any]:
        model = runtime.model
        groups: list[dict[str, Any]] = []
        for node, params in partition_parameters(model, self.node_params):
            norm, weights, biases = _triple_groups(params, model)
            for kind, group, decay in (("bn", norm, 0.0), ("weight", weights, self.weight_decay), ("bias", biases, 0.0)):
                if group or node is None:
                    groups.append({"params": group, "weight_decay": decay, "kind": kind, "node": node})
        self.optimizer = torch.optim.SGD(
            groups, lr=self.lr, momentum=self.momentum, nesterov=self.nesterov, weight_decay=0.0
        )
        self.lf = triple_lr_lambda(self.lre, self.lr, max(runtime.state.max_epochs, 1), self.cosine_annealing)
        scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda=self.lf)
        return self.optimizer, [scheduler]

    def update_parameters(self, runtime: Runtime) -> None:
        optimizer = self.optimizer
        if optimizer is None:
            return
        st = runtime.state
        if math.isinf(st.num_training_batches):
            raise ConfigError(
                f"{type(self).__name__}: the warmup is measured in epochs and the training loader has no "
                "length; give it a __len__ or set an int trainer.limit_train_batches"
            )
        n = max(int(st.num_training_batches), 1)
        step = st.epoch * n + st.batch_idx
        total = self.warmup_steps(n)
        if step > total:
            return
        frac = step / total
        factor = self.lf(st.epoch)
        momentum = self.warmup_momentum + (self.momentum - self.warmup_momentum) * frac
        for group in optimizer.param_groups:
            start = self.warmup_bias_lr if group.get("kind") == "bias" else 0.0
            target = group.get("initial_lr", self.lr) * factor
            group["lr"] = start + (target - start) * frac
            if "momentum" in group:
                group["momentum"] = momentum


def build_strategy(spec: Any) -> Any:
    """A strategy from an instance, a registered name or import path, or ``{name, params}``."""
    if spec is None or hasattr(spec, "configure_optimizers"):
        return spec
    params: dict[str, Any] = {}
    if isinstance(spec, str):
        name = spec
    else:
        name, params = _spec_parts(spec, "strategy")
    if name in STRATEGIES:
        cls = STRATEGIES[name]
    elif ":" in name or "." in name:
        cls = resolve_import(name, key="strategy.name")
    else:
        raise ConfigError(
            f"strategy.name: unknown training strategy {name!r}{suggest(name, STRATEGIES)} "
            "(use a registered name or an import path like 'pkg.module:MyStrategy')"
        )
    try:
        strategy = cls(**params)
    except TypeError as exc:
        raise ConfigError(f"strategy.params: {name} rejected {params}: {exc}") from None
    for method in ("configure_optimizers", "update_parameters"):
        if not callable(getattr(strategy, method, None)):
            raise ConfigError(f"strategy.name: {name} has no {method}(runtime) method")
    return strategy
