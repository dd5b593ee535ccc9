"""A real LightningModule under busloop and under Lightning's Trainer: the trainer facade,
Lightning's rule for overridden hooks, its hook order at train_epoch_end, and its demo modules.

Each test trains the same module with the same seed and data in both and compares what the
module saw (through ``self.trainer``/``self.current_epoch``...) and the final weights.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from compat import ModelCheckpoint, TrainerFacade
from conftest import make_loader
from runtime import Callback, Runtime
from runtime.tracking import NullTracker

pl = pytest.importorskip("lightning.pytorch")
demos = pytest.importorskip("lightning.pytorch.demos.boring_classes")
lstm = pytest.importorskip("lightning.pytorch.demos.lstm")


def _lightning(callbacks: list[Any] = (), **kw: Any) -> Any:  # type: ignore[assignment]
    options = {
        "accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
        "enable_progress_bar": False, "enable_model_summary": False, **kw,
    }  # fmt: skip
    return pl.Trainer(callbacks=list(callbacks), **options)


def _busloop(model: nn.Module, callbacks: list[Any] = (), **trainer: Any) -> Runtime:  # type: ignore[assignment]
    return Runtime(model, list(callbacks), {"trainer": {"accelerator": "cpu", **trainer}}, tracker=NullTracker())


def _assert_same_weights(a: nn.Module, b: nn.Module, atol: float = 0.0) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=atol, msg=name)


# ---------------------------------------------------------------------- the facade
class Observer(pl.LightningModule):
    """Records what Lightning code reads on the trainer, at the hooks it reads it in."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(8, 2)
        self.seen: list[tuple[Any, ...]] = []

    def _see(self, where: str) -> None:
        t = self.trainer
        self.seen.append(
            (
                where, self.current_epoch, self.global_step, t.current_epoch, t.global_step,
                t.state.fn, t.state.stage, t.sanity_checking, t.training, t.validating,
                t.max_epochs, t.num_training_batches, list(t.num_val_batches),
                t.is_global_zero, t.world_size, t.should_stop, str(self.device),
            )
        )  # fmt: skip

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self._see("training_step")
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._see("validation_step")

    def on_train_epoch_start(self) -> None:
        self._see("on_train_epoch_start")

    def on_train_epoch_end(self) -> None:
        self._see("on_train_epoch_end")

    def on_validation_epoch_end(self) -> None:
        self._see("on_validation_epoch_end")

    def on_train_end(self) -> None:
        self._see("on_train_end")

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_the_module_reads_the_same_trainer_attributes_as_under_lightning() -> None:
    torch.manual_seed(0)
    module = Observer()
    by_lightning, by_busloop = copy.deepcopy(module), copy.deepcopy(module)
    train, val = make_loader(48, batch_size=16), make_loader(32, batch_size=16, seed=1)

    _lightning(max_epochs=2, num_sanity_val_steps=1).fit(by_lightning, train, val)
    _busloop(by_busloop, epochs=2, num_sanity_val_steps=1).fit(train, val)

    assert by_busloop.seen == by_lightning.seen
    assert ("on_train_end", 2, 6) == by_busloop.seen[-1][:3]
    assert isinstance(by_busloop.trainer, TrainerFacade)  # attached, and left attached as Lightning does


