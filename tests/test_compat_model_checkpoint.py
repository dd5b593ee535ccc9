"""compat.ModelCheckpoint against Lightning's stock ModelCheckpoint on the same module and data:
the same files with the same names, the same best / top-k / last choices, the same state."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from compat_pairs import PairModule, fit_busloop, fit_lightning, pl

from compat import ModelCheckpoint
from runtime import Callback, Runtime
from runtime.checkpoint import load_checkpoint

EPOCHS = 7

CASES: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"monitor": "score", "mode": "max", "save_top_k": 2, "filename": "{epoch}-{score:.2f}", "save_last": True}, {}),
    ({}, {}),  # monitor None: the latest epoch only
    ({"monitor": "score", "save_top_k": 3, "every_n_epochs": 2}, {}),
    ({"monitor": "val_loss", "save_top_k": -1, "every_n_train_steps": 4}, {}),
    ({"monitor": "score", "save_top_k": 1, "save_last": "link", "filename": "best"}, {}),
    ({"monitor": "score", "save_top_k": -1, "filename": "fixed"}, {}),
    ({"monitor": "score", "save_top_k": -1, "filename": "fixed", "enable_version_counter": False}, {}),
    ({"monitor": "score", "save_top_k": 2, "filename": "ep{epoch:02d}_s{score:.3f}", "auto_insert_metric_name": False}, {}),
    ({"save_top_k": 0, "save_last": True}, {}),
    ({"save_top_k": -1, "train_time_interval": timedelta(0)}, {}),
    ({"monitor": "score", "save_top_k": 2, "filename": "{epoch}-{step}"}, {"val_check_interval": 0.5}),
    ({"monitor": "score", "save_top_k": 2, "save_on_train_epoch_end": False}, {"check_val_every_n_epoch": 2}),
    ({"monitor": "train_loss", "save_top_k": 2}, {"val": False}),
]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.ckpt"))


def _name(path: str, root: Path) -> str:
    return str(Path(path).relative_to(root)) if path else ""


@pytest.mark.parametrize(("options", "trainer"), CASES, ids=[str(i) for i in range(len(CASES))])
def test_same_files_choices_and_state_as_lightning(tmp_path: Path, options: dict[str, Any], trainer: dict[str, Any]) -> None:
    module = PairModule()
    theirs = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "L", **options)
    fit_lightning(module, [theirs], tmp_path, epochs=EPOCHS, **trainer)
    ours = ModelCheckpoint(dirpath=tmp_path / "B", **options)
    fit_busloop(module, [ours], epochs=EPOCHS, **trainer)

    lightning_root, busloop_root = tmp_path / "L", tmp_path / "B"
    assert _files(busloop_root) == _files(lightning_root) != [] or options.get("save_top_k") == 0
    assert ours.state_key == theirs.state_key
    mine, stock = ours.state_dict(), theirs.state_dict()
    assert mine.keys() == stock.keys()
    for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
        assert _name(mine[key], busloop_root) == _name(stock[key], lightning_root), key
    assert {_name(p, busloop_root): float(v) for p, v in mine["best_k_models"].items()} == pytest.approx(
        {_name(p, lightning_root): float(v) for p, v in stock["best_k_models"].items()}, abs=1e-6
    )
    for key in ("best_model_score", "current_score", "kth_value"):
        if stock[key] is None:
            assert mine[key] is None, key
        else:
            assert float(mine[key]) == pytest.approx(float(stock[key]), abs=1e-6), key
    for name in _files(lightning_root):
        assert (busloop_root / name).is_symlink() == (lightning_root / name).is_symlink(), name
    if options.get("save_last") == "link":
        assert os.readlink(busloop_root / "last.ckpt") == os.readlink(lightning_root / "last.ckpt")


def test_weights_only_files_hold_the_weights_and_no_training_state(tmp_path: Path) -> None:
    module = PairModule()
    theirs = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "L", save_weights_only=True)
    fit_lightning(module, [theirs], tmp_path, epochs=2)
    ours = ModelCheckpoint(dirpath=tmp_path / "B", save_weights_only=True)
    rt = fit_busloop(module, [ours], epochs=2)
    stock = torch.load(theirs.best_model_path, weights_only=False)
    mine = load_checkpoint(ours.best_model_path)
    for key in ("optimizer_states", "lr_schedulers", "callbacks"):
        assert key not in stock and key not in mine
    assert mine["state_dict"].keys() == stock["state_dict"].keys()
    for name, value in rt.model.state_dict().items():
        torch.testing.assert_close(mine["state_dict"][name], value, rtol=0, atol=0)
        torch.testing.assert_close(mine["state_dict"][name], stock["state_dict"][name], rtol=0, atol=1e-6)


class WriteLog(Callback):
    """Records checkpoint_written; fails the write of the checkpoint at ``fail_epoch``."""

    def __init__(self, fail_epoch: int | None = None) -> None:
        self.fail_epoch = fail_epoch
        self.written: list[tuple[str, str | None, float | None]] = []

    def on_save_checkpoint(self, runtime: Runtime, checkpoint: dict[str, Any]) -> None:
        if runtime.state.epoch == self.fail_epoch:
            raise OSError("disk full")

    def on_checkpoint_written(self, runtime: Runtime, path: Path, monitor: str | None, score: float | None) -> None:
        self.written.append((Path(path).name, monitor, score))


def test_checkpoint_written_is_emitted_for_each_file(tmp_path: Path) -> None:
    ours = ModelCheckpoint(dirpath=tmp_path, monitor="score", mode="max", save_top_k=2, filename="{epoch}", save_last=True)
    events = WriteLog()
    fit_busloop(PairModule(), [ours, events], epochs=4)
    # scores 0.5, 0.3, 0.6, 0.2: epochs 0, 1 and 2 enter the top 2, epoch 3 does not
    top = [(name, monitor, round(score or 0, 4)) for name, monitor, score in events.written if monitor]
    assert top == [("epoch=0.ckpt", "score", 0.5), ("epoch=1.ckpt", "score", 0.3), ("epoch=2.ckpt", "score", 0.6)]
    # as in Lightning, last.ckpt is written whenever a top-k file was: not after epoch 3
    assert [name for name, monitor, _ in events.written if monitor is None] == ["last.ckpt"] * 3


def test_a_failed_write_keeps_the_previous_best_and_state(tmp_path: Path) -> None:
    ours = ModelCheckpoint(dirpath=tmp_path, monitor="score", mode="max", save_top_k=1, filename="{epoch}")
    with pytest.raises(Exception, match="disk full"):
        fit_busloop(PairModule(), [ours, WriteLog(fail_epoch=2)], epochs=4)  # epoch 2 (0.6) would replace epoch 0
    assert _files(tmp_path) == ["epoch=0.ckpt"]
    assert ours.best_model_path == str(tmp_path / "epoch=0.ckpt")
    assert list(ours.best_k_models) == [ours.best_model_path]
    assert float(ours.best_model_score) == pytest.approx(0.5)  # type: ignore[arg-type]
    assert load_checkpoint(tmp_path / "epoch=0.ckpt")["epoch"] == 0


def test_resume_continues_the_top_k_as_an_uninterrupted_run(tmp_path: Path) -> None:
    options: dict[str, Any] = {"monitor": "score", "mode": "min", "save_top_k": 2, "save_last": True}
    straight = ModelCheckpoint(dirpath=tmp_path / "straight", **options)
    fit_busloop(PairModule(), [straight], epochs=6)
    first = ModelCheckpoint(dirpath=tmp_path / "resumed", **options)
    fit_busloop(PairModule(), [first], epochs=3)
    resumed = ModelCheckpoint(dirpath=tmp_path / "resumed", **options)
    fit_busloop(PairModule(), [resumed], epochs=6, ckpt_path=first.last_model_path)
    assert _files(tmp_path / "resumed") == _files(tmp_path / "straight")
    assert {Path(p).name: float(v) for p, v in resumed.best_k_models.items()} == pytest.approx(
        {Path(p).name: float(v) for p, v in straight.best_k_models.items()}
    )


def test_default_folder_is_under_the_run_and_per_monitor(tmp_path: Path) -> None:
    from compat_pairs import CaptureTracker

    tracker = CaptureTracker(tmp_path / "runs")
    by_score = ModelCheckpoint(monitor="score", mode="max")
    plain = ModelCheckpoint(subdir="latest")
    fit_busloop(PairModule(), [by_score, plain], epochs=2, tracker=tracker)
    assert by_score.dirpath == str(tracker.run_dir / "checkpoints" / "max_score")
    assert plain.dirpath == str(tracker.run_dir / "checkpoints" / "latest")
    assert [Path(p).name for p in (by_score.best_model_path, plain.best_model_path)] == ["epoch=0-step=6.ckpt", "epoch=1-step=12.ckpt"]


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"mode": "avg"}, "mode"),
        ({"save_top_k": -2}, "save_top_k"),
        ({"save_top_k": 3}, "needs a monitor"),
        ({"every_n_epochs": 1, "every_n_train_steps": 5}, "mutually exclusive"),
        ({"every_n_train_steps": -1}, "every_n_train_steps"),
        ({"save_last": "symlink"}, "save_last"),
        ({"train_time_interval": "soon"}, "train_time_interval"),
    ],
)
def test_bad_arguments_name_the_callback_and_parameter(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=f"ModelCheckpoint: .*{problem}"):
        ModelCheckpoint(**options)


def test_the_per_batch_hook_is_connected_only_when_a_step_trigger_needs_it(tmp_path: Path) -> None:
    epochs_only, steps = ModelCheckpoint(dirpath=tmp_path / "a"), ModelCheckpoint(dirpath=tmp_path / "b", every_n_train_steps=3)
    rt = fit_busloop(PairModule(), [epochs_only, steps], epochs=1)
    assert rt.bus.describe()["train_batch_end"] == ["ModelCheckpoint.on_train_batch_end"]
    assert _files(tmp_path / "b") == ["epoch=0-step=6.ckpt"]


def test_save_on_exception_writes_what_lightning_writes(tmp_path: Path) -> None:
    class LightningBoom(pl.Callback):  # type: ignore[misc,name-defined]
        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if trainer.current_epoch == 1 and batch_idx == 2:
                raise ValueError("boom")

    class BusloopBoom(Callback):
        def on_train_batch_end(self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int) -> None:
            if runtime.state.epoch == 1 and batch_idx == 2:
                raise ValueError("boom")

    options: dict[str, Any] = {"save_on_exception": True, "save_last": True}
    with pytest.raises(ValueError, match="boom"):
        fit_lightning(PairModule(), [LightningBoom(), pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "L", **options)], tmp_path, epochs=3)
    with pytest.raises(Exception, match="boom"):
        fit_busloop(PairModule(), [BusloopBoom(), ModelCheckpoint(dirpath=tmp_path / "B", **options)], epochs=3)
    assert _files(tmp_path / "B") == _files(tmp_path / "L") == ["epoch=0-step=6.ckpt", "epoch=1-step=9.ckpt", "last.ckpt"]
    assert load_checkpoint(tmp_path / "B" / "last.ckpt")["global_step"] == 9


def _disk_full_after(monkeypatch: pytest.MonkeyPatch, good_writes: int) -> list[int]:
    """Make every torch.save after the first ``good_writes`` write a few bytes and then fail
    with ENOSPC, as a full disk does (the failure is injected; the file handling is real)."""
    import errno

    real, calls = torch.save, [0]

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        calls[0] += 1
        if calls[0] > good_writes:
            f.write(b"PK\x03\x04 the first bytes of a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    return calls


def _only_the_first_best(ours: ModelCheckpoint, folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == ["epoch=0.ckpt"]  # no half-written or temporary file
    assert ours.best_model_path == str(folder / "epoch=0.ckpt") and list(ours.best_k_models) == [ours.best_model_path]
    assert float(ours.best_model_score) == pytest.approx(0.5)  # type: ignore[arg-type]
    assert load_checkpoint(folder / "epoch=0.ckpt")["epoch"] == 0


def test_a_disk_full_write_stops_the_run_with_one_clear_error_and_keeps_the_best(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runtime.bus import CallbackError

    ours = ModelCheckpoint(dirpath=tmp_path, monitor="score", mode="max", save_top_k=1, filename="{epoch}")
    _disk_full_after(monkeypatch, good_writes=1)
    with pytest.raises(CallbackError) as caught:  # scores 0.5, 0.3, 0.6: epoch 2's write fails
        fit_busloop(PairModule(), [ours], epochs=4)
    message = str(caught.value)
    assert "CheckpointError: ModelCheckpoint could not write" in message and "epoch=2.ckpt" in message
    assert "No space left on device" in message and f"best: {tmp_path / 'epoch=0.ckpt'}" in message
    assert "\n" not in message
    _only_the_first_best(ours, tmp_path)


def test_on_write_error_continue_trains_on_and_keeps_the_best(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ours = ModelCheckpoint(
        dirpath=tmp_path, monitor="score", mode="max", save_top_k=1, filename="{epoch}", on_write_error="continue"
    )
    calls = _disk_full_after(monkeypatch, good_writes=1)
    with caplog.at_level("ERROR", logger="busloop"):
        rt = fit_busloop(PairModule(), [ours], epochs=4)
    assert rt.state.epoch == 4 and not rt.state.interrupted
    assert calls[0] == 2  # epoch 2's write was tried (epochs 1 and 3 are not in the top 1)
    assert "could not write" in caplog.text and "training goes on" in caplog.text
    _only_the_first_best(ours, tmp_path)


@pytest.mark.parametrize(
    ("filename", "auto_insert"),
    [
        (None, True),
        ("{epoch}-{val/loss:.3f}", True),
        ("{epoch_test}_{epoch:02d}_{missing}", True),
        ("ep{epoch:02d}-{val/loss:.2f}-{epoch}", False),
        ("fixed", True),
    ],
)
def test_checkpoint_names_are_lightnings_at_every_save(tmp_path: Path, filename: str | None, auto_insert: bool) -> None:
    """The name template is parsed once and reused: each save still formats its own metrics
    exactly as Lightning's ModelCheckpoint.format_checkpoint_name does (versions included)."""
    ours = ModelCheckpoint(dirpath=tmp_path, filename=filename, auto_insert_metric_name=auto_insert)
    theirs = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename=filename, auto_insert_metric_name=auto_insert)
    for epoch, loss in ((0, 0.5), (1, 0.25), (12, 0.125)):
        metrics = {"epoch": torch.tensor(epoch), "step": torch.tensor(10 * epoch), "val/loss": torch.tensor(loss),
                   "epoch_test": torch.tensor(7)}
        for ver in (None, 2):
            expected = theirs.format_checkpoint_name(dict(metrics), ver=ver)
            assert ours.format_checkpoint_name(metrics, ver=ver) == expected
