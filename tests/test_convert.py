"""ConvertOnTrainEnd and the converter plugins: fp16 and int8 checked with onnxruntime, the
remote plugins' clear errors, the plugin registry, and the default-set rules."""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import onnx
import pytest

from callbacks import build_callbacks
from callbacks.convert import ConvertOnTrainEnd
from callbacks.converters import CONVERTERS, Conversion, ConversionJob, register_converter
from callbacks.defaults import AUTO_POPULATED
from callbacks.export import ExportOnTrainEnd
from compat.model_checkpoint import ModelCheckpoint
from conftest import TinyCNN, image_config, make_image_loader
from runtime import Runtime
from runtime.config import ConfigError, load_config


def _convert(tmp_path: Path, converters: list[Any], *overrides: str) -> Runtime:
    cfg = load_config(image_config(tmp_path), list(overrides))
    rt = Runtime(TinyCNN(), [ModelCheckpoint(subdir="min_val_loss"), ConvertOnTrainEnd("loss", converters)], cfg)
    rt.fit(make_image_loader(48), make_image_loader(32, seed=1))
    rt.close()
    return rt


def test_fp16_and_int8_are_real_and_checked_against_fp32(tmp_path: Path) -> None:
    rt = _convert(tmp_path, ["fp16", {"name": "int8", "params": {"weight_type": "QUInt8"}}])
    convert = rt.callbacks[-1]
    assert convert.errors == []
    fp16, int8 = convert.conversions
    export = rt.run_dir / "export"
    assert (fp16.path, int8.path) == (export / "tiny.fp16.onnx", export / "tiny.int8.onnx")
    graph16 = onnx.load(str(fp16.path)).graph
    assert {init.data_type for init in graph16.initializer} >= {onnx.TensorProto.FLOAT16}
    ops8 = {node.op_type for node in onnx.load(str(int8.path)).graph.node}
    assert {"DynamicQuantizeLinear", "ConvInteger"} <= ops8
    for result in (fp16, int8):
        assert result.passed and result.max_abs_diff is not None and result.max_abs_diff > 0
        assert result.top1_agreement is not None and result.top1_agreement >= 0.9
    assert fp16.max_rel_diff is not None and fp16.max_rel_diff < 1e-2
    assert (rt.run_dir / "archive" / "tiny.onnx.tar.xz").is_file()
    lines = (rt.run_dir / "metrics.jsonl").read_text()
    assert "export/fp16_max_abs_diff" in lines and "export/int8_max_abs_diff" in lines


def test_a_conversion_that_misses_its_tolerance_is_kept_but_not_published(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="busloop"):
        rt = _convert(tmp_path, [{"name": "int8", "params": {"tolerance": 1e-9}}])
    (int8,) = rt.callbacks[-1].conversions
    assert not int8.passed and int8.path.is_file()
    assert "int8 FAILED its check" in caplog.text


@pytest.fixture
def no_remote_sdks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The remote SDKs are absent (None in sys.modules makes their import fail)."""
    monkeypatch.setitem(sys.modules, "blobconverter", None)
    monkeypatch.setitem(sys.modules, "hubai_sdk", None)


def test_missing_remote_sdks_give_one_clear_error_each_and_keep_everything(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, no_remote_sdks: None
) -> None:
    with caplog.at_level(logging.ERROR, logger="busloop"):
        rt = _convert(tmp_path, ["fp16"], "exporter.blobconverter.active=true",
                      "exporter.hubai.active=true", "exporter.hubai.platform=rvc4")  # fmt: skip
    convert = rt.callbacks[-1]
    assert convert.errors == [
        "blobconverter: the blobconverter package is not installed (pip install blobconverter)",
        "hubai: the hubai-sdk package is not installed (pip install hubai-sdk)",
    ]
    assert [c.converter for c in convert.conversions] == ["fp16"]  # the local one still ran
    assert convert.export.path.is_file() and convert.archive_path.is_file()
    assert f"the ONNX model {convert.export.path} and the archive {convert.archive_path} are kept" in caplog.text
    assert (rt.run_dir / "status.txt").read_text().strip() == "success"


def _fake_hubai(monkeypatch: pytest.MonkeyPatch, error: Exception | None) -> list[dict[str, Any]]:
    """A stand-in for hubai_sdk: the real SDK talks to Luxonis' service, unreachable here."""
    calls: list[dict[str, Any]] = []

    class Convert:
        def RVC4(self, **kwargs: Any) -> Any:  # noqa: N802 - the SDK's spelling
            calls.append(kwargs)
            if error is not None:
                raise error
            return types.SimpleNamespace(downloaded_path=str(Path(kwargs["path"]).with_suffix(".dlc")))

    sdk = types.ModuleType("hubai_sdk")
    sdk.HubAIClient = lambda api_key: types.SimpleNamespace(convert=Convert())  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "hubai_sdk", sdk)
    return calls


