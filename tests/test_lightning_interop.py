"""DataModules and checkpoints shared with the real Lightning 2.6 Trainer.

Every comparison runs the same module and data under ``lightning.pytorch.Trainer`` and
under busloop: the datamodule's calls, the final weights (max abs diff <= 1e-6 on CPU),
and checkpoints passed from one to the other in both directions.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import SaveAndStop, make_data
from runtime import Callback, Runtime
from runtime.checkpoint import CheckpointError, load_checkpoint
from runtime.config import ConfigError
from runtime.tracking import NullTracker

pl = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel  # noqa: E402


def _stage(stage: Any) -> str:
    """The stage string (Lightning passes its ``TrainerFn`` str-enum, equal to the string)."""
    return str(getattr(stage, "value", stage))


class HParamModule(pl.LightningModule):
    """A LightningModule with saved hyperparameters, momentum SGD and an epoch StepLR.

    It reads nothing from ``self.trainer`` (busloop's trainer facade is another part of
    issue 11), so the same code runs identically under both.
    """

    def __init__(self, hidden: int = 16, lr: float = 0.1, tags: tuple[str, ...] = ("a", "b")) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, hidden), nn.Tanh(), nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.validation_step(batch, batch_idx)

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self(batch[0])

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)]


class RecordingDataModule(pl.LightningDataModule):
    """Records every call the runner makes on it, in ``calls`` (shared with a recorder)."""

    def __init__(self, batch_size: int = 16, shuffle: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.calls: list[str] = []
        self.restored: dict[str, Any] | None = None

    def prepare_data(self) -> None:
        self.calls.append("prepare_data")

    def setup(self, stage: str) -> None:
        self.calls.append(f"setup:{_stage(stage)}")
        self.train_set, self.val_set = make_data(96), make_data(48, seed=1)

    def teardown(self, stage: str) -> None:
        self.calls.append(f"teardown:{_stage(stage)}")

    def _loader(self, data: TensorDataset, shuffle: bool = False) -> DataLoader[Any]:
        return DataLoader(data, batch_size=self.hparams.batch_size, shuffle=shuffle)

    def train_dataloader(self) -> DataLoader[Any]:
        self.calls.append("train_dataloader")
        return self._loader(self.train_set, self.hparams.shuffle)

    def val_dataloader(self) -> DataLoader[Any]:
        self.calls.append("val_dataloader")
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader[Any]:
        self.calls.append("test_dataloader")
        return self._loader(self.val_set)

    def predict_dataloader(self) -> DataLoader[Any]:
        self.calls.append("predict_dataloader")
        return self._loader(self.val_set)

    def state_dict(self) -> dict[str, Any]:
        self.calls.append("state_dict")
        return {"seen_setups": sum(c.startswith("setup") for c in self.calls)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.calls.append("load_state_dict")
        self.restored = dict(state_dict)


class LightningHookRecorder(pl.Callback):
    """Writes the Lightning hooks that frame the datamodule's calls into its ``calls``."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.calls.append(f"cb.setup:{_stage(stage)}")

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.calls.append(f"cb.teardown:{_stage(stage)}")

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: Any) -> None:
        self.calls.append("cb.load_checkpoint")


class BusloopHookRecorder(Callback):
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def on_setup(self, runtime: Any, stage: str) -> None:
        self.calls.append(f"cb.setup:{_stage(stage)}")

    def on_teardown(self, runtime: Any, stage: str) -> None:
        self.calls.append(f"cb.teardown:{_stage(stage)}")

    def on_load_checkpoint(self, runtime: Any, checkpoint: Any) -> None:
        self.calls.append("cb.load_checkpoint")


def _trainer(max_epochs: int = 2, callbacks: list[Any] | None = None, **kw: Any) -> Any:
    kw.setdefault("enable_checkpointing", False)
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        callbacks=callbacks or [],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )


def _runtime(model: nn.Module, epochs: int = 2, callbacks: list[Any] | None = None, **trainer: Any) -> Runtime:
    config = {"trainer": {"accelerator": "cpu", "epochs": epochs, "num_sanity_val_steps": 0, **trainer}}
    return Runtime(model, callbacks or [], config, tracker=NullTracker())


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6, msg=name)


def _calls_without(calls: list[str], prefix: str) -> list[str]:
    return [c for c in calls if not c.startswith(prefix)]


# ------------------------------------------------------------------ DataModules


