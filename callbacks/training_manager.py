"""TrainingManager: freeze named submodules ("nodes") on a schedule, and install the
training strategy that owns the optimizer.

Config::

    - name: TrainingManager
      params:
        freeze:
          backbone: {unfreeze_after: 2, lr_after_unfreeze: 0.001}
          neck: {unfreeze_after: 0.5}        # a fraction of trainer.epochs
          stem: {unfreeze_after: null}       # frozen for the whole run
          head: {active: false}              # listed, not frozen
        strategy: {name: TripleLRSGDStrategy, params: {lr: 0.02}}   # optional

Freezing (per node, ``model.get_submodule(name)``): a node is frozen while
``epoch < unfreeze epoch`` (an int is an epoch, a float ``f`` in [0, 1] is
``int(f · epochs)``, None is ``epochs``). Frozen means: its parameters do not require grad
(so their gradients stay None and the optimizer skips them) and its BatchNorm layers are
in eval mode (running statistics untouched, normalised with them). Both are restored on
unfreeze. The state is a function of the epoch, applied at ``setup("fit")``, at every
``train_epoch_start`` and again after each validation inside fit (the loop puts the model
back in train mode then), so a resumed run lands in the right state. Changes are logged
once, when they happen.

``lr_after_unfreeze`` is applied at the start of the exact unfreeze epoch, once: the node's
param groups get it as ``lr`` and ``initial_lr``, and every scheduler (also inside
ChainedScheduler / SequentialLR) as its ``base_lrs`` entry. The callback's state records
which nodes got it, so a run resumed in the middle of that epoch keeps the learning rate
its checkpoint holds.

Param groups: each frozen node's parameters live in groups of their own (tagged
``group["node"]``). With no ``strategy`` configured and nodes to freeze, the manager
installs :class:`callbacks.strategies.ConfigOptimizerStrategy` (the configured
``{name, params}`` optimizer split per node, and the configured scheduler). A node nested
in another listed node owns its parameters' groups. When the optimizer is not a
``{name, params}`` spec (an instance, a factory, the model's ``configure_optimizers``), the
runtime builds it unchanged; freezing still works, and ``lr_after_unfreeze`` uses the
groups that hold only that node's parameters, if any (else a warning).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from callbacks.strategies import ConfigOptimizerStrategy, build_strategy
from runtime.callback import Callback
from runtime.config import ConfigError
from runtime.loop import Runtime
from runtime.names import suggest
from runtime.registry import register

log = logging.getLogger("busloop.callbacks")

__all__ = ["NodeFreezing", "TrainingManager", "set_group_lr"]

_FREEZE_KEYS = ("active", "unfreeze_after", "lr_after_unfreeze")


@attrs.define
class NodeFreezing:
    """One node's freezing config (see the module docstring)."""

    name: str
    active: bool = True
    unfreeze_after: int | float | None = None
    lr_after_unfreeze: float | None = None

    def unfreeze_epoch(self, epochs: int) -> int:
        """The first epoch in which the node trains."""
        after = self.unfreeze_after
        if after is None:
            return epochs
        if isinstance(after, int):
            return after
        return int(after * epochs)

    @classmethod
    def parse(cls, name: str, spec: Mapping[str, Any] | None) -> NodeFreezing:
        """Validate one ``freeze`` entry; errors name ``freeze.<node>.<key>``."""
        spec = dict(spec or {})
        for key in spec:
            if key not in _FREEZE_KEYS:
                raise ValueError(f"freeze.{name}.{key}: unknown key{suggest(key, _FREEZE_KEYS)}")
        active = spec.get("active", True)
        if not isinstance(active, bool):
            raise ValueError(f"freeze.{name}.active: expected true/false, got {active!r}")
        after = spec.get("unfreeze_after")
        if isinstance(after, bool) or not (after is None or isinstance(after, int | float)):
            raise ValueError(f"freeze.{name}.unfreeze_after: expected an int, a float or null, got {after!r}")
        if isinstance(after, int) and after < 0:
            raise ValueError(f"freeze.{name}.unfreeze_after: an epoch must be >= 0, got {after}")
        if isinstance(after, float) and not 0.0 <= after <= 1.0:
            raise ValueError(
                f"freeze.{name}.unfreeze_after: a float is a fraction of the epochs (0..1), got "
                f"{after}; use an int for an epoch number"
            )
        lr = spec.get("lr_after_unfreeze")
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, int | float) or lr < 0):
            raise ValueError(f"freeze.{name}.lr_after_unfreeze: expected a number >= 0 or null, got {lr!r}")
        return cls(name, active, after, None if lr is None else float(lr))


