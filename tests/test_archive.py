"""NN Archive: config validation, building from a real ONNX file, the tarball, safe extraction
(with crafted malicious tarballs), and the ``busloop archive`` commands."""

from __future__ import annotations

import copy
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from callbacks.archive import (
    ArchiveConfig,
    ArchiveError,
    ArchiveOnTrainEnd,
    build_config,
    read_config,
    safe_extract,
    write_archive,
)
from callbacks.archive.config import infer_layout
from callbacks.export import ExportOnTrainEnd
from compat.model_checkpoint import ModelCheckpoint
from conftest import TinyCNN, image_config, make_image_loader
from runtime import Runtime
from runtime.cli import main
from runtime.config import ConfigError, load_config

VALID: dict[str, Any] = {
    "config_version": "1.0",
    "model": {
        "metadata": {"name": "m", "path": "m.onnx"},
        "inputs": [{"name": "image", "dtype": "float32", "input_type": "image", "shape": [1, 3, 8, 8],
                    "preprocessing": {"mean": [0, 0, 0], "scale": [255, 255, 255]}}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [1, 4]}],
        "heads": [{"parser": "ClassificationParser", "outputs": ["logits"],
                   "metadata": {"classes": ["a", "b", "c", "d"], "n_classes": 4, "is_softmax": False}}],
    },
}  # fmt: skip


def _edit(path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(VALID)
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value
    return data


def test_valid_config_round_trips_and_defaults_are_filled() -> None:
    config = ArchiveConfig.from_dict(VALID)
    assert config.model.inputs[0].layout == "NCHW"
    assert config.model.outputs[0].layout == "NC"  # inferred from the shape
    assert config.model.metadata.precision == "float32"
    again = ArchiveConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and list(config.to_dict()) == ["config_version", "model"]


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("model.inputs.0.layout", "nchw", "model.inputs.0: layout 'nchw': use upper-case letters"),
        ("model.inputs.0.layout", "NCCW", "a letter is repeated"),
        ("model.inputs.0.layout", "NCH", "has 3 letters for shape [1, 3, 8, 8]"),
        ("model.inputs.0.layout", "CNHW", "N (batch) must come first"),
        ("model.inputs.0.shape", [], "model.inputs.0.shape: the shape must not be empty"),
        ("model.inputs.0.dtype", "float", "model.inputs.0.dtype: 'float' is not one of int4"),
        ("model.inputs.0.input_type", "video", "model.inputs.0.input_type: 'video' is not one of raw, image"),
        ("model.outputs.0.shape", None, "output 'logits': a layout needs a shape"),
        ("model.heads.0.metadata.n_classes", 3, "n_classes is 3 but 4 classes are named"),
        ("model.heads.0.metadata.conf_threshold", 1.5, "conf_threshold: must be between 0 and 1"),
        ("model.heads.0.outputs", ["nope"], "unknown outputs ['nope']"),
        ("model.heads.0.metadata", {}, "metadata needs classes, n_classes, is_softmax"),
        ("config_version", "2.0", "config_version: '2.0' is not one of 1.0"),
        ("model.inputs.0.preprocessing.mean", [0.5], "preprocessing.mean: 1 values for 3 channels"),
        ("model.inputs.0.colour", "red", "model.inputs.0.colour: unknown key"),
    ],
)
def test_every_rule_is_checked(path: str, value: Any, message: str) -> None:
    data = _edit(path, value)
    if path == "model.outputs.0.shape":
        data["model"]["outputs"][0]["layout"] = "NC"
    with pytest.raises(ConfigError) as info:
        ArchiveConfig.from_dict(data)
    assert message in str(info.value)


def test_image_input_needs_channels() -> None:
    with pytest.raises(ConfigError, match="an image input needs a C"):
        ArchiveConfig.from_dict(_edit("model.inputs.0", {**VALID["model"]["inputs"][0], "layout": "NHWD"}))
    raw = {"name": "x", "dtype": "float32", "input_type": "raw", "shape": [1, 8], "layout": "NF"}
    assert ArchiveConfig.from_dict(_edit("model.inputs.0", raw)).model.inputs[0].layout == "NF"


@pytest.mark.parametrize(
    ("shape", "layout"),
    [([1, 3, 8, 8], "NCHW"), ([1, 8, 8, 3], "NHWC"), ([1, 10], "NC"), ([4, 5, 6], "CHW"), ([6, 5, 4], "HWC"),
     ([5, 4, 6], "CDE"), ([1, 5, 5, 5], "NCDE")],
)
def test_layout_inference(shape: list[int], layout: str) -> None:
    assert infer_layout(shape) == layout


@pytest.fixture
def exported(tmp_path: Path) -> tuple[Runtime, Path]:
    """A real TinyCNN training run with Export and Archive (1 epoch)."""
    cfg = image_config(tmp_path, name="tiny")
    cfg["trainer"]["preprocessing"] = {"normalize": {"params": {"mean": [0.5], "std": [0.25]}}}
    callbacks = [ModelCheckpoint(subdir="min_val_loss"), ExportOnTrainEnd("loss"), ArchiveOnTrainEnd("loss")]
    rt = Runtime(TinyCNN(), callbacks, cfg)
    rt.fit(make_image_loader(48), make_image_loader(32, seed=1))
    rt.close()
    assert rt.callbacks[2].archive_path is not None
    return rt, rt.callbacks[2].archive_path


