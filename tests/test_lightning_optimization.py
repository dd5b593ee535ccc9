"""Lightning's optimization hooks under busloop, against Lightning's Trainer: ``optimizer_step``
(the closure), ``optimizer_zero_grad``, ``backward``, ``configure_gradient_clipping``, the
batch-transfer hooks, schedulers in Lightning's dict form and ``configure_callbacks``; and the
lean path kept when none of them is overridden.

Each parity test trains the same LightningModule with the same seed and data under
``lightning.pytorch.Trainer`` and ``runtime.Runtime`` and compares what the module saw (the
hooks it recorded, with their arguments), the final weights and ``global_step``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from parity import (
    RecordsOptimizationHooks,
    assert_same_weights,
    busloop_runtime,
    fit_both,
    lightning_trainer,
    three_batches,
)
from torch import nn
from torch.nn import functional as F

from conftest import make_loader
from runtime import Callback, Runtime
from runtime.tracking import NullTracker

pl = pytest.importorskip("lightning.pytorch")
LightningOptimizer = pytest.importorskip("lightning.pytorch.core.optimizer").LightningOptimizer


# ---------------------------------------------------------------------- automatic, with overrides
class Net(RecordsOptimizationHooks, pl.LightningModule):
    """A classifier that records the training hooks it sees, in order."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))
        self.lr = lr
        self.calls: list[Any] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.calls.append(("training_step", batch_idx))
        return F.cross_entropy(self.net(batch[0]), batch[1])

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.calls.append(("on_train_batch_end", batch_idx, self.global_step, sorted(outputs)))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class WarmUp(Net):
    """Lightning's documented warm-up: scale the learning rate in ``optimizer_step``."""

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        step = self.trainer.global_step
        self.calls.append(("optimizer_step", epoch, batch_idx, type(optimizer).__name__, step))
        assert isinstance(optimizer, LightningOptimizer)
        if step < 4:
            for group in optimizer.param_groups:
                group["lr"] = self.lr * (step + 1) / 4
        optimizer.step(closure=optimizer_closure)
        self.calls.append("optimizer.step returned")


def test_optimizer_step_override_warm_up_matches_lightning() -> None:
    a, b, trainer, rt = fit_both(WarmUp, three_batches)
    assert b.calls == a.calls
    assert b.calls[:8] == [
        ("optimizer_step", 0, 0, "LightningSGD", 0), ("training_step", 0), "on_before_zero_grad",
        "on_before_backward", "on_after_backward", ("on_before_optimizer_step", 0),
        "optimizer.step returned", ("on_train_batch_end", 0, 1, ["loss"]),
    ]  # fmt: skip
    assert rt.state.global_step == trainer.global_step == 6
    assert_same_weights(a, b)


def test_accumulation_calls_optimizer_step_only_on_stepping_batches() -> None:
    """5 batches, accumulate 2: Lightning steps after batches 1, 3 and the last one (4)."""
    a, b, trainer, rt = fit_both(WarmUp, lambda: (make_loader(80, batch_size=16),), accumulate_grad_batches=2)
    assert b.calls == a.calls
    steps = [c[1:3] for c in b.calls if c[0] == "optimizer_step"]
    assert steps == [(0, 1), (0, 3), (0, 4), (1, 1), (1, 3), (1, 4)]
    assert b.calls.count("on_before_zero_grad") == 6  # first batch of each window: 0, 2, 4
    assert rt.state.global_step == trainer.global_step == 6
    assert_same_weights(a, b)


class Clipping(Net):
    """Clips on even global steps only, through ``self.clip_gradients``."""

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        algorithm = None if gradient_clip_algorithm is None else str(gradient_clip_algorithm.lower())
        self.calls.append(("configure_gradient_clipping", gradient_clip_val, algorithm, self.global_step))
        if self.global_step % 2 == 0:
            self.clip_gradients(
                optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm
            )


