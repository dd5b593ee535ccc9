"""Resuming continues in the run folder the checkpoint came from (issue #16).

The log is appended to, metrics.jsonl continues without a duplicated step, status.txt is
updated, the checkpoints stay in the same folders under the same ``save_top_k``, and
config.yaml records ``resume_from``. Exact resume makes the resumed folder's metrics.jsonl
equal, row for row, to the one of a run that was never interrupted.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from callbacks.interrupt import GracefulInterruptCallback
from compat.model_checkpoint import ModelCheckpoint
from conftest import base_config, make_loader, make_model
from runtime import Callback, Runtime

F = nn.functional


class InterruptAt(Callback):
    """Sends this process SIGINT while training batch (epoch, batch) runs."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.at, self.sent = (epoch, batch), False

    def on_train_batch_start(self, runtime: Runtime, batch: Any, batch_idx: int) -> None:
        if not self.sent and (runtime.state.epoch, batch_idx) == self.at:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)


def _run(runs: Path, name: str, *extra: Any, ckpt: Path | None = None) -> Runtime:
    cfg = base_config(epochs=3, seed=4, log_every_n_steps=1)
    cfg["tracker"] = {"save_directory": str(runs), "run_name": name}
    callbacks = [GracefulInterruptCallback(), ModelCheckpoint(monitor="val/loss", save_top_k=2, subdir="min_val_loss"), *extra]
    rt = Runtime(make_model(seed=2, dropout=0.2), callbacks, cfg, loss=F.cross_entropy)
    with rt:
        rt.fit(make_loader(shuffle=True), make_loader(32), ckpt_path=ckpt)
    return rt


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_resume_continues_the_interrupted_run_folder(tmp_path: Path) -> None:
    straight = _run(tmp_path / "straight", "job")
    interrupted = _run(tmp_path / "runs", "job", InterruptAt(1, 2))
    assert interrupted.state.interrupted and interrupted.run_dir is not None
    folder = interrupted.run_dir
    assert (folder / "status.txt").read_text() == "interrupted\n"

    resumed = _run(tmp_path / "runs", "job", ckpt=folder / "resume.ckpt")
    assert resumed.run_dir == folder and [p.name for p in (tmp_path / "runs").iterdir()] == [folder.name]
    assert (folder / "status.txt").read_text() == "success\n"
    log_text = (folder / "log.txt").read_text()
    assert log_text.count("New run folder") == 1 and log_text.count("Resuming in run folder") == 1
    assert log_text.index("Graceful shutdown") < log_text.index("Resumed from")

    rows = _rows(folder)
    assert rows == _rows(straight.run_dir)  # type: ignore[arg-type]  # exact resume: the same records
    train = [r["step"] for r in rows if "train/loss" in r]
    assert train == sorted(set(train))  # each step once
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    assert saved["trainer"]["resume_from"] == str(folder / "resume.ckpt")
    checkpoints = sorted(p.name for p in (folder / "checkpoints" / "min_val_loss").iterdir())
    expected = sorted(p.name for p in (straight.run_dir / "checkpoints" / "min_val_loss").iterdir())  # type: ignore[operator]
    assert checkpoints == expected and len(checkpoints) == 2  # save_top_k across the two processes
    assert not (folder / "artifacts").exists()


class SaveAfterFirstEpoch(Callback):
    """Writes ``<run>/early.ckpt`` at the end of epoch 0."""

    def on_train_epoch_end(self, runtime: Runtime) -> None:
        if runtime.state.epoch == 0 and runtime.run_dir is not None:
            runtime.save_checkpoint(runtime.run_dir / "early.ckpt")


def test_resuming_an_earlier_checkpoint_drops_the_records_after_it(tmp_path: Path) -> None:
    first = _run(tmp_path / "runs", "job", SaveAfterFirstEpoch())
    folder = first.run_dir
    assert folder is not None
    early = folder / "early.ckpt"
    before = _rows(folder)
    resumed = _run(tmp_path / "runs", "job", ckpt=early)
    assert resumed.run_dir == folder
    rows = _rows(folder)
    assert rows == before  # the same run again from epoch 1: each step recorded once, the same values
    assert "row(s) after step 6 dropped" in (folder / "log.txt").read_text()


def test_a_checkpoint_outside_any_run_folder_starts_a_new_one(tmp_path: Path) -> None:
    first = _run(tmp_path / "runs", "job", InterruptAt(0, 3))
    assert first.run_dir is not None
    moved = tmp_path / "elsewhere" / "resume.ckpt"
    moved.parent.mkdir()
    (first.run_dir / "resume.ckpt").rename(moved)
    resumed = _run(tmp_path / "runs", "job", ckpt=moved)
    assert resumed.run_dir is not None and resumed.run_dir != first.run_dir
    assert yaml.safe_load((resumed.run_dir / "config.yaml").read_text())["trainer"]["resume_from"] == str(moved)


def test_epoch_numbers_agree_between_files_and_console(tmp_path: Path) -> None:
    """One convention (README, "Epoch numbers"): files hold the 0-based epoch index
    (checkpoint names, the checkpoint's epoch, metrics.jsonl, the test row after training:
    the last epoch trained); the console counts epochs, "[Epoch 3/3]" being index 2."""
    from callbacks.progress import LuxonisTQDMProgressBar

    cfg = base_config(epochs=3, seed=4)
    cfg["tracker"] = {"save_directory": str(tmp_path / "runs"), "run_name": "epochs"}
    callbacks = [LuxonisTQDMProgressBar(), ModelCheckpoint(monitor="val/loss", save_top_k=-1, subdir="all")]
    rt = Runtime(make_model(seed=2), callbacks, cfg, loss=F.cross_entropy)
    with rt:
        rt.fit(make_loader(shuffle=True), make_loader(32))
        rt.test(make_loader(32))
    assert rt.run_dir is not None
    rows = _rows(rt.run_dir)
    assert sorted({r["epoch"] for r in rows if "val/loss" in r}) == [0, 1, 2]
    (test_row,) = [r for r in rows if "test/loss" in r]
    assert test_row["epoch"] == 2  # the last epoch trained, not the count 3
    from runtime.checkpoint import load_checkpoint

    for path in sorted((rt.run_dir / "checkpoints" / "all").iterdir()):
        index = int(path.name.split("-")[0].removeprefix("epoch="))
        assert load_checkpoint(path)["epoch"] == index
        assert any(r["epoch"] == index and r["step"] == load_checkpoint(path)["global_step"] for r in rows)
    log_text = (rt.run_dir / "log.txt").read_text()
    assert [f"[Epoch {n}/3]" in log_text for n in (1, 2, 3)] == [True] * 3 and "[Epoch 0/3]" not in log_text


def test_a_missing_checkpoint_in_a_run_folder_leaves_that_run_alone(tmp_path: Path) -> None:
    import pytest

    first = _run(tmp_path / "runs", "job")
    assert first.run_dir is not None
    status, rows = (first.run_dir / "status.txt").read_text(), _rows(first.run_dir)
    with pytest.raises(Exception, match="no-such.ckpt"):
        _run(tmp_path / "runs", "job", ckpt=first.run_dir / "no-such.ckpt")
    assert (first.run_dir / "status.txt").read_text() == status == "success\n"
    assert _rows(first.run_dir) == rows
