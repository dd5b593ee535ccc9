"""The NN Archive ``config.json`` (config_version "1.0") as typed attrs classes.

Every rule of the format is a validator, so an invalid config cannot be built, written or
read back: dtype names (:data:`DATA_TYPES`), input types, non-empty input shapes, layouts
(upper-case letters, none repeated, as long as the shape, N first when present, image inputs
with C), output layouts only with a shape (inferred from it when missing), head metadata
(``n_classes == len(classes)``, thresholds in [0, 1], what each parser needs).

:meth:`ArchiveConfig.from_dict` / :meth:`ArchiveConfig.to_dict` convert to and from the JSON
data with busloop's strict converter: unknown keys and wrong types are errors that name the
key path (``model.inputs.0.layout: ...``).
"""

from __future__ import annotations

from typing import Any

import attrs

from runtime.config_convert import converter, structure

__all__ = [
    "DATA_TYPES",
    "ArchiveConfig",
    "Head",
    "HeadMetadata",
    "Input",
    "Metadata",
    "Model",
    "Output",
    "PreprocessingBlock",
    "infer_layout",
]

CONFIG_VERSION = "1.0"
DATA_TYPES = (
    "int4", "int8", "int16", "int32", "int64", "uint4", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "boolean", "string",
)  # fmt: skip
INPUT_TYPES = ("raw", "image")
#: What each known parser needs in its head metadata.
PARSER_NEEDS: dict[str, tuple[str, ...]] = {
    "ClassificationParser": ("classes", "n_classes", "is_softmax"),
    "SegmentationParser": ("classes", "n_classes", "is_softmax", "background_class"),
    "YOLO": ("classes", "n_classes", "iou_threshold", "conf_threshold", "max_det"),
}


