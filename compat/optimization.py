"""Lightning's optimization for a real LightningModule under busloop: its override hooks, manual
optimization and ``LightningOptimizer``.

The loop's lean ``_training_batch`` trains every model that leaves optimization to the loop.
:class:`~compat.module.LightningBridge` swaps in one of these batch functions, once per fit,
only when the module needs Lightning's machinery:

- :class:`AutomaticOptimization`, for a module that overrides ``optimizer_step``,
  ``optimizer_zero_grad``, ``backward`` or ``configure_gradient_clipping``: the same work as the
  lean path, in Lightning's shape. ``training_step``, ``zero_grad`` and ``backward`` run inside a
  closure that the module's ``optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)``
  hands to ``optimizer.step``; the hooks get Lightning's arguments; ``optimizer_step`` is called
  on stepping batches only (accumulating ones just run the closure).
- :class:`ManualOptimization`, for ``automatic_optimization = False``: the loop runs
  ``training_step`` only; the module steps ``self.optimizers()`` (Lightning's own
  ``LightningOptimizer`` wrappers, each ``step()`` one global step) and its schedulers itself.

:class:`LightningStrategy` is ``trainer.strategy`` for such a module: what ``LightningOptimizer``
and ``LightningModule`` call on it (``_lightning_optimizers``, ``optimizer_step``, ``backward``,
``precision_plugin``), done with busloop's events, scaler and clipping. Lightning is imported
only from the package the module itself comes from.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from compat.trainer import TrainerFacade
from compat.trainer_views import Strategy
from runtime.errors import ConfigError
from runtime.module import step_loss
from runtime.optim import OptimizationError, clip_gradients, zero_grad
from runtime.parallel import prepare_backward

if TYPE_CHECKING:
    from runtime.core import RuntimeCore as Runtime

__all__ = [
    "OPTIMIZATION_HOOKS",
    "AutomaticOptimization",
    "LightningStrategy",
    "ManualOptimization",
    "PrecisionPlugin",
    "check_manual_optimization",
    "skipped_step",
]

#: Module hooks that, when overridden, take a module off the lean path.
OPTIMIZATION_HOOKS = ("optimizer_step", "optimizer_zero_grad", "backward", "configure_gradient_clipping")


class PrecisionPlugin:
    """``trainer.precision_plugin``: where ``LightningModule.clip_gradients`` ends up."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        return self._rt.scaler

    def clip_gradients(
        self, optimizer: torch.optim.Optimizer, clip_val: float = 0.0, gradient_clip_algorithm: str = "norm"
    ) -> None:
        """Clip by value or norm, as Lightning's plugin does; a value <= 0 clips nothing."""
        if clip_val <= 0:
            return
        clip_gradients(optimizer, clip_val, "value" if gradient_clip_algorithm == "value" else "norm")


