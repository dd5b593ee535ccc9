"""FailOnNoTrainBatches, MetadataLogger, TestOnTrainEnd and TrainingProgressCallback."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from callbacks.ema import EMACallback
from callbacks.fail_on_no_batches import (
    FailOnNoTrainBatches,
    NoBatchesReport,
    batches_needed,
    describe_loader,
    minimum_dataset_size,
)
from callbacks.metadata import MetadataLogger, busloop_source_dir, config_value, git_info
from callbacks.test_on_train_end import TestOnTrainEnd, checkpoint_callbacks
from callbacks.training_progress import TrainingProgressCallback
from compat.model_checkpoint import ModelCheckpoint
from conftest import base_config, make_data, make_loader, make_model
from runtime import Callback, Runtime
from runtime.bus import CallbackError
from runtime.checkpoint import load_checkpoint, versions
from runtime.data import num_batches
from runtime.tracking import NullTracker, Tracker

F = nn.functional


class RecordingTracker(Tracker):
    """A tracker that keeps every call in memory (``run_dir`` optional)."""

    def __init__(self, run_dir: Path | None = None) -> None:
        self.run_dir = run_dir
        self.status = None
        self.metrics: list[tuple[dict[str, float], int, int | None]] = []
        self.hyperparams: dict[str, Any] = {}

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        self.hyperparams.update(params)

    def log_metrics(
        self, metrics: Mapping[str, float], step: int, epoch: int | None = None
    ) -> None:
        self.metrics.append((dict(metrics), step, epoch))

    def log_image(self, tag: str, image: Any, step: int) -> Path | None:
        return None

    def log_artifact(self, path: str | os.PathLike[str], kind: str) -> Path | None:
        return None


def _runtime(
    callbacks: list[Any],
    tracker: Tracker | None = None,
    model: nn.Module | None = None,
    **trainer: Any,
) -> Runtime:
    return Runtime(
        model if model is not None else make_model(),
        callbacks,
        base_config(**trainer),
        loss=F.cross_entropy,
        tracker=tracker if tracker is not None else NullTracker(),
    )


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_weights(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ====================================================================== FailOnNoTrainBatches
def _fit_error(loader: DataLoader[Any], **trainer: Any) -> str:
    rt = _runtime([FailOnNoTrainBatches()], **trainer)
    with pytest.raises(CallbackError) as info:
        rt.fit(loader)
    assert info.value.event == "fit_start"
    assert info.value.callback.startswith("FailOnNoTrainBatches")
    assert isinstance(info.value.original, ValueError)
    return str(info.value.original)


def test_no_batches_drop_last_no_limit() -> None:
    message = _fit_error(make_loader(10, batch_size=16, drop_last=True))
    assert message == (
        "The training loader yields no batches: dataset size 10, minimum size 16, missing 6 "
        "(batch_size=16, world_size=1, drop_last=True, limit_train_batches=None). "
        "Fix: add at least 6 samples, lower batch_size or set drop_last=False."
    )


def test_no_batches_drop_last_float_limit() -> None:
    # 12 samples / 8 = 1 full batch; int(1 * 0.5) = 0 batches. Needs 2 full batches = 16.
    message = _fit_error(make_loader(12, batch_size=8, drop_last=True), limit_train_batches=0.5)
    assert message == (
        "The training loader yields no batches: dataset size 12, minimum size 16, missing 4 "
        "(batch_size=8, world_size=1, drop_last=True, limit_train_batches=0.5). "
        "Fix: add at least 4 samples, lower batch_size, set drop_last=False or raise "
        "limit_train_batches."
    )


def test_no_batches_keep_last_float_limit() -> None:
    # 10 samples / 4 = 3 batches (last partial); int(3 * 0.25) = 0. Needs 4 batches: 3*4+1 = 13.
    message = _fit_error(make_loader(10, batch_size=4, drop_last=False), limit_train_batches=0.25)
    assert message == (
        "The training loader yields no batches: dataset size 10, minimum size 13, missing 3 "
        "(batch_size=4, world_size=1, drop_last=False, limit_train_batches=0.25). "
        "Fix: add at least 3 samples, lower batch_size or raise limit_train_batches."
    )


def test_no_batches_keep_last_int_limit_empty_dataset() -> None:
    message = _fit_error(make_loader(0, batch_size=4), limit_train_batches=5)
    assert message == (
        "The training loader yields no batches: dataset size 0, minimum size 1, missing 1 "
        "(batch_size=4, world_size=1, drop_last=False, limit_train_batches=5). "
        "Fix: add at least 1 samples or lower batch_size."
    )


def test_no_batches_drop_last_int_limit() -> None:
    message = _fit_error(make_loader(3, batch_size=4, drop_last=True), limit_train_batches=2)
    assert message == (
        "The training loader yields no batches: dataset size 3, minimum size 4, missing 1 "
        "(batch_size=4, world_size=1, drop_last=True, limit_train_batches=2). "
        "Fix: add at least 1 samples, lower batch_size or set drop_last=False."
    )


def test_no_batches_zero_limit() -> None:
    message = _fit_error(make_loader(32, batch_size=4), limit_train_batches=0)
    assert message == (
        "The training loader yields no batches: dataset size 32 "
        "(batch_size=4, world_size=1, drop_last=False, limit_train_batches=0). "
        "limit_train_batches=0 trains on no batch; raise it or remove it."
    )


def test_no_batches_report_world_size_and_unknown_values() -> None:
    report = NoBatchesReport(dataset_size=20, batch_size=8, world_size=4, drop_last=True)
    assert report.message() == (
        "The training loader yields no batches: dataset size 20, minimum size 32, missing 12 "
        "(batch_size=8, world_size=4, drop_last=True, limit_train_batches=None). "
        "Fix: add at least 12 samples, lower batch_size or set drop_last=False."
    )
    # A plain list of batches: no dataset, batch size or drop_last to read.
    unknown = describe_loader([], None)
    assert unknown.message() == (
        "The training loader yields no batches (world_size=1, limit_train_batches=None). "
        "Fix: add samples or lower batch_size."
    )
    # The world size comes from a DistributedSampler when the loader has one.
    dataset = make_data(5)
    sampler: DistributedSampler[Any] = DistributedSampler(
        dataset, num_replicas=3, rank=0, shuffle=False
    )
    assert describe_loader(DataLoader(dataset, batch_size=2, sampler=sampler), None).world_size == 3


def test_no_batches_silent_when_there_are_batches() -> None:
    state = _runtime([FailOnNoTrainBatches()], epochs=1).fit(
        make_loader(20, batch_size=8, drop_last=True)
    )
    assert state.global_step == 2


@pytest.mark.parametrize("limit", [None, 1, 3, 1.0, 0.5, 0.3, 0.25, 1 / 3, 0.1, 0.7])
@pytest.mark.parametrize("drop_last", [True, False])
def test_minimum_size_is_the_smallest_dataset_with_a_batch(
    limit: int | float | None, drop_last: bool
) -> None:
    """The formula against real (distributed) loaders cut the way the runtime cuts them."""
    needed = batches_needed(limit)
    assert needed is not None
    for batch_size in (1, 3, 4):
        for world_size in (1, 2, 3):
            smallest = None
            for n in range(0, 200):
                dataset = TensorDataset(torch.zeros(n, 1))
                sampler: DistributedSampler[Any] = DistributedSampler(
                    dataset, num_replicas=world_size, rank=0, shuffle=False, drop_last=drop_last
                )
                loader = DataLoader(
                    dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last
                )
                if num_batches(loader, limit) >= 1:
                    smallest = n
                    break
            expected = minimum_dataset_size(batch_size, world_size, drop_last, needed)
            assert smallest == expected, (batch_size, world_size)


# ====================================================================== MetadataLogger
def _git(*args: str, cwd: Path) -> str:
    result = subprocess.run(
        ["git", "-c", "user.name=busloop", "-c", "user.email=t@example.com", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return result.stdout.strip()


@pytest.fixture
def git_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git checkout with one commit; git does not look above tmp_path for repositories."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    repo = tmp_path / "project"
    repo.mkdir()
    _git("init", "-q", cwd=repo)
    (repo / "train.py").write_text("print('hi')\n")
    _git("add", "train.py", cwd=repo)
    _git("commit", "-q", "-m", "first", cwd=repo)
    return repo


def test_git_info_of_a_checkout_and_of_a_plain_folder(git_repo: Path, tmp_path: Path) -> None:
    head = _git("rev-parse", "HEAD", cwd=git_repo)
    assert git_info(git_repo) == {"path": str(git_repo.resolve()), "commit": head, "dirty": False}
    (git_repo / "train.py").write_text("print('changed')\n")
    assert git_info(git_repo)["dirty"] is True
    (git_repo / "pkg").mkdir()
    (git_repo / "pkg" / "__init__.py").write_text("")  # untracked: not this repo's package
    assert git_info(git_repo / "pkg", tracked_file="__init__.py")["commit"] is None
    assert git_info(git_repo, tracked_file="train.py")["commit"] == head

    plain = tmp_path / "plain"
    plain.mkdir()
    assert git_info(plain) == {"path": str(plain.resolve()), "commit": None, "dirty": None}
    assert git_info(tmp_path / "missing")["commit"] is None


def test_config_value_dot_notation() -> None:
    config = {"trainer": {"batch_size": 8, "callbacks": [{"name": "A"}], "main_metric": None}}
    assert config_value(config, "trainer.batch_size") == 8
    assert config_value(config, "trainer.callbacks.0.name") == "A"
    assert config_value(config, "trainer.callbacks.1.name") is None
    assert config_value(config, "trainer.main_metric.name") is None
    assert config_value(config, "trainer.nope") is None
    assert config_value(config, "trainer.batch_size.deeper") is None


_KEYS = [
    "trainer.batch_size",
    "optimizer.params.lr",
    "trainer.callbacks.0.name",
    "trainer.no_such_key",
    "model.params.width",
]


def _busloop_commit() -> str | None:
    try:
        return _git("rev-parse", "HEAD", cwd=busloop_source_dir())
    except (subprocess.CalledProcessError, OSError):
        return None


@pytest.mark.parametrize("in_repo", [True, False])
def test_metadata_logger_writes_values_commits_and_versions(
    git_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_repo: bool
) -> None:
    workdir = git_repo if in_repo else tmp_path / "not-a-repo"
    workdir.mkdir(exist_ok=True)
    monkeypatch.chdir(workdir)
    tracker = RecordingTracker(run_dir=tmp_path / "run")
    logger = MetadataLogger(hyperparams=_KEYS)
    config = {
        **base_config(epochs=1, batch_size=8),
        "trainer": {
            **base_config(epochs=1, batch_size=8)["trainer"],
            "callbacks": [{"name": "MetadataLogger", "params": {"hyperparams": _KEYS}}],
        },
    }
    Runtime(make_model(), [logger], config, loss=F.cross_entropy, tracker=tracker).fit(
        make_loader(16)
    )

    expected_values = {
        "trainer.batch_size": 8,
        "optimizer.params.lr": 0.1,
        "trainer.callbacks.0.name": "MetadataLogger",
        "trainer.no_such_key": None,
        "model.params.width": None,
    }
    head = _git("rev-parse", "HEAD", cwd=git_repo) if in_repo else None
    busloop_head = _busloop_commit()
    assert tracker.hyperparams == {
        **expected_values,
        "busloop_git_commit": busloop_head,
        "working_dir_git_commit": head,
    }
    written = yaml.safe_load((tmp_path / "run" / "metadata.yaml").read_text())
    assert list(written) == ["hyperparams", "git", "versions"]
    assert written["hyperparams"] == expected_values
    assert written["git"]["working_dir"] == {
        "path": str(workdir.resolve()),
        "commit": head,
        "dirty": False if in_repo else None,
    }
    assert written["git"]["busloop"]["commit"] == busloop_head
    assert written["git"]["busloop"]["path"] == str(busloop_source_dir())
    assert written["versions"] == versions()


def test_metadata_logger_local_tracker_and_rank_zero_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rt = Runtime(
        make_model(),
        [MetadataLogger(["trainer.epochs"])],
        base_config(epochs=1),
        loss=F.cross_entropy,
    )
    rt.fit(make_loader(16))
    rt.close()
    assert rt.run_dir is not None
    assert yaml.safe_load((rt.run_dir / "metadata.yaml").read_text())["hyperparams"] == {
        "trainer.epochs": 1
    }
    assert yaml.safe_load((rt.run_dir / "hparams.yaml").read_text())["trainer.epochs"] == 1

    monkeypatch.setattr("callbacks.metadata.is_rank_zero", lambda: False)
    tracker = RecordingTracker(run_dir=tmp_path / "other")
    _runtime([MetadataLogger(["trainer.epochs"])], tracker=tracker, epochs=1).fit(make_loader(16))
    assert tracker.hyperparams == {}
    assert not (tmp_path / "other" / "metadata.yaml").exists()


def test_metadata_logger_rejects_a_string() -> None:
    with pytest.raises(ValueError, match="list of dot-notation"):
        MetadataLogger("trainer.epochs")  # type: ignore[arg-type]


# ====================================================================== TestOnTrainEnd
class ScoreLogger(Callback):
    """Logs ``val/epoch_score`` = epoch (best at epoch 0 in "min" mode) and test accuracy."""

    def on_validation_batch_end(
        self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int
    ) -> None:
        runtime.log("val/epoch_score", float(runtime.state.epoch))

    def on_test_batch_end(
        self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int
    ) -> None:
        accuracy = (runtime.model(batch[0]).argmax(1) == batch[1]).float().mean()
        runtime.log("test/accuracy", accuracy)


class Probe(Callback):
    """Snapshots checkpoint state and files at train_end, and the weights at test_start."""

    def __init__(self, checkpoints: list[ModelCheckpoint], folder: Path) -> None:
        self.checkpoints, self.folder = checkpoints, folder
        self.states: list[dict[str, Any]] = []
        self.files: set[Path] = set()
        self.final_weights: dict[str, torch.Tensor] = {}
        self.tested_weights: list[dict[str, torch.Tensor]] = []

    def on_train_end(self, runtime: Runtime) -> None:
        self.states = [cb.state_dict() for cb in self.checkpoints]
        self.files = set(self.folder.rglob("*"))
        self.final_weights = _weights(runtime.model)

    def on_test_start(self, runtime: Runtime) -> None:
        self.tested_weights.append(_weights(runtime.model))


def _fit_and_test(
    tmp_path: Path,
    *,
    preferred: str = "metric",
    metric_monitor: str = "val/epoch_score",
    loss_monitor: str = "val/loss",
    view: str = "test",
    with_test_loader: bool = True,
) -> tuple[Runtime, TestOnTrainEnd, Probe, ModelCheckpoint, ModelCheckpoint]:
    folder = tmp_path / "ckpt"
    loss_cb = ModelCheckpoint(
        monitor=loss_monitor, save_top_k=1, subdir="min_val_loss", dirpath=str(folder / "loss")
    )
    metric_cb = ModelCheckpoint(
        monitor=metric_monitor,
        mode="min",
        save_top_k=1,
        subdir="best_val_metric",
        dirpath=str(folder / "metric"),
    )
    probe = Probe([loss_cb, metric_cb], folder)
    tester = TestOnTrainEnd(view=view, preferred_checkpoint=preferred)
    rt = _runtime(
        [ScoreLogger(), loss_cb, metric_cb, probe, tester],
        epochs=3,
        main_metric={"name": "val/epoch_score", "mode": "min"},
    )
    if with_test_loader:
        rt.loaders["test"] = make_loader(48, seed=7)
    rt.fit(make_loader(96, shuffle=True), make_loader(32, seed=3))
    return rt, tester, probe, loss_cb, metric_cb


def _separate_test(path: str) -> dict[str, float]:
    model = make_model(seed=123)
    model.load_state_dict(load_checkpoint(path)["state_dict"])
    return _runtime([ScoreLogger()], model=model).test(make_loader(48, seed=7))


def _assert_checkpoints_untouched(
    probe: Probe, loss_cb: ModelCheckpoint, metric_cb: ModelCheckpoint
) -> None:
    assert [loss_cb.state_dict(), metric_cb.state_dict()] == probe.states
    assert set(probe.folder.rglob("*")) == probe.files


@pytest.mark.parametrize("preferred", ["metric", "loss"])
def test_test_on_train_end_tests_the_preferred_best_checkpoint(
    tmp_path: Path, preferred: str
) -> None:
    rt, tester, probe, loss_cb, metric_cb = _fit_and_test(tmp_path, preferred=preferred)
    assert metric_cb.best_model_path != loss_cb.best_model_path
    assert "epoch=0" in metric_cb.best_model_path  # the metric's best is not the last epoch
    chosen = metric_cb.best_model_path if preferred == "metric" else loss_cb.best_model_path
    assert tester.checkpoint_path == chosen

    best = load_checkpoint(chosen)["state_dict"]
    assert len(probe.tested_weights) == 1 and _same_weights(probe.tested_weights[0], best)
    assert _same_weights(_weights(rt.model), best)  # documented: the model keeps the best weights
    assert tester.metrics is not None and set(tester.metrics) == {"test/loss", "test/accuracy"}
    assert tester.metrics == _separate_test(chosen)
    assert rt.state.history[-1]["stage"] == "test"
    _assert_checkpoints_untouched(probe, loss_cb, metric_cb)


def test_test_on_train_end_with_ema_tests_the_best_ema_checkpoint(tmp_path: Path) -> None:
    """EMA first (the registry's order): the test sees the best checkpoint, not the last EMA."""
    folder = tmp_path / "ckpt"
    metric_cb = ModelCheckpoint(
        monitor="val/epoch_score",
        mode="min",
        save_top_k=1,
        subdir="best_val_metric",
        dirpath=str(folder / "metric"),
    )
    probe = Probe([metric_cb], folder)
    tester = TestOnTrainEnd()
    ema = EMACallback(decay=0.5, use_dynamic_decay=False)
    rt = _runtime(
        [ema, ScoreLogger(), metric_cb, probe, tester],
        epochs=3,
        main_metric={"name": "val/epoch_score", "mode": "min"},
    )
    rt.loaders["test"] = make_loader(48, seed=7)
    rt.fit(make_loader(96, shuffle=True), make_loader(32, seed=3))
    best = load_checkpoint(metric_cb.best_model_path)["state_dict"]
    assert "epoch=0" in metric_cb.best_model_path
    assert not _same_weights(best, probe.final_weights)  # the final EMA is another model
    assert _same_weights(probe.tested_weights[0], best)
    assert tester.metrics == _separate_test(metric_cb.best_model_path)


def test_test_on_train_end_falls_back_to_the_loss_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="busloop"):
        _, tester, probe, loss_cb, metric_cb = _fit_and_test(
            tmp_path, metric_monitor="val/never_logged"
        )
    assert metric_cb.best_model_path == ""
    assert tester.checkpoint_path == loss_cb.best_model_path != ""
    errors = [
        r
        for r in caplog.records
        if r.levelno == logging.ERROR and "TestOnTrainEnd" in r.getMessage()
    ]
    assert len(errors) == 1
    assert "no usable best metric checkpoint" in errors[0].getMessage()
    assert "trying the loss checkpoint" in errors[0].getMessage()
    assert tester.metrics == _separate_test(loss_cb.best_model_path)
    _assert_checkpoints_untouched(probe, loss_cb, metric_cb)


