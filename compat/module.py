"""LightningModule support: the bridge that drives a real ``LightningModule`` under busloop.

:class:`LightningBridge` extends the runtime's :class:`runtime.module.ModuleBridge` (which
already runs steps, module hooks and ``self.log``) with what a real LightningModule expects
from Lightning's Trainer:

- ``module.trainer`` is a :class:`compat.trainer.TrainerFacade` over the Runtime, so
  ``self.current_epoch``, ``self.global_step``, ``self.trainer.*``, ``self.print`` work. As
  with Lightning's Trainer, it stays attached after the run.
- A hook counts as overridden when the module's class resolves it to a function that none
  of Lightning's base classes (``LightningModule``, ``ModelHooks``, ``DataHooks``,
  ``CheckpointHooks``) defines, whichever package the class lives in (Lightning's own demo
  modules in ``lightning.pytorch.demos`` override hooks too).
- Hook order is Lightning's: callbacks first, then the module, except at
  ``train_epoch_end``, where callbacks with a ``monitor_role`` (checkpointing, early
  stopping) run after the module's hook, so a metric the module logs there is seen.
- Optimization is Lightning's: ``self.optimizers()`` returns Lightning's ``LightningOptimizer``
  wrappers; a module that optimizes manually, or overrides ``optimizer_step``,
  ``optimizer_zero_grad``, ``backward`` or ``configure_gradient_clipping``, trains through
  :mod:`compat.optimization` (decided once per fit); every other one keeps the loop's lean path.
- The callbacks ``configure_callbacks`` returns join the run as Lightning adds them: replacing
  callbacks of their type, checkpoint callbacks last.

Lightning is imported only from the module's own class hierarchy (the user handed us a
Lightning object, so it is installed); compat registers the bridge on import.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from torch import nn

from compat.adapter import adapt, unwrap
from compat.optimization import (
    OPTIMIZATION_HOOKS,
    AutomaticOptimization,
    LightningStrategy,
    ManualOptimization,
    check_manual_optimization,
    skipped_step,
)
from compat.trainer import TrainerFacade
from compat.trainer_defaults import misconfiguration
from runtime.bus import MONITORED_EVENT
from runtime.callback import Callback
from runtime.module import BRIDGES, ModuleBridge
from runtime.resume import check_state_keys

if TYPE_CHECKING:
    from runtime.core import RuntimeCore as Runtime

__all__ = ["LightningBridge", "lightning_base_classes"]

#: Packages that ship a LightningModule (the unified package and the standalone one).
_PACKAGES = ("lightning.pytorch", "pytorch_lightning")

#: The event at which Lightning runs monitoring callbacks after the module's hook.
_MONITORING_EVENT = MONITORED_EVENT


def lightning_package(model: object) -> str | None:
    """The Lightning package whose ``LightningModule`` ``model`` is, or None."""
    for package in _PACKAGES:
        pl = sys.modules.get(package)
        if pl is not None and isinstance(model, pl.LightningModule):
            return package
    return None


def lightning_base_classes(model: object) -> tuple[type, ...] | None:
    """Lightning's module base classes when ``model`` is a real LightningModule, else None."""
    package = lightning_package(model)
    if package is None:
        return None
    pl, hooks = sys.modules[package], sys.modules[f"{package}.core.hooks"]
    return (pl.LightningModule, hooks.ModelHooks, hooks.DataHooks, hooks.CheckpointHooks, nn.Module)