@attrs.define(eq=False)
class _Plan:
    """A node resolved against the model for one fit."""

    config: NodeFreezing
    module: nn.Module
    unfreeze_epoch: int
    params: list[nn.Parameter]
    batch_norms: list[_BatchNorm]


@register()
class TrainingManager(Callback):
    """Freeze nodes on an epoch schedule and install a training strategy.

    ``freeze``: ``{node_name: {active=True, unfreeze_after=None, lr_after_unfreeze=None}}``
    where ``node_name`` is a submodule path (``model.get_submodule``). ``strategy``: a
    strategy object, a registered name or import path, or ``{name, params}``
    (:mod:`callbacks.strategies`, e.g. ``TripleLRSGDStrategy``). See the module docstring.
    """

    def __init__(
        self,
        freeze: Mapping[str, Mapping[str, Any] | None] | None = None,
        strategy: Any = None,
    ) -> None:
        if freeze is not None and not isinstance(freeze, Mapping):
            raise ValueError(f"freeze: expected a mapping node -> settings, got {freeze!r}")
        self.nodes = [NodeFreezing.parse(str(name), spec) for name, spec in (freeze or {}).items()]
        self.strategy = build_strategy(strategy)
        self._plans: list[_Plan] = []
        self._params: list[tuple[nn.Parameter, bool, tuple[_Plan, ...]]] = []
        self._original: dict[int, tuple[nn.Parameter, bool]] = {}
        self._frozen: set[str] = set()
        self._frozen_bns: list[_BatchNorm] = []
        self._lr_applied: set[str] = set()
        self._bn_dirty = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(nodes=sorted(n.name for n in self.nodes))

    # ------------------------------------------------------------------ events
    def on_setup(self, runtime: Runtime, stage: str) -> None:
        if stage != "fit":
            return
        self._resolve(runtime)
        self._install_strategy(runtime)
        self._apply(runtime, runtime.state.epoch, set_lr=False)
        if not self.nodes:  # nothing to freeze: keep the per-batch event free of this hook
            with contextlib.suppress(Exception):
                runtime.bus.disconnect("train_batch_start", self.on_train_batch_start)

    def on_train_epoch_start(self, runtime: Runtime) -> None:
        if self._plans or self._frozen or self._frozen_bns:  # else _apply has nothing to change
            self._apply(runtime, runtime.state.epoch, set_lr=True)

    def on_validation_end(self, runtime: Runtime) -> None:
        # The loop calls model.train() right after this event; re-apply eval to the frozen
        # BatchNorm layers before the next training batch.
        if runtime.state.stage == "fit" and self._frozen_bns:
            self._bn_dirty = True

    def on_train_batch_start(self, runtime: Runtime, batch: Any, batch_idx: int) -> None:
        if self._bn_dirty:
            self._bn_dirty = False
            for bn in self._frozen_bns:
                bn.eval()

    def state_dict(self) -> dict[str, Any]:
        return {"lr_applied": sorted(self._lr_applied)} if self._lr_applied else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._lr_applied = set(state_dict.get("lr_applied", []))

    # ------------------------------------------------------------------ internals
    def frozen_nodes(self) -> set[str]:
        """The names of the nodes frozen now."""
        return set(self._frozen)

    def _resolve(self, runtime: Runtime) -> None:
        model = runtime.model
        epochs = runtime.state.max_epochs
        plans: list[_Plan] = []
        for node in self.nodes:
            if not node.active:
                continue
            try:
                module = model.get_submodule(node.name)
            except AttributeError:
                names = [n for n, _ in model.named_modules() if n]
                raise ConfigError(
                    f"TrainingManager.freeze.{node.name}: the model has no submodule "
                    f"{node.name!r}{suggest(node.name, names)}"
                ) from None
            params = list(dict.fromkeys(module.parameters()))
            bns = [m for m in module.modules() if isinstance(m, _BatchNorm)]
            plans.append(_Plan(node, module, node.unfreeze_epoch(epochs), params, bns))
        self._plans = plans
        # requires_grad as the user left it, recorded once (a second fit must not read ours).
        for plan in plans:
            for p in plan.params:
                self._original.setdefault(id(p), (p, p.requires_grad))
        owners: dict[int, list[_Plan]] = {}
        for plan in plans:
            for p in plan.params:
                owners.setdefault(id(p), []).append(plan)
        self._params = [
            (self._original[key][0], self._original[key][1], tuple(found)) for key, found in owners.items()
        ]

    def _node_params(self) -> dict[str, list[nn.Parameter]]:
        """Each trainable node parameter under its most specific (deepest) node."""
        owner: dict[int, _Plan] = {}
        for plan in sorted(self._plans, key=lambda p: -p.config.name.count(".")):
            for p in plan.params:
                if self._original[id(p)][1]:
                    owner.setdefault(id(p), plan)
        return {
            plan.config.name: [p for p in plan.params if owner.get(id(p)) is plan] for plan in self._plans
        }

    def _install_strategy(self, runtime: Runtime) -> None:
        strategy = self.strategy
        if strategy is None:
            strategy = runtime.training_strategy
        if strategy is None and self._plans and runtime.optimizer is None:
            spec, scheduler = _optimization_specs(runtime)
            if _is_named_spec(spec):
                strategy = ConfigOptimizerStrategy(spec, scheduler)
            else:
                log.info(
                    "TrainingManager: the optimizer is not a {name, params} spec; frozen nodes "
                    "share its param groups"
                )
        if strategy is None:
            return
        if self._plans and isinstance(getattr(strategy, "node_params", None), dict):
            strategy.node_params = self._node_params()
        runtime.training_strategy = strategy

    def _apply(self, runtime: Runtime, epoch: int, *, set_lr: bool) -> None:
        frozen_plans = [plan for plan in self._plans if epoch < plan.unfreeze_epoch]
        frozen = {plan.config.name for plan in frozen_plans}
        for param, original, owners in self._params:
            target = original and not any(plan.config.name in frozen for plan in owners)
            if param.requires_grad != target:
                param.requires_grad_(target)
                if not target:
                    param.grad = None
        for name in sorted(frozen - self._frozen):
            log.info("Freezing node '%s'", name)
        for name in sorted(self._frozen - frozen):
            log.info("Unfreezing node '%s'", name)
        self._frozen = frozen

        frozen_bns = list(dict.fromkeys(bn for plan in frozen_plans for bn in plan.batch_norms))
        still = set(map(id, frozen_bns))
        training = runtime.model.training
        for bn in self._frozen_bns:
            if id(bn) not in still:
                bn.train(training)
        for bn in frozen_bns:
            bn.eval()
        self._frozen_bns = frozen_bns

        if set_lr:
            for plan in self._plans:
                lr, name = plan.config.lr_after_unfreeze, plan.config.name
                if lr is None or epoch != plan.unfreeze_epoch or name in self._lr_applied:
                    continue
                indices = _node_groups(runtime.optimizer, name, plan.params)
                if indices:
                    set_group_lr(runtime, indices, lr)
                    log.info("Node '%s': learning rate %g after unfreezing", name, lr)
                else:
                    log.warning(
                        "TrainingManager: no param group holds only node '%s'; "
                        "lr_after_unfreeze not applied",
                        name,
                    )
                self._lr_applied.add(name)


