"""How the runtime talks to a model: plain ``nn.Module`` or Lightning-style (duck typed).

A Lightning-style module defines ``training_step`` (and optionally ``validation_step``,
``test_step``, ``predict_step``, ``configure_optimizers`` and hooks such as
``on_validation_epoch_end``). A real ``LightningModule`` works without the Lightning
Trainer: its ``self.log`` / ``self.log_dict`` are routed to the runtime while it runs, and
its overridden hooks are connected to the bus after the callbacks (Lightning calls callback
hooks first, then the module's).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from runtime.data import move_to_device
from runtime.errors import ConfigError
from runtime.names import resolve_import
from runtime.registry import load_extensions

if TYPE_CHECKING:
    from runtime.core import RuntimeCore as Runtime

__all__ = ["BRIDGES", "MODULE_HOOKS", "ModuleBridge", "bridge_for", "takes_batch_idx", "inputs_of", "plain_loss", "resolve_loss", "step_loss"]

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

#: Lightning's batch-transfer hooks, in the order it calls them (before on_*_batch_start).
_TRANSFER_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")

#: Eval-stage batch hooks: Lightning passes ``dataloader_idx`` only with several loaders.
_EVAL_BATCH_HOOKS = frozenset(
    f"{stage}_batch_{when}" for stage in ("validation", "test", "predict") for when in ("start", "end")
)


def _positional_receiver(method: Callable[..., Any], label: str, *, drop_last: bool) -> Callable[..., None]:
    """Adapt a Lightning hook ``hook(*args)`` to a bus receiver ``fn(runtime, **payload)``;
    ``drop_last``: an eval batch hook, which gets the payload's last value (``dataloader_idx``)
    only while the evaluation runs several loaders (Lightning's rule)."""
    if drop_last:

        def receive(runtime: Any, **payload: Any) -> None:
            values = list(payload.values())
            method(*(values if runtime.state.eval_loaders > 1 else values[:-1]))

    else:

        def receive(runtime: Any, **payload: Any) -> None:
            method(*payload.values())

    receive.__qualname__ = receive.__name__ = label
    return receive


def takes_batch_idx(method: Callable[..., Any]) -> bool:
    """Lightning's rule for steps: pass ``batch_idx`` when the signature names it, takes
    ``*args`` or has at least two parameters."""
    method = getattr(method, "__wrapped__", method)
    try:
        parameters = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        return True
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return (
        any(p.name == "batch_idx" for p in parameters)
        or any(p.kind is p.VAR_POSITIONAL for p in parameters)
        or len(positional) >= 2
    )


class ModuleBridge:
    """Connects a model's steps, hooks and ``log`` to a :class:`Runtime` for one run.

    This base drives plain ``nn.Module`` s and duck-typed Lightning-style modules. Model
    families the runtime does not know itself plug in a subclass through :data:`BRIDGES`
    (``compat`` registers the one for real LightningModules); :func:`bridge_for` picks it.
    """

    #: Classes whose methods are defaults, not the user's: a hook counts as overridden
    #: when the model's class resolves it to a function none of these defines.
    hook_bases: tuple[type, ...] = (nn.Module,)

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.lightning_style = callable(getattr(model, "training_step", None))
        self._receivers: list[tuple[str, Callable[..., None]]] = []
        self._patched_log = False
        self._steps: dict[str, Callable[..., Any] | None] = {}

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        """Whether this bridge drives ``model`` (the base drives every model)."""
        return True

    def overridden(self, name: str) -> Callable[..., Any] | None:
        """The bound method ``name`` when the model's classes define it themselves."""
        function = getattr(type(self.model), name, None)
        if function is None:
            return None
        for base in self.hook_bases:
            if base.__dict__.get(name) is function or getattr(base, name, None) is function:
                return None
        return getattr(self.model, name)  # type: ignore[no-any-return]

    def step(self, stage: str) -> Callable[..., Any] | None:
        """The model's ``<stage>_step`` as ``fn(batch, batch_idx)``, or None for a plain
        module (looked up once: a missing attribute costs nn.Module.__getattr__ an
        AttributeError every batch). A step without ``batch_idx`` gets the batch only."""
        try:
            return self._steps[stage]
        except KeyError:
            method = getattr(self.model, f"{stage}_step", None)
            step = method if callable(method) else None
            if step is not None and not takes_batch_idx(step):
                step = _batch_only(step)
            self._steps[stage] = step
            return step

    def route_steps(
        self, stages: Sequence[str], through: Callable[[Callable[..., Any]], Callable[..., Any]]
    ) -> None:
        """From now on, :meth:`step` of each of ``stages`` is ``through(model's step)``: under
        DDP the steps run through the wrapper's forward (:mod:`runtime.parallel`). Routing
        again replaces the previous route."""
        for stage in stages:
            self._steps.pop(stage, None)
            step = self.step(stage)
            if step is not None:
                self._steps[stage] = through(step)

    def hooks(self) -> Iterator[tuple[str, Callable[..., None]]]:
        """``(event, receiver)`` for each hook the model overrides."""
        if not self.lightning_style:
            return
        for event, name in MODULE_HOOKS.items():
            method = self.overridden(name)
            if method is not None:
                label = f"{type(self.model).__name__}.{name}"
                yield event, _positional_receiver(method, label, drop_last=event in _EVAL_BATCH_HOOKS)

    def training_batch(self, runtime: Runtime) -> Callable[[Any, int, bool], dict[str, Any]] | None:
        """The function that trains one batch instead of the loop's lean ``_training_batch``,
        asked once per fit after the optimizers exist; None keeps the lean one.

        The base bridge drives every model through the lean path. Manual optimization needs
        what only a Lightning bridge offers (``self.optimizers()``, ``self.manual_backward``).
        """
        if not runtime.automatic_optimization:
            raise ConfigError(
                f"{type(self.model).__name__} sets automatic_optimization = False: manual "
                "optimization needs a real LightningModule (self.optimizers(), "
                "self.manual_backward), which busloop drives when Lightning is installed"
            )
        return None

    def skipped_batch(self, runtime: Runtime, output: Any, batch_idx: int, is_last: bool) -> dict[str, Any]:
        """A training batch whose step returned no loss (None, or a dict without ``"loss"``),
        handed over by the loop's lean path. Here, for plain and duck-typed Lightning-style
        modules, the batch is skipped whole: no zero_grad, no optimizer step, ``global_step``
        unchanged; only the epoch's schedulers still step after the epoch's last batch. (A real
        LightningModule's bridge runs Lightning's rule instead: the optimizer step still counts.)
        Returns the batch's outputs."""
        if is_last and runtime.lr_scheduler_configs:
            runtime._step_schedulers("epoch", runtime.state.epoch + 1)
        return {} if output is None else dict(output)

    def batch_transfer(self, device: torch.device, dataloader_idx: int = 0) -> Callable[[Any], Any] | None:
        """How a batch reaches ``device``: through the model's ``on_before_batch_transfer``,
        ``transfer_batch_to_device`` and ``on_after_batch_transfer`` when it overrides any (with
        Lightning's arguments: the batch's ``dataloader_idx``, 0 but in an evaluation stage
        with several loaders), else ``move_to_device``; None when there is nothing to do (CPU,
        no hooks), so the loop skips the call."""
        before, transfer, after = (
            self.overridden(name) if self.lightning_style else None for name in _TRANSFER_HOOKS
        )
        if before is None and transfer is None and after is None:
            return None if device.type == "cpu" else functools.partial(move_to_device, device=device)

        def apply(batch: Any) -> Any:
            if before is not None:
                batch = before(batch, dataloader_idx)
            batch = move_to_device(batch, device) if transfer is None else transfer(batch, device, dataloader_idx)
            return batch if after is None else after(batch, dataloader_idx)

        return apply

    def attach(self, runtime: Runtime) -> None:
        """Connect the model's hooks (after the callbacks) and route its ``log`` calls."""
        for event, receiver in self.hooks():
            self.connect_hook(runtime, event, receiver)
            self._receivers.append((event, receiver))
        has_own_log = "log" in vars(self.model) or self.overridden("log") is not None
        if self.lightning_style and not has_own_log:
            # An instance attribute shadows LightningModule.log for this run only.
            object.__setattr__(self.model, "log", runtime.metrics.module_log)
            object.__setattr__(self.model, "log_dict", runtime.metrics.module_log_dict)
            self._patched_log = True

    def connect_hook(self, runtime: Runtime, event: str, receiver: Callable[..., None]) -> None:
        """Connect one module hook: after every callback (Lightning calls callbacks first)."""
        runtime.bus.signal(event).connect(receiver, weak=False)

    def detach(self, runtime: Runtime) -> None:
        """Undo :meth:`attach`."""
        for event, receiver in self._receivers:
            runtime.bus.signal(event).disconnect(receiver)
        self._receivers.clear()
        if self._patched_log:
            for name in ("log", "log_dict"):
                self.model.__dict__.pop(name, None)
            self._patched_log = False


def _batch_only(step: Callable[..., Any]) -> Callable[..., Any]:
    def call(batch: Any, batch_idx: int) -> Any:
        return step(batch)

    return call


#: Bridges for model families the runtime does not know itself, tried in order; packages
#: append theirs on import (``compat`` adds the LightningModule one).
BRIDGES: list[type[ModuleBridge]] = []


def bridge_for(model: nn.Module) -> ModuleBridge:
    """The bridge that drives ``model``: the first registered one that accepts it, else the base."""
    load_extensions()
    for bridge in BRIDGES:
        if bridge.accepts(model):
            return bridge(model)
    return ModuleBridge(model)


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
