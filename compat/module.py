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

Lightning is imported only from the module's own class hierarchy (the user handed us a
Lightning object, so it is installed); compat registers the bridge on import.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import nn

from compat.trainer import TrainerFacade
from runtime.module import BRIDGES, ModuleBridge

if TYPE_CHECKING:
    from runtime.core import RuntimeCore as Runtime

__all__ = ["LightningBridge", "lightning_base_classes"]

#: Packages that ship a LightningModule (the unified package and the standalone one).
_PACKAGES = ("lightning.pytorch", "pytorch_lightning")

#: The event at which Lightning runs monitoring callbacks after the module's hook.
_MONITORING_EVENT = "train_epoch_end"


def lightning_base_classes(model: object) -> tuple[type, ...] | None:
    """Lightning's module base classes when ``model`` is a real LightningModule, else None."""
    for package in _PACKAGES:
        pl = sys.modules.get(package)
        if pl is None or not isinstance(model, pl.LightningModule):
            continue
        hooks = sys.modules[f"{package}.core.hooks"]
        return (pl.LightningModule, hooks.ModelHooks, hooks.DataHooks, hooks.CheckpointHooks, nn.Module)
    return None


class LightningBridge(ModuleBridge):
    """Drives a real ``LightningModule``: the trainer facade, Lightning's override rule and
    Lightning's hook order on top of the runtime's module bridge."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        bases = lightning_base_classes(model)
        assert bases is not None, "LightningBridge.accepts was not consulted"
        self.hook_bases = bases
        self.trainer: TrainerFacade | None = None

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        return lightning_base_classes(model) is not None

    def attach(self, runtime: Runtime) -> None:
        """Attach the trainer facade, then connect hooks and route ``self.log``."""
        self.trainer = TrainerFacade(runtime)
        setattr(self.model, "trainer", self.trainer)  # noqa: B010  LightningModule's setter: children too
        if runtime.datamodule is not None and hasattr(runtime.datamodule, "trainer"):
            runtime.datamodule.trainer = self.trainer  # as Lightning's data connector does
        super().attach(runtime)

    def connect_hook(self, runtime: Runtime, event: str, receiver: Callable[..., None]) -> None:
        """After the callbacks; at ``train_epoch_end`` before the monitoring callbacks."""
        signal = runtime.bus.signal(event)
        later = [r for r in signal.dispatch if event == _MONITORING_EVENT and _monitors(r)]
        for callback_receiver in later:
            signal.disconnect(callback_receiver)
        signal.connect(receiver, weak=False)
        for callback_receiver in later:
            signal.connect(callback_receiver, weak=False)


def _monitors(receiver: Any) -> bool:
    """Whether a receiver is a method of a checkpointing / early-stopping callback."""
    return getattr(getattr(receiver, "__self__", None), "monitor_role", None) is not None


BRIDGES.append(LightningBridge)
