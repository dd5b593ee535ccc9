"""busloop against the real Lightning 2.6 Trainer on the same LightningModule.

Lightning is a test dependency only: busloop drives the LightningModule without it.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from conftest import make_loader
from runtime import Callback, Runtime
from runtime.bus import EVENTS
from runtime.tracking import NullTracker

pl = pytest.importorskip("lightning.pytorch")

#: busloop's own events, which Lightning does not have.
BUSLOOP_ONLY = {"epoch_metrics", "checkpoint_written", "artifact_produced", "interrupt_received"}
LIGHTNING_HOOKS = {
    event: (event if event in ("setup", "teardown") else f"on_{event}")
    for event in EVENTS
    if event not in BUSLOOP_ONLY
}


class TinyModule(pl.LightningModule):
    """A real LightningModule that logs with ``self.log`` and has a StepLR scheduler."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))
        self.hook_calls: list[str] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("val_loss", loss)
        return loss

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("test_loss", loss)
        return loss

    def on_validation_epoch_end(self) -> None:  # a module hook, called after callbacks
        self.hook_calls.append("on_validation_epoch_end")

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class LightningRecorder(pl.Callback):
    def __init__(self) -> None:
        self.calls: list[str] = []


def _add_lightning_hooks() -> None:
    for hook in LIGHTNING_HOOKS.values():
        if hook in ("on_exception",):
            continue

        def record(self: Any, *args: Any, _hook: str = hook, **kwargs: Any) -> None:
            self.calls.append(_hook)

        setattr(LightningRecorder, hook, record)


_add_lightning_hooks()


class BusloopRecorder(Callback):
    def __init__(self) -> None:
        self.calls: list[str] = []


def _add_busloop_hooks() -> None:
    for event, hook in LIGHTNING_HOOKS.items():
        if event == "exception":
            continue

        def record(self: Any, runtime: Any, _hook: str = hook, **payload: Any) -> None:
            self.calls.append(_hook)

        setattr(BusloopRecorder, f"on_{event}", record)


_add_busloop_hooks()


def _lightning_trainer(recorder: pl.Callback, **kw: Any) -> Any:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        callbacks=[recorder],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )


def _busloop_config(**trainer: Any) -> dict[str, Any]:
    return {"trainer": {"accelerator": "cpu", **trainer}}


def test_fit_and_test_event_order_equals_lightning() -> None:
    torch.manual_seed(0)
    module = TinyModule()
    lightning_rec = LightningRecorder()
    trainer = _lightning_trainer(
        lightning_rec, max_epochs=2, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=1
    )
    trainer.fit(copy.deepcopy(module), make_loader(64), make_loader(64))
    lightning_fit = list(lightning_rec.calls)
    lightning_rec.calls.clear()
    trainer.test(copy.deepcopy(module), make_loader(32), verbose=False)
    lightning_test = list(lightning_rec.calls)

    busloop_rec = BusloopRecorder()
    rt = Runtime(
        copy.deepcopy(module),
        [busloop_rec],
        _busloop_config(epochs=2, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=1),
        tracker=NullTracker(),
    )
    rt.fit(make_loader(64), make_loader(64))
    busloop_fit = list(busloop_rec.calls)
    busloop_rec.calls.clear()
    rt.test(make_loader(32))

    assert busloop_fit == lightning_fit
    assert busloop_rec.calls == lightning_test
    assert "on_sanity_check_start" in busloop_fit and busloop_fit.count("on_train_batch_end") == 4


def test_same_lightning_module_trained_three_epochs_gives_the_same_weights() -> None:
    torch.manual_seed(1)
    module = TinyModule()
    by_lightning, by_busloop = copy.deepcopy(module), copy.deepcopy(module)

    trainer = _lightning_trainer(LightningRecorder(), max_epochs=3, num_sanity_val_steps=0)
    trainer.fit(by_lightning, make_loader(96, batch_size=16), make_loader(48, batch_size=16, seed=1))

    rt = Runtime(by_busloop, [], _busloop_config(epochs=3, num_sanity_val_steps=0), tracker=NullTracker())
    state = rt.fit(make_loader(96, batch_size=16), make_loader(48, batch_size=16, seed=1))

    assert state.global_step == trainer.global_step == 18
    for (name, a), (_, b) in zip(by_lightning.state_dict().items(), by_busloop.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    # self.log was routed to the runtime: the epoch means match Lightning's callback_metrics
    assert state.metrics["val_loss"] == pytest.approx(float(trainer.callback_metrics["val_loss"]), abs=1e-6)
    assert by_busloop.hook_calls == by_lightning.hook_calls == ["on_validation_epoch_end"] * 3
    # the LightningModule's own log method is back once the run is over
    assert "log" not in vars(by_busloop)


def test_sanity_check_leaves_the_training_random_stream_alone() -> None:
    """Lightning runs the sanity check under isolate_rng: a shuffled train loader then draws
    the same order with and without the check, and busloop matches it."""
    torch.manual_seed(2)
    module = TinyModule()
    by_lightning, by_busloop = copy.deepcopy(module), copy.deepcopy(module)

    trainer = _lightning_trainer(LightningRecorder(), max_epochs=2, num_sanity_val_steps=1)
    torch.manual_seed(5)
    trainer.fit(by_lightning, make_loader(96, shuffle=True), make_loader(48, seed=1))

    rt = Runtime(by_busloop, [], _busloop_config(epochs=2, num_sanity_val_steps=1), tracker=NullTracker())
    torch.manual_seed(5)
    rt.fit(make_loader(96, shuffle=True), make_loader(48, seed=1))

    for (name, a), (_, b) in zip(by_lightning.state_dict().items(), by_busloop.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
