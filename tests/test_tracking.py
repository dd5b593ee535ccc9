"""Trackers (local run folder, null, fan-out, factory) and the distributed helpers."""

from __future__ import annotations

import json
import logging
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from runtime import distributed
from runtime.tracking import (
    LocalTracker,
    MultiTracker,
    NullTracker,
    Tracker,
    create_tracker,
)

_DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _DIST_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def trackers() -> Iterator[list[Tracker]]:
    """Collects trackers a test opens and finalises them, so no log handler leaks."""
    opened: list[Tracker] = []
    yield opened
    for tracker in opened:
        tracker.finalize("success")


def _local(opened: list[Tracker], *args, **kwargs) -> LocalTracker:
    tracker = LocalTracker(*args, **kwargs)
    opened.append(tracker)
    return tracker


# -- run folder --------------------------------------------------------------------------


def test_run_folders_are_numbered(tmp_path: Path, trackers: list[Tracker]) -> None:
    runs = tmp_path / "runs"
    assert _local(trackers, runs, "first").run_dir == runs / "0-first"
    assert _local(trackers, runs, "second").run_dir == runs / "1-second"
    assert _local(trackers, runs, "third").run_dir == runs / "2-third"
    (runs / "7-someone-else").mkdir()
    (runs / "12-a-file").write_text("not a folder")
    (runs / "notes").mkdir()
    assert _local(trackers, runs, "after-gap").run_dir == runs / "8-after-gap"


def test_run_folder_layout_and_default_name(tmp_path: Path, trackers: list[Tracker]) -> None:
    tracker = _local(trackers, tmp_path)
    assert re.fullmatch(r"0-run-\d{8}-\d{6}", tracker.run_dir.name)
    assert (tracker.run_dir / "checkpoints").is_dir()
    assert (tracker.run_dir / "images").is_dir()
    assert (tracker.run_dir / "status.txt").read_text() == "running\n"
    assert tracker.status is None


def test_run_name_cannot_escape_the_save_directory(tmp_path: Path, trackers: list[Tracker]) -> None:
    tracker = _local(trackers, tmp_path, "../evil/name")
    assert tracker.run_dir.parent == tmp_path


