"""compat.Trainer's front against Lightning's own Trainer: what a Lightning user meets around the
loop (issue #18): a ``training_step`` that returns None, a LearningRateMonitor without a logger,
Ctrl+C, the ``verbose`` result tables, ``PL_TRAINER_*`` defaults, the logger setters and the
trainer attributes user code reads. Each comparison runs the same module through
``lightning.pytorch.Trainer`` and ``compat.Trainer`` with the same arguments.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

pl = pytest.importorskip("lightning.pytorch")

from lightning.fabric.utilities.exceptions import MisconfigurationException  # noqa: E402
from lightning.pytorch.callbacks import LearningRateMonitor  # noqa: E402
from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402
from test_compat_trainer import QUIET, Regressor, _loader, _model  # noqa: E402

from compat import Trainer  # noqa: E402
from compat.trainer_interrupt import MESSAGE  # noqa: E402
from runtime.errors import ConfigError  # noqa: E402

BOTH = pytest.mark.parametrize("trainer_cls", [pl.Trainer, Trainer], ids=["lightning", "busloop"])


def _fixed_loader(n: int = 20) -> DataLoader:
    return DataLoader(torch.randn(n, 32, generator=torch.Generator().manual_seed(1)), batch_size=2)


# ---------------------------------------------------------------------- training_step returns None
class SkipsSome(BoringModel):
    """Returns None for batches 1 and 2 and records what Lightning's hooks see."""

    def __init__(self, skip: tuple[int, ...] = (1, 2)) -> None:
        super().__init__()
        self.skip, self.events = skip, []

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        out = super().training_step(batch, batch_idx)
        self.events.append(("step", batch_idx, self.global_step))
        return None if batch_idx in self.skip else out

    def on_before_zero_grad(self, optimizer: Any) -> None:
        self.events.append(("zero_grad", self.global_step))

    def on_before_backward(self, loss: torch.Tensor) -> None:
        self.events.append(("backward", self.global_step))

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.events.append(("before_optimizer_step", self.global_step))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        lr = self.lr_schedulers().get_last_lr()[0]  # type: ignore[union-attr]
        self.events.append(("batch_end", batch_idx, self.global_step, lr, sorted(outputs or {})))

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)
        return [optimizer], [{"scheduler": scheduler, "interval": "step"}]


def _fit_skipping(trainer_cls: Any, accumulate: int, **kwargs: Any) -> tuple[SkipsSome, Any]:
    torch.manual_seed(0)
    model = SkipsSome(**kwargs)
    trainer = trainer_cls(
        max_epochs=1, limit_val_batches=0, accumulate_grad_batches=accumulate, **QUIET
    )
    trainer.fit(model, _fixed_loader(10))
    return model, trainer