def test_test_on_train_end_falls_back_to_the_metric_checkpoint(tmp_path: Path) -> None:
    _, tester, _, loss_cb, metric_cb = _fit_and_test(
        tmp_path, preferred="loss", loss_monitor="val/never_logged"
    )
    assert loss_cb.best_model_path == ""
    assert tester.checkpoint_path == metric_cb.best_model_path != ""


def test_test_on_train_end_uses_current_weights_without_checkpoints(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="busloop"):
        _, tester, probe, loss_cb, metric_cb = _fit_and_test(
            tmp_path, metric_monitor="val/never", loss_monitor="val/never_either"
        )
    assert tester.checkpoint_path is None
    assert _same_weights(probe.tested_weights[0], probe.final_weights)
    assert tester.metrics is not None and "test/loss" in tester.metrics
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "TestOnTrainEnd" in r.getMessage()
    ]
    assert len(warnings) == 1 and "testing the current weights" in warnings[0]
    _assert_checkpoints_untouched(probe, loss_cb, metric_cb)


def test_test_on_train_end_without_checkpoint_callbacks_or_loader(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tester = TestOnTrainEnd()
    rt = _runtime([tester], epochs=1)
    rt.loaders["test"] = make_loader(16)
    with caplog.at_level(logging.WARNING, logger="busloop"):
        rt.fit(make_loader(32))
    assert tester.checkpoint_path is None and tester.metrics is not None
    assert "no ModelCheckpoint for it (configure one with trainer.main_metric)" in caplog.text

    caplog.clear()
    missing = TestOnTrainEnd(view="test")
    rt = _runtime([missing], epochs=1)
    with caplog.at_level(logging.WARNING, logger="busloop"):
        rt.fit(make_loader(32), make_loader(16))
    assert missing.metrics is None
    assert "no 'test' loader (loaders: train, val); skipping the test run" in caplog.text
    assert all(entry["stage"] != "test" for entry in rt.state.history)

    on_val = TestOnTrainEnd(view="val")
    rt = _runtime([on_val], epochs=1)
    rt.fit(make_loader(32), make_loader(16))
    assert on_val.metrics is not None and "test/loss" in on_val.metrics


def test_test_on_train_end_kinds_and_parameters() -> None:
    class LightningLike:  # no subdir: the kind comes from the monitor
        def __init__(self, monitor: str) -> None:
            self.monitor, self.best_model_path = monitor, ""

    loss_like, metric_like, other = (
        LightningLike("val/loss"),
        LightningLike("val/acc"),
        LightningLike("val/x"),
    )
    rt = _runtime([loss_like, metric_like, other], main_metric={"name": "val/acc"})
    assert list(checkpoint_callbacks(rt)) == [("loss", loss_like), ("metric", metric_like)]
    with pytest.raises(ValueError, match="view must be one of"):
        TestOnTrainEnd(view="holdout")
    with pytest.raises(ValueError, match="preferred_checkpoint"):
        TestOnTrainEnd(preferred_checkpoint="last")


# ====================================================================== TrainingProgressCallback
def _series(tracker: RecordingTracker, key: str) -> list[float]:
    return [round(m[key], 2) for m, _, _ in tracker.metrics if key in m]


def _progress_records(tracker: RecordingTracker, stage: str) -> list[dict[str, float]]:
    return [m for m, _, _ in tracker.metrics if f"{stage}/epoch_progress_percent" in m]


def test_training_progress_percents_and_timings() -> None:
    tracker = RecordingTracker()
    rt = _runtime(
        [TrainingProgressCallback(log_every_n_batches=2)],
        tracker=tracker,
        epochs=2,
        num_sanity_val_steps=2,
    )
    rt.fit(make_loader(96, batch_size=16), make_loader(32, batch_size=16))  # 6 train, 2 val batches

    assert _series(tracker, "train/epoch_progress_percent") == [0.0, 33.33, 66.67, 100.0, 100.0] * 2
    # Validation ran twice (not three times): the sanity check is ignored.
    assert _series(tracker, "val/epoch_progress_percent") == [0.0, 100.0, 100.0] * 2
    for stage in ("train", "val"):
        records = _progress_records(tracker, stage)
        completions = [i for i, m in enumerate(records) if f"{stage}/epoch_completion_sec" in m]
        per_epoch = len(records) // 2
        assert completions == [per_epoch - 1, 2 * per_epoch - 1]  # only the epochs' last records
        for index in completions:
            assert records[index][f"{stage}/epoch_progress_percent"] == 100.0
        batches = [m for m in records if f"{stage}/batch_total_sec" in m]
        assert len(batches) == (3 if stage == "train" else 1) * 2
        assert all(
            m[f"{stage}/batch_total_sec"] > 0 and m[f"{stage}/epoch_duration_sec"] > 0
            for m in batches
        )
        epoch = records[:per_epoch]
        durations = [
            m[f"{stage}/epoch_duration_sec"] for m in epoch if f"{stage}/epoch_duration_sec" in m
        ]
        assert durations == sorted(durations)
        assert f"{stage}/epoch_duration_sec" not in epoch[0]
    # Steps and epochs are the loop's: the train epoch 1 start is published at step 6.
    train_starts = [
        (step, epoch)
        for m, step, epoch in tracker.metrics
        if m == {"train/epoch_progress_percent": 0.0}
    ]
    assert train_starts == [(0, 0), (6, 1)]


def test_training_progress_every_fourth_batch_and_test_stage() -> None:
    tracker = RecordingTracker()
    progress = TrainingProgressCallback(log_every_n_batches=4)
    rt = _runtime([progress], tracker=tracker, epochs=1)
    rt.fit(make_loader(96, batch_size=16))
    assert _series(tracker, "train/epoch_progress_percent") == [0.0, 66.67, 100.0]
    assert _series(tracker, "val/epoch_progress_percent") == []

    tracker.metrics.clear()
    progress.log_every_n_batches = 1
    rt.test(make_loader(32, batch_size=16))
    assert _series(tracker, "test/epoch_progress_percent") == [0.0, 50.0, 100.0, 100.0]
    assert len(_series(tracker, "test/epoch_completion_sec")) == 1


def test_training_progress_without_tracker_or_off_rank_zero(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with caplog.at_level(logging.WARNING, logger="busloop"):
        _runtime([TrainingProgressCallback()], epochs=2).fit(make_loader(32), make_loader(16))
    assert caplog.text.count("TrainingProgressCallback: no tracker is configured") == 1

    monkeypatch.setattr("callbacks.training_progress.is_rank_zero", lambda: False)
    tracker = RecordingTracker()
    _runtime([TrainingProgressCallback()], tracker=tracker, epochs=1).fit(
        make_loader(32), make_loader(16)
    )
    assert _series(tracker, "train/epoch_progress_percent") == []
    with pytest.raises(ValueError, match="log_every_n_batches"):
        TrainingProgressCallback(log_every_n_batches=0)
