"""EMACallback: an exponential moving average of the model's weights.

The shadow copy covers the full ``state_dict`` (parameters and buffers). After each
optimizer step::

    updates += 1
    d = decay * (1 - exp(-updates / decay_tau))   if use_dynamic_decay else decay
    ema = d * ema + (1 - d) * model               for floating-point entries
    ema = model                                   for the others (e.g. num_batches_tracked)

The EMA weights are swapped in for validation and test and swapped out afterwards, loaded
into the model for good at ``train_end``, and written as ``checkpoint["state_dict"]`` of
every checkpoint. The callback's own state holds the EMA, the update count and the raw
training weights, so resuming from any checkpoint (also one written during validation)
continues exactly: after the restore the model holds the training weights again.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from runtime.callback import Callback
from runtime.loop import Runtime
from runtime.registry import register

log = logging.getLogger("busloop.callbacks")

__all__ = ["EMACallback"]

StateDict = dict[str, torch.Tensor]


def _clone(state: dict[str, Any]) -> StateDict:
    return {k: v.detach().clone() for k, v in state.items()}


@register()
class EMACallback(Callback):
    """Keep an EMA of the weights; evaluate and checkpoint with it (see the module doc).

    ``decay``: the EMA decay (the weight of the old average). ``use_dynamic_decay``: ramp
    the decay up as ``decay · (1 - exp(-updates / decay_tau))``.
    """

    def __init__(self, decay: float = 0.5, use_dynamic_decay: bool = True, decay_tau: float = 2000) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        if decay_tau <= 0:
            raise ValueError(f"decay_tau must be > 0, got {decay_tau}")
        self.decay, self.use_dynamic_decay, self.decay_tau = decay, use_dynamic_decay, decay_tau
        self.ema: StateDict | None = None
        """The shadow state_dict (None before fit starts)."""
        self.updates = 0
        self._model: nn.Module | None = None
        self._raw: StateDict | None = None
        """The training weights while the model holds the EMA (``_swapped``)."""
        self._swapped = False
        self._for_good = False
        self._pending_raw: StateDict | None = None
        self._last_step = 0
        self._float_keys: list[str] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            decay=self.decay, use_dynamic_decay=self.use_dynamic_decay, decay_tau=self.decay_tau
        )

    def current_decay(self) -> float:
        """The decay of update number ``updates`` (the latest one)."""
        if self.use_dynamic_decay:
            return self.decay * (1 - math.exp(-self.updates / self.decay_tau))
        return self.decay

    # ------------------------------------------------------------------ fit
    def on_setup(self, runtime: Runtime, stage: str) -> None:
        if stage == "fit":
            self._model = runtime.model

    def on_fit_start(self, runtime: Runtime) -> None:
        model = runtime.model
        self._model = model
        if self._for_good:  # a new fit on the same model: continue from the training weights
            self._swap_out()
            self._for_good = False
        if self._pending_raw is not None:
            model.load_state_dict(self._pending_raw)
            self._pending_raw = None
        if self.ema is None:
            self.ema = _clone(model.state_dict())
            self.updates = 0
        self._float_keys = [k for k, v in self.ema.items() if v.is_floating_point()]
        self._last_step = runtime.state.global_step

    def on_train_batch_end(self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = runtime.state.global_step
        if step == self._last_step or self.ema is None:
            return
        self._last_step = step
        self.update(runtime.model)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA update from ``model``'s current weights."""
        assert self.ema is not None
        self.updates += 1
        d = self.current_decay()
        current = model.state_dict()
        ema = self.ema
        floats = self._float_keys
        if floats:
            ema_f = [ema[k] for k in floats]
            torch._foreach_mul_(ema_f, d)
            torch._foreach_add_(ema_f, [current[k].detach() for k in floats], alpha=1 - d)
        for key, value in ema.items():
            if not value.is_floating_point():
                value.copy_(current[key])

    def on_train_end(self, runtime: Runtime) -> None:
        if self.ema is None:
            return
        self._swap_in()
        self._for_good = True
        log.info("EMACallback: the model now holds the EMA weights (%d updates)", self.updates)

    # ------------------------------------------------------------------ evaluation swaps
    def on_validation_start(self, runtime: Runtime) -> None:
        self._swap_in()

    def on_validation_end(self, runtime: Runtime) -> None:
        if not self._for_good:
            self._swap_out()

    def on_test_start(self, runtime: Runtime) -> None:
        self._swap_in()

    def on_test_end(self, runtime: Runtime) -> None:
        if not self._for_good:
            self._swap_out()

    def on_exception(self, runtime: Runtime, exception: BaseException) -> None:
        if not self._for_good:
            self._swap_out()

    @torch.no_grad()
    def _swap_in(self) -> None:
        """Keep the training weights aside and load the EMA (no-op if already swapped)."""
        if self.ema is None or self._model is None or self._swapped:
            return
        state = self._model.state_dict()
        if self._raw is None:
            self._raw = _clone(state)
        else:
            for key, value in state.items():
                self._raw[key].copy_(value)
        self._model.load_state_dict(self.ema)
        self._swapped = True

    @torch.no_grad()
    def _swap_out(self) -> None:
        """Put the training weights back (no-op if the EMA is not swapped in)."""
        if not self._swapped or self._model is None or self._raw is None:
            return
        self._model.load_state_dict(self._raw)
        self._swapped = False

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, runtime: Runtime, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None:
            checkpoint["state_dict"] = dict(self.ema)

    def state_dict(self) -> dict[str, Any]:
        if self.ema is None:
            return {}
        if self._swapped:
            raw: dict[str, Any] | None = self._raw
        else:
            raw = self._model.state_dict() if self._model is not None else None
        state: dict[str, Any] = {"ema": dict(self.ema), "updates": self.updates}
        if raw is not None:
            state["raw"] = dict(raw)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ema, raw = state_dict.get("ema"), state_dict.get("raw")
        if ema is None:
            return
        model = self._model
        if model is not None:
            expected = set(model.state_dict())
            if set(ema) != expected:
                missing, extra = sorted(expected - set(ema)), sorted(set(ema) - expected)
                log.warning(
                    "EMACallback: the saved EMA does not fit this model (missing %s, unexpected %s); "
                    "starting a new average",
                    missing[:5],
                    extra[:5],
                )
                self.ema, self.updates = None, 0
                return
        self.ema = _clone(ema)
        self.updates = int(state_dict.get("updates", 0))
        self._swapped = self._for_good = False
        if raw is not None:
            if model is not None:
                model.load_state_dict(raw)
            else:
                self._pending_raw = _clone(raw)