def set_group_lr(runtime: Runtime, indices: list[int], lr: float) -> None:
    """Set ``lr`` and ``initial_lr`` of param groups ``indices`` and their schedulers'
    ``base_lrs`` (recursing into ChainedScheduler / SequentialLR)."""
    optimizer = runtime.optimizer
    if optimizer is None:
        return
    for index in indices:
        optimizer.param_groups[index]["lr"] = lr
        optimizer.param_groups[index]["initial_lr"] = lr
    for config in runtime.lr_scheduler_configs:
        _set_base_lrs(config.scheduler, indices, lr)


def _set_base_lrs(scheduler: Any, indices: list[int], lr: float) -> None:
    for child in getattr(scheduler, "_schedulers", None) or ():
        _set_base_lrs(child, indices, lr)
    base_lrs = getattr(scheduler, "base_lrs", None)
    if isinstance(base_lrs, list):
        for index in indices:
            if index < len(base_lrs):
                base_lrs[index] = lr


def _node_groups(optimizer: torch.optim.Optimizer | None, name: str, params: list[nn.Parameter]) -> list[int]:
    """Indices of the groups tagged with node ``name``, else of the non-empty groups that
    hold only its parameters."""
    if optimizer is None:
        return []
    tagged = [i for i, g in enumerate(optimizer.param_groups) if g.get("node") == name]
    if tagged:
        return tagged
    own = set(map(id, params))
    return [
        i for i, g in enumerate(optimizer.param_groups)
        if g["params"] and all(id(p) in own for p in g["params"])
    ]


def _optimization_specs(runtime: Runtime) -> tuple[Any, Any]:
    """The optimizer and scheduler the runtime would use (its overrides, else the config)."""
    optimizer = runtime.optimizer_spec
    scheduler = runtime.scheduler_spec
    return optimizer, scheduler


def _is_named_spec(spec: Any) -> bool:
    if isinstance(spec, Mapping):
        return isinstance(spec.get("name"), str)
    return attrs.has(type(spec)) and isinstance(getattr(spec, "name", None), str)
