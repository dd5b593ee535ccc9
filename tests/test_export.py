"""ExportOnTrainEnd and ``busloop export``: real exports, checked with onnxruntime."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from torch import nn

from callbacks.export import ExportOnTrainEnd
from compat.model_checkpoint import ModelCheckpoint
from conftest import TinyCNN, image_config, make_image_loader
from runtime import Runtime
from runtime.checkpoint import load_checkpoint
from runtime.cli import main


def _fit(tmp_path: Path, model: nn.Module, exporter: dict[str, Any] | None = None, **kw: Any) -> Runtime:
    callbacks = [ModelCheckpoint(subdir="min_val_loss"), ExportOnTrainEnd(preferred_checkpoint="loss", **kw)]
    rt = Runtime(model, callbacks, image_config(tmp_path, **(exporter or {})))
    rt.fit(make_image_loader(48), make_image_loader(32, seed=1))
    rt.close()
    return rt


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_export_matches_pytorch_with_both_exporters(tmp_path: Path, dynamo: bool) -> None:
    model = TinyCNN()
    rt = _fit(tmp_path, model, {"onnx": {"dynamo": dynamo, "output_names": ["logits"]}})
    result = rt.callbacks[-1].result
    assert result is not None and result.passed
    assert result.exporter == ("dynamo" if dynamo else "torchscript")
    assert result.path == rt.run_dir / "export" / "tiny.onnx"
    assert result.checked_on == "a validation batch of 16 samples"

    # independently: the best checkpoint's weights in a fresh model vs onnxruntime, batch 5
    best = TinyCNN(seed=1)
    best.load_state_dict(load_checkpoint(rt.callbacks[0].best_model_path)["state_dict"])
    x = next(iter(make_image_loader(5, batch_size=5, seed=9)))[0]
    expected = best.eval()(x).detach().numpy()
    got = _ort(result.path, x.numpy())
    assert np.abs(got - expected).max() <= 1e-5
    session = ort.InferenceSession(str(result.path))
    assert [o.name for o in session.get_outputs()] == ["logits"]
    assert session.get_inputs()[0].shape[0] == "batch"  # dynamic batch axis

    meta = yaml.safe_load(result.meta_path.read_text())
    assert meta["parity"]["passed"] is True and meta["parity"]["max_abs_diff"] == result.max_abs_diff
    assert meta["input_shape"] == [1, 1, 8, 8] and meta["scale_values"] == [255.0]
    metrics = [line for line in (rt.run_dir / "metrics.jsonl").read_text().splitlines() if "onnx_max_abs" in line]
    assert len(metrics) == 1


def test_model_mode_and_weights_restored_to_best(tmp_path: Path) -> None:
    model = TinyCNN()
    model.features[1].eval()  # a frozen BatchNorm must stay in eval mode
    rt = _fit(tmp_path, model)
    assert model.training  # train mode restored...
    best = load_checkpoint(rt.callbacks[0].best_model_path)["state_dict"]
    assert all(torch.equal(best[k], v) for k, v in model.state_dict().items())  # ...best weights in


class ShapeDependent(nn.Module):
    """Takes a Python branch on the batch size: tracing bakes in the batch-2 branch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.head = nn.Linear(72, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.conv(x).flatten(1))
        return out * 3.0 if x.shape[0] > 2 else out


def test_export_that_differs_from_pytorch_is_marked_failed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uploaded: list[str] = []
    with caplog.at_level(logging.ERROR, logger="busloop"):
        rt = Runtime(ShapeDependent(), [ModelCheckpoint(subdir="min_val_loss"), ExportOnTrainEnd("loss")],
                     image_config(tmp_path))  # fmt: skip
        rt.bus.connect("artifact_produced", lambda runtime, kind, path: uploaded.append(kind))
        rt.fit(make_image_loader(48), make_image_loader(32, seed=1))
    result = rt.callbacks[-1].result
    assert result is not None and not result.passed and result.max_abs_diff > 1e-2
    assert result.path.is_file()  # kept for inspection
    assert "export FAILED verification" in caplog.text and "file is kept" in caplog.text
    assert uploaded == []  # nothing announced or uploaded
    assert yaml.safe_load(result.meta_path.read_text())["parity"]["passed"] is False
    assert not (rt.run_dir / "artifacts").exists()


def test_export_without_a_checkpoint_is_skipped_with_what_to_configure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="busloop"):
        rt = Runtime(TinyCNN(), [ExportOnTrainEnd()], image_config(tmp_path))
        rt.fit(make_image_loader(32), make_image_loader(16, seed=1))
    assert rt.callbacks[0].result is None
    assert "no best checkpoint" in caplog.text and "trainer.main_metric" in caplog.text
    assert not (rt.run_dir / "export").exists()


def test_static_batch_and_simplified_export(tmp_path: Path) -> None:
    rt = _fit(tmp_path, TinyCNN(), {"onnx": {"dynamic_batch": False, "simplify": True}})
    result = rt.callbacks[-1].result
    assert result is not None and result.passed
    assert "one at a time" in result.checked_on
    assert ort.InferenceSession(str(result.path)).get_inputs()[0].shape == [1, 1, 8, 8]


def test_input_shape_that_does_not_fit_the_data_is_a_config_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="busloop"):
        rt = _fit(tmp_path, TinyCNN(), {"input_shape": [3, 8, 8]})
    assert rt.callbacks[-1].result is None
    assert "exporter.input_shape: [3, 8, 8] does not match the validation data" in caplog.text


def test_busloop_export_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "job.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"factory": "runtime.examples.digits:build_model", "params": {"channels": 4}},
        "data": {"factory": "runtime.examples.digits:build_loaders"},
        "optimizer": {"name": "AdamW", "params": {"lr": 0.003}},
        "trainer": {"epochs": 1, "rich_logging": False, "smart_cfg_auto_populate": False},
        "tracker": {"save_directory": str(tmp_path / "runs"), "run_name": "cli"},
    }))  # fmt: skip
    assert main(["train", str(cfg)]) == 0
    ckpt = next((tmp_path / "runs").glob("0-cli/checkpoints/min_val_loss/*.ckpt"))
    capsys.readouterr()
    assert main(["export", str(cfg), "--weights", str(ckpt), "exporter.name=digits4"]) == 0
    out = capsys.readouterr().out
    onnx_path = tmp_path / "runs" / "1-cli" / "export" / "digits4.onnx"
    assert str(onnx_path) in out and "max abs diff vs PyTorch" in out
    assert ort.InferenceSession(str(onnx_path)).get_inputs()[0].shape == ["batch", 1, 8, 8]
    assert (tmp_path / "runs" / "1-cli" / "status.txt").read_text().strip() == "success"

    assert main(["export", str(cfg), "--weights", str(tmp_path / "nope.ckpt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["export", str(cfg), "--weights", str(ckpt), "exporter.tolerance=-1"]) == 2
    assert "exporter.tolerance: must be > 0" in capsys.readouterr().err
    assert main(["export", str(cfg), "--weights", str(ckpt), "exporter.onnx.input_names=[a, b]"]) == 2
    err = capsys.readouterr().err
    assert "exporter.onnx.input_names" in err and "Traceback" not in err
