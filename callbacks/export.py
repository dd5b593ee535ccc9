"""ExportOnTrainEnd: the best checkpoint as ONNX, verified by onnxruntime against PyTorch.

At ``train_end`` (rank zero) the callback loads the best checkpoint (``preferred_checkpoint``
with the fallback of :mod:`callbacks.best_checkpoint`), puts the model in eval mode on the
CPU and writes ``<run>/export/<name>.onnx`` with ``torch.onnx.export`` as the ``exporter:``
section says (opset, input/output names, dynamic batch, TorchScript or dynamo exporter,
optional onnxslim). Then **every export is verified**: onnxruntime runs the file on a real
validation batch and the largest absolute difference from PyTorch's outputs is logged,
sent to the tracker (``export/onnx_max_abs_diff``) and written next to the model in
``<name>.yaml`` (with the input/output names and shapes and the mean/scale converters
need). Above ``exporter.tolerance`` the export is marked failed (the file is kept for
inspection, nothing is uploaded); within it the file is uploaded through the tracker and
``artifact_produced(kind="onnx", path)`` is emitted.

A failed export is logged as an error and does not fail the finished training run.
``busloop export CONFIG --weights CKPT`` runs :meth:`ExportOnTrainEnd.export` outside training.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
import yaml
from torch import nn

from callbacks.artifacts import publish_artifact
from callbacks.best_checkpoint import check_preferred, load_best_weights
from callbacks.onnx_tools import (
    ExportError,
    flatten_outputs,
    max_abs_diff,
    run_onnx,
    simplify,
    torch_outputs,
    torch_to_onnx,
)
from runtime.callback import Callback
from runtime.config import Config, ConfigError
from runtime.distributed import is_rank_zero
from runtime.loop import Runtime
from runtime.module import inputs_of
from runtime.registry import register

log = logging.getLogger("busloop.callbacks")

__all__ = ["ExportOnTrainEnd", "ExportResult", "export_checked", "export_name", "mean_scale"]

#: How many validation samples verify an export whose batch dimension is fixed at 1.
STATIC_BATCH_CHECKS = 16


@attrs.define
class ExportResult:
    """What one export produced and how well onnxruntime agreed with PyTorch."""

    path: Path
    meta_path: Path
    exporter: str
    """"torchscript" or "dynamo"."""
    input_names: list[str]
    output_names: list[str]
    input_shape: list[int]
    max_abs_diff: float
    tolerance: float
    checked_on: str
    """What the comparison ran on, e.g. "a validation batch of 64 samples"."""

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def export_name(config: Config) -> str:
    """The exported files' base name: ``exporter.name``, else the run name, else "model"."""
    return config.exporter.name or config.tracker.run_name or "model"


def mean_scale(config: Config, channels: int) -> tuple[list[float], list[float]]:
    """Per-channel (mean, scale) on 0..255 pixels: model input = (raw - mean) / scale.

    ``exporter.mean_values`` / ``scale_values`` win; otherwise the normalisation config
    (``trainer.preprocessing.normalize``) x 255, rounded to 5 decimals; without one the
    inputs are raw / 255 (mean 0, scale 255).
    """
    normalize = config.trainer.preprocessing.normalize
    if normalize is not None and normalize.active:
        mean = [round(m * 255.0, 5) for m in normalize.params.mean]
        scale = [round(s * 255.0, 5) for s in normalize.params.std]
    else:
        mean, scale = [0.0] * channels, [255.0] * channels
    mean = list(config.exporter.mean_values or mean)
    scale = list(config.exporter.scale_values or scale)
    for key, values in (("mean", mean), ("scale", scale)):
        if len(values) == 1 and channels > 1:
            values *= channels
        elif len(values) != channels:
            raise ConfigError(
                f"exporter.{key}_values / trainer.preprocessing.normalize: {len(values)} "
                f"values for an input with {channels} channel(s)"
            )
    return mean, scale


def first_inputs(loader: Iterable[Any] | None) -> torch.Tensor | None:
    """The model inputs of the loader's first batch (a tensor), or None."""
    if loader is None:
        return None
    batch = next(iter(loader), None)
    inputs = inputs_of(batch) if batch is not None else None
    return inputs.detach().cpu().float() if isinstance(inputs, torch.Tensor) else None


