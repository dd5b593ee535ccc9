"""The ``exporter:`` section of a run's config: ONNX export, NN Archive preprocessing and the
conversion steps (blobconverter, HubAI). attrs classes with their field checks, structured by
the same strict converter as the rest of :mod:`runtime.config`.
"""

from __future__ import annotations

from typing import Any

import attrs

from runtime.config_convert import (
    _STRUCTURE,
    _between,
    _each,
    _ge,
    _got,
    _gt,
    _one_of,
    _opt,
    _Problem,
)

__all__ = ["BlobconverterConfig", "ExporterConfig", "HubAIConfig", "OnnxConfig"]


def _structure_version(value: Any, _type: Any) -> str:
    if isinstance(value, str):
        return value
    hint = f"; quote it: '{value}'" if isinstance(value, int | float) else ""
    raise _Problem(f"expected a string, got {_got(value)}{hint}")


def _layout_of_shape(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and len(value) not in (1, 2, 3):
        raise _Problem(
            f"must be the shape of one sample ([C, H, W], [C, L] or [F]), got {value!r}",
            attribute.name,
        )


@attrs.define
class OnnxConfig:
    """ONNX export with ``torch.onnx.export``.

    ``opset_version``; ``input_names`` / ``output_names`` of the graph (outputs default to
    ``output`` or ``output0, output1, ...``); ``dynamic_batch`` makes dim 0 of every input
    and output dynamic (``dynamic_axes``, in ``torch.onnx.export``'s form, replaces it);
    ``dynamo`` picks the ``torch.export``-based exporter instead of the TorchScript one;
    ``simplify`` runs onnxslim on the result (the ``export`` extra).
    """

    opset_version: int = attrs.field(default=17, validator=_between(7, 23))
    input_names: list[str] = attrs.field(factory=lambda: ["input"])
    output_names: list[str] | None = None
    dynamic_batch: bool = True
    dynamic_axes: dict[str, Any] | None = None
    dynamo: bool = False
    simplify: bool = False


@attrs.define
class BlobconverterConfig:
    """Conversion of the ONNX model to a Myriad X blob with ``blobconverter``."""

    active: bool = False
    shaves: int = attrs.field(default=6, validator=_between(1, 16))
    version: str = attrs.field(default="2022.1", metadata={_STRUCTURE: _structure_version})
    data_type: str = attrs.field(default="FP16", validator=_one_of("FP16", "FP32", "INT8"))


@attrs.define
class HubAIConfig:
    """Conversion through Luxonis HubAI for a target ``platform`` (rvc2, rvc3, rvc4)."""

    active: bool = False
    platform: str | None = attrs.field(
        default=None, validator=_opt(_one_of("rvc2", "rvc3", "rvc4"))
    )


@attrs.define
class ExporterConfig:
    """Model export: file name, input shape, parity tolerance, preprocessing, the steps.

    ``name``: base name of the exported files (default: the run's name, else "model").
    ``input_shape``: [C, H, W] of one sample (default: the model's ``example_input_array``,
    else a validation batch, else ``trainer.input_shape``). ``tolerance``: the largest
    max-abs difference between onnxruntime and PyTorch outputs that passes. ``mean_values``
    / ``scale_values``: the archive's preprocessing (model input = (raw - mean) / scale on
    0..255 pixels); default from ``trainer.preprocessing.normalize`` (x 255).
    ``reverse_input_channels``: the device feeds BGR to an RGB model.
    """

    name: str | None = None
    input_shape: list[int] | None = attrs.field(
        default=None, validator=[_opt(_each(_ge(1))), _layout_of_shape]
    )
    tolerance: float = attrs.field(default=1e-3, validator=_gt(0))
    mean_values: list[float] | None = None
    scale_values: list[float] | None = None
    reverse_input_channels: bool = False
    onnx: OnnxConfig = attrs.field(factory=OnnxConfig)
    blobconverter: BlobconverterConfig = attrs.field(factory=BlobconverterConfig)
    hubai: HubAIConfig = attrs.field(factory=HubAIConfig)
