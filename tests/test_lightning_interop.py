"""DataModules shared with the real Lightning 2.6 Trainer.

Every comparison runs the same module and data under ``lightning.pytorch.Trainer`` and
under busloop: the datamodule's calls, the final weights (max abs diff <= 1e-6 on CPU),
and checkpoints passed from one to the other in both directions.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import make_data
from runtime import Callback, Runtime
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
