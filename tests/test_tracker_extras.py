"""The tensorboard and mlflow extras against the real packages, and the digits job with
Export, Archive, Convert (fp16, int8) and Grad-CAM end to end (the issue's check)."""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from callbacks import ExportOnTrainEnd, GradCamCallback, MetadataLogger
from callbacks.archive import ArchiveConfig
from compat.model_checkpoint import ModelCheckpoint
from conftest import TinyCNN, image_config, make_image_loader
from runtime import Runtime
from runtime.checkpoint import load_checkpoint
from runtime.cli import main
from runtime.examples.digits import build_loaders, build_model


def test_tensorboard_event_file_has_scalars_and_images(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = image_config(tmp_path)
    cfg["tracker"]["backends"] = ["local", "tensorboard"]
    rt = Runtime(TinyCNN(), [GradCamCallback(target_layer=5)], cfg)
    rt.fit(make_image_loader(32), make_image_loader(16, seed=1))
    rt.close()
    events = EventAccumulator(str(rt.run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert "val/loss" in tags["scalars"] and "gradcam/val_batch_0" in tags["images"]
    (image,) = events.Images("gradcam/val_batch_0")
    assert image.step == 2 and image.encoded_image_string.startswith(b"\x89PNG")
    (val_loss,) = events.Scalars("val/loss")
    logged = [json.loads(line) for line in (rt.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert val_loss.value == pytest.approx(next(r["val/loss"] for r in logged if "val/loss" in r))


def test_mlflow_file_store_gets_params_metrics_and_the_exported_artifacts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store opt-in
    cfg = image_config(tmp_path)
    cfg["tracker"]["backends"] = ["local", "mlflow"]
    callbacks = [MetadataLogger(hyperparams=["optimizer.params.lr"]), ModelCheckpoint(subdir="min_val_loss"),
                 ExportOnTrainEnd("loss")]  # fmt: skip
    from callbacks import ArchiveOnTrainEnd

    callbacks.append(ArchiveOnTrainEnd("loss"))
    rt = Runtime(TinyCNN(), callbacks, cfg)
    rt.fit(make_image_loader(32), make_image_loader(16, seed=1))
    rt.close()
    run = MlflowClient().get_run(rt.tracker.trackers[1].run.info.run_id)  # type: ignore[union-attr]
    assert run.info.status == "FINISHED"
    assert run.data.params["optimizer.params.lr"] == "0.1"
    assert "val/loss" in run.data.metrics and "export/onnx_max_abs_diff" in run.data.metrics
    client = MlflowClient()
    assert [a.path for a in client.list_artifacts(run.info.run_id, "onnx")] == ["onnx/tiny.onnx"]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "archive")] == ["archive/tiny.onnx.tar.xz"]
    assert mlflow.active_run() is None


@pytest.mark.parametrize("backend", ["tensorboard", "mlflow"])
def test_a_missing_tracker_package_exits_2_with_the_pip_command(
    backend: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard" if backend == "tensorboard" else "mlflow", None)
    assert main(["train", f"tracker.backends=[local, {backend}]", "trainer.epochs=1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.splitlines()[-1] == (
        f"busloop: error: tracker.backends: '{backend}' needs the {backend} package: "
        f"pip install 'busloop[{backend}]' (or pip install {backend})"
    )


@pytest.mark.slow
def test_digits_job_exports_archives_converts_and_explains(tmp_path: Path) -> None:
    """`busloop train` on the digits job with Export, Archive, Convert (fp16, int8), GradCam."""
    callbacks = ("[{name: ExportOnTrainEnd}, {name: ArchiveOnTrainEnd}, {name: GradCamCallback, "
                 "params: {target_layer: 7, class_idx: 3}}, "
                 "{name: ConvertOnTrainEnd, params: {converters: [fp16, int8]}}]")  # fmt: skip
    assert main(["train", "trainer.epochs=3", "trainer.rich_logging=false",
                 f"trainer.callbacks={callbacks}"]) == 0  # fmt: skip
    run = tmp_path / "runs" / "0-digits"
    export = run / "export"
    assert sorted(p.name for p in export.iterdir()) == [
        "digits.fp16.onnx", "digits.int8.onnx", "digits.onnx", "digits.yaml"
    ]  # fmt: skip

    # the best checkpoint in PyTorch vs each ONNX file in onnxruntime, on the validation data
    model = build_model().eval()
    best = next((run / "checkpoints" / "best_val_metric").glob("*.ckpt"))
    model.load_state_dict(load_checkpoint(best)["state_dict"])
    images = torch.cat([batch[0] for batch in build_loaders(batch_size=128)["val"]])
    with torch.no_grad():
        expected = model(images).numpy()
    diffs = {}
    for name in ("digits", "digits.fp16", "digits.int8"):
        session = ort.InferenceSession(str(export / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": images.numpy()})[0]
        diffs[name] = float(np.abs(got - expected).max())
        assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.98
    assert diffs["digits"] <= 1e-3 and diffs["digits.fp16"] <= 0.05 and diffs["digits.int8"] <= 1.0

    archive = run / "archive" / "digits.onnx.tar.xz"
    with tarfile.open(archive) as tar:
        data = json.load(tar.extractfile("config.json"))  # type: ignore[arg-type]
    assert ArchiveConfig.from_dict(data).to_dict() == data
    assert data["model"]["heads"][0]["metadata"]["classes"] == [str(i) for i in range(10)]
    pngs = sorted((run / "images" / "gradcam").rglob("*.png"))
    assert [p.relative_to(run / "images").as_posix() for p in pngs][:1] == ["gradcam/val_batch_0/20.png"]
    assert len(pngs) == 3  # one batch per validation epoch
    log = (run / "log.txt").read_text()
    assert "Artifact (onnx-int8)" in log and (run / "status.txt").read_text().strip() == "success"
