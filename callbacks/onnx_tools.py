"""ONNX plumbing shared by export, archive and conversion: write, simplify, run, compare.

* :func:`torch_to_onnx` writes a model with ``torch.onnx.export``: the TorchScript exporter
  (``dynamic_axes``) or the ``torch.export``-based one (``dynamo=True``, ``dynamic_shapes``).
* :func:`simplify` runs onnxslim (an optional package) on the file in place.
* :func:`run_onnx` runs a file with onnxruntime on CPU; :func:`torch_outputs` runs the
  PyTorch model the same way; :func:`max_abs_diff` compares the two output lists.
* :func:`graph_io` reads names, dtypes and shapes (dynamic dims as 0) from the graph.

``onnx`` and ``onnxruntime`` come with the ``export`` extra; a missing one is a
:class:`ExportError` that says what to install.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch import nn

log = logging.getLogger("busloop.callbacks")

__all__ = [
    "ExportError",
    "TensorInfo",
    "flatten_outputs",
    "graph_io",
    "max_abs_diff",
    "require",
    "run_onnx",
    "simplify",
    "torch_outputs",
    "torch_to_onnx",
]


class ExportError(RuntimeError):
    """Export, verification or conversion could not be done; the message says why."""


def require(module: str, extra: str) -> Any:
    """Import ``module`` or raise ExportError naming the pip command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(
            f"{module} is not installed; pip install 'busloop[{extra}]'"
        ) from None


@attrs.frozen
class TensorInfo:
    """One graph input or output: name, ONNX dtype name (``float32`` ...), shape (0 = dynamic)."""

    name: str
    dtype: str
    shape: tuple[int, ...]


def flatten_outputs(outputs: Any) -> list[torch.Tensor]:
    """A model's outputs as a flat list of tensors (tensor, nested tuples/lists, dict values)."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, Mapping):
        return [t for value in outputs.values() for t in flatten_outputs(value)]
    if isinstance(outputs, list | tuple):
        return [t for value in outputs for t in flatten_outputs(value)]
    raise ExportError(f"the model returned {type(outputs).__name__}; ONNX export needs tensors")


def torch_outputs(model: nn.Module, inputs: torch.Tensor) -> list[np.ndarray]:
    """The model's outputs on ``inputs`` (no grad) as float NumPy arrays."""
    with torch.no_grad():
        return [t.detach().cpu().numpy() for t in flatten_outputs(model(inputs))]


def _dynamic_axes(
    input_names: Sequence[str], output_names: Sequence[str], explicit: Mapping[str, Any] | None
) -> dict[str, Any]:
    if explicit is not None:
        return dict(explicit)
    return {name: {0: "batch"} for name in (*input_names, *output_names)}


def torch_to_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    *,
    opset_version: int,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic: bool,
    dynamic_axes: Mapping[str, Any] | None = None,
    dynamo: bool = False,
) -> None:
    """Write ``model`` (eval, CPU) traced on ``example`` to ``path`` as ONNX.

    ``dynamic``: dim 0 of every input and output is the dynamic ``batch`` axis (or the
    given ``dynamic_axes``). The exporter's chatter (deprecation warnings, the dynamo
    exporter's progress lines) goes to the debug log, not the console.
    """
    require("onnx", "export")
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {
        "input_names": list(input_names),
        "output_names": list(output_names),
        "opset_version": opset_version,
        "dynamo": dynamo,
    }
    if dynamo:
        if dynamic:
            axes = _dynamic_axes(input_names, output_names, dynamic_axes)
            batch = torch.export.Dim("batch")
            kwargs["dynamic_shapes"] = tuple(
                {int(axis): batch for axis in axes.get(name, {})} for name in input_names
            )
        kwargs["external_data"] = False
    elif dynamic:
        kwargs["dynamic_axes"] = _dynamic_axes(input_names, output_names, dynamic_axes)
    chatter = io.StringIO()
    try:
        with (
            warnings.catch_warnings(record=True) as caught,
            contextlib.redirect_stdout(chatter),
        ):
            warnings.simplefilter("always")
            torch.onnx.export(model, (example,), str(path), **kwargs)
    except Exception as exc:
        kind = "dynamo" if dynamo else "TorchScript"
        raise ExportError(f"torch.onnx.export ({kind} exporter) failed: {exc}") from exc
    for warning in caught:
        log.debug("torch.onnx.export: %s", warning.message)
    if chatter.getvalue().strip():
        log.debug("torch.onnx.export: %s", chatter.getvalue().strip())


def simplify(path: Path) -> None:
    """Simplify the ONNX graph at ``path`` in place with onnxslim."""
    onnx = require("onnx", "export")
    onnxslim = require("onnxslim", "export")
    try:
        slimmed = onnxslim.slim(onnx.load(str(path)))
    except Exception as exc:
        raise ExportError(f"onnxslim could not simplify {path}: {exc}") from exc
    onnx.save(slimmed, str(path))


def _session(path: str | os.PathLike[str]) -> Any:
    ort = require("onnxruntime", "export")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(
            os.fspath(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise ExportError(f"onnxruntime cannot load {path}: {exc}") from exc


def run_onnx(path: str | os.PathLike[str], inputs: np.ndarray) -> list[np.ndarray]:
    """Run the single-input model at ``path`` on ``inputs`` with onnxruntime (CPU).

    Inputs are cast to the graph's input dtype (float32 or float16).
    """
    session = _session(path)
    graph_inputs = session.get_inputs()
    if len(graph_inputs) != 1:
        raise ExportError(f"{path}: expected one graph input, found {len(graph_inputs)}")
    wanted = np.float16 if graph_inputs[0].type == "tensor(float16)" else inputs.dtype
    try:
        outputs = session.run(None, {graph_inputs[0].name: inputs.astype(wanted)})
    except Exception as exc:
        raise ExportError(f"onnxruntime failed to run {path}: {exc}") from exc
    return [np.asarray(o) for o in outputs]


def max_abs_diff(reference: Sequence[np.ndarray], actual: Sequence[np.ndarray]) -> float:
    """The largest absolute difference over every output; shape mismatches are errors."""
    if len(reference) != len(actual):
        raise ExportError(f"the ONNX model has {len(actual)} outputs, PyTorch {len(reference)}")
    worst = 0.0
    for index, (ref, out) in enumerate(zip(reference, actual, strict=True)):
        if ref.shape != out.shape:
            raise ExportError(
                f"output {index}: ONNX shape {out.shape} differs from PyTorch's {ref.shape}"
            )
        if ref.size:
            diff = np.abs(ref.astype(np.float64) - out.astype(np.float64))
            worst = max(worst, float(np.nan_to_num(diff, nan=np.inf).max()))
    return worst


def _dims(value_info: Any) -> tuple[int, ...]:
    dims = value_info.type.tensor_type.shape.dim
    return tuple(int(d.dim_value) if d.HasField("dim_value") else 0 for d in dims)


def graph_io(path: str | os.PathLike[str]) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The graph's inputs and outputs (initializers excluded), dynamic dims as 0."""
    onnx = require("onnx", "export")
    model = onnx.load(os.fspath(path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}

    def info(value_info: Any) -> TensorInfo:
        elem = value_info.type.tensor_type.elem_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem).name if elem else "float32"
        return TensorInfo(value_info.name, "boolean" if dtype == "bool" else dtype, _dims(value_info))

    inputs = [info(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [info(v) for v in model.graph.output]