def _input_shape(model: nn.Module, config: Config, sample: torch.Tensor | None) -> list[int]:
    example = getattr(model, "example_input_array", None)
    for shape in (
        config.exporter.input_shape,
        list(example.shape[1:]) if isinstance(example, torch.Tensor) else None,
        list(sample.shape[1:]) if sample is not None else None,
        config.trainer.input_shape,
    ):
        if shape:
            return [int(d) for d in shape]
    raise ConfigError(
        "exporter.input_shape: required to export this model (give [C, H, W] of one sample, "
        "or set the model's example_input_array, or provide validation data)"
    )


@contextlib.contextmanager
def cpu_eval(model: nn.Module) -> Iterator[nn.Module]:
    """The model on the CPU in eval mode; device and every module's mode restored after."""
    modes = [(module, module.training) for module in model.modules()]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.cpu().eval()
    try:
        yield model
    finally:
        model.to(device)
        for module, training in modes:
            module.training = training


def export_checked(
    model: nn.Module, config: Config, out_dir: Path, sample: torch.Tensor | None
) -> ExportResult:
    """Export ``model`` (already eval, CPU) to ``out_dir/<name>.onnx`` and verify it.

    ``sample``: a real batch of model inputs for the check (None: random inputs, logged).
    """
    onnx_cfg = config.exporter.onnx
    shape = _input_shape(model, config, sample)
    if sample is not None and list(sample.shape[1:]) != shape:
        raise ConfigError(
            f"exporter.input_shape: {shape} does not match the validation data's sample "
            f"shape {list(sample.shape[1:])}"
        )
    dynamic = onnx_cfg.dynamic_batch or onnx_cfg.dynamic_axes is not None
    if sample is None:
        log.warning("Export: no validation batch; verifying the ONNX model on random inputs")
        check = torch.randn(4, *shape, generator=torch.Generator().manual_seed(0))
        checked_on = "4 random inputs (no validation data)"
    else:
        check = sample
        checked_on = f"a validation batch of {len(sample)} samples"
    example = check[:2] if dynamic and len(check) >= 2 else torch.zeros(2 if dynamic else 1, *shape)
    with torch.no_grad():
        n_outputs = len(flatten_outputs(model(example)))
    output_names = list(onnx_cfg.output_names or (
        ["output"] if n_outputs == 1 else [f"output{i}" for i in range(n_outputs)]
    ))
    if len(output_names) != n_outputs:
        raise ConfigError(
            f"exporter.onnx.output_names: {len(output_names)} names for {n_outputs} model outputs"
        )
    if len(onnx_cfg.input_names) != 1:
        raise ConfigError("exporter.onnx.input_names: give exactly one name (one model input)")

    path = out_dir / f"{export_name(config)}.onnx"
    torch_to_onnx(
        model, example, path,
        opset_version=onnx_cfg.opset_version, input_names=onnx_cfg.input_names,
        output_names=output_names, dynamic=dynamic, dynamic_axes=onnx_cfg.dynamic_axes,
        dynamo=onnx_cfg.dynamo,
    )  # fmt: skip
    if onnx_cfg.simplify:
        simplify(path)

    if not dynamic:  # batch fixed at 1: check sample by sample
        check = check[:STATIC_BATCH_CHECKS]
        checked_on = checked_on.split(" of ")[0] + f" ({len(check)} samples, one at a time)"
        pairs = [(torch_outputs(model, x[None]), run_onnx(path, x[None].numpy())) for x in check]
        diff = max(max_abs_diff(ref, out) for ref, out in pairs)
    else:
        diff = max_abs_diff(torch_outputs(model, check), run_onnx(path, check.numpy()))
    result = ExportResult(
        path=path, meta_path=path.with_suffix(".yaml"),
        exporter="dynamo" if onnx_cfg.dynamo else "torchscript",
        input_names=list(onnx_cfg.input_names), output_names=output_names, input_shape=shape,
        max_abs_diff=diff, tolerance=config.exporter.tolerance, checked_on=checked_on,
    )  # fmt: skip
    _write_meta(result, config)
    return result


