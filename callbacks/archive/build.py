"""Build an NN Archive ``config.json`` for an exported ONNX file.

Names, dtypes and shapes come from the ONNX graph (dynamic dims as 0); image inputs (four
dims) get layout NCHW and the preprocessing of :func:`callbacks.export.mean_scale` (from the
normalisation config x 255, or ``exporter.mean_values`` / ``scale_values``) with the
channel order (``exporter.reverse_input_channels``) and the DepthAI frame type. Heads come
from the ``heads`` argument, else from what the model declares:

* ``model.archive_heads``: a list of heads in the archive's own form
  (``{parser, metadata, outputs}``), used as given;
* or ``model.task`` ("classification", "segmentation", "detection") with ``model.classes``
  (class names) and optional ``model.head_metadata`` (e.g. ``is_softmax``,
  ``conf_threshold``) for a ClassificationParser / SegmentationParser / YOLO head.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from callbacks.archive.config import (
    ArchiveConfig,
    Head,
    HeadMetadata,
    Input,
    Metadata,
    Model,
    Output,
    PreprocessingBlock,
    infer_layout,
)
from callbacks.export import mean_scale
from callbacks.onnx_tools import TensorInfo, graph_io
from runtime.config import Config, ConfigError
from runtime.config_convert import structure

__all__ = ["TASK_PARSERS", "build_config", "heads_of"]

#: The parser each declared task gets, and its metadata defaults.
TASK_PARSERS: dict[str, tuple[str, dict[str, Any]]] = {
    "classification": ("ClassificationParser", {"is_softmax": False}),
    "segmentation": ("SegmentationParser", {"is_softmax": False, "background_class": False}),
    "detection": ("YOLO", {"iou_threshold": 0.45, "conf_threshold": 0.25, "max_det": 300}),
}


def _layout(shape: tuple[int, ...]) -> str:
    """Layout of a graph tensor; a dynamic (0) leading dim is the batch, as a leading 1."""
    return infer_layout([1, *shape[1:]] if shape and shape[0] == 0 else list(shape))


def _input(info: TensorInfo, config: Config) -> Input:
    shape = list(info.shape)
    if len(shape) != 4:
        return Input(info.name, info.dtype, "raw", shape, _layout(info.shape))
    channels = shape[1]
    mean, scale = mean_scale(config, channels)
    reverse = config.exporter.reverse_input_channels
    dai_type = "GRAY8" if channels == 1 else ("BGR888p" if reverse else "RGB888p")
    preprocessing = PreprocessingBlock(
        mean=mean, scale=scale, reverse_channels=reverse, interleaved_to_planar=False,
        dai_type=dai_type,
    )  # fmt: skip
    return Input(info.name, info.dtype, "image", shape, "NCHW", preprocessing)


def heads_of(model: Any, output_names: Sequence[str]) -> list[Head] | None:
    """The heads a model declares (see the module docstring), or None."""
    declared = getattr(model, "archive_heads", None)
    if declared is not None:
        return structure(list(declared), list[Head])
    task = getattr(model, "task", None)
    if task is None:
        return None
    if task not in TASK_PARSERS:
        raise ConfigError(
            f"model.task: {task!r} has no archive head; use one of {', '.join(TASK_PARSERS)} "
            "or declare model.archive_heads"
        )
    parser, defaults = TASK_PARSERS[task]
    classes = [str(c) for c in getattr(model, "classes", None) or ()]
    if not classes:
        raise ConfigError(f"model.classes: a {task} model needs its class names for the archive head")
    metadata = {**defaults, "classes": classes, "n_classes": len(classes)}
    metadata.update(getattr(model, "head_metadata", None) or {})
    return [Head(parser, structure(metadata, HeadMetadata), outputs=list(output_names))]


def build_config(
    onnx_path: Path,
    config: Config,
    *,
    name: str,
    heads: list[Head] | None = None,
    model: Any = None,
) -> ArchiveConfig:
    """The archive config for ``onnx_path``; ``heads`` win over what ``model`` declares."""
    inputs, outputs = graph_io(onnx_path)
    archive_outputs = [
        Output(o.name, o.dtype, list(o.shape), _layout(o.shape)) for o in outputs
    ]
    if heads is None and model is not None:
        heads = heads_of(model, [o.name for o in outputs])
    return ArchiveConfig(
        Model(
            Metadata(name, onnx_path.name, inputs[0].dtype if inputs else "float32"),
            [_input(i, config) for i in inputs],
            archive_outputs,
            heads,
        )
    )
