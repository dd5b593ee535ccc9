"""Lightning's optimization hooks, manual optimization and several optimizers under busloop.

Each parity test trains the same LightningModule with the same seed and data under
``lightning.pytorch.Trainer`` and ``runtime.Runtime`` and compares what the module saw (the
hooks it recorded, with their arguments), the final weights and ``global_step``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import make_loader
from runtime import Callback, Runtime
from runtime.errors import ConfigError
from runtime.optim import OptimizationError
from runtime.tracking import NullTracker

pl = pytest.importorskip("lightning.pytorch")
demos = pytest.importorskip("lightning.pytorch.demos.boring_classes")
LightningOptimizer = pytest.importorskip("lightning.pytorch.core.optimizer").LightningOptimizer


def _lightning_trainer(epochs: int, callbacks: list[Any] = (), **kw: Any) -> Any:  # type: ignore[assignment]
    options = {
        "accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
        "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0, **kw,
    }  # fmt: skip
    return pl.Trainer(max_epochs=epochs, callbacks=list(callbacks), **options)


def _runtime(model: nn.Module, epochs: int, callbacks: list[Any] = (), **trainer: Any) -> Runtime:  # type: ignore[assignment]
    config = {"trainer": {"accelerator": "cpu", "epochs": epochs, "num_sanity_val_steps": 0, **trainer}}
    return Runtime(model, list(callbacks), config, tracker=NullTracker())


def _fit_both(
    factory: Callable[[], Any], loaders: Callable[[], tuple[Any, ...]], epochs: int = 2, **both: Any
) -> tuple[Any, Any, Any, Runtime]:
    """Train copies of one module under Lightning and busloop with the same trainer options."""
    torch.manual_seed(0)
    module = factory()
    by_lightning, by_busloop = copy.deepcopy(module), copy.deepcopy(module)
    trainer = _lightning_trainer(epochs, **both)
    torch.manual_seed(1)
    trainer.fit(by_lightning, *loaders())
    rt = _runtime(by_busloop, epochs, **both)
    torch.manual_seed(1)
    rt.fit(*loaders())
    return by_lightning, by_busloop, trainer, rt


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6, msg=name)


def _three_batches() -> tuple[Any, ...]:
    return (make_loader(48, batch_size=16),)


# ---------------------------------------------------------------------- automatic, with overrides
class Net(pl.LightningModule):
    """A classifier that records the training hooks it sees, in order."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))
        self.lr = lr
        self.calls: list[Any] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.calls.append(("training_step", batch_idx))
        return F.cross_entropy(self.net(batch[0]), batch[1])

    def on_before_zero_grad(self, optimizer: Any) -> None:
        self.calls.append("on_before_zero_grad")

    def on_before_backward(self, loss: torch.Tensor) -> None:
        self.calls.append("on_before_backward")

    def on_after_backward(self) -> None:
        self.calls.append("on_after_backward")

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.calls.append(("on_before_optimizer_step", self.trainer.optimizers.index(optimizer)))

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
    a, b, trainer, rt = _fit_both(WarmUp, _three_batches)
    assert b.calls == a.calls
    assert b.calls[:8] == [
        ("optimizer_step", 0, 0, "LightningSGD", 0), ("training_step", 0), "on_before_zero_grad",
        "on_before_backward", "on_after_backward", ("on_before_optimizer_step", 0),
        "optimizer.step returned", ("on_train_batch_end", 0, 1, ["loss"]),
    ]  # fmt: skip
    assert rt.state.global_step == trainer.global_step == 6
    _assert_same_weights(a, b)