@pytest.mark.parametrize("sanity_steps", [0, 1])
def test_datamodule_calls_and_weights_equal_lightning(sanity_steps: int) -> None:
    torch.manual_seed(0)
    module = HParamModule()
    by_lightning, by_busloop = copy.deepcopy(module), copy.deepcopy(module)

    dm_l = RecordingDataModule()
    trainer = _trainer(callbacks=[LightningHookRecorder(dm_l.calls)], num_sanity_val_steps=sanity_steps)
    torch.manual_seed(5)
    trainer.fit(by_lightning, datamodule=dm_l)
    trainer.validate(by_lightning, datamodule=dm_l, verbose=False)
    trainer.test(by_lightning, datamodule=dm_l, verbose=False)
    lightning_predictions = trainer.predict(by_lightning, datamodule=dm_l)

    dm_b = RecordingDataModule()
    rt = _runtime(by_busloop, callbacks=[BusloopHookRecorder(dm_b.calls)], num_sanity_val_steps=sanity_steps)
    torch.manual_seed(5)
    state = rt.fit(datamodule=dm_b)
    rt.validate(datamodule=dm_b)
    rt.test(dm_b)  # a datamodule in place of the loader works too
    busloop_predictions = rt.predict(datamodule=dm_b)

    # the datamodule's own calls, in Lightning's order (loaders: val first when a sanity check runs)
    assert _calls_without(dm_b.calls, "cb.") == _calls_without(dm_l.calls, "cb.")
    # framed as in Lightning: dm.setup before the callbacks' setup, dm.teardown before theirs
    assert dm_b.calls[:3] == dm_l.calls[:3] == ["prepare_data", "setup:fit", "cb.setup:fit"]
    assert dm_b.calls[-2:] == dm_l.calls[-2:] == ["teardown:predict", "cb.teardown:predict"]
    assert state.global_step == trainer.global_step == 12
    _assert_same_weights(by_lightning, by_busloop)
    for a, b in zip(lightning_predictions, busloop_predictions, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_lightning_boring_datamodule_with_boring_model() -> None:
    torch.manual_seed(3)
    by_lightning, by_busloop = BoringModel(), BoringModel()
    by_busloop.load_state_dict(by_lightning.state_dict())

    torch.manual_seed(7)
    trainer = _trainer(num_sanity_val_steps=2, limit_train_batches=8, limit_val_batches=4)
    trainer.fit(by_lightning, datamodule=BoringDataModule())

    torch.manual_seed(7)
    rt = _runtime(by_busloop, num_sanity_val_steps=2, limit_train_batches=8, limit_val_batches=4)
    state = rt.fit(BoringDataModule())

    assert state.global_step == trainer.global_step == 16
    _assert_same_weights(by_lightning, by_busloop)


class OnlyValData:
    """Duck-typed datamodule with a validation loader only."""

    def val_dataloader(self) -> DataLoader[Any]:
        return DataLoader(make_data(32), batch_size=16)


def test_datamodule_input_errors_are_config_errors() -> None:
    rt = _runtime(HParamModule())
    with pytest.raises(ConfigError, match=r"fit: datamodule OnlyValData defines no train_dataloader\(\)"):
        rt.fit(OnlyValData())
    with pytest.raises(ConfigError, match="fit: got both loaders and datamodule OnlyValData"):
        rt.fit(DataLoader(make_data(32)), datamodule=OnlyValData())
    with pytest.raises(ConfigError, match=r"test: datamodule _NoTest defines no test_dataloader\(\)"):
        rt.test(datamodule=_NoTest())
    # a duck-typed datamodule works where it has the loader
    metrics = rt.validate(OnlyValData())
    assert rt.state.num_val_batches == 2 and "val/loss" in metrics


class _NoTest(pl.LightningDataModule):
    """A LightningDataModule whose test_dataloader is Lightning's raising default."""

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(make_data(32))


# ------------------------------------------------------------------ busloop -> Lightning


class SaveAtEpochEnd(Callback):
    """Writes a checkpoint in train_epoch_end of epoch ``epoch`` (where ModelCheckpoint saves)."""

    def __init__(self, path: Path, epoch: int) -> None:
        self.path, self.epoch = path, epoch

    def on_train_epoch_end(self, runtime: Any) -> None:
        if runtime.state.epoch == self.epoch:
            runtime.save_checkpoint(self.path)


def _busloop_checkpoint(path: Path, where: str, module: nn.Module) -> RecordingDataModule:
    """Train ``module`` under busloop for 2 epochs and leave a checkpoint at ``path``."""
    dm = RecordingDataModule(shuffle=False)
    if where == "after_fit":
        rt = _runtime(module)
        rt.fit(datamodule=dm)
        rt.save_checkpoint(path)
    else:  # saved in train_epoch_end of the second epoch, then training goes on
        _runtime(module, epochs=3, callbacks=[SaveAtEpochEnd(path, epoch=1)]).fit(datamodule=dm)
    return dm


def test_busloop_checkpoint_loads_with_load_from_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = HParamModule(hidden=12, lr=0.05, tags=("x", "y"))
    dm = _busloop_checkpoint(tmp_path / "b.ckpt", "after_fit", module)

    checkpoint = torch.load(tmp_path / "b.ckpt", weights_only=True)  # plain torch, weights_only
    assert checkpoint["hyper_parameters"] == {"hidden": 12, "lr": 0.05, "tags": ("x", "y")}
    assert type(checkpoint["hyper_parameters"]) is dict
    assert checkpoint["hparams_name"] == "kwargs"
    assert checkpoint["datamodule_hyper_parameters"] == {"batch_size": 16, "shuffle": False}
    assert checkpoint["RecordingDataModule"] == {"seen_setups": 1}
    assert dm.calls.count("state_dict") == 1

    loaded = HParamModule.load_from_checkpoint(tmp_path / "b.ckpt")
    assert dict(loaded.hparams) == dict(module.hparams)
    _assert_same_weights(module, loaded)
    loaded_dm = RecordingDataModule.load_from_checkpoint(tmp_path / "b.ckpt")
    assert loaded_dm.hparams.shuffle is False and loaded_dm.restored == {"seen_setups": 1}


@pytest.mark.parametrize("where", ["after_fit", "at_epoch_end"])
def test_busloop_checkpoint_resumes_in_lightning(tmp_path: Path, where: str) -> None:
    torch.manual_seed(0)
    module = HParamModule()
    uninterrupted_lightning, uninterrupted_busloop, first_half = (copy.deepcopy(module) for _ in range(3))
    _trainer(max_epochs=4).fit(uninterrupted_lightning, datamodule=RecordingDataModule(shuffle=False))
    _runtime(uninterrupted_busloop, epochs=4).fit(datamodule=RecordingDataModule(shuffle=False))
    _busloop_checkpoint(tmp_path / "b.ckpt", where, first_half)

    resumed = copy.deepcopy(module)
    resumed_dm = RecordingDataModule(shuffle=False)
    trainer = _trainer(max_epochs=4, callbacks=[LightningHookRecorder(resumed_dm.calls)])
    trainer.fit(resumed, datamodule=resumed_dm, ckpt_path=tmp_path / "b.ckpt")

    assert trainer.global_step == 24 and trainer.current_epoch == 4
    assert resumed_dm.restored == {"seen_setups": 1}
    assert resumed_dm.calls.index("load_state_dict") < resumed_dm.calls.index("cb.load_checkpoint")
    _assert_same_weights(uninterrupted_lightning, resumed)
    _assert_same_weights(uninterrupted_busloop, resumed)


def test_busloop_mid_epoch_checkpoint_resumes_in_lightning_at_the_same_position(tmp_path: Path) -> None:
    """Mid-epoch, Lightning continues as from its own on_train_batch_end checkpoint: the rest of
    the epoch's batch count, then the remaining epochs (its loader restarts; it warns)."""
    torch.manual_seed(0)
    rt = _runtime(HParamModule(), epochs=3, callbacks=[SaveAndStop(tmp_path / "mid.ckpt", epoch=1, at=2)])
    rt.fit(datamodule=RecordingDataModule(shuffle=False))
    assert load_checkpoint(tmp_path / "mid.ckpt")["global_step"] == 9  # 6 + 3 batches of epoch 1

    trainer = _trainer(max_epochs=3)
    with pytest.warns(UserWarning, match="ended before the epoch ended"):
        trainer.fit(HParamModule(), datamodule=RecordingDataModule(shuffle=False), ckpt_path=tmp_path / "mid.ckpt")
    assert (trainer.current_epoch, trainer.global_step) == (3, 9 + 3 + 6)


# ------------------------------------------------------------------ Lightning -> busloop


class Counter:
    """State shared by a Lightning and a busloop callback with the same state_key."""

    state_key = "Counter"

    def __init__(self) -> None:
        self.epochs = 0
        self.loaded: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.loaded = dict(state_dict)


class LightningCounter(Counter, pl.Callback):
    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.epochs += 1


class BusloopCounter(Counter, Callback):
    def on_train_epoch_end(self, runtime: Any) -> None:
        self.epochs += 1


def _lightning_checkpoint(tmp_path: Path, where: str, module: nn.Module) -> Path:
    """Train ``module`` under Lightning for 2 epochs and return a checkpoint of it."""
    dm = RecordingDataModule(shuffle=False)
    if where == "model_checkpoint":  # saved in on_train_epoch_end of the second epoch
        saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpts", save_top_k=-1)
        _trainer(max_epochs=2, callbacks=[LightningCounter(), saver], enable_checkpointing=True).fit(
            module, datamodule=dm
        )
        return tmp_path / "ckpts" / "epoch=1-step=12.ckpt"
    trainer = _trainer(max_epochs=2, callbacks=[LightningCounter()])
    trainer.fit(module, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "l.ckpt")
    return tmp_path / "l.ckpt"


@pytest.mark.parametrize("where", ["model_checkpoint", "save_checkpoint"])
def test_lightning_checkpoint_resumes_in_busloop(tmp_path: Path, where: str) -> None:
    torch.manual_seed(0)
    module = HParamModule()
    uninterrupted, first_half, resumed = (copy.deepcopy(module) for _ in range(3))
    _trainer(max_epochs=4).fit(uninterrupted, datamodule=RecordingDataModule(shuffle=False))
    path = _lightning_checkpoint(tmp_path, where, first_half)

    counter, dm = BusloopCounter(), RecordingDataModule(shuffle=False)
    rt = _runtime(resumed, epochs=4, callbacks=[counter])
    state = rt.fit(datamodule=dm, ckpt_path=path)

    assert counter.loaded == {"epochs": 2}  # restored by state_key
    assert dm.restored == {"seen_setups": 1}
    assert state.global_step == 24 and counter.epochs == 2  # two epochs left to train
    _assert_same_weights(uninterrupted, resumed)
    lr = rt.optimizer.param_groups[0]["lr"]  # type: ignore[union-attr]
    assert lr == pytest.approx(0.1 * 0.7**4)


def test_lightning_mid_epoch_checkpoint_is_refused_before_loading(tmp_path: Path) -> None:
    torch.manual_seed(0)
    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1)
    _trainer(max_epochs=1, callbacks=[saver], enable_checkpointing=True).fit(
        HParamModule(), datamodule=RecordingDataModule(shuffle=False)
    )
    path = tmp_path / "epoch=0-step=4.ckpt"
    module = HParamModule()
    before = copy.deepcopy(module.state_dict())
    with pytest.raises(CheckpointError, match=r"epoch=0-step=4.ckpt was saved by Lightning in the middle of epoch 0"):
        _runtime(module).fit(datamodule=RecordingDataModule(), ckpt_path=path)
    for name, value in module.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_lightning_weights_only_checkpoint_is_refused(tmp_path: Path) -> None:
    trainer = _trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(HParamModule(), datamodule=RecordingDataModule())
    trainer.save_checkpoint(tmp_path / "w.ckpt", weights_only=True)
    with pytest.raises(CheckpointError, match="w.ckpt: this Lightning checkpoint holds only the model"):
        _runtime(HParamModule()).fit(datamodule=RecordingDataModule(), ckpt_path=tmp_path / "w.ckpt")


