"""When the local tracker's metric rows reach ``metrics.jsonl`` (issue #17).

``LocalTracker`` keeps rows in memory and writes them together: at a time interval, at a
bound on pending rows, on ``flush`` (the runtime's: each training epoch's end, before every
checkpoint, the end of each run), ``resume_at``, ``finalize`` and interpreter exit. These
tests check that the file holds the same rows, in the same order, as when every row was
written at once, and that no row is lost where it used to be on disk: an exception, a
graceful interrupt, a normal end, and a process killed (SIGKILL) after a checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from callbacks.interrupt import GracefulInterruptCallback
from compat.model_checkpoint import ModelCheckpoint
from conftest import base_config, make_loader, make_model
from runtime import Callback, Runtime
from runtime.checkpoint import load_checkpoint
from runtime.tracking import GuardedTracker, LocalTracker, MultiTracker, NullTracker, Tracker

F = nn.functional
REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tests" / "scripts"
HOLD = 3600.0  # a flush interval no test reaches: rows wait for a flush


def _lines(tracker: LocalTracker) -> list[str]:
    path = tracker.metrics_path
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# -- the tracker alone ---------------------------------------------------------------------


def test_rows_wait_for_a_flush_and_keep_their_values_and_order(tmp_path: Path) -> None:
    tracker = LocalTracker(tmp_path, "held", flush_interval=HOLD)
    value = torch.tensor(0.5)
    tracker.log_metrics({"train/loss": value, "lr": 0.1}, step=1, epoch=0)
    value.add_(10.0)  # changed in place after logging: the row keeps what was logged
    with pytest.raises(TypeError, match="metric 'name' must be a number"):
        tracker.log_metrics({"name": "hello"}, step=2)  # raises at its own call
    tracker.log_metrics({"val/loss": 2}, step=3)
    assert _lines(tracker) == []
    tracker.flush()
    assert tracker.metrics_path.read_bytes() == (
        b'{"step": 1, "epoch": 0, "train/loss": 0.5, "lr": 0.1}\n'
        b'{"step": 3, "epoch": null, "val/loss": 2.0}\n'
    )
    tracker.log_metrics({"val/loss": 1.5}, step=4)
    tracker.finalize("success")  # writes what is pending
    assert [json.loads(line)["step"] for line in _lines(tracker)] == [1, 3, 4]
    tracker.log_metrics({"late": 1.0}, step=5)  # after the end: written at once
    assert json.loads(_lines(tracker)[-1]) == {"step": 5, "epoch": None, "late": 1.0}


def test_rows_are_written_when_the_interval_has_passed(tmp_path: Path) -> None:
    every_call = LocalTracker(tmp_path, "zero", flush_interval=0.0)
    every_call.log_metrics({"loss": 1.0}, step=1)
    assert len(_lines(every_call)) == 1  # no flush called
    every_call.finalize("success")

    tracker = LocalTracker(tmp_path, "short", flush_interval=0.05)
    tracker.log_metrics({"loss": 1.0}, step=1)
    time.sleep(0.06)  # more than the interval since the tracker opened (or wrote row 1)
    tracker.log_metrics({"loss": 0.5}, step=2)  # the first call after the interval writes
    assert [json.loads(line)["step"] for line in _lines(tracker)] == [1, 2]
    tracker.finalize("success")


def test_rows_are_written_when_max_pending_is_reached(tmp_path: Path) -> None:
    tracker = LocalTracker(tmp_path, "bounded", flush_interval=HOLD, max_pending=3)
    for step in (1, 2):
        tracker.log_metrics({"loss": float(step)}, step=step)
    assert _lines(tracker) == []
    tracker.log_metrics({"loss": 3.0}, step=3)
    assert [json.loads(line)["step"] for line in _lines(tracker)] == [1, 2, 3]
    tracker.finalize("success")


def test_rows_at_or_before_a_checkpoint_step_are_written_when_logged(tmp_path: Path) -> None:
    tracker = LocalTracker(tmp_path, "ckpt", flush_interval=HOLD)
    tracker.log_metrics({"loss": 1.0}, step=4)
    tracker.flush(checkpoint_step=5)  # a checkpoint of step 5 is about to be written
    assert len(_lines(tracker)) == 1
    tracker.log_metrics({"loss": 0.9}, step=5)  # step 5's own row, logged after its checkpoint
    assert len(_lines(tracker)) == 2
    tracker.log_metrics({"loss": 0.8}, step=6)  # after the checkpoint: held again
    assert len(_lines(tracker)) == 2
    tracker.finalize("success")
    assert [json.loads(line)["step"] for line in _lines(tracker)] == [4, 5, 6]


def test_rows_that_cannot_be_written_at_the_end_are_a_recorded_problem(tmp_path: Path) -> None:
    """finalize still writes the final status (and closes the log) when the rows cannot be
    written; status.txt says what was lost."""
    tracker = LocalTracker(tmp_path, "blocked", flush_interval=HOLD)
    tracker.log_metrics({"loss": 1.0}, step=1)
    tracker.metrics_path.mkdir()  # a folder where the file should be: the write fails
    tracker.finalize("success")
    status = (tracker.run_dir / "status.txt").read_text().splitlines()
    assert status[0] == "success" and status[1].startswith("metrics.jsonl: metric rows could not be written")


def test_resume_at_sees_the_pending_rows(tmp_path: Path) -> None:
    tracker = LocalTracker(tmp_path, "resume", flush_interval=HOLD)
    for step in range(1, 6):
        tracker.log_metrics({"loss": float(step)}, step=step)
    tracker.resume_at(3)
    assert [json.loads(line)["step"] for line in _lines(tracker)] == [1, 2, 3]
    tracker.log_metrics({"loss": 0.4}, step=4)
    tracker.finalize("success")
    assert [json.loads(line)["step"] for line in _lines(tracker)] == [1, 2, 3, 4]


def test_pending_rows_are_written_at_interpreter_exit(tmp_path: Path) -> None:
    """A script that never finalises its tracker still gets every row."""
    code = (
        "import sys; from runtime.tracking import LocalTracker\n"
        "t = LocalTracker(sys.argv[1], 'exit', flush_interval=3600)\n"
        "for s in range(3): t.log_metrics({'loss': s / 2}, step=s)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, env=env, timeout=120)
    assert _rows(tmp_path / "0-exit" / "metrics.jsonl") == [
        {"step": s, "epoch": None, "loss": s / 2} for s in range(3)
    ]


class _Failing(NullTracker):
    def flush(self, checkpoint_step: int | None = None) -> None:
        raise ConnectionError("server down")


def test_wrappers_forward_flush(tmp_path: Path) -> None:
    local = LocalTracker(tmp_path, "multi", flush_interval=HOLD)
    guarded = GuardedTracker(LocalTracker(tmp_path, "guarded", flush_interval=HOLD))
    failing = GuardedTracker(_Failing())
    multi: Tracker = MultiTracker([local, guarded, failing])
    multi.log_metrics({"loss": 1.0}, step=7)
    multi.flush(checkpoint_step=7)
    assert _lines(local) == _lines(guarded.backend) == ['{"step": 7, "epoch": null, "loss": 1.0}']
    multi.log_metrics({"loss": 0.5}, step=7)  # the checkpoint step reached the backends
    assert len(_lines(local)) == len(_lines(guarded.backend)) == 2
    multi.finalize("success")
    assert failing.problems and "flush: ConnectionError: server down" in failing.problems[0]


# -- a killed process --------------------------------------------------------------------------


def _cli_config(*extra_callbacks: dict[str, Any]) -> dict[str, Any]:
    """``busloop train`` on tests/scripts/interrupt_job.py's model and data: 3 epochs of 8
    steps, a row per step, a checkpoint every 3 steps (mid-epoch) besides the default one on
    val/loss, exact resume."""
    return {
        "model": {"factory": "interrupt_job:build_model"},
        "data": {"factory": "interrupt_job:build_loaders"},
        "loss": "torch.nn.functional:cross_entropy",
        "optimizer": {"name": "SGD", "params": {"lr": 0.05, "momentum": 0.9}},
        "trainer": {
            "epochs": 3, "batch_size": 8, "num_workers": 0, "seed": 7, "accelerator": "cpu",
            "num_sanity_val_steps": 0, "rich_logging": False, "smart_cfg_auto_populate": False,
            "log_every_n_steps": 1,
            "callbacks": [
                {"name": "ModelCheckpoint", "params": {"every_n_train_steps": 3, "save_top_k": -1, "subdir": "steps"}},
                *extra_callbacks,
            ],
        },
        "tracker": {"save_directory": "runs", "run_name": "job"},
    }


def _busloop(cwd: Path, config: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    path = cwd / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SCRIPTS), str(REPO), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", "train", str(path), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False,
    )


@pytest.mark.slow
def test_a_killed_run_keeps_every_row_up_to_its_last_checkpoint_and_resumes_to_the_same_file(tmp_path: Path) -> None:
    straight = _busloop(tmp_path / "straight", _cli_config())
    assert straight.returncode == 0, straight.stderr[-4000:]
    expected = (tmp_path / "straight" / "runs" / "0-job" / "metrics.jsonl").read_text()

    kill = {"name": "interrupt_job:KillAt", "params": {"epoch": 1, "batch": 5, "signal": "SIGKILL"}}
    killed = _busloop(tmp_path / "killed", _cli_config(kill))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    folder = tmp_path / "killed" / "runs" / "0-job"
    assert (folder / "status.txt").read_text() == "running\n"  # nothing ran after the kill
    checkpoints = {int(load_checkpoint(p)["global_step"]): p for p in folder.rglob("*.ckpt")}
    last = max(checkpoints)
    assert last == 12  # the kill came in the 14th batch; checkpoints at steps 3, 6, 8 (val/loss), 9, 12
    kept = [row for row in _rows(folder / "metrics.jsonl") if row["step"] <= last]
    assert kept == [json.loads(line) for line in expected.splitlines() if json.loads(line)["step"] <= last]
    assert any(row["step"] == last and "train/loss_step" in row for row in kept)  # logged after the checkpoint

    resumed = _busloop(tmp_path / "killed", _cli_config(), "--resume", str(checkpoints[last]))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert (folder / "metrics.jsonl").read_text() == expected  # as if never killed


# -- in a run ------------------------------------------------------------------------------


class Counting(LocalTracker):
    """A local tracker that counts its log_metrics calls (rows logged so far)."""

    logged = 0

    def log_metrics(self, metrics: Any, step: int, epoch: int | None = None) -> None:
        super().log_metrics(metrics, step, epoch)
        self.logged += 1


class OnDisk(Callback):
    """Checks, where the runtime flushes, that every row logged so far is in the file: each
    training epoch start after the first (the previous epoch's end flushed), each written
    checkpoint, the batch after a checkpoint of the step (its row came after it) and when a
    graceful interrupt acts on its signal."""

    def __init__(self) -> None:
        self.checked: list[str] = []
        self.checkpoint_step = -1

    def _check(self, runtime: Runtime, where: str) -> None:
        tracker = runtime.tracker
        assert isinstance(tracker, Counting)
        assert len(_lines(tracker)) == tracker.logged > 0, where
        self.checked.append(where)

    def on_train_epoch_start(self, runtime: Runtime) -> None:
        if runtime.state.epoch > 0:
            self._check(runtime, f"epoch {runtime.state.epoch} start")

    def on_checkpoint_written(self, runtime: Runtime, path: Path, monitor: str | None, score: float | None) -> None:
        self._check(runtime, f"checkpoint {path.name}")
        self.checkpoint_step = runtime.state.global_step

    def on_train_batch_start(self, runtime: Runtime, batch: Any, batch_idx: int) -> None:
        if runtime.state.global_step == self.checkpoint_step:
            self._check(runtime, f"after the checkpoint of step {self.checkpoint_step}")

    def on_interrupt_received(self, runtime: Runtime, signal: int) -> None:
        self._check(runtime, "interrupt noticed")  # before a second signal's os._exit


class RaiseAt(Callback):
    def on_train_batch_start(self, runtime: Runtime, batch: Any, batch_idx: int) -> None:
        if (runtime.state.epoch, batch_idx) == (1, 3):
            raise RuntimeError("boom")


class InterruptAt(Callback):
    """Sends this process SIGINT while training batch (1, 2) runs."""

    def on_train_batch_start(self, runtime: Runtime, batch: Any, batch_idx: int) -> None:
        if (runtime.state.epoch, batch_idx) == (1, 2):
            os.kill(os.getpid(), signal.SIGINT)


def _train(tracker: Counting, checkpoints: bool, *callbacks: Any) -> Runtime:
    """Fit 3 epochs (6 steps each, a row per step, validation; with ``checkpoints`` one every
    second step and one on val/loss, weights only), then test; the runtime is not closed."""
    cfg = base_config(epochs=3, seed=4, log_every_n_steps=1)
    if checkpoints:
        callbacks = (
            ModelCheckpoint(every_n_train_steps=2, save_top_k=-1, subdir="steps"),
            ModelCheckpoint(monitor="val/loss", save_top_k=1, subdir="best", save_weights_only=True),
            *callbacks,
        )
    rt = Runtime(make_model(seed=2, dropout=0.2), list(callbacks), cfg, loss=F.cross_entropy, tracker=tracker)
    rt.fit(make_loader(shuffle=True), make_loader(32))
    if not rt.state.interrupted:
        rt.test(make_loader(32))
    return rt


@pytest.mark.parametrize("checkpoints", [False, True], ids=["no-checkpoints", "checkpoints"])
def test_a_run_writes_the_rows_of_writing_each_at_once(tmp_path: Path, checkpoints: bool) -> None:
    """flush_interval=0 writes every row at its own call, as the tracker did before it held
    rows; held rows give the same file, byte for byte, on disk when fit and test return."""
    at_once = Counting(tmp_path, "at_once", flush_interval=0.0)
    _train(at_once, checkpoints)
    probe = OnDisk()
    held = Counting(tmp_path, "held", flush_interval=HOLD)
    _train(held, checkpoints, probe)
    assert held.metrics_path.read_bytes() == at_once.metrics_path.read_bytes()
    assert len(_lines(held)) == held.logged == at_once.logged == 18 + 3 + 3 + 1  # steps, train and val epochs, test
    assert "test/loss" in _lines(held)[-1]  # the test row, at the end
    assert "epoch 1 start" in probe.checked and "epoch 2 start" in probe.checked
    if checkpoints:
        assert "after the checkpoint of step 4" in probe.checked
        assert any(c.startswith("checkpoint epoch=") and "step=6" in c for c in probe.checked)  # val/loss, weights only


@pytest.mark.parametrize("ending", ["exception", "interrupt"])
def test_an_exception_or_a_graceful_interrupt_leaves_every_row(tmp_path: Path, ending: str) -> None:
    at_once = Counting(tmp_path, "at_once", flush_interval=0.0)
    held = Counting(tmp_path, "held", flush_interval=HOLD)
    probe = OnDisk()
    for tracker in (at_once, held):
        if ending == "exception":
            with pytest.raises(RuntimeError, match="boom"):
                _train(tracker, False, RaiseAt())
        else:
            probe = OnDisk()
            assert _train(tracker, False, GracefulInterruptCallback(), InterruptAt(), probe).state.interrupted
    if ending == "interrupt":  # the held run's rows were on disk when the interrupt was acted on
        assert probe.checked == ["epoch 1 start", "interrupt noticed", "checkpoint resume.ckpt"]
    assert held.status == at_once.status == ("failed" if ending == "exception" else "interrupted")
    assert held.metrics_path.read_bytes() == at_once.metrics_path.read_bytes()
    assert len(_lines(held)) == held.logged > 6


def test_a_lightning_logger_save_writes_the_rows(tmp_path: Path) -> None:
    """``trainer.logger.save()`` (Lightning's "write what is logged") flushes the tracker."""
    from compat.trainer_parts import TrackerLogger

    tracker = LocalTracker(tmp_path, "logger", flush_interval=HOLD)
    rt = Runtime(make_model(), [], base_config(epochs=1), loss=F.cross_entropy, tracker=tracker)
    logger = TrackerLogger(rt)
    logger.log_metrics({"loss": 0.25}, step=3)
    assert _lines(tracker) == []
    logger.save()
    assert [json.loads(line)["loss"] for line in _lines(tracker)] == [0.25]
    tracker.finalize("success")