def test_accumulation_calls_optimizer_step_only_on_stepping_batches() -> None:
    """5 batches, accumulate 2: Lightning steps after batches 1, 3 and the last one (4)."""
    a, b, trainer, rt = _fit_both(WarmUp, lambda: (make_loader(80, batch_size=16),), accumulate_grad_batches=2)
    assert b.calls == a.calls
    steps = [c[1:3] for c in b.calls if c[0] == "optimizer_step"]
    assert steps == [(0, 1), (0, 3), (0, 4), (1, 1), (1, 3), (1, 4)]
    assert b.calls.count("on_before_zero_grad") == 6  # first batch of each window: 0, 2, 4
    assert rt.state.global_step == trainer.global_step == 6
    _assert_same_weights(a, b)


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
    a, b, _, _ = _fit_both(lambda: Clipping(lr=0.5), _three_batches, **options)
    assert b.calls == a.calls
    assert ("configure_gradient_clipping", clip, algorithm, 0) in b.calls
    _assert_same_weights(a, b)
    torch.manual_seed(0)
    unclipped = Clipping(lr=0.5)  # the same start, trained without gradient_clip_val
    torch.manual_seed(1)
    _runtime(unclipped, 2).fit(*_three_batches())
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
    a, b, trainer, rt = _fit_both(ZeroGradAndBackward, _three_batches)
    assert b.calls == a.calls
    assert b.calls[1:6] == [
        "on_before_zero_grad", ("optimizer_zero_grad", 0, 0), "on_before_backward", "backward", "on_after_backward",
    ]  # fmt: skip
    assert rt.state.global_step == trainer.global_step == 6
    _assert_same_weights(a, b)


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

    a, b, _, rt = _fit_both(Transfers, loaders, num_sanity_val_steps=1)
    assert b.calls == a.calls
    assert b.calls[:4] == [
        ("on_before_batch_transfer", 0), ("transfer_batch_to_device", "cpu", 0), ("on_after_batch_transfer", 0),
        ("validation_step", 0, b.calls[3][2]),
    ]  # fmt: skip
    assert ("on_train_batch_start", 0) in b.calls
    _assert_same_weights(a, b)  # the doubled inputs trained both
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
    hooks_only = _runtime(Net(), 1)  # overrides on_before_backward & co., no optimization hook
    hooks_only.fit(make_loader(32))
    warm_up = _runtime(WarmUp(), 1)
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

    a, b, trainer, rt = _fit_both(Scheduled, loaders, epochs=3)
    assert b.calls == a.calls
    lrs = [c[3] for c in b.calls if c[0] == "lr"]
    assert lrs[:6] == pytest.approx([0.4, 0.4, 0.36, 0.36, 0.324, 0.324])  # StepLR every 2 steps
    assert lrs[6] == pytest.approx(0.4 * 0.9**3 * 0.5)  # then the plateau halves it (epoch 1 did not improve)
    assert [(c.name, c.interval, c.opt_idx) for c in rt.lr_scheduler_configs] == [
        ("steps", "step", 0), (None, "epoch", 0),
    ]  # fmt: skip
    assert rt.state.global_step == trainer.global_step == 9
    _assert_same_weights(a, b)