def test_checkpoint_of_another_model_names_the_file(tmp_path: Path) -> None:
    rt = _runtime(HParamModule(hidden=4), epochs=1)
    rt.fit(datamodule=RecordingDataModule())
    rt.save_checkpoint(tmp_path / "small.ckpt")
    with pytest.raises(CheckpointError, match=r"small.ckpt does not fit this model \(a checkpoint of another model\?\): [0-9]+ of another shape: "):
        _runtime(HParamModule(hidden=8)).fit(datamodule=RecordingDataModule(), ckpt_path=tmp_path / "small.ckpt")


def test_optimizer_count_mismatch_names_the_file(tmp_path: Path) -> None:
    rt = _runtime(HParamModule(), epochs=1)
    rt.fit(datamodule=RecordingDataModule())
    checkpoint = load_checkpoint(rt.save_checkpoint(tmp_path / "one.ckpt"))
    checkpoint["optimizer_states"] *= 2
    torch.save(checkpoint, tmp_path / "two.ckpt")
    with pytest.raises(CheckpointError, match=r"two.ckpt holds 2 optimizer state\(s\), this run has 1"):
        _runtime(HParamModule()).fit(datamodule=RecordingDataModule(), ckpt_path=tmp_path / "two.ckpt")


class PathModule(HParamModule):
    def __init__(self, root: Path = Path("/data")) -> None:
        super().__init__()
        self.save_hyperparameters()


def test_hyperparameters_that_cannot_be_stored_are_named(tmp_path: Path) -> None:
    rt = _runtime(PathModule(), epochs=1, limit_train_batches=1)
    rt.fit(datamodule=RecordingDataModule())
    with pytest.raises(CheckpointError, match=r"PathModule's hyperparameters: hyper_parameters.root: .*PosixPath"):
        rt.save_checkpoint(tmp_path / "p.ckpt")


def test_a_busloop_checkpoint_with_lightning_keys_is_still_format_checked(tmp_path: Path) -> None:
    rt = _runtime(HParamModule(), epochs=1, limit_train_batches=1)
    rt.fit(datamodule=RecordingDataModule())
    checkpoint = load_checkpoint(rt.save_checkpoint(tmp_path / "b.ckpt"))
    assert checkpoint["pytorch-lightning_version"] == "2.6.0" and "loop" in checkpoint
    checkpoint["busloop_format"] = 99
    torch.save(checkpoint, tmp_path / "newer.ckpt")
    with pytest.raises(CheckpointError, match="newer.ckpt was written in checkpoint format 99"):
        load_checkpoint(tmp_path / "newer.ckpt")
