"""compat.Trainer against Lightning's own Trainer, on one real LightningModule.

Each comparison runs the same module (same initial weights, same unshuffled data) through
``lightning.pytorch.Trainer`` and ``compat.Trainer`` with the same arguments and compares what
user code sees: return values of fit / validate / test / predict, final weights, checkpoint
resume, default callbacks, loggers and argument errors.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn import functional as F  # noqa: N812
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

from lightning.pytorch import Callback  # noqa: E402

from compat import Trainer  # noqa: E402
from runtime.errors import ConfigError  # noqa: E402

QUIET: dict[str, Any] = {"enable_progress_bar": False, "enable_model_summary": False, "logger": False}


class Regressor(pl.LightningModule):  # type: ignore[misc,name-defined]
    """A linear regressor that logs Lightning-style (step and epoch values)."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.mse_loss(self(x), y))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("test_loss", loss)
        self.log("test_mae", (self(x) - y).abs().mean())

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self(batch[0])

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.7)}


def _loader(seed: int, n: int = 48) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(n, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8)


def _model() -> Regressor:
    torch.manual_seed(0)
    return Regressor()


def _weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _run(trainer_cls: Any, root: Path, **kwargs: Any) -> dict[str, Any]:
    model = _model()
    trainer = trainer_cls(max_epochs=3, default_root_dir=root, **{**QUIET, **kwargs})
    fitted = trainer.fit(model, _loader(1), _loader(2))
    return {
        "fit": fitted,
        "epoch": trainer.current_epoch,
        "step": trainer.global_step,
        "callback_metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "validate": trainer.validate(model, _loader(2)),
        "test": trainer.test(model, _loader(3)),
        "predict": torch.cat(trainer.predict(model, _loader(4))),
        "weights": _weights(model),
        "trainer": trainer,
        "model": model,
    }


def _same_metrics(ours: list[dict[str, float]], theirs: list[dict[str, float]]) -> None:
    assert len(ours) == len(theirs) == 1
    assert sorted(ours[0]) == sorted(theirs[0])
    for key, value in theirs[0].items():
        assert ours[0][key] == pytest.approx(value, abs=1e-6), key


def test_fit_validate_test_predict_match_lightning(tmp_path: Path) -> None:
    theirs = _run(pl.Trainer, tmp_path / "lightning")
    ours = _run(Trainer, tmp_path / "busloop")
    assert ours["fit"] is None and theirs["fit"] is None
    assert (ours["epoch"], ours["step"]) == (theirs["epoch"], theirs["step"]) == (3, 18)
    assert torch.allclose(ours["weights"], theirs["weights"], atol=1e-6, rtol=0)
    assert sorted(ours["callback_metrics"]) == sorted(theirs["callback_metrics"])
    _same_metrics(ours["validate"], theirs["validate"])
    _same_metrics(ours["test"], theirs["test"])
    assert torch.allclose(ours["predict"], theirs["predict"], atol=1e-6, rtol=0)
    trainer = ours["trainer"]
    assert trainer.state.fn == "predict" and trainer.state.finished
    assert ours["model"].trainer is trainer


def test_ckpt_path_best_and_last_match_lightning(tmp_path: Path) -> None:
    results = {}
    for name, cls in (("lightning", pl.Trainer), ("busloop", Trainer)):
        root = tmp_path / name

        def checkpoint(root: Path = root) -> Any:
            return pl.callbacks.ModelCheckpoint(dirpath=root / "ckpt", monitor="val_loss", save_last=True)

        model = _model()
        first = cls(max_epochs=2, default_root_dir=root, callbacks=[checkpoint()], **QUIET)
        first.fit(model, _loader(1), _loader(2))
        best = first.test(model, _loader(3), ckpt_path="best")
        assert Path(first.checkpoint_callback.best_model_path).is_file()
        resumed_model = _model()
        second = cls(max_epochs=4, default_root_dir=root, callbacks=[checkpoint()], **QUIET)
        second.fit(resumed_model, _loader(1), _loader(2), ckpt_path="last")
        results[name] = (best, second.current_epoch, second.global_step, _weights(resumed_model))
    _same_metrics(results["busloop"][0], results["lightning"][0])
    assert results["busloop"][1:3] == results["lightning"][1:3] == (4, 24)
    assert torch.allclose(results["busloop"][3], results["lightning"][3], atol=1e-6, rtol=0)


def test_overfit_batches_reads_the_first_batches_in_order_as_lightning(tmp_path: Path) -> None:
    weights = []
    for cls in (pl.Trainer, Trainer):
        model = _model()
        shuffled = DataLoader(_loader(1).dataset, batch_size=8, shuffle=True)
        trainer = cls(max_epochs=3, default_root_dir=tmp_path, overfit_batches=2, **QUIET)
        trainer.fit(model, shuffled, _loader(2))
        assert trainer.global_step == 6
        weights.append(_weights(model))
    assert torch.allclose(weights[0], weights[1], atol=1e-6, rtol=0)


