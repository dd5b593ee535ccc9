"""How the runtime talks to a model: plain ``nn.Module`` or Lightning-style (duck typed).

A Lightning-style module defines ``training_step`` (and optionally ``validation_step``,
``test_step``, ``predict_step``, ``configure_optimizers`` and hooks such as
``on_validation_epoch_end``). A real ``LightningModule`` works without the Lightning
Trainer: its ``self.log`` / ``self.log_dict`` are routed to the runtime while it runs, and
its overridden hooks are connected to the bus after the callbacks (Lightning calls callback
hooks first, then the module's).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from runtime.errors import ConfigError
from runtime.names import resolve_import

if TYPE_CHECKING:
    from runtime.core import RuntimeCore as Runtime

__all__ = ["MODULE_HOOKS", "ModuleBridge", "inputs_of", "plain_loss", "resolve_loss", "step_loss"]

#: Bus events that a Lightning-style module may implement as hooks: event -> method name.
MODULE_HOOKS: dict[str, str] = {
    "setup": "setup",
    "teardown": "teardown",
    **{
        event: f"on_{event}"
        for event in (
            "fit_start fit_end train_start train_end train_epoch_start train_epoch_end "
            "train_batch_start train_batch_end before_backward after_backward "
            "before_optimizer_step before_zero_grad save_checkpoint load_checkpoint"
        ).split()
    },
    **{
        f"{stage}_{when}": f"on_{stage}_{when}"
        for stage in ("validation", "test", "predict")
        for when in ("start", "end", "epoch_start", "epoch_end", "batch_start", "batch_end")
    },
}

_LIGHTNING_PACKAGES = ("lightning.", "pytorch_lightning.", "lightning_fabric.")


def _defined_by_user(model: nn.Module, name: str) -> Callable[..., Any] | None:
    """The bound method ``name`` if the model's own classes define it (not Lightning's no-op)."""
    for cls in type(model).__mro__:
        if name in cls.__dict__:
            if cls.__module__.startswith(_LIGHTNING_PACKAGES) or cls is nn.Module:
                return None
            return getattr(model, name)  # type: ignore[no-any-return]
    return None


def _positional_receiver(method: Callable[..., Any], label: str) -> Callable[..., None]:
    """Adapt a Lightning hook ``hook(*args)`` to a bus receiver ``fn(runtime, **payload)``."""

    def receive(runtime: Any, **payload: Any) -> None:
        method(*payload.values())

    receive.__qualname__ = receive.__name__ = label
    return receive


class ModuleBridge:
    """Connects a model's steps, hooks and ``log`` to a :class:`Runtime` for one run."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.lightning_style = callable(getattr(model, "training_step", None))
        self._receivers: list[tuple[str, Callable[..., None]]] = []
        self._patched_log = False
        self._steps: dict[str, Callable[..., Any] | None] = {}

    def step(self, stage: str) -> Callable[..., Any] | None:
        """The model's ``<stage>_step`` method, or None for a plain module (looked up once:
        a missing attribute costs nn.Module.__getattr__ an AttributeError every batch)."""
        try:
            return self._steps[stage]
        except KeyError:
            method = getattr(self.model, f"{stage}_step", None)
            step = self._steps[stage] = method if callable(method) else None
            return step

    def hooks(self) -> Iterator[tuple[str, Callable[..., None]]]:
        """``(event, receiver)`` for each hook the model overrides."""
        if not self.lightning_style:
            return
        for event, name in MODULE_HOOKS.items():
            method = _defined_by_user(self.model, name)
            if method is not None:
                yield event, _positional_receiver(method, f"{type(self.model).__name__}.{name}")

    def attach(self, runtime: Runtime) -> None:
        """Connect the model's hooks (after the callbacks) and route its ``log`` calls."""
        for event, receiver in self.hooks():
            runtime.bus.signal(event).connect(receiver, weak=False)
            self._receivers.append((event, receiver))
        has_own_log = "log" in vars(self.model) or (
            hasattr(self.model, "log")
            and not type(self.model).__module__.startswith(_LIGHTNING_PACKAGES)
            and _defined_by_user(self.model, "log") is not None
        )
        if self.lightning_style and not has_own_log:
            # An instance attribute shadows LightningModule.log for this run only.
            object.__setattr__(self.model, "log", runtime.metrics.module_log)
            object.__setattr__(self.model, "log_dict", runtime.metrics.module_log_dict)
            self._patched_log = True

    def detach(self, runtime: Runtime) -> None:
        """Undo :meth:`attach`."""
        for event, receiver in self._receivers:
            runtime.bus.signal(event).disconnect(receiver)
        self._receivers.clear()
        if self._patched_log:
            for name in ("log", "log_dict"):
                self.model.__dict__.pop(name, None)
            self._patched_log = False


def step_loss(output: Any) -> Any:
    """The loss in a step's output: the tensor itself, ``output["loss"]``, or None."""
    if output is None or isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        return output.get("loss")
    return output


def resolve_loss(loss: Callable[..., torch.Tensor] | str | None) -> Callable[..., torch.Tensor] | None:
    """The loss function: as given, or imported from a config path (a class is instantiated)."""
    if isinstance(loss, str):
        resolved = resolve_import(loss, key="loss")
        if isinstance(resolved, type):
            resolved = resolved()
        return resolved  # type: ignore[no-any-return]
    return loss


def inputs_of(batch: Any) -> Any:
    """The model inputs of a batch: its first element for ``(inputs, targets)`` pairs."""
    return batch[0] if isinstance(batch, list | tuple) else batch


def plain_loss(
    loss_fn: Callable[..., torch.Tensor] | None, model: nn.Module, batch: Any
) -> torch.Tensor:
    """``loss_fn(model(inputs), targets)``: how a plain ``nn.Module`` is trained and evaluated."""
    if loss_fn is None:
        raise ConfigError(
            "loss: the model has no training_step, so busloop needs a loss function "
            "(Runtime(loss=...) or config 'loss: torch.nn.functional:cross_entropy')"
        )
    if not isinstance(batch, list | tuple) or len(batch) < 2:
        raise TypeError(
            "a plain nn.Module is trained on (inputs, targets) batches; got "
            f"{type(batch).__name__}. Define training_step for other batch shapes."
        )
    return loss_fn(model(batch[0]), batch[1])