@pytest.mark.parametrize(("clip", "algorithm"), [(0.05, "value"), (0.2, None)])
def test_configure_gradient_clipping_override_matches_lightning(clip: float, algorithm: str | None) -> None:
    options: dict[str, Any] = {"gradient_clip_val": clip}
    if algorithm is not None:
        options["gradient_clip_algorithm"] = algorithm
    a, b, _, _ = fit_both(lambda: Clipping(lr=0.5), three_batches, **options)
    assert b.calls == a.calls
    assert ("configure_gradient_clipping", clip, algorithm, 0) in b.calls
    assert_same_weights(a, b)
    torch.manual_seed(0)
    unclipped = Clipping(lr=0.5)  # the same start, trained without gradient_clip_val
    torch.manual_seed(1)
    busloop_runtime(unclipped, 2).fit(*three_batches())
    assert ("configure_gradient_clipping", None, None, 0) in unclipped.calls
    difference = max((x - y).abs().max().item() for x, y in zip(b.parameters(), unclipped.parameters(), strict=True))
    assert difference > 1e-3  # the clipping mattered


class ZeroGradAndBackward(Net):
    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
        self.calls.append(("optimizer_zero_grad", epoch, batch_idx))
        optimizer.zero_grad(set_to_none=False)

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        self.calls.append("backward")
        (2.0 * loss).backward(*args, **kwargs)


def test_optimizer_zero_grad_and_backward_overrides_match_lightning() -> None:
    a, b, trainer, rt = fit_both(ZeroGradAndBackward, three_batches)
    assert b.calls == a.calls
    assert b.calls[1:6] == [
        "on_before_zero_grad", ("optimizer_zero_grad", 0, 0), "on_before_backward", "backward", "on_after_backward",
    ]  # fmt: skip
    assert rt.state.global_step == trainer.global_step == 6
    assert_same_weights(a, b)


class Transfers(Net):
    """Records Lightning's batch-transfer hooks and doubles the inputs after the transfer."""

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        self.calls.append(("on_before_batch_transfer", dataloader_idx))
        return batch

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        self.calls.append(("transfer_batch_to_device", str(device), dataloader_idx))
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        self.calls.append(("on_after_batch_transfer", dataloader_idx))
        return batch[0] * 2, batch[1]

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.calls.append(("on_train_batch_start", batch_idx))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.calls.append(("validation_step", batch_idx, round(float(batch[0].abs().sum()), 3)))


def test_batch_transfer_hooks_run_in_lightnings_order() -> None:
    def loaders() -> tuple[Any, ...]:
        return make_loader(32, batch_size=16), make_loader(16, batch_size=16, seed=1)

    a, b, _, rt = fit_both(Transfers, loaders, num_sanity_val_steps=1)
    assert b.calls == a.calls
    assert b.calls[:4] == [
        ("on_before_batch_transfer", 0), ("transfer_batch_to_device", "cpu", 0), ("on_after_batch_transfer", 0),
        ("validation_step", 0, b.calls[3][2]),
    ]  # fmt: skip
    assert ("on_train_batch_start", 0) in b.calls
    assert_same_weights(a, b)  # the doubled inputs trained both
    assert rt._batch_override is None  # transfer hooks alone keep the lean optimization path


def test_the_lean_path_is_kept_when_no_optimization_hook_is_overridden() -> None:
    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    plain = Runtime(
        Plain(), [], {"trainer": {"accelerator": "cpu", "epochs": 1}}, loss=F.cross_entropy,
        optimizer={"name": "SGD", "params": {"lr": 0.1}}, tracker=NullTracker(),
    )  # fmt: skip
    plain.fit(make_loader(32))
    hooks_only = busloop_runtime(Net(), 1)  # overrides on_before_backward & co., no optimization hook
    hooks_only.fit(make_loader(32))
    warm_up = busloop_runtime(WarmUp(), 1)
    warm_up.fit(make_loader(32))
    assert plain._batch_override is None and plain._transfer is None
    assert hooks_only._batch_override is None and hooks_only._transfer is None
    assert type(warm_up._batch_override).__name__ == "AutomaticOptimization"


