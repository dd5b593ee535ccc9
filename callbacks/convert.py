"""ConvertOnTrainEnd: export, archive, then the configured converters, at ``train_end``.

The order is luxonis-train's: the best checkpoint is exported to ONNX and verified
(:class:`callbacks.export.ExportOnTrainEnd`), packed into an NN Archive
(:mod:`callbacks.archive`), then each converter runs on the verified fp32 model: the ones
listed in ``converters`` (``fp16``, ``int8`` or any registered plugin), then
``blobconverter`` when ``exporter.blobconverter.active`` and ``hubai`` when
``exporter.hubai.active``. Each produced file is uploaded through the tracker and announced
with ``artifact_produced(kind, path)``.

A converter that cannot run (missing SDK, API key, network) or whose output misses its
tolerance is logged as an error; the ONNX model and the archive already produced are kept,
later converters still run, and the training run stays successful.

When ConvertOnTrainEnd is active, :func:`callbacks.defaults.build_callbacks` switches off
active ExportOnTrainEnd / ArchiveOnTrainEnd entries with a warning: Convert does both.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import numpy as np

from callbacks.archive.callback import archive_export, archive_options, verified_export
from callbacks.archive.tarball import ArchiveError
from callbacks.artifacts import publish_artifact
from callbacks.best_checkpoint import check_preferred
from callbacks.converters import (
    Conversion,
    ConversionJob,
    Converter,
    ConverterError,
    make_converter,
)
from callbacks.export import export_dir, first_inputs, skip_sharded
from callbacks.onnx_tools import ExportError
from runtime.callback import Callback
from runtime.config import ConfigError
from runtime.distributed import is_rank_zero
from runtime.loop import Runtime
from runtime.registry import register

log = logging.getLogger("busloop.callbacks")

__all__ = ["ConvertOnTrainEnd"]


def _converters(entries: list[str | dict[str, Any]]) -> list[Converter]:
    built = []
    for index, entry in enumerate(entries):
        key = f"ConvertOnTrainEnd.converters.{index}"
        if isinstance(entry, str):
            name, params = entry, {}
        elif isinstance(entry, dict) and isinstance(entry.get("name"), str):
            unknown = set(entry) - {"name", "params"}
            if unknown:
                raise ConfigError(f"{key}: unknown key(s) {sorted(unknown)}; use name and params")
            name, params = entry["name"], dict(entry.get("params") or {})
        else:
            raise ConfigError(f"{key}: expected a converter name or {{name, params}}, got {entry!r}")
        built.append(make_converter(name, params, key=key))
    return built


@register()
class ConvertOnTrainEnd(Callback):
    """Export, archive and convert the best checkpoint at ``train_end``.

    ``converters``: names or ``{name, params}`` of registered converters, e.g.
    ``["fp16", {name: int8, params: {tolerance: 0.05}}]``. ``preferred_checkpoint``,
    ``compression`` and ``heads`` as for ArchiveOnTrainEnd. After the run:
    :attr:`export` (the ExportResult), :attr:`archive_path`, :attr:`conversions`
    (successful and failed checks) and :attr:`errors` (converters that could not run).
    """

    def __init__(
        self,
        preferred_checkpoint: str = "metric",
        converters: list[str | dict[str, Any]] | None = None,
        compression: str = "xz",
        heads: list[dict[str, Any]] | None = None,
    ) -> None:
        self.preferred_checkpoint = check_preferred(preferred_checkpoint)
        self.compression, self.heads = archive_options(compression, heads)
        self.converters = _converters(list(converters or []))
        self._reset()

    def _reset(self) -> None:
        self.export: Any = None
        self.archive_path: Any = None
        self.conversions: list[Conversion] = []
        self.errors: list[str] = []

    def _all_converters(self, runtime: Runtime) -> list[Converter]:
        exporter = runtime.config.exporter
        names = {c.name for c in self.converters}
        extra = [
            make_converter(name, {}, key=f"exporter.{name}")
            for name, active in (("blobconverter", exporter.blobconverter.active),
                                 ("hubai", exporter.hubai.active))  # fmt: skip
            if active and name not in names
        ]
        return [*self.converters, *extra]

    def on_train_end(self, runtime: Runtime) -> None:
        self._reset()
        who = type(self).__name__
        if runtime.state.interrupted or not is_rank_zero() or skip_sharded(runtime, who):
            return
        missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            log.warning(
                "%s: skipped, %s not installed (pip install 'busloop[export]')",
                who, " and ".join(missing),
            )  # fmt: skip
            return
        try:
            self.export = verified_export(runtime, self.preferred_checkpoint, who)
            if self.export is None:
                return
            self.archive_path, _ = archive_export(
                runtime, self.export, heads=self.heads, compression=self.compression
            )
        except (ExportError, ArchiveError, ConfigError) as exc:
            log.error("%s: export/archive failed: %s", who, exc)
            return
        sample = first_inputs(runtime.loaders.get("val"))
        job = ConversionJob(
            onnx_path=self.export.path, archive_path=self.archive_path,
            out_dir=export_dir(runtime), config=runtime.config,
            sample=None if sample is None else np.ascontiguousarray(sample.numpy()),
        )  # fmt: skip
        for converter in self._all_converters(runtime):
            self._run(runtime, converter, job)

    def _run(self, runtime: Runtime, converter: Converter, job: ConversionJob) -> None:
        who = type(self).__name__
        try:
            result = converter.convert(job)
        except (ConverterError, ExportError, ConfigError) as exc:
            self.errors.append(str(exc))
            log.error(
                "%s: %s; the ONNX model %s and the archive %s are kept",
                who, exc, job.onnx_path, job.archive_path,
            )  # fmt: skip
            return
        self.conversions.append(result)
        if result.max_abs_diff is not None and runtime.tracker is not None:
            runtime.tracker.log_metrics(
                {f"export/{result.converter}_max_abs_diff": result.max_abs_diff},
                step=runtime.state.global_step,
            )
        if not result.passed:
            log.error(
                "%s: %s FAILED its check: relative difference %.3g > tolerance %.3g "
                "(max abs %.3g); the file is kept: %s",
                who, result.converter, result.max_rel_diff, result.tolerance,
                result.max_abs_diff, result.path,
            )  # fmt: skip
            return
        if result.max_abs_diff is not None:
            log.info(
                "%s: %s -> %s; vs fp32: max abs diff %.3g, relative %.3g, top-1 agreement %s",
                who, result.converter, result.path, result.max_abs_diff, result.max_rel_diff,
                "n/a" if result.top1_agreement is None else f"{result.top1_agreement:.1%}",
            )  # fmt: skip
        else:
            log.info("%s: %s -> %s", who, result.converter, result.path)
        publish_artifact(runtime, result.kind, result.path)