@pytest.mark.filterwarnings("ignore:`training_step` returned `None`")
@pytest.mark.parametrize("accumulate", [1, 2, 3])
def test_training_step_returning_none_still_steps_and_counts_as_lightning(accumulate: int) -> None:
    """Lightning still runs zero_grad, on_before_optimizer_step and the optimizer step for a
    batch whose training_step returned None, counts the step and steps step-interval schedulers."""
    theirs, lightning = _fit_skipping(pl.Trainer, accumulate)
    ours, busloop = _fit_skipping(Trainer, accumulate)
    assert ours.events == theirs.events
    assert busloop.global_step == lightning.global_step == -(-5 // accumulate)
    for mine, reference in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.allclose(mine, reference, atol=1e-6, rtol=0)


def test_training_step_returning_none_warns_once_as_lightning() -> None:
    from lightning.pytorch.loops.optimization.automatic import Closure

    Closure.warning_cache.clear()  # Lightning warns once per process (busloop: once per run)
    for trainer_cls in (pl.Trainer, Trainer):
        with pytest.warns(UserWarning, match=r"training_step` returned `None") as record:
            _fit_skipping(trainer_cls, 1)
        assert sum("returned `None`" in str(w.message) for w in record) == 1, trainer_cls


@pytest.mark.filterwarnings("ignore:`training_step` returned `None`")
def test_training_step_returning_none_under_a_grad_scaler_steps_nothing() -> None:
    """16-mixed (a GradScaler): as Lightning's MixedPrecision, neither unscale nor step for a
    skipped batch, yet the hooks run and the step counts (Lightning on CPU switches to bf16, so
    this one is busloop's alone)."""
    torch.manual_seed(0)
    model = SkipsSome(skip=tuple(range(5)))
    before = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(max_epochs=2, limit_val_batches=0, precision="16-mixed", **QUIET)
    trainer.fit(model, _fixed_loader(10))
    assert trainer.global_step == 10
    assert [e[0] for e in model.events].count("before_optimizer_step") == 10
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_training_step_dict_without_loss_is_lightnings_error() -> None:
    class NoLoss(BoringModel):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return {"x": 1}

    for trainer_cls in (pl.Trainer, Trainer):
        with pytest.raises(MisconfigurationException, match="'loss' key needs to be present"):
            trainer_cls(max_epochs=1, limit_val_batches=0, **QUIET).fit(NoLoss(), _fixed_loader(4))


def test_a_native_module_returning_none_counts_no_step() -> None:
    """busloop's own rule for a plain module with a training_step (not a LightningModule):
    the batch is skipped whole, no optimizer step is counted (README, compat.Trainer)."""

    class Native(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(32, 2)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return None if batch_idx % 2 else self.layer(batch).sum()

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = Trainer(max_epochs=1, limit_val_batches=0, **QUIET)
    trainer.fit(Native(), _fixed_loader(10))
    assert trainer.global_step == 3  # batches 0, 2, 4 of 5


# ---------------------------------------------------------------------- LearningRateMonitor, no logger
@BOTH
def test_lr_monitor_without_a_logger_raises_lightnings_error_at_train_start(
    trainer_cls: Any,
) -> None:
    calls: list[str] = []

    class Model(BoringModel):
        def on_fit_start(self) -> None:
            calls.append("fit_start")

        def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
            calls.append("train_batch_start")

    trainer = trainer_cls(max_epochs=1, callbacks=[LearningRateMonitor()], **QUIET)
    with pytest.raises(MisconfigurationException, match="`Trainer` that has no logger"):
        trainer.fit(Model())
    assert calls == ["fit_start"]
    assert trainer.state.status == "interrupted" and trainer.interrupted


# ---------------------------------------------------------------------- Ctrl+C
class InterruptAt(pl.Callback):  # type: ignore[misc,name-defined]
    """Raises KeyboardInterrupt at a training batch (from the callback or from the module) and
    records on_exception."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None]] = []

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        if getattr(pl_module, "interrupt_in", None) == "callback" and batch_idx == 1:
            raise KeyboardInterrupt

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.seen.append(
            (type(exception).__name__, str(trainer.state.status), str(trainer.state.stage))
        )


class Interrupted(BoringModel):
    def __init__(self, where: str) -> None:
        super().__init__()
        self.interrupt_in = where

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if self.interrupt_in == "module" and batch_idx == 2:
            raise KeyboardInterrupt
        return super().training_step(batch, batch_idx)


class RecordingData(BoringDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.exceptions: list[str] = []

    def on_exception(self, exception: BaseException) -> None:
        self.exceptions.append(type(exception).__name__)


def _interrupted_fit(trainer_cls: Any, where: str) -> dict[str, Any]:
    callback, data = InterruptAt(), RecordingData()
    trainer = trainer_cls(max_epochs=1, limit_val_batches=0, callbacks=[callback], **QUIET)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as exit_info:
        trainer.fit(Interrupted(where), datamodule=data)
    stage = trainer.state.stage
    return {
        "exit": exit_info.value.code,
        "on_exception": callback.seen,
        "datamodule": data.exceptions,
        "status": str(trainer.state.status),
        "stage": None if stage is None else str(stage),
        "interrupted": trainer.interrupted,
        "step": trainer.global_step,
        "handler_restored": signal.getsignal(signal.SIGINT) == handler,
    }


def _strings(result: dict[str, Any]) -> dict[str, Any]:
    """Lightning's enums as their values ("TrainerStatus.INTERRUPTED" -> "interrupted")."""
    plain = {"TrainerStatus.INTERRUPTED": "interrupted", "RunningStage.TRAINING": "train"}
    result["on_exception"] = [
        tuple(plain.get(x, x) for x in seen) for seen in result["on_exception"]
    ]
    result["status"], result["stage"] = (
        plain.get(result[k], result[k]) for k in ("status", "stage")
    )
    return result


@pytest.mark.parametrize("where", ["callback", "module"])
def test_keyboard_interrupt_shuts_down_and_exits_as_lightning(
    where: str, capfd: pytest.CaptureFixture[str]
) -> None:
    theirs = _strings(_interrupted_fit(pl.Trainer, where))  # its message goes to Lightning's logger
    capfd.readouterr()
    ours = _strings(_interrupted_fit(Trainer, where))
    busloop_err = capfd.readouterr().err
    assert ours == theirs
    assert ours["exit"] == 1 and ours["status"] == "interrupted" and ours["handler_restored"]
    assert ours["on_exception"] == [("KeyboardInterrupt", "interrupted", "train")]
    assert ours["datamodule"] == ["KeyboardInterrupt"]
    assert MESSAGE in busloop_err
    assert "Traceback" not in busloop_err


_SIGINT_SCRIPT = """
import os, sys, time
import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from compat import Trainer

out = sys.argv[1]

class WaitForSignal(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 3:
            open(os.path.join(out, "ready"), "w").close()
            while True:  # until the parent's SIGINT arrives
                time.sleep(0.05)

    def on_exception(self, trainer, pl_module, exception):
        with open(os.path.join(out, "on_exception"), "w") as f:
            f.write(f"{type(exception).__name__} {trainer.state.status}")

checkpoint = ModelCheckpoint(dirpath=out, filename="on-exception", save_on_exception=True)
trainer = Trainer(max_epochs=1, limit_val_batches=0, logger=False, enable_progress_bar=False,
                  enable_model_summary=False, callbacks=[WaitForSignal(), checkpoint])
trainer.fit(BoringModel())
print("not reached")
"""


def test_a_real_sigint_ends_the_process_with_exit_code_1(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(_SIGINT_SCRIPT))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = tmp_path / "ready"
        for _ in range(6000):  # a guard against a hung child, not a timing assertion
            if ready.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert ready.exists(), proc.communicate()[1]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert MESSAGE.strip() in err and "not reached" not in out
    assert (tmp_path / "on_exception").read_text() == "KeyboardInterrupt interrupted"
    saved = torch.load(tmp_path / "on-exception.ckpt", weights_only=True)
    assert saved["global_step"] == 3


# ---------------------------------------------------------------------- verbose result tables
def _tokens(text: str) -> list[str]:
    """The table's words and numbers (box characters and padding dropped), numbers rounded."""
    words = [w for w in re.split(r"[\s│┃┏┓┗┛┡┩└┘┳╇┴━─]+", text) if w]
    return [f"{float(w):.5g}" if re.fullmatch(r"-?\d+\.\d+(e-?\d+)?", w) else w for w in words]


def _evaluate_verbose(trainer_cls: Any, capsys: pytest.CaptureFixture[str]) -> tuple[str, str, str]:
    trainer, model = trainer_cls(**QUIET), _model()
    capsys.readouterr()
    trainer.validate(model, _loader(2))
    validate = capsys.readouterr().out
    trainer.test(model, _loader(3))
    test = capsys.readouterr().out
    trainer.test(model, _loader(3), verbose=False)
    return validate, test, capsys.readouterr().out


@pytest.mark.parametrize("rich", [True, False], ids=["rich", "plain"])
def test_verbose_tables_show_what_lightning_shows(
    rich: bool, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if not rich:
        import importlib.util

        import lightning.pytorch.loops.evaluation_loop as evaluation_loop

        monkeypatch.setattr(evaluation_loop, "_RICH_AVAILABLE", False)
        find_spec = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util,
            "find_spec",
            lambda name, *a: None if name == "rich" else find_spec(name, *a),
        )
    theirs = _evaluate_verbose(pl.Trainer, capsys)
    ours = _evaluate_verbose(Trainer, capsys)
    assert _tokens(ours[0]) == _tokens(theirs[0])
    assert _tokens(ours[0])[:4] == ["Validate", "metric", "DataLoader", "0"]
    assert _tokens(ours[1]) == _tokens(theirs[1])
    assert _tokens(ours[1])[:4] == ["Test", "metric", "DataLoader", "0"] and "test_mae" in ours[1]
    assert ours[2] == theirs[2] == ""
    if rich:  # the layout, not only the words: the same lines of the same width
        assert [len(line) for line in ours[1].splitlines()] == [
            len(line) for line in theirs[1].splitlines()
        ]


# ---------------------------------------------------------------------- PL_TRAINER_* defaults
def _settings(trainer: Any) -> tuple[Any, ...]:
    return (
        trainer.max_epochs,
        trainer.limit_train_batches,
        trainer.progress_bar_callback is None,
        trainer.max_steps,
    )


def test_pl_trainer_environment_defaults_as_lightning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PL_TRAINER_MAX_EPOCHS", "3")
    monkeypatch.setenv("PL_TRAINER_LIMIT_TRAIN_BATCHES", "0.5")
    monkeypatch.setenv("PL_TRAINER_ENABLE_PROGRESS_BAR", "False")
    monkeypatch.setenv("PL_TRAINER_ACCELERATOR", "cpu")  # not a literal: kept as the string
    monkeypatch.setenv("PL_TRAINER_MAX_STEPS", "")  # empty: unset
    kwargs = {"logger": False, "enable_model_summary": False}
    assert _settings(Trainer(**kwargs)) == _settings(pl.Trainer(**kwargs)) == (3, 0.5, True, -1)
    explicit = {**kwargs, "max_epochs": 5}
    assert _settings(Trainer(**explicit)) == _settings(pl.Trainer(**explicit)) == (5, 0.5, True, -1)
    fitted = Trainer(**kwargs)
    fitted.fit(Regressor(), _loader(1, n=16))
    assert fitted.current_epoch == 3 and fitted.global_step == 3  # 0.5 of 2 batches, 3 epochs


def test_a_bad_environment_default_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PL_TRAINER_MAX_EPOCHS", "many")
    with pytest.raises(
        ConfigError,
        match=r"^Trainer\(max_epochs='many'\).*\(set by PL_TRAINER_MAX_EPOCHS='many'\)$",
    ):
        Trainer()


# ---------------------------------------------------------------------- logger setters
@BOTH
def test_logger_and_loggers_setters_as_lightning(trainer_cls: Any, tmp_path: Path) -> None:
    trainer = trainer_cls(
        default_root_dir=tmp_path,
        max_epochs=1,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    csv, other = CSVLogger(tmp_path, name="csv"), CSVLogger(tmp_path, name="other")
    trainer.logger = csv
    assert trainer.logger is csv and trainer.loggers == [csv]
    trainer.fit(Regressor(), _loader(1, n=16), _loader(2, n=16))
    metrics = (Path(csv.log_dir) / "metrics.csv").read_text()
    assert "train_loss_epoch" in metrics and "val_loss" in metrics
    trainer.loggers = [csv, other]
    assert trainer.logger is csv and trainer.loggers == [csv, other]
    trainer.logger = None
    assert trainer.logger is None and trainer.loggers == []
    trainer.loggers = None
    assert trainer.loggers == []


def test_a_logger_that_is_no_logger_is_refused_naming_the_attribute() -> None:
    trainer = Trainer(**QUIET)
    with pytest.raises(ConfigError, match=r"^trainer\.loggers: str is neither a Lightning logger"):
        trainer.logger = "csv"
    trainer.logger = trainer.logger  # None stays None
    assert trainer.loggers == []


def test_the_default_logger_read_back_keeps_its_folder(tmp_path: Path) -> None:
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    folder = trainer.log_dir
    trainer.logger = trainer.logger
    trainer.fit(Regressor(), _loader(1, n=16))
    assert trainer.log_dir == folder and (Path(folder) / "metrics.jsonl").exists()


# ---------------------------------------------------------------------- attributes user code reads
class Reader(Regressor):
    """Records what a module reads on its trainer in each step."""

    def __init__(self) -> None:
        super().__init__()
        self.read: dict[str, Any] = {}

    def _note(self, where: str) -> None:
        t = self.trainer
        self.read.setdefault(
            where, (t.evaluating, t.training, t.validating, t.testing, t.sanity_checking)
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self._note("train")
        t = self.trainer
        self.read.setdefault("loaders", (t.train_dataloader, t.val_dataloaders, t.val_check_batch))
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._note("sanity" if self.trainer.sanity_checking else "validate")
        super().validation_step(batch, batch_idx)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._note("test")
        super().test_step(batch, batch_idx)


@BOTH
def test_trainer_attributes_user_code_reads(trainer_cls: Any) -> None:
    train, val = _loader(1), _loader(2)
    trainer = trainer_cls(max_epochs=1, val_check_interval=0.5, **QUIET)
    assert trainer.train_dataloader is None and trainer.val_check_batch is None
    model = Reader()
    trainer.fit(model, train, val)
    trainer.test(model, _loader(3), verbose=False)
    assert model.read.pop("loaders") == (train, val, 3)
    assert model.read == {
        "sanity": (True, False, False, False, True),
        "train": (False, True, False, False, False),
        "validate": (True, False, True, False, False),
        "test": (True, False, False, True, False),
    }
    assert trainer.num_sanity_val_steps == 2
    assert trainer.precision == "32-true" and trainer.scaler is None
    assert (
        trainer.barebones,
        trainer.enable_autolog_hparams,
        trainer.reload_dataloaders_every_n_epochs,
    ) == (
        False,
        True,
        0,
    )
    with trainer.init_module():
        created = torch.empty(1)
    assert created.device == torch.device("cpu")


def test_precision_names_and_sanity_steps_are_lightnings() -> None:
    """("16-mixed" is left out: Lightning turns it into bf16-mixed on CPU, busloop does not.)"""
    for kwargs in ({"precision": 32}, {"precision": "bf16-mixed"}, {"num_sanity_val_steps": -1}):
        ours, theirs = Trainer(**kwargs, **QUIET), pl.Trainer(**kwargs, **QUIET)
        assert (ours.precision, ours.num_sanity_val_steps) == (
            theirs.precision,
            theirs.num_sanity_val_steps,
        )
    assert Trainer(precision="16-mixed", **QUIET).precision == "16-mixed"


# ---------------------------------------------------------------------- when validation runs
class ValSteps(BoringModel):
    """Records the global step at each validation inside fit."""

    def __init__(self) -> None:
        super().__init__()
        self.val_at: list[int] = []

    def on_validation_start(self) -> None:
        if not self.trainer.sanity_checking:
            self.val_at.append(self.trainer.global_step)


@pytest.mark.parametrize(
    "interval", [2, 3, 0.4, 0.5, 1.0], ids=["int2", "int3", "frac0.4", "frac0.5", "end"]
)
def test_validation_runs_at_lightnings_batches_not_also_at_the_epoch_end(interval: Any) -> None:
    """Lightning validates at multiples of the interval only: with 5 batches and interval 2,
    after batches 2 and 4 of each epoch, not after the last one too."""
    runs = {}
    for trainer_cls in (pl.Trainer, Trainer):
        torch.manual_seed(0)
        model = ValSteps()
        trainer_cls(
            max_epochs=2, limit_train_batches=5, limit_val_batches=1, val_check_interval=interval, **QUIET
        ).fit(model, _fixed_loader(10), _fixed_loader(4))
        runs[trainer_cls.__module__] = model.val_at
    assert runs["compat.trainer_front"] == runs["lightning.pytorch.trainer.trainer"]
    assert runs["compat.trainer_front"]  # validation ran


def test_an_int_interval_longer_than_the_epoch_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="val_check_interval: 7 batches is more than an epoch's 5"):
        Trainer(max_epochs=1, limit_train_batches=5, val_check_interval=7, **QUIET).fit(
            ValSteps(), _fixed_loader(10), _fixed_loader(4)
        )
