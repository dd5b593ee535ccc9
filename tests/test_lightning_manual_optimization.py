"""Manual optimization and several optimizers under busloop, against Lightning's Trainer: a
GAN with two optimizers and two schedulers, Lightning's ``ManualOptimBoringModel``, every
``configure_optimizers`` form, checkpoints with several optimizers, and the errors for setups
Lightning refuses.
"""

from __future__ import annotations

import copy
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
from runtime.errors import ConfigError
from runtime.optim import OptimizationError

pl = pytest.importorskip("lightning.pytorch")
demos = pytest.importorskip("lightning.pytorch.demos.boring_classes")


# ---------------------------------------------------------------------- manual optimization
class GAN(RecordsOptimizationHooks, pl.LightningModule):
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
    a, b, trainer, rt = fit_both(GAN, three_batches, epochs=2)
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
    assert_same_weights(a, b)


def test_manual_optimization_under_bf16_mixed_matches_lightning_bitwise() -> None:
    """The GAN steps its weights inside the autocast region: a cached cast would go stale."""
    a, b, trainer, rt = fit_both(GAN, three_batches, epochs=2, precision="bf16-mixed")
    assert b.calls == a.calls
    assert rt.state.global_step == trainer.global_step == 12
    assert_same_weights(a, b)


def test_lightnings_manual_optim_boring_model_matches_and_its_scheduler_is_not_stepped() -> None:
    torch.manual_seed(0)
    module = demos.ManualOptimBoringModel()
    a, b = copy.deepcopy(module), copy.deepcopy(module)
    trainer = lightning_trainer(2, limit_train_batches=8)
    torch.manual_seed(1)
    trainer.fit(a, a.train_dataloader(), a.val_dataloader())
    rt = busloop_runtime(b, 2, limit_train_batches=8)
    torch.manual_seed(1)
    rt.fit(b.train_dataloader(), b.val_dataloader())

    assert rt.state.global_step == trainer.global_step == 16
    assert_same_weights(a, b)
    # manual optimization: its StepLR (epoch interval) is the module's to step, so lr stays put
    assert rt.optimizer.param_groups[0]["lr"] == trainer.optimizers[0].param_groups[0]["lr"] == 0.1  # type: ignore[union-attr]


def test_several_optimizers_are_saved_and_restored_in_order(tmp_path: Any) -> None:
    torch.manual_seed(0)
    module = GAN()
    straight, first_half = copy.deepcopy(module), copy.deepcopy(module)
    torch.manual_seed(1)
    busloop_runtime(straight, 2).fit(make_loader(48, batch_size=16))

    torch.manual_seed(1)
    rt = busloop_runtime(first_half, 1)
    rt.fit(make_loader(48, batch_size=16))
    path = rt.save_checkpoint(tmp_path / "gan.ckpt")
    saved = torch.load(path, weights_only=True)
    assert len(saved["optimizer_states"]) == 2
    assert saved["optimizer_states"][1]["param_groups"][0]["momentum"] == 0.5  # opt_d second

    resumed = busloop_runtime(copy.deepcopy(first_half), 2)
    state = resumed.fit(make_loader(48, batch_size=16), ckpt_path=path)
    assert state.global_step == 12
    assert_same_weights(straight, resumed.model)
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

    a, b, trainer, rt = fit_both(lambda: Forms(form), loaders)

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
    assert_same_weights(a, b)


# ---------------------------------------------------------------------- bad input
def test_bad_optimization_setups_fail_with_errors_naming_the_problem() -> None:
    class TwoOptimizersAutomatic(Forms):
        def __init__(self) -> None:
            super().__init__("list_of_two")
            self.automatic_optimization = True

    with pytest.raises(RuntimeError, match="only supported with manual optimization"):
        lightning_trainer(1).fit(TwoOptimizersAutomatic(), make_loader(32))
    with pytest.raises(OptimizationError, match="2 optimizers: training with several optimizers needs manual"):
        busloop_runtime(TwoOptimizersAutomatic(), 1).fit(make_loader(32))

    class ManualBackwardInAutomatic(Forms):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = self._loss(batch)
            self.manual_backward(loss)
            return loss

    with pytest.raises(Exception, match="to use manual_backward, please disable automatic optimization"):
        busloop_runtime(ManualBackwardInAutomatic("single"), 1).fit(make_loader(32))

    with pytest.raises(ConfigError, match="gradient clipping is not supported for manual optimization"):
        busloop_runtime(GAN(), 1, gradient_clip_val=0.5).fit(make_loader(32))
    with pytest.raises(ConfigError, match="accumulation is not supported for manual optimization"):
        busloop_runtime(GAN(), 1, accumulate_grad_batches=2).fit(make_loader(32))

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
        busloop_runtime(DuckTypedManual(), 1).fit(make_loader(32))