def test_run_dir_reopens_an_existing_run(tmp_path: Path, trackers: list[Tracker]) -> None:
    first = LocalTracker(tmp_path, "resumable")
    first.log_metrics({"loss": 1.0}, step=1)
    first.finalize("interrupted")

    again = _local(trackers, tmp_path, run_dir=first.run_dir)
    assert again.run_dir == first.run_dir
    assert (again.run_dir / "status.txt").read_text() == "running\n"
    again.log_metrics({"loss": 0.5}, step=2)
    again.flush()
    lines = (again.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0-resumable"]


# -- records -----------------------------------------------------------------------------


def test_metrics_jsonl(tmp_path: Path, trackers: list[Tracker]) -> None:
    tracker = _local(trackers, tmp_path, "m")
    tracker.log_metrics({"train/loss": torch.tensor(0.5), "lr": np.float32(0.25)}, step=10, epoch=0)
    tracker.flush()  # rows are held back until a flush (see test_metric_rows_are_written_*)
    first = (tracker.run_dir / "metrics.jsonl").read_text().splitlines()
    assert json.loads(first[0]) == {"step": 10, "epoch": 0, "train/loss": 0.5, "lr": 0.25}
    tracker.log_metrics({"val/accuracy": 1}, step=12)
    tracker.flush()
    lines = (tracker.run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    second = json.loads(lines[1])
    assert second == {"step": 12, "epoch": None, "val/accuracy": 1.0}
    assert isinstance(second["val/accuracy"], float)


def test_metric_that_is_not_a_number(tmp_path: Path, trackers: list[Tracker]) -> None:
    tracker = _local(trackers, tmp_path, "m")
    with pytest.raises(TypeError, match="metric 'name' must be a number"):
        tracker.log_metrics({"name": "hello"}, step=1)


def test_hparams_and_config_yaml(tmp_path: Path, trackers: list[Tracker]) -> None:
    tracker = _local(trackers, tmp_path, "cfg")
    tracker.log_hyperparams({"lr": 0.1, "path": tmp_path, "layers": (2, 3)})
    tracker.log_hyperparams({"batch_size": 32})
    hparams = yaml.safe_load((tracker.run_dir / "hparams.yaml").read_text())
    assert hparams == {"lr": 0.1, "path": str(tmp_path), "layers": [2, 3], "batch_size": 32}

    config = {"trainer": {"epochs": 3, "callbacks": [{"name": "EarlyStopping"}]}, "model": {}}
    tracker.save_config(config)
    text = (tracker.run_dir / "config.yaml").read_text()
    assert yaml.safe_load(text) == config
    assert text.startswith("trainer:")  # keys keep their order


def test_images_are_pngs(tmp_path: Path, trackers: list[Tracker]) -> None:
    tracker = _local(trackers, tmp_path, "img")

    hwc = np.zeros((5, 7, 3), dtype=np.uint8)
    hwc[0, 0] = (255, 128, 0)
    path = tracker.log_image("val/samples", hwc, step=3)
    assert path == tracker.run_dir / "images" / "val" / "samples" / "3.png"
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (7, 5)
        assert image.mode == "RGB"
        assert image.getpixel((0, 0)) == (255, 128, 0)

    chw = torch.zeros(3, 4, 6)
    chw[1, 0, 0] = 1.0
    path = tracker.log_image("predictions", chw, step=20)
    with Image.open(path) as image:
        assert image.size == (6, 4)
        assert image.getpixel((0, 0)) == (0, 255, 0)

    gray = torch.full((1, 2, 3), 0.5)
    with Image.open(tracker.log_image("gray", gray, step=0)) as image:
        assert image.mode == "L"
        assert image.size == (3, 2)
        assert image.getpixel((0, 0)) == 128


def test_image_tag_cannot_escape_the_run(tmp_path: Path, trackers: list[Tracker]) -> None:
    tracker = _local(trackers, tmp_path, "img")
    path = tracker.log_image("../../outside", np.zeros((2, 2, 3), np.uint8), step=1)
    assert path == tracker.run_dir / "images" / "outside" / "1.png"


def test_artifacts(tmp_path: Path, trackers: list[Tracker]) -> None:
    tracker = _local(trackers, tmp_path / "runs", "art")
    outside = tmp_path / "model.onnx"
    outside.write_bytes(b"onnx bytes")
    copied = tracker.log_artifact(outside, "onnx")
    assert copied == tracker.run_dir / "artifacts" / "model.onnx"
    assert copied.read_bytes() == b"onnx bytes"
    assert outside.exists()

    inside = tracker.run_dir / "checkpoints" / "best.ckpt"
    inside.write_bytes(b"ckpt")
    assert tracker.log_artifact(inside, "checkpoint") == inside.resolve()
    assert not (tracker.run_dir / "artifacts" / "best.ckpt").exists()

    with pytest.raises(FileNotFoundError, match="artifact"):
        tracker.log_artifact(tmp_path / "missing.bin", "blob")


def test_artifacts_inside_the_run_folder_through_links_stay_where_they_are(
    tmp_path: Path, trackers: list[Tracker]
) -> None:
    tracker = _local(trackers, tmp_path / "runs", "art")
    inside = tracker.run_dir / "checkpoints" / "epoch=1.ckpt"
    inside.write_bytes(b"ckpt")
    link = tmp_path / "link-to-run"
    link.symlink_to(tracker.run_dir, target_is_directory=True)
    via_link = link / "checkpoints" / "epoch=1.ckpt"
    assert tracker.log_artifact(via_link, "checkpoint") == inside.resolve()
    assert tracker.log_artifact(link, "folder") == tracker.run_dir.resolve()
    assert not (tracker.run_dir / "artifacts").exists()
    dangling = tracker.run_dir / "checkpoints" / "dangling.ckpt"
    dangling.symlink_to(tmp_path / "gone.ckpt")
    with pytest.raises(FileNotFoundError, match="dangling.ckpt"):
        tracker.log_artifact(dangling, "checkpoint")


# -- log file and finalize -------------------------------------------------------------


def test_library_logs_land_in_log_txt(tmp_path: Path) -> None:
    tracker = LocalTracker(tmp_path, "logs")
    logging.getLogger("busloop").info("hello from the library")
    logging.getLogger("busloop.loop").warning("a child logger too")
    logging.getLogger("elsewhere").error("not ours")
    tracker.finalize("success")
    logging.getLogger("busloop").info("after the run")

    text = (tracker.run_dir / "log.txt").read_text()
    assert re.search(r"^\S+ \S+ INFO busloop: hello from the library$", text, re.M)
    assert "WARNING busloop.loop: a child logger too" in text
    assert "not ours" not in text
    assert "after the run" not in text
    assert "INFO busloop.tracking: Run finished: success" in text
    # the handler is gone and the logger's level is what it was
    assert not any(
        isinstance(h, logging.FileHandler) for h in logging.getLogger("busloop").handlers
    )


def test_finalize_is_idempotent_and_first_call_wins(tmp_path: Path) -> None:
    tracker = LocalTracker(tmp_path, "fin")
    tracker.finalize("failed")
    tracker.finalize("success")
    tracker.finalize("interrupted")
    assert tracker.status == "failed"
    assert (tracker.run_dir / "status.txt").read_text() == "failed\n"
    assert (tracker.run_dir / "log.txt").read_text().count("Run finished") == 1
    with pytest.raises(ValueError, match="success, failed, interrupted"):
        tracker.finalize("done")


def test_context_manager_finalizes_as_failed(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), LocalTracker(tmp_path, "ctx") as tracker:
        raise RuntimeError("boom")
    assert tracker.status == "failed"
    with LocalTracker(tmp_path, "ok") as other:
        pass
    assert other.status == "success"


# -- null, multi, factory ----------------------------------------------------------------


def test_null_tracker_does_nothing(tmp_path: Path) -> None:
    tracker = NullTracker()
    assert tracker.run_dir is None
    tracker.log_hyperparams({"a": 1})
    tracker.log_metrics({"loss": 1.0}, step=1, epoch=0)
    tracker.save_config({"a": 1})
    assert tracker.log_image("x", np.zeros((2, 2, 3), np.uint8), step=1) is None
    assert tracker.log_artifact(tmp_path, "blob") is None
    tracker.finalize("success")
    tracker.finalize("failed")
    assert tracker.status == "success"
    assert list(tmp_path.iterdir()) == []


class _Recorder(Tracker):
    def __init__(self, run_dir: Path | None = None, fail: bool = False) -> None:
        self.run_dir = run_dir
        self.fail = fail
        self.calls: list[tuple] = []

    def _record(self, *call: object) -> None:
        self.calls.append(call)
        if self.fail:
            raise RuntimeError("backend down")

    def log_hyperparams(self, params):
        self._record("hparams", dict(params))

    def log_metrics(self, metrics, step, epoch=None):
        self._record("metrics", dict(metrics), step, epoch)

    def log_image(self, tag, image, step):
        self._record("image", tag, step)
        return None

    def log_artifact(self, path, kind):
        self._record("artifact", path, kind)
        return None

    def _finalize(self, status):
        self._record("finalize", status)


def test_multi_tracker_fans_out(tmp_path: Path) -> None:
    local = LocalTracker(tmp_path, "multi")
    recorder = _Recorder()
    multi = MultiTracker([recorder, local])
    assert multi.run_dir == local.run_dir
    multi.log_hyperparams({"lr": 0.1})
    multi.log_metrics({"loss": 2.0}, step=5, epoch=1)
    path = multi.log_image("samples", np.zeros((2, 2, 3), np.uint8), step=5)
    assert path == local.run_dir / "images" / "samples" / "5.png"
    multi.finalize("interrupted")
    multi.finalize("success")
    assert recorder.calls == [
        ("hparams", {"lr": 0.1}),
        ("metrics", {"loss": 2.0}, 5, 1),
        ("image", "samples", 5),
        ("finalize", "interrupted"),
    ]
    assert local.status == "interrupted"
    assert json.loads((local.run_dir / "metrics.jsonl").read_text())["loss"] == 2.0


def test_multi_tracker_calls_everyone_before_raising() -> None:
    broken, healthy = _Recorder(fail=True), _Recorder()
    multi = MultiTracker([broken, healthy])
    with pytest.raises(RuntimeError, match="backend down"):
        multi.log_metrics({"loss": 1.0}, step=1)
    assert healthy.calls == [("metrics", {"loss": 1.0}, 1, None)]


def test_create_tracker_local_by_default(tmp_path: Path, trackers: list[Tracker]) -> None:
    tracker = create_tracker(str(tmp_path), "job")
    trackers.append(tracker)
    assert isinstance(tracker, LocalTracker)
    assert tracker.run_dir == tmp_path / "0-job"

    resumed = create_tracker(str(tmp_path), backends=["local"], run_dir=tracker.run_dir)
    trackers.append(resumed)
    assert resumed.run_dir == tracker.run_dir


def test_create_tracker_unknown_backend(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        create_tracker(str(tmp_path), backends=["local", "wandb"])
    message = str(info.value)
    assert "'wandb'" in message
    assert "'local', 'tensorboard', 'mlflow'" in message
    assert list(tmp_path.iterdir()) == []


def test_create_tracker_missing_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with pytest.raises(ValueError) as info:
        create_tracker(str(tmp_path), backends=["local", "tensorboard"])
    assert str(info.value) == (
        "tracker.backends: 'tensorboard' needs the tensorboard package: "
        "pip install 'busloop[tensorboard]' (or pip install tensorboard)"
    )
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(
        ValueError, match=r"'mlflow' needs the mlflow package: pip install 'busloop\[mlflow\]'"
    ):
        create_tracker(str(tmp_path), backends=["mlflow"])
    assert list(tmp_path.iterdir()) == []


def test_create_tracker_on_other_ranks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    tracker = create_tracker(str(tmp_path))
    assert isinstance(tracker, NullTracker)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="unknown backend"):
        create_tracker(str(tmp_path), backends=["nope"])


class _FakeSummaryWriter:
    instances: list[_FakeSummaryWriter] = []

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.calls: list[tuple] = []
        self.closed = False
        _FakeSummaryWriter.instances.append(self)

    def add_scalar(self, tag, value, step):
        self.calls.append(("scalar", tag, value, step))

    def add_image(self, tag, image, step, dataformats):
        self.calls.append(("image", tag, image.shape, step, dataformats))

    def add_text(self, tag, text):
        self.calls.append(("text", tag))

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_tensorboard_backend_with_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = _FakeSummaryWriter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    _FakeSummaryWriter.instances.clear()

    tracker = create_tracker(str(tmp_path), "tb", backends=["local", "tensorboard"])
    assert isinstance(tracker, MultiTracker)
    assert tracker.run_dir == tmp_path / "0-tb"
    writer = _FakeSummaryWriter.instances[0]
    assert writer.log_dir == str(tmp_path / "0-tb" / "tensorboard")
    tracker.log_metrics({"train/loss": 0.5}, step=3, epoch=1)
    tracker.log_image("samples", torch.zeros(3, 4, 5), step=3)
    tracker.finalize("success")
    assert ("scalar", "train/loss", 0.5, 3) in writer.calls
    assert ("scalar", "epoch", 1, 3) in writer.calls
    assert ("image", "samples", (4, 5, 3), 3, "HWC") in writer.calls
    assert writer.closed
    assert (tmp_path / "0-tb" / "metrics.jsonl").exists()


def test_mlflow_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple] = []
    fake = types.ModuleType("mlflow")
    fake.active_run = lambda: None  # type: ignore[attr-defined]
    fake.start_run = lambda run_name=None, nested=False: calls.append(("start", run_name))  # type: ignore[attr-defined]
    fake.log_params = lambda params: calls.append(("params", params))  # type: ignore[attr-defined]
    fake.log_metrics = lambda metrics, step: calls.append(("metrics", metrics, step))  # type: ignore[attr-defined]
    fake.log_artifact = lambda path, artifact_path=None: calls.append(("artifact", artifact_path))  # type: ignore[attr-defined]
    fake.end_run = lambda status: calls.append(("end", status))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mlflow", fake)

    tracker = create_tracker(str(tmp_path), "ml", backends=["mlflow"])
    assert tracker.run_dir is None
    tracker.log_hyperparams({"optimizer": {"lr": 0.1}})
    tracker.log_metrics({"val/loss": 0.25}, step=7, epoch=2)
    tracker.log_artifact(tmp_path, "onnx")
    tracker.finalize("interrupted")
    assert calls == [
        ("start", "ml"),
        ("params", {"optimizer.lr": "0.1"}),
        ("metrics", {"val/loss": 0.25, "epoch": 2.0}, 7),
        ("artifact", "onnx"),
        ("end", "KILLED"),
    ]


# -- distributed helpers in a single process ---------------------------------------------


def test_distributed_helpers_without_a_process_group() -> None:
    assert not distributed.is_available_and_initialized()
    assert distributed.rank() == 0
    assert distributed.local_rank() == 0
    assert distributed.world_size() == 1
    assert distributed.is_rank_zero()
    assert not distributed.launched_by_torchrun()
    assert distributed.init_process_group(torch.device("cpu")) is False
    distributed.barrier()
    distributed.destroy_process_group()
    tensor = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce_sum(tensor) is tensor
    assert torch.equal(tensor, torch.tensor([1.0, 2.0]))
    obj = {"run_dir": "runs/0-x"}
    assert distributed.broadcast_object(obj) is obj


def test_distributed_env_and_rank_zero_only(monkeypatch: pytest.MonkeyPatch) -> None:
    @distributed.rank_zero_only
    def write() -> str:
        """Writes something."""
        return "written"

    assert write() == "written"
    assert write.__doc__ == "Writes something."
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert distributed.rank() == 3
    assert distributed.local_rank() == 1
    assert distributed.world_size() == 4
    assert distributed.launched_by_torchrun()
    assert not distributed.is_rank_zero()
    assert write() is None


# -- remote backends that fail (issue #16) ----------------------------------------------


class _Flaky(_Recorder):
    """A stand-in for a remote backend (a fake, not a real server): raises ConnectionError
    while ``down``, as MLflow's client does when its server cannot be reached."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def _record(self, *call: object) -> None:
        if self.down:
            raise ConnectionError("connection refused")
        self.calls.append(call)


def test_guarded_backend_buffers_while_down_and_sends_in_order_when_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from runtime.tracking import GuardedTracker

    backend = _Flaky()
    tracker = GuardedTracker(backend, retry_interval=0.0)
    tracker.log_metrics({"loss": 1.0}, step=1)
    backend.down = True
    with caplog.at_level(logging.INFO, logger="busloop"):
        tracker.log_metrics({"loss": 0.9}, step=2)  # raises inside: buffered, warned
        tracker.log_metrics({"loss": 0.8}, step=3)  # retried and buffered again: no second warning
        backend.down = False
        tracker.log_metrics({"loss": 0.7}, step=4)  # the retry succeeds: everything in order
    assert [c[2] for c in backend.calls] == [1, 2, 3, 4]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "ConnectionError: connection refused" in warnings[0].getMessage()
    assert "reachable again: 3 buffered record(s) sent" in caplog.text
    backend.down = True
    tracker.log_metrics({"loss": 0.6}, step=5)
    tracker.finalize("success")  # the last retry fails too: recorded, not raised
    assert tracker.status == "success" and len(tracker.problems) == 1
    assert "record(s) not sent" in tracker.problems[0] and "_Flaky" in tracker.problems[0]


def test_guarded_backend_drops_the_oldest_beyond_its_buffer() -> None:
    from runtime.tracking import GuardedTracker

    backend = _Flaky()
    backend.down = True
    tracker = GuardedTracker(backend, buffer=3, retry_interval=3600.0)
    for step in range(10):
        tracker.log_metrics({"loss": 1.0}, step=step)
    backend.down = False
    tracker.finalize("success")
    assert [c[2] for c in backend.calls if c[0] == "metrics"] == [7, 8, 9]
    assert "7 record(s) not sent" in tracker.problems[0]


@pytest.mark.parametrize("down_at", ["calls", "start"])
def test_a_failing_remote_tracker_never_stops_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, down_at: str
) -> None:
    """A real fit with the local and "mlflow" backends, where mlflow is a fake module (no
    server can exist here) whose calls raise ConnectionError (a server that went down during
    the run, or was down at its start): the run finishes, the run folder's status.txt says
    success and records the tracker problem."""
    from torch.utils.data import DataLoader, TensorDataset

    from runtime import Runtime

    fake = types.ModuleType("mlflow")
    fake.active_run = lambda: None  # type: ignore[attr-defined]

    def down(*args: object, **kwargs: object) -> None:
        raise ConnectionError("server unreachable")

    fake.start_run = down if down_at == "start" else (lambda run_name=None, nested=False: None)  # type: ignore[attr-defined]
    fake.log_params = fake.log_metrics = fake.log_artifact = fake.end_run = down  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mlflow", fake)

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
    config = {
        "optimizer": {"name": "SGD", "params": {"lr": 0.1}},
        "trainer": {"epochs": 2, "num_sanity_val_steps": 0, "log_every_n_steps": 1},
        "tracker": {"save_directory": str(tmp_path), "run_name": "flaky", "backends": ["local", "mlflow"]},
    }
    rt = Runtime(torch.nn.Linear(4, 2), [], config, loss="torch.nn.functional:cross_entropy")
    with rt:
        state = rt.fit(DataLoader(data, batch_size=8), DataLoader(data, batch_size=8))
    assert state.global_step == 8 and not state.interrupted
    lines = (tmp_path / "0-flaky" / "status.txt").read_text().splitlines()
    assert lines[0] == "success"
    assert "tracker MLflowTracker" in lines[1] and "ConnectionError: server unreachable" in lines[1]
    log_text = (tmp_path / "0-flaky" / "log.txt").read_text()
    if down_at == "start":
        assert "could not start" in lines[1]
    else:
        assert log_text.count("Tracker MLflowTracker failed") == 1
    rows = [json.loads(line) for line in (tmp_path / "0-flaky" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val/loss" in r] == [4, 8]  # the local backend got its records