def test_hubai_needs_a_key_a_platform_and_the_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _fake_hubai(monkeypatch, ConnectionError("Name or service not known"))
    monkeypatch.delenv("HUBAI_API_KEY", raising=False)
    rt = _convert(tmp_path, [], "exporter.hubai.active=true")
    assert rt.callbacks[-1].errors == ["hubai: the HUBAI_API_KEY environment variable is not set"]
    monkeypatch.setenv("HUBAI_API_KEY", "k")
    rt = _convert(tmp_path, [], "exporter.hubai.active=true")
    assert rt.callbacks[-1].errors == ["hubai: exporter.hubai.platform is not set (rvc2, rvc3 or rvc4)"]
    rt = _convert(tmp_path, [], "exporter.hubai.active=true", "exporter.hubai.platform=rvc4")
    assert rt.callbacks[-1].errors == [
        "hubai: the HubAI service failed or is unreachable (ConnectionError: Name or service not known)"
    ]
    assert calls == [{"path": str(rt.callbacks[-1].archive_path), "name": "tiny"}]  # the archive is sent


def test_blobconverter_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, Any]] = []

    def from_onnx(**kwargs: Any) -> str:  # stands in for the remote blobconverter service
        sent.append(kwargs)
        raise OSError("Network is unreachable")

    monkeypatch.setitem(sys.modules, "blobconverter", types.SimpleNamespace(from_onnx=from_onnx))
    rt = _convert(tmp_path, [], "exporter.blobconverter.active=true", "exporter.reverse_input_channels=true")
    assert rt.callbacks[-1].errors == [
        "blobconverter: the conversion service failed or is unreachable (OSError: Network is unreachable)"
    ]
    (call,) = sent
    assert call["shaves"] == 6 and call["data_type"] == "FP16" and call["version"] == "2022.1"
    assert call["optimizer_params"] == ["--mean_values=[0.0]", "--scale_values=[255.0]", "--reverse_input_channels"]


@attrs.define
class Doubler:
    """A plugin for the test: writes a copy of the model and checks nothing."""

    suffix: str = "copy"
    name: str = "doubler"

    def convert(self, job: ConversionJob) -> Conversion:
        target = job.out_dir / f"{job.onnx_path.stem}.{self.suffix}.onnx"
        target.write_bytes(job.onnx_path.read_bytes())
        assert job.sample is not None and isinstance(job.sample, np.ndarray)
        return Conversion(self.name, target, "onnx-copy")


def test_converter_plugins_register_and_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(CONVERTERS, "doubler", Doubler)
    assert register_converter("doubler")(Doubler) is Doubler
    kinds: list[str] = []
    cfg = load_config(image_config(tmp_path))
    rt = Runtime(TinyCNN(), [ModelCheckpoint(subdir="min_val_loss"),
                              ConvertOnTrainEnd("loss", [{"name": "doubler", "params": {"suffix": "x"}}])], cfg)  # fmt: skip
    rt.bus.connect("artifact_produced", lambda runtime, kind, path: kinds.append(kind))
    rt.fit(make_image_loader(32), make_image_loader(16, seed=1))
    assert kinds == ["onnx", "archive", "onnx-copy"]
    assert (rt.run_dir / "export" / "tiny.x.onnx").is_file()


@pytest.mark.parametrize(
    ("converters", "message"),
    [
        (["fp61"], "ConvertOnTrainEnd.converters.0: unknown converter 'fp61'; did you mean 'fp16'?; registered: blobconverter, fp16, hubai, int8"),
        ([{"name": "int8", "params": {"tolerence": 1}}], "ConvertOnTrainEnd.converters.0.params.tolerence"),
        ([{"name": "int8", "param": {}}], "unknown key(s) ['param']"),
        ([3], "expected a converter name or {name, params}, got 3"),
    ],
)
def test_bad_converter_entries_are_config_errors(converters: list[Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        ConvertOnTrainEnd(converters=converters)
    assert message in str(info.value)


def test_convert_is_auto_populated_and_switches_export_and_archive_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert AUTO_POPULATED[-1] == "ConvertOnTrainEnd"
    entries = "[{name: ExportOnTrainEnd}, {name: ArchiveOnTrainEnd}, {name: ExportOnTrainEnd, active: false}]"
    with caplog.at_level(logging.WARNING, logger="busloop"):
        names = [type(c).__name__ for c in build_callbacks(load_config(None, [f"trainer.callbacks={entries}"]))]
    assert "ExportOnTrainEnd" not in names and "ArchiveOnTrainEnd" not in names
    assert names[-1] == "ConvertOnTrainEnd"
    assert caplog.text.count("ConvertOnTrainEnd is active: switching off") == 2
    off = load_config(None, [f"trainer.callbacks={entries}", "trainer.smart_cfg_auto_populate=false"])
    assert [type(c).__name__ for c in build_callbacks(off)][-2:] == ["ExportOnTrainEnd", "ArchiveOnTrainEnd"]
    inactive = load_config(None, ["trainer.callbacks=[{name: ExportOnTrainEnd}, {name: ConvertOnTrainEnd, active: false}]"])
    names = [type(c).__name__ for c in build_callbacks(inactive)]
    assert "ExportOnTrainEnd" in names and "ConvertOnTrainEnd" not in names


def test_export_result_is_reused_by_convert(tmp_path: Path) -> None:
    cfg = load_config(image_config(tmp_path))
    export, convert = ExportOnTrainEnd("loss"), ConvertOnTrainEnd("loss")
    rt = Runtime(TinyCNN(), [ModelCheckpoint(subdir="min_val_loss"), export, convert], cfg)
    rt.fit(make_image_loader(32), make_image_loader(16, seed=1))
    assert convert.export is export.result