@pytest.mark.parametrize(("min_epochs", "min_steps"), [(None, None), (4, None), (1, 10)])
def test_min_epochs_and_min_steps_hold_early_stopping_as_lightning(
    tmp_path: Path, min_epochs: int | None, min_steps: int | None
) -> None:
    seen = []
    for cls in (pl.Trainer, Trainer):
        stopping = pl.callbacks.EarlyStopping("val_loss", patience=0, min_delta=100.0)
        trainer = cls(
            max_epochs=8, min_epochs=min_epochs, min_steps=min_steps, limit_train_batches=3, limit_val_batches=1,
            default_root_dir=tmp_path, callbacks=[stopping], **QUIET,
        )  # fmt: skip
        trainer.fit(_model(), _loader(1), _loader(2))
        seen.append((trainer.current_epoch, trainer.global_step, trainer.should_stop, stopping.stopped_epoch))
    assert seen[1] == seen[0]
    assert seen[0][0] < 8


def test_resume_from_last_continues_an_uninterrupted_run(tmp_path: Path) -> None:
    straight = _model()
    Trainer(max_epochs=3, default_root_dir=tmp_path / "a", **QUIET).fit(straight, _loader(1), _loader(2))
    model = _model()
    callbacks = [pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)]
    Trainer(max_epochs=1, default_root_dir=tmp_path / "b", callbacks=callbacks, **QUIET).fit(
        model, _loader(1), _loader(2)
    )
    resumed = _model()
    callbacks = [pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)]
    trainer = Trainer(max_epochs=3, default_root_dir=tmp_path / "b", callbacks=callbacks, **QUIET)
    trainer.fit(resumed, _loader(1), _loader(2), ckpt_path="last")
    assert trainer.ckpt_path is not None and Path(trainer.ckpt_path).name == "last.ckpt"
    assert torch.allclose(_weights(resumed), _weights(straight), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("overfit_batches", -1),
        ("profiler", "simple"),
        ("devices", 2),
        ("strategy", "fsdp"),
        ("precision", "64-true"),
        ("accelerator", "tpu"),
        ("reload_dataloaders_every_n_epochs", 1),
        ("sync_batchnorm", True),
        ("deterministic", "warn"),
    ],
)
def test_unsupported_argument_raises_one_line_naming_it(argument: str, value: Any) -> None:
    with pytest.raises(ConfigError) as error:
        Trainer(**{argument: value})
    message = str(error.value)
    assert f"Trainer({argument}=" in message and "\n" not in message