class LightningStrategy(Strategy):
    """``trainer.strategy`` for a LightningModule: the facade's collectives plus what
    ``LightningOptimizer.step``, ``self.optimizers()`` and ``self.manual_backward`` call."""

    def __init__(self, trainer: TrainerFacade, package: str) -> None:
        super().__init__(trainer)
        optimizer_module = importlib.import_module(f"{package}.core.optimizer")
        self._to_lightning_optimizer = optimizer_module.LightningOptimizer._to_lightning_optimizer
        self._wrapped: list[Any] = []
        self.precision_plugin = PrecisionPlugin(trainer._rt)
        self.counting_steps = False
        """True while a manual training_step runs: each optimizer step is one global step."""

    @property
    def _lightning_optimizers(self) -> list[Any]:
        """Lightning's ``LightningOptimizer`` around each of the run's optimizers (built once)."""
        optimizers = self._trainer._rt.optimizers
        if len(self._wrapped) != len(optimizers) or any(
            w.optimizer is not o for w, o in zip(self._wrapped, optimizers, strict=True)
        ):
            self._wrapped = [self._to_lightning_optimizer(o, self) for o in optimizers]
        return self._wrapped

    def backward(self, closure_loss: torch.Tensor, optimizer: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``before_backward``, the module's ``backward`` (on the scaled loss under 16-mixed),
        ``after_backward``; returns the detached loss."""
        rt = self._trainer._rt
        ev, scaler = rt.bus.event, rt.scaler
        if not rt.automatic_optimization:
            prepare_backward(rt, closure_loss)  # under DDP: this backward all-reduces
        if ev.before_backward.dispatch: ev.before_backward.emit(rt, loss=closure_loss)  # noqa: E701
        self.lightning_module.backward(closure_loss if scaler is None else scaler.scale(closure_loss), *args, **kwargs)
        if ev.after_backward.dispatch: ev.after_backward.emit(rt)  # noqa: E701
        return closure_loss.detach()

    def optimizer_step(
        self, optimizer: torch.optim.Optimizer, closure: Callable[[], Any], model: Any = None, **kwargs: Any
    ) -> Any:
        """What ``LightningOptimizer.step`` runs: the closure, ``before_optimizer_step``, clipping
        (automatic optimization only), then the update, through the grad scaler if there is one."""
        rt = self._trainer._rt
        scaler = rt.scaler
        output: Any
        if scaler is None:

            def closure_then_hooks() -> Any:
                result = closure()
                self._after_closure(optimizer)
                return result

            output = optimizer.step(closure=closure_then_hooks, **kwargs)
        else:
            output = closure()
            skip = output is None and rt.automatic_optimization  # the step returned no loss
            if not skip:
                scaler.unscale_(optimizer)
            self._after_closure(optimizer)
            if not skip:
                output = scaler.step(optimizer, **kwargs)
                scaler.update()
        if self.counting_steps:
            rt.state.global_step += 1
        return output

    def _after_closure(self, optimizer: torch.optim.Optimizer) -> None:
        rt = self._trainer._rt
        ev = rt.bus.event
        if ev.before_optimizer_step.dispatch: ev.before_optimizer_step.emit(rt, optimizer=optimizer)  # noqa: E701
        if rt.automatic_optimization:
            trainer = self._trainer
            self.lightning_module.configure_gradient_clipping(
                optimizer,
                gradient_clip_val=trainer.gradient_clip_val,
                gradient_clip_algorithm=trainer.gradient_clip_algorithm,
            )


def _run_training_step(runtime: Runtime, batch: Any, batch_idx: int, autocast: Any) -> Any:
    if autocast is None:
        return runtime._training_step(batch, batch_idx)
    with autocast:
        return runtime._training_step(batch, batch_idx)


class _Closure:
    """Lightning's automatic-optimization closure: training_step, zero_grad (first batch of an
    accumulation window), backward; returns the detached loss (None: the step skipped)."""

    def __init__(self, runtime: Runtime, strategy: LightningStrategy, batch: Any, batch_idx: int) -> None:
        self.runtime, self.strategy, self.batch, self.batch_idx = runtime, strategy, batch, batch_idx
        self.outputs: dict[str, Any] = {}

    @torch.enable_grad()
    def __call__(self) -> torch.Tensor | None:
        rt, batch_idx = self.runtime, self.batch_idx
        optimizer, module, accumulate = rt.optimizer, self.strategy.lightning_module, rt.accumulate_grad_batches
        output = _run_training_step(rt, self.batch, batch_idx, rt._autocast)
        loss = step_loss(output)
        if loss is not None and accumulate > 1:
            loss = loss / accumulate
        skip_backward = rt.skip_backward  # a forward-only pass (SWA's batch-norm epoch)
        if batch_idx % accumulate == 0 and not skip_backward:
            ev = rt.bus.event
            if ev.before_zero_grad.dispatch: ev.before_zero_grad.emit(rt, optimizer=optimizer)  # noqa: E701
            module.optimizer_zero_grad(rt.state.epoch, batch_idx, optimizer)
        if loss is None:
            self.outputs = {}
            return None
        if not skip_backward:
            self.strategy.backward(loss, optimizer)
            if rt.training_strategy is not None:
                rt.training_strategy.update_parameters(rt)
        extra = dict(output) if isinstance(output, Mapping) else {}
        self.outputs = {**extra, "loss": loss.detach()}
        return self.outputs["loss"]  # type: ignore[no-any-return]


class AutomaticOptimization:
    """One training batch the way Lightning's automatic optimization runs it, calling the
    module's ``optimizer_step`` / ``optimizer_zero_grad`` / ``backward`` /
    ``configure_gradient_clipping`` (overridden or Lightning's defaults)."""

    def __init__(self, runtime: Runtime, strategy: LightningStrategy) -> None:
        self.runtime, self.strategy = runtime, strategy

    def __call__(self, batch: Any, batch_idx: int, is_last: bool) -> dict[str, Any]:
        rt = self.runtime
        st, accumulate = rt.state, rt.accumulate_grad_batches
        closure = _Closure(rt, self.strategy, batch, batch_idx)
        if accumulate == 1 or (batch_idx + 1) % accumulate == 0 or is_last:
            optimizer = self.strategy._lightning_optimizers[0]
            self.strategy.lightning_module.optimizer_step(st.epoch, batch_idx, optimizer, closure)
            st.global_step += 1  # as Lightning counts it: once the hook returns
            rt._step_schedulers("step", batch_idx + 1)
        else:
            closure()
        if is_last:
            rt._step_schedulers("epoch", st.epoch + 1)
        return closure.outputs


class ManualOptimization:
    """One training batch under manual optimization: ``training_step`` alone; each
    ``LightningOptimizer.step()`` it makes is one global step; no scheduler steps."""

    def __init__(self, runtime: Runtime, strategy: LightningStrategy) -> None:
        self.runtime, self.strategy = runtime, strategy
        autocast = runtime._autocast
        # The step updates weights inside the autocast region: cached casts would go stale
        # (Lightning's mixed precision disables the cache too).
        self.autocast = None if autocast is None else torch.autocast(
            autocast.device, dtype=autocast.fast_dtype, cache_enabled=False
        )

    def __call__(self, batch: Any, batch_idx: int, is_last: bool) -> dict[str, Any]:
        self.strategy.counting_steps = True
        try:
            output = _run_training_step(self.runtime, batch, batch_idx, self.autocast)
        finally:
            self.strategy.counting_steps = False
        if output is None:
            return {}
        if isinstance(output, torch.Tensor):
            return {"loss": output.detach()}
        if isinstance(output, Mapping):
            outputs = dict(output)
            if isinstance(outputs.get("loss"), torch.Tensor):
                outputs["loss"] = outputs["loss"].detach()
            return outputs
        raise OptimizationError(
            f"training_step returned {type(output).__name__}: under manual optimization it must "
            "return a Tensor, a dict or None"
        )


def skipped_step(runtime: Runtime, batch_idx: int, is_last: bool) -> dict[str, Any]:
    """A lean-path batch whose ``training_step`` returned None, as Lightning's automatic
    optimization runs it: the closure still zeroes the gradients (first batch of an accumulation
    window) and skips only the backward; when the window closes, ``before_optimizer_step``,
    clipping and the optimizer step still run (under a grad scaler neither unscale nor step), the
    step is counted and step-interval schedulers step. The update applies whatever gradients the
    window's earlier batches left (none after a zero_grad). Returns the batch's outputs: ``{}``."""
    rt, ev, optimizer = runtime, runtime.bus.event, runtime.optimizer
    assert optimizer is not None
    accumulate = rt.accumulate_grad_batches
    if batch_idx % accumulate == 0 and not rt.skip_backward:
        if ev.before_zero_grad.dispatch: ev.before_zero_grad.emit(rt, optimizer=optimizer)  # noqa: E701
        zero_grad(optimizer)
    if accumulate == 1 or (batch_idx + 1) % accumulate == 0 or is_last:
        if ev.before_optimizer_step.dispatch: ev.before_optimizer_step.emit(rt, optimizer=optimizer)  # noqa: E701
        cfg = rt.config.trainer
        if cfg.gradient_clip_val is not None:
            clip_gradients(optimizer, cfg.gradient_clip_val, cfg.gradient_clip_algorithm)
        if rt.scaler is None:
            optimizer.step()
        rt.state.global_step += 1
        if rt.lr_scheduler_configs:
            rt._step_schedulers("step", batch_idx + 1)
    if is_last and rt.lr_scheduler_configs:
        rt._step_schedulers("epoch", rt.state.epoch + 1)
    return {}


def check_manual_optimization(runtime: Runtime) -> None:
    """Lightning's rule: the loop neither clips nor accumulates for a manually optimized module."""
    cfg = runtime.config.trainer
    if cfg.gradient_clip_val is not None and cfg.gradient_clip_val > 0:
        raise ConfigError(
            f"trainer.gradient_clip_val={cfg.gradient_clip_val}: automatic gradient clipping is not "
            "supported for manual optimization (automatic_optimization = False); remove it and call "
            "self.clip_gradients(optimizer, ...) in training_step"
        )
    if runtime.accumulate_grad_batches != 1:
        raise ConfigError(
            f"trainer.accumulate_grad_batches={runtime.accumulate_grad_batches}: automatic gradient "
            "accumulation is not supported for manual optimization (automatic_optimization = False); "
            "remove it and accumulate in training_step"
        )
