"""StochasticWeightAveraging: Lightning 2.6's SWA callback, natively on the busloop bus.

From epoch ``swa_start`` on, each epoch start folds the current weights into a running
average (``avg_fn``, the arithmetic mean by default) and the learning rate follows
``torch.optim.swa_utils.SWALR`` (swapped in for the configured epoch scheduler, as Lightning
does). When training reaches its last epoch the averaged weights replace the model's; for a
model with batch norm the running statistics are then recomputed with one forward pass over
the training data (momentum ``None``: the cumulative average, as ``torch.optim.swa_utils.update_bn``).

Lightning runs that pass as an extra training epoch with backward skipped (its
``current_epoch`` ends at ``max_epochs + 1``); busloop runs it at ``train_end`` through the
model's ``forward`` on the first element of each training batch, so no extra epoch, validation
or checkpoint happens. The averaged weights and statistics are the same, and SWALR is stepped
once more so its state counts that epoch as Lightning's does.

The state (``n_averaged``, ``latest_update_epoch``, ``scheduler_state``,
``average_model_state``) is Lightning's, so a run resumes with its average intact.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import SWALR

from runtime.callback import Callback
from runtime.data import move_to_device
from runtime.module import inputs_of
from runtime.optim import SchedulerConfig
from runtime.registry import register

__all__ = ["StochasticWeightAveraging"]

log = logging.getLogger("busloop.callbacks")

AvgFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _mean(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
    """The running arithmetic mean: the default ``avg_fn``."""
    return averaged + (current - averaged) / (num_averaged + 1)


def _key(name: str, average: dict[str, torch.Tensor]) -> str:
    """The averaged entry of parameter ``name`` (a pruned ``weight_orig`` is ``weight``)."""
    return name if name in average else name.removesuffix("_orig")


@register()
class StochasticWeightAveraging(Callback):
    """Average the weights of the last epochs (SWA) with an annealed constant learning rate.

    ``swa_lrs``: the SWA learning rate, one float or one per parameter group.
    ``swa_epoch_start``: the epoch (1-based int) or fraction of ``max_epochs`` (float in
    [0, 1]) at which averaging starts. ``annealing_epochs`` / ``annealing_strategy``
    ("cos" or "linear"): how SWALR anneals to ``swa_lrs``. ``avg_fn(averaged, current,
    n_averaged)``: the averaging rule. ``device``: where the averaged copy lives (None: the
    model's device).
    """

    def __init__(
        self,
        swa_lrs: float | list[float],
        swa_epoch_start: int | float = 0.8,
        annealing_epochs: int = 10,
        annealing_strategy: str = "cos",
        avg_fn: AvgFn | None = None,
        device: torch.device | str | None = "cpu",
    ) -> None:
        name = "StochasticWeightAveraging"
        if isinstance(swa_epoch_start, bool) or not isinstance(swa_epoch_start, int | float):
            raise ValueError(f"{name}: swa_epoch_start must be an int >= 1 or a float in [0, 1]")
        if isinstance(swa_epoch_start, int) and swa_epoch_start < 1:
            raise ValueError(f"{name}: swa_epoch_start as an int must be >= 1, got {swa_epoch_start}")
        if isinstance(swa_epoch_start, float) and not 0 <= swa_epoch_start <= 1:
            raise ValueError(f"{name}: swa_epoch_start as a float must be in [0, 1], got {swa_epoch_start}")
        lrs = swa_lrs if isinstance(swa_lrs, list) else [swa_lrs]
        if not lrs or not all(isinstance(lr, int | float) and not isinstance(lr, bool) and lr > 0 for lr in lrs):
            raise ValueError(f"{name}: swa_lrs must be a positive float or a list of them, got {swa_lrs!r}")
        if annealing_strategy not in ("cos", "linear"):
            raise ValueError(f"{name}: annealing_strategy must be 'cos' or 'linear', got {annealing_strategy!r}")
        if not isinstance(annealing_epochs, int) or annealing_epochs < 0:
            raise ValueError(f"{name}: annealing_epochs must be an int >= 0, got {annealing_epochs!r}")
        if avg_fn is not None and not callable(avg_fn):
            raise ValueError(f"{name}: avg_fn must be callable, got {avg_fn!r}")
        self._swa_epoch_start: int | float = swa_epoch_start
        self._swa_lrs: float | list[float] = swa_lrs
        self._annealing_epochs = annealing_epochs
        self._annealing_strategy = annealing_strategy
        self._avg_fn: AvgFn = avg_fn or _mean
        self._device = torch.device(device) if device is not None else None
        self.n_averaged: torch.Tensor | None = None
        self._average: dict[str, torch.Tensor] | None = None
        """The averaged model's state (parameters averaged; buffers as copied at setup)."""
        self._initialized = False
        self._swa_scheduler: SWALR | None = None
        self._scheduler_state: dict[str, Any] | None = None
        self._init_n_averaged = 0
        self._latest_update_epoch = -1
        self._has_batch_norm = False
        self._max_epochs = 0
        self.momenta: dict[nn.Module, float | None] = {}

    @property
    def swa_start(self) -> int:
        """The first averaged epoch (0-based)."""
        return max(int(self._swa_epoch_start) - 1, 0)

    @property
    def swa_end(self) -> int:
        """The last averaged epoch (0-based)."""
        return self._max_epochs - 1

    # ------------------------------------------------------------------ events
    def on_setup(self, runtime: Any, stage: str) -> None:
        if stage == "fit":
            self._average = {k: v.detach().clone() for k, v in runtime.model.state_dict().items()}

    def on_fit_start(self, runtime: Any) -> None:
        if len(runtime.lr_scheduler_configs) > 1:
            raise ValueError("StochasticWeightAveraging: supports at most one lr scheduler")
        max_epochs = runtime.state.max_epochs
        if isinstance(self._swa_epoch_start, float):
            self._swa_epoch_start = int(max_epochs * self._swa_epoch_start)
        self._has_batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in runtime.model.modules())
        self._max_epochs = max_epochs
        if self._scheduler_state is not None:  # resumed: the checkpoint's SWALR replaces the scheduler
            runtime.lr_scheduler_configs.clear()

    def on_train_epoch_start(self, runtime: Any) -> None:
        epoch = runtime.state.epoch
        in_window = self.swa_start <= epoch <= self.swa_end
        if not self._initialized and in_window:
            self._initialize(runtime)
        if in_window and epoch > self._latest_update_epoch:
            assert self._average is not None and self.n_averaged is not None
            self._update_average(runtime.model)
            self._latest_update_epoch = epoch

    def on_train_end(self, runtime: Any) -> None:
        if self._average is None or runtime.state.epoch - 1 != self.swa_end:
            return  # stopped before the last epoch: the model keeps its own weights (as Lightning)
        self._transfer_weights(runtime.model)
        if self._has_batch_norm:
            self._update_batch_norm(runtime)
            if self._swa_scheduler is not None:  # Lightning's extra epoch ends with a scheduler step
                self._swa_scheduler.step()

    # ------------------------------------------------------------------ the work
    def _initialize(self, runtime: Any) -> None:
        self._initialized = True
        model = runtime.model
        device = self._device or next(model.parameters()).device
        assert self._average is not None
        self._average = {k: v.to(device) for k, v in self._average.items()}
        optimizer = runtime.optimizer
        lrs = self._swa_lrs if isinstance(self._swa_lrs, list) else [self._swa_lrs] * len(optimizer.param_groups)
        self._swa_lrs = [float(lr) for lr in lrs]
        for lr, group in zip(self._swa_lrs, optimizer.param_groups, strict=False):
            group["initial_lr"] = lr
        # Lightning counts its extra batch-norm epoch in max_epochs when it builds SWALR.
        max_epochs = self._max_epochs + (1 if self._has_batch_norm else 0)
        self._swa_scheduler = SWALR(
            optimizer,
            swa_lr=self._swa_lrs,  # type: ignore[arg-type]  # SWALR takes one lr per group too
            anneal_epochs=self._annealing_epochs,
            anneal_strategy=self._annealing_strategy,  # type: ignore[arg-type]
            last_epoch=max_epochs if self._annealing_strategy == "cos" else -1,
        )
        if self._scheduler_state is not None:
            self._swa_scheduler.load_state_dict(self._scheduler_state)
        elif runtime.state.epoch != self.swa_start:
            log.warning("StochasticWeightAveraging: initialising after swa_start without checkpoint state")
        config = SchedulerConfig(scheduler=self._swa_scheduler, interval="epoch", frequency=1)
        configs = runtime.lr_scheduler_configs
        if configs:
            old = configs[0]
            if old.interval != "epoch" or old.frequency != 1:
                log.warning("StochasticWeightAveraging: SWA steps every epoch; replacing %s", old)
            log.info("Swapping scheduler %s for SWALR", type(old.scheduler).__name__)
            configs[0] = config
        else:
            configs.append(config)
        if self.n_averaged is None:
            self.n_averaged = torch.tensor(self._init_n_averaged, dtype=torch.long, device=device)

    def _update_average(self, model: nn.Module) -> None:
        assert self._average is not None and self.n_averaged is not None
        n = self.n_averaged
        with torch.no_grad():
            for name, param in model.named_parameters():
                averaged = self._average[_key(name, self._average)]
                current = param.detach().to(averaged.device)
                averaged.copy_(current if n == 0 else self._avg_fn(averaged, current, n.to(averaged.device)))
        n += 1

    def _transfer_weights(self, model: nn.Module) -> None:
        assert self._average is not None
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.detach().copy_(self._average[_key(name, self._average)].to(param.device))

    def _update_batch_norm(self, runtime: Any) -> None:
        """Recompute batch-norm statistics over the training data with the averaged weights."""
        model: nn.Module = runtime.model
        loader = getattr(runtime, "train_loader", None)
        if loader is None:
            return
        self.momenta = {}
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                module.running_mean = torch.zeros_like(module.running_mean)
                module.running_var = torch.ones_like(module.running_var)  # type: ignore[arg-type]
                self.momenta[module] = module.momentum
                module.momentum = None  # type: ignore[assignment]
                if module.num_batches_tracked is not None:
                    module.num_batches_tracked *= 0
        was_training = model.training
        model.train()
        device = next(model.parameters()).device
        with torch.no_grad():
            n = runtime.state.num_training_batches  # inf: a loader without a length, to its end
            for batch in itertools.islice(loader, None if math.isinf(n) else int(n)):
                model(move_to_device(inputs_of(batch), device))
        model.train(was_training)
        for module, momentum in self.momenta.items():
            module.momentum = momentum  # type: ignore[assignment]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "n_averaged": 0 if self.n_averaged is None else int(self.n_averaged.item()),
            "latest_update_epoch": self._latest_update_epoch,
            "scheduler_state": None if self._swa_scheduler is None else self._swa_scheduler.state_dict(),
            "average_model_state": None if self._average is None else dict(self._average),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._init_n_averaged = int(state_dict["n_averaged"])
        self._latest_update_epoch = int(state_dict["latest_update_epoch"])
        self._scheduler_state = state_dict["scheduler_state"]
        average = state_dict["average_model_state"]
        if self._average is not None and average is not None:
            for key, value in average.items():
                self._average[key].copy_(value)