class LightningBridge(ModuleBridge):
    """Drives a real ``LightningModule``: the trainer facade, Lightning's override rule and
    Lightning's hook order on top of the runtime's module bridge."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        package, bases = lightning_package(model), lightning_base_classes(model)
        assert package is not None and bases is not None, "LightningBridge.accepts was not consulted"
        self.package, self.hook_bases = package, bases
        self.trainer: TrainerFacade | None = None
        self._warned_skip = False

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        return lightning_base_classes(model) is not None

    def attach(self, runtime: Runtime) -> None:
        """Attach the trainer facade (with Lightning's strategy API), add the callbacks the
        module's ``configure_callbacks`` returns, then connect hooks and route ``self.log``."""
        front = runtime.__dict__.get("_compat_trainer")  # compat.Trainer: it is the facade itself
        self.trainer = front if isinstance(front, TrainerFacade) else TrainerFacade(runtime)
        self.trainer.strategy = LightningStrategy(self.trainer, self.package)
        setattr(self.model, "trainer", self.trainer)  # noqa: B010  LightningModule's setter: children too
        if runtime.datamodule is not None and hasattr(runtime.datamodule, "trainer"):
            runtime.datamodule.trainer = self.trainer  # as Lightning's data connector does
        configure_callbacks = self.overridden("configure_callbacks")
        if configure_callbacks is not None:
            add_model_callbacks(runtime, configure_callbacks(), self.package)
        super().attach(runtime)

    def training_batch(self, runtime: Runtime) -> Callable[[Any, int, bool], dict[str, Any]] | None:
        """Manual optimization, or Lightning's automatic one when the module overrides an
        optimization hook; None (the loop's lean path) otherwise."""
        assert self.trainer is not None and isinstance(self.trainer.strategy, LightningStrategy)
        if not runtime.automatic_optimization:
            check_manual_optimization(runtime)
            return ManualOptimization(runtime, self.trainer.strategy)
        if any(self.overridden(name) is not None for name in OPTIMIZATION_HOOKS):
            return AutomaticOptimization(runtime, self.trainer.strategy)
        return None

    def skipped_batch(self, runtime: Runtime, output: Any, batch_idx: int, is_last: bool) -> dict[str, Any]:
        """Lightning's rule for a ``training_step`` that returned None (automatic optimization):
        warn once per run, then zero_grad / optimizer step / step count as
        :func:`compat.optimization.skipped_step`; a dict without ``"loss"`` is Lightning's error."""
        if output is not None:
            raise misconfiguration(
                "In automatic_optimization, when `training_step` returns a dict, the 'loss' key needs to be present"
            )
        if not self._warned_skip:
            self._warned_skip = True
            warnings.warn("`training_step` returned `None`. If this was on purpose, ignore this warning...", stacklevel=2)
        return skipped_step(runtime, batch_idx, is_last)

    def connect_hook(self, runtime: Runtime, event: str, receiver: Callable[..., None]) -> None:
        """After the callbacks; at ``train_epoch_end`` before the monitoring callbacks."""
        signal = runtime.bus.signal(event)
        later = [r for r in signal.dispatch if event == _MONITORING_EVENT and _monitors(r)]
        for callback_receiver in later:
            signal.disconnect(callback_receiver)
        signal.connect(receiver, weak=False)
        for callback_receiver in later:
            signal.connect(callback_receiver, weak=False)


def add_model_callbacks(runtime: Runtime, returned: Any, package: str) -> None:
    """Add what ``configure_callbacks`` returned as Lightning does: a returned callback replaces
    the runtime's callbacks of its type (or a base of it), and checkpoint callbacks go last."""
    if not returned:
        return
    added = list(returned) if isinstance(returned, Sequence) else [returned]
    bases = {Callback, getattr(sys.modules.get(package), "Callback", Callback)}
    replaced = {
        type(c) for c in map(unwrap, runtime.callbacks)
        if type(c) not in bases and any(issubclass(type(new), type(c)) for new in added)
    }  # fmt: skip
    merged = [c for c in runtime.callbacks if type(unwrap(c)) not in replaced]
    merged += adapt(added, runtime)
    checkpoint_base = getattr(sys.modules.get(f"{package}.callbacks"), "Checkpoint", None)

    def is_checkpoint(callback: object) -> bool:
        role = getattr(callback, "monitor_role", None) == "checkpoint"
        return role or (checkpoint_base is not None and isinstance(callback, checkpoint_base))

    merged = [c for c in merged if not is_checkpoint(c)] + [c for c in merged if is_checkpoint(c)]
    check_state_keys(merged)
    for callback in runtime.callbacks:
        runtime.bus.unsubscribe(callback)
    runtime.callbacks = merged
    runtime.bus.subscribe_all(merged)


def _monitors(receiver: Any) -> bool:
    """Whether a receiver is a method of a checkpointing / early-stopping callback."""
    return getattr(getattr(receiver, "__self__", None), "monitor_role", None) is not None


BRIDGES.append(LightningBridge)