# ---------------------------------------------------------------------- manual optimization
class GAN(pl.LightningModule):
    """Manual optimization with two optimizers and two schedulers, stepped by the module."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.generator = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 8))
        self.discriminator = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
        self.calls: list[Any] = []

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        real = batch[0]
        ones, zeros = torch.ones(len(real), 1), torch.zeros(len(real), 1)
        opt_g, opt_d = self.optimizers()
        self.calls.append(("training_step", batch_idx, self.global_step, type(opt_g).__name__))

        self.toggle_optimizer(opt_g)
        fake = self.generator(torch.randn(len(real), 4))
        g_loss = F.binary_cross_entropy_with_logits(self.discriminator(fake), ones)
        self.calls.append(("toggled", [p.requires_grad for p in self.discriminator.parameters()]))
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        self.untoggle_optimizer(opt_g)

        self.toggle_optimizer(opt_d)
        real_loss = F.binary_cross_entropy_with_logits(self.discriminator(real), ones)
        fake_loss = F.binary_cross_entropy_with_logits(self.discriminator(fake.detach()), zeros)
        d_loss = (real_loss + fake_loss) / 2
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        self.untoggle_optimizer(opt_d)
        return {"loss": d_loss, "g_loss": g_loss}

    def on_before_zero_grad(self, optimizer: Any) -> None:
        self.calls.append("on_before_zero_grad")

    def on_before_backward(self, loss: torch.Tensor) -> None:
        self.calls.append("on_before_backward")

    def on_after_backward(self) -> None:
        self.calls.append("on_after_backward")

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.calls.append(("on_before_optimizer_step", self.trainer.optimizers.index(optimizer)))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        grads = outputs["loss"].requires_grad
        self.calls.append(("on_train_batch_end", batch_idx, self.global_step, sorted(outputs), grads))

    def on_train_epoch_end(self) -> None:
        sch_g, sch_d = self.lr_schedulers()
        sch_g.step()
        sch_d.step()
        self.calls.append(("lrs", sch_g.get_last_lr()[0], sch_d.get_last_lr()[0]))

    def configure_optimizers(self) -> Any:
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=0.01)
        opt_d = torch.optim.SGD(self.discriminator.parameters(), lr=0.05, momentum=0.5)
        sch_g = torch.optim.lr_scheduler.StepLR(opt_g, step_size=1, gamma=0.5)
        sch_d = torch.optim.lr_scheduler.ExponentialLR(opt_d, gamma=0.9)
        return [opt_g, opt_d], [sch_g, sch_d]


def test_gan_with_manual_optimization_and_two_optimizers_matches_lightning() -> None:
    a, b, trainer, rt = _fit_both(GAN, _three_batches, epochs=2)
    assert b.calls == a.calls
    assert b.calls[:8] == [
        ("training_step", 0, 0, "LightningAdam"), ("toggled", [False] * 4), "on_before_backward",
        "on_after_backward", ("on_before_optimizer_step", 0), "on_before_backward", "on_after_backward",
        ("on_before_optimizer_step", 1),
    ]  # fmt: skip
    assert ("on_train_batch_end", 0, 2, ["g_loss", "loss"], False) in b.calls  # two steps per batch
    assert "on_before_zero_grad" not in b.calls  # opt.zero_grad() is the optimizer's own
    assert rt.state.global_step == trainer.global_step == 12
    assert [o.param_groups[0]["lr"] for o in rt.optimizers] == pytest.approx([0.0025, 0.05 * 0.81])
    assert rt.optimizer is rt.optimizers[0]
    _assert_same_weights(a, b)


def test_manual_optimization_under_bf16_mixed_matches_lightning_bitwise() -> None:
    """The GAN steps its weights inside the autocast region: a cached cast would go stale."""
    a, b, trainer, rt = _fit_both(GAN, _three_batches, epochs=2, precision="bf16-mixed")
    assert b.calls == a.calls
    assert rt.state.global_step == trainer.global_step == 12
    _assert_same_weights(a, b)


def test_lightnings_manual_optim_boring_model_matches_and_its_scheduler_is_not_stepped() -> None:
    torch.manual_seed(0)
    module = demos.ManualOptimBoringModel()
    a, b = copy.deepcopy(module), copy.deepcopy(module)
    trainer = _lightning_trainer(2, limit_train_batches=8)
    torch.manual_seed(1)
    trainer.fit(a, a.train_dataloader(), a.val_dataloader())
    rt = _runtime(b, 2, limit_train_batches=8)
    torch.manual_seed(1)
    rt.fit(b.train_dataloader(), b.val_dataloader())

    assert rt.state.global_step == trainer.global_step == 16
    _assert_same_weights(a, b)
    # manual optimization: its StepLR (epoch interval) is the module's to step, so lr stays put
    assert rt.optimizer.param_groups[0]["lr"] == trainer.optimizers[0].param_groups[0]["lr"] == 0.1  # type: ignore[union-attr]


def test_several_optimizers_are_saved_and_restored_in_order(tmp_path: Any) -> None:
    torch.manual_seed(0)
    module = GAN()
    straight, first_half = copy.deepcopy(module), copy.deepcopy(module)
    torch.manual_seed(1)
    _runtime(straight, 2).fit(make_loader(48, batch_size=16))

    torch.manual_seed(1)
    rt = _runtime(first_half, 1)
    rt.fit(make_loader(48, batch_size=16))
    path = rt.save_checkpoint(tmp_path / "gan.ckpt")
    saved = torch.load(path, weights_only=True)
    assert len(saved["optimizer_states"]) == 2
    assert saved["optimizer_states"][1]["param_groups"][0]["momentum"] == 0.5  # opt_d second

    resumed = _runtime(copy.deepcopy(first_half), 2)
    state = resumed.fit(make_loader(48, batch_size=16), ckpt_path=path)
    assert state.global_step == 12
    _assert_same_weights(straight, resumed.model)
    assert [o.param_groups[0]["lr"] for o in resumed.optimizers] == pytest.approx([0.0025, 0.05 * 0.81])


# ---------------------------------------------------------------------- configure_optimizers forms
class Forms(pl.LightningModule):
    """Two heads; ``form`` picks the shape configure_optimizers returns."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form
        self.automatic_optimization = form in ("single", "list", "tuple_of_lists", "dict", "dict_monitor")
        self.a, self.b = nn.Linear(8, 2), nn.Linear(8, 2)

    def _loss(self, batch: Any) -> torch.Tensor:
        return F.cross_entropy(self.a(batch[0]) + self.b(batch[0]), batch[1])

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.automatic_optimization:
            return self._loss(batch)
        for optimizer in self.optimizers():
            optimizer.zero_grad()
            self.manual_backward(self._loss(batch))
            optimizer.step()
        return self._loss(batch).detach()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch))

    def configure_optimizers(self) -> Any:
        o1 = torch.optim.SGD(self.a.parameters(), lr=0.1)
        o2 = torch.optim.SGD(self.b.parameters(), lr=0.2)
        both = torch.optim.SGD(self.parameters(), lr=0.1)
        step = torch.optim.lr_scheduler.StepLR
        return {
            "single": lambda: both,
            "list": lambda: [both],
            "tuple_of_lists": lambda: ([both], [step(both, 1, gamma=0.5)]),
            "dict": lambda: {"optimizer": both, "lr_scheduler": {"scheduler": step(both, 1), "interval": "step", "frequency": 2, "name": "s"}},
            "dict_monitor": lambda: {"optimizer": both, "lr_scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(both), "monitor": "val_loss"},
            "list_of_two": lambda: [o1, o2],
            "tuple_of_two": lambda: (o1, o2),
            "tuple_of_lists_two": lambda: ([o1, o2], [step(o2, 1), step(o1, 2)]),
            "list_of_dicts": lambda: [{"optimizer": o1, "lr_scheduler": {"scheduler": step(o1, 1), "interval": "step", "name": "first"}}, {"optimizer": o2, "lr_scheduler": step(o2, 3)}],
            "tuple_of_dicts": lambda: ({"optimizer": o1}, {"optimizer": o2, "lr_scheduler": {"scheduler": step(o2, 1), "frequency": 3}}),
        }[self.form]()  # fmt: skip


FORMS = [
    "single", "list", "tuple_of_lists", "dict", "dict_monitor",
    "list_of_two", "tuple_of_two", "tuple_of_lists_two", "list_of_dicts", "tuple_of_dicts",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS)
def test_every_configure_optimizers_form_gives_lightnings_optimizers_and_schedulers(form: str) -> None:
    def loaders() -> tuple[Any, ...]:
        return make_loader(32, batch_size=16), make_loader(16, batch_size=16, seed=1)

    a, b, trainer, rt = _fit_both(lambda: Forms(form), loaders)

    def described(configs: list[Any], optimizers: list[Any]) -> list[tuple[Any, ...]]:
        return [
            (type(c.scheduler).__name__, c.interval, c.frequency, c.name, optimizers.index(c.scheduler.optimizer))
            for c in configs
        ]

    assert len(rt.optimizers) == len(trainer.optimizers)
    assert described(rt.lr_scheduler_configs, rt.optimizers) == described(trainer.lr_scheduler_configs, trainer.optimizers)
    assert [c.opt_idx for c in rt.lr_scheduler_configs] == [
        trainer.optimizers.index(c.scheduler.optimizer) for c in trainer.lr_scheduler_configs
    ]
    if form == "dict_monitor":
        assert [(c.monitor, c.reduce_on_plateau) for c in rt.lr_scheduler_configs] == [("val_loss", True)]
    assert [o.param_groups[0]["lr"] for o in rt.optimizers] == [o.param_groups[0]["lr"] for o in trainer.optimizers]
    assert rt.state.global_step == trainer.global_step
    _assert_same_weights(a, b)


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
    _lightning_trainer(1, trainer_callbacks(lightning), enable_checkpointing=True).fit(
        WithCallbacks(lightning), make_loader(32)
    )
    lightning_order = list(order)
    order.clear()
    busloop = busloop_classes()
    rt = _runtime(WithCallbacks(busloop), 1, trainer_callbacks(busloop))
    rt.fit(make_loader(32))

    assert order == lightning_order == ["trainer B", "module A", "module C", "trainer checkpoint", "module"]
    assert [c.label for c in rt.callbacks] == ["trainer B", "module A", "module C", "trainer checkpoint"]


# ---------------------------------------------------------------------- bad input
def test_bad_optimization_setups_fail_with_errors_naming_the_problem() -> None:
    class TwoOptimizersAutomatic(Net):
        def configure_optimizers(self) -> Any:
            return [torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.Adam(self.parameters())]

    with pytest.raises(RuntimeError, match="only supported with manual optimization"):
        _lightning_trainer(1).fit(TwoOptimizersAutomatic(), make_loader(32))
    with pytest.raises(OptimizationError, match="2 optimizers: training with several optimizers needs manual"):
        _runtime(TwoOptimizersAutomatic(), 1).fit(make_loader(32))

    class ManualBackwardInAutomatic(Net):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            self.manual_backward(loss)
            return loss

    with pytest.raises(Exception, match="to use manual_backward, please disable automatic optimization"):
        _runtime(ManualBackwardInAutomatic(), 1).fit(make_loader(32))

    with pytest.raises(ConfigError, match="gradient clipping is not supported for manual optimization"):
        _runtime(GAN(), 1, gradient_clip_val=0.5).fit(make_loader(32))
    with pytest.raises(ConfigError, match="accumulation is not supported for manual optimization"):
        _runtime(GAN(), 1, accumulate_grad_batches=2).fit(make_loader(32))

    class DuckTypedManual(nn.Module):
        automatic_optimization = False

        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(8, 2)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return F.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(ConfigError, match="manual optimization needs a real LightningModule"):
        _runtime(DuckTypedManual(), 1).fit(make_loader(32))
