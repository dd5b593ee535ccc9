"""One LightningModule trained twice: by Lightning's Trainer with a stock callback, and by
busloop's Runtime with the compat re-implementation, under the same seed and settings
(``../shared/reference/lightning.md``, "Comparing with Lightning in tests").

Importing this module skips the test module when Lightning is not installed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from conftest import make_loader
from runtime import Runtime
from runtime.tracking import LocalTracker, NullTracker, Tracker

pl = pytest.importorskip("lightning.pytorch")

from test_lightning_log import CapturingLogger  # noqa: E402  (a Lightning logger keeping every call)

__all__ = [
    "EPOCHS", "SCORES", "SEED", "CaptureTracker", "CapturingLogger", "PairModule", "Recorder", "fit_busloop",
    "fit_lightning", "pair", "pl",
]

SEED = 7
EPOCHS = 4
#: A scripted validation score per epoch: not monotonic, so top-k choices matter.
SCORES = (0.5, 0.3, 0.6, 0.2, 0.4, 0.1, 0.7, 0.25)


class PairModule(pl.LightningModule):  # type: ignore[misc,name-defined]
    """Logs ``train_loss``, ``val_loss`` and (with ``scores``) ``score = scores[epoch]``.

    ``optimizer``: "SGD" or "Adam"; ``groups`` > 1 splits the parameters into that many
    groups; ``scheduler``: None or a dict of Lightning's lr_scheduler config (with
    ``"kind"``: "step" for StepLR(1, 0.5), "lambda" for a per-step decay).
    """

    def __init__(
        self,
        scores: Sequence[float] | None = SCORES,
        optimizer: str = "SGD",
        groups: int = 1,
        scheduler: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))
        self.scores, self.optimizer_name, self.groups, self.scheduler = scores, optimizer, groups, scheduler

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))
        if self.scores is not None:
            self.log("score", float(self.scores[self.current_epoch % len(self.scores)]))

    def configure_optimizers(self) -> Any:
        params = list(self.parameters())
        if self.groups > 1:
            param_groups: Any = [
                {"params": params[i :: self.groups], "lr": 0.1 / (i + 1)} for i in range(self.groups)
            ]
        else:
            param_groups = params
        if self.optimizer_name == "Adam":
            optimizer: Any = torch.optim.Adam(param_groups, lr=0.01, weight_decay=1e-4)
        else:
            optimizer = torch.optim.SGD(param_groups, lr=0.1, momentum=0.9, weight_decay=1e-3)
        if self.scheduler is None:
            return optimizer
        config = dict(self.scheduler)
        kind = config.pop("kind")
        if kind == "step":
            config["scheduler"] = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        else:
            config["scheduler"] = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.95**step)
        return {"optimizer": optimizer, "lr_scheduler": config}


class CaptureTracker(LocalTracker):
    """busloop's local tracker, also keeping every ``log_metrics`` call."""

    def __init__(self, save_directory: Path) -> None:
        super().__init__(save_directory, "capture")
        self.rows: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: Any, step: int, epoch: int | None = None) -> None:
        self.rows.append((step, {k: float(v) for k, v in metrics.items()}))
        super().log_metrics(metrics, step, epoch)


def fit_lightning(
    module: Any,
    callbacks: list[Any],
    root: Path,
    *,
    epochs: int,
    val: bool = True,
    logger: Any = False,
    **trainer: Any,
) -> Any:
    """Train a copy of ``module`` with Lightning's Trainer; returns the trainer."""
    checkpointing = any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks)
    progress_bar = any(isinstance(c, pl.callbacks.ProgressBar) for c in callbacks)
    fit = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        callbacks=callbacks,
        logger=logger,
        enable_checkpointing=checkpointing,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        default_root_dir=str(root),
        **{"num_sanity_val_steps": 0, **trainer},
    )
    torch.manual_seed(SEED)
    fit.fit(copy.deepcopy(module), make_loader(96), make_loader(48, seed=1) if val else None)
    return fit


def fit_busloop(
    module: Any,
    callbacks: list[Any],
    *,
    epochs: int,
    val: bool = True,
    tracker: Tracker | None = None,
    ckpt_path: Any = None,
    **trainer: Any,
) -> Runtime:
    """Train a copy of ``module`` with busloop's Runtime; returns the runtime."""
    config = {"trainer": {"accelerator": "cpu", "epochs": epochs, "num_sanity_val_steps": 0, **trainer}}
    rt = Runtime(copy.deepcopy(module), callbacks, config, tracker=tracker or NullTracker())
    torch.manual_seed(SEED)
    rt.fit(make_loader(96), make_loader(48, seed=1) if val else None, ckpt_path=ckpt_path)
    return rt


_HOOKS = [
    name for name, value in vars(pl.Callback).items()
    if callable(value) and (name.startswith("on_") or name in ("setup", "teardown"))
]  # fmt: skip


def _recording(name: str) -> Callable[..., None]:
    def record(self: Any, trainer: Any, pl_module: Any, *args: Any, **kwargs: Any) -> None:
        self.__dict__.setdefault("calls", []).append(
            (name, trainer.current_epoch, trainer.global_step, len(args) + len(kwargs))
        )

    return record


#: A stock-style callback overriding every hook, recording (hook, epoch, step, argument count).
Recorder = type("Recorder", (pl.Callback,), {name: _recording(name) for name in _HOOKS})


def pair(
    make: Callable[[Path], list[Any]], tmp_path: Path, *, module: Any = None, epochs: int = EPOCHS,
    logged: bool = False, **trainer: Any,
) -> tuple[Any, list[Any], Runtime, list[Any]]:
    """Train under Lightning and busloop with ``make(folder)`` callbacks plus a Recorder each;
    asserts the same hook sequence and final weights; returns (trainer, theirs, rt, ours)."""
    module = module if module is not None else PairModule()
    theirs, their_rec = make(tmp_path / "pl"), Recorder()
    logger = CapturingLogger() if logged else False
    fit = fit_lightning(module, [*theirs, their_rec], tmp_path / "pl", epochs=epochs, logger=logger, **trainer)
    ours, our_rec = make(tmp_path / "bl"), Recorder()
    tracker = CaptureTracker(tmp_path / "runs") if logged else None
    rt = fit_busloop(module, [*ours, our_rec], epochs=epochs, tracker=tracker, **trainer)
    assert our_rec.calls == their_rec.calls  # type: ignore[attr-defined]
    for (name, mine), stock in zip(rt.model.state_dict().items(), fit.lightning_module.state_dict().values(), strict=True):
        torch.testing.assert_close(mine, stock, rtol=0, atol=1e-6, msg=name)
    rt.recorded = our_rec.calls  # type: ignore[attr-defined]
    return fit, theirs, rt, ours