def _one_of(*choices: str) -> Any:
    def check(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")

    return check


def _unit_interval(_inst: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"must be between 0 and 1, got {value!r}")


def _shape(_inst: Any, attribute: attrs.Attribute[Any], value: list[int] | None) -> None:
    if value is None:
        return
    if not value:
        raise ValueError("the shape must not be empty")
    if any(d < 0 for d in value):
        raise ValueError(f"dims must be >= 0 (0: dynamic), got {value}")


def check_layout(layout: str, shape: list[int], *, image: bool) -> None:
    """Raise ValueError unless ``layout`` fits ``shape`` by the NN Archive rules."""
    if not layout.isalpha() or layout != layout.upper():
        raise ValueError(f"layout {layout!r}: use upper-case letters only (e.g. NCHW)")
    if len(set(layout)) != len(layout):
        raise ValueError(f"layout {layout!r}: a letter is repeated")
    if len(layout) != len(shape):
        raise ValueError(f"layout {layout!r} has {len(layout)} letters for shape {shape}")
    if "N" in layout and layout[0] != "N":
        raise ValueError(f"layout {layout!r}: N (batch) must come first")
    if image and "C" not in layout:
        raise ValueError(f"layout {layout!r}: an image input needs a C (channels) dimension")


def infer_layout(shape: list[int]) -> str:
    """The format's layout inference: leading 1 -> N; of three remaining dims CHW if the
    first is the smallest, HWC if the last is; other dims get C, then D, E, ..."""
    layout = "N" if shape and shape[0] == 1 else ""
    rest = shape[len(layout) :]
    if len(rest) == 3 and rest[0] < rest[1] and rest[0] < rest[2]:
        return layout + "CHW"
    if len(rest) == 3 and rest[2] < rest[0] and rest[2] < rest[1]:
        return layout + "HWC"
    spare = iter(c for c in "CDEFGHIJKLMOPQRSTUVXYZ" if c not in layout)
    return layout + "".join(next(spare) for _ in rest)


@attrs.define
class Metadata:
    """The model file: its ``name``, ``path`` inside the archive, and ``precision``."""

    name: str
    path: str
    precision: str = attrs.field(default="float32", validator=_one_of(*DATA_TYPES))


@attrs.define
class PreprocessingBlock:
    """How raw input becomes model input: (raw - mean) / scale, channel order, DepthAI type."""

    mean: list[float] | None = None
    scale: list[float] | None = None
    reverse_channels: bool | None = False
    interleaved_to_planar: bool | None = False
    dai_type: str | None = None


@attrs.define
class Input:
    """A model input: name, dtype, raw or image, shape (non-empty), layout, preprocessing."""

    name: str
    dtype: str = attrs.field(validator=_one_of(*DATA_TYPES))
    input_type: str = attrs.field(validator=_one_of(*INPUT_TYPES))
    shape: list[int] = attrs.field(validator=_shape)
    layout: str = "NCHW"
    preprocessing: PreprocessingBlock = attrs.field(factory=PreprocessingBlock)

    def __attrs_post_init__(self) -> None:
        check_layout(self.layout, self.shape, image=self.input_type == "image")
        for key in ("mean", "scale"):
            values = getattr(self.preprocessing, key)
            if values is not None and "C" in self.layout:
                channels = self.shape[self.layout.index("C")]
                if channels and len(values) != channels:
                    raise ValueError(
                        f"preprocessing.{key}: {len(values)} values for {channels} channels"
                    )


@attrs.define
class Output:
    """A model output: name, dtype, optional shape and layout (inferred from the shape)."""

    name: str
    dtype: str = attrs.field(validator=_one_of(*DATA_TYPES))
    shape: list[int] | None = attrs.field(default=None, validator=_shape)
    layout: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.layout is not None and self.shape is None:
            raise ValueError(f"output {self.name!r}: a layout needs a shape")
        if self.shape is not None:
            if self.layout is None:
                self.layout = infer_layout(self.shape)
            check_layout(self.layout, self.shape, image=False)


@attrs.define
class HeadMetadata:
    """What a parser needs: classes and their count, softmax, thresholds, anchors."""

    classes: list[str] | None = None
    n_classes: int | None = None
    is_softmax: bool | None = None
    background_class: bool | None = None
    iou_threshold: float | None = attrs.field(default=None, validator=_unit_interval)
    conf_threshold: float | None = attrs.field(default=None, validator=_unit_interval)
    max_det: int | None = None
    anchors: list[list[list[float]]] | None = None

    def __attrs_post_init__(self) -> None:
        if self.classes is not None and self.n_classes is not None:
            if self.n_classes != len(self.classes):
                raise ValueError(
                    f"n_classes is {self.n_classes} but {len(self.classes)} classes are named"
                )
        if self.max_det is not None and self.max_det < 1:
            raise ValueError(f"max_det must be >= 1, got {self.max_det}")


@attrs.define
class Head:
    """One output head: the ``parser`` that decodes it, its metadata, the outputs it reads."""

    parser: str
    metadata: HeadMetadata = attrs.field(factory=HeadMetadata)
    name: str | None = None
    outputs: list[str] | None = None

    def __attrs_post_init__(self) -> None:
        missing = [k for k in PARSER_NEEDS.get(self.parser, ()) if getattr(self.metadata, k) is None]
        if missing:
            raise ValueError(f"head {self.parser}: metadata needs {', '.join(missing)}")


@attrs.define
class Model:
    """The model: metadata, inputs, outputs and (optionally) heads."""

    metadata: Metadata
    inputs: list[Input]
    outputs: list[Output]
    heads: list[Head] | None = None

    def __attrs_post_init__(self) -> None:
        if not self.inputs or not self.outputs:
            raise ValueError("a model needs at least one input and one output")
        names = {o.name for o in self.outputs}
        for head in self.heads or ():
            unknown = [o for o in head.outputs or () if o not in names]
            if unknown:
                raise ValueError(f"head {head.parser}: unknown outputs {unknown}")


@attrs.define
class ArchiveConfig:
    """The whole ``config.json``: ``config_version`` ("1.0") and the model."""

    model: Model
    config_version: str = attrs.field(default=CONFIG_VERSION, validator=_one_of(CONFIG_VERSION))

    @classmethod
    def from_dict(cls, data: Any) -> ArchiveConfig:
        """Read JSON data; ConfigError naming each key path that breaks a rule."""
        return structure(data, cls)

    def to_dict(self) -> dict[str, Any]:
        """JSON data, ``config_version`` first, head metadata without unset (None) keys."""
        model = converter.unstructure(self.model)
        for head in model.get("heads") or ():
            head["metadata"] = {k: v for k, v in head["metadata"].items() if v is not None}
        return {"config_version": self.config_version, "model": model}