# ---------------------------------------------------------------------- schedulers
class Scheduled(Net):
    """A step-interval StepLR and a ReduceLROnPlateau, both in Lightning's dict form."""

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_flat", 1.0)  # never improves: the plateau scheduler cuts the lr every epoch

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.calls.append(("lr", self.current_epoch, batch_idx, self.trainer.optimizers[0].param_groups[0]["lr"]))

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.4)
        steps = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.9)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=0)
        return [optimizer], [
            {"scheduler": steps, "interval": "step", "frequency": 1, "name": "steps"},
            {"scheduler": plateau, "monitor": "val_flat", "interval": "epoch"},
        ]


def test_step_and_plateau_schedulers_in_dict_form_match_lightning() -> None:
    def loaders() -> tuple[Any, ...]:
        return make_loader(48, batch_size=16), make_loader(16, batch_size=16, seed=1)

    a, b, trainer, rt = fit_both(Scheduled, loaders, epochs=3)
    assert b.calls == a.calls
    lrs = [c[3] for c in b.calls if c[0] == "lr"]
    assert lrs[:6] == pytest.approx([0.4, 0.4, 0.36, 0.36, 0.324, 0.324])  # StepLR every 2 steps
    assert lrs[6] == pytest.approx(0.4 * 0.9**3 * 0.5)  # then the plateau halves it (epoch 1 did not improve)
    assert [(c.name, c.interval, c.opt_idx) for c in rt.lr_scheduler_configs] == [
        ("steps", "step", 0), (None, "epoch", 0),
    ]  # fmt: skip
    assert rt.state.global_step == trainer.global_step == 9
    assert_same_weights(a, b)


# ---------------------------------------------------------------------- configure_callbacks
def test_configure_callbacks_replaces_same_type_callbacks_and_puts_checkpoints_last() -> None:
    """Trainer callbacks [checkpoint, A, B]; the module returns [A', C]: Lightning runs
    B, A', C, then the checkpoint callback."""
    order: list[str] = []

    def lightning_classes() -> dict[str, type]:
        class Recorder(pl.Callback):
            def __init__(self, label: str) -> None:
                self.label = label

            def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
                order.append(self.label)

        class Ckpt(Recorder, pl.callbacks.Checkpoint):
            pass

        return {"A": type("A", (Recorder,), {}), "B": type("B", (Recorder,), {}),
                "C": type("C", (Recorder,), {}), "Ckpt": Ckpt}  # fmt: skip

    def busloop_classes() -> dict[str, type]:
        class Recorder(Callback):
            def __init__(self, label: str) -> None:
                self.label = label

            def on_fit_start(self, runtime: Any) -> None:
                order.append(self.label)

        class Ckpt(Recorder):
            monitor_role = "checkpoint"

        return {"A": type("A", (Recorder,), {}), "B": type("B", (Recorder,), {}),
                "C": type("C", (Recorder,), {}), "Ckpt": Ckpt}  # fmt: skip

    class WithCallbacks(Net):
        def __init__(self, classes: dict[str, type]) -> None:
            super().__init__()
            self.classes = classes

        def on_fit_start(self) -> None:
            order.append("module")

        def configure_callbacks(self) -> list[Any]:
            return [self.classes["A"]("module A"), self.classes["C"]("module C")]

    def trainer_callbacks(classes: dict[str, type]) -> list[Any]:
        return [classes["Ckpt"]("trainer checkpoint"), classes["A"]("trainer A"), classes["B"]("trainer B")]

    lightning = lightning_classes()
    lightning_trainer(1, trainer_callbacks(lightning), enable_checkpointing=True).fit(
        WithCallbacks(lightning), make_loader(32)
    )
    lightning_order = list(order)
    order.clear()
    busloop = busloop_classes()
    rt = busloop_runtime(WithCallbacks(busloop), 1, trainer_callbacks(busloop))
    rt.fit(make_loader(32))

    assert order == lightning_order == ["trainer B", "module A", "module C", "trainer checkpoint", "module"]
    assert [c.label for c in rt.callbacks] == ["trainer B", "module A", "module C", "trainer checkpoint"]