def test_enable_checkpointing_false_with_a_checkpoint_callback_raises() -> None:
    with pytest.raises(ConfigError, match="enable_checkpointing=False"):
        Trainer(enable_checkpointing=False, callbacks=[pl.callbacks.ModelCheckpoint()])


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"enable_checkpointing": False},
        {"enable_progress_bar": False, "enable_model_summary": False},
        {"max_time": {"seconds": 30}},
        {"callbacks": [pl.callbacks.EarlyStopping("val_loss"), pl.callbacks.ModelCheckpoint(monitor="val_loss")]},
        {"callbacks": [pl.callbacks.ModelCheckpoint(), pl.callbacks.TQDMProgressBar(), pl.callbacks.ModelSummary()]},
        {"barebones": True},
    ],
)
def test_default_callbacks_are_lightnings(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    theirs = pl.Trainer(default_root_dir=tmp_path, **kwargs)
    ours = Trainer(default_root_dir=tmp_path, **kwargs)
    assert [type(c) for c in ours.callbacks] == [type(c) for c in theirs.callbacks]
    assert type(ours.checkpoint_callback) is type(theirs.checkpoint_callback)
    assert type(ours.progress_bar_callback) is type(theirs.progress_bar_callback)
    assert type(ours.early_stopping_callback) is type(theirs.early_stopping_callback)


def test_callbacks_and_module_see_this_very_trainer(tmp_path: Path) -> None:
    seen: list[Any] = []

    class Spy(Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            seen.append((trainer, pl_module.trainer, trainer.state.stage))

        def on_test_end(self, trainer: Any, pl_module: Any) -> None:
            seen.append((trainer, pl_module.trainer, trainer.state.stage))

    model = _model()
    trainer = Trainer(max_epochs=1, default_root_dir=tmp_path, callbacks=[Spy()], **QUIET)
    trainer.fit(model, _loader(1), _loader(2))
    trainer.test(model, _loader(3))
    assert [(t is trainer, m is trainer, stage) for t, m, stage in seen] == [(True, True, "train"), (True, True, "test")]


def test_default_logger_folder_and_lightning_csv_logger(tmp_path: Path) -> None:
    theirs = pl.Trainer(default_root_dir=tmp_path / "l", max_epochs=1, enable_progress_bar=False)
    ours = Trainer(default_root_dir=tmp_path / "b", max_epochs=1, enable_progress_bar=False)
    ours.fit(_model(), _loader(1), _loader(2))
    theirs.fit(_model(), _loader(1), _loader(2))
    assert Path(ours.log_dir).relative_to(tmp_path / "b") == Path(theirs.log_dir).relative_to(tmp_path / "l")
    ours_ckpt = Path(ours.checkpoint_callback.best_model_path)
    theirs_ckpt = Path(theirs.checkpoint_callback.best_model_path)
    assert ours_ckpt.relative_to(tmp_path / "b") == theirs_ckpt.relative_to(tmp_path / "l")

    csv = pl.loggers.CSVLogger(tmp_path / "csv")
    trainer = Trainer(default_root_dir=tmp_path / "c", max_epochs=2, logger=csv, log_every_n_steps=2, **{
        k: v for k, v in QUIET.items() if k != "logger"})  # fmt: skip
    trainer.fit(_model(), _loader(1), _loader(2))
    assert trainer.logger is csv and trainer.log_dir == csv.log_dir
    header = (Path(csv.log_dir) / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"epoch", "step", "val_loss", "train_loss_step", "train_loss_epoch"} <= set(header)
    assert (Path(csv.log_dir) / "checkpoints").is_dir()
    assert (Path(csv.log_dir) / "hparams.yaml").read_text().strip() == "lr: 0.05"


_LIGHTNING_TESTS = Path(os.environ.get("BUSLOOP_LIGHTNING_TESTS", "/work/scratch18/tests"))


@pytest.mark.slow
@pytest.mark.skipif(
    not (_LIGHTNING_TESTS / "tests_pytorch" / "callbacks").is_dir(),
    reason="Lightning's tests are not exported here (set BUSLOOP_LIGHTNING_TESTS; see benchmarks/lightning_suite.py)",
)
def test_lightning_suite_runner_counts_one_file(tmp_path: Path) -> None:
    out = tmp_path / "suite.json"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    subprocess.run(
        [sys.executable, "-m", "benchmarks.lightning_suite", "--tests", str(_LIGHTNING_TESTS),
         "test_lambda_function.py", "--json", str(out)],
        check=True, cwd=root, env=env, capture_output=True, timeout=600,
    )  # fmt: skip
    import json

    report = json.loads(out.read_text())
    assert report["trainer"] == "compat.Trainer"
    counts = report["files"]["tests_pytorch/callbacks/test_lambda_function.py"]["counts"]
    assert sum(counts.values()) >= 1


def test_a_hook_error_reaches_the_caller_as_itself(tmp_path: Path) -> None:
    class Failing(Callback):
        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            raise KeyError("from the hook")

    for cls in (pl.Trainer, Trainer):
        trainer = cls(max_epochs=1, default_root_dir=tmp_path, callbacks=[Failing()], **QUIET)
        with pytest.raises(KeyError, match="from the hook"):
            trainer.fit(_model(), _loader(1), _loader(2))
        assert trainer.state.status == "interrupted" and trainer.interrupted


def test_unbounded_epochs_stop_at_max_steps_as_lightning(tmp_path: Path) -> None:
    seen = []
    for cls in (pl.Trainer, Trainer):
        trainer = cls(max_epochs=-1, max_steps=9, default_root_dir=tmp_path, **QUIET)
        trainer.fit(_model(), _loader(1), _loader(2))
        seen.append((trainer.max_epochs, trainer.fit_loop.max_epochs, trainer.current_epoch, trainer.global_step))
    assert seen[1] == seen[0]
    assert seen[0][:2] == (-1, -1) and seen[0][3] == 9


class FrozenNorm(Regressor):
    """Puts a batch norm in eval mode at train start (a frozen statistics layer) and records
    the modes each training batch and evaluation sees, and its own model_eval/train hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(4)
        self.seen: list[Any] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.norm(x))

    def on_train_start(self) -> None:
        self.norm.eval()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.seen.append(("train", self.training, self.norm.training, self.layer.training))

    def on_validation_model_eval(self) -> None:
        self.seen.append("validation_model_eval")
        super().on_validation_model_eval()

    def on_test_model_train(self) -> None:
        self.seen.append(("test_model_train", self.training, self.norm.training))
        self.train()

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.seen.append(("test", self.training, self.norm.training))


def test_eval_mode_hooks_and_restored_modes_match_lightning(tmp_path: Path) -> None:
    """The module's on_<stage>_model_eval / _train hooks run where Lightning runs them, and
    without an override each submodule gets back its mode from before the evaluation (a batch
    norm frozen in eval at train start stays frozen through fit's validations)."""

    def run(cls: Any, root: Path) -> list[Any]:
        torch.manual_seed(0)
        model = FrozenNorm()
        trainer = cls(max_epochs=2, default_root_dir=root, num_sanity_val_steps=1, **QUIET)
        trainer.fit(model, _loader(1, n=16), _loader(2, n=16))
        trainer.test(model, _loader(3, n=8))
        return [*model.seen, ("after", model.training, model.norm.training)]

    theirs = run(pl.Trainer, tmp_path / "lightning")
    assert ("train", True, False, True) in theirs  # Lightning keeps the frozen norm in eval
    assert run(Trainer, tmp_path / "busloop") == theirs