def _write_meta(result: ExportResult, config: Config) -> None:
    """``<name>.yaml``: what converters need, and the parity check's outcome."""
    mean, scale = mean_scale(config, result.input_shape[0]) if len(result.input_shape) == 3 else (None, None)
    meta = {
        "model": result.path.name,
        "exporter": result.exporter,
        "opset_version": config.exporter.onnx.opset_version,
        "input_names": result.input_names,
        "output_names": result.output_names,
        "input_shape": [1, *result.input_shape],
        "mean_values": mean,
        "scale_values": scale,
        "reverse_input_channels": config.exporter.reverse_input_channels,
        "parity": {
            "max_abs_diff": float(np.float64(result.max_abs_diff)),
            "tolerance": result.tolerance,
            "passed": result.passed,
            "checked_on": result.checked_on,
        },
    }
    result.meta_path.write_text(yaml.safe_dump(meta, sort_keys=False), encoding="utf-8")


def export_dir(runtime: Runtime) -> Path:
    """``<run>/export`` (``./export`` without a run folder)."""
    return (runtime.run_dir or Path.cwd()) / "export"


def skip_sharded(runtime: Runtime, who: str) -> bool:
    """Whether the model is FSDP-sharded (``trainer.strategy: fsdp``): rank zero alone cannot
    run it, so train-end export work is skipped with a warning saying what to do instead."""
    if not getattr(runtime, "sharded", False):
        return False
    log.warning(
        "%s: skipped, the model is sharded (trainer.strategy=fsdp); consolidate the checkpoint "
        "with `python -m runtime.fsdp FOLDER OUT.ckpt` and export from that file", who,
    )
    return True


@register()
class ExportOnTrainEnd(Callback):
    """Export the best checkpoint to ONNX at ``train_end`` and verify it with onnxruntime.

    ``preferred_checkpoint``: "metric" (default) or "loss". After the run :attr:`result`
    holds the :class:`ExportResult` (None when nothing was exported).
    """

    def __init__(self, preferred_checkpoint: str = "metric") -> None:
        self.preferred_checkpoint = check_preferred(preferred_checkpoint)
        self.result: ExportResult | None = None

    def on_train_end(self, runtime: Runtime) -> None:
        self.result = None
        if runtime.state.interrupted or not is_rank_zero() or skip_sharded(runtime, type(self).__name__):
            return
        try:
            self.result = self.export(runtime, load_best=True)
        except (ExportError, ConfigError) as exc:
            log.error("%s: export failed: %s", type(self).__name__, exc)

    def export(self, runtime: Runtime, *, load_best: bool) -> ExportResult | None:
        """Export (after loading the best checkpoint if ``load_best``), verify, publish.

        Returns None when there was no checkpoint to export; raises ExportError /
        ConfigError when the export itself cannot be done.
        """
        who = type(self).__name__
        if load_best:
            path, problems = load_best_weights(runtime, self.preferred_checkpoint, who)
            if path is None:
                log.error(
                    "%s: no best checkpoint (%s); skipping. Keep a ModelCheckpoint on val/loss "
                    "or on trainer.main_metric (the default set has both).",
                    who, "; ".join(problems),
                )  # fmt: skip
                return None
        sample = first_inputs(runtime.loaders.get("val"))
        with cpu_eval(runtime.model) as model:
            result = export_checked(model, runtime.config, export_dir(runtime), sample)
        if runtime.tracker is not None:
            runtime.tracker.log_metrics(
                {"export/onnx_max_abs_diff": result.max_abs_diff}, step=runtime.state.global_step
            )
        if not result.passed:
            log.error(
                "%s: export FAILED verification: onnxruntime differs from PyTorch by up to %.3g "
                "(exporter.tolerance %.3g) on %s; the file is kept for inspection: %s",
                who, result.max_abs_diff, result.tolerance, result.checked_on, result.path,
            )  # fmt: skip
            return result
        log.info(
            "%s: exported %s (%s exporter); onnxruntime matches PyTorch within %.3g "
            "(max abs diff, tolerance %.3g) on %s",
            who, result.path, result.exporter, result.max_abs_diff, result.tolerance,
            result.checked_on,
        )  # fmt: skip
        publish_artifact(runtime, "onnx", result.path)
        return result