def test_callback_metrics_and_should_stop_through_the_facade() -> None:
    class StopAfterFirstEpoch(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(8, 2)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = nn.functional.cross_entropy(self.net(batch[0]), batch[1])
            self.log("loss", loss)
            return loss

        def on_train_epoch_end(self) -> None:
            assert isinstance(self.trainer.callback_metrics["loss"], torch.Tensor)
            self.trainer.should_stop = True

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    state = _busloop(StopAfterFirstEpoch(), epochs=5).fit(make_loader(32))
    assert state.epoch == 1 and state.should_stop


# ---------------------------------------------------------------------- hook order
class EpochEndLogger(pl.LightningModule):
    """Logs the monitored metric in its own on_train_epoch_end (after the callbacks')."""

    def __init__(self, order: list[str]) -> None:
        super().__init__()
        self.net = nn.Linear(8, 2)
        self.order = order

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

    def on_train_epoch_end(self) -> None:
        self.order.append("module")
        self.log("epoch_score", float(10 - self.current_epoch))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_monitoring_callbacks_run_after_the_modules_train_epoch_end_as_in_lightning(tmp_path: Any) -> None:
    lightning_order: list[str] = []

    class LightningPlain(pl.Callback):
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            lightning_order.append("plain")

    class LightningCheckpointLike(pl.callbacks.Checkpoint):
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            lightning_order.append("checkpoint")

    # config order puts the checkpoint first; both runtimes run it after the module
    _lightning([LightningCheckpointLike(), LightningPlain()], max_epochs=2, enable_checkpointing=True).fit(
        EpochEndLogger(lightning_order), make_loader(32)
    )

    busloop_order: list[str] = []

    class BusloopPlain(Callback):
        def on_train_epoch_end(self, runtime: Any) -> None:
            busloop_order.append("plain")

    class BusloopCheckpointLike(Callback):
        monitor_role = "checkpoint"

        def on_train_epoch_end(self, runtime: Any) -> None:
            busloop_order.append("checkpoint")

    checkpoint = ModelCheckpoint(monitor="epoch_score", mode="max", save_top_k=1, dirpath=str(tmp_path))
    rt = _busloop(EpochEndLogger(busloop_order), [checkpoint, BusloopCheckpointLike(), BusloopPlain()], epochs=2)
    rt.fit(make_loader(32))

    assert busloop_order == lightning_order == ["plain", "module", "checkpoint"] * 2
    # the native ModelCheckpoint saw the metric the module logged in on_train_epoch_end
    assert checkpoint.best_model_score == pytest.approx(10.0)
    train_epoch_end = rt.bus.describe()["train_epoch_end"]
    assert train_epoch_end[-2:] == ["ModelCheckpoint.on_train_epoch_end", "BusloopCheckpointLike.on_train_epoch_end"]


# ---------------------------------------------------------------------- overridden hooks
class Tokens(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Random token blocks in WikiText2's (input, next-token target) shape."""

    def __init__(self, vocab: int = 50, blocks: int = 24, block: int = 8) -> None:
        data = torch.randint(0, vocab, (blocks * block + 1,), generator=torch.Generator().manual_seed(3))
        self.data, self.block = data, block

    def __len__(self) -> int:
        return (len(self.data) - 1) // self.block

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = index * self.block
        return self.data[start : start + self.block], self.data[start + 1 : start + self.block + 1]


class LSTMWithoutDownload(lstm.LightningLSTM):  # type: ignore[misc,name-defined]
    def prepare_data(self) -> None:  # the demo downloads WikiText-2 here
        pass


def test_lightning_lstm_demo_is_bitwise_equal_over_two_epochs() -> None:
    """The demo lives in lightning.pytorch.demos and overrides on_train_epoch_end (it resets
    the recurrent state): a rule that skipped every class in a lightning package diverged."""
    torch.manual_seed(0)
    module = LSTMWithoutDownload(vocab_size=50)
    by_lightning, by_busloop = copy.deepcopy(module), copy.deepcopy(module)
    data = Tokens()

    def loader() -> DataLoader[Any]:
        return DataLoader(data, batch_sampler=lstm.SequenceSampler(data, batch_size=4))

    torch.manual_seed(7)
    _lightning(max_epochs=2).fit(by_lightning, loader())
    torch.manual_seed(7)
    _busloop(by_busloop, epochs=2).fit(loader())

    _assert_same_weights(by_lightning, by_busloop)
    assert by_busloop.hidden is None  # the module's on_train_epoch_end ran


def test_lightning_transformer_demo_matches_lightning() -> None:
    """Lightning's demo Transformer (dropout on: the random streams must line up too)."""
    transformer = pytest.importorskip("lightning.pytorch.demos.transformer")

    class TransformerWithoutDownload(transformer.LightningTransformer):  # type: ignore[misc,name-defined]
        def prepare_data(self) -> None:  # the demo downloads WikiText-2 here
            pass

    torch.manual_seed(0)
    module = TransformerWithoutDownload(vocab_size=50)
    by_lightning, by_busloop = copy.deepcopy(module), copy.deepcopy(module)
    torch.manual_seed(5)
    _lightning(max_epochs=2, limit_train_batches=6).fit(by_lightning, DataLoader(Tokens(), batch_size=4))
    torch.manual_seed(5)
    _busloop(by_busloop, epochs=2, limit_train_batches=6).fit(DataLoader(Tokens(), batch_size=4))
    _assert_same_weights(by_lightning, by_busloop, atol=1e-6)
    with pytest.raises(AssertionError):  # and both trained
        _assert_same_weights(module, by_busloop, atol=1e-6)


def test_boring_model_and_demo_model_match_lightning() -> None:
    """BoringModel (list-of-optimizers + StepLR) and DemoModel (``training_step(batch, batch_nb)``)."""
    torch.manual_seed(0)
    boring = demos.BoringModel()
    a, b = copy.deepcopy(boring), copy.deepcopy(boring)
    torch.manual_seed(1)
    _lightning(max_epochs=2, num_sanity_val_steps=0, limit_train_batches=8).fit(a, a.train_dataloader(), a.val_dataloader())
    torch.manual_seed(1)
    _busloop(b, epochs=2, num_sanity_val_steps=0, limit_train_batches=8).fit(b.train_dataloader(), b.val_dataloader())
    _assert_same_weights(a, b, atol=1e-6)

    torch.manual_seed(0)
    demo = demos.DemoModel(out_dim=4)
    a, b = copy.deepcopy(demo), copy.deepcopy(demo)
    features = demos.RandomDataset(32, 64)  # DemoModel trains on bare (N, 32) batches
    _lightning(max_epochs=1).fit(a, DataLoader(features, batch_size=8))
    _busloop(b, epochs=1).fit(DataLoader(features, batch_size=8))
    _assert_same_weights(a, b, atol=1e-6)


def test_steps_and_batch_hooks_get_the_arguments_their_signatures_take() -> None:
    """Lightning's rule: ``training_step(batch)`` gets no batch_idx; with one loader the
    eval batch hooks get no dataloader_idx."""

    class Minimal(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(8, 2)
            self.calls: list[str] = []

        def training_step(self, batch: Any) -> torch.Tensor:
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def validation_step(self, batch: Any) -> None:
            self.calls.append("validation_step")

        def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            self.calls.append(f"on_validation_batch_end {batch_idx}")

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    lightning_module, busloop_module = Minimal(), Minimal()
    _lightning(max_epochs=1, num_sanity_val_steps=0).fit(lightning_module, make_loader(32), make_loader(32))
    _busloop(busloop_module, epochs=1, num_sanity_val_steps=0).fit(make_loader(32), make_loader(32))
    assert busloop_module.calls == lightning_module.calls == [
        "validation_step", "on_validation_batch_end 0", "validation_step", "on_validation_batch_end 1",
    ]  # fmt: skip


def test_the_datamodule_shares_the_facade_as_under_lightning() -> None:
    """Lightning's data connector gives the datamodule the trainer; loaders may read it."""

    class EpochAwareData(demos.BoringDataModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[tuple[str, int, bool]] = []

        def train_dataloader(self) -> DataLoader[Any]:
            self.seen.append(("train", self.trainer.current_epoch, self.trainer.datamodule is self))
            return super().train_dataloader()

    lightning_data, busloop_data = EpochAwareData(), EpochAwareData()
    torch.manual_seed(0)
    model = demos.BoringModel()
    _lightning(max_epochs=1, limit_train_batches=2, limit_val_batches=1).fit(copy.deepcopy(model), datamodule=lightning_data)
    _busloop(copy.deepcopy(model), epochs=1, limit_train_batches=2, limit_val_batches=1).fit(datamodule=busloop_data)
    assert busloop_data.seen == lightning_data.seen == [("train", 0, True)]