def test_archive_on_train_end_writes_the_reference_format(exported: tuple[Runtime, Path]) -> None:
    rt, archive = exported
    assert archive == rt.run_dir / "archive" / "tiny.onnx.tar.xz"
    with tarfile.open(archive, "r:xz") as tar:
        assert sorted(tar.getnames()) == ["config.json", "tiny.onnx"]
        text = tar.extractfile("config.json").read().decode()  # type: ignore[union-attr]
    assert text.startswith('{\n    "config_version": "1.0"')  # indent 4
    data = json.loads(text)
    assert ArchiveConfig.from_dict(data).to_dict() == data  # round-trips through the attrs classes
    model = data["model"]
    assert model["metadata"] == {"name": "tiny", "path": "tiny.onnx", "precision": "float32"}
    (image,) = model["inputs"]
    assert image["shape"] == [0, 1, 8, 8] and image["layout"] == "NCHW" and image["input_type"] == "image"
    assert image["preprocessing"]["mean"] == [127.5] and image["preprocessing"]["scale"] == [63.75]
    assert image["preprocessing"]["dai_type"] == "GRAY8"
    assert model["outputs"] == [{"name": "output", "dtype": "float32", "shape": [0, 3], "layout": "NC"}]
    (head,) = model["heads"]
    assert head["parser"] == "ClassificationParser" and head["outputs"] == ["output"]
    assert head["metadata"] == {"classes": ["c0", "c1", "c2"], "n_classes": 3, "is_softmax": False}
    assert read_config(archive).to_dict() == data


def test_heads_and_preprocessing_overrides(exported: tuple[Runtime, Path], tmp_path: Path) -> None:
    rt, _ = exported
    onnx_path = rt.callbacks[1].result.path
    cfg = load_config(None, ["exporter.mean_values=[1.5]", "exporter.scale_values=[2]"])
    heads = ArchiveConfig.from_dict(_edit("model.heads.0.outputs", None)).model.heads
    config = build_config(onnx_path, cfg, name="x", heads=heads)
    assert config.model.inputs[0].preprocessing.mean == [1.5]
    assert config.model.heads is not None and config.model.heads[0].metadata.n_classes == 4
    with pytest.raises(ArchiveError, match="metadata.path is 'tiny.onnx', the model file 'other.onnx'"):
        write_archive(onnx_path.with_name("other.onnx"), config, tmp_path)
    bad = load_config(None, ["exporter.mean_values=[1, 2]"])
    with pytest.raises(ConfigError, match="2 values for an input with 1 channel"):
        build_config(onnx_path, bad, name="x")


def test_archive_commands_inspect_and_extract(
    exported: tuple[Runtime, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, archive = exported
    assert main(["archive", "inspect", str(archive)]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["metadata"]["name"] == "tiny"
    assert main(["archive", "extract", str(archive), str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "tiny.onnx"]
    assert main(["archive", "inspect", str(tmp_path / "missing.tar.xz")]) == 2
    assert "archive not found" in capsys.readouterr().err


def _tarball(path: Path, members: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            data = b"owned" if member.isfile() else None
            if data is not None:
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([_member("config.json"), _member("/tmp/busloop-owned")], "'/tmp/busloop-owned' has an absolute path"),
        ([_member("config.json"), _member("../outside.txt")], "'../outside.txt' would be written outside"),
        ([_member("a/../../outside.txt")], "would be written outside the target folder"),
        ([_member("link", tarfile.SYMTYPE, "../../etc")], "'link' is a link that points outside"),
        ([_member("abs", tarfile.SYMTYPE, "/etc/passwd")], "'abs' is a link to an absolute path"),
        ([_member("hard", tarfile.LNKTYPE, "../outside.txt")], "'hard' is a link that points outside"),
        ([_member("inside", tarfile.SYMTYPE, "."), _member("inside/x.txt")], "goes through the link 'inside'"),
        ([_member("dev", tarfile.CHRTYPE)], "'dev' is a device or special file"),
    ],
)
def test_malicious_archives_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], members: list[tarfile.TarInfo], message: str
) -> None:
    archive = _tarball(tmp_path / "evil.tar.gz", members)
    dest = tmp_path / "box" / "dest"
    with pytest.raises(ArchiveError) as info:
        safe_extract(archive, dest)
    assert message in str(info.value) and "nothing was extracted" in str(info.value)
    assert list(dest.iterdir()) == [] and not (tmp_path / "box" / "outside.txt").exists()
    assert main(["archive", "extract", str(archive), str(dest)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("busloop: error: ") and message in err and "Traceback" not in err


def test_links_inside_the_folder_are_allowed(tmp_path: Path) -> None:
    archive = _tarball(tmp_path / "ok.tar.gz", [_member("dir/file.txt"), _member("dir/alias", tarfile.SYMTYPE, "file.txt")])
    safe_extract(archive, tmp_path / "dest")
    assert (tmp_path / "dest" / "dir" / "alias").read_bytes() == b"owned"


def test_reading_broken_archives(tmp_path: Path) -> None:
    (tmp_path / "junk.tar.xz").write_bytes(b"not a tar")
    with pytest.raises(ArchiveError, match="is not a readable tar archive"):
        read_config(tmp_path / "junk.tar.xz")
    no_config = _tarball(tmp_path / "plain.tar.gz", [_member("model.onnx")])
    with pytest.raises(ArchiveError, match="no top-level config.json; not an NN Archive"):
        read_config(no_config)
    bad = tmp_path / "bad.tar.gz"
    text = json.dumps(_edit("model.inputs.0.layout", "CHWN")).encode()
    with tarfile.open(bad, "w:gz") as tar:
        info = tarfile.TarInfo("config.json")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
    with pytest.raises(ArchiveError, match=r"invalid config.json:\nmodel.inputs.0: layout 'CHWN'"):
        read_config(bad)
