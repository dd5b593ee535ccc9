"""Local converters, checked with onnxruntime against the fp32 ONNX model.

* ``fp16``: float16 weights and arithmetic (onnxruntime's ``float16`` converter; inputs and
  outputs stay float32 with ``keep_io_types``, so it is a drop-in replacement).
* ``int8``: onnxruntime's dynamic quantization (int8 weights; activations quantized at run
  time; ``ConvInteger`` / ``MatMulInteger``).

Each runs the converted file and the fp32 file on the same real validation inputs and
reports the max absolute and relative difference and the top-1 agreement; a relative
difference above ``tolerance`` marks the conversion failed (the file is kept).
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import numpy as np

from callbacks.converters import Conversion, ConversionJob, ConverterError, register_converter
from callbacks.onnx_tools import ExportError, max_abs_diff, require, run_onnx

log = logging.getLogger("busloop.callbacks")

__all__ = ["Float16Converter", "Int8DynamicConverter", "check_against_fp32"]


def check_against_fp32(
    name: str, kind: str, fp32: Path, converted: Path, sample: np.ndarray | None, tolerance: float
) -> Conversion:
    """Run both files on ``sample`` and compare; no sample means no check (logged)."""
    if sample is None:
        log.warning("%s: no validation inputs; %s was not checked", name, converted)
        return Conversion(name, converted, kind, tolerance=tolerance)
    try:
        reference = run_onnx(fp32, sample)
        outputs = run_onnx(converted, sample)
        abs_diff = max_abs_diff(reference, outputs)
    except ExportError as exc:
        raise ConverterError(f"{name}: cannot check {converted}: {exc}") from exc
    scale = max(float(np.abs(r).max()) for r in reference if r.size) or 1.0
    rel_diff = abs_diff / scale
    top1 = None
    if reference[0].ndim >= 2:
        top1 = float((reference[0].argmax(-1) == outputs[0].argmax(-1)).mean())
    return Conversion(
        name, converted, kind, max_abs_diff=abs_diff, max_rel_diff=rel_diff,
        top1_agreement=top1, tolerance=tolerance, passed=rel_diff <= tolerance,
    )  # fmt: skip


@register_converter("fp16")
class Float16Converter:
    """``<name>.fp16.onnx``: float16 weights and compute, float32 inputs and outputs."""

    name = "fp16"

    def __init__(self, tolerance: float = 1e-2, keep_io_types: bool = True) -> None:
        self.tolerance = tolerance
        self.keep_io_types = keep_io_types

    def convert(self, job: ConversionJob) -> Conversion:
        onnx = require("onnx", "export")
        float16 = require("onnxruntime.transformers.float16", "export")
        target = job.out_dir / f"{job.onnx_path.stem}.fp16.onnx"
        try:
            model = float16.convert_float_to_float16(
                onnx.load(str(job.onnx_path)), keep_io_types=self.keep_io_types
            )
            onnx.save(model, str(target))
        except Exception as exc:
            raise ConverterError(f"fp16: conversion of {job.onnx_path} failed: {exc}") from exc
        sample = job.sample if self.keep_io_types or job.sample is None else job.sample.astype(np.float16)
        return check_against_fp32(self.name, "onnx-fp16", job.onnx_path, target, sample, self.tolerance)


@register_converter("int8")
class Int8DynamicConverter:
    """``<name>.int8.onnx``: onnxruntime dynamic quantization (``weight_type`` QInt8/QUInt8)."""

    name = "int8"

    def __init__(self, tolerance: float = 0.1, weight_type: str = "QInt8") -> None:
        if weight_type not in ("QInt8", "QUInt8"):
            raise ValueError(f"weight_type must be 'QInt8' or 'QUInt8', got {weight_type!r}")
        self.tolerance = tolerance
        self.weight_type = weight_type

    def convert(self, job: ConversionJob) -> Conversion:
        quantization = require("onnxruntime.quantization", "export")
        target = job.out_dir / f"{job.onnx_path.stem}.int8.onnx"
        # The quantizer warns through logging.warning(), which would install a root handler
        # (basicConfig) for the rest of the process: give root a silent one meanwhile.
        root, silent = logging.getLogger(), logging.NullHandler()
        level = root.level
        root.addHandler(silent)
        root.setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                quantization.quantize_dynamic(
                    str(job.onnx_path), str(target),
                    weight_type=getattr(quantization.QuantType, self.weight_type),
                )  # fmt: skip
        except Exception as exc:
            raise ConverterError(f"int8: quantization of {job.onnx_path} failed: {exc}") from exc
        finally:
            root.setLevel(level)
            root.removeHandler(silent)
        return check_against_fp32(self.name, "onnx-int8", job.onnx_path, target, job.sample, self.tolerance)
