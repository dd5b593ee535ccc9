"""ModelCheckpoint, GradientAccumulationScheduler, UploadCheckpoint on real runs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from callbacks.upload import UploadCheckpoint
from compat.gradient_accumulation import GradientAccumulationScheduler
from compat.model_checkpoint import ModelCheckpoint
from conftest import base_config, make_loader, make_model
from runtime import Callback, Runtime
from runtime.tracking import LocalTracker, NullTracker

F = nn.functional


class RecordingTracker(LocalTracker):
    def __init__(self, save_directory: Path) -> None:
        super().__init__(save_directory, "rec")
        self.artifacts: list[tuple[str, str]] = []

    def log_artifact(self, path: Any, kind: str) -> Path | None:
        self.artifacts.append((str(path), kind))
        return super().log_artifact(path, kind)


def test_model_checkpoint_keeps_the_best_k_and_uploads_each_new_best(tmp_path: Path) -> None:
    tracker = RecordingTracker(tmp_path / "runs")
    checkpoint = ModelCheckpoint(monitor="val/loss", mode="min", save_top_k=2, save_last=True)
    rt = Runtime(make_model(), [checkpoint, UploadCheckpoint()], base_config(epochs=5), loss=F.cross_entropy, tracker=tracker)
    rt.fit(make_loader(), make_loader(32))
    files = sorted(Path(checkpoint.dirpath).glob("epoch=*.ckpt"))
    val_losses = [h["val/loss"] for h in rt.state.history if h["stage"] == "val"]
    assert len(files) == 2 and len(checkpoint.best_k_models) == 2
    assert checkpoint.best_model_score == pytest.approx(min(val_losses))
    assert Path(checkpoint.dirpath) == tracker.run_dir / "checkpoints" / "min_val_loss"
    assert (Path(checkpoint.dirpath) / "last.ckpt").exists()
    saved = torch.load(checkpoint.best_model_path, weights_only=True)
    assert saved["callbacks"][checkpoint.state_key]["best_model_path"] == checkpoint.best_model_path
    uploads = [path for path, kind in tracker.artifacts if kind == "checkpoint"]
    improvements = sum(1 for i, v in enumerate(val_losses) if i < 2 or v < sorted(val_losses[:i])[1])
    assert len(uploads) == improvements and len(set(uploads)) == len(uploads)
    assert all("last.ckpt" not in path for path in uploads)


@pytest.mark.parametrize("uploads", [False, True])
def test_upload_checkpoint_says_uploaded_only_when_the_tracker_uploads(
    tmp_path: Path, uploads: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A local-only tracker keeps checkpoints where they are: no "Uploaded" line for it."""
    tracker = RecordingTracker(tmp_path / "runs")
    tracker.uploads = uploads  # as a remote backend (MLflowTracker) declares it
    checkpoint = ModelCheckpoint(monitor="val/loss", mode="min", save_top_k=1)
    rt = Runtime(make_model(), [checkpoint, UploadCheckpoint()], base_config(epochs=2), loss=F.cross_entropy, tracker=tracker)
    with caplog.at_level(logging.INFO, logger="busloop.callbacks"):
        rt.fit(make_loader(), make_loader(32))
    assert [kind for _, kind in tracker.artifacts].count("checkpoint") >= 1  # handed over either way
    assert ("Uploaded checkpoint" in caplog.text) is uploads


def test_gradient_accumulation_scheduler_changes_steps_per_epoch() -> None:
    steps: list[int] = []

    class StepsPerEpoch(Callback):
        def on_train_epoch_end(self, runtime: Runtime) -> None:
            steps.append(runtime.state.global_step)

    scheduler = GradientAccumulationScheduler({"0": 3, "1": 1})
    rt = Runtime(make_model(), [scheduler, StepsPerEpoch()], base_config(epochs=3), loss=F.cross_entropy, tracker=NullTracker())
    rt.fit(make_loader(96, batch_size=16))  # 6 batches per epoch
    assert steps == [2, 8, 14]
    with pytest.raises(ValueError, match="count >= 1"):
        GradientAccumulationScheduler({0: 0})


def test_an_inactive_model_checkpoint_entry_switches_the_default_checkpoints_off() -> None:
    """README: ``active: false`` switches a default off, ModelCheckpoint included; an active
    ModelCheckpoint entry adds one next to the defaults (issue #16)."""
    from callbacks import build_callbacks
    from runtime.config import load_config

    def checkpoints(*overrides: str) -> list[str | None]:
        built = build_callbacks(load_config(None, ["trainer.smart_cfg_auto_populate=false", *overrides]))
        return [c.monitor for c in built if isinstance(c, ModelCheckpoint)]

    assert checkpoints() == ["val/loss"]
    assert checkpoints("trainer.callbacks=[{name: ModelCheckpoint, params: {monitor: train/loss}}]") == [
        "val/loss", "train/loss"
    ]
    assert checkpoints("trainer.callbacks=[{name: ModelCheckpoint, active: false}]") == []
    both = "trainer.callbacks=[{name: ModelCheckpoint, active: false}, {name: ModelCheckpoint, params: {monitor: x}}]"
    assert checkpoints(both) == ["x"]
